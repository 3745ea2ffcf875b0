"""SQL for flow control: limits, budgets, the admission of gateway calls, and throttled jobs.

Callers own the transaction. Every count is read from Postgres at claim time, so every
worker process shares the same limits and a change applies at the next claim. Concurrency is
the number of ``running`` jobs in a scope: a running job's lease is what holds its slot, so
a dead worker's slot frees when the sweep takes its job over. Request and token rates are
counted over ``flow_admissions`` (one row per admitted call) within the rate window.
"""

from __future__ import annotations

import uuid
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass
from datetime import datetime
from decimal import Decimal
from typing import Any

from sqlalchemy import text
from sqlalchemy.orm import Session

from service import constants as c
from service.db import driver
from service.db.attempts import CLAIM_COLUMNS
from service.db.driver import DriverStatement
from service.db.models import ANY
from service.db.queries import FIRST_TURN_JSON
from service.db.row_checks import on_row
from service.db.session import Executor
from service.db.turn_order import NOT_HELD_BACK

# Rank of a pending job: its priority raised one step per ``aging`` seconds of waiting
# (so nothing starves), then the fewest running jobs of its tenant (fair shares), then the
# order of enqueue. Where limits hold jobs back, admission then puts first among equals the
# tenant served longest ago (``Pending.rank_key``), for which the candidates read hold
# each tenant's best before any tenant's second (``_CANDIDATES_CTES``).
_RANK = """
    least(9, j.priority + floor(extract(epoch FROM now() - j.created_at) / :aging)) DESC,
    coalesce(r.n, 0), j.enqueue_seq
"""

# Counted only when a job other than the message's own is ranked: the counts only order
# jobs against each other. Most claims rank nothing else (nothing waits), and counting read
# every running job at each claim (1,000 at 1,000 calls in flight).
_RUNNING_PER_TENANT = """
    running AS (SELECT tenant, count(*) AS n FROM jobs
                WHERE status = 'running' AND EXISTS (SELECT 1 FROM heads h WHERE h.id <> :id)
                GROUP BY tenant)
"""


@dataclass(frozen=True, slots=True)
class Pending:
    """A pending job as admission sees it, with its rank: its priority after aging and how
    many calls its tenant has running (counted when another job is ranked with it, 0
    otherwise: it only orders jobs against each other)."""

    id: uuid.UUID
    tenant: str | None
    model: str
    status: str
    priority: int
    aged_priority: int
    tenant_running: int
    enqueue_seq: int
    throttled: bool  # it has a throttle reason, to clear when it is claimed
    # When its tenant last had a call admitted (None: never, or not read: see ``served``).
    tenant_served_at: datetime | None = None

    def outranks(self, other: Pending) -> bool:
        """Strictly better placed than ``other``: a higher priority after aging, or as high
        with fewer calls of its tenant running, or as few with its tenant served longer ago;
        or placed as well, aged (waiting raised its priority) and enqueued earlier.

        Enqueue order is otherwise aside: among equals a message keeps its own job, since
        the others have messages of their own on the way (running one of them would park
        the message's job until a call ends). An aged job tying with the message's is the
        exception the ranking's last tie-break is for: it has waited longest, often with no
        message (throttled), and a stream of later jobs of the priority it rose to would
        otherwise keep it waiting until they all ran, which aging is there to prevent."""
        mine, theirs = self.rank_key(), other.rank_key()
        if mine != theirs:
            return mine < theirs
        return self.aged_priority > self.priority and self.enqueue_seq < other.enqueue_seq

    def rank_key(self) -> tuple[int, int, float]:
        """Ascending: the better placed first (enqueue order aside)."""
        served = self.tenant_served_at.timestamp() if self.tenant_served_at else float("-inf")
        return (-self.aged_priority, self.tenant_running, served)

    def order_key(self) -> tuple[int, int, float, int]:
        """Ascending: the better placed first, then the earlier enqueued."""
        return (*self.rank_key(), self.enqueue_seq)


@dataclass(frozen=True, slots=True)
class Ranking:
    """What a claim starts from: the message's own job (None when it is not pending, due
    and its turn), the best-ranked eligible jobs, whether any limit or budget exists,
    whether throttled jobs wait for a call to end, and the claim if it was made."""

    own: Pending | None
    candidates: list[Pending]
    rules_configured: bool
    throttled_waiting: bool
    # The claim function's row when the ranking claimed the message's own job (nothing was
    # left to decide); None when the claim is the caller's.
    claim_row: Any | None = None


# Per tenant with work waiting, its best jobs by priority and its oldest one (the one that
# ages): found by a skip scan over the pending-jobs index, a few index probes per tenant,
# so the cost of a claim grows with the number of tenants waiting, not with the backlog.
_PENDING = "j.status IN ('queued', 'retrying')"
# A pending job found by id: its state checked on its row (``row_checks``).
_PENDING_ROW = on_row(_PENDING)
_DUE = f"(j.status = 'queued' OR j.dispatched_at <= now()) AND {NOT_HELD_BACK}"
_ELIGIBLE = f"{_PENDING} AND {_DUE}"
_ELIGIBLE_ROW = f"{_PENDING_ROW} AND {_DUE}"
_AGED = "least(9, j.priority + floor(extract(epoch FROM now() - j.created_at) / :aging))::int"
# ``_PENDING_COLUMNS`` and ``aged``, read from a ranked subquery ``j``.
_PENDING_COLUMNS_OF_RANKED = (
    "j.id, j.tenant, j.model, j.status, j.priority, j.enqueue_seq, j.throttled, j.aged"
)
_PENDING_COLUMNS = (
    "j.id, j.tenant, j.model, j.status, j.priority, j.enqueue_seq,"
    " j.throttle_reason IS NOT NULL AS throttled"
)
# Nothing to decide at claim, so the message runs its own job (``service.flow.admission``
# holds the rest): its job is not pending (the claim then says why), or no limit or budget
# exists, it was not throttled, and no candidate strictly outranks it (a higher priority
# after aging, or as high with fewer calls of its tenant running: ``Pending.outranks``,
# whose last tie-break, the tenant served longest ago, applies only where limits exist).
_PLAIN = """
    (NOT EXISTS (SELECT 1 FROM rows o WHERE o.own)
     OR (NOT f.configured
         AND NOT EXISTS (SELECT 1 FROM rows o WHERE o.own AND o.throttled)
         AND NOT EXISTS (SELECT 1 FROM rows o JOIN rows x ON NOT x.own AND x.id <> o.id
                         WHERE o.own AND (x.aged, -x.running) > (o.aged, -o.running))))
"""
_CLAIM_COLUMNS = ", ".join(f"c.{name}" for name in CLAIM_COLUMNS)
_NO_CLAIM = ", ".join(f"NULL AS {name}" for name in CLAIM_COLUMNS)

# The heads' rows with their tenants' running calls: each head fetched by primary key, its
# state checked on the row (``row_checks``); a subquery with a LIMIT runs once per head.
# As a join (or by an array of ids) the planner, which cannot estimate a recursive CTE,
# read the whole backlog through a pending jobs' index, or the table once when it looked
# small (``benchmarks.backlog_ranking`` times both).
_HEADS_BY_KEY = f"""FROM heads h
        CROSS JOIN LATERAL (
            SELECT j.id, j.tenant, j.model, j.status, j.priority, j.enqueue_seq,
                   j.throttle_reason, j.created_at
            FROM jobs j WHERE j.id = h.id AND {_PENDING_ROW} LIMIT 1
        ) AS j
        LEFT JOIN running r ON r.tenant IS NOT DISTINCT FROM j.tenant
        WHERE :rank"""

# The best-ranked eligible jobs (``candidates``, read, not locked) and the running calls per
# tenant (``running``): what every claim's ranking reads.
_CANDIDATES_CTES = f"""tenants AS (
        (SELECT coalesce(j.tenant, '') AS t FROM jobs j WHERE {_PENDING} AND :rank
         ORDER BY coalesce(j.tenant, '') LIMIT 1)
        UNION ALL
        SELECT (SELECT coalesce(j.tenant, '') FROM jobs j
                WHERE {_PENDING} AND coalesce(j.tenant, '') > tenants.t
                ORDER BY coalesce(j.tenant, '') LIMIT 1)
        FROM tenants WHERE tenants.t IS NOT NULL
    ), heads AS (
        SELECT h.id FROM tenants CROSS JOIN LATERAL (
            (SELECT j.id FROM jobs j
             WHERE coalesce(j.tenant, '') = tenants.t AND {_ELIGIBLE}
             ORDER BY j.priority DESC, j.enqueue_seq LIMIT :limit)
            UNION
            (SELECT j.id FROM jobs j
             WHERE coalesce(j.tenant, '') = tenants.t AND {_ELIGIBLE}
             ORDER BY j.enqueue_seq LIMIT 1)
        ) h
        WHERE tenants.t IS NOT NULL
    ), {_RUNNING_PER_TENANT}, candidates AS (
        -- Each tenant's best before any tenant's second, among equals: a backlog of one
        -- tenant cannot fill the candidates and hide another's job from admission.
        SELECT {_PENDING_COLUMNS_OF_RANKED} FROM (
            SELECT {_PENDING_COLUMNS}, {_AGED} AS aged, coalesce(r.n, 0) AS n,
                   row_number() OVER (PARTITION BY j.tenant ORDER BY {_RANK}) AS place
            {_HEADS_BY_KEY}
        ) j
        ORDER BY j.aged DESC, j.n, j.place, j.enqueue_seq
        LIMIT :limit
    )"""
# Whether any limit or budget exists, and whether any job waits throttled (with no message)
# for a call to end.
_FLAGS_COLUMNS = f"""
    EXISTS (SELECT 1 FROM flow_limits) OR EXISTS (SELECT 1 FROM flow_budgets) AS configured,
    EXISTS (SELECT 1 FROM jobs j
            WHERE j.needs_publish AND j.throttle_reason IS NOT NULL AND {_PENDING})
        AS throttled_waiting"""
# The columns of a ranking's rows, in ``Pending``'s order, then whether the row is the
# message's own job; the last row has the flags and the claim instead.
_RANK_ROW_COLUMNS = """
    w.id AS r_id, w.tenant AS r_tenant, w.model AS r_model, w.status AS r_status,
    w.priority AS r_priority, w.aged AS r_aged, w.running AS r_running,
    w.enqueue_seq AS r_enqueue_seq, w.throttled AS r_throttled, w.own AS r_own"""
_NO_RANK_ROW = "NULL, NULL, NULL, NULL, NULL, NULL, NULL, NULL, NULL, NULL"

# One round trip: the message's job if it may run, the best candidates and their ranks
# (read, not locked: locked only when one may run in the message's place, see
# ``lock_candidates``), whether flow control has anything configured at all, and, when
# there is nothing to decide (see ``_PLAIN``) and ``:claim`` asks for it, the claim of the
# message's own job by ``ezq_claim_job``, which locks the job it takes. Nothing else is
# locked, so it runs on an autocommit connection.
_RANKING = f"""
    WITH RECURSIVE {_CANDIDATES_CTES}, own AS (
        SELECT {_PENDING_COLUMNS}, {_AGED} AS aged FROM jobs j WHERE j.id = :id AND {_ELIGIBLE_ROW}
    ), ranked AS (
        SELECT true AS own, o.* FROM own o
        UNION ALL
        SELECT false, x.* FROM candidates x
    ), rows AS (
        SELECT k.id, k.tenant, k.model, k.status, k.priority, k.aged,
               coalesce(r.n, 0)::int AS running, k.enqueue_seq, k.throttled, k.own
        FROM ranked k
        LEFT JOIN running r ON r.tenant IS NOT DISTINCT FROM k.tenant
    ), flags AS (
        SELECT {_FLAGS_COLUMNS}
    ), decision AS (
        SELECT :claim AND {_PLAIN} AS plain FROM flags f
    ), claim AS (
        -- The function runs only when the decision says so: the subquery's condition is on
        -- the row it is joined to, checked before the function is called.
        SELECT c.* FROM decision d CROSS JOIN LATERAL (
            SELECT * FROM ezq_claim_job(:id, :lease_seconds, :holder) WHERE d.plain
        ) AS c
    )
    SELECT {_RANK_ROW_COLUMNS},
           NULL::boolean AS configured, NULL::boolean AS throttled_waiting, {_NO_CLAIM}
    FROM rows w
    UNION ALL
    -- Always last, always there: the flags, and the claim if it was made.
    SELECT {_NO_RANK_ROW}, f.configured, f.throttled_waiting, {_CLAIM_COLUMNS}
    FROM flags f LEFT JOIN claim c ON true
"""


def _first_pending(condition: str) -> str:
    """The first pending job (meeting ``condition`` too) in the order of the pending jobs'
    index by tenant and enqueue order, as a scalar subquery: NULL when there is none.

    Not ``EXISTS``: Postgres drops an ``EXISTS`` subquery's order and limit, and a plan
    made while many jobs were pending reads the table until it meets one, which once the
    backlog is gone is the whole table at every claim. In the index's order, reading
    the index is the only plan that does not read and sort every row."""
    return f"""(SELECT j.id FROM jobs j WHERE {_PENDING} {condition}
                ORDER BY coalesce(j.tenant, ''), j.enqueue_seq LIMIT 1)"""


def _first_turn_writes(*, only_plain: bool) -> str:
    """The CTEs that write a first turn (``job``, its ``conversation`` and, claimed, its
    ``attempt``) as ``decision`` (one row, ``plain``) says: claimed when plain, else queued;
    with ``only_plain``, nothing unless plain.

    ``decision`` must be ``MATERIALIZED``: inlined, its expression was copied into each of
    the five ``CASE``s that read it, each copy with its own subqueries, all run (18 of them
    in the short claim, where three were meant)."""
    where = "WHERE d.plain" if only_plain else ""
    return f"""job AS (
        INSERT INTO jobs (id, conversation_id, status, model, params, input_messages, tenant,
                          metadata, request_hash, callback_url, surface, created_by, priority,
                          attempts, started_at, lease_expires_at, lease_holder)
        SELECT :id, :conversation_id, CASE WHEN d.plain THEN 'running' ELSE 'queued' END,
               :model, :params, :input_messages, CAST(:tenant AS text), :meta, :request_hash,
               :callback_url, :surface, :created_by, CAST(:priority AS smallint),
               CASE WHEN d.plain THEN 1 ELSE 0 END,
               CASE WHEN d.plain THEN now() END,
               CASE WHEN d.plain THEN now() + make_interval(secs => :lease_seconds) END,
               CASE WHEN d.plain THEN CAST(:holder AS text) END
        FROM decision d {where}
        RETURNING id, conversation_id, status, model, params, input_messages, tenant, surface,
                  priority, enqueue_seq, callback_url, attempts
    ), conversation AS (
        INSERT INTO conversations (id, tenant, metadata)
        SELECT job.conversation_id, job.tenant, :meta FROM job
    ), attempt AS (
        INSERT INTO job_attempts (job_id, attempt, started_at)
        SELECT job.id, 1, now() FROM job WHERE job.status = 'running'
    )"""


# The claim of a first turn written claimed, as ``ezq_claim_job``'s row reads (its columns,
# ``CLAIM_COLUMNS``, in order): a new conversation has no history.
_FIRST_TURN_CLAIM_VALUES = (
    "CASE WHEN job.status = 'running' THEN 'claimed' END",
    "job.status",
    "job.conversation_id",
    "job.attempts",
    "job.model",
    "job.params",
    "job.input_messages",
    "'[]'::jsonb",
    "job.tenant",
    "job.surface",
    "NULL::double precision",
    "NULL::uuid",
    "job.callback_url",
)
_FIRST_TURN_CLAIM = ", ".join(_FIRST_TURN_CLAIM_VALUES)
_FIRST_TURN_CLAIM_NAMED = ", ".join(
    f"{value} AS {name}"
    for value, name in zip(_FIRST_TURN_CLAIM_VALUES, CLAIM_COLUMNS, strict=True)
)

# A first turn not written yet (a foreign producer's message: a new conversation, no
# idempotency key), written by its own ranking: running and claimed when there is nothing
# to decide (as ``_PLAIN`` decides for a job that waits: no limit or budget exists and no
# candidate strictly outranks it; a new job is not throttled), queued otherwise, the
# caller then admitting it as any other (``service.flow.admission.admit``). Written
# claimed, its row is written once where an insert and ``ezq_claim_job``'s update wrote
# two versions of it, each entering the jobs table's indexes; a new conversation has no
# earlier turn to wait for, no history to read, and no other transaction can see (or
# lock) the new rows before the statement commits. A taken job id fails the statement
# (``pk_jobs``), and nothing is written.
_NEW_AGED = "least(9, CAST(:priority AS smallint))::int"
_FIRST_TURN_RANKING = f"""
    WITH RECURSIVE {_CANDIDATES_CTES}, others AS (
        SELECT x.id, x.tenant, x.model, x.status, x.priority, x.aged,
               coalesce(r.n, 0)::int AS running, x.enqueue_seq, x.throttled
        FROM candidates x LEFT JOIN running r ON r.tenant IS NOT DISTINCT FROM x.tenant
    ), flags AS (
        SELECT {_FLAGS_COLUMNS},
               coalesce((SELECT r.n FROM running r
                         WHERE r.tenant IS NOT DISTINCT FROM CAST(:tenant AS text)), 0)::int
                   AS running
    ), decision AS MATERIALIZED (
        SELECT NOT f.configured AND NOT EXISTS (
                   SELECT 1 FROM others x WHERE (x.aged, -x.running) > ({_NEW_AGED}, -f.running)
               ) AS plain
        FROM flags f
    ), {_first_turn_writes(only_plain=False)}
    SELECT {_RANK_ROW_COLUMNS},
           NULL::boolean AS configured, NULL::boolean AS throttled_waiting, {_NO_CLAIM}
    FROM (
        -- The new job, as the ranking of a job that waits reads it, when it waits.
        SELECT true AS own, job.id, job.tenant, job.model, job.status, job.priority::int,
               {_NEW_AGED} AS aged, f.running, job.enqueue_seq, false AS throttled
        FROM job CROSS JOIN flags f WHERE job.status = 'queued'
        UNION ALL
        SELECT false, o.* FROM others o
    ) w
    UNION ALL
    -- Always last, always there: the flags, and the claim if it was made (the columns of
    -- ``ezq_claim_job``'s row for a claimed job).
    SELECT {_NO_RANK_ROW}, f.configured, f.throttled_waiting, {_FIRST_TURN_CLAIM}
    FROM flags f CROSS JOIN job
"""

# A first turn when no job is pending and no limit or budget exists (most of them, below
# saturation): nothing to rank, so it is written claimed by a short statement, or not at
# all when something waits or is configured (the caller then runs ``_FIRST_TURN_RANKING``,
# which decides as this does in that case: no candidate, ``plain`` when nothing is
# configured). The ranking's statement initialises some sixty plan nodes at each run, a
# third of them for candidates (tenants, heads, running calls) that do not exist then:
# about 40 % of the Postgres CPU of such a claim (``benchmarks.row_plans``).
_FIRST_TURN_PLAIN = DriverStatement.of(
    text(
        f"""
    WITH decision AS MATERIALIZED (
        SELECT {_first_pending("")} IS NULL
               AND NOT EXISTS (SELECT 1 FROM flow_limits)
               AND NOT EXISTS (SELECT 1 FROM flow_budgets) AS plain
    ), {_first_turn_writes(only_plain=True)}
    SELECT false AS configured, false AS throttled_waiting, {_FIRST_TURN_CLAIM_NAMED}
    FROM job
"""
    ),
    json=FIRST_TURN_JSON,
)

# A queued job's claim when no other job is pending, it is not throttled and no limit or
# budget exists (most claims below saturation): nothing to rank, so ``ezq_claim_job``
# claims it (or says why not) with no ranking; otherwise nothing is called, and the
# ranking's statement decides, as it decides the same in that case (no candidate: plain
# when nothing is configured and the job is not throttled). As for a first turn
# (``_FIRST_TURN_PLAIN``): the ranking's plan nodes are not initialised for candidates that
# do not exist. The decision is a one-time filter above the function's scan, checked
# before the function is called (joined to it, the planner may call it first).
_PLAIN_CLAIM = DriverStatement.of(
    text(
        f"""
    WITH decision AS MATERIALIZED (
        SELECT {_first_pending("AND j.id <> :id")} IS NULL
               AND NOT EXISTS (SELECT 1 FROM jobs j
                               WHERE j.id = :id AND j.throttle_reason IS NOT NULL)
               AND NOT EXISTS (SELECT 1 FROM flow_limits)
               AND NOT EXISTS (SELECT 1 FROM flow_budgets) AS plain
    )
    SELECT false AS configured, false AS throttled_waiting, {_CLAIM_COLUMNS}
    FROM ezq_claim_job(:id, :lease_seconds, :holder) AS c
    WHERE (SELECT plain FROM decision)
"""
    )
)

# Built once per value of ``:rank``, written into the statement: the claim runs it on every
# message, and building a text clause parses it. Sent as a parameter, ``rank`` false (the
# message's sender waits for its result: a foreign producer's default) made Postgres plan
# the statement anew at every run, about 2 ms of a claim's 3: a plan made for the value
# drops the unranked branches, so it always looked cheaper than the plan made once for any
# value, which Postgres then never chose. Written in, each statement has one shape, and
# Postgres keeps its plan from the sixth run (``pg_prepared_statements.generic_plans``).
_RANKING_STATEMENTS = {
    rank: DriverStatement.of(text(_RANKING.replace(":rank", "true" if rank else "false")))
    for rank in (True, False)
}
_FIRST_TURN_STATEMENTS = {
    rank: DriverStatement.of(
        text(_FIRST_TURN_RANKING.replace(":rank", "true" if rank else "false")),
        json=FIRST_TURN_JSON,
    )
    for rank in (True, False)
}


@dataclass(frozen=True, slots=True)
class Lease:
    """What a claim gives the job it takes: a lease of ``seconds``, held by ``holder``."""

    seconds: float
    holder: str | None


def ranking(
    session: Executor,
    job_id: uuid.UUID,
    *,
    aging_s: float,
    limit: int,
    rank: bool = True,
    claim: Lease | None = None,
    first: Mapping[str, Any] | None = None,
) -> Ranking:
    """Read the message's job if it is pending, due and its turn; with ``rank``, also the
    ``limit`` best-ranked eligible jobs. With ``claim``, when there is nothing to decide,
    also claim the message's own job (``Ranking.claim_row``). One round trip; nothing is
    locked but the job claimed.

    ``first``: the message's job is a first turn not written yet (a foreign message's),
    whose values these are (``queries.first_turn_values``; its id is ``job_id``): the
    same statement writes it, claimed when there is nothing to decide, else queued, ranked
    as the message's own job (``_FIRST_TURN_RANKING``); it needs ``claim``. A taken id
    raises ``IntegrityError`` (``queries.id_taken``), with nothing written."""
    params: dict[str, Any] = {
        "id": job_id,
        "aging": aging_s,
        "limit": limit,
        "claim": claim is not None,
        "lease_seconds": claim.seconds if claim is not None else None,
        "holder": claim.holder if claim is not None else None,
    }
    if first is None:
        rows = driver.rows(session, _RANKING_STATEMENTS[rank], params)
    else:
        if claim is None:
            raise TypeError("a first turn is written claimed when it may run: give its lease")
        rows = driver.rows(session, _FIRST_TURN_STATEMENTS[rank], {**first, **params})
    own: Pending | None = None
    candidates: list[Pending] = []
    for row in rows[:-1]:
        job = Pending(*row[:9])
        if row[9]:
            own = job
        elif job.id != job_id:
            candidates.append(job)
    candidates.sort(key=Pending.order_key)
    last = rows[-1]
    return Ranking(
        own,
        candidates,
        rules_configured=bool(last.configured),
        throttled_waiting=bool(last.throttled_waiting),
        claim_row=last if last.outcome is not None else None,
    )


def first_turn_plain(
    executor: Executor, job_id: uuid.UUID, *, claim: Lease, first: Mapping[str, Any]
) -> Ranking | None:
    """Write the message's first turn (``first``, its values; its id is ``job_id``) claimed
    when no job is pending and no limit or budget exists, and return its ranking (nothing
    ranked, the claim made); write nothing and return None otherwise, for ``ranking``
    to decide. One round trip. A taken id raises ``IntegrityError``, as ``ranking``."""
    params = {**first, "id": job_id, "lease_seconds": claim.seconds, "holder": claim.holder}
    return _claimed_alone(driver.rows(executor, _FIRST_TURN_PLAIN, params))


def claim_plain(executor: Executor, job_id: uuid.UUID, *, claim: Lease) -> Ranking | None:
    """Claim the message's job with ``ezq_claim_job`` when no other job is pending, it is
    not throttled and no limit or budget exists, and return its ranking (nothing ranked,
    the claim's row, whatever it says); call nothing and return None otherwise, for
    ``ranking`` to decide. One round trip."""
    params = {"id": job_id, "lease_seconds": claim.seconds, "holder": claim.holder}
    return _claimed_alone(driver.rows(executor, _PLAIN_CLAIM, params))


def _claimed_alone(rows: list[Any]) -> Ranking | None:
    """A short claim's ranking: nothing ranked, nothing configured, nothing throttled
    waiting (any such job is pending, so the claim was not made), and its claim's row; None
    when it declined (no row)."""
    if not rows:
        return None
    return Ranking(None, [], rules_configured=False, throttled_waiting=False, claim_row=rows[0])


_LOCK_OWN = text(f"SELECT j.id FROM jobs j WHERE j.id = :id AND {_ELIGIBLE_ROW} FOR UPDATE OF j")


def lock_own(session: Session, job_id: uuid.UUID) -> bool:
    """Lock the message's job for the claim's transaction, waiting for another claim that
    holds it (the same job is not admitted twice at once); False when it may no longer run.
    One round trip."""
    return session.execute(_LOCK_OWN, {"id": job_id}).first() is not None


# The candidates are the heads of the backlog, which are the very jobs whose own messages
# are being claimed at the same moment: locked at ranking, each claim made the claims of
# those jobs wait on it (most claims, under load). They are locked only when one of them
# may run in a message's place, with what made them eligible checked again.
_LOCK_CANDIDATES = text(
    f"SELECT j.id FROM jobs j WHERE j.id = ANY(:ids) AND {_ELIGIBLE_ROW}"
    " FOR UPDATE OF j SKIP LOCKED"
)


def lock_candidates(session: Session, job_ids: list[uuid.UUID]) -> set[uuid.UUID]:
    """Lock those of ``job_ids`` that are still eligible and that no other claim holds;
    return them. One round trip."""
    rows = session.execute(_LOCK_CANDIDATES, {"ids": job_ids}).scalars()
    return set(rows)


# --- limits --------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class Limit:
    id: uuid.UUID
    tenant: str
    model: str
    max_concurrent: int | None
    requests_per_window: int | None
    tokens_per_window: int | None
    adaptive_ttft_ms: int | None
    current_concurrency: float | None

    @property
    def concurrency(self) -> int | None:
        """The concurrency in force: the adaptive one when the limit adapts."""
        if self.max_concurrent is None:
            return None
        if self.adaptive_ttft_ms is not None and self.current_concurrency is not None:
            return max(1, min(self.max_concurrent, int(self.current_concurrency)))
        return self.max_concurrent

    @property
    def scope(self) -> str:
        return f"tenant={self.tenant} model={self.model}"


_LIMIT_COLUMNS = (
    "id, tenant, model, max_concurrent, requests_per_window, tokens_per_window,"
    " adaptive_ttft_ms, current_concurrency"
)


@dataclass(frozen=True, slots=True)
class Rules:
    """The limits and budgets that apply to one tenant x model."""

    limits: list[Limit]
    budget_ids: list[uuid.UUID]


def rules_for(session: Session, tenant: str | None, model: str) -> Rules:
    """The limits and budgets that apply to calls of ``tenant`` on ``model``, locked in a
    fixed order so that two claims in one scope decide one after the other (no overshoot,
    no deadlock); one round trip."""
    rows = session.execute(
        text(
            f"""
            WITH l AS (
                SELECT {_LIMIT_COLUMNS} FROM flow_limits
                WHERE tenant IN (:tenant, '*') AND model IN (:model, '*')
                ORDER BY id FOR UPDATE
            ), b AS (
                SELECT id FROM flow_budgets
                WHERE tenant = :tenant AND model IN (:model, '*')
                ORDER BY id FOR UPDATE
            )
            SELECT true, l.* FROM l
            UNION ALL
            SELECT false, b.id, NULL, NULL, NULL, NULL, NULL, NULL, NULL FROM b
            """
        ),
        {"tenant": tenant if tenant is not None else "", "model": model},
    ).all()
    return Rules(
        limits=[Limit(*row[1:]) for row in rows if row[0]],
        budget_ids=[row[1] for row in rows if not row[0]],
    )


@dataclass(frozen=True, slots=True)
class ScopeUse:
    running: int
    requests: int
    tokens: int
    # When the oldest call in the window leaves it (None: the window is empty).
    frees_at: datetime | None


def _scope_filter(limit: Limit) -> str:
    # Only column names vary; values are bound.
    parts = ["true"]
    if limit.tenant != ANY:
        parts.append("tenant = :tenant")
    if limit.model != ANY:
        parts.append("model = :model")
    return " AND ".join(parts)


def scope_use(session: Session, limit: Limit, *, window_s: float) -> ScopeUse:
    """What is in flight and within the rate window in ``limit``'s scope; one round trip."""
    where = _scope_filter(limit)
    row = session.execute(
        text(
            f"""
            SELECT (SELECT count(*) FROM jobs WHERE status = 'running' AND {where}),
                   count(*), coalesce(sum(coalesce(tokens_used, tokens_reserved)), 0),
                   min(admitted_at) + make_interval(secs => :window)
            FROM flow_admissions
            WHERE admitted_at > now() - make_interval(secs => :window) AND {where}
            """
        ),
        {"tenant": limit.tenant, "model": limit.model, "window": window_s},
    ).one()
    return ScopeUse(running=row[0], requests=row[1], tokens=int(row[2]), frees_at=row[3])


def list_limits(session: Session) -> list[Limit]:
    rows = session.execute(
        text(f"SELECT {_LIMIT_COLUMNS} FROM flow_limits ORDER BY tenant, model")
    ).all()
    return [Limit(*row) for row in rows]


def set_limit(
    session: Session,
    *,
    tenant: str,
    model: str,
    max_concurrent: int | None,
    requests_per_window: int | None,
    tokens_per_window: int | None,
    adaptive_ttft_ms: int | None,
) -> Limit:
    """Create or replace the limit of one scope."""
    row = session.execute(
        text(
            f"""
            INSERT INTO flow_limits (id, tenant, model, max_concurrent, requests_per_window,
                                     tokens_per_window, adaptive_ttft_ms, current_concurrency)
            VALUES (:id, :tenant, :model, :mc, :rpw, :tpw, :ttft, :current)
            ON CONFLICT (tenant, model) DO UPDATE SET
                max_concurrent = excluded.max_concurrent,
                requests_per_window = excluded.requests_per_window,
                tokens_per_window = excluded.tokens_per_window,
                adaptive_ttft_ms = excluded.adaptive_ttft_ms,
                current_concurrency = excluded.current_concurrency,
                updated_at = now()
            RETURNING {_LIMIT_COLUMNS}
            """
        ),
        {
            "id": uuid.uuid4(),
            "tenant": tenant,
            "model": model,
            "mc": max_concurrent,
            "rpw": requests_per_window,
            "tpw": tokens_per_window,
            "ttft": adaptive_ttft_ms,
            # An adaptive limit starts at its ceiling and moves from there.
            "current": None if adaptive_ttft_ms is None else max_concurrent,
        },
    ).one()
    return Limit(*row)


def delete_limit(session: Session, *, tenant: str, model: str) -> bool:
    result = session.execute(
        text("DELETE FROM flow_limits WHERE tenant = :tenant AND model = :model"),
        {"tenant": tenant, "model": model},
    )
    return bool(getattr(result, "rowcount", 0))


# --- budgets -------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class Budget:
    id: uuid.UUID
    tenant: str
    model: str
    monthly_usd: Decimal
    # This UTC month's spend (token_usage) and the worst case reserved by running calls.
    spent_usd: Decimal
    reserved_usd: Decimal

    @property
    def remaining_usd(self) -> Decimal:
        return self.monthly_usd - self.spent_usd - self.reserved_usd


# This UTC month's priced spend is read from the usage rollup (kept exact by triggers on
# ``token_usage``, in the transaction that writes the usage): a few rows per day, and spend
# is counted whether or not a budget existed when the call ran.
_BUDGET_SELECT = """
    SELECT b.id, b.tenant, b.model, b.monthly_usd,
        coalesce((SELECT sum(u.cost_usd) FROM usage_rollup_daily u
                  WHERE u.day >= date_trunc('month', now() AT TIME ZONE 'UTC')::date
                    AND coalesce(u.tenant, '') = b.tenant AND u.tenant = b.tenant
                    AND (b.model = '*' OR u.model = b.model)), 0),
        coalesce((SELECT sum(a.cost_reserved) FROM flow_admissions a
                  WHERE a.settled_at IS NULL AND a.tenant = b.tenant
                    AND (b.model = '*' OR a.model = b.model)), 0)
    FROM flow_budgets b
"""


def budgets_by_id(session: Session, ids: list[uuid.UUID]) -> list[Budget]:
    """Budgets (locked by ``rules_for``) with what is spent and reserved this month.

    A call's worst case stays reserved until it settles, and it settles in the transaction
    that records its usage: at every commit a call counts once, as its reservation or as
    its real cost, never both and never neither."""
    if not ids:
        return []
    rows = session.execute(
        text(_BUDGET_SELECT + " WHERE b.id = ANY(:ids) ORDER BY b.model"), {"ids": ids}
    ).all()
    return [Budget(*row) for row in rows]


def list_budgets(session: Session, *, tenant: str | None = None) -> list[Budget]:
    where = " WHERE b.tenant = :tenant" if tenant is not None else ""
    rows = session.execute(
        text(_BUDGET_SELECT + where + " ORDER BY b.tenant, b.model"), {"tenant": tenant}
    ).all()
    return [Budget(*row) for row in rows]


def set_budget(session: Session, *, tenant: str, model: str, monthly_usd: Decimal) -> None:
    session.execute(
        text(
            """
            INSERT INTO flow_budgets (id, tenant, model, monthly_usd)
            VALUES (:id, :tenant, :model, :usd)
            ON CONFLICT (tenant, model) DO UPDATE
                SET monthly_usd = excluded.monthly_usd, updated_at = now()
            """
        ),
        {"id": uuid.uuid4(), "tenant": tenant, "model": model, "usd": monthly_usd},
    )


def delete_budget(session: Session, *, tenant: str, model: str) -> bool:
    result = session.execute(
        text("DELETE FROM flow_budgets WHERE tenant = :tenant AND model = :model"),
        {"tenant": tenant, "model": model},
    )
    return bool(getattr(result, "rowcount", 0))


@dataclass(frozen=True, slots=True)
class Estimate:
    """A call's worst case: its prompt (estimated), its completion cap, their price."""

    prompt_tokens: int
    max_tokens: int
    # USD per token for input and output; None when the model has no price.
    input_price: Decimal | None
    output_price: Decimal | None

    @property
    def tokens(self) -> int:
        return self.prompt_tokens + self.max_tokens

    @property
    def cost_usd(self) -> Decimal | None:
        if self.input_price is None or self.output_price is None:
            return None
        return self.prompt_tokens * self.input_price + self.max_tokens * self.output_price


# Quarter-tokens of a text sent to the gateway: 2 x its UTF-8 bytes - its characters. So
# ASCII counts 4 characters a token (English runs about 4), a 2-byte character (Cyrillic,
# Greek, Arabic, Hebrew) 3/4 of a token, a 3-byte one (CJK, kana, Hangul, Devanagari, Thai)
# 5/4 and a 4-byte one (emoji, rare CJK) 7/4: at least what byte-level BPE tokenizers count
# for such scripts (about 1 token a CJK character, where characters / 4 said 1/4). One more
# pass over text already read; no tokenizer.
# What decides the completion cap of a request that names none: (model, surface, what sizes
# it and picks its surface: ``thinking``, ``reasoning_effort``, and whether it has
# ``tools``, ``cache_hints`` or a ``thinking_history``).
DefaultCap = Callable[[str, str, dict[str, Any]], int]


def estimate(
    session: Session, job_id: uuid.UUID, *, default_max_tokens: int | DefaultCap
) -> Estimate:
    """Estimate a job's next call in one round trip: everything it sends as text, its
    history and new messages and its whole ``params`` (``tools``, ``response_format``,
    ``tool_choice``...), as JSON text (so an overestimate) in quarter-tokens, plus 4
    tokens a message and 16 a call, and its ``max_tokens`` (else ``max_completion_tokens``,
    else ``default_max_tokens``: a number, or what it says for the job's model, surface and
    sizing params, since a surface may send a cap of its own)."""
    row = session.execute(
        text(
            """
            SELECT ceil((2 * octet_length(s.sent) - length(s.sent) + coalesce(h.quarters, 0))
                        / 4.0)
                       + 4 * (jsonb_array_length(j.input_messages) + coalesce(h.n, 0)) + 16,
                   coalesce(j.params->>'max_tokens', j.params->>'max_completion_tokens'),
                   p.input_per_mtok / 1000000, p.output_per_mtok / 1000000,
                   j.model, j.surface,
                   jsonb_strip_nulls(jsonb_build_object(
                       'thinking', j.params->'thinking',
                       'reasoning_effort', j.params->'reasoning_effort',
                       'tools', CASE WHEN jsonb_typeof(j.params->'tools') = 'array'
                                      AND jsonb_array_length(j.params->'tools') > 0
                                     THEN true END,
                       'cache_hints', CASE WHEN s.sent LIKE '%"cache_control"%' THEN true END,
                       'thinking_history', CASE WHEN h.thought THEN true END))
            FROM jobs j
            CROSS JOIN LATERAL (
                SELECT j.input_messages::text || coalesce(j.params::text, '') AS sent) s
            LEFT JOIN LATERAL (
                SELECT sum(2 * octet_length(m.sent) - length(m.sent)) AS quarters,
                       count(*) AS n, bool_or(m.thought) AS thought
                FROM (SELECT concat(coalesce(content_parts::text, content), tool_calls::text,
                                    refusal, reasoning_content) AS sent,
                             thinking_blocks IS NOT NULL AS thought
                      FROM messages WHERE conversation_id = j.conversation_id) m) h ON true
            LEFT JOIN LATERAL (
                SELECT input_per_mtok, output_per_mtok FROM model_prices
                WHERE model = j.model AND effective_from <= now()
                ORDER BY effective_from DESC LIMIT 1) p ON true
            WHERE j.id = :id
            """
        ),
        {"id": job_id},
    ).one()
    if row[1] is not None:
        max_tokens = int(row[1])
    elif callable(default_max_tokens):
        max_tokens = default_max_tokens(row[4], row[5], row[6])
    else:
        max_tokens = default_max_tokens
    return Estimate(int(row[0]), max_tokens, row[2], row[3])


# --- admission, throttling, settling -----------------------------------------------------


def admit(
    session: Session,
    *,
    job_id: uuid.UUID,
    attempt: int,
    tenant: str | None,
    model: str,
    tokens: int,
    cost_usd: Decimal | None,
) -> None:
    """Record an admitted call (its reservation) and clear the job's throttle; one trip."""
    session.execute(
        text(
            """
            WITH admitted AS (
                INSERT INTO flow_admissions
                    (job_id, attempt, tenant, model, tokens_reserved, cost_reserved)
                VALUES (:job_id, :attempt, :tenant, :model, :tokens, :cost)
                ON CONFLICT (job_id, attempt) DO NOTHING
            )
            UPDATE jobs SET throttled_until = NULL, throttle_reason = NULL
            WHERE id = :job_id AND throttle_reason IS NOT NULL
            """
        ),
        {
            "job_id": job_id,
            "attempt": attempt,
            "tenant": tenant,
            "model": model,
            "tokens": tokens,
            "cost": cost_usd,
        },
    )


def clear_throttle(session: Session, job_id: uuid.UUID) -> None:
    """A throttled job was claimed: its reason no longer applies."""
    session.execute(
        text(
            "UPDATE jobs SET throttled_until = NULL, throttle_reason = NULL"
            " WHERE id = :id AND throttle_reason IS NOT NULL"
        ),
        {"id": job_id},
    )


def throttle(
    session: Session, job_id: uuid.UUID, *, reason: str, until: datetime | None, recheck_s: float
) -> None:
    """Hold a pending job back: no message, a reason and a time. With ``until`` (a rate
    window), every worker's publisher publishes it then (``wake_due``); without, the sweep
    does ``recheck_s`` from now, and a finishing call wakes it sooner."""
    session.execute(
        text(
            f"""
            UPDATE jobs AS j SET needs_publish = true, throttle_reason = :reason,
                throttled_until = :until,
                dispatched_at = greatest(dispatched_at,
                    coalesce(:until, now() + make_interval(secs => :recheck)))
            WHERE j.id = :id AND {_PENDING_ROW}
            """
        ),
        {"id": job_id, "reason": reason, "until": until, "recheck": recheck_s},
    )


def fail_at_claim(session: Session, job_id: uuid.UUID, *, error_type: str, message: str) -> None:
    """End a pending job as failed before any call (e.g. over budget)."""
    session.execute(
        text(
            f"""
            UPDATE jobs AS j SET status = 'failed', error_type = :type, error_status = NULL,
                error = :message, finished_at = now(), needs_publish = false,
                throttled_until = NULL, throttle_reason = NULL
            WHERE j.id = :id AND {_PENDING_ROW}
            """
        ),
        {"id": job_id, "type": error_type, "message": message},
    )


# A call's admission found by its key, its state checked on the row (``row_checks``): with
# statistics taken when every admission was settled, the check in the same WHERE read all
# unsettled ones (the calls in flight) through their partial index at each settle.
_UNSETTLED_ROW = on_row("a.settled_at IS NULL")

_THROTTLED = f"j.needs_publish AND j.throttle_reason IS NOT NULL AND {_PENDING}"


def _throttled_heads(scoped: bool) -> str:
    """Per priority level, the first ``:pool`` throttled jobs in enqueue order (the oldest,
    which aging raised most): among them are the best ``:pool`` by priority after aging
    then enqueue order, read in a few index probes per level (``ix_jobs_throttled``, or
    ``ix_jobs_throttled_scope`` for the ``scope``'s tenant x model), never every throttled
    job (a batch may leave 50,000)."""
    scope = "CROSS JOIN scope s" if scoped else ""
    where = "AND coalesce(j.tenant, '') = s.tenant AND j.model = s.model" if scoped else ""
    # With nothing throttled (most calls' ends), one probe of ``ix_jobs_throttled`` decides
    # it, not twenty of the levels: an uncorrelated condition, checked once.
    return f"""SELECT {"true" if scoped else "false"} AS in_scope, b.*
        FROM generate_series({c.PRIORITY_MIN}, {c.PRIORITY_MAX}) AS l(level) {scope}
        CROSS JOIN LATERAL (
            SELECT j.id, {_AGED} AS aged, j.enqueue_seq FROM jobs j
            WHERE {_THROTTLED} {where} AND j.priority = l.level
            ORDER BY j.enqueue_seq LIMIT :pool
        ) AS b
        WHERE EXISTS (SELECT FROM jobs j WHERE {_THROTTLED})"""


# The throttled jobs to wake (``best``), locked: the best ``:scope_limit`` of the tenant x
# model of the job ``:scope_of`` (the call that ended: every limit that counted it covers
# them, so its end can lift their hold), then the best ``:other_limit`` of all, each by
# priority after aging, then enqueue order (the ranking's order, less its tie-breaks
# between tenants, which each woken job's claim applies). Locked rows are passed over (another
# call's end is waking them) and the next taken, their state checked again on the row.
_BEST_THROTTLED = f"""
    scope AS (
        SELECT coalesce(s.tenant, '') AS tenant, s.model FROM jobs s
        WHERE s.id = CAST(:scope_of AS uuid)
    ), throttled_heads AS (
        {_throttled_heads(True)}
        UNION ALL
        {_throttled_heads(False)}
    ), scope_best AS (
        SELECT j.id FROM throttled_heads h JOIN jobs j ON j.id = h.id
        WHERE h.in_scope AND {on_row(_THROTTLED)}
        ORDER BY h.aged DESC, h.enqueue_seq
        LIMIT :scope_limit
        FOR UPDATE OF j SKIP LOCKED
    ), other_best AS (
        SELECT j.id FROM throttled_heads h JOIN jobs j ON j.id = h.id
        WHERE NOT h.in_scope AND {on_row(_THROTTLED)}
          AND j.id NOT IN (SELECT id FROM scope_best)
        ORDER BY h.aged DESC, h.enqueue_seq
        LIMIT :other_limit
        FOR UPDATE OF j SKIP LOCKED
    ), best AS (
        SELECT id FROM scope_best UNION SELECT id FROM other_best
    )
"""


def _wake_params(*, scope_of: uuid.UUID | None, limit: int, aging_s: float) -> dict[str, Any]:
    """``_BEST_THROTTLED``'s parameters: ``limit`` jobs of ``scope_of``'s scope and the best
    one of all, or without a scope the best ``limit`` of all."""
    other = 1 if scope_of is not None else limit
    return {
        "scope_of": scope_of,
        "scope_limit": limit if scope_of is not None else 0,
        "other_limit": other,
        # Enough per level for the best of both, with room for jobs locked meanwhile.
        "pool": limit + other + 2,
        "aging": aging_s,
    }


def served(session: Session, tenants: Iterable[str | None]) -> dict[str | None, datetime]:
    """When each of ``tenants`` last had a call admitted (absent: never), jobs without a
    tenant (None) being one more: one index probe each
    (``ix_flow_admissions_tenant_admitted_at``), in one round trip."""
    wanted = set(tenants)
    named = sorted(t for t in wanted if t is not None)
    rows = session.execute(
        text(
            "SELECT t.tenant, (SELECT max(a.admitted_at) FROM flow_admissions a"
            " WHERE a.tenant = t.tenant) FROM unnest(CAST(:tenants AS text[])) AS t(tenant)"
            " UNION ALL"
            " SELECT NULL, (SELECT max(a.admitted_at) FROM flow_admissions a"
            " WHERE a.tenant IS NULL) WHERE :tenantless"
        ),
        {"tenants": named, "tenantless": None in wanted},
    ).all()
    return {tenant: at for tenant, at in rows if at is not None}


def settle(
    session: Session, job_id: uuid.UUID, attempt: int, *, wake: int, aging_s: float = 60.0
) -> list[uuid.UUID]:
    """Settle a finished call and wake throttled jobs, in one round trip.

    The call's reservation becomes the tokens it really used (its usage row; a call without
    one keeps its prompt estimate) and stops counting against budgets, which from then on
    count its priced usage (run it in the transaction that writes the usage); adaptive
    limits in its scope move with its time to first token (additive increase,
    multiplicative decrease). Then, as ``wake_throttled`` with the call's job as
    ``scope_of``, up to ``wake`` throttled jobs of its tenant x model and the best one of
    all are marked as published and returned, for the caller to publish after the
    commit."""
    rows = session.execute(
        text(
            f"""
            WITH settled AS (
                UPDATE flow_admissions a SET settled_at = now(),
                    tokens_used = coalesce(
                        (SELECT u.total_tokens FROM token_usage u WHERE u.job_id = a.job_id),
                        a.tokens_reserved)
                WHERE a.job_id = :job_id AND a.attempt = :attempt AND {_UNSETTLED_ROW}
                RETURNING a.tenant, a.model, a.job_id
            ), ttft AS (
                SELECT extract(epoch FROM t.first_token_at - t.started_at) * 1000 AS ms
                FROM job_attempts t
                WHERE t.job_id = :job_id AND t.attempt = :attempt
                  AND t.first_token_at IS NOT NULL
            ), adapted AS (
                UPDATE flow_limits l SET current_concurrency = CASE
                        WHEN ttft.ms > l.adaptive_ttft_ms
                            THEN greatest(1, l.current_concurrency * 0.7)
                        ELSE least(l.max_concurrent,
                                   l.current_concurrency + 1 / greatest(l.current_concurrency, 1))
                    END
                FROM settled, ttft
                WHERE l.adaptive_ttft_ms IS NOT NULL
                  AND l.tenant IN (coalesce(settled.tenant, ''), '*')
                  AND l.model IN (settled.model, '*')
                RETURNING l.id
            ), {_BEST_THROTTLED}
            UPDATE jobs SET needs_publish = false, dispatched_at = now()
            FROM best WHERE jobs.id = best.id
            RETURNING jobs.id
            """
        ),
        {
            "job_id": job_id,
            "attempt": attempt,
            **_wake_params(scope_of=job_id, limit=wake, aging_s=aging_s),
        },
    ).scalars()
    return list(rows)


def wake_throttled(
    session: Session,
    *,
    limit: int,
    scope_of: uuid.UUID | None = None,
    aging_s: float = 60.0,
) -> list[uuid.UUID]:
    """The best-ranked throttled jobs (priority after ``aging_s``, then enqueue order),
    marked as published: the caller publishes them after the commit (a capacity just
    freed). With ``scope_of``, the job whose call ended, ``limit`` of its tenant x model
    (those whose hold its end can lift) and the best one of all; without, the best
    ``limit`` of all. A hint only: each woken job's claim ranks the whole backlog again,
    and checks its limits."""
    rows = session.execute(
        text(
            f"""
            WITH {_BEST_THROTTLED}
            UPDATE jobs SET needs_publish = false, dispatched_at = now()
            FROM best WHERE jobs.id = best.id
            RETURNING jobs.id
            """
        ),
        _wake_params(scope_of=scope_of, limit=limit, aging_s=aging_s),
    ).scalars()
    return list(rows)


# Jobs held by a rate window (``throttled_until`` set), due when it frees them; through
# ``ix_jobs_rate_held`` (migration 0023). Jobs held with no time (a concurrency limit, an
# outranking) are woken by the end of a call, or by the sweep's recheck: publishing each of
# them every ``EZQ_FLOW_RECHECK`` would make one futile claim each per recheck (a batch of
# 50,000 lines under a concurrency limit: 10,000 a second).
_RATE_HELD = f"{_THROTTLED} AND j.throttled_until IS NOT NULL"

# Rate-held jobs that are due, the most overdue first, locked and marked as published;
# then, in a last row, how long until the next one is due (on the database's clock), NULL
# when none waits.
_WAKE_DUE = text(
    f"""
    WITH due AS (
        SELECT j.id FROM jobs j
        WHERE {_RATE_HELD} AND j.dispatched_at <= now()
        ORDER BY j.dispatched_at
        LIMIT :limit
        FOR UPDATE OF j SKIP LOCKED
    ), woken AS (
        UPDATE jobs SET needs_publish = false, dispatched_at = now()
        FROM due WHERE jobs.id = due.id
        RETURNING jobs.id
    )
    SELECT w.id, NULL::double precision AS next_in FROM woken w
    UNION ALL
    SELECT NULL, extract(epoch FROM (
        SELECT j.dispatched_at FROM jobs j
        WHERE {_RATE_HELD} AND j.dispatched_at > now()
        ORDER BY j.dispatched_at LIMIT 1) - now())::double precision
    """
)


def wake_due(session: Session, *, limit: int) -> tuple[list[uuid.UUID], float | None]:
    """Up to ``limit`` throttled jobs that are due, marked as published for the caller to
    publish after the commit, and the seconds until the next one is due (None: none
    waits). Each job is taken by one caller: rows another holds are passed over, and a
    job taken is no longer flagged. One round trip."""
    rows = session.execute(_WAKE_DUE, {"limit": limit}).all()
    *woken, last = rows
    return [row[0] for row in woken], last[1]


def settle_lost(session: Session, *, limit: int) -> int:
    """Settle the calls whose job no longer runs that attempt but that were never settled
    (their worker died before recording): their reservations stop counting."""
    result = session.execute(
        text(
            """
            WITH settled AS (
                UPDATE flow_admissions a SET settled_at = now(),
                    tokens_used = coalesce(
                        (SELECT u.total_tokens FROM token_usage u WHERE u.job_id = a.job_id),
                        a.tokens_reserved)
                WHERE a.id IN (
                    SELECT a2.id FROM flow_admissions a2
                    WHERE a2.settled_at IS NULL AND NOT EXISTS (
                        SELECT 1 FROM jobs j WHERE j.id = a2.job_id AND j.status = 'running'
                          AND j.attempts = a2.attempt)
                    LIMIT :limit
                    FOR UPDATE SKIP LOCKED)
                RETURNING a.job_id
            )
            SELECT count(*) FROM settled
            """
        ),
        {"limit": limit},
    )
    return int(result.scalar_one())


def prune_admissions(session: Session, *, older_than_s: float) -> int:
    """Delete settled admissions older than the rate window needs (their cost is in the
    usage rollups)."""
    result = session.execute(
        text(
            """
            DELETE FROM flow_admissions
            WHERE admitted_at < now() - make_interval(secs => :age) AND settled_at IS NOT NULL
            """
        ),
        {"age": older_than_s},
    )
    return int(getattr(result, "rowcount", 0) or 0)


def throttled_view(session: Session, job_ids: list[uuid.UUID]) -> dict[uuid.UUID, dict[str, Any]]:
    """Priority and throttle state of jobs, for their JSON views."""
    rows = session.execute(
        text(
            "SELECT id, priority, throttled_until, throttle_reason FROM jobs WHERE id = ANY(:ids)"
        ),
        {"ids": job_ids},
    ).all()
    return {
        r[0]: {
            "priority": r[1],
            "throttled_until": r[2].isoformat() if r[2] else None,
            "throttle_reason": r[3],
        }
        for r in rows
    }

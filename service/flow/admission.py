"""Admission: the step at claim that decides which job a worker's message runs.

The broker is a wake-up; Postgres decides. A worker that receives a message for job A ranks
the eligible pending jobs (priority with aging, then the tenant with the fewest running
calls, then, where a limit or budget exists, the tenant served longest ago, then enqueue
order) and runs the best one whose limits admit it now: its own job A unless a job B
strictly outranks it (a higher priority after aging, or as high with fewer calls of its
tenant running, or as few with its tenant served longer ago). Another job than A is
locked (``FOR UPDATE SKIP LOCKED``) only once it may run in A's place. When B runs, or A's
limits hold it, A waits in the database with a reason (no message, no thread held) and is
woken when a call of its scope finishes, or at its ``throttled_until`` (else
``EZQ_FLOW_RECHECK`` later) by the worker's publisher of due throttled jobs. Limits and budgets
are read and locked in this same transaction, so concurrent claims in one scope decide one
after the other and cannot overshoot together.
"""

from __future__ import annotations

import dataclasses
import logging
import time
import uuid
from collections.abc import Mapping
from dataclasses import dataclass, field
from datetime import UTC, datetime
from decimal import Decimal
from typing import Any

from sqlalchemy.orm import Session

from service import constants as c
from service import views
from service.config import Settings
from service.db import attempts, queries
from service.db import flow as flow_db
from service.db.models import Job
from service.db.session import Executor
from service.flow.recheck import due_times
from service.gateway.anthropic_wire import anthropic_max_tokens
from service.gateway.routing import is_claude, thinking_on
from service.webhooks import outbox as webhook_outbox

log = logging.getLogger(__name__)

BUDGET_EXCEEDED = "budget_exceeded"
# A call in no token-limited or budgeted scope reserves nothing; it settles to its usage.
NO_ESTIMATE = flow_db.Estimate(0, 0, None, None)
NO_RULES = flow_db.Rules(limits=[], budget_ids=[])


@dataclass(frozen=True, slots=True)
class EndedJob:
    """What the job metrics count of a job that ended at its claim."""

    model: str
    tenant: str | None
    status: str
    created_at: datetime | None
    finished_at: datetime | None


@dataclass(frozen=True, slots=True)
class Hold:
    """Why a job cannot start now, and until when (None: until a running call ends)."""

    reason: str
    until: datetime | None = None


@dataclass(slots=True)
class Admission:
    """What the claim of one message decided.

    ``job_id`` is the job to claim: the message's own (also when it is not pending: the claim
    then says why), a better-ranked one, or None when nothing may start now.
    """

    message_job_id: uuid.UUID
    job_id: uuid.UUID | None
    estimate: flow_db.Estimate | None = None
    hold: Hold | None = None  # why the message's own job waits, when it does not run
    failed: list[uuid.UUID] = field(default_factory=list)  # ended over budget at this claim
    # Those jobs as they ended (model, tenant, status, times), counted once committed.
    ended: list[EndedJob] = field(default_factory=list)
    # To publish once the claim commits: next turns of failed jobs, their webhooks.
    next_turns: list[uuid.UUID | None] = field(default_factory=list)
    deliveries: list[uuid.UUID] = field(default_factory=list)
    # Whether a limit or a budget exists at all: only then is a call's reservation written
    # (and settled when it ends). Whether the job to run was throttled before (its reason is
    # then cleared at claim), and whether throttled jobs wait for a call to end.
    reserve: bool = False
    was_throttled: bool = False
    throttled_waiting: bool = False

    def retry_in(self, settings: Settings) -> float:
        """How long a message that must report its own job waits before it tries again."""
        wait = settings.ezq_flow_recheck
        if self.hold is not None and self.hold.until is not None:
            wait = (self.hold.until - datetime.now(UTC)).total_seconds()
        return min(max(wait, 0.2), settings.max_countdown_seconds)

    @property
    def swapped(self) -> bool:
        """The message runs another job than its own."""
        return self.job_id is not None and self.job_id != self.message_job_id


class _Checker:
    """Limit and budget checks for one claim, each scope read (and locked) once."""

    def __init__(self, session: Session, settings: Settings, *, configured: bool) -> None:
        self.session = session
        self.settings = settings
        self.configured = configured  # any limit or budget at all (read with the ranking)
        self._rules: dict[tuple[str | None, str], flow_db.Rules] = {}

    def rules(self, job: flow_db.Pending) -> flow_db.Rules:
        if not self.configured:
            return NO_RULES
        key = (job.tenant, job.model)
        if key not in self._rules:
            self._rules[key] = flow_db.rules_for(self.session, job.tenant, job.model)
        return self._rules[key]

    def estimate(self, job_id: uuid.UUID) -> flow_db.Estimate:
        return flow_db.estimate(self.session, job_id, default_max_tokens=self._default_cap)

    def _default_cap(self, model: str, surface: str, params: dict[str, Any]) -> int:
        """The completion cap of a request that names none: EZQ_FLOW_DEFAULT_MAX_TOKENS,
        or what the Anthropic surface sends (8192, plus the thinking budget) when the job
        may run there: named, or ``auto`` with a claude model and what sends it there
        (tools, thinking, cache hints, thinking blocks in its history)."""
        default = self.settings.ezq_flow_default_max_tokens
        if surface == "anthropic":
            return max(default, anthropic_max_tokens(params))
        may_go = surface == "auto" and is_claude(model)
        if may_go and (
            params.get("tools")
            or thinking_on(params)
            or params.get("cache_hints")
            or params.get("thinking_history")
        ):
            return max(default, anthropic_max_tokens(params))
        return default

    def limits_hold(self, job: flow_db.Pending, est: flow_db.Estimate | None) -> Hold | None:
        window = self.settings.ezq_flow_window
        for limit in self.rules(job).limits:
            use = flow_db.scope_use(self.session, limit, window_s=window)
            concurrency = limit.concurrency
            if concurrency is not None and use.running >= concurrency:
                return Hold(f"max_concurrent {use.running}/{concurrency} for {limit.scope}")
            rpw = limit.requests_per_window
            if rpw is not None and use.requests >= rpw:
                return Hold(
                    f"requests {use.requests}/{rpw} in {window:g}s for {limit.scope}",
                    use.frees_at,
                )
            tpw = limit.tokens_per_window
            # A call bigger than the whole window still runs, alone in an empty window.
            if tpw is not None and use.requests:
                tokens = (est or self.estimate(job.id)).tokens
                if use.tokens + tokens > tpw:
                    return Hold(
                        f"tokens {use.tokens}+{tokens}/{tpw} in {window:g}s for {limit.scope}",
                        use.frees_at,
                    )
        return None

    def needs_estimate(self, job: flow_db.Pending) -> bool:
        rules = self.rules(job)
        return bool(rules.budget_ids) or any(r.tokens_per_window for r in rules.limits)

    def over_budget(self, job: flow_db.Pending, est: flow_db.Estimate) -> str | None:
        """Why the job's worst case does not fit what is left of a budget, else None."""
        for budget in flow_db.budgets_by_id(self.session, self.rules(job).budget_ids):
            worst = est.cost_usd
            if worst is None:
                if self.settings.ezq_budget_unpriced == "allow":
                    continue
                return (
                    f"model {job.model} has no price and tenant {budget.tenant} has a budget"
                    " (EZQ_BUDGET_UNPRICED=deny)"
                )
            if worst > budget.remaining_usd:
                return (
                    f"worst case ${_usd(worst)} ({est.prompt_tokens} prompt tokens estimated"
                    f" + {est.max_tokens} max_tokens) exceeds the ${_usd(budget.remaining_usd)}"
                    f" left of the ${_usd(budget.monthly_usd)} monthly budget of tenant"
                    f" {budget.tenant}, model {budget.model}"
                )
        return None


def _usd(value: Decimal) -> str:
    return f"{max(value, Decimal(0)):.6f}"


class _Pause:
    """Whether to try the short claim (``flow_db.first_turn_plain``, ``claim_plain``): not
    for a moment after it declined (another job pending, a limit or budget configured, the
    job throttled), since the next claims would most likely find the same and pay a round
    trip for nothing. Only a hint: the short claim checks all of it in its own statement."""

    def __init__(self) -> None:
        self._until = 0.0

    def open(self) -> bool:
        return time.monotonic() >= self._until

    def pause(self, seconds: float) -> None:
        self._until = time.monotonic() + seconds


_short_claims = _Pause()


def rank(
    executor: Executor,
    job_id: uuid.UUID,
    settings: Settings,
    *,
    own_only: bool = False,
    claim: flow_db.Lease | None = None,
    first: Mapping[str, Any] | None = None,
) -> flow_db.Ranking:
    """Read the message's job and the best-ranked pending jobs, locking nothing; with
    ``claim``, also claim the message's own job when there is nothing to decide (no limit or
    budget exists, no job outranks it, it was not throttled): most claims, which then take
    one round trip and no transaction (``plain`` is their admission). With ``claim``, a
    short statement is tried first (``flow_db.claim_plain``, ``first_turn_plain``), which
    claims without ranking when no other job waits; when it declines, the ranking runs.

    ``own_only``: the message's sender waits for its result (a foreign Celery producer), so
    it runs its own job or none; it still counts as a candidate for other messages.

    ``first``: the values of the message's job, a first turn the ranking's statement writes,
    claimed when there is nothing to decide (``flow_db.ranking``)."""
    if claim is not None and _short_claims.open():
        short = (
            flow_db.first_turn_plain(executor, job_id, claim=claim, first=first)
            if first is not None
            else flow_db.claim_plain(executor, job_id, claim=claim)
        )
        if short is not None:
            return short
        _short_claims.pause(c.SHORT_CLAIM_PAUSE_S)
    return flow_db.ranking(
        executor,
        job_id,
        aging_s=settings.ezq_priority_aging,
        limit=c.FLOW_CANDIDATES,
        rank=not own_only,
        claim=claim,
        first=first,
    )


def plain(ranking: flow_db.Ranking, job_id: uuid.UUID) -> Admission:
    """The admission of a message whose ranking claimed its own job: nothing to check, to
    reserve or to settle; throttled jobs are woken when its call ends, if any wait."""
    return Admission(
        job_id, job_id, estimate=NO_ESTIMATE, throttled_waiting=ranking.throttled_waiting
    )


def admit(
    session: Session, job_id: uuid.UUID, ranking: flow_db.Ranking, settings: Settings
) -> Admission:
    """Decide which job the message for ``job_id`` runs, from its ``ranking``; the caller
    claims ``job_id`` of the result in the same transaction, then calls ``claimed``."""
    own = ranking.own
    # Locked for this transaction, so that two claims of one job decide one after the
    # other; the ranking read it unlocked, a moment ago.
    if own is None or not flow_db.lock_own(session, own.id):
        return Admission(job_id, job_id)  # not pending (any more): the claim says why
    checker = _Checker(session, settings, configured=ranking.rules_configured)
    rivals = ranking.candidates
    if ranking.rules_configured and rivals:
        own, rivals = _with_turns(session, own, rivals)
    # The message runs its own job unless another outranks it. Among equals it keeps its
    # own: the others have messages of their own on the way (or are woken when a call
    # ends), and running one of them here would park this one until a call ends; except an
    # aged job enqueued earlier, which the ranking puts first (``Pending.outranks``).
    ordered = sorted(rivals, key=flow_db.Pending.order_key)
    better = [job for job in ordered if job.outranks(own)]
    others = [job for job in ordered if not job.outranks(own)]
    candidates = [*better, own, *others]
    admission = Admission(
        job_id,
        None,
        reserve=ranking.rules_configured,
        throttled_waiting=ranking.throttled_waiting,
    )
    _first_admitted(session, admission, checker, candidates, own_id=own.id)
    if admission.swapped and admission.hold is None:
        admission.hold = Hold(f"outranked by job {admission.job_id}")
    if admission.hold is None and admission.job_id is None and own.id not in admission.failed:
        admission.hold = Hold("no capacity")
    if admission.hold is not None:
        flow_db.throttle(
            session,
            own.id,
            reason=admission.hold.reason,
            until=admission.hold.until,
            recheck_s=settings.ezq_flow_recheck,
        )
        if admission.hold.until is not None:
            # Published by this process's publisher when its window frees, whatever the
            # sweep's interval (without a time, a call's end wakes it, or the sweep).
            due_times.expect((admission.hold.until - datetime.now(UTC)).total_seconds())
    return admission


def admit_in_place(
    session: Session, job_id: uuid.UUID, ranking: flow_db.Ranking, settings: Settings
) -> Admission:
    """Decide which waiting job a message whose own job ``job_id`` had already ended runs in
    its place (a stale message: its job was cancelled, as a batch's lines are, or it was
    delivered again): the best of ``ranking``'s candidates that its limits and budgets admit
    now, each checked, locked and passed over as ``admit`` does with those that outrank a
    message's own job. ``job_id`` of the result is None when none may start: the message
    is then dropped. The caller claims it in the same transaction, then calls ``claimed``."""
    checker = _Checker(session, settings, configured=ranking.rules_configured)
    rivals = ranking.candidates
    if ranking.rules_configured and rivals:
        rivals = _with_served(session, rivals)
    admission = Admission(
        job_id,
        None,
        reserve=ranking.rules_configured,
        throttled_waiting=ranking.throttled_waiting,
    )
    ordered = sorted(rivals, key=flow_db.Pending.order_key)
    _first_admitted(session, admission, checker, ordered, own_id=None)
    return admission


def _first_admitted(
    session: Session,
    admission: Admission,
    checker: _Checker,
    candidates: list[flow_db.Pending],
    *,
    own_id: uuid.UUID | None,
) -> None:
    """Set ``admission``'s job to the first of ``candidates`` that may start now: the
    message's own job (``own_id``, locked already) or another, locked here (one another
    claim holds is passed over). A job over budget fails here; the own job held by a limit
    gets its ``hold``."""
    locked: set[uuid.UUID] | None = None
    for job in candidates:
        if job.id != own_id:
            if locked is None:
                locked = flow_db.lock_candidates(
                    session, [j.id for j in candidates if j.id != own_id]
                )
            if job.id not in locked:
                continue  # claimed, or being claimed, since the ranking read it
        # Only a token limit or a budget needs the estimate (one more round trip).
        est = checker.estimate(job.id) if checker.needs_estimate(job) else None
        hold = checker.limits_hold(job, est)
        if hold is not None:
            if job.id == own_id:
                admission.hold = hold
            continue
        problem = checker.over_budget(job, est) if est is not None else None
        if problem is not None:
            _fail(session, admission, job.id, problem)
            if job.id == own_id:
                break
            continue
        admission.job_id, admission.estimate = job.id, est or NO_ESTIMATE
        admission.was_throttled = job.throttled
        break


def _with_turns(
    session: Session, own: flow_db.Pending, rivals: list[flow_db.Pending]
) -> tuple[flow_db.Pending, list[flow_db.Pending]]:
    """The jobs with when their tenants last had a call admitted: where limits hold jobs
    back, a slot that frees when no tenant has a call running goes to the tenant served
    longest ago (fair shares take turns; by enqueue order, the tenant whose backlog came
    first took every slot, as under a concurrency of 1)."""
    own, *rivals = _with_served(session, [own, *rivals])
    return own, rivals


def _with_served(session: Session, jobs: list[flow_db.Pending]) -> list[flow_db.Pending]:
    """``jobs`` with when their tenants last had a call admitted (``_with_turns``)."""
    served = flow_db.served(session, [job.tenant for job in jobs])
    return [dataclasses.replace(job, tenant_served_at=served.get(job.tenant)) for job in jobs]


def _fail(session: Session, admission: Admission, job_id: uuid.UUID, problem: str) -> None:
    """End a job over budget before any call, with its webhook, and free its next turn."""
    flow_db.fail_at_claim(session, job_id, error_type=BUDGET_EXCEEDED, message=problem)
    admission.failed.append(job_id)
    job = session.get(Job, job_id, populate_existing=True)
    assert job is not None
    admission.ended.append(
        EndedJob(job.model, job.tenant, job.status, job.created_at, job.finished_at)
    )
    log.warning("[job=%s] failed at claim: %s: %s", job_id, BUDGET_EXCEEDED, problem)
    if job.callback_url is not None:
        webhook_outbox.add_for_job(session, job, views.job_view(session, job_id))
        admission.deliveries += webhook_outbox.pending_ids_for_job(session, job_id)
    admission.next_turns.append(queries.next_waiting_job(session, job.conversation_id))


def claimed(session: Session, admission: Admission, claim: attempts.ClaimOutcome) -> None:
    """Record the reservation of the call just claimed (same transaction as the claim).

    With no limit and no budget anywhere there is nothing to reserve nor to settle: the
    call writes no admission (a limit set later counts from then on; budgets count spend
    from the usage rollups either way)."""
    if not isinstance(claim, attempts.Claimed) or admission.estimate is None:
        return
    if not admission.reserve:
        if admission.was_throttled:
            flow_db.clear_throttle(session, claim.job_id)
        return
    est = admission.estimate
    flow_db.admit(
        session,
        job_id=claim.job_id,
        attempt=claim.attempt,
        tenant=claim.tenant,
        model=claim.model,
        tokens=est.tokens,
        cost_usd=est.cost_usd,
    )

"""Replaying ended jobs: each replay is a new job with the original's request, linked to it.

A replay carries the original's model, messages, parameters, tenant, metadata and
callback URL, and ``replay_of`` = the original's id. How it joins a conversation:

- A failed or cancelled turn with no later turn that succeeded or may still succeed
  replays as a new turn of the same conversation: it is sent with the same history the
  original was. Several such turns of one conversation, replayed together, run in their
  original order.
- Otherwise a job that was sent without earlier history (a conversation's first turn, or
  a single job) replays in a new conversation of its own.
- Otherwise the conversation has moved on (later turns succeeded, or the original itself
  succeeded and is part of the history): the job is skipped (``history_moved_on``), since
  replaying it would put a turn out of order.

Also skipped: jobs that have not ended (``not_ended``), whose content was purged
(``purged``), that some job already replays (``already_replayed``: replay the replay), and
whose request no longer passes validation (``invalid``, e.g. a callback URL without a
webhook secret).
"""

from __future__ import annotations

import logging
import math
import uuid
from dataclasses import dataclass, field
from decimal import Decimal
from typing import TYPE_CHECKING, Any

from sqlalchemy import Text, func, literal, select, true
from sqlalchemy.orm import Session

from service.config import get_settings
from service.db import joblist, replays
from service.db.models import TERMINAL_STATUSES, Job, TokenUsage
from service.db.pricing import cost_of, price_at, token_counts
from service.db.session import transaction
from service.errors import EzqCallerError, JobNotFound, JobNotReplayable

if TYPE_CHECKING:
    from service.validation import CompletionRequest

log = logging.getLogger(__name__)

CHARS_PER_TOKEN = 4  # for guessing the prompt tokens of a job that has no usage row


@dataclass(frozen=True, slots=True)
class Replay:
    original_id: uuid.UUID
    job_id: uuid.UUID | None  # None in a dry run
    conversation: str  # "same" or "new"


@dataclass(frozen=True, slots=True)
class Skip:
    original_id: uuid.UUID
    reason: str
    message: str


@dataclass
class ReplayResult:
    dry_run: bool
    replays: list[Replay] = field(default_factory=list)
    skipped: list[Skip] = field(default_factory=list)
    estimated_cost_usd: Decimal = Decimal(0)
    unpriced_jobs: int = 0
    measured_jobs: int = 0

    def as_dict(self) -> dict[str, Any]:
        from service.usage.money import plain

        return {
            "dry_run": self.dry_run,
            "count": len(self.replays),
            "replays": [
                {
                    "original_id": str(r.original_id),
                    "job_id": str(r.job_id) if r.job_id else None,
                    "conversation": r.conversation,
                }
                for r in self.replays
            ],
            "skipped": [
                {"job_id": str(s.original_id), "reason": s.reason, "message": s.message}
                for s in self.skipped
            ],
            "estimated_cost_usd": plain(self.estimated_cost_usd),
            "unpriced_jobs": self.unpriced_jobs,
        }


def _decide(session: Session, job: Job, made: set[uuid.UUID]) -> str | Skip:
    """ "same" or "new" (which conversation the replay joins), or why it is skipped."""
    if job.status not in TERMINAL_STATUSES:
        return Skip(job.id, "not_ended", f"it is still {job.status}")
    if job.purged_at is not None:
        return Skip(job.id, "purged", "its content was purged")
    place = replays.standing(session, job, ignore=made)
    if place.already_replayed:
        return Skip(job.id, "already_replayed", "it was replayed already; replay the replay")
    if job.status != "succeeded" and not place.later_turns:
        return "same"
    if not place.earlier_history:
        return "new"
    return Skip(
        job.id,
        "history_moved_on",
        f"conversation {job.conversation_id} has moved on since this turn",
    )


class _Estimator:
    """Adds up what the replays are expected to cost at today's prices, each job priced by
    ``service.db.pricing.cost_of`` (as its usage row would be: cache writes at the
    cache-write price) at the model's price in effect now."""

    def __init__(self, session: Session, result: ReplayResult) -> None:
        self._session = session
        self._result = result
        self._typical: dict[str, int] = {}

    def _measured(self, job: Job) -> tuple[bool, Decimal | None]:
        """(whether the job has a usage row, its tokens' cost at today's price or None)."""
        usage = TokenUsage.__table__.alias("usage")
        price = price_at(usage.c.model, func.now())
        row = self._session.execute(
            select(price.c.id, cost_of(usage, price))
            .select_from(usage.outerjoin(price, true()))
            .where(usage.c.job_id == job.id)
        ).first()
        if row is None:
            return False, None
        return True, (row[1] if row[0] is not None else None)

    def _guessed(self, job: Job, conversation: str) -> Decimal | None:
        """What the job's prompt and the model's typical completion cost at today's price."""
        chars = sum(len(str(m.get("content") or "")) for m in job.input_messages)
        if conversation == "same":
            chars += replays.history_chars(self._session, job)
        if job.model not in self._typical:
            self._typical[job.model] = replays.typical_completion_tokens(self._session, job.model)
        usage = token_counts(
            uncached_prompt_tokens=math.ceil(chars / CHARS_PER_TOKEN),
            cached_tokens=0,
            completion_tokens=self._typical[job.model],
        )
        price = price_at(literal(job.model, Text()), func.now())
        cost: Decimal | None = self._session.execute(
            select(cost_of(usage, price)).select_from(usage.join(price, true()))
        ).scalar()
        return cost

    def add(self, job: Job, conversation: str) -> None:
        measured, cost = self._measured(job)
        if measured:
            self._result.measured_jobs += 1
        else:
            cost = self._guessed(job, conversation)
        if cost is None:
            self._result.unpriced_jobs += 1
            return
        self._result.estimated_cost_usd += cost


def _request(job: Job, conversation: str) -> CompletionRequest:
    """The replay's request, checked as today's enqueue checks it (EzqCallerError if it
    no longer passes: a dry run says so too)."""
    from service.validation import validate_request

    return validate_request(
        model=job.model,
        messages=list(job.input_messages),
        conversation_id=job.conversation_id if conversation == "same" else None,
        params=dict(job.params),
        tenant=job.tenant,
        metadata=dict(job.meta),
        callback_url=job.callback_url,
        surface=job.surface,
        priority=job.priority,
        max_request_bytes=get_settings().ezq_max_request_bytes,
    )


def _create(session: Session, job: Job, conversation: str, created_by: str | None) -> uuid.UUID:
    from service.db import queries

    new_id, _ = queries.create_job(session, _request(job, conversation), created_by=created_by)
    replays.mark_replay(session, new_id, job.id)
    return new_id


def _run(
    session: Session, originals: list[Job], result: ReplayResult, created_by: str | None
) -> None:
    estimator = _Estimator(session, result)
    made: set[uuid.UUID] = set()
    if not result.dry_run:
        # Decided under the lock, each statement reading what committed before it: the
        # same job replayed twice at once is replayed once, the other call skips it.
        replays.lock_conversations(session, [job.conversation_id for job in originals])
    for job in originals:
        decided = _decide(session, job, made)
        if isinstance(decided, Skip):
            result.skipped.append(decided)
            continue
        new_id: uuid.UUID | None = None
        try:
            if result.dry_run:
                _request(job, decided)  # what the real run would refuse, it counts out
            else:
                new_id = _create(session, job, decided, created_by)
        except EzqCallerError as exc:
            result.skipped.append(Skip(job.id, "invalid", str(exc)))
            continue
        if new_id is not None:
            made.add(new_id)
        estimator.add(job, decided)
        result.replays.append(Replay(job.id, new_id, decided))


def _publish(result: ReplayResult) -> None:
    from service.worker.app import publish_job

    for replay in result.replays:
        if replay.job_id is None:
            continue
        try:
            publish_job(replay.job_id)
        except Exception:
            # Committed already: the periodic sweep publishes what could not be sent now.
            log.warning("replay %s stored but not published yet", replay.job_id, exc_info=True)


def replay_jobs(
    wanted: joblist.JobFilter, *, limit: int, dry_run: bool = False, created_by: str | None = None
) -> ReplayResult:
    """Replay the jobs ``wanted`` selects (oldest first, at most ``limit``); ``created_by``
    names the API key that asked (HTTP only), as for any job."""
    result = ReplayResult(dry_run=dry_run)
    with transaction() as session:
        originals = joblist.matching_jobs(session, wanted, limit=limit)
        if len(originals) < limit:
            # Every match was read: an id asked for and not among them is unknown (or
            # outside the caller's tenants, which reads the same).
            found = {job.id for job in originals}
            result.skipped += [
                Skip(job_id, "not_found", f"no job {job_id} among those selected")
                for job_id in wanted.job_ids
                if job_id not in found
            ]
        _run(session, originals, result, created_by)
        if dry_run:
            session.rollback()
    _publish(result)
    return result


def replay_job(
    job_id: uuid.UUID, *, tenants: tuple[str, ...] = (), created_by: str | None = None
) -> uuid.UUID:
    """Replay one job; return the new job's id. Raises JobNotFound or JobNotReplayable.

    With ``tenants``, a job of any other tenant is reported as not found.
    """
    result = ReplayResult(dry_run=False)
    with transaction() as session:
        job = session.get(Job, job_id)
        if job is None or (tenants and job.tenant not in tenants):
            raise JobNotFound(job_id)
        _run(session, [job], result, created_by)
    if result.skipped:
        skip = result.skipped[0]
        raise JobNotReplayable(job_id, skip.reason, skip.message)
    _publish(result)
    new_id = result.replays[0].job_id
    assert new_id is not None
    return new_id

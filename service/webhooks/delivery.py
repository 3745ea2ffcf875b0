"""Delivering one webhook attempt: claim, sign, POST, record, schedule. No Celery here."""

from __future__ import annotations

import logging
import random
import uuid
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any
from urllib.parse import urlsplit

from service.config import Settings
from service.db.session import autocommit, transaction
from service.errors import ConfigError
from service.webhooks import outbox
from service.webhooks.retry import Delivered, GiveUp, RetryIn, decide
from service.webhooks.sender import post_event
from service.webhooks.signing import signed_headers, signing_secrets
from service.webhooks.ssrf import AddressPolicy
from service.webhooks.transport import Resolver, resolve_host
from service.worker.dispatch import publish_or_flag

log = logging.getLogger(__name__)

UNSIGNED_REFUSAL = "WEBHOOK_SECRET is not set on the worker; the event waits, never sent unsigned"

Publish = Callable[[uuid.UUID, float], None]


@dataclass(frozen=True, slots=True)
class DeliveryOutcome:
    """What a delivery task did: ``status`` is delivered, failed, retrying or skipped."""

    delivery_id: uuid.UUID
    status: str
    attempt: int | None = None
    detail: str | None = None

    def as_dict(self) -> dict[str, Any]:
        return {
            "delivery_id": str(self.delivery_id),
            "status": self.status,
            "attempt": self.attempt,
            "detail": self.detail,
        }


class DeliveryLog(logging.LoggerAdapter[logging.Logger]):
    """Puts the webhook id, job and attempt on every line."""

    def process(self, msg: Any, kwargs: Any) -> tuple[Any, Any]:
        extra = self.extra or {}
        return (
            f"[webhook={extra.get('webhook')} job={extra.get('job')} "
            f"attempt={extra.get('attempt')}] {msg}",
            kwargs,
        )


def loggable_url(url: str) -> str:
    """The URL without its query string, which may carry the receiver's own tokens."""
    parts = urlsplit(url)
    return f"{parts.scheme}://{parts.hostname}{f':{parts.port}' if parts.port else ''}{parts.path}"


def deliver(
    delivery_id: uuid.UUID,
    *,
    settings: Settings,
    publish: Publish,
    resolve: Resolver = resolve_host,
    rng: random.Random | None = None,
) -> DeliveryOutcome:
    """Make one attempt at a due delivery and record it; schedule the next if it failed.

    No transaction is held across the POST: the claim commits a lease first, and the
    result is written in a second short transaction that checks the lease is still ours.
    A retry due within ``settings.max_countdown_seconds`` is published with a countdown
    after that commit; a later one waits in the database for the sweep.
    """
    secrets = settings.webhook_signing_secrets()
    if not secrets:
        with transaction() as session:
            outbox.note_problem(session, delivery_id, UNSIGNED_REFUSAL)
        raise ConfigError(UNSIGNED_REFUSAL)
    with autocommit() as conn:
        claim = outbox.claim(conn, delivery_id, lease_seconds=settings.webhook_lease_seconds)
    if isinstance(claim, outbox.Skipped):
        log.debug("[webhook=%s] nothing to send: %s", delivery_id, claim.reason)
        return DeliveryOutcome(delivery_id, "skipped", detail=claim.reason)

    dlog = DeliveryLog(
        log, {"webhook": claim.delivery_id, "job": claim.job_id, "attempt": claim.attempt}
    )
    signers = signing_secrets(secrets, claim.tenant, shared=settings.ezq_webhook_shared_signature)
    headers = signed_headers(signers, str(claim.delivery_id), claim.payload)
    result = post_event(
        claim.url,
        claim.payload,
        headers,
        policy=AddressPolicy(settings.webhook_allowed_networks),
        timeout=settings.ezq_webhook_timeout,
        max_response_bytes=settings.ezq_webhook_max_response_bytes,
        resolve=resolve,
        keepalive_s=settings.ezq_webhook_keepalive_s,
    )
    decision = decide(
        result,
        round_attempt=claim.round_attempt,
        max_attempts=settings.ezq_webhook_max_attempts,
        schedule=settings.ezq_webhook_retry_schedule,
        rng=rng,
    )
    delay = decision.seconds if isinstance(decision, RetryIn) else None
    # A message held back longer than a third of the broker's visibility timeout would be
    # delivered again as a duplicate while the first still waits: a later retry waits in
    # the database, and the sweep publishes it when it is due.
    publish_now = delay is not None and delay <= settings.max_countdown_seconds
    with autocommit() as conn:
        recorded = outbox.finish(
            conn, claim, result, decision, retry_delay=delay, published=publish_now
        )
    target = loggable_url(claim.url)
    if not recorded:
        dlog.warning("lost the delivery's lease before recording the attempt; result dropped")
        return DeliveryOutcome(delivery_id, "skipped", claim.attempt, "lease lost")
    if isinstance(decision, Delivered):
        dlog.info("%s delivered to %s (HTTP %s)", claim.event_type, target, result.status_code)
        return DeliveryOutcome(delivery_id, "delivered", claim.attempt)
    if isinstance(decision, GiveUp):
        # The reason is ezq's own words; of an answer, only its status.
        last = f" (last answer HTTP {result.status_code})" if result.status_code else ""
        dlog.warning(
            "%s to %s failed for good: %s%s", claim.event_type, target, decision.reason, last
        )
        return DeliveryOutcome(delivery_id, "failed", claim.attempt, result.error)
    assert delay is not None
    dlog.warning(
        "%s to %s: %s; retrying in %.1fs", claim.event_type, target, result.loggable(), delay
    )
    if publish_now:
        # Refused, it is flagged unpublished: counted as a message on the broker, every
        # sweep saw fewer messages than expected, and this one waited out the grace.
        publish_or_flag(
            [delivery_id],
            lambda the_id: publish(the_id, delay),
            flag=outbox.mark_unpublished,
            noun="webhook deliveries",
        )
    return DeliveryOutcome(delivery_id, "retrying", claim.attempt, result.error)

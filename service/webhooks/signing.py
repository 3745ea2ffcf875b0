"""Standard Webhooks signatures, made by the ``standardwebhooks`` library.

Every configured secret signs, so during a rotation receivers holding either the old or
the new secret can verify: the header carries one ``v1,<signature>`` per secret.
"""

from __future__ import annotations

import time
from collections.abc import Sequence
from datetime import UTC, datetime

from standardwebhooks import Webhook

from service.errors import ConfigError


def signed_headers(
    secrets: Sequence[str], message_id: str, body: str, *, now: float | None = None
) -> dict[str, str]:
    """The ``webhook-id``, ``webhook-timestamp`` and ``webhook-signature`` headers for ``body``.

    ``body`` is the exact text sent (UTF-8 encoded); the signature covers
    ``{id}.{timestamp}.{body}``.
    """
    if not secrets:
        raise ConfigError("WEBHOOK_SECRET: not set; ezq never sends an unsigned webhook")
    seconds = int(time.time() if now is None else now)
    # The library floors the timestamp it signs; pass the same whole second the header says.
    stamp = datetime.fromtimestamp(seconds, tz=UTC)
    signatures = [Webhook(secret).sign(message_id, stamp, body) for secret in secrets]
    return {
        "webhook-id": message_id,
        "webhook-timestamp": str(seconds),
        "webhook-signature": " ".join(signatures),
    }

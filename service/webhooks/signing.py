"""Standard Webhooks signatures, made by the ``standardwebhooks`` library.

Every configured secret signs, so during a rotation receivers holding either the old or
the new secret can verify: the header carries one ``v1,<signature>`` per secret.

A tenant's events are signed with the tenant's own secret, derived from each configured
one (``tenant_secret``), so that a tenant, who holds only its own, can neither forge
another tenant's events nor verify them; events of jobs with no tenant are signed with the
configured secrets themselves, which only the operator holds.
"""

from __future__ import annotations

import base64
import functools
import hashlib
import hmac
import time
from collections.abc import Sequence
from datetime import UTC, datetime

from standardwebhooks import Webhook

from service.errors import ConfigError

_PREFIX = "whsec_"
# What the derivation signs before the tenant's name: a key used for nothing else.
_TENANT_LABEL = b"ezq webhook tenant\x00"


@functools.lru_cache(maxsize=1024)
def tenant_secret(secret: str, tenant: str) -> str:
    """The ``whsec_`` secret that signs ``tenant``'s events, derived from ``secret`` (one
    of WEBHOOK_SECRET's): HMAC-SHA256 of the tenant's name under the secret's key. It
    cannot be turned back into ``secret`` nor into another tenant's."""
    body = secret.removeprefix(_PREFIX)
    key = base64.b64decode(body + "=" * (-len(body) % 4))
    derived = hmac.new(key, _TENANT_LABEL + tenant.encode("utf-8"), hashlib.sha256).digest()
    return _PREFIX + base64.b64encode(derived).decode("ascii")


def signing_secrets(secrets: Sequence[str], tenant: str | None, *, shared: bool) -> list[str]:
    """The secrets that sign an event of ``tenant`` (None: a job with no tenant): the
    tenant's own, one per configured secret, and with ``shared`` the configured ones too
    (EZQ_WEBHOOK_SHARED_SIGNATURE, while receivers move to their tenant's secret)."""
    if tenant is None:
        return list(secrets)
    own = [tenant_secret(secret, tenant) for secret in secrets]
    return own + list(secrets) if shared else own


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

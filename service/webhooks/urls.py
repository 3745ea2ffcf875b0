"""Checking a callback URL at enqueue: syntax only.

Whether the address may be connected to is decided at delivery time, on the address
actually connected to (see ``transport``): a check here could be undone by DNS later.
"""

from __future__ import annotations

from urllib.parse import urlsplit

from service import constants as c
from service.errors import InvalidRequest

FIELD = "callback_url"


def check_callback_url(value: object, *, max_length: int = c.WEBHOOK_MAX_URL_LENGTH) -> str:
    """Return the URL if it is a plain http(s) URL with a host, or raise InvalidRequest."""
    if not isinstance(value, str):
        raise InvalidRequest(FIELD, f"must be a string, not {type(value).__name__}")
    if not value:
        raise InvalidRequest(FIELD, "must not be empty")
    if len(value) > max_length:
        raise InvalidRequest(FIELD, f"is {len(value)} characters; the limit is {max_length}")
    if any(ch.isspace() or ord(ch) < 0x20 or ord(ch) == 0x7F for ch in value):
        raise InvalidRequest(FIELD, "must not contain spaces or control characters")
    try:
        parts = urlsplit(value)
        port = parts.port
    except ValueError as exc:
        raise InvalidRequest(FIELD, f"is not a valid URL ({exc})") from None
    if parts.scheme.lower() not in ("http", "https"):
        raise InvalidRequest(FIELD, "must be an http:// or https:// URL")
    if parts.username is not None or parts.password is not None or "@" in parts.netloc:
        raise InvalidRequest(FIELD, "must not carry a user name or password")
    if not parts.hostname:
        raise InvalidRequest(FIELD, "must name a host")
    if port == 0:
        raise InvalidRequest(FIELD, "port 0 is not a valid port")
    if parts.fragment or value.endswith("#"):
        raise InvalidRequest(FIELD, "must not have a #fragment (it is never sent)")
    return value

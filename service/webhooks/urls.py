"""Checking a callback URL at enqueue: syntax only.

Whether the address may be connected to is decided at delivery time, on the address
actually connected to (see ``transport``): a check here could be undone by DNS later.
"""

from __future__ import annotations

import ipaddress
from urllib.parse import urlsplit

import httpx

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
    if "[" in parts.netloc:
        _check_ipv6_literal(parts.hostname)
    try:
        # The sender's own parser: a host it cannot use (an IPv4 address with leading
        # zeros such as 0177.0.0.1) would be accepted now and never delivered.
        httpx.URL(value)
    except httpx.InvalidURL as exc:
        raise InvalidRequest(FIELD, f"is not a URL the webhook sender can use ({exc})") from None
    return value


def _check_ipv6_literal(host: str) -> None:
    """A bracketed host must be a plain IPv6 address: a zone id (``%25eth0``) names an
    interface of the sender's machine, and the sender would look the whole text up as a
    host name, retrying to the end of the schedule."""
    if "%" in host:
        raise InvalidRequest(FIELD, "must not give an IPv6 zone id (%...): it names no host")
    try:
        ipaddress.IPv6Address(host)
    except ValueError:
        raise InvalidRequest(FIELD, f"[{host}] is not an IPv6 address") from None

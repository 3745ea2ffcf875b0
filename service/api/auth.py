"""Authentication: a bearer token is an API key (``ezq keys``) or an EZQ_API_TOKENS token.

Keys are looked up on every request, so a revoked key stops working at once; the tokens
of EZQ_API_TOKENS are admin keys, as they were before keys existed.
"""

from __future__ import annotations

import hmac
from typing import Annotated

from fastapi import Depends, Request
from fastapi.security import HTTPAuthorizationCredentials, HTTPBearer

from service.api.errors import ApiError
from service.api.query_check import refuse_unknown_query
from service.config import get_settings
from service.keys.principal import Principal

_bearer = HTTPBearer(auto_error=False, description="An `ezq_…` API key or an EZQ_API_TOKENS token.")


def _configured_token(presented: str) -> int | None:
    """The 1-based position of ``presented`` in EZQ_API_TOKENS, compared in constant time."""
    matched = None
    for number, token in enumerate(get_settings().api_tokens(), start=1):
        if hmac.compare_digest(presented.encode(), token.encode()):
            matched = number
    return matched


def authenticate(
    request: Request,
    credentials: Annotated[HTTPAuthorizationCredentials | None, Depends(_bearer)],
) -> Principal:
    """The caller behind the request's bearer token, or a 401; then a 422 for a query
    parameter the route does not take (after the 401: only a caller learns the rules)."""
    principal = _principal(credentials)
    refuse_unknown_query(request)
    return principal


def authenticate_admin(
    request: Request,
    credentials: Annotated[HTTPAuthorizationCredentials | None, Depends(_bearer)],
) -> Principal:
    """The caller behind the request's bearer token if it is an admin (an EZQ_API_TOKENS
    token or a key made with ``--admin``): a 401 without a working key, a 403 for a key
    bound to tenants. For ``/metrics``, whose series name every tenant; its query is not
    checked (a scraper may add parameters of its own)."""
    principal = _principal(credentials)
    if not principal.admin:
        raise ApiError(
            403,
            "forbidden",
            f"{request.url.path} needs an admin key: an EZQ_API_TOKENS token or a key"
            " from `ezq keys create --admin`",
        )
    return principal


def _principal(credentials: HTTPAuthorizationCredentials | None) -> Principal:
    from service.db.session import transaction
    from service.keys.store import principal_for

    presented = credentials.credentials if credentials else ""
    number = _configured_token(presented) if presented else None
    if number is not None:
        return Principal(f"env:{number}", None)
    if presented:
        with transaction() as session:
            principal = principal_for(session, presented)
        if principal is not None:
            return principal
    raise ApiError(
        401,
        "unauthorized",
        "a valid API key is required (Authorization: Bearer ezq_…)",
        headers={"WWW-Authenticate": "Bearer"},
    )


Caller = Annotated[Principal, Depends(authenticate)]
AdminCaller = Annotated[Principal, Depends(authenticate_admin)]

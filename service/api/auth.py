"""Bearer-token authentication for the HTTP interface."""

from __future__ import annotations

import hmac
from typing import Annotated

from fastapi import Depends, HTTPException, status
from fastapi.security import HTTPAuthorizationCredentials, HTTPBearer

from service.config import get_settings

_bearer = HTTPBearer(auto_error=False)


def require_token(
    credentials: Annotated[HTTPAuthorizationCredentials | None, Depends(_bearer)],
) -> None:
    """Accept the request only with one of the configured ``EZQ_API_TOKENS``."""
    presented = credentials.credentials if credentials else ""
    # Compare against every token in constant time, so timing reveals nothing.
    matched = False
    for token in get_settings().api_tokens():
        matched |= hmac.compare_digest(presented.encode(), token.encode())
    if not matched:
        raise HTTPException(
            status_code=status.HTTP_401_UNAUTHORIZED,
            detail={"type": "unauthorized", "message": "a valid bearer token is required"},
            headers={"WWW-Authenticate": "Bearer"},
        )

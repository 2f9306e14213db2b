"""Who is calling the HTTP API: the bearer token, checked on every ``/v1`` request."""

from __future__ import annotations

from typing import Annotated

from fastapi import Depends, HTTPException
from fastapi.security import HTTPAuthorizationCredentials, HTTPBearer

from models import tokens
from models.db import session_scope

_bearer = HTTPBearer(auto_error=False, description="A token from `drydock tokens create`.")


def _unauthorized(message: str) -> HTTPException:
    return HTTPException(401, message, headers={"WWW-Authenticate": 'Bearer realm="drydock"'})


def current_caller(
    credentials: Annotated[HTTPAuthorizationCredentials | None, Depends(_bearer)],
) -> tokens.Caller:
    if credentials is None:
        raise _unauthorized("missing bearer token (Authorization: Bearer ddk_…)")
    with session_scope() as session:
        caller = tokens.authenticate(session, credentials.credentials)
    if caller is None:
        raise _unauthorized("invalid or revoked token")
    return caller


Caller = Annotated[tokens.Caller, Depends(current_caller)]

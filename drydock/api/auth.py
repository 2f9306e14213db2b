"""Who is calling the HTTP API: the bearer token, checked on every ``/v1`` request."""

from __future__ import annotations

from typing import Annotated

from fastapi import Depends, HTTPException
from fastapi.security import HTTPAuthorizationCredentials, HTTPBearer

from catalog import CATALOG
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


def presented_token(
    credentials: Annotated[HTTPAuthorizationCredentials | None, Depends(_bearer)],
) -> str:
    """The bearer token as presented (after ``Caller`` has checked it): for a long request
    that checks it again as it runs."""
    if credentials is None:
        raise _unauthorized("missing bearer token (Authorization: Bearer ddk_…)")
    return credentials.credentials


PresentedToken = Annotated[str, Depends(presented_token)]


def require_scope(caller: tokens.Caller, scope: str) -> None:
    if not caller.may_use(scope):
        raise HTTPException(
            403,
            f"token {caller.name!r} lacks the {scope} scope (scopes: {', '.join(caller.scopes)})",
        )


def tenant_to_read(caller: tokens.Caller, given: str | None) -> str | None:
    """The tenant a read is limited to: the token's own; an operator's choice (None: all)."""
    if caller.tenant is not None:
        if given is not None and given != caller.tenant:
            raise HTTPException(403, f"token {caller.name!r} acts for tenant {caller.tenant} only")
        return caller.tenant
    return given


def tenant_to_write(caller: tokens.Caller, given: str | None) -> str:
    """The tenant a write (or a read of one tenant's thing) acts for. A tenant token's is
    implied; an operator token must name one. That is a matter of the token, not of the request
    (the same request is whole from a tenant token), hence 403 and not 422."""
    tenant = tenant_to_read(caller, given)
    if tenant is None:
        raise HTTPException(
            403,
            f"token {caller.name!r} acts for no tenant: name the tenant (?tenant= or "
            '"tenant"), or use a token bound to one',
        )
    return tenant


def actor_of(caller: tokens.Caller) -> str:
    return f"api:{caller.name}"


def visible_tasks(caller: tokens.Caller) -> list[str] | None:
    """Task names the caller may see, or None for every task (a ``*`` scope)."""
    if "*" in caller.scopes:
        return None
    return caller.allowed_tasks(CATALOG)

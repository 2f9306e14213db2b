"""``GET /health/remotes``: whether every project remote answers ``git ls-remote``, probed
together, each bounded by ``DRYDOCK_HEALTH_PEER_TIMEOUT_SECONDS``. Like the other ``/health/*``
routes it needs no token, so it shows no credential: URLs redacted, credential references by
name only. ``drydock remotes check`` prints the same report.
"""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Literal

from fastapi import APIRouter, Query
from fastapi.responses import JSONResponse
from pydantic import BaseModel
from sqlalchemy.exc import SQLAlchemyError

from adapters.git_inputs import redact_url
from adapters.git_workspace import (
    GitCredential,
    GitWorkspaceError,
    RemoteCheck,
    RemoteTarget,
    check_remotes,
    resolve_credential,
)
from kernel.settings import get_settings

router = APIRouter(tags=["health"])


class RemoteHealth(BaseModel):
    tenant: str
    project: str
    remote: str
    url: str
    credential_ref: str | None
    status: Literal["reachable", "unreachable"]
    latency_ms: float | None
    error: str | None


class RemotesHealth(BaseModel):
    status: Literal["healthy", "unhealthy"]
    checked_at: datetime
    remotes: list[RemoteHealth]
    # Why no remote could be listed (the database did not answer).
    error: str | None = None


def remotes_report(*, tenant: str | None = None, project: str | None = None) -> RemotesHealth:
    """Probe the remotes (of one tenant, one project, or all) and record each result."""
    from models import projects
    from models.db import session_scope

    settings = get_settings()
    with session_scope() as session:
        rows = [
            (r.id, r.project.tenant, r.project.name, r.name, r.url, r.credential_ref)
            for r in projects.remotes_to_check(session, tenant=tenant, project=project)
        ]
    targets: list[RemoteTarget] = []
    problems: dict[int, str] = {}
    for index, (_, _, _, name, url, ref) in enumerate(rows):
        credential: GitCredential | None = None
        try:
            credential = resolve_credential(ref)
        except GitWorkspaceError as exc:
            problems[index] = str(exc)
        targets.append(RemoteTarget(name, url, credential))
    checks = check_remotes(
        targets,
        timeout=settings.health_peer_timeout_seconds,
        allowed_schemes=settings.git_allowed_schemes,
    )
    checks = [
        RemoteCheck(False, None, problems[i]) if i in problems else check
        for i, check in enumerate(checks)
    ]
    with session_scope() as session:
        for (remote_id, *_), check in zip(rows, checks, strict=True):
            projects.record_check(
                session,
                remote_id,
                ok=check.reachable,
                latency_ms=check.latency_ms,
                error=check.error,
            )
    report = [
        RemoteHealth(
            tenant=row_tenant,
            project=row_project,
            remote=name,
            url=redact_url(url),
            credential_ref=ref,
            status="reachable" if check.reachable else "unreachable",
            latency_ms=check.latency_ms,
            error=check.error,
        )
        for (_, row_tenant, row_project, name, url, ref), check in zip(rows, checks, strict=True)
    ]
    healthy = all(r.status == "reachable" for r in report)
    return RemotesHealth(
        status="healthy" if healthy else "unhealthy", checked_at=datetime.now(UTC), remotes=report
    )


@router.get(
    "/health/remotes",
    response_model=RemotesHealth,
    responses={503: {"model": RemotesHealth, "description": "A remote is unreachable."}},
)
def remotes_health(
    tenant: str | None = Query(None, description="Only this tenant's projects."),
    project: str | None = Query(None, description="Only this project (with its tenant)."),
) -> JSONResponse:
    """Each project remote: reachable (with its latency) or unreachable (with git's error)."""
    try:
        report = remotes_report(tenant=tenant, project=project)
    except SQLAlchemyError as exc:
        report = RemotesHealth(
            status="unhealthy",
            checked_at=datetime.now(UTC),
            remotes=[],
            error=f"the database did not answer: {type(exc).__name__}",
        )
    return JSONResponse(
        report.model_dump(mode="json"), status_code=200 if report.status == "healthy" else 503
    )

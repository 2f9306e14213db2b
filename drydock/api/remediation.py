"""``/v1/remediation``: playbooks, runs, approvals and artifacts over HTTP.

Tenancy: a token bound to a tenant (`drydock tokens create --tenant T`) sees and acts on that
tenant only; another tenant's run or playbook is 404, exactly as if it did not exist, and
naming another tenant is 403. An operator token (no tenant) reads across tenants and names the
tenant when it writes.

Permissions: requesting, cancelling and reading runs need the `remediation.run_playbook` scope;
approving and rejecting need `remediation.approve`; creating playbooks needs
`remediation.playbooks`. A run cannot be approved by the token that requested it.
"""

from __future__ import annotations

import uuid
from datetime import datetime
from typing import Annotated, Any

from fastapi import APIRouter, Body, Depends, Query, Request, Response
from fastapi.responses import JSONResponse
from pydantic import BaseModel, Field, ValidationError

from drydock.api.auth import Caller, actor_of, require_scope, tenant_to_read, tenant_to_write
from drydock.api.bodies import RowBody, RowView
from drydock.api.errors import ErrorBody, InputProblem
from drydock.api.inputs import (
    MAX_VERSION,
    AssetRef,
    JSONBody,
    PlaybookName,
    ReasonText,
    TenantName,
    TenantQuery,
    json_bytes,
    json_value,
    strictly,
)
from models import remediation as store
from models.db import session_scope
from models.remediation import RemediationRefusedError, RunState
from policy.approvals import ApprovalsUnavailableError
from tasks.remediation import playbook_store, requests, views
from tasks.remediation.executors import spec_model_for
from tasks.remediation.executors.base import ExecutorKind
from tasks.remediation.playbooks import PlaybookDefinition

router = APIRouter(prefix="/v1/remediation", tags=["remediation"])

_FORBIDDEN = (
    "The token lacks the scope, acts for another tenant, or is an operator token that did "
    "not name the tenant."
)

# ---- bodies ----------------------------------------------------------------------------------


class PlaybookBody(BaseModel):
    id: uuid.UUID
    tenant: str
    name: str
    version: int
    executor: str
    timeout_seconds: int
    requires_approval: bool
    asset_kinds: list[str]
    description: str
    created_at: datetime | None
    created_by: str | None
    spec: dict[str, Any] | None = None


class PlaybookDetailBody(PlaybookBody):
    versions: list[int]


class RunRequestBody(JSONBody):
    asset: AssetRef = Field(description="The asset's id, or its name within the tenant.")
    playbook: PlaybookName = Field(description="The playbook's name (its newest version runs).")
    reason: ReasonText = Field("", description="Why: kept in the audit trail.")
    tenant: TenantName | None = Field(
        None, description="Operator tokens (required): the asset's tenant."
    )


class RunDecisionBody(JSONBody):
    reason: ReasonText = Field("", description="Why: kept in the audit trail.")


class RunRequestedBody(RowBody):
    run_id: uuid.UUID
    created: bool = Field(
        description="False: the asset and playbook already had an active run; this is it."
    )
    state: str
    job_id: uuid.UUID | None
    approval_reasons: list[str]
    url: str


class ApprovedBody(RowBody):
    run_id: uuid.UUID
    approval_token: str = Field(
        description="Signed, bound to this run, expiring; the run's job carries it."
    )
    expires_at: datetime
    job_id: uuid.UUID | None = Field(
        description="Null when the broker was unreachable: the run is sent by the next sweep."
    )


class RunBody(BaseModel):
    id: uuid.UUID
    tenant: str
    asset_id: uuid.UUID
    playbook: str
    playbook_version: int
    state: RunState
    reason: str
    requested_by: str
    requested_at: datetime | None
    approval_reasons: list[str]
    approval_deadline: datetime | None
    approved_by: str | None
    approved_at: datetime | None
    approval_expires_at: datetime | None
    trust_context: dict[str, Any]
    attempts: int
    job_id: uuid.UUID | None
    started_at: datetime | None
    finished_at: datetime | None
    error: str | None
    outputs: dict[str, Any]
    evidence_nonce: str | None


class AuditBody(BaseModel):
    action: str
    actor: str
    reason: str
    detail: dict[str, Any]
    at: datetime | None


class ArtifactBody(BaseModel):
    attempt: int
    step: int
    name: str
    ok: bool
    timed_out: bool
    exit_code: int | None
    error: str | None
    stdout: str
    stderr: str
    stdout_bytes: int
    stderr_bytes: int
    truncated: bool = Field(description="The output was longer than kept: its middle is cut.")
    outputs: dict[str, Any]
    started_at: datetime | None
    finished_at: datetime | None
    duration_ms: float


class RunDetailBody(RunBody):
    asset: dict[str, Any] | None
    audit: list[AuditBody]
    artifacts: list[ArtifactBody]


# ---- helpers ---------------------------------------------------------------------------------


def refused_handler(request: Request, exc: Exception) -> JSONResponse:
    """Registered by drydock.api: a refused request is 409 with its reason."""
    return JSONResponse({"detail": str(exc)}, status_code=409)


def approvals_unavailable_handler(request: Request, exc: Exception) -> JSONResponse:
    return JSONResponse({"detail": str(exc)}, status_code=503, headers={"Retry-After": "5"})


EXCEPTION_HANDLERS: dict[type[Exception], Any] = {
    RemediationRefusedError: refused_handler,
    ApprovalsUnavailableError: approvals_unavailable_handler,
}

# ---- playbooks -------------------------------------------------------------------------------


@router.post(
    "/playbooks",
    status_code=201,
    response_model=PlaybookBody,
    responses={
        403: {"model": ErrorBody, "description": _FORBIDDEN},
        409: {"model": ErrorBody, "description": "Refused: the tenant's name is invalid."},
    },
)
def create_playbook(
    caller: Caller,
    body: Annotated[bytes, Depends(json_bytes)],
    tenant: TenantQuery = None,
) -> dict[str, Any]:
    """Store a playbook definition as the next version of its name; the spec is validated by
    its executor's schema (422 names each problem). The body is a PlaybookDefinition."""
    require_scope(caller, "remediation.playbooks")
    tenant = tenant_to_write(caller, tenant)
    return playbook_store.create_playbook(_definition(body), tenant=tenant, actor=actor_of(caller))


def _definition(body: bytes) -> PlaybookDefinition:
    """The body as a definition, strictly: its spec first, with its executor's model, so that
    each of the spec's problems is named where it is (the definition's own check of its spec
    would report them all at the spec as one)."""
    if not body:
        raise InputProblem.at(["body"], "a playbook definition is required", "missing")
    given = json_value(body, missing=None)
    kinds = {kind.value: kind for kind in ExecutorKind}
    executor = given.get("executor") if isinstance(given, dict) else None
    if isinstance(executor, str) and executor in kinds:
        try:
            strictly(spec_model_for(kinds[executor]), given.get("spec"))
        except ValidationError as exc:
            raise InputProblem.of_body(exc, under=["spec"]) from None
    try:
        return strictly(PlaybookDefinition, given)
    except ValidationError as exc:
        raise InputProblem.of_body(exc) from None


@router.get(
    "/playbooks",
    response_model=list[PlaybookBody],
    responses={403: {"model": ErrorBody, "description": _FORBIDDEN}},
)
def list_playbooks(caller: Caller, tenant: TenantQuery = None) -> list[dict[str, Any]]:
    """The newest version of every playbook the token may see."""
    require_scope(caller, "remediation.run_playbook")
    with session_scope() as session:
        return [
            playbook_store.playbook_summary(book, with_spec=False)
            for book in store.list_playbooks(session, tenant_to_read(caller, tenant))
        ]


@router.get(
    "/playbooks/{name}",
    response_model=PlaybookDetailBody,
    responses={403: {"model": ErrorBody, "description": _FORBIDDEN}, 404: {"model": ErrorBody}},
)
def show_playbook(
    name: PlaybookName,
    caller: Caller,
    tenant: TenantQuery = None,
    version: Annotated[int | None, Query(ge=1, le=MAX_VERSION)] = None,
) -> dict[str, Any]:
    """One playbook version (the newest unless ?version=) with its spec."""
    require_scope(caller, "remediation.run_playbook")
    return playbook_store.describe_playbook(tenant_to_write(caller, tenant), name, version)


# ---- runs ------------------------------------------------------------------------------------


@router.post(
    "/runs",
    status_code=201,
    response_model=RunRequestedBody,
    responses={
        200: {"model": RunRequestedBody, "description": "Joined the asset's active run."},
        403: {"model": ErrorBody, "description": _FORBIDDEN},
        404: {"model": ErrorBody, "description": "No such asset or playbook for the tenant."},
        409: {"model": ErrorBody, "description": "Refused: the asset is not distrusted, ..."},
    },
)
def request_run(body: RunRequestBody, caller: Caller, response: Response) -> RunRequestedBody:
    """Ask for a playbook to run against a quarantined asset. Concurrent requests for the same
    asset and playbook collapse into one run: 201 for the one that created it, 200 for the
    others, all with its id."""
    require_scope(caller, "remediation.run_playbook")
    outcome = requests.request_run(
        tenant=tenant_to_write(caller, body.tenant),
        asset=body.asset,
        playbook=body.playbook,
        requested_by=actor_of(caller),
        reason=body.reason,
    )
    if not outcome.created:
        response.status_code = 200
    url = f"/v1/remediation/runs/{outcome.run_id}"
    response.headers["Location"] = url
    return RunRequestedBody.model_validate(RowView(outcome, url=url))


@router.get(
    "/runs",
    response_model=list[RunBody],
    responses={
        403: {"model": ErrorBody, "description": _FORBIDDEN},
        404: {"model": ErrorBody, "description": "The asset filter names no asset."},
        409: {"model": ErrorBody, "description": "The asset's name is several tenants'."},
    },
)
def list_runs(
    caller: Caller,
    tenant: TenantQuery = None,
    state: RunState | None = None,
    asset: Annotated[AssetRef | None, Query(description="An asset's id, or name.")] = None,
    limit: Annotated[int, Query(ge=1, le=500)] = 50,
) -> list[dict[str, Any]]:
    """Runs newest first."""
    require_scope(caller, "remediation.run_playbook")
    return views.list_run_views(
        tenant=tenant_to_read(caller, tenant),
        state=state.value if state else None,
        asset=asset,
        limit=limit,
    )


@router.get(
    "/runs/{run_id}",
    response_model=RunDetailBody,
    responses={403: {"model": ErrorBody, "description": _FORBIDDEN}, 404: {"model": ErrorBody}},
)
def show_run(run_id: uuid.UUID, caller: Caller) -> dict[str, Any]:
    """A run with its audit trail and each step's artifacts (output capped, secrets redacted)."""
    require_scope(caller, "remediation.run_playbook")
    return views.describe_run(run_id, tenant=caller.tenant)


@router.post(
    "/runs/{run_id}/approve",
    response_model=ApprovedBody,
    responses={
        403: {"model": ErrorBody, "description": _FORBIDDEN},
        404: {"model": ErrorBody},
        409: {"model": ErrorBody},
        503: {"model": ErrorBody},
    },
)
def approve_run(
    run_id: uuid.UUID, caller: Caller, body: Annotated[RunDecisionBody | None, Body()] = None
) -> ApprovedBody:
    """Approve a pending run: it is queued with a signed approval token bound to it, valid for
    DRYDOCK_REMEDIATION_APPROVAL_TTL_SECONDS."""
    require_scope(caller, "remediation.approve")
    approved = requests.approve_run(
        run_id,
        tenant=caller.tenant,
        approver=actor_of(caller),
        reason=body.reason if body else "",
    )
    return ApprovedBody.model_validate(RowView(approved, approval_token=approved.token))


@router.post(
    "/runs/{run_id}/reject",
    response_model=RunBody,
    responses={
        403: {"model": ErrorBody, "description": _FORBIDDEN},
        404: {"model": ErrorBody},
        409: {"model": ErrorBody},
    },
)
def reject_run(
    run_id: uuid.UUID, caller: Caller, body: Annotated[RunDecisionBody | None, Body()] = None
) -> dict[str, Any]:
    """Refuse a pending run; it becomes cancelled."""
    require_scope(caller, "remediation.approve")
    requests.reject_run(
        run_id, tenant=caller.tenant, actor=actor_of(caller), reason=body.reason if body else ""
    )
    return views.describe_run(run_id, tenant=caller.tenant)


@router.post(
    "/runs/{run_id}/cancel",
    response_model=RunBody,
    responses={
        403: {"model": ErrorBody, "description": _FORBIDDEN},
        404: {"model": ErrorBody},
        409: {"model": ErrorBody},
    },
)
def cancel_run(
    run_id: uuid.UUID, caller: Caller, body: Annotated[RunDecisionBody | None, Body()] = None
) -> dict[str, Any]:
    """Cancel a run that has not started."""
    require_scope(caller, "remediation.run_playbook")
    requests.cancel_run(
        run_id, tenant=caller.tenant, actor=actor_of(caller), reason=body.reason if body else ""
    )
    return views.describe_run(run_id, tenant=caller.tenant)

"""``/v1/remediation/workspaces``, ``/lanes``, ``/freezes``: playbooks changed safely over HTTP.

A workspace is drafted and edited (`remediation.playbooks`), simulated against a sandbox
replica (`remediation.playbooks`), approved (`remediation.approve`, not by its author) and
promoted through its gates (`remediation.playbooks`); reading needs `remediation.run_playbook`.
Lanes, freezes and an asset's lane are governance: `remediation.approve`. Tenancy is as for
runs: another tenant's workspace is 404, naming another tenant 403.
"""

from __future__ import annotations

import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from datetime import datetime
from typing import Annotated, Any

from fastapi import APIRouter, Body, Query
from pydantic import BaseModel, Field, StringConstraints

from drydock.api.auth import Caller, actor_of, require_scope, tenant_to_read, tenant_to_write
from drydock.api.bodies import UTCDateTime
from drydock.api.errors import ErrorBody, InputProblem, problem
from drydock.api.inputs import AssetRef, JSONBody, PlaybookName, ReasonText, TenantQuery
from models.remediation_workspaces import WorkspaceState
from tasks.remediation import governance, promotion, workspaces
from tasks.remediation.workspaces import WorkspaceCreate, WorkspaceEdit, WorkspaceInvalidError

# Said in words: at least one character that is not white space.
FreezeReason = Annotated[str, StringConstraints(min_length=1, max_length=2000, pattern=r"\S")]

# A moment as RFC 3339 text: not strict, which would accept only a datetime object.
FreezeMoment = Annotated[UTCDateTime, Field(strict=False)]

router = APIRouter(prefix="/v1/remediation", tags=["remediation workspaces"])

_FORBIDDEN = "The token lacks the scope, or acts for another tenant."
_ERRORS: dict[int | str, dict[str, Any]] = {
    403: {"model": ErrorBody, "description": _FORBIDDEN},
    404: {"model": ErrorBody, "description": "No such workspace (or lane, freeze, asset)."},
    409: {"model": ErrorBody, "description": "Its state does not allow it, or it changed."},
}


# ---- bodies ----------------------------------------------------------------------------------


class ScopeBody(BaseModel):
    asset_class: str
    lane: str
    names: list[str]


class WorkspaceSummaryBody(BaseModel):
    id: uuid.UUID
    tenant: str
    name: str
    playbook: str
    base_version: int | None
    revision: int
    state: WorkspaceState
    scope: ScopeBody
    active_runs: str
    simulated_revision: int | None
    approved_revision: int | None
    approved_by: str | None
    promoted_version: int | None
    promoted_at: datetime | None
    promoted_by: str | None
    loop_finished_at: datetime | None
    created_by: str
    created_at: datetime | None
    updated_at: datetime | None


class SimulationBody(BaseModel):
    number: int
    revision: int | None
    job_id: uuid.UUID | None
    result: dict[str, Any]
    steps: list[dict[str, Any]] = Field(
        description="Each step as simulated: output capped and redacted, diff, outputs."
    )


class WorkspaceEventBody(BaseModel):
    id: int
    action: str
    actor: str
    revision: int
    asset_id: uuid.UUID | None
    detail: dict[str, Any]
    at: datetime | None


class WorkspaceBody(WorkspaceSummaryBody):
    draft: dict[str, Any]
    reason: str
    assets_in_scope: int
    assets: list[dict[str, Any]]
    simulation: SimulationBody
    history: list[WorkspaceEventBody]


class DecisionBody(JSONBody):
    reason: ReasonText = Field("", description="Why: kept in the workspace's history.")


class PromoteBody(JSONBody):
    approval_token: Annotated[str, Field(min_length=1, max_length=4096)] | None = Field(
        None, description="A protected lane's promotion: the token the approval issued."
    )
    reason: ReasonText = Field("", description="Why: kept in the workspace's history.")


class SimulationStartedBody(BaseModel):
    workspace: str
    simulation: int
    job_id: uuid.UUID
    state: str


class WorkspaceApprovalBody(BaseModel):
    workspace: str
    revision: int
    approver: str
    approval_token: str = Field(description="Present it to promote into a protected lane.")
    expires_at: datetime


class GateBody(BaseModel):
    gate: str
    passed: bool
    reason: str


class PromotedBody(BaseModel):
    workspace: str
    workspace_id: uuid.UUID
    state: str
    playbook: str
    version: int
    previous_version: int | None
    gates: list[GateBody]
    loop_job_id: uuid.UUID | None = Field(
        description="The promotion loop's job; null when the broker was down (the sweep runs it)."
    )


class LaneBody(BaseModel):
    tenant: str
    name: str
    protected: bool
    description: str
    updated_at: datetime | None
    updated_by: str | None


class LanePutBody(JSONBody):
    protected: bool = Field(False, description="Promotions into it need an approval token.")
    description: ReasonText = ""


class FreezeBody(BaseModel):
    id: uuid.UUID
    tenant: str
    lane: str | None
    asset_class: str | None
    reason: str
    starts_at: datetime | None
    ends_at: datetime | None
    in_force: bool
    created_by: str
    lifted_at: datetime | None
    lifted_by: str | None


class FreezeAddBody(JSONBody):
    lane: PlaybookName | None = Field(None, description="The lane it covers (default: every).")
    asset_class: Annotated[str, Field(min_length=1, max_length=100)] | None = Field(
        None, description="The asset class it covers (default: every)."
    )
    reason: FreezeReason = Field(description="Why promotions stop.")
    starts_at: FreezeMoment | None = Field(None, description="Default: now.")
    ends_at: FreezeMoment | None = Field(None, description="Default: until lifted.")


class AssetLaneBody(JSONBody):
    lane: PlaybookName | None = Field(description="The lane; null takes it out of every lane.")


class AssetLaneSetBody(BaseModel):
    asset: str
    lane: str | None


class WorkspaceCreateBody(WorkspaceCreate, JSONBody):
    """WorkspaceCreate as a body: its integral numbers (``3.0``) read as the ints they are."""


class WorkspaceEditBody(WorkspaceEdit, JSONBody):
    """WorkspaceEdit as a body: its integral numbers (``3.0``) read as the ints they are."""


# ---- helpers ---------------------------------------------------------------------------------


@contextmanager
def _placed() -> Iterator[None]:
    """A draft's or scope's problems as a 422, each placed in the body."""
    try:
        yield
    except WorkspaceInvalidError as exc:
        raise InputProblem(
            [
                problem(["body", *p.field.split(".")], p.problem, "workspace_invalid")
                for p in exc.problems
            ]
        ) from None


# ---- workspaces ------------------------------------------------------------------------------


@router.post(
    "/workspaces", status_code=201, response_model=WorkspaceBody, responses=_ERRORS
)  # fmt: skip
def create_workspace(
    body: WorkspaceCreateBody, caller: Caller, tenant: TenantQuery = None
) -> dict[str, Any]:
    """Open a workspace: a draft of a playbook (a copy of its base version unless a draft is
    given), the scope it is for, in state draft. Every problem of the draft is named (422)."""
    require_scope(caller, "remediation.playbooks")
    with _placed():
        return workspaces.create(
            body, tenant=tenant_to_write(caller, tenant), actor=actor_of(caller)
        )


@router.get("/workspaces", response_model=list[WorkspaceSummaryBody], responses=_ERRORS)
def list_workspaces(
    caller: Caller,
    tenant: TenantQuery = None,
    state: Annotated[list[WorkspaceState] | None, Query(description="Only these states.")] = None,
    limit: Annotated[int, Query(ge=1, le=500)] = 100,
) -> list[dict[str, Any]]:
    """Workspaces, most recently changed first."""
    require_scope(caller, "remediation.run_playbook")
    return workspaces.list_summaries(
        tenant=tenant_to_read(caller, tenant), states=state or [], limit=limit
    )


@router.get("/workspaces/{name}", response_model=WorkspaceBody, responses=_ERRORS)
def show_workspace(
    name: PlaybookName, caller: Caller, tenant: TenantQuery = None
) -> dict[str, Any]:
    """A workspace whole: draft, scope and the assets it covers, the newest simulation step by
    step, and its history (every run its promotion created, refreshed or skipped)."""
    require_scope(caller, "remediation.run_playbook")
    return workspaces.describe(name, tenant=tenant_to_write(caller, tenant))


@router.patch("/workspaces/{name}", response_model=WorkspaceBody, responses=_ERRORS)
def edit_workspace(
    name: PlaybookName, body: WorkspaceEditBody, caller: Caller, tenant: TenantQuery = None
) -> dict[str, Any]:
    """A new revision of the draft, scope or run policy; the workspace is a draft again."""
    require_scope(caller, "remediation.playbooks")
    with _placed():
        return workspaces.edit(
            name, body, tenant=tenant_to_write(caller, tenant), actor=actor_of(caller)
        )


@router.post("/workspaces/{name}/abandon", response_model=WorkspaceBody, responses=_ERRORS)
def abandon_workspace(
    name: PlaybookName,
    caller: Caller,
    tenant: TenantQuery = None,
    body: Annotated[DecisionBody | None, Body()] = None,
) -> dict[str, Any]:
    """Give the workspace up: nothing it drafted goes live."""
    require_scope(caller, "remediation.playbooks")
    return workspaces.abandon(
        name,
        tenant=tenant_to_write(caller, tenant),
        actor=actor_of(caller),
        reason=body.reason if body else "",
    )


@router.post(
    "/workspaces/{name}/simulate",
    status_code=202,
    response_model=SimulationStartedBody,
    responses=_ERRORS,
)
def simulate_workspace(
    name: PlaybookName, caller: Caller, tenant: TenantQuery = None
) -> dict[str, Any]:
    """Simulate the current revision against a sandbox replica (a remediation job): never the
    real target. Follow the job, or the workspace's state."""
    require_scope(caller, "remediation.playbooks")
    return promotion.simulate(name, tenant=tenant_to_write(caller, tenant), actor=actor_of(caller))


@router.post(
    "/workspaces/{name}/approve",
    response_model=WorkspaceApprovalBody,
    responses={**_ERRORS, 503: {"model": ErrorBody}},
)
def approve_workspace(
    name: PlaybookName,
    caller: Caller,
    tenant: TenantQuery = None,
    body: Annotated[DecisionBody | None, Body()] = None,
) -> WorkspaceApprovalBody:
    """Approve the simulated revision (not by its author): a signed token bound to it."""
    require_scope(caller, "remediation.approve")
    approved = promotion.approve(
        name,
        tenant=tenant_to_write(caller, tenant),
        approver=actor_of(caller),
        reason=body.reason if body else "",
    )
    return WorkspaceApprovalBody(
        workspace=approved.workspace,
        revision=approved.revision,
        approver=approved.approver,
        approval_token=approved.token,
        expires_at=approved.expires_at,
    )


@router.post("/workspaces/{name}/promote", response_model=PromotedBody, responses=_ERRORS)
def promote_workspace(
    name: PlaybookName,
    caller: Caller,
    tenant: TenantQuery = None,
    body: Annotated[PromoteBody | None, Body()] = None,
) -> dict[str, Any]:
    """Walk the gates (simulation, approval, freeze); all passing, the draft becomes the scope's
    active version and the promotion loop's job is sent. A refusal (409) names every failing
    gate, and is in the workspace's history with each gate's reason."""
    require_scope(caller, "remediation.playbooks")
    return promotion.promote(
        name,
        tenant=tenant_to_write(caller, tenant),
        actor=actor_of(caller),
        approval_token=body.approval_token if body else None,
        reason=body.reason if body else "",
    )


# ---- lanes, freezes, an asset's lane ---------------------------------------------------------


@router.put("/lanes/{name}", response_model=LaneBody, responses=_ERRORS)
def put_lane(
    name: PlaybookName, body: LanePutBody, caller: Caller, tenant: TenantQuery = None
) -> dict[str, Any]:
    """Make or change a lane."""
    require_scope(caller, "remediation.approve")
    with _placed():
        return governance.put_lane(
            tenant=tenant_to_write(caller, tenant),
            name=name,
            protected=body.protected,
            description=body.description,
            actor=actor_of(caller),
        )


@router.get("/lanes", response_model=list[LaneBody], responses=_ERRORS)
def list_lanes(caller: Caller, tenant: TenantQuery = None) -> list[dict[str, Any]]:
    require_scope(caller, "remediation.run_playbook")
    return governance.list_lanes(tenant=tenant_to_read(caller, tenant))


@router.post("/freezes", status_code=201, response_model=FreezeBody, responses=_ERRORS)
def add_freeze(body: FreezeAddBody, caller: Caller, tenant: TenantQuery = None) -> dict[str, Any]:
    """Stop promotions into a lane, an asset class, both, or the whole tenant."""
    require_scope(caller, "remediation.approve")
    with _placed():
        return governance.add_freeze(
            tenant=tenant_to_write(caller, tenant),
            lane=body.lane,
            asset_class=body.asset_class,
            reason=body.reason,
            starts_at=body.starts_at,
            ends_at=body.ends_at,
            actor=actor_of(caller),
        )


@router.get("/freezes", response_model=list[FreezeBody], responses=_ERRORS)
def list_freezes(
    caller: Caller,
    tenant: TenantQuery = None,
    past: Annotated[bool, Query(description="Also those lifted or ended.")] = False,
) -> list[dict[str, Any]]:
    require_scope(caller, "remediation.run_playbook")
    return governance.list_freezes(tenant=tenant_to_read(caller, tenant), include_past=past)


@router.post("/freezes/{freeze_id}/lift", response_model=FreezeBody, responses=_ERRORS)
def lift_freeze(freeze_id: uuid.UUID, caller: Caller) -> dict[str, Any]:
    require_scope(caller, "remediation.approve")
    return governance.lift_freeze(freeze_id, tenant=caller.tenant, actor=actor_of(caller))


@router.put("/assets/{asset}/lane", response_model=AssetLaneSetBody, responses=_ERRORS)
def set_asset_lane(
    asset: AssetRef, body: AssetLaneBody, caller: Caller, tenant: TenantQuery = None
) -> AssetLaneSetBody:
    """Put an asset in a lane: the promotions of workspaces scoped to it then cover it."""
    require_scope(caller, "remediation.approve")
    with _placed():
        name = governance.set_asset_lane(
            tenant=tenant_to_write(caller, tenant),
            asset=asset,
            lane=body.lane,
            actor=actor_of(caller),
        )
    return AssetLaneSetBody(asset=name, lane=body.lane)

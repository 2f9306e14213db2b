"""Promotions, approvals, release history and tier rules over HTTP.

- ``POST /v1/servers/{server}/promotions``: walk the checkpoints; 201 with the promotion when it
  passed (the release at the tier made), 409 with the same body when it was refused (each
  checkpoint with its reason; recorded either way). Scope ``runtime.promote``.
- ``POST /v1/servers/{server}/promotions/approvals``: an approval token for one promotion
  (server, digest, tier) to a protected tier. Scope ``runtime.approve``.
- ``GET /v1/servers/{server}/history``: promotions, rollouts and rollbacks, newest first.
  Scope ``runtime.read``.
- ``PUT /v1/runtime/tiers/{tier}``, ``GET /v1/runtime/tiers``: each tier's promotion rules
  (anomaly threshold, protected, analysis window). Scopes ``runtime.promote`` / ``runtime.read``.

A rollout is a job like any other: ``POST /v1/jobs/runtime.rollout``.
"""

from __future__ import annotations

import uuid
from typing import Annotated, Any

from fastapi import APIRouter, HTTPException, Path, Query
from fastapi.responses import JSONResponse
from pydantic import BaseModel, Field, StringConstraints

from catalog.runtime import DIGEST_PATTERN, TIER_PATTERN
from drydock.api.auth import Caller, actor_of, require_scope, tenant_to_read
from drydock.api.errors import ErrorBody, InputProblem, problem
from drydock.api.inputs import JSONBody, TenantQuery
from drydock.api.servers import ReleaseBody
from models.runtime_releases import ChangeKind, ChangeOutcome
from tasks.runtime import promotions
from tasks.runtime.servers import RuntimeInputError

router = APIRouter(tags=["runtime"])

ServerRef = Annotated[str, StringConstraints(min_length=1, max_length=200)]
_ERRORS: dict[int | str, dict[str, Any]] = {
    403: {"model": ErrorBody, "description": "The token lacks the scope, or another tenant."},
    404: {"model": ErrorBody, "description": "No such server or tier, or another tenant's."},
    409: {"model": ErrorBody, "description": "The digest is not a release of the server."},
}


class CheckpointBody(BaseModel):
    gate: str
    passed: bool
    reason: str


class ChangeBody(BaseModel):
    id: int
    server_id: uuid.UUID
    kind: ChangeKind
    outcome: ChangeOutcome
    tier: str
    digest: str
    from_digest: str | None = Field(
        description="What served the tier before (or again, after a rollback)."
    )
    rollout_id: uuid.UUID | None
    checkpoints: list[CheckpointBody]
    detail: str
    actor: str
    job_id: uuid.UUID | None
    at: str | None


class TierRulesBody(BaseModel):
    tier: str
    anomaly_threshold: float
    protected: bool
    analysis_seconds: float


class PromotionBody(ChangeBody):
    rules: TierRulesBody
    release: ReleaseBody | None = Field(description="The release at the tier, when promoted.")


class PromotionRequestBody(JSONBody):
    digest: str = Field(pattern=DIGEST_PATTERN)
    tier: str = Field(pattern=TIER_PATTERN, description="The tier promoted to.")
    approval_token: str | None = Field(
        None, max_length=4000, description="For a protected tier: `drydock releases approve`."
    )
    reason: str = Field("", max_length=2000)


class ApprovalRequestBody(JSONBody):
    digest: str = Field(pattern=DIGEST_PATTERN)
    tier: str = Field(pattern=TIER_PATTERN)


class ApprovalBody(BaseModel):
    token: str
    approver: str
    expires_at: str


class HistoryBody(BaseModel):
    server_id: uuid.UUID
    server: str
    items: list[ChangeBody]
    next_before: int | None = Field(description="Pass as `before` for the next page.")


class TierRulesRequestBody(JSONBody):
    anomaly_threshold: float = Field(ge=0, le=1_000_000)
    protected: bool = False
    analysis_seconds: float = Field(ge=0, le=3600)


def _input_problems(exc: RuntimeInputError) -> InputProblem:
    return InputProblem([problem(["body"], text) for text in exc.problems])


@router.post(
    "/v1/servers/{server}/promotions",
    status_code=201,
    response_model=PromotionBody,
    responses={**_ERRORS, 409: {"model": PromotionBody, "description": "Refused (recorded)."}},
)
def promote(
    server: ServerRef, body: PromotionRequestBody, caller: Caller, tenant: TenantQuery = None
) -> Any:
    """Promote a digest of the server to a tier through its checkpoints (certification, host
    trust, anomaly score, approval), all walked and recorded."""
    require_scope(caller, "runtime.promote")
    result = promotions.promote(
        tenant=tenant_to_read(caller, tenant),
        server=server,
        digest=body.digest,
        tier=body.tier,
        actor=actor_of(caller),
        approval_token=body.approval_token,
        reason=body.reason,
    )
    if result["outcome"] != ChangeOutcome.PROMOTED.value:
        return JSONResponse(PromotionBody.model_validate(result).model_dump(mode="json"), 409)
    return result


@router.post(
    "/v1/servers/{server}/promotions/approvals",
    status_code=201,
    response_model=ApprovalBody,
    responses=_ERRORS,
)
def approve(
    server: ServerRef, body: ApprovalRequestBody, caller: Caller, tenant: TenantQuery = None
) -> dict[str, Any]:
    """An approval token for promoting this digest of the server to this (protected) tier."""
    require_scope(caller, "runtime.approve")
    try:
        issued = promotions.approve(
            tenant=tenant_to_read(caller, tenant),
            server=server,
            digest=body.digest,
            tier=body.tier,
            approver=actor_of(caller),
        )
    except RuntimeInputError as exc:
        raise _input_problems(exc) from None
    return {
        "token": issued.token,
        "approver": issued.approver,
        "expires_at": issued.expires_at.isoformat(),
    }


@router.get("/v1/servers/{server}/history", response_model=HistoryBody, responses=_ERRORS)
def release_history(
    server: ServerRef,
    caller: Caller,
    tenant: TenantQuery = None,
    kind: ChangeKind | None = None,
    before: Annotated[int | None, Query(ge=1, le=2**63 - 1)] = None,
    limit: Annotated[int, Query(ge=1, le=200)] = 50,
) -> dict[str, Any]:
    """The server's promotions, rollouts and rollbacks, newest first."""
    require_scope(caller, "runtime.read")
    return promotions.history_of(
        tenant=tenant_to_read(caller, tenant), server=server, kind=kind, before=before, limit=limit
    )


@router.put("/v1/runtime/tiers/{tier}", response_model=TierRulesBody, responses=_ERRORS)
def put_tier_rules(
    tier: Annotated[str, Path(pattern=TIER_PATTERN)],
    body: TierRulesRequestBody,
    caller: Caller,
) -> dict[str, Any]:
    """Set a tier's promotion rules (operators: the tier is everyone's)."""
    require_scope(caller, "runtime.promote")
    if caller.tenant is not None:
        raise HTTPException(
            403, f"token {caller.name!r} acts for a tenant: tier rules are fleet-wide"
        )
    return promotions.put_rules(
        tier,
        anomaly_threshold=body.anomaly_threshold,
        protected=body.protected,
        analysis_seconds=body.analysis_seconds,
        actor=actor_of(caller),
    )


@router.get("/v1/runtime/tiers", response_model=list[TierRulesBody], responses=_ERRORS)
def list_tier_rules(caller: Caller) -> list[dict[str, Any]]:
    require_scope(caller, "runtime.read")
    return promotions.list_rules()

"""``/v1/policy``, ``/v1/admission`` and ``/v1/evaluation``: placement decisions, approvals for
protected targets, and certifications over HTTP.

Tenancy as in ``/v1/remediation``: a tenant token decides, reads and approves for its own tenant
only; an operator token names the tenant. Permissions: ``policy.decide`` for decisions,
``admission.approve`` for approval tokens, ``evaluation.refresh_certification`` to read
certifications (the scope that may also request them).
"""

from __future__ import annotations

import uuid
from collections.abc import Sequence
from datetime import datetime
from typing import Annotated, Any

from fastapi import APIRouter, Query, Request
from fastapi.responses import JSONResponse
from pydantic import BaseModel, Field

from drydock.api.auth import Caller, actor_of, require_scope, tenant_to_read, tenant_to_write
from drydock.api.bodies import RowBody, RowView, UTCDateTime
from drydock.api.errors import ErrorBody
from drydock.api.inputs import AssetRef, FilterText, JSONBody, TenantName, TenantQuery
from models import evaluation, trust
from models import policy as policy_store
from models.db import session_scope
from models.evaluation import CertificationStatus, EvaluationCertification
from models.policy import PolicyDecisionKind
from policy import placement
from policy.admission import AdmissionRefusedError, issue_token

router = APIRouter(tags=["policy"])

MAX_TOKEN_TTL_SECONDS = 7 * 86400
_FORBIDDEN = (
    "The token lacks the scope, acts for another tenant, or is an operator token that did "
    "not name the tenant."
)


class PlacementBody(JSONBody):
    digest: FilterText = Field(description="The image digest to place (sha256:...).")
    tier: FilterText = Field(description="The evaluation tier the placement requires.")
    asset: AssetRef = Field(description="The target asset: its id, or its name within the tenant.")
    tenant: TenantName | None = Field(
        None, description="Operator tokens (required): the tenant placing."
    )
    accelerators: list[AssetRef] = Field(
        default_factory=list, max_length=64, description="Accelerator assets the workload uses."
    )


class GateBody(BaseModel):
    gate: str
    passed: bool
    reason: str


class AdmissionRefusedBody(ErrorBody):
    decision_id: int | None = Field(
        None, description="The recorded decision (GET /v1/policy/decisions)."
    )
    gates: list[GateBody] = Field(default_factory=list)


class DecisionBody(RowBody):
    id: int
    kind: str
    allowed: bool
    tenant: str | None
    request: dict[str, Any]
    gates: list[GateBody]
    summary: str
    job_id: uuid.UUID | None
    actor: str
    decided_at: UTCDateTime


class ApprovalRequestBody(JSONBody):
    asset: AssetRef = Field(
        description="The protected asset: its id, or its name within the tenant."
    )
    task: FilterText = Field(
        min_length=1, description="Task name or pattern (`builds.*`) approved."
    )
    ttl_seconds: int = Field(3600, gt=0, le=MAX_TOKEN_TTL_SECONDS)
    tenant: TenantName | None = Field(
        None, description="Operator tokens (required): the asset's tenant."
    )


class ApprovalBody(BaseModel):
    token: str = Field(description="Send it as the X-Drydock-Approval header of the enqueue.")
    token_id: str = Field(description="The token's id: it admits one job; revoke it by this id.")
    asset_id: uuid.UUID
    task: str
    expires_in_seconds: int


class CertificationBody(RowBody):
    id: uuid.UUID
    digest: str
    tier: str
    registry: str
    repository: str
    status: str
    summary: str
    evidence: list[dict[str, Any]]
    evaluated_at: datetime
    issued_at: datetime | None
    expires_at: datetime | None
    refresh_at: datetime | None
    cadence_seconds: int
    replaces_id: uuid.UUID | None
    job_id: uuid.UUID | None
    reason: str


class CertificationDetailBody(CertificationBody):
    lineage: list[CertificationBody] = Field(
        description="This certification and every one it replaced, newest first."
    )


def admission_refused_handler(request: Request, exc: Exception) -> JSONResponse:
    """Registered by drydock.api: a refused enqueue is 403 with the decision and its gates."""
    assert isinstance(exc, AdmissionRefusedError)
    return JSONResponse(
        {
            "detail": str(exc),
            "decision_id": exc.decision_id,
            "gates": exc.decision.gates_json(),
        },
        status_code=403,
    )


EXCEPTION_HANDLERS: dict[type[Exception], Any] = {AdmissionRefusedError: admission_refused_handler}


# ---- policy --------------------------------------------------------------------------------------


@router.post(
    "/v1/policy/decide",
    response_model=DecisionBody,
    responses={403: {"model": ErrorBody, "description": _FORBIDDEN}, 404: {"model": ErrorBody}},
)
def decide(body: PlacementBody, caller: Caller) -> DecisionBody:
    """May this digest, at this tier, be placed on this asset for this tenant? Allow or deny,
    with every gate's verdict and reason. The decision is recorded."""
    require_scope(caller, "policy.decide")
    tenant = tenant_to_write(caller, body.tenant)
    request = policy_store.PlacementRequest(
        digest=body.digest,
        tier=body.tier,
        asset=body.asset,
        tenant=tenant,
        accelerators=tuple(body.accelerators),
    )
    with session_scope() as session:
        row = placement.decide_placement(session, request, actor=actor_of(caller))
        return DecisionBody.model_validate(row)


@router.get(
    "/v1/policy/decisions",
    response_model=list[DecisionBody],
    responses={403: {"model": ErrorBody, "description": _FORBIDDEN}},
)
def decisions(
    caller: Caller,
    tenant: TenantQuery = None,
    kind: Annotated[
        PolicyDecisionKind | None, Query(description="placement, admission, ...")
    ] = None,
    limit: Annotated[int, Query(ge=1, le=500)] = 50,
) -> list[DecisionBody]:
    """Recorded decisions, newest first."""
    require_scope(caller, "policy.decide")
    scoped = tenant_to_read(caller, tenant)
    with session_scope() as session:
        rows = policy_store.list_decisions(
            session, tenant=scoped, kind=kind.value if kind else None, limit=limit
        )
        return [DecisionBody.model_validate(row) for row in rows]


# ---- admission -----------------------------------------------------------------------------------


@router.post(
    "/v1/admission/approvals",
    status_code=201,
    response_model=ApprovalBody,
    responses={403: {"model": ErrorBody, "description": _FORBIDDEN}, 404: {"model": ErrorBody}},
    tags=["admission"],
)
def approve(body: ApprovalRequestBody, caller: Caller) -> ApprovalBody:
    """An approval token letting jobs matching ``task`` be enqueued on a protected asset."""
    require_scope(caller, "admission.approve")
    tenant = tenant_to_write(caller, body.tenant)
    with session_scope() as session:
        asset = trust.find_asset(session, body.asset, tenant)
        asset_id, asset_tenant = asset.id, asset.tenant
    token = issue_token(
        asset_id=asset_id,
        task_pattern=body.task,
        tenant=asset_tenant,
        approver=actor_of(caller),
        ttl_seconds=body.ttl_seconds,
    )
    return ApprovalBody(
        token=token.token,
        token_id=token.id,
        asset_id=asset_id,
        task=body.task,
        expires_in_seconds=body.ttl_seconds,
    )


# ---- certifications -----------------------------------------------------------------------------


def certification_body(cert: EvaluationCertification) -> CertificationBody:
    # The registry is the row's host.
    return CertificationBody.model_validate(RowView(cert, registry=cert.host))


def certification_detail(chain: Sequence[EvaluationCertification]) -> CertificationDetailBody:
    """The newest of ``chain`` (a lineage, newest first) with the whole lineage."""
    lineage = [certification_body(cert) for cert in chain]
    return CertificationDetailBody.model_validate(
        RowView(chain[0], registry=chain[0].host, lineage=lineage)
    )


@router.get(
    "/v1/evaluation/certifications",
    response_model=list[CertificationBody],
    responses={403: {"model": ErrorBody, "description": _FORBIDDEN}},
    tags=["evaluation"],
)
def certifications(
    caller: Caller,
    digest: FilterText | None = None,
    tier: FilterText | None = None,
    status: CertificationStatus | None = None,
    limit: Annotated[int, Query(ge=1, le=500)] = 50,
) -> list[CertificationBody]:
    """Evaluations, newest first."""
    require_scope(caller, "evaluation.refresh_certification")
    with session_scope() as session:
        rows = evaluation.list_certifications(
            session, digest=digest, tier=tier, status=status.value if status else None, limit=limit
        )
        return [certification_body(row) for row in rows]


@router.get(
    "/v1/evaluation/certifications/{cert_id}",
    response_model=CertificationDetailBody,
    responses={403: {"model": ErrorBody, "description": _FORBIDDEN}, 404: {"model": ErrorBody}},
    tags=["evaluation"],
)
def certification(cert_id: uuid.UUID, caller: Caller) -> CertificationDetailBody:
    """One evaluation with its lineage."""
    require_scope(caller, "evaluation.refresh_certification")
    with session_scope() as session:
        return certification_detail(evaluation.lineage(session, cert_id))

"""``/v1/trust``: the trust registry's assets, their history and posture, and the moves an
operator makes by hand.

Tenancy as in ``/v1/remediation``: a token bound to a tenant sees its own tenant's assets only
(another's is 404, as if it did not exist); an operator token sees every tenant's, or one with
``?tenant=``. Permissions: ``trust.read`` to read, ``trust.transition`` to move.

Every asset carries its version, also as its ``ETag``. A move sends it back as ``If-Match``:
when the asset moved in between, the move is refused with 412 and the version it has now (in
``ETag``), so nobody quarantines or re-attests an asset on the strength of a state it has left.
``If-Match: *`` moves whatever version the asset is at; no ``If-Match`` at all is 428 (the
OpenAPI document states the header as required, ``drydock.api.openapi``).
"""

from __future__ import annotations

import uuid
from enum import StrEnum
from typing import Annotated, Any

from fastapi import APIRouter, Header, HTTPException, Query, Request, Response
from fastapi.responses import JSONResponse
from pydantic import BaseModel, Field

from drydock.api.auth import Caller, actor_of, require_scope, tenant_to_read
from drydock.api.bodies import RowBody, UTCDateTime
from drydock.api.errors import ErrorBody
from drydock.api.inputs import (
    MAX_OFFSET,
    MAX_PAGE,
    FilterText,
    JSONBody,
    ReasonText,
    TenantQuery,
)
from models import trust, trust_actions
from models.db import session_scope
from models.trust import AssetKind, TrustAsset, TrustState
from models.trust_actions import NotAnOperatorMoveError, VersionMismatchError

router = APIRouter(prefix="/v1/trust", tags=["trust"])

_NOT_FOUND = "No such asset, or one of another tenant."
_FORBIDDEN = "The token lacks the scope, or acts for another tenant than the one named."
# What a route on one asset answers besides its body.
_ONE_ASSET: dict[int | str, dict[str, Any]] = {
    403: {"model": ErrorBody, "description": _FORBIDDEN},
    404: {"model": ErrorBody, "description": _NOT_FOUND},
}
# One strong entity tag holding a version ("3"), or * (any version): what an asset's ETag is.
IF_MATCH_PATTERN = r'^(?:\*|"[0-9]{1,10}")$'


class AssetBody(RowBody):
    id: uuid.UUID
    tenant: str
    name: str
    kind: AssetKind
    asset_class: str | None = Field(description="Its class: reference values and policy.")
    state: TrustState
    version: int = Field(description="Changes with every move; send it back as If-Match.")
    protected: bool = Field(description="Remediation on it always needs an approval.")
    last_verified_at: UTCDateTime | None
    evidence_expires_at: UTCDateTime | None
    libvirt_uuid: uuid.UUID | None
    libvirt_state: str | None
    created_at: UTCDateTime
    updated_at: UTCDateTime


class TransitionBody(RowBody):
    id: int
    seq: int = Field(description="The asset's version once this move was written.")
    from_state: TrustState | None = Field(description="Null for the registration.")
    to_state: TrustState
    cause: str
    detail: str
    evidence: dict[str, Any]
    actor: str
    job_id: uuid.UUID | None
    created_at: UTCDateTime


class VerdictBody(RowBody):
    id: int
    kind: str = Field(description="tpm, sev_snp, tdx, accelerator_posture, ...")
    verified: bool
    summary: str
    checks: list[dict[str, str]] = Field(description="Every check: its name, outcome, reason.")
    claims: dict[str, Any] = Field(description="What the evidence said, as read.")
    nonce: str | None
    job_id: uuid.UUID | None
    judged_at: UTCDateTime
    created_at: UTCDateTime


class PostureBody(BaseModel):
    asset: AssetBody
    verdict: VerdictBody | None = Field(
        description="The newest verification of its evidence (or accelerator posture)."
    )
    accelerator: dict[str, Any] | None = Field(
        description="Accelerators: the newest posture report, as validated."
    )


class OperatorTarget(StrEnum):
    """The states an operator may move an asset to (models.trust_actions.OPERATOR_MOVES)."""

    QUARANTINED = TrustState.QUARANTINED.value
    PENDING_ATTESTATION = TrustState.PENDING_ATTESTATION.value


class MoveBody(JSONBody):
    # Not strict: a JSON body names the state by its value, which strict mode takes for a str.
    to_state: OperatorTarget = Field(
        strict=False,
        description="quarantined (out of service) or pending_attestation (attest again).",
    )
    reason: ReasonText = Field("", description="Why: kept in the asset's history.")


class MovedBody(BaseModel):
    asset: AssetBody
    transitions: list[TransitionBody]


IfMatchHeader = Annotated[
    str | None,
    Header(
        alias="If-Match",
        max_length=12,
        pattern=IF_MATCH_PATTERN,
        description='The asset\'s version as read (its ETag, "3"), or * for any version.',
    ),
]


def _expected_version(if_match: str | None) -> int | None:
    if if_match is None:
        raise HTTPException(
            428,
            'send If-Match: "<version>" (the asset\'s ETag, as GET /v1/trust/assets/{id} '
            "returns it), or If-Match: * to move it at whatever version it is",
        )
    # The header's pattern has refused anything but * and one strong tag.
    return None if if_match == "*" else int(if_match.strip('"'))


def _etag(asset: TrustAsset, response: Response) -> None:
    response.headers["ETag"] = f'"{asset.version}"'


def version_mismatch_handler(request: Request, exc: Exception) -> JSONResponse:
    """Registered by drydock.api: a move on a version the asset has left is 412."""
    assert isinstance(exc, VersionMismatchError)
    return JSONResponse(
        {"detail": str(exc), "version": exc.current},
        status_code=412,
        headers={"ETag": f'"{exc.current}"'},
    )


def not_an_operator_move_handler(request: Request, exc: Exception) -> JSONResponse:
    return JSONResponse({"detail": str(exc)}, status_code=422)


class VersionMismatchBody(ErrorBody):
    version: int = Field(description="The version the asset is at now (also its ETag).")


EXCEPTION_HANDLERS: dict[type[Exception], Any] = {
    VersionMismatchError: version_mismatch_handler,
    NotAnOperatorMoveError: not_an_operator_move_handler,
}


@router.get(
    "/assets",
    response_model=list[AssetBody],
    responses={403: {"model": ErrorBody, "description": _FORBIDDEN}},
)
def assets(
    caller: Caller,
    tenant: TenantQuery = None,
    state: TrustState | None = None,
    kind: AssetKind | None = None,
    asset_class: Annotated[FilterText | None, Query(alias="class")] = None,
    limit: Annotated[int, Query(ge=1, le=MAX_PAGE)] = 50,
    offset: Annotated[int, Query(ge=0, le=MAX_OFFSET)] = 0,
) -> list[AssetBody]:
    """Assets by tenant and name."""
    require_scope(caller, "trust.read")
    with session_scope() as session:
        rows = trust_actions.list_assets(
            session,
            tenant=tenant_to_read(caller, tenant),
            state=state,
            kind=kind,
            asset_class=asset_class,
            limit=limit,
            offset=offset,
        )
        return [AssetBody.model_validate(row) for row in rows]


@router.get(
    "/assets/{asset_id}",
    response_model=AssetBody,
    responses=_ONE_ASSET,
)
def asset(asset_id: uuid.UUID, caller: Caller, response: Response) -> AssetBody:
    """One asset; its version is also the ETag."""
    require_scope(caller, "trust.read")
    with session_scope() as session:
        row = trust_actions.visible_asset(session, asset_id, tenant_to_read(caller, None))
        _etag(row, response)
        return AssetBody.model_validate(row)


@router.get(
    "/assets/{asset_id}/history",
    response_model=list[TransitionBody],
    responses=_ONE_ASSET,
)
def history(asset_id: uuid.UUID, caller: Caller) -> list[TransitionBody]:
    """Every move of the asset, oldest first (by ``seq``)."""
    require_scope(caller, "trust.read")
    with session_scope() as session:
        row = trust_actions.visible_asset(session, asset_id, tenant_to_read(caller, None))
        return [TransitionBody.model_validate(move) for move in trust.history(session, row.id)]


@router.get(
    "/assets/{asset_id}/posture",
    response_model=PostureBody,
    responses=_ONE_ASSET,
)
def posture(asset_id: uuid.UUID, caller: Caller, response: Response) -> PostureBody:
    """Where the asset stands and why: its state, the newest verdict with every check and the
    claims it read, and for an accelerator its newest posture report."""
    require_scope(caller, "trust.read")
    with session_scope() as session:
        row = trust_actions.visible_asset(session, asset_id, tenant_to_read(caller, None))
        verdict = trust.latest_verdict(session, row.id)
        _etag(row, response)
        return PostureBody(
            asset=AssetBody.model_validate(row),
            verdict=None if verdict is None else VerdictBody.model_validate(verdict),
            accelerator=row.posture if row.kind == AssetKind.ACCELERATOR else None,
        )


@router.post(
    "/assets/{asset_id}/transitions",
    response_model=MovedBody,
    responses={
        **_ONE_ASSET,
        409: {"model": ErrorBody, "description": "The lifecycle has no such edge from its state."},
        412: {"model": VersionMismatchBody, "description": "It moved since it was read."},
        428: {"model": ErrorBody, "description": "No If-Match: say which version you read."},
    },
)
def move(
    asset_id: uuid.UUID,
    body: MoveBody,
    caller: Caller,
    response: Response,
    if_match: IfMatchHeader = None,
) -> MovedBody:
    """Quarantine the asset, or ask it to attest again, if it is still at the version read.
    A quarantine preempts the jobs waiting for it and, when its class names a playbook, starts
    remediation by itself."""
    require_scope(caller, "trust.transition")
    expected = _expected_version(if_match)
    scoped = tenant_to_read(caller, None)
    with session_scope() as session:
        trust_actions.visible_asset(session, asset_id, scoped)
    records = trust_actions.move_by_operator(
        asset_id,
        TrustState(body.to_state),
        reason=body.reason,
        actor=actor_of(caller),
        expected_version=expected,
    )
    with session_scope() as session:
        row = trust_actions.visible_asset(session, asset_id, scoped)
        moves = [m for m in trust.history(session, row.id) if m.id in {r.id for r in records}]
        _etag(row, response)
        return MovedBody(
            asset=AssetBody.model_validate(row),
            transitions=[TransitionBody.model_validate(m) for m in moves],
        )

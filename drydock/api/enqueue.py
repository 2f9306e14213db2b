"""``POST /v1/jobs/<task>``: one route per task of the catalog, each documenting its payload."""

from __future__ import annotations

from typing import Annotated, Any

from fastapi import Depends, FastAPI, HTTPException
from fastapi.responses import Response
from pydantic import ValidationError

from catalog import CATALOG, TaskSpec
from dispatch import enqueue as client
from drydock.api.auth import Caller
from drydock.api.bodies import EnqueuedJobBody, enqueued_body
from drydock.api.errors import ErrorBody
from drydock.api.inputs import (
    ApprovalHeader,
    IdempotencyKeyHeader,
    TargetAssetHeader,
    json_bytes,
    json_value,
    strictly,
)
from drydock.api.policy import AdmissionRefusedBody
from kernel.errors import PayloadInvalidError
from models import tokens

_ENQUEUE_RESPONSES: dict[int | str, dict[str, Any]] = {
    200: {"model": EnqueuedJobBody, "description": "Idempotency-Key already used."},
    403: {
        "model": AdmissionRefusedBody,
        "description": "Outside the token's scopes, another tenant, or refused by admission "
        "(with the decision and its gates; the scope refusals carry no decision).",
    },
    404: {"model": ErrorBody, "description": "The target asset does not exist."},
    409: {
        "model": ErrorBody,
        "description": "Idempotency-Key used with another payload, or the target is ambiguous.",
    },
    413: {"model": ErrorBody, "description": "Payload over DRYDOCK_MAX_PAYLOAD_BYTES."},
}


def install(app: FastAPI) -> None:
    """One route per task, in the order of their names."""
    for spec in sorted(CATALOG.values(), key=lambda s: s.name):
        _enqueue_route(app, spec)


def _enqueue_route(app: FastAPI, spec: TaskSpec) -> None:
    """POST /v1/jobs/<task>: one route per task, so each documents its own payload."""

    def enqueue_task(
        caller: Caller,
        response: Response,
        body: Annotated[bytes, Depends(json_bytes)],
        idempotency_key: IdempotencyKeyHeader = None,
        target_asset: TargetAssetHeader = None,
        approval_token: ApprovalHeader = None,
    ) -> EnqueuedJobBody:
        return _enqueue(spec, caller, response, body, idempotency_key, target_asset, approval_token)

    app.add_api_route(
        f"/v1/jobs/{spec.name}",
        enqueue_task,
        methods=["POST"],
        status_code=202,
        response_model=EnqueuedJobBody,
        responses=_ENQUEUE_RESPONSES,
        tags=["jobs"],
        summary=f"Enqueue {spec.name}",
        description=f"{spec.summary} 202 with the new job, or 200 with the existing one when "
        "the Idempotency-Key was already used with the same payload.",
        operation_id=f"enqueue_{spec.name.replace('.', '_')}",
    )


def _enqueue(
    spec: TaskSpec,
    caller: tokens.Caller,
    response: Response,
    body: bytes,
    idempotency_key: str | None,
    target_asset: str | None,
    approval_token: str | None,
) -> EnqueuedJobBody:
    task_name = spec.name
    if not caller.may_use(task_name):
        raise HTTPException(
            403,
            f"token {caller.name!r} may not enqueue {task_name} (scopes: "
            f"{', '.join(caller.scopes)})",
        )
    payload = json_value(body, missing={})
    try:
        strictly(spec.payload, payload)
    except ValidationError as exc:
        raise PayloadInvalidError.from_validation(task_name, exc) from None
    named = payload.get("tenant")
    if caller.tenant is not None and named is not None and named != caller.tenant:
        raise HTTPException(
            403, f"token {caller.name!r} acts for tenant {caller.tenant} only, not {named!r}"
        )
    job = client.enqueue(
        task_name,
        payload,
        idempotency_key,
        enqueued_by=f"api:{caller.name}",
        tenant=caller.tenant,
        target_asset=target_asset,
        approval_token=approval_token,
    )
    if not job.created:
        response.status_code = 200
    return enqueued_body(job, response)

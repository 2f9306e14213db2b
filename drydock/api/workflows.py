"""``/v1/workflows``: workflow definitions over HTTP (create a new version, list, show).

Tenancy, as for remediation playbooks: a token bound to a tenant sees and defines that tenant's
workflows only; another tenant's is 404, exactly as if it did not exist, and naming another
tenant is 403. An operator token (no tenant) reads across tenants and names the tenant
(``?tenant=``, or ``"tenant"`` beside the definition) when it creates one.

Permissions: creating needs the ``workflows.define`` scope, and every task a job step names must
be one the token may enqueue; reading needs ``workflows.read``.
"""

from __future__ import annotations

import uuid
from datetime import datetime
from typing import Annotated, Any

from fastapi import APIRouter, Depends, HTTPException, Query
from pydantic import BaseModel, Field, StringConstraints, TypeAdapter, ValidationError

from drydock.api.auth import Caller, actor_of, require_scope, tenant_to_read, tenant_to_write
from drydock.api.errors import ErrorBody, InputProblem
from drydock.api.inputs import MAX_VERSION, TenantName, TenantQuery, json_bytes, json_value
from tasks.workflows import store
from tasks.workflows.definitions import (
    NAME_PATTERN,
    WorkflowDefinition,
    WorkflowJobStep,
    parse_definition,
)

router = APIRouter(prefix="/v1/workflows", tags=["workflows"])

WorkflowName = Annotated[str, StringConstraints(pattern=f"^{NAME_PATTERN}$")]

_FORBIDDEN = (
    "The token lacks the scope (or one of a job step's tasks), acts for another tenant, or is "
    "an operator token that did not name the tenant."
)


class WorkflowCreateBody(WorkflowDefinition):
    """The body of POST /v1/workflows: a definition, and for an operator token its tenant."""

    tenant: TenantName | None = Field(
        None, description="Operator tokens: the tenant (or ?tenant=). Not part of the definition."
    )


_TENANT = TypeAdapter(TenantName)


class WorkflowBody(BaseModel):
    id: uuid.UUID
    tenant: str
    name: str
    version: int
    description: str
    steps: int = Field(description="How many steps it has.")
    kinds: list[str] = Field(description="The kinds of its steps: container, agent, job.")
    digest: str = Field(description="sha256 of the stored definition's canonical JSON.")
    created_at: datetime | None
    created_by: str | None


class WorkflowVersionBody(WorkflowBody):
    definition: dict[str, Any] = Field(description="The definition as stored, defaults filled.")
    order: list[str] = Field(description="Step names in an order that runs each after its needs.")


class WorkflowDetailBody(WorkflowVersionBody):
    versions: list[int]


@router.post(
    "",
    status_code=201,
    response_model=WorkflowVersionBody,
    responses={403: {"model": ErrorBody, "description": _FORBIDDEN}},
)
def create_workflow(
    caller: Caller,
    body: Annotated[bytes, Depends(json_bytes)],
    tenant: TenantQuery = None,
) -> dict[str, Any]:
    """Store a workflow definition as the next version of its name. It is validated whole
    first: 422 names every problem at its place (``steps.2.needs.0``), all at once. The body is
    a WorkflowDefinition; an operator token may name the tenant in it (``"tenant"``)."""
    require_scope(caller, "workflows.define")
    given = _body(body)
    named = given.pop("tenant", None)
    if named is not None:
        try:
            named = _TENANT.validate_python(named, strict=True)
        except ValidationError as exc:
            raise InputProblem.of_body(exc, under=["tenant"]) from None
        if tenant is not None and named != tenant:
            # A matter of whom the request acts for, as naming another tenant is: 403.
            raise HTTPException(403, f"the body names tenant {named}, the query {tenant}")
    tenant = tenant_to_write(caller, tenant or named)
    try:
        definition = parse_definition(given, tenant=tenant, strict=True)
    except ValidationError as exc:
        raise InputProblem.of_body(exc) from None
    for step in definition.steps:
        if isinstance(step, WorkflowJobStep) and not caller.may_use(step.task):
            raise HTTPException(
                403, f"token {caller.name!r} may not enqueue {step.task} (step {step.name})"
            )
    return store.create_definition(definition, tenant=tenant, actor=actor_of(caller))


def _body(body: bytes) -> dict[str, Any]:
    if not body:
        raise InputProblem.at(["body"], "a workflow definition is required", "missing")
    given = json_value(body, missing=None)
    if not isinstance(given, dict):
        raise InputProblem.at(["body"], "a workflow definition is an object", "dict_type")
    return given


@router.get(
    "",
    response_model=list[WorkflowBody],
    responses={403: {"model": ErrorBody, "description": _FORBIDDEN}},
)
def list_workflows(caller: Caller, tenant: TenantQuery = None) -> list[dict[str, Any]]:
    """The newest version of every workflow the token may see."""
    require_scope(caller, "workflows.read")
    return store.list_definitions(tenant_to_read(caller, tenant))


@router.get(
    "/{name}",
    response_model=WorkflowDetailBody,
    responses={403: {"model": ErrorBody, "description": _FORBIDDEN}, 404: {"model": ErrorBody}},
)
def show_workflow(
    name: WorkflowName,
    caller: Caller,
    tenant: TenantQuery = None,
    version: Annotated[int | None, Query(ge=1, le=MAX_VERSION)] = None,
) -> dict[str, Any]:
    """One workflow version (the newest unless ?version=) with its definition."""
    require_scope(caller, "workflows.read")
    return store.describe_definition(tenant_to_write(caller, tenant), name, version)


def publish(schema: dict[str, Any], components: dict[str, Any], ref_template: str) -> None:
    """State POST /v1/workflows's body in the OpenAPI document (drydock.api.openapi calls it):
    the route reads the body itself, so that every problem of a definition is named at once,
    and FastAPI cannot see its model."""
    body = WorkflowCreateBody.model_json_schema(ref_template=ref_template)
    for name, nested in body.pop("$defs", {}).items():
        components.setdefault(name, nested)
    components[WorkflowCreateBody.__name__] = body
    schema["paths"][router.prefix]["post"]["requestBody"] = {
        "required": True,
        "content": {
            "application/json": {
                "schema": {"$ref": ref_template.format(model=WorkflowCreateBody.__name__)}
            }
        },
    }

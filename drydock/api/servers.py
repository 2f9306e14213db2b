"""``/v1/servers``, ``/v1/instances`` and ``/v1/catalog``: MCP servers, their releases and
instances over HTTP.

Launching and stopping are jobs like any other: ``POST /v1/jobs/runtime.launch`` and
``POST /v1/jobs/runtime.stop`` (the enqueue routes, with admission). Tenancy as everywhere: a
tenant token sees and adds its own tenant's servers only (another's is 404); an operator token
names the tenant to add one and reads across tenants. Adding servers and releases needs the
``runtime.servers`` scope; reading needs ``runtime.read``.
"""

from __future__ import annotations

import uuid
from typing import Annotated, Any

from fastapi import APIRouter, Query
from pydantic import BaseModel, Field, StringConstraints

from catalog.runtime import (
    DIGEST_PATTERN,
    PROBE_PATH_PATTERN,
    REPOSITORY_PATTERN,
    SERVER_NAME_PATTERN,
    TIER_PATTERN,
)
from drydock.api.auth import Caller, actor_of, require_scope, tenant_to_read, tenant_to_write
from drydock.api.errors import ErrorBody, InputProblem, problem
from drydock.api.inputs import NUL_CLASS, JSONBody, TenantName, TenantQuery
from tasks.runtime import servers
from tasks.runtime.server_catalog import MAX_PAGE, Health, catalog_page
from tasks.runtime.servers import RuntimeInputError

router = APIRouter(tags=["runtime"])

ServerRef = Annotated[str, StringConstraints(min_length=1, max_length=200)]
_ERRORS: dict[int | str, dict[str, Any]] = {
    403: {"model": ErrorBody, "description": "The token lacks the scope, or another tenant."},
    404: {"model": ErrorBody, "description": "No such server or instance, or another tenant's."},
    409: {
        "model": ErrorBody,
        "description": "The server exists, or the digest is not in the artifact ledger.",
    },
}


class ServerCreateBody(JSONBody):
    name: str = Field(pattern=SERVER_NAME_PATTERN)
    repository: str = Field(
        max_length=400,
        pattern=REPOSITORY_PATTERN,
        description="host[:port]/path releases are pulled from.",
    )
    tenant: TenantName | None = Field(None, description="Operator tokens: the server's tenant.")
    probe_kind: str = Field("mcp", pattern="^(mcp|http)$")
    probe_path: str = Field("/mcp", pattern=PROBE_PATH_PATTERN)
    isolation: str = Field("container", pattern="^(container|vm)$")
    confidential: bool = False
    accelerator: str | None = Field(None, max_length=100)
    description: str = Field("", max_length=2000)


class ReleaseCreateBody(JSONBody):
    digest: str = Field(pattern=DIGEST_PATTERN)
    tier: str = Field(pattern=TIER_PATTERN)


class ServerBody(BaseModel):
    id: uuid.UUID
    tenant: str
    name: str
    repository: str
    probe: dict[str, str]
    isolation: str
    confidential: bool
    accelerator: str | None
    description: str
    created_at: str | None
    created_by: str | None


class ReleaseBody(BaseModel):
    id: uuid.UUID
    server_id: uuid.UUID
    digest: str
    tier: str
    platforms: list[str]
    created_at: str | None


class InstanceBody(BaseModel):
    id: uuid.UUID
    server_id: uuid.UUID
    release_id: uuid.UUID
    tenant: str
    state: str
    target: str | None
    backend: str | None
    endpoint: str | None
    reason: str
    decision_id: int | None = Field(description="The placement decision that placed or blocked it.")
    health: dict[str, Any] | None
    log_tail: str | None
    created_at: str | None
    updated_at: str | None


class InstanceMoveBody(BaseModel):
    seq: int
    from_state: str | None
    to_state: str
    cause: str
    detail: str
    actor: str
    job_id: str | None
    at: str | None


class InstanceDetailBody(InstanceBody):
    history: list[InstanceMoveBody]


class ServerDetailBody(ServerBody):
    releases: list[ReleaseBody]
    instances: list[InstanceBody]


def _input_problems(exc: RuntimeInputError) -> InputProblem:
    return InputProblem([problem(["body"], text) for text in exc.problems])


@router.post("/v1/servers", status_code=201, response_model=ServerBody, responses=_ERRORS)
def create_server(
    body: ServerCreateBody, caller: Caller, tenant: TenantQuery = None
) -> dict[str, Any]:
    """Add an MCP server (422 names every problem)."""
    require_scope(caller, "runtime.servers")
    owner = tenant_to_write(caller, tenant or body.tenant)
    try:
        return servers.add_server(
            tenant=owner,
            name=body.name,
            repository=body.repository,
            probe_kind=body.probe_kind,
            probe_path=body.probe_path,
            isolation=body.isolation,
            confidential=body.confidential,
            accelerator=body.accelerator,
            description=body.description,
            actor=actor_of(caller),
        )
    except RuntimeInputError as exc:
        raise _input_problems(exc) from None


@router.get("/v1/servers", response_model=list[ServerBody], responses=_ERRORS)
def list_servers(caller: Caller, tenant: TenantQuery = None) -> list[dict[str, Any]]:
    require_scope(caller, "runtime.read")
    return servers.list_servers(tenant=tenant_to_read(caller, tenant))


@router.get("/v1/servers/{server}", response_model=ServerDetailBody, responses=_ERRORS)
def show_server(server: ServerRef, caller: Caller, tenant: TenantQuery = None) -> dict[str, Any]:
    """A server (by id, or by name with its tenant) with its releases and newest instances."""
    require_scope(caller, "runtime.read")
    return servers.describe_server(server, tenant_to_read(caller, tenant))


@router.post(
    "/v1/servers/{server}/releases",
    status_code=201,
    response_model=ReleaseBody,
    responses=_ERRORS,
)
def create_release(
    server: ServerRef, body: ReleaseCreateBody, caller: Caller, tenant: TenantQuery = None
) -> dict[str, Any]:
    """Release a digest the artifact ledger built at a tier (its platforms from the ledger)."""
    require_scope(caller, "runtime.servers")
    try:
        return servers.add_release(
            tenant=tenant_to_read(caller, tenant),
            server=server,
            digest=body.digest,
            tier=body.tier,
            actor=actor_of(caller),
        )
    except RuntimeInputError as exc:
        raise _input_problems(exc) from None


class VmAssetBody(BaseModel):
    id: uuid.UUID
    name: str
    state: str
    class_: str | None = Field(alias="class")
    last_verified_at: str | None
    evidence_expires_at: str | None


class VmVerdictBody(BaseModel):
    id: int
    kind: str
    verified: bool
    summary: str
    judged_at: str | None
    answers_request: bool = Field(description="A quote of the nonce this instance sent.")


class VmBody(BaseModel):
    instance_id: uuid.UUID
    state: str
    reason: str
    target: str | None
    domain: str | None
    libvirt_uri: str | None
    evidence_nonce: str | None = Field(description="The nonce its agent must quote.")
    host: VmAssetBody | None
    vm: VmAssetBody | None
    last_verdict: VmVerdictBody | None


class VmPostureBody(BaseModel):
    server_id: uuid.UUID
    server: str
    vms: list[VmBody]


@router.get("/v1/servers/{server}/vm", response_model=VmPostureBody, responses=_ERRORS)
def show_vm_posture(
    server: ServerRef, caller: Caller, tenant: TenantQuery = None
) -> dict[str, Any]:
    """The server's VMs (newest first) and their attestation posture: the domain, the host's
    and the VM's trust state, the nonce asked for and the newest verdict."""
    from tasks.runtime.vm_posture import vm_posture

    require_scope(caller, "runtime.read")
    return vm_posture(server, tenant_to_read(caller, tenant))


@router.get("/v1/instances/{instance_id}", response_model=InstanceDetailBody, responses=_ERRORS)
def show_instance(instance_id: uuid.UUID, caller: Caller) -> dict[str, Any]:
    """An instance with its history, move by move."""
    require_scope(caller, "runtime.read")
    return servers.instance_detail(instance_id, tenant_to_read(caller, None))


# ---- the catalog ---------------------------------------------------------------------------


class CatalogCertificationBody(BaseModel):
    status: str
    expires_at: str | None
    evaluated_at: str | None


class CatalogInstanceBody(BaseModel):
    id: uuid.UUID
    state: str
    target: str | None
    health: dict[str, Any] | None
    host_trust: str | None = Field(description="The trust state of the host it runs on.")


class CatalogScoreBody(BaseModel):
    metric: str
    value: float
    flagged: bool


class CatalogTierBody(BaseModel):
    digest: str
    platforms: list[str]
    released_at: str | None
    certification: CatalogCertificationBody | None
    instance: CatalogInstanceBody | None = Field(description="The release's newest instance.")
    anomaly_scores: list[CatalogScoreBody]


class CatalogServerBody(BaseModel):
    id: uuid.UUID
    tenant: str
    name: str
    repository: str
    isolation: str
    confidential: bool
    health: Health
    tiers: dict[str, CatalogTierBody] = Field(description="Per tier, its newest release.")


class CatalogPageBody(BaseModel):
    items: list[CatalogServerBody]
    next_after: str | None = Field(description="Pass as `after` for the next page.")


@router.get("/v1/catalog", response_model=CatalogPageBody, responses=_ERRORS)
def catalog(
    caller: Caller,
    tenant: TenantQuery = None,
    tier: Annotated[str | None, Query(pattern=TIER_PATTERN)] = None,
    health: Health | None = None,
    after: Annotated[
        str | None,
        Query(max_length=301, pattern=f"^[^{NUL_CLASS}]+$", description="tenant/name"),
    ] = None,
    limit: Annotated[int, Query(ge=1, le=MAX_PAGE)] = 50,
) -> dict[str, Any]:
    """Servers with their release per tier, certification, instance health, host trust and
    anomaly scores, computed from the ledger and the instances (at most six queries a page)."""
    require_scope(caller, "runtime.read")
    return catalog_page(
        tenant=tenant_to_read(caller, tenant), tier=tier, health=health, after=after, limit=limit
    )

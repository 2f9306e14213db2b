"""``/v1/workflows/{name}/runs`` and ``/v1/workflows/runs``: starting, reading, cancelling and
resuming workflow runs over HTTP.

Tenancy as for the definitions: a tenant token starts and sees its own tenant's runs only
(another tenant's run is 404); an operator token names the tenant to start one and reads every
tenant's. Permissions: starting, cancelling and resuming need the ``workflows.start_run`` scope
(the task that starts a run); reading needs ``workflows.read``.

Included before the definitions' routes: ``/v1/workflows/runs`` is this module's, so ``runs``
is not a workflow name (definitions refuse it).
"""

from __future__ import annotations

import uuid
from typing import Annotated, Any

from fastapi import APIRouter, Query, Response
from pydantic import BaseModel, Field

from catalog.remediation import APPROVAL_TOKEN_PATTERN
from catalog.workflows import PROJECT_NAME_PATTERN
from drydock.api.auth import Caller, actor_of, require_scope, tenant_to_read, tenant_to_write
from drydock.api.errors import ErrorBody
from drydock.api.inputs import (
    MAX_PAGE,
    IdempotencyKeyHeader,
    JSONBody,
    ReasonText,
    TenantName,
    TenantQuery,
)
from drydock.api.workflows import WorkflowName
from models import workflow_runs
from models.db import session_scope
from tasks.workflows import run_operations

router = APIRouter(prefix="/v1/workflows", tags=["workflows"])

_FORBIDDEN = "The token lacks the scope, or acts for another tenant than the one named."


class RunRequestBody(JSONBody):
    version: int | None = Field(None, ge=1, le=2**31 - 1, description="Default: the newest.")
    reason: ReasonText = Field("", description="Why: kept with the run.")
    tenant: TenantName | None = Field(None, description="Operator tokens: the workflow's tenant.")
    project: str | None = Field(
        None,
        pattern=PROJECT_NAME_PATTERN,
        description=(
            "The tenant's project the run works on (needed by container and agent steps): "
            "each step gets a workspace cloned from its repository, and each step's commit is "
            "pushed to every remote of it."
        ),
    )
    revision: str | None = Field(
        None,
        min_length=1,
        max_length=255,
        description="Branch, tag or commit to start from; default branch.",
    )
    branch: str | None = Field(
        None,
        min_length=1,
        max_length=255,
        description="Branch to commit and push to; drydock/runs/<run id>.",
    )
    approval_token: str | None = Field(
        None,
        max_length=4096,
        pattern=APPROVAL_TOKEN_PATTERN,
        description="Approval for git.push:<project>/<remote>/<branch> on a protected branch.",
    )


class RunStartedBody(BaseModel):
    run_id: uuid.UUID = Field(description="Also the id of the job that starts it.")
    url: str


class StepBody(BaseModel):
    name: str
    kind: str
    needs: list[str]
    state: workflow_runs.StepState
    attempts: int
    failures: int
    job_id: uuid.UUID | None
    child_job_id: uuid.UUID | None
    commit: str | None = Field(description="The commit the step made; none: no change.")
    pushes: list[dict[str, Any]] | None = Field(description="Each remote's push of it.")
    runner: str | None = Field(description="The worker that ran it last.")
    heartbeat_at: str | None = Field(description="When that worker last said it was alive.")
    result: dict[str, Any] | None
    error: str | None
    started_at: str | None
    finished_at: str | None
    duration_ms: float | None


class RunBody(BaseModel):
    id: uuid.UUID
    tenant: str
    workflow: str
    version: int
    state: workflow_runs.RunState
    reason: str
    error: str | None
    cancel_requested: bool
    project: str | None
    revision: str | None
    branch: str | None
    base_commit: str | None
    head_commit: str | None
    signed: bool = Field(description="Whether the run's provenance is signed (when it ends).")
    created_at: str
    finished_at: str | None
    steps: list[StepBody]


class RunSummaryBody(BaseModel):
    id: uuid.UUID
    tenant: str
    workflow: str
    version: int
    state: workflow_runs.RunState
    created_at: str


class ResumedBody(BaseModel):
    run_id: uuid.UUID
    sent: list[str] = Field(description="The steps sent again.")


_RUN_ERRORS: dict[int | str, dict[str, Any]] = {
    403: {"model": ErrorBody, "description": _FORBIDDEN},
    404: {"model": ErrorBody, "description": "No such run, or one of another tenant."},
}


@router.get("/runs", response_model=list[RunSummaryBody], responses=_RUN_ERRORS)
def list_runs(
    caller: Caller,
    tenant: TenantQuery = None,
    limit: Annotated[int, Query(ge=1, le=MAX_PAGE)] = 50,
) -> list[RunSummaryBody]:
    """Runs, newest first."""
    require_scope(caller, "workflows.read")
    with session_scope() as session:
        rows = workflow_runs.list_runs(session, tenant_to_read(caller, tenant), limit)
        return [
            RunSummaryBody(
                id=row.id,
                tenant=row.tenant,
                workflow=row.workflow_name,
                version=row.workflow_version,
                state=workflow_runs.RunState(row.state),
                created_at=row.created_at.isoformat(),
            )
            for row in rows
        ]


@router.get("/runs/{run_id}", response_model=RunBody, responses=_RUN_ERRORS)
def show_run(run_id: uuid.UUID, caller: Caller) -> RunBody:
    """A run with every step: state, attempts, failures, result, timing, error."""
    require_scope(caller, "workflows.read")
    return RunBody.model_validate(run_operations.run_view(run_id, tenant_to_read(caller, None)))


class TimelineEventBody(BaseModel):
    id: int = Field(description="Pass the last one seen as ?after= to read on.")
    run_id: uuid.UUID
    type: str = Field(description="run.started, step.started, step.commit, step.push, ...")
    step: str | None
    runner: str | None
    at: str | None
    model_config = {"extra": "allow"}


@router.get(
    "/runs/{run_id}/timeline", response_model=list[TimelineEventBody], responses=_RUN_ERRORS
)
def run_timeline(
    run_id: uuid.UUID,
    caller: Caller,
    after: Annotated[int, Query(ge=0, le=2**63 - 1)] = 0,
) -> list[TimelineEventBody]:
    """The run's events after ``after``, oldest first (at most 1000): its start, each step's
    start, commit, pushes and outcome (with the runner and the policy context), its end."""
    require_scope(caller, "workflows.read")
    rows = run_operations.run_timeline(run_id, tenant_to_read(caller, None), after)
    return [TimelineEventBody.model_validate(row) for row in rows]


class ProvenanceBody(BaseModel):
    run_id: uuid.UUID
    state: workflow_runs.RunState
    envelope: dict[str, Any] | None = Field(
        description="The run's in-toto Statement as a DSSE envelope; none until the run ends."
    )
    steps: dict[str, dict[str, Any]] = Field(description="Each step's provenance log, by name.")
    public_key: str = Field(description="The fleet's Ed25519 public key (PEM) to verify with.")
    verification: dict[str, Any] | None = Field(
        None, description="With ?verify=true: ok, the key id and every problem found."
    )


@router.get("/runs/{run_id}/provenance", response_model=ProvenanceBody, responses=_RUN_ERRORS)
def run_provenance(
    run_id: uuid.UUID, caller: Caller, verify: Annotated[bool, Query()] = False
) -> ProvenanceBody:
    """The run's signed provenance and its steps' logs (and, asked, whether they verify)."""
    from tasks.workflows.run_provenance import run_provenance as read_provenance
    from tasks.workflows.run_provenance import verify_run

    require_scope(caller, "workflows.read")
    provenance = read_provenance(run_id, tenant_to_read(caller, None))
    body = ProvenanceBody.model_validate(provenance.as_dict())
    if verify:
        body.verification = verify_run(provenance).as_dict()
    return body


@router.post("/runs/{run_id}/cancel", response_model=RunBody, responses=_RUN_ERRORS)
def cancel_run(run_id: uuid.UUID, caller: Caller) -> RunBody:
    """Stop the run: steps not started never start; a running step stops within a second."""
    require_scope(caller, "workflows.start_run")
    scoped = tenant_to_read(caller, None)
    run_operations.cancel_run(run_id, tenant=scoped, actor=actor_of(caller))
    return RunBody.model_validate(run_operations.run_view(run_id, scoped))


@router.post("/runs/{run_id}/retry", response_model=ResumedBody, responses=_RUN_ERRORS)
def retry_run(run_id: uuid.UUID, caller: Caller) -> ResumedBody:
    """Resume a failed or cancelled run from its failed steps; succeeded steps are kept."""
    require_scope(caller, "workflows.start_run")
    sent = run_operations.retry_run(
        run_id, tenant=tenant_to_read(caller, None), actor=actor_of(caller)
    )
    return ResumedBody(run_id=run_id, sent=sent)


@router.post(
    "/{name}/runs",
    status_code=202,
    response_model=RunStartedBody,
    responses={
        **_RUN_ERRORS,
        404: {"model": ErrorBody, "description": "No such workflow, or no such project."},
        409: {
            "model": ErrorBody,
            "description": (
                "The run cannot start as asked: steps this fleet cannot run, a workspace step "
                "without a project, a revision or branch git cannot name."
            ),
        },
    },
)
def start_run(
    name: WorkflowName,
    caller: Caller,
    response: Response,
    body: RunRequestBody | None = None,
    tenant: TenantQuery = None,
    idempotency_key: IdempotencyKeyHeader = None,
) -> RunStartedBody:
    """Start a run of the workflow (202: it runs on the workflows queue). A workflow with
    steps this fleet cannot run yet is refused (409), naming them."""
    require_scope(caller, "workflows.start_run")
    request = body or RunRequestBody()
    acting = tenant_to_write(caller, tenant or request.tenant)
    run_id = run_operations.request_run(
        tenant=acting,
        workflow=name,
        version=request.version,
        reason=request.reason,
        requested_by=actor_of(caller),
        idempotency_key=idempotency_key,
        project=request.project,
        revision=request.revision,
        branch=request.branch,
        approval_token=request.approval_token,
    )
    url = f"/v1/workflows/runs/{run_id}"
    response.headers["Location"] = url
    return RunStartedBody(run_id=run_id, url=url)

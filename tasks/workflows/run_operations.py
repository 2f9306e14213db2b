"""What operators and producers do to workflow runs: request one, look at one, cancel one,
retry one. The engine that runs them is ``runs``."""

from __future__ import annotations

import uuid
from datetime import UTC, datetime
from typing import Any

from adapters.git_inputs import check_revision
from dispatch.enqueue import enqueue
from kernel.errors import DrydockError
from models import projects as project_store
from models import workflow_events as events
from models import workflow_runs as store
from models import workflows as definitions_store
from models.db import session_scope
from models.workflow_runs import FINISHED_RUN_STATES, RunState, StepState
from policy.pushes import is_protected
from tasks.workflows.definitions import WorkflowDefinition
from tasks.workflows.run_project import PreflightFailedError, check_project_remotes
from tasks.workflows.runs import advance, check_runnable


def request_run(
    *,
    tenant: str,
    workflow: str,
    version: int | None,
    reason: str,
    requested_by: str,
    idempotency_key: str | None = None,
    project: str | None = None,
    revision: str | None = None,
    branch: str | None = None,
    approval_token: str | None = None,
) -> uuid.UUID:
    """Check at the edge that the workflow exists and can run here (on the tenant's
    ``project``, when it names one), then enqueue its start (``workflows.start_run``, acting
    for the tenant). Returns the run's id (its job's)."""
    for value in (revision, branch):
        if value is not None:
            check_revision(value)
    with session_scope() as session:
        row = definitions_store.get_definition(session, tenant, workflow, version)
        check_runnable(WorkflowDefinition.model_validate(row.definition), project)
        if project is not None:
            project_store.get_project(session, tenant, project)
        version = row.version
    payload: dict[str, Any] = {
        "tenant": tenant,
        "workflow": workflow,
        "version": version,
        "reason": reason,
    }
    for key, value in (
        ("project", project),
        ("revision", revision),
        ("branch", branch),
        ("approval_token", approval_token),
    ):
        if value is not None:
            payload[key] = value
    job = enqueue(
        "workflows.start_run", payload, idempotency_key, enqueued_by=requested_by, tenant=tenant
    )
    return job.id


def cancel_run(run_id: uuid.UUID, *, tenant: str | None, actor: str) -> str:
    """Ask the run to stop: steps not started never start, a running step stops within a poll
    (its container killed). Returns the run's state."""
    with session_scope() as session:
        run = store.locked_run(session, run_id, tenant)
        if run.state in FINISHED_RUN_STATES:
            raise DrydockError(f"workflow run {run_id} is {run.state}: nothing to cancel")
        if run.cancel_requested_at is None:
            run.cancel_requested_at = datetime.now(UTC)
            run.cancelled_by = actor
    advance(run_id)
    with session_scope() as session:
        return store.get_run(session, run_id).state


def retry_run(run_id: uuid.UUID, *, tenant: str | None, actor: str) -> list[str]:
    """Resume a failed or cancelled run from the steps that did not succeed (their retries
    afresh); the steps that succeeded are kept, never run again. A run that failed before its
    first step because a remote or the revision did not answer is checked again first. Returns
    the steps sent."""
    with session_scope() as session:
        run = store.get_run(session, run_id, tenant)
        if run.state not in (RunState.FAILED, RunState.CANCELLED):
            raise DrydockError(
                f"workflow run {run_id} is {run.state}: only a failed or cancelled run resumes"
            )
        base_commit, revision = run.base_commit, run.revision
        if run.project is not None and base_commit is None:
            project = project_store.get_project(session, run.tenant, run.project)
            try:
                checked = check_project_remotes(project, run.revision)
            except PreflightFailedError as exc:
                raise DrydockError(f"workflow run {run_id} still cannot start: {exc}") from None
            base_commit, revision = checked.base_commit, checked.revision
        if run.project is not None and run.branch is not None and run.push_decision_id is None:
            project = project_store.get_project(session, run.tenant, run.project)
            if any(is_protected(remote, run.branch) for remote in project.remotes):
                raise DrydockError(
                    f"workflow run {run_id} pushes to protected branch {run.branch} without an "
                    "approval: start a new run with an approval token (--approval-token)"
                )
    with session_scope() as session:
        run = store.locked_run(session, run_id, tenant)
        if run.state not in (RunState.FAILED, RunState.CANCELLED):
            raise DrydockError(f"workflow run {run_id} is {run.state}: it was resumed meanwhile")
        if run.base_commit is None and base_commit is not None:
            run.base_commit = run.head_commit = base_commit
            run.revision = revision
        for step in store.steps_of(session, run_id):
            if step.state in (StepState.FAILED, StepState.CANCELLED):
                step.state = StepState.PENDING.value
                step.failures = 0
                step.error = None
                step.job_id = None
                step.finished_at = None
                step.provenance = None
        run.state = RunState.RUNNING.value
        run.error = None
        run.finished_at = None
        run.cancel_requested_at = None
        run.provenance = None
        run.reason = f"{run.reason} (resumed by {actor})".strip()[:2000]
    return advance(run_id)


def run_view(run_id: uuid.UUID, tenant: str | None = None) -> dict[str, Any]:
    """A run and its steps, as the CLI and the API show them."""
    with session_scope() as session:
        run = store.get_run(session, run_id, tenant)
        return {
            "id": str(run.id),
            "tenant": run.tenant,
            "workflow": run.workflow_name,
            "version": run.workflow_version,
            "state": run.state,
            "reason": run.reason,
            "error": run.error,
            "cancel_requested": run.cancel_requested_at is not None,
            "project": run.project,
            "revision": run.revision,
            "branch": run.branch,
            "base_commit": run.base_commit,
            "head_commit": run.head_commit,
            "signed": run.provenance is not None,
            "created_at": run.created_at.isoformat(),
            "finished_at": run.finished_at.isoformat() if run.finished_at else None,
            "steps": [
                {
                    "name": step.name,
                    "kind": step.kind,
                    "needs": step.needs,
                    "state": step.state,
                    "attempts": step.attempts,
                    "failures": step.failures,
                    "job_id": str(step.job_id) if step.job_id else None,
                    "child_job_id": str(step.child_job_id) if step.child_job_id else None,
                    "commit": step.commit_sha,
                    "pushes": step.pushes,
                    "runner": step.runner,
                    "heartbeat_at": step.heartbeat_at.isoformat() if step.heartbeat_at else None,
                    "result": step.result,
                    "error": step.error,
                    "started_at": step.started_at.isoformat() if step.started_at else None,
                    "finished_at": step.finished_at.isoformat() if step.finished_at else None,
                    "duration_ms": step.duration_ms,
                }
                for step in store.steps_of(session, run_id)
            ],
        }


def run_timeline(
    run_id: uuid.UUID, tenant: str | None = None, after: int = 0
) -> list[dict[str, Any]]:
    """The run's events after event ``after``, oldest first: started, each step's start,
    commit, pushes and outcome (with its runner and policy context), the run's end."""
    with session_scope() as session:
        store.get_run(session, run_id, tenant)
        return [events.event_json(row) for row in events.events_of(session, run_id, after)]

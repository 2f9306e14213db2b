"""Running a workflow: a run's steps as rows, each step a job of its own, the next ones sent as
the ones they need finish.

Durability comes from the rows and from each step being its own late-acknowledged job:

- ``start_run`` writes the run and its steps (the run's id is the start job's, so a redelivered
  start finds its run) and then *advances* it. A run on a project is checked first
  (``run_project``): every remote reachable, the revision a commit, a protected branch
  approved; one that fails the check is written failed, before any step, and not
  dead-lettered (nothing about the job was wrong).
- ``advance`` is the one place that decides what a run does next, under the run's row lock:
  it sends every step whose needs have all succeeded (marked ``queued``, sent with an
  idempotency key, so two advances or a crash between marking and sending never send a step
  twice), finishes the run when every step is done, fails it when a step failed (the steps
  not yet started are cancelled; those running finish first), and carries out a cancel. The
  advance that finishes a run seals its provenance (``run_provenance``).
- ``run_step`` executes one step. A step that finished is never run again: its job, delivered
  again, only advances the run. A worker killed mid-step hands the message back
  (``reject_on_worker_lost``) and another worker runs the step again, from its start; a job
  step finds the child job it had already sent, a container step finds the commit it had
  already pushed (``workspace_steps``), and neither is made twice.
- A failed attempt is retried with the fleet's jittered backoff while the step's ``retries``
  last (unless it is ``final``: trying again cannot help); then the step fails, the run fails,
  and the step's job is dead-lettered with the run and step in its payload.
  ``run_operations.retry_run`` puts failed and cancelled steps back to pending.

Step kinds: ``job`` (``job_step``), ``container`` (``workspace_steps``: a workspace of the
run's project, a commit and pushes after the step).
"""

from __future__ import annotations

import time
import uuid
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

from catalog.workflows import MAX_STEP_DELIVERIES, RunStepPayload, StartRunPayload
from dispatch.enqueue import enqueue
from kernel.context import JobContext
from kernel.errors import DrydockError
from kernel.settings import get_settings
from models import job_reads
from models import projects as project_store
from models import workflow_events as events
from models import workflow_runs as store
from models import workflows as definitions_store
from models.db import session_scope
from models.workflow_runs import (
    FINISHED_RUN_STATES,
    FINISHED_STEP_STATES,
    RunState,
    StepState,
    WorkflowRun,
    WorkflowStep,
)
from tasks.workflows.definitions import WorkflowDefinition
from tasks.workflows.job_step import run_job_step
from tasks.workflows.run_project import (
    WORKSPACE_KINDS,
    PreflightChecked,
    PreflightFailedError,
    RunProject,
    check_project_remotes,
    decide_pushes,
    run_branch,
    run_project,
)
from tasks.workflows.run_provenance import seal_run
from tasks.workflows.step_errors import StepAttemptFailedError, StepFailedError, StepStoppedError
from tasks.workflows.workspace_steps import WorkspaceStepResult, run_workspace_step

# Kinds a run can execute so far (see the module's doc).
RUNNABLE_KINDS = frozenset({"job", "container", "agent"})


class NotRunnableError(DrydockError):
    """The workflow has steps this fleet cannot run yet, or needs a project it was not given."""


def runnable_problems(definition: WorkflowDefinition, project: str | None) -> list[str]:
    """Why a run of ``definition`` (on ``project``) cannot start here (empty: it can)."""
    problems = [
        f"step {step.name} is a {step.kind} step: this fleet runs "
        f"{', '.join(sorted(RUNNABLE_KINDS))} steps so far"
        for step in definition.steps
        if step.kind not in RUNNABLE_KINDS
    ]
    if project is None:
        problems += [
            f"step {step.name} is a {step.kind} step: it works on a project's code, so the run "
            "needs a project (--project)"
            for step in definition.steps
            if step.kind in WORKSPACE_KINDS and step.kind in RUNNABLE_KINDS
        ]
    return problems


def check_runnable(definition: WorkflowDefinition, project: str | None) -> None:
    problems = runnable_problems(definition, project)
    if problems:
        raise NotRunnableError(f"workflow {definition.name} cannot run: {'; '.join(problems)}")


def _now() -> datetime:
    return datetime.now(UTC)


# ---- starting ------------------------------------------------------------------------------


def start_run(payload: StartRunPayload, ctx: JobContext) -> dict[str, Any]:
    run_id = ctx.job_id
    checked: PreflightChecked | None = None
    problem: str | None = None
    with session_scope() as session:
        exists = session.get(WorkflowRun, run_id) is not None
        if not exists:
            version = definitions_store.get_definition(
                session, payload.tenant, payload.workflow, payload.version
            )
            check_runnable(WorkflowDefinition.model_validate(version.definition), payload.project)
            if payload.project is not None:
                project = project_store.get_project(session, payload.tenant, payload.project)
                # Network, bounded by the remote-check timeout; the transaction holds no lock.
                try:
                    checked = check_project_remotes(project, payload.revision)
                except PreflightFailedError as exc:
                    problem = str(exc)
    if not exists:
        problem = _write_run(payload, run_id, checked, problem)
    if problem is not None:
        ctx.progress(None, f"run {run_id} failed before its first step: {problem}")
    sent = advance(run_id)
    ctx.progress(None, f"run {run_id} started", sent=sent)
    return {"run_id": str(run_id), "sent": sent, "error": problem}


def _write_run(
    payload: StartRunPayload,
    run_id: uuid.UUID,
    checked: PreflightChecked | None,
    problem: str | None,
) -> str | None:
    """Insert the run and its steps (failed, its steps cancelled, when ``problem``); for a run
    on a project, its push decision in the same transaction. Returns the run's problem."""
    with session_scope() as session:
        if session.get(WorkflowRun, run_id) is not None:
            return None
        version = definitions_store.get_definition(
            session, payload.tenant, payload.workflow, payload.version
        )
        definition = WorkflowDefinition.model_validate(version.definition)
        branch = run_branch(run_id, payload.branch) if payload.project else None
        run = WorkflowRun(
            id=run_id,
            tenant=payload.tenant,
            workflow_id=version.id,
            workflow_name=version.name,
            workflow_version=version.version,
            state=RunState.RUNNING.value,
            reason=payload.reason,
            requested_by=f"job:{run_id}",
            project=payload.project,
            revision=checked.revision if checked else payload.revision,
            branch=branch,
            base_commit=checked.base_commit if checked else None,
            head_commit=checked.base_commit if checked else None,
        )
        if payload.project is not None and problem is None and branch is not None:
            project = project_store.get_project(session, payload.tenant, payload.project)
            decision = decide_pushes(
                session, project, branch, payload.approval_token, f"job:{run_id}"
            )
            if decision.allowed:
                run.push_decision_id = decision.decision_id
            else:
                problem = decision.reason
        if problem is not None:
            run.state = RunState.FAILED.value
            run.error = f"the run failed before its first step: {problem}"[:4000]
            run.finished_at = _now()
        session.add(run)
        session.flush()
        events.record(
            session,
            run_id,
            payload.tenant,
            "run.failed" if problem else "run.started",
            workflow=version.name,
            version=version.version,
            project=payload.project,
            branch=branch,
            base_commit=run.base_commit,
            push_decision_id=run.push_decision_id,
            error=run.error,
        )
        for step in definition.steps:
            session.add(
                WorkflowStep(
                    run_id=run_id,
                    name=step.name,
                    kind=step.kind,
                    needs=list(step.needs),
                    spec=step.model_dump(mode="json"),
                    state=(StepState.CANCELLED if problem else StepState.PENDING).value,
                    error="the run failed before its first step" if problem else None,
                    attempts=0,
                    failures=0,
                )
            )
        return problem


# ---- deciding what comes next --------------------------------------------------------------


@dataclass(frozen=True)
class _ToSend:
    name: str
    job_id: uuid.UUID
    deliveries: int


def advance(run_id: uuid.UUID) -> list[str]:
    """Decide, under the run's lock, what the run does next; send the steps it unblocked.
    Returns their names. Safe to call any number of times, from anywhere."""
    to_send: list[_ToSend] = []
    spare_deliveries = get_settings().retry_max_attempts
    with session_scope() as session:
        run = store.locked_run(session, run_id)
        if run.state in FINISHED_RUN_STATES:
            return []
        steps = store.steps_of(session, run_id)
        state = {step.name: step.state for step in steps}
        active = [s for s in steps if s.state in (StepState.QUEUED, StepState.RUNNING)]
        failed = [s for s in steps if s.state == StepState.FAILED]
        if run.cancel_requested_at is not None or failed:
            why = "the run was cancelled" if not failed else f"step {failed[0].name} failed"
            for step in steps:
                if step.state == StepState.PENDING:
                    step.state = StepState.CANCELLED.value
                    step.error = why
            if not active:
                run.state = (RunState.FAILED if failed else RunState.CANCELLED).value
                run.error = f"step {failed[0].name} failed: {failed[0].error}" if failed else None
                run.finished_at = _now()
                seal_run(session, run, steps)
                events.record(session, run_id, run.tenant, f"run.{run.state}", error=run.error)
            return []
        if all(s.state == StepState.SUCCEEDED for s in steps):
            run.state = RunState.SUCCEEDED.value
            run.finished_at = _now()
            seal_run(session, run, steps)
            events.record(session, run_id, run.tenant, "run.succeeded", head_commit=run.head_commit)
            return []
        for step in steps:
            ready = step.state == StepState.PENDING and all(
                state.get(need) == StepState.SUCCEEDED for need in step.needs
            )
            # Marked queued by an advance that died before it sent the step: send it again.
            unsent = (
                step.state == StepState.QUEUED
                and step.job_id is not None
                and job_reads.get_job(session, step.job_id) is None
            )
            if ready:
                # The job's id is chosen here, with the mark: sending it twice sends it once.
                step.state = StepState.QUEUED.value
                step.job_id = uuid.uuid4()
            if (ready or unsent) and step.job_id is not None:
                retries = int(step.spec.get("retries", 0))
                deliveries = min(retries + 1 + spare_deliveries, MAX_STEP_DELIVERIES)
                to_send.append(_ToSend(step.name, step.job_id, deliveries))
    for item in to_send:
        enqueue(
            "workflows.run_step",
            {"run_id": str(run_id), "step": item.name, "deliveries": item.deliveries},
            enqueued_by=f"workflow:{run_id}",
            job_id=item.job_id,
        )
    return [item.name for item in to_send]


# ---- running a step ------------------------------------------------------------------------


def run_step(payload: RunStepPayload, ctx: JobContext) -> dict[str, Any]:
    run_id, name = payload.run_id, payload.step
    with session_scope() as session:
        run = store.get_run(session, run_id)
        step = store.locked_step(session, run_id, name)
        stopping = store.stop_reason(session, run)
        if step.state in FINISHED_STEP_STATES:
            done: str | None = step.state
        elif stopping is not None:
            step.state = StepState.CANCELLED.value
            step.error = stopping
            step.finished_at = _now()
            done = step.state
        else:
            done = None
            step.state = StepState.RUNNING.value
            step.attempts += 1
            step.job_id = ctx.job_id
            step.runner = ctx.who.hostname[:200]
            step.started_at = step.started_at or _now()
            events.record(
                session,
                run_id,
                run.tenant,
                "step.started",
                step=name,
                runner=step.runner,
                attempt=step.attempts,
            )
        tenant, spec, failures, attempts = run.tenant, dict(step.spec), step.failures, step.attempts
        project = run_project(session, run) if step.kind in WORKSPACE_KINDS else None
    if done is not None:
        # Never run again: a redelivered or repeated job only moves the run on.
        advance(run_id)
        return {"run_id": str(run_id), "step": name, "state": done, "ran": False}

    started = time.monotonic()
    try:
        if spec.get("kind") == "job":
            result = run_job_step(run_id, name, tenant, spec, failures, ctx)
            workspace = None
        else:
            workspace = _run_on_workspace(project, name, spec, attempts, ctx)
            result = workspace.result
    except StepStoppedError as stopped:
        _finish(run_id, name, StepState.CANCELLED, error=str(stopped), started=started)
        advance(run_id)
        return {"run_id": str(run_id), "step": name, "state": "cancelled", "ran": True}
    except StepAttemptFailedError as exc:
        retries = 0 if exc.final else int(spec.get("retries", 0))
        if _count_failure(run_id, name, str(exc), started, retries):
            advance(run_id)
            raise StepFailedError(
                f"workflow run {run_id} step {name} failed"
                f"{'' if exc.final else ' with its retries spent'}: {exc}"
            ) from exc
        raise
    _finish(run_id, name, StepState.SUCCEEDED, result=result, started=started, done=workspace)
    sent = advance(run_id)
    return {"run_id": str(run_id), "step": name, "state": "succeeded", "ran": True, "sent": sent}


def _run_on_workspace(
    project: RunProject | None, name: str, spec: dict[str, Any], attempts: int, ctx: JobContext
) -> WorkspaceStepResult:
    if project is None:
        raise StepAttemptFailedError(
            f"step {name} is a {spec.get('kind')} step and its run is on no project", final=True
        )
    if not project.remotes:
        raise StepAttemptFailedError(f"project {project.project} has no remote", final=True)
    return run_workspace_step(project, name, spec, attempts=attempts, ctx=ctx)


def _finish(
    run_id: uuid.UUID,
    name: str,
    state: StepState,
    *,
    started: float,
    result: dict[str, Any] | None = None,
    error: str | None = None,
    done: WorkspaceStepResult | None = None,
) -> None:
    with session_scope() as session:
        step = store.locked_step(session, run_id, name)
        step.state = state.value
        step.result = result
        step.error = error
        step.finished_at = _now()
        step.duration_ms = round((time.monotonic() - started) * 1000, 3)
        if done is not None:
            step.commit_sha = done.commit_sha
            step.pushes = done.pushes
            step.provenance = done.provenance
        _audit(session, step, f"step.{state.value}", error=error)


def _audit(session: Any, step: WorkflowStep, type_: str, **data: Any) -> None:
    """The step's audit row: who ran it, under which policy, with what outcome."""
    run = store.get_run(session, step.run_id)
    events.record(
        session,
        step.run_id,
        run.tenant,
        type_,
        step=step.name,
        runner=step.runner,
        attempts=step.attempts,
        failures=step.failures,
        commit=step.commit_sha,
        duration_ms=step.duration_ms,
        policy={
            "tenant": run.tenant,
            "project": run.project,
            "branch": run.branch,
            "push_decision_id": run.push_decision_id,
            "requested_by": run.requested_by,
        },
        **data,
    )


def _count_failure(run_id: uuid.UUID, name: str, error: str, started: float, retries: int) -> bool:
    """Record a failed attempt; True when it spent the step's retries (the step failed)."""
    with session_scope() as session:
        step = store.locked_step(session, run_id, name)
        step.failures += 1
        step.error = error[:4000]
        spent = step.failures > retries
        if spent:
            step.state = StepState.FAILED.value
            step.finished_at = _now()
            step.duration_ms = round((time.monotonic() - started) * 1000, 3)
        _audit(session, step, "step.failed" if spent else "step.attempt_failed", error=error)
        return spent


def step_job_lost(error: BaseException, ctx: JobContext, reason: str) -> None:
    """A step's job was dead-lettered for a reason of the fleet's (its worker lost too often,
    its time limit, a payload that no longer reads): the step fails with it, and the run."""
    with session_scope() as session:
        step = store.step_of_job(session, ctx.job_id)
        if step is None or step.state in FINISHED_STEP_STATES:
            return
        step.state = StepState.FAILED.value
        step.error = f"{reason}: {error}"[:4000]
        step.finished_at = _now()
        run_id = step.run_id
        _audit(session, step, "step.failed", error=step.error)
    advance(run_id)


# ---- upkeep ---------------------------------------------------------------------------------


def sweep_runs(limit: int) -> dict[str, Any]:
    """Move on every running run that nothing is moving (Beat's ``workflow-sweep``): a step
    whose job ended without the run hearing of it fails with that job's error; then the run
    advances, which sends a step marked queued whose job was never sent, and the steps (or the
    outcome) the finished ones call for."""
    with session_scope() as session:
        due = store.runs_not_in_flight(session, limit)
    lost = 0
    for run_id in due:
        with session_scope() as session:
            for step in store.running_steps_whose_job_ended(session, run_id):
                job = job_reads.get_job(session, step.job_id) if step.job_id else None
                step.state = StepState.FAILED.value
                step.error = f"its job ended without finishing the step: {job.error if job else ''}"
                step.finished_at = _now()
                _audit(session, step, "step.failed", error=step.error)
                lost += 1
        advance(run_id)
    return {"runs": len(due), "steps_lost": lost}

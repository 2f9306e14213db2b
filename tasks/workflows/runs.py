"""Running a workflow: a run's steps as rows, each step a job of its own, the next ones sent as
the ones they need finish.

Durability comes from the rows and from each step being its own late-acknowledged job:

- ``start_run`` writes the run and its steps (the run's id is the start job's, so a redelivered
  start finds its run) and then *advances* it.
- ``advance`` is the one place that decides what a run does next, under the run's row lock:
  it sends every step whose needs have all succeeded (marked ``queued``, sent with an
  idempotency key, so two advances or a crash between marking and sending never send a step
  twice), finishes the run when every step is done, fails it when a step failed (the steps
  not yet started are cancelled; those running finish first), and carries out a cancel.
- ``run_step`` executes one step. A step that finished is never run again: its job, delivered
  again, only advances the run. A worker killed mid-step hands the message back
  (``reject_on_worker_lost``) and another worker runs the step again, from its start; a job
  step finds the child job it had already sent (its idempotency key) and waits on it instead
  of sending another.
- A failed attempt is retried with the fleet's jittered backoff while the step's ``retries``
  last; then the step fails, the run fails, and the step's job is dead-lettered with the run
  and step in its payload. ``retry_run`` puts failed and cancelled steps back to pending.

Step kinds: ``job`` runs a Drydock task as a child job (acting for the run's tenant, so it is
admitted like any of the tenant's jobs) and waits for its outcome. ``container`` and ``agent``
steps need a workspace checked out from a project's repository; until a run has one, a
workflow with such steps is refused when it is started, naming them.
"""

from __future__ import annotations

import time
import uuid
from collections.abc import Callable
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

from catalog.workflows import MAX_STEP_DELIVERIES, RunStepPayload, StartRunPayload
from dispatch.enqueue import enqueue
from kernel.context import JobContext
from kernel.errors import DrydockError, TransientError
from kernel.settings import get_settings
from models import job_reads
from models import workflow_runs as store
from models import workflows as definitions_store
from models.db import session_scope
from models.jobs import JobStatus
from models.workflow_runs import (
    FINISHED_RUN_STATES,
    FINISHED_STEP_STATES,
    RunState,
    StepState,
    WorkflowRun,
    WorkflowStep,
)
from policy.admission import AdmissionRefusedError
from tasks.workflows.definitions import WorkflowDefinition

# Kinds a run can execute so far (see the module's doc).
RUNNABLE_KINDS = frozenset({"job"})
# How often a job step looks at its child job and at the run's cancel flag.
POLL_SECONDS = 0.5
PROGRESS_EVERY_SECONDS = 5.0


class NotRunnableError(DrydockError):
    """The workflow has steps this fleet cannot run yet."""


class StepAttemptFailedError(TransientError):
    """One attempt of a step failed and its retries are not spent: it is tried again."""


class StepFailedError(DrydockError):
    """A step failed with its retries spent: the run fails; the step's job is dead-lettered."""


class _StepStoppedError(Exception):
    """The run is stopping (cancelled, or another step failed): this step stops too."""


def runnable_problems(definition: WorkflowDefinition) -> list[str]:
    """Why a run of ``definition`` cannot start here (empty: it can)."""
    return [
        f"step {step.name} is a {step.kind} step: this fleet runs "
        f"{', '.join(sorted(RUNNABLE_KINDS))} steps so far"
        for step in definition.steps
        if step.kind not in RUNNABLE_KINDS
    ]


def check_runnable(definition: WorkflowDefinition) -> None:
    problems = runnable_problems(definition)
    if problems:
        raise NotRunnableError(f"workflow {definition.name} cannot run: {'; '.join(problems)}")


def _now() -> datetime:
    return datetime.now(UTC)


# ---- starting ------------------------------------------------------------------------------


def start_run(payload: StartRunPayload, ctx: JobContext) -> dict[str, Any]:
    run_id = ctx.job_id
    with session_scope() as session:
        if session.get(WorkflowRun, run_id) is None:
            version = definitions_store.get_definition(
                session, payload.tenant, payload.workflow, payload.version
            )
            definition = WorkflowDefinition.model_validate(version.definition)
            check_runnable(definition)
            session.add(
                WorkflowRun(
                    id=run_id,
                    tenant=payload.tenant,
                    workflow_id=version.id,
                    workflow_name=version.name,
                    workflow_version=version.version,
                    state=RunState.RUNNING.value,
                    reason=payload.reason,
                    requested_by=f"job:{run_id}",
                )
            )
            session.flush()
            for step in definition.steps:
                session.add(
                    WorkflowStep(
                        run_id=run_id,
                        name=step.name,
                        kind=step.kind,
                        needs=list(step.needs),
                        spec=step.model_dump(mode="json"),
                        state=StepState.PENDING.value,
                        attempts=0,
                        failures=0,
                    )
                )
    sent = advance(run_id)
    ctx.progress(None, f"run {run_id} started", sent=sent)
    return {"run_id": str(run_id), "sent": sent}


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
            return []
        if all(s.state == StepState.SUCCEEDED for s in steps):
            run.state = RunState.SUCCEEDED.value
            run.finished_at = _now()
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
            step.started_at = step.started_at or _now()
        tenant, spec, failures = run.tenant, dict(step.spec), step.failures
    if done is not None:
        # Never run again: a redelivered or repeated job only moves the run on.
        advance(run_id)
        return {"run_id": str(run_id), "step": name, "state": done, "ran": False}

    started = time.monotonic()
    try:
        result = _execute(run_id, name, tenant, spec, failures, ctx)
    except _StepStoppedError as stopped:
        _finish(run_id, name, StepState.CANCELLED, error=str(stopped), started=started)
        advance(run_id)
        return {"run_id": str(run_id), "step": name, "state": "cancelled", "ran": True}
    except StepAttemptFailedError as exc:
        if _count_failure(run_id, name, str(exc), started, int(spec.get("retries", 0))):
            advance(run_id)
            raise StepFailedError(
                f"workflow run {run_id} step {name} failed with its retries spent: {exc}"
            ) from exc
        raise
    _finish(run_id, name, StepState.SUCCEEDED, result=result, started=started)
    sent = advance(run_id)
    return {"run_id": str(run_id), "step": name, "state": "succeeded", "ran": True, "sent": sent}


def _finish(
    run_id: uuid.UUID,
    name: str,
    state: StepState,
    *,
    started: float,
    result: dict[str, Any] | None = None,
    error: str | None = None,
) -> None:
    with session_scope() as session:
        step = store.locked_step(session, run_id, name)
        step.state = state.value
        step.result = result
        step.error = error
        step.finished_at = _now()
        step.duration_ms = round((time.monotonic() - started) * 1000, 3)


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
    advance(run_id)


def _execute(
    run_id: uuid.UUID,
    name: str,
    tenant: str,
    spec: dict[str, Any],
    failures: int,
    ctx: JobContext,
) -> dict[str, Any]:
    kind = spec.get("kind")
    if kind == "job":
        return _run_job_step(run_id, name, tenant, spec, failures, ctx)
    raise StepAttemptFailedError(f"step {name}: {kind} steps cannot run on this fleet yet")


def _stop_reason(run_id: uuid.UUID) -> str | None:
    with session_scope() as session:
        return store.stop_reason(session, store.get_run(session, run_id))


def _run_job_step(
    run_id: uuid.UUID,
    name: str,
    tenant: str,
    spec: dict[str, Any],
    failures: int,
    ctx: JobContext,
    stopping: Callable[[uuid.UUID], str | None] = _stop_reason,
) -> dict[str, Any]:
    task = str(spec["task"])
    try:
        # One child per failed attempt: a redelivery of the same attempt finds its child.
        child = enqueue(
            task,
            spec.get("payload") or {},
            f"workflow-child:{run_id}:{name}:{failures}",
            enqueued_by=f"workflow:{run_id}:{name}",
            tenant=tenant,
        )
    except AdmissionRefusedError as exc:
        raise StepAttemptFailedError(f"the {task} job was refused: {exc}") from exc
    with session_scope() as session:
        store.locked_step(session, run_id, name).child_job_id = child.id
    deadline = time.monotonic() + int(spec.get("timeout_seconds", 600))
    told = 0.0
    while True:
        with session_scope() as session:
            job = job_reads.get_job(session, child.id)
            status = job.status if job is not None else None
            outcome = (job.result, job.error) if job is not None else (None, None)
        if status == JobStatus.SUCCEEDED:
            return {"child_job_id": str(child.id), "task": task, "result": outcome[0]}
        if status in (JobStatus.DEAD_LETTERED, JobStatus.PREEMPTED):
            raise StepAttemptFailedError(f"{task} job {child.id} {status}: {outcome[1]}")
        reason = stopping(run_id)
        if reason is not None:
            raise _StepStoppedError(reason)
        if time.monotonic() > deadline:
            raise StepAttemptFailedError(
                f"{task} job {child.id} did not finish within {spec.get('timeout_seconds')} s"
            )
        if time.monotonic() - told >= PROGRESS_EVERY_SECONDS:
            ctx.progress(None, f"step {name}: waiting for {task} job {child.id} ({status})")
            told = time.monotonic()
        time.sleep(POLL_SECONDS)


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
                lost += 1
        advance(run_id)
    return {"runs": len(due), "steps_lost": lost}


# ---- operators: cancel and retry -----------------------------------------------------------


def cancel_run(run_id: uuid.UUID, *, tenant: str | None, actor: str) -> str:
    """Ask the run to stop: steps not started never start, a running job step stops waiting
    within a poll. Returns the run's state."""
    with session_scope() as session:
        run = store.locked_run(session, run_id, tenant)
        if run.state in FINISHED_RUN_STATES:
            raise DrydockError(f"workflow run {run_id} is {run.state}: nothing to cancel")
        if run.cancel_requested_at is None:
            run.cancel_requested_at = _now()
            run.cancelled_by = actor
    advance(run_id)
    with session_scope() as session:
        return store.get_run(session, run_id).state


def retry_run(run_id: uuid.UUID, *, tenant: str | None, actor: str) -> list[str]:
    """Resume a failed or cancelled run from the steps that did not succeed (their retries
    afresh); the steps that succeeded are kept, never run again. Returns the steps sent."""
    with session_scope() as session:
        run = store.locked_run(session, run_id, tenant)
        if run.state not in (RunState.FAILED, RunState.CANCELLED):
            raise DrydockError(
                f"workflow run {run_id} is {run.state}: only a failed or cancelled run resumes"
            )
        for step in store.steps_of(session, run_id):
            if step.state in (StepState.FAILED, StepState.CANCELLED):
                step.state = StepState.PENDING.value
                step.failures = 0
                step.error = None
                step.job_id = None
                step.finished_at = None
        run.state = RunState.RUNNING.value
        run.error = None
        run.finished_at = None
        run.cancel_requested_at = None
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
                    "result": step.result,
                    "error": step.error,
                    "started_at": step.started_at.isoformat() if step.started_at else None,
                    "finished_at": step.finished_at.isoformat() if step.finished_at else None,
                    "duration_ms": step.duration_ms,
                }
                for step in store.steps_of(session, run_id)
            ],
        }


def request_run(
    *,
    tenant: str,
    workflow: str,
    version: int | None,
    reason: str,
    requested_by: str,
    idempotency_key: str | None = None,
) -> uuid.UUID:
    """Check at the edge that the workflow exists and can run here, then enqueue its start
    (``workflows.start_run``, acting for the tenant). Returns the run's id (its job's)."""
    with session_scope() as session:
        row = definitions_store.get_definition(session, tenant, workflow, version)
        check_runnable(WorkflowDefinition.model_validate(row.definition))
        version = row.version
    job = enqueue(
        "workflows.start_run",
        {"tenant": tenant, "workflow": workflow, "version": version, "reason": reason},
        idempotency_key,
        enqueued_by=requested_by,
        tenant=tenant,
    )
    return job.id

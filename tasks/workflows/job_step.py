"""A workflow's ``job`` step: a Drydock task enqueued as the run's child job and awaited.

The child acts for the run's tenant, so it is admitted like any of the tenant's jobs. Its
idempotency key names the run, the step and the step's failed attempts so far: a redelivery of
the same attempt finds the child it had sent and waits on it instead of sending another.
"""

from __future__ import annotations

import time
import uuid
from collections.abc import Callable
from typing import Any

from dispatch.enqueue import enqueue
from kernel.context import JobContext
from models import job_reads
from models import workflow_runs as store
from models.db import session_scope
from models.jobs import JobStatus
from policy.admission import AdmissionRefusedError
from tasks.workflows.step_errors import StepAttemptFailedError, StepStoppedError

# How often a job step looks at its child job and at the run's cancel flag.
POLL_SECONDS = 0.5
PROGRESS_EVERY_SECONDS = 5.0


def stop_reason(run_id: uuid.UUID) -> str | None:
    with session_scope() as session:
        return store.stop_reason(session, store.get_run(session, run_id))


def run_job_step(
    run_id: uuid.UUID,
    name: str,
    tenant: str,
    spec: dict[str, Any],
    failures: int,
    ctx: JobContext,
    stopping: Callable[[uuid.UUID], str | None] = stop_reason,
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
            raise StepStoppedError(reason)
        if time.monotonic() > deadline:
            raise StepAttemptFailedError(
                f"{task} job {child.id} did not finish within {spec.get('timeout_seconds')} s"
            )
        if time.monotonic() - told >= PROGRESS_EVERY_SECONDS:
            ctx.progress(None, f"step {name}: waiting for {task} job {child.id} ({status})")
            with session_scope() as session:
                store.beat_heartbeat(session, run_id, name, ctx.who.hostname)
            told = time.monotonic()
        time.sleep(POLL_SECONDS)

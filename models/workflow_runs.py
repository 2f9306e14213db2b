"""Workflow runs as stored: one row per run, one per step of it, each with its state, attempts,
result and timing. The rows are what makes a run durable: whichever worker takes a step next
reads what is done from here, never from a worker's memory."""

from __future__ import annotations

import uuid
from datetime import datetime
from enum import StrEnum
from typing import Any

from sqlalchemy import (
    CheckConstraint,
    DateTime,
    ForeignKey,
    Index,
    Integer,
    String,
    Text,
    UniqueConstraint,
    Uuid,
    func,
    select,
    update,
)
from sqlalchemy.dialects.postgresql import JSONB
from sqlalchemy.orm import Mapped, Session, mapped_column

from kernel.errors import NotFoundError
from models.base import Base, sql_in_list
from models.jobs import TERMINAL_STATUSES, Job


class RunState(StrEnum):
    RUNNING = "running"
    SUCCEEDED = "succeeded"
    FAILED = "failed"
    CANCELLED = "cancelled"


class StepState(StrEnum):
    # Waiting for the steps it needs.
    PENDING = "pending"
    # Its job was sent (or is being sent): it runs as soon as a worker takes it.
    QUEUED = "queued"
    RUNNING = "running"
    SUCCEEDED = "succeeded"
    FAILED = "failed"
    # The run was cancelled, or a step it needs failed: it will not run.
    CANCELLED = "cancelled"


FINISHED_STEP_STATES = frozenset({StepState.SUCCEEDED, StepState.FAILED, StepState.CANCELLED})
FINISHED_RUN_STATES = frozenset({RunState.SUCCEEDED, RunState.FAILED, RunState.CANCELLED})


class WorkflowRun(Base):
    """One run of one version of a tenant's workflow. Its id is the id of the job that started
    it, so a redelivered start finds its run instead of starting another."""

    __tablename__ = "workflow_runs"

    id: Mapped[uuid.UUID] = mapped_column(Uuid, primary_key=True)
    tenant: Mapped[str] = mapped_column(String(100))
    workflow_id: Mapped[uuid.UUID] = mapped_column(
        Uuid, ForeignKey("workflow_definitions.id", ondelete="RESTRICT")
    )
    workflow_name: Mapped[str] = mapped_column(String(100))
    workflow_version: Mapped[int] = mapped_column(Integer)
    state: Mapped[str] = mapped_column(String(20), default=RunState.RUNNING.value)
    reason: Mapped[str] = mapped_column(Text, default="")
    requested_by: Mapped[str] = mapped_column(String(200))
    error: Mapped[str | None] = mapped_column(Text)
    cancel_requested_at: Mapped[datetime | None] = mapped_column(DateTime(timezone=True))
    cancelled_by: Mapped[str | None] = mapped_column(String(200))
    # A run on a project's code: its workspace is cloned from the project's repository at
    # ``revision`` (resolved to ``base_commit`` when the run starts) onto ``branch``, which
    # every step's commit is pushed to on each of the project's remotes. None: no workspace.
    project: Mapped[str | None] = mapped_column(String(100))
    revision: Mapped[str | None] = mapped_column(String(255))
    branch: Mapped[str | None] = mapped_column(String(255))
    base_commit: Mapped[str | None] = mapped_column(String(64))
    # The run branch's newest commit, as pushed to every remote (base_commit before any).
    head_commit: Mapped[str | None] = mapped_column(String(64))
    # The recorded decision allowing pushes to a protected branch (None: not protected).
    push_decision_id: Mapped[int | None] = mapped_column(Integer)
    # The run's in-toto Statement signed as a DSSE envelope, made when the run finishes.
    provenance: Mapped[dict[str, Any] | None] = mapped_column(JSONB)
    created_at: Mapped[datetime] = mapped_column(DateTime(timezone=True), server_default=func.now())
    finished_at: Mapped[datetime | None] = mapped_column(DateTime(timezone=True))

    __table_args__ = (
        CheckConstraint(sql_in_list("state", tuple(RunState)), name="state"),
        Index(None, "tenant", "created_at"),
    )


class WorkflowStep(Base):
    """One step of a run: the definition's step as the run took it, and what became of it."""

    __tablename__ = "workflow_steps"

    id: Mapped[int] = mapped_column(Integer, primary_key=True, autoincrement=True)
    run_id: Mapped[uuid.UUID] = mapped_column(
        Uuid, ForeignKey("workflow_runs.id", ondelete="CASCADE")
    )
    name: Mapped[str] = mapped_column(String(100))
    kind: Mapped[str] = mapped_column(String(20))
    needs: Mapped[list[str]] = mapped_column(JSONB, default=list)
    # The step as defined (kind, task, payload, timeout, retries): what every attempt runs.
    spec: Mapped[dict[str, Any]] = mapped_column(JSONB)
    state: Mapped[str] = mapped_column(String(20), default=StepState.PENDING.value)
    # Times it was started (a redelivery after a lost worker counts), and times it failed.
    attempts: Mapped[int] = mapped_column(Integer, default=0)
    failures: Mapped[int] = mapped_column(Integer, default=0)
    # The job executing it (workflows.run_step), and a job step's child job.
    job_id: Mapped[uuid.UUID | None] = mapped_column(Uuid)
    child_job_id: Mapped[uuid.UUID | None] = mapped_column(Uuid)
    # The commit the step made (None: it changed nothing, or made none yet) and its pushes,
    # one entry per remote: {remote, status, failure, error, attempts}.
    commit_sha: Mapped[str | None] = mapped_column(String(64))
    pushes: Mapped[list[dict[str, Any]] | None] = mapped_column(JSONB)
    # The worker running it (hostname) and when it last said it was alive.
    runner: Mapped[str | None] = mapped_column(String(200))
    heartbeat_at: Mapped[datetime | None] = mapped_column(DateTime(timezone=True))
    # The step's provenance log (tasks.workflows.provenance.step_provenance), made when it
    # finishes; the run's signed Statement names it by digest.
    provenance: Mapped[dict[str, Any] | None] = mapped_column(JSONB)
    result: Mapped[dict[str, Any] | None] = mapped_column(JSONB)
    error: Mapped[str | None] = mapped_column(Text)
    started_at: Mapped[datetime | None] = mapped_column(DateTime(timezone=True))
    finished_at: Mapped[datetime | None] = mapped_column(DateTime(timezone=True))
    duration_ms: Mapped[float | None]

    __table_args__ = (
        UniqueConstraint("run_id", "name"),
        CheckConstraint(sql_in_list("state", tuple(StepState)), name="state"),
    )


class RunNotFoundError(NotFoundError):
    def __init__(self, run_id: uuid.UUID | str) -> None:
        super().__init__(f"no workflow run {run_id}")


def locked_run(session: Session, run_id: uuid.UUID, tenant: str | None = None) -> WorkflowRun:
    """The run, locked until the transaction ends: deciding what a run does next is one
    writer's at a time. Another tenant's run is not found."""
    run = session.scalar(select(WorkflowRun).where(WorkflowRun.id == run_id).with_for_update())
    if run is None or (tenant is not None and run.tenant != tenant):
        raise RunNotFoundError(run_id)
    return run


def get_run(session: Session, run_id: uuid.UUID, tenant: str | None = None) -> WorkflowRun:
    run = session.get(WorkflowRun, run_id)
    if run is None or (tenant is not None and run.tenant != tenant):
        raise RunNotFoundError(run_id)
    return run


def steps_of(session: Session, run_id: uuid.UUID) -> list[WorkflowStep]:
    return list(
        session.scalars(
            select(WorkflowStep).where(WorkflowStep.run_id == run_id).order_by(WorkflowStep.id)
        )
    )


def locked_step(session: Session, run_id: uuid.UUID, name: str) -> WorkflowStep:
    step = session.scalar(
        select(WorkflowStep)
        .where(WorkflowStep.run_id == run_id, WorkflowStep.name == name)
        .with_for_update()
    )
    if step is None:
        raise NotFoundError(f"workflow run {run_id} has no step {name!r}")
    return step


def list_runs(session: Session, tenant: str | None, limit: int = 50) -> list[WorkflowRun]:
    query = select(WorkflowRun).order_by(WorkflowRun.created_at.desc()).limit(limit)
    if tenant is not None:
        query = query.where(WorkflowRun.tenant == tenant)
    return list(session.scalars(query))


def runs_not_in_flight(session: Session, limit: int) -> list[uuid.UUID]:
    """Running runs with no step in flight (queued or running on a job that has not ended):
    nothing will move them but an advance."""
    in_flight = (
        select(WorkflowStep.id)
        .join(Job, Job.id == WorkflowStep.job_id)
        .where(
            WorkflowStep.run_id == WorkflowRun.id,
            WorkflowStep.state.in_([StepState.QUEUED.value, StepState.RUNNING.value]),
            Job.status.not_in([s.value for s in TERMINAL_STATUSES]),
        )
        .exists()
    )
    return list(
        session.scalars(
            select(WorkflowRun.id)
            .where(WorkflowRun.state == RunState.RUNNING.value, ~in_flight)
            .order_by(WorkflowRun.created_at)
            .limit(limit)
        )
    )


def running_steps_whose_job_ended(session: Session, run_id: uuid.UUID) -> list[WorkflowStep]:
    """Steps still marked running though their job has an outcome (killed at a hard time
    limit: the run never heard of it)."""
    return list(
        session.scalars(
            select(WorkflowStep)
            .join(Job, Job.id == WorkflowStep.job_id)
            .where(
                WorkflowStep.run_id == run_id,
                WorkflowStep.state == StepState.RUNNING.value,
                Job.status.in_([s.value for s in TERMINAL_STATUSES]),
            )
            .with_for_update(of=WorkflowStep)
        )
    )


def step_of_job(session: Session, job_id: uuid.UUID) -> WorkflowStep | None:
    return session.scalar(select(WorkflowStep).where(WorkflowStep.job_id == job_id))


def stop_reason(session: Session, run: WorkflowRun) -> str | None:
    """Why the run's steps not yet running must not start: it was cancelled, it finished, or a
    step of it failed. None: they may."""
    if run.cancel_requested_at is not None:
        return "the run was cancelled"
    if run.state != RunState.RUNNING:
        return f"the run is {run.state}"
    failed = session.scalar(
        select(WorkflowStep.name)
        .where(WorkflowStep.run_id == run.id, WorkflowStep.state == StepState.FAILED.value)
        .limit(1)
    )
    return None if failed is None else f"step {failed} failed"


def stale_running_steps(
    session: Session, older_than: datetime, limit: int = 100
) -> list[WorkflowStep]:
    """Steps marked running whose runner has not beaten their heartbeat since ``older_than``
    (or, never having beaten it, that started before): stuck, or their worker gone."""
    last_sign = func.coalesce(WorkflowStep.heartbeat_at, WorkflowStep.started_at)
    return list(
        session.scalars(
            select(WorkflowStep)
            .join(WorkflowRun, WorkflowRun.id == WorkflowStep.run_id)
            .where(
                WorkflowRun.state == RunState.RUNNING.value,
                WorkflowStep.state == StepState.RUNNING.value,
                last_sign < older_than,
            )
            .order_by(last_sign)
            .limit(limit)
        )
    )


def runner_heartbeats(session: Session, since: datetime) -> list[tuple[str, datetime]]:
    """Each runner that beat a step's heartbeat since ``since``, with its last beat."""
    last = func.max(WorkflowStep.heartbeat_at)
    rows = session.execute(
        select(WorkflowStep.runner, last)
        .where(WorkflowStep.runner.is_not(None), WorkflowStep.heartbeat_at >= since)
        .group_by(WorkflowStep.runner)
        .order_by(last.desc())
    ).all()
    return [(str(runner), beat) for runner, beat in rows if beat is not None]


def beat_heartbeat(session: Session, run_id: uuid.UUID, name: str, runner: str) -> None:
    """The step's runner is alive and still on it."""
    session.execute(
        update(WorkflowStep)
        .where(WorkflowStep.run_id == run_id, WorkflowStep.name == name)
        .values(heartbeat_at=func.now(), runner=runner[:200])
    )

"""The job lifecycle's tables and writes: a job recorded at enqueue, each attempt started, its
progress, and one outcome (success, retry, dead letter, a message refused at intake or dropped
unrun). Reads are ``models.job_reads``. Tasks and the CLI call these; no SQL lives anywhere else.

Over 500 lines on purpose: the outcome writes share one status guard (``_UNFINISHED``), the
hot-path statement runner and the outcome event's audit detail, and must change together.

Writes that record an outcome are guarded by the job's status, and the database allows one
outcome event of each kind per job, so a redelivered message can never duplicate an outcome.
"""

from __future__ import annotations

import uuid
from dataclasses import dataclass
from datetime import datetime
from enum import StrEnum
from typing import Any

from sqlalchemy import (
    BigInteger,
    CheckConstraint,
    DateTime,
    ForeignKey,
    Identity,
    Index,
    Integer,
    PrimaryKeyConstraint,
    String,
    Text,
    Uuid,
    delete,
    func,
    insert,
    select,
    text,
    update,
)
from sqlalchemy.dialects.postgresql import JSONB
from sqlalchemy.dialects.postgresql import insert as pg_insert
from sqlalchemy.orm import Mapped, Session, mapped_column

from kernel.context import WorkerIdentity
from models.base import Base, sql_in_list
from models.db import hot_connection, session_scope


class JobStatus(StrEnum):
    QUEUED = "queued"
    RUNNING = "running"
    RETRYING = "retrying"
    SUCCEEDED = "succeeded"
    DEAD_LETTERED = "dead_lettered"
    # Cancelled before it ran: its target asset was quarantined while it waited in the queue.
    PREEMPTED = "preempted"


TERMINAL_STATUSES = (JobStatus.SUCCEEDED, JobStatus.DEAD_LETTERED, JobStatus.PREEMPTED)


class EventKind(StrEnum):
    ENQUEUED = "enqueued"
    STARTED = "started"
    PROGRESS = "progress"
    RETRY = "retry"
    SUCCEEDED = "succeeded"
    FAILED = "failed"
    DEAD_LETTERED = "dead_lettered"
    PREEMPTED = "preempted"


# A job has at most one of each of these: the database itself refuses a duplicated outcome.
OUTCOME_EVENT_KINDS = (
    EventKind.SUCCEEDED,
    EventKind.FAILED,
    EventKind.DEAD_LETTERED,
    EventKind.PREEMPTED,
)


class Job(Base):
    __tablename__ = "jobs"

    id: Mapped[uuid.UUID] = mapped_column(Uuid, primary_key=True, default=uuid.uuid4)
    task_name: Mapped[str] = mapped_column(String(200))
    queue: Mapped[str] = mapped_column(String(50))
    # Secret-looking fields are replaced by "[REDACTED]"; see kernel.redaction.
    payload: Mapped[dict[str, Any]] = mapped_column(JSONB)
    # Fernet token of the redacted values, present only when a fleet key is configured.
    sealed_secrets: Mapped[str | None] = mapped_column(Text)
    idempotency_key: Mapped[str | None] = mapped_column(String(200), unique=True)
    status: Mapped[str] = mapped_column(String(20), default=JobStatus.QUEUED.value)
    attempts: Mapped[int] = mapped_column(Integer, default=0, server_default="0")
    enqueued_by: Mapped[str | None] = mapped_column(String(200))
    replay_of: Mapped[uuid.UUID | None] = mapped_column(
        Uuid, ForeignKey("jobs.id", ondelete="SET NULL")
    )
    enqueued_at: Mapped[datetime] = mapped_column(
        DateTime(timezone=True), server_default=func.now()
    )
    started_at: Mapped[datetime | None] = mapped_column(DateTime(timezone=True))
    finished_at: Mapped[datetime | None] = mapped_column(DateTime(timezone=True))
    worker: Mapped[str | None] = mapped_column(String(200))
    worker_pid: Mapped[int | None] = mapped_column(Integer)
    result: Mapped[Any | None] = mapped_column(JSONB)
    error: Mapped[str | None] = mapped_column(Text)
    error_class: Mapped[str | None] = mapped_column(String(200))
    # Admission: the tenant the job acts for (the token's, or the payload's), the asset it is
    # bound to (a quarantine of that asset preempts it while it waits), and the admission
    # decision it passed (its id and gates), carried into the job's outcome event.
    tenant: Mapped[str | None] = mapped_column(String(100))
    target_asset_id: Mapped[uuid.UUID | None] = mapped_column(
        Uuid, ForeignKey("trust_assets.id", ondelete="SET NULL")
    )
    policy_context: Mapped[dict[str, Any] | None] = mapped_column(JSONB)

    # No index may cover a column that changes while a job runs (status, attempts, times):
    # then PostgreSQL updates the row in place (HOT, helped by the fillfactor) without touching
    # any index, twice for every job. Listings walk enqueued_at newest first and filter.
    __table_args__ = (
        CheckConstraint(sql_in_list("status", tuple(JobStatus)), name="status"),
        Index(None, "enqueued_at"),
        # Never changes once written, so it keeps updates HOT: a quarantine finds the asset's
        # waiting jobs through it.
        Index(None, "target_asset_id"),
        {"postgresql_with": {"fillfactor": 80}},
    )


class JobEvent(Base):
    __tablename__ = "job_events"

    # The key is (job_id, id): one index serves "this job's events in order" and the key both,
    # since every job writes at least two events and each index costs on every insert.
    job_id: Mapped[uuid.UUID] = mapped_column(
        Uuid, ForeignKey("jobs.id", ondelete="CASCADE"), primary_key=True
    )
    id: Mapped[int] = mapped_column(BigInteger, Identity(), primary_key=True)
    kind: Mapped[str] = mapped_column(String(20))
    attempt: Mapped[int] = mapped_column(Integer, default=0)
    at: Mapped[datetime] = mapped_column(DateTime(timezone=True), server_default=func.now())
    # For started: none; for outcomes: how long the attempt ran.
    latency_ms: Mapped[float | None]
    # For started: how long the message waited in its queue (or past its retry ETA).
    queue_wait_ms: Mapped[float | None]
    queue: Mapped[str | None] = mapped_column(String(50))
    worker: Mapped[str | None] = mapped_column(String(200))
    worker_pid: Mapped[int | None] = mapped_column(Integer)
    detail: Mapped[dict[str, Any]] = mapped_column(JSONB, default=dict, server_default="{}")

    __table_args__ = (
        PrimaryKeyConstraint("job_id", "id"),
        CheckConstraint(sql_in_list("kind", tuple(EventKind)), name="kind"),
        Index(
            "uq_job_events_one_outcome",
            "job_id",
            "kind",
            unique=True,
            postgresql_where=text(sql_in_list("kind", OUTCOME_EVENT_KINDS)),
        ),
    )


class DeadLetter(Base):
    __tablename__ = "dead_letters"

    id: Mapped[int] = mapped_column(BigInteger, primary_key=True, autoincrement=True)
    job_id: Mapped[uuid.UUID] = mapped_column(
        Uuid, ForeignKey("jobs.id", ondelete="CASCADE"), unique=True
    )
    task_name: Mapped[str] = mapped_column(String(200))
    queue: Mapped[str] = mapped_column(String(50))
    error_class: Mapped[str] = mapped_column(String(200))
    message: Mapped[str] = mapped_column(Text)
    traceback: Mapped[str | None] = mapped_column(Text)
    payload: Mapped[dict[str, Any]] = mapped_column(JSONB)
    attempts: Mapped[int] = mapped_column(Integer)
    reason: Mapped[str] = mapped_column(String(30))
    # A message refused before it could run (not readable, an unknown task, a payload that
    # cannot be stored): its body as it came, capped and redacted, and the id it carried.
    raw_body: Mapped[str | None] = mapped_column(Text)
    message_id: Mapped[str | None] = mapped_column(String(200))
    dead_lettered_at: Mapped[datetime] = mapped_column(
        DateTime(timezone=True), server_default=func.now()
    )
    replayed_at: Mapped[datetime | None] = mapped_column(DateTime(timezone=True))
    replayed_by: Mapped[str | None] = mapped_column(String(200))
    replay_job_id: Mapped[uuid.UUID | None] = mapped_column(
        Uuid, ForeignKey("jobs.id", ondelete="SET NULL")
    )

    __table_args__ = (Index(None, "dead_lettered_at"),)


@dataclass(frozen=True)
class NewJob:
    id: uuid.UUID
    task_name: str
    queue: str
    payload: dict[str, Any]
    sealed_secrets: str | None = None
    idempotency_key: str | None = None
    enqueued_by: str | None = None
    replay_of: uuid.UUID | None = None
    tenant: str | None = None
    target_asset_id: uuid.UUID | None = None
    policy_context: dict[str, Any] | None = None


@dataclass(frozen=True)
class Started:
    attempt: int


@dataclass(frozen=True)
class AlreadyFinished:
    status: str


_terminal = [s.value for s in TERMINAL_STATUSES]


def create_job(session: Session, job: NewJob) -> tuple[Job, bool]:
    """Insert a queued job and its ``enqueued`` event.

    Returns ``(job, created)``; with an idempotency key already used, the first job and False.
    """
    stmt = (
        pg_insert(Job)
        .values(
            id=job.id,
            task_name=job.task_name,
            queue=job.queue,
            payload=job.payload,
            sealed_secrets=job.sealed_secrets,
            idempotency_key=job.idempotency_key,
            enqueued_by=job.enqueued_by,
            replay_of=job.replay_of,
            tenant=job.tenant,
            target_asset_id=job.target_asset_id,
            policy_context=job.policy_context,
            status=JobStatus.QUEUED.value,
        )
        # Either unique column may collide: the idempotency key (a second enqueue) or the id (two
        # deliveries of a message that bypassed enqueue, racing to record it).
        .on_conflict_do_nothing()
        .returning(Job.id)
    )
    created_id = session.execute(stmt).scalar_one_or_none()
    if created_id is None:
        same = Job.id == job.id
        if job.idempotency_key is not None:
            same = same | (Job.idempotency_key == job.idempotency_key)
        existing = session.execute(select(Job).where(same).limit(1)).scalar_one()
        return existing, False
    session.execute(
        insert(JobEvent).values(
            job_id=job.id,
            kind=EventKind.ENQUEUED.value,
            attempt=0,
            queue=job.queue,
            detail={"enqueued_by": job.enqueued_by, "replay_of": _str(job.replay_of)},
        )
    )
    created = session.get(Job, job.id)
    assert created is not None
    return created, True


def forget_unsent_job(session: Session, job_id: uuid.UUID) -> None:
    """Remove a job whose message never reached the broker, so its key can be used again."""
    session.execute(delete(Job).where(Job.id == job_id, Job.status == JobStatus.QUEUED.value))


# The per-job statements below are raw SQL (see _hot_statement); their guard is built from the
# same terminal statuses the rest of the code uses.
_UNFINISHED = f"NOT ({sql_in_list('status', TERMINAL_STATUSES)})"

_START_ATTEMPT = f"""
    WITH attempt AS (
        UPDATE jobs
           SET status = 'running', attempts = attempts + 1, started_at = now(),
               worker = CAST(%(worker)s AS varchar), worker_pid = CAST(%(worker_pid)s AS integer)
         WHERE id = CAST(%(job_id)s AS uuid) AND {_UNFINISHED}
     RETURNING attempts
    )
    INSERT INTO job_events (job_id, kind, attempt, at, queue_wait_ms, queue, worker, worker_pid,
                            detail)
    SELECT CAST(%(job_id)s AS uuid), 'started', attempts, now(),
           CAST(%(queue_wait_ms)s AS double precision), CAST(%(queue)s AS varchar),
           CAST(%(worker)s AS varchar), CAST(%(worker_pid)s AS integer), '{{}}'::jsonb
      FROM attempt
    RETURNING attempt
    """


def start_attempt(
    job_id: uuid.UUID,
    *,
    task_name: str,
    payload: dict[str, Any],
    who: WorkerIdentity,
    queue_wait_ms: float | None,
) -> Started | AlreadyFinished:
    """Mark the job running, count the attempt and record ``started``, unless it already has an
    outcome. One statement, committed on its own: this runs once per job on every worker.

    A message sent without ``enqueue`` (Beat, or a producer speaking Celery's protocol directly)
    has no row yet: one is created here, so every job that runs is recorded.
    """
    params = {"job_id": job_id, "queue_wait_ms": queue_wait_ms, **who.as_dict()}
    attempt = _hot_statement(_START_ATTEMPT, params, relaxed=True)
    if attempt is not None:
        return Started(attempt=attempt)
    with session_scope() as session:
        finished = session.execute(select(Job.status).where(Job.id == job_id)).one_or_none()
        if finished is not None:
            if finished.status in _terminal:
                return AlreadyFinished(status=finished.status)
            raise RuntimeError(f"job {job_id} changed state while starting; try again")
        create_job(
            session,
            NewJob(
                id=job_id,
                task_name=task_name,
                queue=who.queue,
                payload=payload,
                enqueued_by="broker-message",
            ),
        )
    attempt = _hot_statement(_START_ATTEMPT, params, relaxed=True)
    if attempt is None:
        raise RuntimeError(f"job {job_id} could not be started")
    return Started(attempt=attempt)


def _hot_statement(sql: str, params: dict[str, Any], *, relaxed: bool = False) -> Any:
    """Run one of the per-job statements straight on the driver, as a prepared statement.

    These run twice for every job on every worker; SQLAlchemy's statement machinery would cost
    more than the database does. The SQL is static and fully parameterised.
    """
    with hot_connection(relaxed=relaxed).cursor() as cursor:
        cursor.execute(sql, params, prepare=True)
        row = cursor.fetchone()
    return None if row is None else row[0]


def record_progress(
    session: Session, job_id: uuid.UUID, attempt: int, who: WorkerIdentity, detail: dict[str, Any]
) -> None:
    _event(session, job_id, EventKind.PROGRESS, attempt, who, detail=detail)


# An outcome event is the job's audit row: the worker that ran it (its columns) and the policy
# context it was admitted under (from the job row), beside what happened.
_POLICY_DETAIL = (
    "CASE WHEN policy_context IS NULL THEN '{}'::jsonb "
    "ELSE jsonb_build_object('policy', policy_context) END"
)

_RECORD_SUCCESS = f"""
    WITH done AS (
        UPDATE jobs
           SET status = 'succeeded', result = CAST(%(result)s AS jsonb), finished_at = now(),
               error = NULL, error_class = NULL
         WHERE id = CAST(%(job_id)s AS uuid) AND {_UNFINISHED}
     RETURNING id, policy_context
    )
    INSERT INTO job_events (job_id, kind, attempt, at, latency_ms, queue, worker, worker_pid,
                            detail)
    SELECT id, 'succeeded', CAST(%(attempt)s AS integer), now(),
           CAST(%(latency_ms)s AS double precision), CAST(%(queue)s AS varchar),
           CAST(%(worker)s AS varchar), CAST(%(worker_pid)s AS integer),
           {_POLICY_DETAIL}
      FROM done
    RETURNING id
    """


def record_success(
    job_id: uuid.UUID,
    attempt: int,
    who: WorkerIdentity,
    *,
    result_json: str,
    latency_ms: float,
) -> bool:
    """Record the outcome in one statement; False when another delivery of the same job already
    recorded one (the status guard, backed by the one-outcome unique index)."""
    recorded = _hot_statement(
        _RECORD_SUCCESS,
        {
            "job_id": job_id,
            "attempt": attempt,
            "result": result_json,
            "latency_ms": latency_ms,
            **who.as_dict(),
        },
    )
    return recorded is not None


# A job whose message was dropped before it ran (it expired in the queue, or an operator
# revoked it in Flower) ends "preempted" with its outcome event; a job already under way or
# finished is left as it is (the status guard).
_RECORD_UNRUN = """
    WITH unrun AS (
        UPDATE jobs
           SET status = 'preempted', finished_at = now(), error = :reason,
               error_class = :error_class
         WHERE id = :job_id AND status IN ('queued', 'retrying')
     RETURNING id, attempts, queue
    )
    INSERT INTO job_events (job_id, kind, attempt, at, queue, detail)
    SELECT id, 'preempted', attempts, now(), queue,
           jsonb_build_object('reason', CAST(:reason AS text))
      FROM unrun
    RETURNING job_id
"""


def record_unrun(session: Session, job_id: uuid.UUID, *, error_class: str, reason: str) -> bool:
    """End a waiting job whose message was dropped unrun; False when it was not waiting."""
    row = session.execute(
        text(_RECORD_UNRUN), {"job_id": job_id, "error_class": error_class, "reason": reason}
    ).first()
    return row is not None


def record_retry(
    session: Session,
    job_id: uuid.UUID,
    attempt: int,
    who: WorkerIdentity,
    *,
    error_class: str,
    message: str,
    delay_seconds: float,
    latency_ms: float,
) -> None:
    session.execute(
        update(Job)
        .where(Job.id == job_id, Job.status.not_in(_terminal))
        .values(status=JobStatus.RETRYING.value, error=message, error_class=error_class)
    )
    _event(
        session,
        job_id,
        EventKind.RETRY,
        attempt,
        who,
        latency_ms=latency_ms,
        detail={
            "error_class": error_class,
            "message": message,
            "delay_seconds": round(delay_seconds, 3),
            "next_attempt": attempt + 1,
        },
    )


def record_dead_letter(
    session: Session,
    job_id: uuid.UUID,
    attempt: int,
    who: WorkerIdentity,
    *,
    error_class: str,
    message: str,
    traceback: str | None,
    reason: str,
    latency_ms: float | None,
) -> DeadLetter | None:
    """Fail the job and park it: a ``failed`` and a ``dead_lettered`` event, a dead_letters row.

    None when the job already had an outcome (a redelivered message).
    """
    row = session.execute(
        update(Job)
        .where(Job.id == job_id, Job.status.not_in(_terminal))
        .values(
            status=JobStatus.DEAD_LETTERED.value,
            finished_at=func.now(),
            error=message,
            error_class=error_class,
        )
        .returning(Job.task_name, Job.queue, Job.payload, Job.policy_context)
    ).one_or_none()
    if row is None:
        return None
    detail = {"error_class": error_class, "message": message, "reason": reason}
    _event(session, job_id, EventKind.FAILED, attempt, who, latency_ms=latency_ms, detail=detail)
    outcome: dict[str, Any] = {"reason": reason}
    if row.policy_context is not None:
        outcome["policy"] = row.policy_context
    _event(session, job_id, EventKind.DEAD_LETTERED, attempt, who, detail=outcome)
    letter = DeadLetter(
        job_id=job_id,
        task_name=row.task_name,
        queue=row.queue,
        error_class=error_class,
        message=message,
        traceback=traceback,
        payload=row.payload,
        attempts=attempt,
        reason=reason,
    )
    session.add(letter)
    session.flush()
    return letter


@dataclass(frozen=True)
class RefusedMessage:
    """A message taken from a queue that could not be run: what it said it was, and why not."""

    job_id: uuid.UUID
    task_name: str
    queue: str
    # The payload when it could be read and stored (redacted), else empty.
    payload: dict[str, Any]
    sealed_secrets: str | None
    error_class: str
    message: str
    reason: str
    raw_body: str | None
    message_id: str | None


def record_refused_message(
    session: Session, refused: RefusedMessage, who: WorkerIdentity
) -> DeadLetter | None:
    """Dead-letter a message refused on its first delivery: its job row (made here when the
    message skipped ``enqueue``), the ``failed`` and ``dead_lettered`` events, the dead letter
    with the raw body. None when the job already has an outcome (a redelivery of a message
    already refused, or a malformed copy of a job that finished)."""
    create_job(
        session,
        NewJob(
            id=refused.job_id,
            task_name=refused.task_name,
            queue=refused.queue,
            payload=refused.payload,
            sealed_secrets=refused.sealed_secrets,
            enqueued_by="broker-message",
        ),
    )
    letter = record_dead_letter(
        session,
        refused.job_id,
        0,
        who,
        error_class=refused.error_class,
        message=refused.message,
        traceback=None,
        reason=refused.reason,
        latency_ms=None,
    )
    if letter is not None:
        letter.raw_body = refused.raw_body
        letter.message_id = refused.message_id
        session.flush()
    return letter


def _str(value: uuid.UUID | None) -> str | None:
    return None if value is None else str(value)


def _event(
    session: Session,
    job_id: uuid.UUID,
    kind: EventKind,
    attempt: int,
    who: WorkerIdentity,
    *,
    latency_ms: float | None = None,
    queue_wait_ms: float | None = None,
    detail: dict[str, Any] | None = None,
) -> None:
    session.execute(
        insert(JobEvent).values(
            job_id=job_id,
            kind=kind.value,
            attempt=attempt,
            latency_ms=latency_ms,
            queue_wait_ms=queue_wait_ms,
            detail=detail or {},
            **who.as_dict(),
        )
    )


# ---- reads -------------------------------------------------------------------------------------


# ---- aggregates for /metrics -------------------------------------------------------------------

"""Every query on jobs, their events and dead letters. Tasks and the CLI call these; no SQL
lives anywhere else.

Writes that record an outcome are guarded by the job's status, and the database allows one
outcome event of each kind per job, so a redelivered message can never duplicate an outcome.
"""

from __future__ import annotations

import uuid
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime
from typing import Any

from sqlalchemy import delete, func, insert, select, text, update
from sqlalchemy.dialects.postgresql import insert as pg_insert
from sqlalchemy.orm import Session

from kernel.context import WorkerIdentity
from models.db import hot_connection, session_scope
from models.tables import (
    TERMINAL_STATUSES,
    DeadLetter,
    EventKind,
    Job,
    JobEvent,
    JobStatus,
    sql_in_list,
)


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


def get_job(session: Session, job_id: uuid.UUID) -> Job | None:
    return session.get(Job, job_id)


def list_jobs(
    session: Session,
    *,
    status: str | None = None,
    queue: str | None = None,
    task_name: str | None = None,
    task_names: Sequence[str] | None = None,
    tenant: str | None = None,
    after: tuple[datetime, uuid.UUID] | None = None,
    limit: int = 50,
    offset: int = 0,
) -> Sequence[Job]:
    """Jobs newest first. ``task_names`` limits to those tasks (an API token's scope); ``after``
    continues a listing after the (enqueued_at, id) of its last row, which, unlike an offset,
    neither skips nor repeats rows while new jobs arrive."""
    query = select(Job).order_by(Job.enqueued_at.desc(), Job.id).limit(limit).offset(offset)
    if status:
        query = query.where(Job.status == status)
    if queue:
        query = query.where(Job.queue == queue)
    if task_name:
        query = query.where(Job.task_name == task_name)
    if task_names is not None:
        query = query.where(Job.task_name.in_(task_names))
    if tenant is not None:
        query = query.where(Job.tenant == tenant)
    if after is not None:
        at, last_id = after
        query = query.where((Job.enqueued_at < at) | ((Job.enqueued_at == at) & (Job.id > last_id)))
    return session.execute(query).scalars().all()


def job_events(session: Session, job_id: uuid.UUID) -> Sequence[JobEvent]:
    return (
        session.execute(select(JobEvent).where(JobEvent.job_id == job_id).order_by(JobEvent.id))
        .scalars()
        .all()
    )


def job_events_after(
    session: Session, job_id: uuid.UUID, after_id: int, *, limit: int = 1000
) -> Sequence[JobEvent]:
    """The job's events with an id above ``after_id``, oldest first: what a follower has not
    seen yet (``drydock job ID --follow``). Served by the (job_id, id) key."""
    return (
        session.execute(
            select(JobEvent)
            .where(JobEvent.job_id == job_id, JobEvent.id > after_id)
            .order_by(JobEvent.id)
            .limit(limit)
        )
        .scalars()
        .all()
    )


def list_dead_letters(
    session: Session,
    *,
    include_replayed: bool = False,
    task_names: Sequence[str] | None = None,
    limit: int = 50,
    offset: int = 0,
) -> Sequence[DeadLetter]:
    query = (
        select(DeadLetter)
        .order_by(DeadLetter.dead_lettered_at.desc(), DeadLetter.id.desc())
        .limit(limit)
        .offset(offset)
    )
    if not include_replayed:
        query = query.where(DeadLetter.replayed_at.is_(None))
    if task_names is not None:
        query = query.where(DeadLetter.task_name.in_(task_names))
    return session.execute(query).scalars().all()


def get_dead_letter(
    session: Session, job_id: uuid.UUID, *, lock: bool = False
) -> DeadLetter | None:
    query = select(DeadLetter).where(DeadLetter.job_id == job_id)
    if lock:
        query = query.with_for_update()
    return session.execute(query).scalar_one_or_none()


def mark_replayed(
    session: Session, letter: DeadLetter, *, by: str, replay_job_id: uuid.UUID, at: datetime
) -> None:
    letter.replayed_at = at
    letter.replayed_by = by
    letter.replay_job_id = replay_job_id


def dead_letters_to_purge(
    session: Session, *, job_ids: Sequence[uuid.UUID] | None, older_than: datetime | None
) -> Sequence[DeadLetter]:
    query = select(DeadLetter).with_for_update()
    if job_ids is not None:
        query = query.where(DeadLetter.job_id.in_(job_ids))
    if older_than is not None:
        query = query.where(DeadLetter.dead_lettered_at < older_than)
    return session.execute(query).scalars().all()


def delete_dead_letters(session: Session, letters: Sequence[DeadLetter]) -> None:
    session.execute(delete(DeadLetter).where(DeadLetter.id.in_([d.id for d in letters])))


def _str(value: uuid.UUID | None) -> str | None:
    return None if value is None else str(value)


@dataclass(frozen=True)
class RunningJob:
    id: uuid.UUID
    task_name: str
    queue: str
    worker: str | None
    started_at: datetime | None
    attempts: int


def running_jobs(session: Session, *, enqueued_since: datetime) -> list[RunningJob]:
    """Jobs marked running among those enqueued since then. The window keeps the scan on the
    enqueued_at index: there is deliberately no index on status (see tables.Job)."""
    rows = session.execute(
        select(Job.id, Job.task_name, Job.queue, Job.worker, Job.started_at, Job.attempts).where(
            Job.enqueued_at >= enqueued_since, Job.status == JobStatus.RUNNING.value
        )
    ).all()
    return [RunningJob(*row) for row in rows]


# ---- aggregates for /metrics -------------------------------------------------------------------


def job_counts(session: Session) -> list[tuple[str, str, str, int]]:
    """(task, queue, status, jobs) over the whole table."""
    rows = session.execute(
        select(Job.task_name, Job.queue, Job.status, func.count()).group_by(
            Job.task_name, Job.queue, Job.status
        )
    ).all()
    return [(t, q, s, int(n)) for t, q, s, n in rows]


def event_counts(session: Session, kinds: Sequence[EventKind]) -> list[tuple[str, str, int]]:
    """(task, event kind, events) for the given kinds."""
    rows = session.execute(
        select(Job.task_name, JobEvent.kind, func.count())
        .join(Job, Job.id == JobEvent.job_id)
        .where(JobEvent.kind.in_([k.value for k in kinds]))
        .group_by(Job.task_name, JobEvent.kind)
    ).all()
    return [(t, k, int(n)) for t, k, n in rows]


@dataclass(frozen=True)
class DurationBuckets:
    task_name: str
    outcome: str
    # Cumulative counts of attempts that took at most each bound, in seconds, in bound order.
    cumulative: list[int]
    count: int
    sum_seconds: float


def attempt_durations(session: Session, bounds: Sequence[float]) -> list[DurationBuckets]:
    """How long attempts ran, by task and how they ended (succeeded, retry, failed)."""
    kinds = [EventKind.SUCCEEDED.value, EventKind.RETRY.value, EventKind.FAILED.value]
    seconds = JobEvent.latency_ms / 1000.0
    columns = [func.count().filter(seconds <= bound) for bound in bounds]
    rows = session.execute(
        select(
            Job.task_name,
            JobEvent.kind,
            func.count(),
            func.coalesce(func.sum(seconds), 0.0),
            *columns,
        )
        .join(Job, Job.id == JobEvent.job_id)
        .where(JobEvent.kind.in_(kinds), JobEvent.latency_ms.is_not(None))
        .group_by(Job.task_name, JobEvent.kind)
    ).all()
    return [
        DurationBuckets(
            task_name=row[0],
            outcome=row[1],
            count=int(row[2]),
            sum_seconds=float(row[3] or 0.0),
            cumulative=[int(n) for n in row[4:]],
        )
        for row in rows
    ]


def waiting_dead_letters(session: Session) -> list[tuple[str, str, int]]:
    """(task, reason, dead letters not yet replayed)."""
    rows = session.execute(
        select(DeadLetter.task_name, DeadLetter.reason, func.count())
        .where(DeadLetter.replayed_at.is_(None))
        .group_by(DeadLetter.task_name, DeadLetter.reason)
    ).all()
    return [(t, r, int(n)) for t, r, n in rows]

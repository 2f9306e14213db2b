"""Reading the outcome store: one job and its events, pages of jobs, dead letters (with the
marks replay and purge leave on them), and the aggregates ``/metrics`` reports.
"""

from __future__ import annotations

import uuid
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime

from sqlalchemy import (
    delete,
    func,
    select,
)
from sqlalchemy.orm import Session

from models.jobs import (
    DeadLetter,
    EventKind,
    Job,
    JobEvent,
    JobStatus,
)


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
    tenant: str | None = None,
    limit: int = 50,
    offset: int = 0,
) -> Sequence[DeadLetter]:
    """Dead letters newest first; ``tenant``: only those of that tenant's jobs."""
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
    if tenant is not None:
        query = query.join(Job, Job.id == DeadLetter.job_id).where(Job.tenant == tenant)
    return session.execute(query).scalars().all()


def tenant_of_job(session: Session, job_id: uuid.UUID) -> str | None:
    return session.scalar(select(Job.tenant).where(Job.id == job_id))


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

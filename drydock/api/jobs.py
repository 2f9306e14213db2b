"""``/v1/jobs`` and ``/v1/tasks``: a job with its events, pages of jobs, the tasks a token may
enqueue. A job outside the token's scopes (or another tenant's) is 404, as if it did not exist.
"""

from __future__ import annotations

import re
import uuid
from collections.abc import Sequence
from datetime import UTC, datetime, timedelta
from typing import Annotated, Any

from fastapi import FastAPI, Query
from pydantic import AfterValidator, BaseModel, Field
from sqlalchemy.orm import Session

from catalog import CATALOG, TaskSpec
from drydock.api.auth import Caller, visible_tasks
from drydock.api.bodies import RowBody, RowView
from drydock.api.errors import ErrorBody, InputProblem
from drydock.api.inputs import MAX_FILTER_LENGTH, MAX_PAGE, FilterText
from kernel.errors import NotFoundError
from kernel.topology import WORK_QUEUES
from models import job_reads, tokens
from models.db import session_scope
from models.jobs import EventKind, Job, JobEvent, JobStatus

# ---- bodies ------------------------------------------------------------------------------------


class EventBody(RowBody):
    id: int
    kind: str
    attempt: int
    at: datetime
    latency_ms: float | None
    queue_wait_ms: float | None
    worker: str | None
    worker_pid: int | None
    detail: dict[str, Any]


class ProgressBody(RowBody):
    percent: float | None
    message: str | None
    at: datetime
    attempt: int


class JobSummaryBody(RowBody):
    id: uuid.UUID
    task_name: str
    queue: str
    status: str
    attempts: int
    enqueued_at: datetime
    enqueued_by: str | None
    started_at: datetime | None
    finished_at: datetime | None
    error_class: str | None
    error: str | None


class JobBody(JobSummaryBody):
    payload: dict[str, Any] = Field(description="As recorded: secret fields are redacted.")
    result: Any | None
    replay_of: uuid.UUID | None
    worker: str | None
    progress: ProgressBody | None
    events: list[EventBody]


class JobPageBody(BaseModel):
    jobs: list[JobSummaryBody]
    next_cursor: str | None = Field(
        description="Pass as ?cursor= for the next page; null on the last page."
    )


class TaskBody(RowBody):
    name: str
    queue: str
    summary: str
    payload_schema: dict[str, Any]


def job_body(job: Job, events: Sequence[JobEvent]) -> JobBody:
    """The job row with its events (in order) and the latest progress they report."""
    return JobBody.model_validate(
        RowView(job, progress=_latest_progress(events), events=list(events))
    )


def _latest_progress(events: Sequence[JobEvent]) -> ProgressBody | None:
    for event in reversed(events):
        if event.kind == EventKind.PROGRESS.value:
            detail = event.detail
            return ProgressBody.model_validate(
                RowView(event, percent=detail.get("percent"), message=detail.get("message"))
            )
    return None


def task_body(spec: TaskSpec) -> TaskBody:
    return TaskBody.model_validate(RowView(spec, payload_schema=spec.json_schema()))


# ---- routes ------------------------------------------------------------------------------------


def _known_queue(queue: str) -> str:
    if queue not in WORK_QUEUES:
        raise ValueError(f"unknown queue; one of {', '.join(WORK_QUEUES)}")
    return queue


QueueName = Annotated[
    str,
    AfterValidator(_known_queue),
    Query(description="A work queue.", json_schema_extra={"enum": list(WORK_QUEUES)}),
]
# A page's position: the last job's enqueue time (microseconds since the epoch) and its id. Every
# string of this form is a position, so any cursor the pattern admits is answered.
CURSOR_PATTERN = r"^[0-9]{1,16}-[0-9a-f]{32}$"
_CURSOR = re.compile(CURSOR_PATTERN)


def install(app: FastAPI) -> None:
    app.add_api_route(
        # Only ids: /v1/jobs/<task> is a task's enqueue route, whatever the method.
        "/v1/jobs/{job_id:uuid}",
        get_job,
        methods=["GET"],
        response_model=JobBody,
        responses={404: {"model": ErrorBody}},
        tags=["jobs"],
    )
    app.add_api_route(
        "/v1/jobs", list_jobs, methods=["GET"], response_model=JobPageBody, tags=["jobs"]
    )
    app.add_api_route(
        "/v1/tasks", list_tasks, methods=["GET"], response_model=list[TaskBody], tags=["tasks"]
    )


def get_job(job_id: uuid.UUID, caller: Caller) -> JobBody:
    """One job: status, attempts, result or error, its latest progress and every event."""
    with session_scope() as session:
        job = visible_job(session, job_id, caller)
        events = job_reads.job_events(session, job_id)
        return job_body(job, events)


def visible_job(session: Session, job_id: uuid.UUID, caller: tokens.Caller) -> Job:
    """The job, if the caller may see it (its task in scope, its tenant's), else 404."""
    allowed = visible_tasks(caller)
    job = job_reads.get_job(session, job_id)
    if (
        job is None
        or (allowed is not None and job.task_name not in allowed)
        # A tenant token sees its tenant's jobs only.
        or (caller.tenant is not None and job.tenant != caller.tenant)
    ):
        raise NotFoundError(f"no job {job_id}")
    return job


def list_jobs(
    caller: Caller,
    status: JobStatus | None = None,
    queue: QueueName | None = None,
    task: Annotated[FilterText | None, Query(description="A task name.")] = None,
    limit: Annotated[int, Query(ge=1, le=MAX_PAGE)] = 50,
    cursor: Annotated[
        str | None,
        Query(
            description="next_cursor of the previous page.",
            max_length=MAX_FILTER_LENGTH,
            pattern=CURSOR_PATTERN,
        ),
    ] = None,
) -> JobPageBody:
    """Jobs newest first, filtered, a page at a time."""
    allowed = visible_tasks(caller)
    with session_scope() as session:
        rows = job_reads.list_jobs(
            session,
            status=status.value if status else None,
            queue=queue,
            task_name=task,
            task_names=allowed,
            tenant=caller.tenant,
            after=decode_cursor(cursor) if cursor else None,
            limit=limit + 1,
        )
        page = [JobSummaryBody.model_validate(job) for job in rows[:limit]]
        next_cursor = None
        if len(rows) > limit:
            last = rows[limit - 1]
            next_cursor = encode_cursor(last.enqueued_at, last.id)
    return JobPageBody(jobs=page, next_cursor=next_cursor)


def list_tasks(caller: Caller) -> list[TaskBody]:
    """Every task the token may enqueue, with its payload's JSON Schema."""
    return [
        task_body(spec)
        for spec in sorted(CATALOG.values(), key=lambda s: s.name)
        if caller.may_use(spec.name)
    ]


# ---- cursors -----------------------------------------------------------------------------------


def encode_cursor(at: datetime, job_id: uuid.UUID) -> str:
    micros = (at - _EPOCH) // _MICROSECOND
    return f"{micros}-{job_id.hex}"


def decode_cursor(cursor: str) -> tuple[datetime, uuid.UUID]:
    if not _CURSOR.match(cursor):  # the parameter's own pattern: a safety net
        raise InputProblem.at(["query", "cursor"], "not a next_cursor this API returned")
    micros, job_id = cursor.split("-")
    return _EPOCH + int(micros) * _MICROSECOND, uuid.UUID(hex=job_id)


_EPOCH = datetime(1970, 1, 1, tzinfo=UTC)
_MICROSECOND = timedelta(microseconds=1)

"""The HTTP API: enqueue from any language, read jobs and dead letters, health and metrics.

Served by uvicorn (`drydock api`); the OpenAPI document is at ``/openapi.json`` and lists every
task's payload schema. Everything under ``/v1`` needs a bearer token (`drydock tokens create`)
whose scopes (task-name patterns) bound what it may enqueue, read and replay: a job outside
them is 403 to enqueue and 404 to read, as if it did not exist. ``/health/*`` and ``/metrics``
carry no payloads and need no token, so probes and Prometheus can reach them.
"""

from __future__ import annotations

import re
import uuid
from collections.abc import Sequence
from datetime import UTC, datetime, timedelta
from typing import Annotated, Any, Literal

from fastapi import Depends, FastAPI, HTTPException, Query
from fastapi.responses import Response
from prometheus_client import CONTENT_TYPE_LATEST
from pydantic import AfterValidator, BaseModel, Field, ValidationError
from sqlalchemy.exc import SQLAlchemyError
from sqlalchemy.orm import Session

from catalog import CATALOG, TaskSpec
from dispatch import enqueue as client
from drydock import api_errors, api_openapi, api_policy, api_remediation
from drydock.api_auth import Caller
from drydock.api_edge import EdgeMiddleware
from drydock.api_errors import ErrorBody, InputProblem
from drydock.api_inputs import (
    MAX_FILTER_LENGTH,
    MAX_OFFSET,
    ApprovalHeader,
    FilterText,
    IdempotencyKeyHeader,
    TargetAssetHeader,
    json_bytes,
    json_value,
    strictly,
)
from drydock.api_policy import AdmissionRefusedBody
from drydock.health import FleetHealth, check_fleet
from drydock.metrics import DrydockCollector, render
from kernel.errors import NotFoundError, PayloadInvalidError
from kernel.topology import WORK_QUEUES
from models import jobs as job_store
from models import tokens
from models.db import session_scope
from models.tables import DeadLetter, EventKind, Job, JobEvent, JobStatus

API_VERSION = "1"
MAX_PAGE = 500

# ---- response bodies ---------------------------------------------------------------------------


class EnqueuedJobBody(BaseModel):
    id: uuid.UUID
    task_name: str
    queue: str
    status: str
    created: bool = Field(
        description="False when the Idempotency-Key was already used: this is the first job, "
        "and nothing new was sent."
    )
    url: str


class EventBody(BaseModel):
    id: int
    kind: str
    attempt: int
    at: datetime
    latency_ms: float | None
    queue_wait_ms: float | None
    worker: str | None
    worker_pid: int | None
    detail: dict[str, Any]


class ProgressBody(BaseModel):
    percent: float | None
    message: str | None
    at: datetime
    attempt: int


class JobSummaryBody(BaseModel):
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


class DeadLetterBody(BaseModel):
    job_id: uuid.UUID
    task_name: str
    queue: str
    reason: str
    error_class: str
    message: str
    attempts: int
    dead_lettered_at: datetime
    replayed_at: datetime | None
    replayed_by: str | None
    replay_job_id: uuid.UUID | None


class DeadLetterDetailBody(DeadLetterBody):
    payload: dict[str, Any]
    traceback: str | None
    # A message refused before it could run: its body as it came (capped, redacted) and the
    # id it carried; None for a job that ran.
    raw_body: str | None = None
    message_id: str | None = None


class TaskBody(BaseModel):
    name: str
    queue: str
    summary: str
    payload_schema: dict[str, Any]


def _scope_filter(caller: tokens.Caller) -> list[str] | None:
    """Task names the caller may see, or None for every task (a ``*`` scope)."""
    if "*" in caller.scopes:
        return None
    return caller.allowed_tasks(CATALOG)


# ---- the application ---------------------------------------------------------------------------

app = FastAPI(
    title="Drydock",
    version=API_VERSION,
    summary="Enqueue jobs on the Drydock fleet and follow them.",
)
# A path with a trailing slash is another path: not redirected to a route it does not name.
app.router.redirect_slashes = False
app.add_middleware(EdgeMiddleware)
api_errors.install(app, {**api_remediation.EXCEPTION_HANDLERS, **api_policy.EXCEPTION_HANDLERS})
app.include_router(api_remediation.router)
app.include_router(api_policy.router)
_metrics = DrydockCollector()


# ---- jobs --------------------------------------------------------------------------------------


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

_ENQUEUE_RESPONSES: dict[int | str, dict[str, Any]] = {
    200: {"model": EnqueuedJobBody, "description": "Idempotency-Key already used."},
    403: {
        "model": AdmissionRefusedBody,
        "description": "Outside the token's scopes, another tenant, or refused by admission "
        "(with the decision and its gates; the scope refusals carry no decision).",
    },
    404: {"model": ErrorBody, "description": "The target asset does not exist."},
    409: {
        "model": ErrorBody,
        "description": "Idempotency-Key used with another payload, or the target is ambiguous.",
    },
    413: {"model": ErrorBody, "description": "Payload over DRYDOCK_MAX_PAYLOAD_BYTES."},
}


def _enqueue_route(spec: TaskSpec) -> None:
    """POST /v1/jobs/<task>: one route per task, so each documents its own payload."""

    def enqueue_task(
        caller: Caller,
        response: Response,
        body: Annotated[bytes, Depends(json_bytes)],
        idempotency_key: IdempotencyKeyHeader = None,
        target_asset: TargetAssetHeader = None,
        approval_token: ApprovalHeader = None,
    ) -> EnqueuedJobBody:
        return _enqueue(spec, caller, response, body, idempotency_key, target_asset, approval_token)

    app.add_api_route(
        f"/v1/jobs/{spec.name}",
        enqueue_task,
        methods=["POST"],
        status_code=202,
        response_model=EnqueuedJobBody,
        responses=_ENQUEUE_RESPONSES,
        tags=["jobs"],
        summary=f"Enqueue {spec.name}",
        description=f"{spec.summary} 202 with the new job, or 200 with the existing one when "
        "the Idempotency-Key was already used with the same payload.",
        operation_id=f"enqueue_{spec.name.replace('.', '_')}",
    )


def _enqueue(
    spec: TaskSpec,
    caller: tokens.Caller,
    response: Response,
    body: bytes,
    idempotency_key: str | None,
    target_asset: str | None,
    approval_token: str | None,
) -> EnqueuedJobBody:
    task_name = spec.name
    if not caller.may_use(task_name):
        raise HTTPException(
            403,
            f"token {caller.name!r} may not enqueue {task_name} (scopes: "
            f"{', '.join(caller.scopes)})",
        )
    payload = json_value(body, missing={})
    try:
        strictly(spec.payload, payload)
    except ValidationError as exc:
        raise PayloadInvalidError.from_validation(task_name, exc) from None
    named = payload.get("tenant")
    if caller.tenant is not None and named is not None and named != caller.tenant:
        raise HTTPException(
            403, f"token {caller.name!r} acts for tenant {caller.tenant} only, not {named!r}"
        )
    job = client.enqueue(
        task_name,
        payload,
        idempotency_key,
        enqueued_by=f"api:{caller.name}",
        tenant=caller.tenant,
        target_asset=target_asset,
        approval_token=approval_token,
    )
    if not job.created:
        response.status_code = 200
    return _enqueued_body(job, response)


for _spec in sorted(CATALOG.values(), key=lambda s: s.name):
    _enqueue_route(_spec)


@app.get(
    # Only ids: /v1/jobs/<task> is a task's enqueue route, whatever the method.
    "/v1/jobs/{job_id:uuid}",
    response_model=JobBody,
    responses={404: {"model": ErrorBody}},
    tags=["jobs"],
)
def get_job(job_id: uuid.UUID, caller: Caller) -> JobBody:
    """One job: status, attempts, result or error, its latest progress and every event."""
    allowed = _scope_filter(caller)
    with session_scope() as session:
        job = job_store.get_job(session, job_id)
        if (
            job is None
            or (allowed is not None and job.task_name not in allowed)
            # A tenant token sees its tenant's jobs only.
            or (caller.tenant is not None and job.tenant != caller.tenant)
        ):
            raise NotFoundError(f"no job {job_id}")
        events = job_store.job_events(session, job_id)
        return _job_body(job, events)


@app.get("/v1/jobs", response_model=JobPageBody, tags=["jobs"])
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
    allowed = _scope_filter(caller)
    with session_scope() as session:
        rows = job_store.list_jobs(
            session,
            status=status.value if status else None,
            queue=queue,
            task_name=task,
            task_names=allowed,
            tenant=caller.tenant,
            after=_decode_cursor(cursor) if cursor else None,
            limit=limit + 1,
        )
        page = [_job_summary(job) for job in rows[:limit]]
        next_cursor = None
        if len(rows) > limit:
            last = rows[limit - 1]
            next_cursor = _encode_cursor(last.enqueued_at, last.id)
    return JobPageBody(jobs=page, next_cursor=next_cursor)


@app.get("/v1/tasks", response_model=list[TaskBody], tags=["tasks"])
def list_tasks(caller: Caller) -> list[TaskBody]:
    """Every task the token may enqueue, with its payload's JSON Schema."""
    return [
        TaskBody(name=s.name, queue=s.queue, summary=s.summary, payload_schema=s.json_schema())
        for s in sorted(CATALOG.values(), key=lambda s: s.name)
        if caller.may_use(s.name)
    ]


# ---- dead letters ------------------------------------------------------------------------------


@app.get("/v1/dead-letters", response_model=list[DeadLetterBody], tags=["dead letters"])
def list_dead_letters(
    caller: Caller,
    include_replayed: bool = False,
    limit: Annotated[int, Query(ge=1, le=MAX_PAGE)] = 50,
    offset: Annotated[int, Query(ge=0, le=MAX_OFFSET)] = 0,
) -> list[DeadLetterBody]:
    """Dead letters newest first (those not yet replayed, unless include_replayed)."""
    with session_scope() as session:
        letters = job_store.list_dead_letters(
            session,
            include_replayed=include_replayed,
            task_names=_scope_filter(caller),
            limit=limit,
            offset=offset,
        )
        return [DeadLetterBody.model_validate(_letter_fields(letter)) for letter in letters]


@app.get(
    "/v1/dead-letters/{job_id}",
    response_model=DeadLetterDetailBody,
    responses={404: {"model": ErrorBody}},
    tags=["dead letters"],
)
def get_dead_letter(job_id: uuid.UUID, caller: Caller) -> DeadLetterDetailBody:
    """One dead letter: error, traceback and payload (secret fields redacted)."""
    with session_scope() as session:
        letter = _visible_letter(session, job_id, caller)
        return DeadLetterDetailBody.model_validate(
            {
                **_letter_fields(letter),
                "payload": letter.payload,
                "traceback": letter.traceback,
                "raw_body": letter.raw_body,
                "message_id": letter.message_id,
            }
        )


@app.post(
    "/v1/dead-letters/{job_id}/replay",
    status_code=202,
    response_model=EnqueuedJobBody,
    responses={404: {"model": ErrorBody}, 409: {"model": ErrorBody}, 503: {"model": ErrorBody}},
    tags=["dead letters"],
)
def replay_dead_letter(job_id: uuid.UUID, caller: Caller, response: Response) -> EnqueuedJobBody:
    """Enqueue the dead job again with its original payload; 409 if it was already replayed."""
    with session_scope() as session:
        _visible_letter(session, job_id, caller)
    job = client.replay_dead_letter(job_id, by=f"api:{caller.name}")
    return _enqueued_body(job, response)


def _visible_letter(session: Session, job_id: uuid.UUID, caller: tokens.Caller) -> DeadLetter:
    letter = job_store.get_dead_letter(session, job_id)
    allowed = _scope_filter(caller)
    if letter is None or (allowed is not None and letter.task_name not in allowed):
        raise NotFoundError(f"no dead letter for job {job_id}")
    return letter


# ---- health and metrics ------------------------------------------------------------------------


class LiveBody(BaseModel):
    status: Literal["ok"]


@app.get("/health/live", response_model=LiveBody, tags=["health"])
def live() -> LiveBody:
    """The API process is up. Depends on nothing else, for a liveness probe."""
    return LiveBody(status="ok")


@app.get(
    "/health/fleet",
    response_model=FleetHealth,
    responses={503: {"model": FleetHealth, "description": "Unhealthy; see reasons."}},
    tags=["health"],
)
def fleet(response: Response) -> FleetHealth:
    """Queues, workers, stuck jobs, Beat and a verdict with its reasons (503 when unhealthy)."""
    health = check_fleet()
    if not health.healthy:
        response.status_code = 503
    return health


@app.get(
    "/metrics",
    tags=["health"],
    response_class=Response,
    responses={
        200: {
            "description": "The Prometheus text exposition format.",
            "content": {CONTENT_TYPE_LATEST.split(";")[0]: {"schema": {"type": "string"}}},
        },
        503: {"model": ErrorBody, "description": "The store is unreachable."},
    },
)
def metrics() -> Response:
    """Prometheus text format: jobs by task and status, durations, retries, dead letters,
    queue depth, workers and fleet health."""
    try:
        body = render(_metrics)
    except SQLAlchemyError as exc:
        raise HTTPException(503, f"metrics unavailable: {type(exc).__name__}") from None
    return Response(body, media_type=CONTENT_TYPE_LATEST)


# ---- OpenAPI: exact, with every task's payload schema (drydock.api_openapi) ---------------------


def _openapi() -> dict[str, Any]:
    if not app.openapi_schema:
        app.openapi_schema = api_openapi.build(app, (__doc__ or "").strip())
    return app.openapi_schema


app.openapi = _openapi  # type: ignore[method-assign]


# ---- helpers -----------------------------------------------------------------------------------


def _enqueued_body(job: client.EnqueuedJob, response: Response) -> EnqueuedJobBody:
    url = f"/v1/jobs/{job.id}"
    response.headers["Location"] = url
    return EnqueuedJobBody(
        id=job.id,
        task_name=job.task_name,
        queue=job.queue,
        status=job.status,
        created=job.created,
        url=url,
    )


def _job_summary(job: Job) -> JobSummaryBody:
    return JobSummaryBody(
        id=job.id,
        task_name=job.task_name,
        queue=job.queue,
        status=job.status,
        attempts=job.attempts,
        enqueued_at=job.enqueued_at,
        enqueued_by=job.enqueued_by,
        started_at=job.started_at,
        finished_at=job.finished_at,
        error_class=job.error_class,
        error=job.error,
    )


def _job_body(job: Job, events: Sequence[JobEvent]) -> JobBody:
    event_bodies = [
        EventBody(
            id=e.id,
            kind=e.kind,
            attempt=e.attempt,
            at=e.at,
            latency_ms=e.latency_ms,
            queue_wait_ms=e.queue_wait_ms,
            worker=e.worker,
            worker_pid=e.worker_pid,
            detail=e.detail,
        )
        for e in events
    ]
    return JobBody(
        **_job_summary(job).model_dump(),
        payload=job.payload,
        result=job.result,
        replay_of=job.replay_of,
        worker=job.worker,
        progress=_latest_progress(events),
        events=event_bodies,
    )


def _latest_progress(events: Sequence[JobEvent]) -> ProgressBody | None:
    for event in reversed(events):
        if event.kind == EventKind.PROGRESS.value:
            return ProgressBody(
                percent=event.detail.get("percent"),
                message=event.detail.get("message"),
                at=event.at,
                attempt=event.attempt,
            )
    return None


def _letter_fields(letter: DeadLetter) -> dict[str, Any]:
    return {name: getattr(letter, name) for name in DeadLetterBody.model_fields}


def _encode_cursor(at: datetime, job_id: uuid.UUID) -> str:
    micros = (at - _EPOCH) // _MICROSECOND
    return f"{micros}-{job_id.hex}"


def _decode_cursor(cursor: str) -> tuple[datetime, uuid.UUID]:
    if not _CURSOR.match(cursor):  # the parameter's own pattern: a safety net
        raise InputProblem.at(["query", "cursor"], "not a next_cursor this API returned")
    micros, job_id = cursor.split("-")
    return _EPOCH + int(micros) * _MICROSECOND, uuid.UUID(hex=job_id)


_EPOCH = datetime(1970, 1, 1, tzinfo=UTC)
_MICROSECOND = timedelta(microseconds=1)

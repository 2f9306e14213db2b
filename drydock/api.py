"""The HTTP API: enqueue from any language, read jobs and dead letters, health and metrics.

Served by uvicorn (`drydock api`); the OpenAPI document is at ``/openapi.json`` and lists every
task's payload schema. Everything under ``/v1`` needs a bearer token (`drydock tokens create`)
whose scopes (task-name patterns) bound what it may enqueue, read and replay: a job outside
them is 403 to enqueue and 404 to read, as if it did not exist. ``/health/*`` and ``/metrics``
carry no payloads and need no token, so probes and Prometheus can reach them.
"""

from __future__ import annotations

import base64
import binascii
import json
import uuid
from collections.abc import Sequence
from datetime import datetime
from typing import Annotated, Any, Literal

from fastapi import Body, FastAPI, Header, HTTPException, Path, Query, Request
from fastapi.openapi.utils import get_openapi
from fastapi.responses import JSONResponse, Response
from prometheus_client import CONTENT_TYPE_LATEST
from pydantic import BaseModel, Field
from sqlalchemy.exc import OperationalError, SQLAlchemyError
from sqlalchemy.orm import Session

from drydock import api_policy, api_remediation, client
from drydock.api_auth import Caller
from drydock.health import FleetHealth, check_fleet
from drydock.metrics import DrydockCollector, render
from models import jobs as job_store
from models import tokens
from models.db import session_scope
from models.tables import DeadLetter, EventKind, Job, JobEvent, JobStatus
from tasks.catalog import CATALOG
from workers.errors import (
    BrokerUnavailableError,
    DrydockError,
    NotFoundError,
    PayloadInvalidError,
    ReplayRefusedError,
    UnknownTaskError,
)
from workers.queues import WORK_QUEUES

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


class TaskBody(BaseModel):
    name: str
    queue: str
    summary: str
    payload_schema: dict[str, Any]


class ErrorBody(BaseModel):
    detail: Any


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
    responses={401: {"model": ErrorBody, "description": "Missing, invalid or revoked token."}},
)
_metrics = DrydockCollector()


for _handlers in (api_remediation.EXCEPTION_HANDLERS, api_policy.EXCEPTION_HANDLERS):
    for _error, _handler in _handlers.items():
        app.add_exception_handler(_error, _handler)
app.include_router(api_remediation.router)
app.include_router(api_policy.router)


@app.exception_handler(PayloadInvalidError)
def _invalid_payload(request: Request, exc: PayloadInvalidError) -> JSONResponse:
    detail = [
        {
            "loc": ["body", *problem.field.split(".")],
            "field": problem.field,
            "msg": problem.problem,
            "type": "payload_invalid",
        }
        for problem in exc.problems
    ]
    return JSONResponse({"detail": detail, "message": str(exc)}, status_code=422)


@app.exception_handler(UnknownTaskError)
def _unknown_task(request: Request, exc: UnknownTaskError) -> JSONResponse:
    return JSONResponse({"detail": str(exc)}, status_code=404)


@app.exception_handler(NotFoundError)
def _not_found(request: Request, exc: NotFoundError) -> JSONResponse:
    return JSONResponse({"detail": str(exc)}, status_code=404)


@app.exception_handler(client.IdempotencyConflictError)
@app.exception_handler(ReplayRefusedError)
def _conflict(request: Request, exc: DrydockError) -> JSONResponse:
    return JSONResponse({"detail": str(exc)}, status_code=409)


@app.exception_handler(BrokerUnavailableError)
def _broker_down(request: Request, exc: BrokerUnavailableError) -> JSONResponse:
    return JSONResponse({"detail": str(exc)}, status_code=503, headers={"Retry-After": "5"})


@app.exception_handler(OperationalError)
def _database_down(request: Request, exc: OperationalError) -> JSONResponse:
    message = " ".join(str(exc.orig).split())[:300]
    return JSONResponse(
        {"detail": f"the outcome store is unreachable: {message}"},
        status_code=503,
        headers={"Retry-After": "5"},
    )


# ---- jobs --------------------------------------------------------------------------------------

TaskName = Annotated[str, Path(description="A task name, e.g. builds.canary.")]


@app.post(
    "/v1/jobs/{task_name}",
    status_code=202,
    response_model=EnqueuedJobBody,
    responses={
        200: {"model": EnqueuedJobBody, "description": "Idempotency-Key already used."},
        403: {
            "model": ErrorBody,
            "description": "Outside the token's scopes, or refused by admission (with gates).",
        },
        404: {"model": ErrorBody, "description": "No such task."},
        409: {"model": ErrorBody, "description": "Idempotency-Key used with another payload."},
        422: {"model": ErrorBody, "description": "Invalid payload; each problem has its path."},
        503: {"model": ErrorBody, "description": "Broker or store unreachable; nothing kept."},
    },
    tags=["jobs"],
)
def enqueue_job(
    task_name: TaskName,
    caller: Caller,
    response: Response,
    payload: Annotated[
        dict[str, Any] | None,
        Body(description="The task's payload: see GET /v1/tasks or the task schemas below."),
    ] = None,
    idempotency_key: Annotated[
        str | None,
        Header(
            alias="Idempotency-Key",
            description="Send the same key again to get the first job back instead of a new one.",
        ),
    ] = None,
    target_asset: Annotated[
        str | None,
        Header(
            alias="X-Drydock-Target-Asset",
            description=(
                "Bind the job to an asset (id, or name within the tenant): its quarantine "
                "preempts the job while it waits; a protected asset needs an approval token."
            ),
        ),
    ] = None,
    approval_token: Annotated[
        str | None,
        Header(
            alias="X-Drydock-Approval",
            description="An approval token (POST /v1/admission/approvals) for a protected target.",
        ),
    ] = None,
) -> EnqueuedJobBody:
    """Validate and enqueue one job. 202 with the new job, or 200 with the existing one when the
    Idempotency-Key was already used with the same task and payload."""
    if task_name not in CATALOG:
        raise UnknownTaskError(task_name, list(CATALOG))
    if not caller.may_use(task_name):
        raise HTTPException(
            403,
            f"token {caller.name!r} may not enqueue {task_name} (scopes: "
            f"{', '.join(caller.scopes)})",
        )
    named = (payload or {}).get("tenant")
    if caller.tenant is not None and named is not None and named != caller.tenant:
        raise HTTPException(
            403, f"token {caller.name!r} acts for tenant {caller.tenant} only, not {named!r}"
        )
    job = client.enqueue(
        task_name,
        payload or {},
        idempotency_key,
        enqueued_by=f"api:{caller.name}",
        tenant=caller.tenant,
        target_asset=target_asset,
        approval_token=approval_token,
    )
    if not job.created:
        response.status_code = 200
    return _enqueued_body(job, response)


@app.get(
    "/v1/jobs/{job_id}",
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
    queue: Annotated[str | None, Query(description=f"One of {', '.join(WORK_QUEUES)}.")] = None,
    task: str | None = None,
    limit: Annotated[int, Query(ge=1, le=MAX_PAGE)] = 50,
    cursor: Annotated[str | None, Query(description="next_cursor of the previous page.")] = None,
) -> JobPageBody:
    """Jobs newest first, filtered, a page at a time."""
    if queue is not None and queue not in WORK_QUEUES:
        raise HTTPException(422, f"unknown queue {queue!r}; one of {', '.join(WORK_QUEUES)}")
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
    offset: Annotated[int, Query(ge=0)] = 0,
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
            {**_letter_fields(letter), "payload": letter.payload, "traceback": letter.traceback}
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


@app.get("/metrics", tags=["health"], response_class=Response)
def metrics() -> Response:
    """Prometheus text format: jobs by task and status, durations, retries, dead letters,
    queue depth, workers and fleet health."""
    try:
        body = render(_metrics)
    except SQLAlchemyError as exc:
        raise HTTPException(503, f"metrics unavailable: {type(exc).__name__}") from None
    return Response(body, media_type=CONTENT_TYPE_LATEST)


# ---- OpenAPI: publish every task's payload schema ----------------------------------------------


def _openapi() -> dict[str, Any]:
    if app.openapi_schema:
        return app.openapi_schema
    schema = get_openapi(
        title=app.title,
        version=app.version,
        summary=app.summary,
        description=(__doc__ or "").strip(),
        routes=app.routes,
    )
    components = schema.setdefault("components", {}).setdefault("schemas", {})
    refs = []
    for spec in sorted(CATALOG.values(), key=lambda s: s.name):
        payload_schema = spec.payload.model_json_schema(ref_template="#/components/schemas/{model}")
        for name, definition in payload_schema.pop("$defs", {}).items():
            components.setdefault(name, definition)
        payload_schema["title"] = spec.name
        payload_schema["description"] = f"{spec.summary} POST /v1/jobs/{spec.name}"
        key = "payload." + spec.name
        components[key] = payload_schema
        refs.append({"$ref": f"#/components/schemas/{key}"})
    operation = schema["paths"]["/v1/jobs/{task_name}"]["post"]
    operation["requestBody"] = {
        "required": False,
        "description": "The payload of the task named in the path (each task's schema below).",
        "content": {"application/json": {"schema": {"oneOf": refs}}},
    }
    app.openapi_schema = schema
    return schema


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
    raw = json.dumps([at.isoformat(), str(job_id)]).encode()
    return base64.urlsafe_b64encode(raw).decode().rstrip("=")


def _decode_cursor(cursor: str) -> tuple[datetime, uuid.UUID]:
    try:
        raw = base64.urlsafe_b64decode(cursor + "=" * (-len(cursor) % 4))
        at, job_id = json.loads(raw)
        return datetime.fromisoformat(at), uuid.UUID(job_id)
    except (ValueError, TypeError, binascii.Error):
        raise HTTPException(422, "cursor is not a next_cursor this API returned") from None

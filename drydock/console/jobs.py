"""The console's fleet pages: the overview, jobs (a page at a time, one job's timeline, enqueue)
and dead letters (show, replay, purge with a confirmation). What a page shows is what the
caller's token may read through the API: its tasks, its tenant's jobs; payloads as stored, with
their secret fields redacted."""

from __future__ import annotations

import json
import re
import uuid
from typing import Any

from fastapi import APIRouter, Request
from fastapi.responses import Response
from starlette.concurrency import run_in_threadpool

from catalog import CATALOG
from dispatch import enqueue as client
from drydock.api.auth import visible_tasks
from drydock.api.dead_letters import visible_letter
from drydock.api.jobs import CURSOR_PATTERN, decode_cursor, encode_cursor, visible_job
from drydock.console.web import (
    PageProblem,
    checked_form,
    current_session,
    redirect,
    render,
    uuid_or_404,
)
from drydock.health import assess, gather
from kernel.errors import DrydockError, NotFoundError
from kernel.settings import get_settings
from kernel.topology import WORK_QUEUES
from models import job_reads, tokens
from models.db import session_scope
from models.jobs import TERMINAL_STATUSES, JobStatus

router = APIRouter()
PAGE = 50
# The enqueue form's payload: bounded as the API bounds a body.
MAX_FORM_PAYLOAD = 256 * 1024


# ---- overview --------------------------------------------------------------------------------


@router.get("/")
async def overview(request: Request) -> Response:
    session = await current_session(request)
    settings = get_settings()
    # Peers are not probed for a page view: a registry's timeout would hold the page.
    health = await run_in_threadpool(lambda: assess(gather(settings, probe_peers=False), settings))
    return render(
        request,
        "overview.html",
        # A tenant's token is not shown other tenants' stuck jobs.
        {"health": health, "show_stuck": session.caller.tenant is None},
        session=session,
    )


# ---- jobs ------------------------------------------------------------------------------------


def _job_page(
    caller: tokens.Caller,
    status: str | None,
    queue: str | None,
    task: str | None,
    cursor: str | None,
) -> dict[str, Any]:
    if status is not None and status not in {s.value for s in JobStatus}:
        raise PageProblem(422, f"status: one of {', '.join(s.value for s in JobStatus)}")
    if queue is not None and queue not in WORK_QUEUES:
        raise PageProblem(422, f"queue: one of {', '.join(WORK_QUEUES)}")
    if cursor is not None and not _cursor_ok(cursor):
        raise PageProblem(422, "cursor: not a page position this console gave")
    with session_scope() as session:
        rows = job_reads.list_jobs(
            session,
            status=status,
            queue=queue,
            task_name=task[:200] if task else None,
            task_names=visible_tasks(caller),
            tenant=caller.tenant,
            after=decode_cursor(cursor) if cursor else None,
            limit=PAGE + 1,
        )
        jobs = [
            {
                "id": str(job.id),
                "task_name": job.task_name,
                "queue": job.queue,
                "status": job.status,
                "attempts": job.attempts,
                "enqueued_at": job.enqueued_at,
                "finished_at": job.finished_at,
                "error": (job.error or "")[:200],
            }
            for job in rows[:PAGE]
        ]
        following = None
        if len(rows) > PAGE:
            following = encode_cursor(rows[PAGE - 1].enqueued_at, rows[PAGE - 1].id)
        return {"jobs": jobs, "next_cursor": following}


def _cursor_ok(cursor: str) -> bool:
    return re.match(CURSOR_PATTERN, cursor) is not None


def _tasks_for(caller: tokens.Caller) -> list[str]:
    return sorted(name for name in CATALOG if caller.may_use(name))


@router.get("/jobs")
async def jobs(
    request: Request,
    status: str | None = None,
    queue: str | None = None,
    task: str | None = None,
    cursor: str | None = None,
) -> Response:
    session = await current_session(request)
    filters = {"status": status or None, "queue": queue or None, "task": task or None}
    page = await run_in_threadpool(_job_page, session.caller, **filters, cursor=cursor or None)
    return render(
        request,
        "jobs.html",
        {
            **page,
            "filters": filters,
            "statuses": [s.value for s in JobStatus],
            "queues": WORK_QUEUES,
            "tasks": _tasks_for(session.caller),
            "form": {},
            "error": None,
        },
        session=session,
    )


def _enqueue(caller: tokens.Caller, form: dict[str, str]) -> uuid.UUID:
    task_name = form.get("task_name", "")
    if task_name not in CATALOG:
        raise PageProblem(422, f"unknown task {task_name!r}")
    if not caller.may_use(task_name):
        raise PageProblem(403, f"token {caller.name!r} may not enqueue {task_name}")
    text = form.get("payload", "").strip() or "{}"
    if len(text.encode()) > MAX_FORM_PAYLOAD:
        raise PageProblem(413, f"the payload is over {MAX_FORM_PAYLOAD} bytes")
    try:
        payload = json.loads(text)
    except ValueError as exc:
        raise PageProblem(422, f"the payload is not JSON: {exc}") from None
    if not isinstance(payload, dict):
        raise PageProblem(422, "the payload must be a JSON object")
    named = payload.get("tenant")
    if caller.tenant is not None and named is not None and named != caller.tenant:
        raise PageProblem(403, f"token {caller.name!r} acts for tenant {caller.tenant} only")
    try:
        job = client.enqueue(
            task_name,
            payload,
            form.get("idempotency_key") or None,
            enqueued_by=f"console:{caller.name}",
            tenant=caller.tenant,
        )
    except DrydockError as exc:
        raise PageProblem(422, str(exc)) from None
    return job.id


@router.post("/jobs")
async def enqueue_job(request: Request) -> Response:
    session, form = await checked_form(request)
    try:
        job_id = await run_in_threadpool(_enqueue, session.caller, form)
    except PageProblem as exc:
        # The form again, as it was filled, with the reason.
        page = await run_in_threadpool(_job_page, session.caller, None, None, None, None)
        return render(
            request,
            "jobs.html",
            {
                **page,
                "filters": {"status": None, "queue": None, "task": None},
                "statuses": [s.value for s in JobStatus],
                "queues": WORK_QUEUES,
                "tasks": _tasks_for(session.caller),
                "form": form,
                "error": exc.message,
            },
            session=session,
        )
    return redirect(f"/console/jobs/{job_id}")


def _job(caller: tokens.Caller, job_id: uuid.UUID) -> dict[str, Any]:
    with session_scope() as session:
        try:
            job = visible_job(session, job_id, caller)
        except NotFoundError as exc:
            raise PageProblem(404, str(exc)) from None
        events = job_reads.job_events(session, job_id)
        progress = next((e.detail for e in reversed(events) if e.kind == "progress"), None)
        letter = job_reads.get_dead_letter(session, job_id)
        return {
            "job": {
                "id": str(job.id),
                "task_name": job.task_name,
                "queue": job.queue,
                "status": job.status,
                "attempts": job.attempts,
                "tenant": job.tenant,
                "enqueued_at": job.enqueued_at,
                "enqueued_by": job.enqueued_by,
                "started_at": job.started_at,
                "finished_at": job.finished_at,
                "payload": job.payload,
                "result": job.result,
                "error_class": job.error_class,
                "error": job.error,
                "replay_of": str(job.replay_of) if job.replay_of else None,
            },
            "events": [
                {
                    "kind": e.kind,
                    "attempt": e.attempt,
                    "at": e.at,
                    "worker": e.worker,
                    "latency_ms": e.latency_ms,
                    "detail": e.detail,
                }
                for e in events
            ],
            "progress": progress,
            "dead_letter": letter is not None,
            "finished": job.status in {s.value for s in TERMINAL_STATUSES},
        }


@router.get("/jobs/{job_id}")
async def job(request: Request, job_id: str) -> Response:
    session = await current_session(request)
    shown = await run_in_threadpool(_job, session.caller, _job_id(job_id))
    return render(request, "job.html", shown, session=session)


def _job_id(text: str) -> uuid.UUID:
    return uuid_or_404(text, "job")


# ---- dead letters ----------------------------------------------------------------------------


def _letters(caller: tokens.Caller, include_replayed: bool) -> list[dict[str, Any]]:
    with session_scope() as session:
        letters = job_reads.list_dead_letters(
            session,
            include_replayed=include_replayed,
            task_names=visible_tasks(caller),
            tenant=caller.tenant,
            limit=PAGE,
        )
        return [
            {
                "job_id": str(letter.job_id),
                "task_name": letter.task_name,
                "queue": letter.queue,
                "reason": letter.reason,
                "error_class": letter.error_class,
                "message": letter.message[:300],
                "dead_lettered_at": letter.dead_lettered_at,
                "replayed_at": letter.replayed_at,
                "replay_job_id": str(letter.replay_job_id) if letter.replay_job_id else None,
            }
            for letter in letters
        ]


@router.get("/dead-letters")
async def dead_letters(request: Request, replayed: bool = False) -> Response:
    session = await current_session(request)
    letters = await run_in_threadpool(_letters, session.caller, replayed)
    return render(
        request, "dead_letters.html", {"letters": letters, "replayed": replayed}, session=session
    )


def _letter(caller: tokens.Caller, job_id: uuid.UUID) -> dict[str, Any]:
    with session_scope() as session:
        try:
            letter = visible_letter(session, job_id, caller)
        except NotFoundError as exc:
            raise PageProblem(404, str(exc)) from None
        return {
            "job_id": str(letter.job_id),
            "task_name": letter.task_name,
            "queue": letter.queue,
            "reason": letter.reason,
            "error_class": letter.error_class,
            "message": letter.message,
            "traceback": letter.traceback,
            "payload": letter.payload,
            "attempts": letter.attempts,
            "raw_body": letter.raw_body,
            "dead_lettered_at": letter.dead_lettered_at,
            "replayed_at": letter.replayed_at,
            "replayed_by": letter.replayed_by,
            "replay_job_id": str(letter.replay_job_id) if letter.replay_job_id else None,
        }


@router.get("/dead-letters/{job_id}")
async def dead_letter(request: Request, job_id: str) -> Response:
    session = await current_session(request)
    letter = await run_in_threadpool(_letter, session.caller, _job_id(job_id))
    return render(request, "dead_letter.html", {"letter": letter, "error": None}, session=session)


def _replay(caller: tokens.Caller, job_id: uuid.UUID) -> uuid.UUID:
    _letter(caller, job_id)
    try:
        return client.replay_dead_letter(job_id, by=f"console:{caller.name}").id
    except NotFoundError as exc:
        raise PageProblem(404, str(exc)) from None
    except DrydockError as exc:
        raise PageProblem(409, str(exc)) from None


@router.post("/dead-letters/{job_id}/replay")
async def replay(request: Request, job_id: str) -> Response:
    session, _ = await checked_form(request)
    replayed = await run_in_threadpool(_replay, session.caller, _job_id(job_id))
    return redirect(f"/console/jobs/{replayed}")


def _purge(caller: tokens.Caller, job_id: uuid.UUID, confirmed: str | None) -> None:
    _letter(caller, job_id)
    if confirmed != str(job_id):
        raise PageProblem(422, "to purge, confirm by typing the job's id")
    try:
        client.purge_dead_letters(job_ids=[job_id])
    except NotFoundError as exc:
        raise PageProblem(404, str(exc)) from None


@router.post("/dead-letters/{job_id}/purge")
async def purge(request: Request, job_id: str) -> Response:
    session, form = await checked_form(request)
    parsed = _job_id(job_id)
    try:
        await run_in_threadpool(_purge, session.caller, parsed, form.get("confirm"))
    except PageProblem as exc:
        if exc.status != 422:
            raise
        letter = await run_in_threadpool(_letter, session.caller, parsed)
        return render(
            request, "dead_letter.html", {"letter": letter, "error": exc.message}, session=session
        )
    return redirect("/console/dead-letters")

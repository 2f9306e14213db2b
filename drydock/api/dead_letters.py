"""``/v1/dead-letters``: jobs that gave up (or messages refused before they could run), each
shown with its error and payload, and replayed on request."""

from __future__ import annotations

import uuid
from datetime import datetime
from typing import Annotated, Any

from fastapi import FastAPI, Query
from fastapi.responses import Response
from sqlalchemy.orm import Session

from dispatch import enqueue as client
from drydock.api.auth import Caller, visible_tasks
from drydock.api.bodies import EnqueuedJobBody, RowBody, enqueued_body
from drydock.api.errors import ErrorBody
from drydock.api.inputs import MAX_OFFSET, MAX_PAGE
from kernel.errors import NotFoundError
from models import job_reads, tokens
from models.db import session_scope
from models.jobs import DeadLetter


class DeadLetterBody(RowBody):
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


def install(app: FastAPI) -> None:
    app.add_api_route(
        "/v1/dead-letters",
        list_dead_letters,
        methods=["GET"],
        response_model=list[DeadLetterBody],
        tags=["dead letters"],
    )
    app.add_api_route(
        "/v1/dead-letters/{job_id}",
        get_dead_letter,
        methods=["GET"],
        response_model=DeadLetterDetailBody,
        responses={404: {"model": ErrorBody}},
        tags=["dead letters"],
    )
    app.add_api_route(
        "/v1/dead-letters/{job_id}/replay",
        replay_dead_letter,
        methods=["POST"],
        status_code=202,
        response_model=EnqueuedJobBody,
        responses={
            404: {"model": ErrorBody},
            409: {"model": ErrorBody},
            503: {"model": ErrorBody},
        },
        tags=["dead letters"],
    )


def list_dead_letters(
    caller: Caller,
    include_replayed: bool = False,
    limit: Annotated[int, Query(ge=1, le=MAX_PAGE)] = 50,
    offset: Annotated[int, Query(ge=0, le=MAX_OFFSET)] = 0,
) -> list[DeadLetterBody]:
    """Dead letters newest first (those not yet replayed, unless include_replayed)."""
    with session_scope() as session:
        letters = job_reads.list_dead_letters(
            session,
            include_replayed=include_replayed,
            task_names=visible_tasks(caller),
            # A tenant token sees its tenant's dead letters only.
            tenant=caller.tenant,
            limit=limit,
            offset=offset,
        )
        return [DeadLetterBody.model_validate(letter) for letter in letters]


def get_dead_letter(job_id: uuid.UUID, caller: Caller) -> DeadLetterDetailBody:
    """One dead letter: error, traceback and payload (secret fields redacted)."""
    with session_scope() as session:
        return DeadLetterDetailBody.model_validate(visible_letter(session, job_id, caller))


def replay_dead_letter(job_id: uuid.UUID, caller: Caller, response: Response) -> EnqueuedJobBody:
    """Enqueue the dead job again with its original payload; 409 if it was already replayed."""
    with session_scope() as session:
        visible_letter(session, job_id, caller)
    job = client.replay_dead_letter(job_id, by=f"api:{caller.name}")
    return enqueued_body(job, response)


def visible_letter(session: Session, job_id: uuid.UUID, caller: tokens.Caller) -> DeadLetter:
    """The dead letter, if the caller may see it (its task in scope, its tenant's), else 404."""
    letter = job_reads.get_dead_letter(session, job_id)
    allowed = visible_tasks(caller)
    if (
        letter is None
        or (allowed is not None and letter.task_name not in allowed)
        or (caller.tenant is not None and job_reads.tenant_of_job(session, job_id) != caller.tenant)
    ):
        raise NotFoundError(f"no dead letter for job {job_id}")
    return letter

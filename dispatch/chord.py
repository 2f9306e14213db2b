"""Jobs that run together: members that may run in parallel and a callback once all finished.

The same path as ``dispatch.enqueue`` for each job (validated against the catalog, admitted,
recorded in PostgreSQL before anything is sent), sent as one Celery chord. The ids are the
caller's: deterministic ids (a build run's push jobs, say) make a second send of the same chord
(its sender redelivered) record nothing new, and the jobs' own idempotence (an attempt of a job
that has its outcome does nothing) makes its messages harmless.
"""

from __future__ import annotations

import uuid
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from dispatch.enqueue import (
    BROKER_ERRORS,
    PreparedJob,
    broker_unavailable,
    celery_app,
    message_options,
    prepare,
)
from kernel.logs import get_logger
from models import jobs as job_store
from models.db import session_scope
from policy.admission import unbound


@dataclass(frozen=True)
class JobRequest:
    """One job of a chord: its task, its id (the caller's, for idempotence) and its payload."""

    task_name: str
    job_id: uuid.UUID
    payload: Mapping[str, Any]


def send_chord(
    members: Sequence[JobRequest], callback: JobRequest, *, enqueued_by: str
) -> list[uuid.UUID]:
    """Validate, admit and record every job, then send ``members`` as a chord whose ``callback``
    starts once they have all finished. Returns the job ids, the callback's last.

    Raises PayloadInvalidError (naming the task and the field) before anything is recorded, and
    BrokerUnavailableError when the chord could not be sent (its jobs stay recorded, queued:
    the caller's retry sends the same ids again). The jobs act for no tenant and are bound to no
    asset, so their admission is settled without a read and goes into their rows.
    """
    jobs = [*members, callback]
    prepared = [(request, prepare(request.task_name, request.payload)) for request in jobs]
    with session_scope() as session:
        for request, checked in prepared:
            job_store.create_job(
                session,
                job_store.NewJob(
                    id=request.job_id,
                    task_name=request.task_name,
                    queue=checked.spec.queue,
                    payload=checked.redacted,
                    sealed_secrets=checked.sealed,
                    enqueued_by=enqueued_by,
                    policy_context=unbound(request.task_name).context(),
                ),
            )
    # Here, not at the top: domain code that sends chords must import without Celery.
    from celery import chord

    app = celery_app()
    header = [_signature(app, request, checked) for request, checked in prepared[:-1]]
    body = _signature(app, *prepared[-1])
    try:
        # Bound to Drydock's app: in a process that is not a worker it is not the current one.
        chord(header, body, app=app).apply_async()
    except BROKER_ERRORS as exc:
        raise broker_unavailable(f"the chord of {callback.task_name}", exc) from None
    get_logger(job_id=str(callback.job_id), task=callback.task_name).info(
        "job.chord_enqueued",
        action="enqueued",
        enqueued_by=enqueued_by,
        members=[str(request.job_id) for request in members],
    )
    return [request.job_id for request in jobs]


def _signature(app: Any, request: JobRequest, checked: PreparedJob) -> Any:
    options = message_options(checked, request.job_id)
    return app.signature(checked.spec.name, kwargs=options.pop("kwargs"), immutable=True, **options)

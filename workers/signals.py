"""The Celery signals every worker answers: logging set up, fresh connections after a fork,
and an outcome for a job whose message was dropped before it ran.

Connected when ``workers.app`` imports this module; a failing handler logs and never stops the
worker (Celery's signal dispatch catches and logs what a receiver raises).
"""

from __future__ import annotations

from typing import Any

from celery.signals import task_revoked, worker_init, worker_process_init

from kernel.logs import get_logger


@worker_init.connect
def _configure_worker_logging(**_: Any) -> None:
    from kernel.logs import configure_logging

    configure_logging()


@worker_process_init.connect
def _fresh_connections_after_fork(**_: Any) -> None:
    from models.db import dispose_engines

    dispose_engines()


@task_revoked.connect
def _record_dropped_job(
    request: Any = None,
    terminated: bool = False,
    expired: bool = False,
    **_: Any,
) -> None:
    """A message Celery drops instead of running (its ``expires`` passed while it waited, or it
    was revoked in Flower) would leave its job ``queued`` forever: record it as preempted with
    the reason. A running job that was terminated is the base task's to record (its pool
    process died: the hard-limit and lost-worker paths)."""
    if request is None or terminated:
        return
    from models import jobs as job_store
    from models.db import session_scope
    from workers.base_task import job_uuid

    job_id = job_uuid(str(request.id))
    if expired:
        error_class = "Expired"
        reason = "expired before it started: its expiry passed while it waited in the queue"
    else:
        error_class = "Revoked"
        reason = "revoked before it started (by an operator, through Flower or Celery's control)"
    with session_scope() as session:
        recorded = job_store.record_unrun(session, job_id, error_class=error_class, reason=reason)
    get_logger(job_id=str(job_id), task=getattr(request, "task", None)).warning(
        "job.dropped_unrun", action="preempted", reason=reason, recorded=recorded
    )

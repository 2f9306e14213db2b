"""Beat's remediation sweep: runs whose approval wait or approval ran out expire, runs whose job
never reached the broker are sent, runs whose job died before concluding fail, and quarantined
assets whose class names a playbook get a run of it by themselves (requested as
``auto:quarantine``; protected assets' runs still wait for an approval). Each part reads only
due rows."""

from __future__ import annotations

import uuid
from datetime import UTC, datetime, timedelta
from typing import Any

from sqlalchemy import select

from catalog.remediation import SweepRunsPayload
from kernel.context import JobContext
from kernel.errors import DrydockError
from kernel.logs import get_logger
from models import remediation as store
from models.db import session_scope
from models.jobs import Job, JobStatus
from models.remediation import (
    RemediationRun,
    RunState,
)
from tasks.remediation.domain import fail_orphaned_run
from tasks.remediation.promotion import finish_unfinished_loops
from tasks.remediation.requests import request_run, send_run
from tasks.remediation.run_records import actor_of, expire_run

# A queued run whose job was not sent is sent by the sweep once it is this old (the request
# that recorded it may still be sending).
UNSENT_GRACE = timedelta(seconds=60)
# Who asked, on the runs the sweep requests for quarantined assets.
AUTO_REQUESTER = "auto:quarantine"


def sweep_runs(payload: SweepRunsPayload, ctx: JobContext) -> dict[str, Any]:
    """Expire runs whose approval wait or approval ran out; send queued runs whose job never
    reached the broker; fail started runs whose job was dead-lettered without concluding
    them (the hard time limit kills a task before it can); finish the promotion loops of
    workspaces whose loop job was lost."""
    now = datetime.now(UTC)
    actor = actor_of(ctx)
    expired: list[str] = []
    with session_scope() as session:
        for run in store.runs_waiting_past(session, now, payload.limit):
            if run.state == RunState.PENDING_APPROVAL.value:
                why = "nobody approved it before its deadline"
            else:
                why = "its approval expired before it started"
            expire_run(session, run, actor, why)
            expired.append(str(run.id))
        unsent = [run.id for run in store.unsent_runs(session, now - UNSENT_GRACE, payload.limit)]
        orphaned = [
            run.id
            for run in session.scalars(
                select(RemediationRun)
                .join(Job, Job.id == RemediationRun.job_id)
                .where(
                    RemediationRun.state.in_([RunState.RUNNING.value, RunState.QUEUED.value]),
                    RemediationRun.attempts > 0,
                    Job.status == JobStatus.DEAD_LETTERED.value,
                )
                .limit(payload.limit)
            )
        ]
        awaiting = store.awaiting_remediation(session, payload.limit)
    sent = [str(run_id) for run_id in unsent if send_run(run_id) is not None]
    requested = [str(run_id) for item in awaiting if (run_id := _request_for(item)) is not None]
    failed = [
        str(run_id)
        for run_id in orphaned
        if fail_orphaned_run(run_id, "its job was dead-lettered before it concluded", actor)
    ]
    loops = finish_unfinished_loops(now, payload.limit, actor)
    return {
        "expired": expired,
        "sent": sent,
        "failed": failed,
        "requested": requested,
        "promotion_loops": loops,
    }


def _request_for(item: store.AwaitingRemediation) -> uuid.UUID | None:
    """Request the class's playbook for a quarantined asset, through the one-active-run rule
    (a request racing with an operator's joins the same run). A playbook the tenant does not
    have, or one that does not apply to the asset, is logged and skipped: the next sweep tries
    again once an operator has fixed it."""
    try:
        outcome = request_run(
            tenant=item.tenant,
            asset=str(item.asset_id),
            playbook=item.playbook,
            requested_by=AUTO_REQUESTER,
            reason=f"quarantined ({item.cause}); the asset's class names playbook {item.playbook}",
        )
    except DrydockError as exc:
        get_logger(asset_id=str(item.asset_id)).warning(
            "remediation.auto_request_refused", playbook=item.playbook, error=str(exc)[:300]
        )
        return None
    return outcome.run_id if outcome.created else None

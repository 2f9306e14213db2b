"""What every part of a remediation run's life shares: the run task's name, the audit actions,
how a run ends (``finish_run``, ``expire_run``) and how it is shown as a job's result."""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Any

from sqlalchemy.orm import Session

from kernel.context import JobContext
from models import remediation as store
from models import trust
from models.remediation import (
    RemediationAuditAction,
    RemediationRefusedError,
    RemediationRun,
    RunState,
)
from models.trust import TrustAsset

A = RemediationAuditAction

RUN_TASK = "remediation.run_playbook"


def actor_of(ctx: JobContext) -> str:
    return f"worker:{ctx.who.hostname}"


def check_tenant(tenant: str) -> str:
    if not tenant or len(tenant) > 100 or tenant != tenant.strip():
        raise RemediationRefusedError(f"tenant {tenant!r}: 1 to 100 characters, no padding")
    return tenant


def trust_context(session: Session, asset: TrustAsset) -> dict[str, Any]:
    """Where the asset stood when the run was asked for: its state, the transition that put it
    there and its newest verdict."""
    history = trust.history(session, asset.id)
    last = history[-1] if history else None
    verdict = trust.latest_verdict(session, asset.id)
    return {
        "state": asset.state,
        "version": asset.version,
        "last_transition": None
        if last is None
        else {
            "from": last.from_state,
            "to": last.to_state,
            "cause": last.cause,
            "detail": last.detail[:1000],
            "actor": last.actor,
            "at": iso_time(last.created_at),
        },
        "last_verdict": None
        if verdict is None
        else {
            "id": verdict.id,
            "kind": verdict.kind,
            "verified": verdict.verified,
            "summary": verdict.summary[:1000],
            "at": iso_time(verdict.created_at),
        },
    }


def expire_run(session: Session, run: RemediationRun, actor: str, reason: str) -> None:
    finish_run(session, run, RunState.EXPIRED, A.EXPIRED, actor, reason)


def finish_run(
    session: Session,
    run: RemediationRun,
    state: RunState,
    action: RemediationAuditAction,
    actor: str,
    reason: str,
    **detail: Any,
) -> None:
    run.state = state.value
    run.finished_at = datetime.now(UTC)
    if state is not RunState.SUCCEEDED:
        run.error = reason
    store.audit(session, run, action, actor, reason, **detail)


def run_result(run: RemediationRun, *, repeated: bool = False) -> dict[str, Any]:
    """A run's outcome as a job result (and the API's run summary)."""
    result = {
        "run_id": str(run.id),
        "tenant": run.tenant,
        "asset_id": str(run.asset_id),
        "playbook": run.playbook_name,
        "playbook_version": run.playbook_version,
        "state": run.state,
        "attempts": run.attempts,
        "error": run.error,
        "evidence_nonce": run.evidence_nonce,
    }
    if repeated:
        result["repeated"] = True
    return result


def iso_time(moment: datetime | None) -> str | None:
    return None if moment is None else moment.astimezone(UTC).isoformat()

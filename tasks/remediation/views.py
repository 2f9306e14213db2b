"""Reading remediation runs as operators see them (``drydock remediation runs``, the HTTP API):
one run with its audit trail and step artifacts, and pages of runs."""

from __future__ import annotations

import uuid
from typing import Any

from models import remediation as store
from models import trust
from models.db import session_scope
from models.remediation import (
    RemediationRun,
)
from models.trust import TrustAsset
from tasks.remediation.run_records import iso_time


def run_view(run: RemediationRun) -> dict[str, Any]:
    """A run as the CLI and the API show it."""
    return {
        "id": str(run.id),
        "tenant": run.tenant,
        "asset_id": str(run.asset_id),
        "playbook": run.playbook_name,
        "playbook_version": run.playbook_version,
        "state": run.state,
        "reason": run.reason,
        "requested_by": run.requested_by,
        "requested_at": iso_time(run.requested_at),
        "approval_reasons": list(run.approval_reasons),
        "approval_deadline": iso_time(run.approval_deadline),
        "approved_by": run.approved_by,
        "approved_at": iso_time(run.approved_at),
        "approval_expires_at": iso_time(run.approval_expires_at),
        "trust_context": run.trust_context,
        "attempts": run.attempts,
        "job_id": str(run.job_id) if run.job_id else None,
        "started_at": iso_time(run.started_at),
        "finished_at": iso_time(run.finished_at),
        "error": run.error,
        "outputs": run.outputs,
        "evidence_nonce": run.evidence_nonce,
    }


def describe_run(run_id: uuid.UUID, *, tenant: str | None) -> dict[str, Any]:
    """A run with its asset, its audit trail and every step's artifact."""
    with session_scope() as session:
        run = store.get_run(session, run_id, tenant)
        asset = session.get(TrustAsset, run.asset_id)
        view = run_view(run)
        view["asset"] = (
            None
            if asset is None
            else {
                "name": asset.name,
                "kind": asset.kind,
                "state": asset.state,
            }
        )
        view["audit"] = [
            {
                "action": row.action,
                "actor": row.actor,
                "reason": row.reason,
                "detail": row.detail,
                "at": iso_time(row.at),
            }
            for row in store.audit_trail(session, run.id)
        ]
        view["artifacts"] = [
            {
                "attempt": row.attempt,
                "step": row.step_index + 1,
                "name": row.step_name,
                "ok": row.ok,
                "timed_out": row.timed_out,
                "exit_code": row.exit_code,
                "error": row.error,
                "stdout": row.stdout,
                "stderr": row.stderr,
                "stdout_bytes": row.stdout_bytes,
                "stderr_bytes": row.stderr_bytes,
                "truncated": row.truncated,
                "outputs": row.outputs,
                "started_at": iso_time(row.started_at),
                "finished_at": iso_time(row.finished_at),
                "duration_ms": row.duration_ms,
            }
            for row in store.artifacts(session, run.id)
        ]
        return view


def list_run_views(
    *,
    tenant: str | None,
    state: str | None = None,
    asset: str | None = None,
    limit: int = 50,
) -> list[dict[str, Any]]:
    with session_scope() as session:
        asset_id = trust.find_asset(session, asset, tenant).id if asset else None
        return [
            run_view(run)
            for run in store.list_runs(
                session, tenant=tenant, state=state, asset_id=asset_id, limit=limit
            )
        ]

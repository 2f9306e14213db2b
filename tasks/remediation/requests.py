"""Asking for a remediation run and deciding on it: request (one active run per asset and
playbook), approve with a signed token, reject, cancel, send its job; and the per-asset settings
(protection, connection) requests are judged by. The run's life is told in
``tasks.remediation.domain``."""

from __future__ import annotations

import dataclasses
import uuid
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Any

from sqlalchemy.orm import Session

from dispatch.enqueue import enqueue
from kernel.errors import BrokerUnavailableError, TransientError
from kernel.logs import get_logger
from kernel.redaction import is_secret_name
from kernel.settings import get_settings
from models import policy as policy_store
from models import remediation as store
from models import remediation_workspaces as spaces
from models import trust
from models.db import session_scope
from models.remediation import (
    RemediationPlaybook,
    RemediationRefusedError,
    RemediationRun,
    RunState,
)
from models.trust import Move, TrustAsset, TrustState
from policy import approvals
from tasks.remediation.run_records import (
    RUN_TASK,
    A,
    check_tenant,
    expire_run,
    finish_run,
    iso_time,
    trust_context,
)


@dataclass(frozen=True)
class RequestOutcome:
    run_id: uuid.UUID
    # False: the asset and playbook already had an active run, and this request joined it.
    created: bool
    state: str
    job_id: uuid.UUID | None
    approval_reasons: list[str]


def request_run(
    *, tenant: str, asset: str, playbook: str, requested_by: str, reason: str = ""
) -> RequestOutcome:
    """Ask for ``playbook`` to run against ``asset`` (an id or a name of the tenant's).

    Refused (RemediationRefusedError, with the reason) when the asset is not distrusted or the
    playbook does not apply to its kind. When the asset and playbook already have an active
    run, that run is returned (``created`` False) and the request is audited as joining it.
    A run that needs no approval is enqueued at once."""
    check_tenant(tenant)
    for _ in range(5):
        with session_scope() as session:
            target = trust.find_asset(session, asset, tenant)
            # The scope's promoted version where a workspace promotion covers the asset.
            book = spaces.playbook_for_asset(session, tenant, playbook, target)
            existing = store.active_run(session, tenant, target.id, book.name)
            if existing is None:
                _check_requestable(target, book)
                reasons = _approval_reasons(session, target, book)
                now = datetime.now(UTC)
                state = RunState.PENDING_APPROVAL if reasons else RunState.QUEUED
                ttl = get_settings().remediation_request_ttl_seconds
                run_id = store.insert_run_unless_active(
                    session,
                    {
                        "id": uuid.uuid4(),
                        "tenant": tenant,
                        "asset_id": target.id,
                        "playbook_id": book.id,
                        "playbook_name": book.name,
                        "playbook_version": book.version,
                        "state": state.value,
                        "reason": reason,
                        "requested_by": requested_by,
                        "requested_at": now,
                        "approval_reasons": reasons,
                        "approval_deadline": now + timedelta(seconds=ttl) if reasons else None,
                        "trust_context": trust_context(session, target),
                        "attempts": 0,
                        "outputs": {},
                    },
                )
                if run_id is not None:
                    run = store.get_run(session, run_id, tenant)
                    store.audit(session, run, A.REQUESTED, requested_by, reason, state=state.value)
                    outcome = _outcome(run, created=True)
                    break
                # Another request inserted first: join it (read on the next pass).
                continue
            store.audit(session, existing, A.JOINED, requested_by, reason)
            outcome = _outcome(existing, created=False)
            break
    else:
        raise TransientError("the asset's runs kept changing under the request; try again")
    if outcome.state == RunState.QUEUED and outcome.job_id is None:
        outcome = dataclasses.replace(outcome, job_id=send_run(outcome.run_id))
    return outcome


def _outcome(run: RemediationRun, *, created: bool) -> RequestOutcome:
    return RequestOutcome(
        run_id=run.id,
        created=created,
        state=run.state,
        job_id=run.job_id,
        approval_reasons=list(run.approval_reasons),
    )


def _check_requestable(asset: TrustAsset, playbook: RemediationPlaybook) -> None:
    name = f"{asset.tenant}/{asset.name}"
    if asset.kind not in playbook.asset_kinds:
        raise RemediationRefusedError(
            f"playbook {playbook.name} applies to {', '.join(playbook.asset_kinds)} assets; "
            f"{name} is a {asset.kind}"
        )
    if asset.state != TrustState.QUARANTINED.value:
        hint = {
            TrustState.REMEDIATING.value: "another playbook is remediating it now",
            TrustState.TRUSTED.value: "it is trusted",
            TrustState.PENDING_ATTESTATION.value: "it is waiting for fresh evidence",
            TrustState.STALE.value: "its evidence expired: it needs fresh evidence, not repair",
            TrustState.UNKNOWN.value: "it has never been attested",
        }.get(asset.state, asset.state)
        raise RemediationRefusedError(
            f"asset {name} is {asset.state}, not distrusted ({hint}): remediation runs only "
            "against quarantined assets"
        )


def _approval_reasons(
    session: Session, asset: TrustAsset, playbook: RemediationPlaybook
) -> list[str]:
    reasons = []
    if playbook.requires_approval:
        reasons.append(f"playbook {playbook.name} requires approval")
    if asset.protected:
        reasons.append(f"asset {asset.tenant}/{asset.name} is protected")
    if policy_store.tenant_requires_approval(session, asset.tenant):
        reasons.append(f"tenant {asset.tenant} requires approval for remediation")
    return reasons


@dataclass(frozen=True)
class ApprovalOutcome:
    run_id: uuid.UUID
    token: str
    expires_at: datetime
    job_id: uuid.UUID | None


def approve_run(
    run_id: uuid.UUID, *, tenant: str | None, approver: str, reason: str = ""
) -> ApprovalOutcome:
    """Approve a pending run: issue its token, queue it, send its job. The requester cannot
    approve their own request; a run whose approval wait ran out expires instead."""
    key = approvals.signing_key()
    now = datetime.now(UTC)
    expired = False
    with session_scope() as session:
        run = store.get_run(session, run_id, tenant, lock=True)
        if run.state != RunState.PENDING_APPROVAL.value:
            raise RemediationRefusedError(_not_pending(run))
        if run.approval_deadline is not None and run.approval_deadline <= now:
            expire_run(session, run, approver, "nobody approved it before its deadline")
            expired = True
        else:
            if approver == run.requested_by:
                raise RemediationRefusedError(
                    f"run {run.id} was requested by {approver}: someone else must approve it"
                )
            grant = approvals.new_grant(
                run.id,
                run.tenant,
                approver,
                ttl_seconds=get_settings().remediation_approval_ttl_seconds,
                now=now,
            )
            run.state = RunState.QUEUED.value
            run.approved_by = approver
            run.approved_at = grant.issued_at
            run.approval_expires_at = grant.expires_at
            run.approval_token_id = grant.token_id
            store.audit(
                session,
                run,
                A.APPROVED,
                approver,
                reason,
                token_id=grant.token_id,
                expires_at=iso_time(grant.expires_at),
            )
            token = approvals.mint(grant, key)
    if expired:
        raise RemediationRefusedError(
            f"run {run_id} expired: its approval deadline passed before it was approved"
        )
    job_id = send_run(run_id)
    return ApprovalOutcome(run_id, token, grant.expires_at, job_id)


def reject_run(run_id: uuid.UUID, *, tenant: str | None, actor: str, reason: str) -> str:
    """Refuse a pending run (it becomes cancelled). Returns the new state."""
    with session_scope() as session:
        run = store.get_run(session, run_id, tenant, lock=True)
        if run.state != RunState.PENDING_APPROVAL.value:
            raise RemediationRefusedError(_not_pending(run))
        finish_run(session, run, RunState.CANCELLED, A.REJECTED, actor, reason or "rejected")
        return run.state


def cancel_run(run_id: uuid.UUID, *, tenant: str | None, actor: str, reason: str) -> str:
    """Cancel a run that has not started. A running playbook is not stopped halfway: that
    would leave the asset in a state nobody chose."""
    with session_scope() as session:
        run = store.get_run(session, run_id, tenant, lock=True)
        if run.state not in (RunState.PENDING_APPROVAL.value, RunState.QUEUED.value):
            raise RemediationRefusedError(
                f"run {run.id} is {run.state}: only pending or queued runs can be cancelled"
            )
        finish_run(session, run, RunState.CANCELLED, A.CANCELLED, actor, reason or "cancelled")
        return run.state


def _not_pending(run: RemediationRun) -> str:
    if run.state == RunState.QUEUED.value and run.approved_by:
        return f"run {run.id} was already approved by {run.approved_by}"
    return f"run {run.id} is {run.state}, not pending approval"


def send_run(run_id: uuid.UUID) -> uuid.UUID | None:
    """Enqueue the run's job (with its approval token, minted again from the stored grant) and
    note it on the run. Every send of a run uses one idempotency key, so a run is enqueued once
    however often this is called. None when the broker is down: the run stays queued without a
    job, and the sweep sends it later."""
    with session_scope() as session:
        run = store.get_run(session, run_id, None)
        payload: dict[str, Any] = {"run_id": str(run.id), "tenant": run.tenant}
        if run.approved_by and run.approval_token_id and run.approval_expires_at:
            grant = approvals.ApprovalGrant(
                run_id=run.id,
                tenant=run.tenant,
                approver=run.approved_by,
                token_id=run.approval_token_id,
                issued_at=run.approved_at or datetime.now(UTC),
                expires_at=run.approval_expires_at,
            )
            payload["approval_token"] = approvals.mint(grant, approvals.signing_key())
    try:
        job = enqueue(
            RUN_TASK, payload, f"remediation-run:{run_id}", enqueued_by=f"remediation:{run_id}"
        )
    except BrokerUnavailableError as exc:
        get_logger(run_id=str(run_id)).warning("remediation.send_failed", error=str(exc)[:300])
        return None
    with session_scope() as session:
        run = store.get_run(session, run_id, None, lock=True)
        if run.job_id is None:
            run.job_id = job.id
    return job.id


def set_protection(*, tenant: str, asset: str | None, protected: bool, actor: str) -> str:
    """Protect (or unprotect) one asset, or with no asset the whole tenant: remediation there
    then always needs an approval."""
    check_tenant(tenant)
    with session_scope() as session:
        if asset is None:
            policy_store.set_tenant_policy(session, tenant, requires_approval=protected, by=actor)
            return f"tenant {tenant}"
        target = trust.find_asset(session, asset, tenant)
        name = f"{target.tenant}/{target.name}"
        asset_id = target.id

    def plan(session: Session, row: TrustAsset) -> list[Move]:
        row.protected = protected
        return []

    trust.transition(asset_id, plan, actor=actor)
    return f"asset {name}"


def set_connection(*, tenant: str, asset: str, connection: dict[str, Any], actor: str) -> None:
    """Set how playbooks reach an asset (ansible host vars, kubernetes_node, libvirt_domain).
    These are stored and shown: a secret among them (a password) is refused."""
    secret = sorted(name for name in connection if is_secret_name(name))
    if secret:
        raise RemediationRefusedError(
            f"connection variables {', '.join(secret)} look secret: credentials stay with the "
            "workers (an SSH key file, an agent), never in the registry"
        )
    with session_scope() as session:
        asset_id = trust.find_asset(session, asset, tenant).id

    def plan(session: Session, row: TrustAsset) -> list[Move]:
        row.connection = dict(connection)
        return []

    trust.transition(asset_id, plan, actor=actor)

"""Remediation rows: playbook versions, runs (one active per tenant, asset and playbook), their
audit trail and artifacts, and tenant policy. Every read takes the caller's tenant: a row of
another tenant is not found, exactly as if it did not exist."""

from __future__ import annotations

import uuid
from collections.abc import Sequence
from datetime import datetime
from typing import Any

from sqlalchemy import func, select, text
from sqlalchemy.dialects.postgresql import distinct_on, insert
from sqlalchemy.orm import Session

from kernel.errors import DrydockError, NotFoundError
from models.tables import (
    ACTIVE_RUN_STATES,
    RemediationArtifact,
    RemediationAudit,
    RemediationAuditAction,
    RemediationPlaybook,
    RemediationRun,
    RunState,
    TenantPolicy,
    sql_in_list,
)

TERMINAL_RUN_STATES: frozenset[str] = frozenset(
    {RunState.SUCCEEDED, RunState.FAILED, RunState.CANCELLED, RunState.EXPIRED}
)


class RemediationRefusedError(DrydockError):
    """A request, approval or cancellation that cannot be done, with the reason."""


class RunNotFoundError(NotFoundError):
    def __init__(self, run_id: uuid.UUID | str) -> None:
        super().__init__(f"no remediation run {run_id}")


class PlaybookNotFoundError(NotFoundError):
    def __init__(self, tenant: str, name: str, version: int | None = None) -> None:
        which = f"{name} version {version}" if version is not None else name
        super().__init__(f"tenant {tenant} has no playbook {which}")


# -- playbooks ---------------------------------------------------------------------------------


def add_playbook_version(session: Session, **fields: Any) -> RemediationPlaybook:
    """Store the next version of a tenant's playbook (1 for a new name). Two writers racing
    for the same version meet the unique constraint; the caller tries again."""
    tenant, name = fields["tenant"], fields["name"]
    newest = session.scalar(
        select(func.max(RemediationPlaybook.version)).where(
            RemediationPlaybook.tenant == tenant, RemediationPlaybook.name == name
        )
    )
    playbook = RemediationPlaybook(version=(newest or 0) + 1, **fields)
    session.add(playbook)
    session.flush()
    return playbook


def get_playbook(
    session: Session, tenant: str, name: str, version: int | None = None
) -> RemediationPlaybook:
    """A tenant's playbook: the given version, or the newest."""
    query = select(RemediationPlaybook).where(
        RemediationPlaybook.tenant == tenant, RemediationPlaybook.name == name
    )
    if version is not None:
        query = query.where(RemediationPlaybook.version == version)
    playbook = session.scalars(query.order_by(RemediationPlaybook.version.desc()).limit(1)).first()
    if playbook is None:
        raise PlaybookNotFoundError(tenant, name, version)
    return playbook


def list_playbooks(session: Session, tenant: str | None) -> list[RemediationPlaybook]:
    """The newest version of every playbook (of one tenant, or of all)."""
    query = (
        select(RemediationPlaybook)
        .ext(distinct_on(RemediationPlaybook.tenant, RemediationPlaybook.name))
        .order_by(
            RemediationPlaybook.tenant,
            RemediationPlaybook.name,
            RemediationPlaybook.version.desc(),
        )
    )
    if tenant is not None:
        query = query.where(RemediationPlaybook.tenant == tenant)
    return list(session.scalars(query))


def playbook_versions(session: Session, tenant: str, name: str) -> list[RemediationPlaybook]:
    return list(
        session.scalars(
            select(RemediationPlaybook)
            .where(RemediationPlaybook.tenant == tenant, RemediationPlaybook.name == name)
            .order_by(RemediationPlaybook.version)
        )
    )


# -- runs --------------------------------------------------------------------------------------


def insert_run_unless_active(session: Session, values: dict[str, Any]) -> uuid.UUID | None:
    """Insert a run, or nothing when its (tenant, asset, playbook) already has an active run:
    the partial unique index decides, so concurrent requests cannot both insert. Returns the
    new run's id, or None."""
    statement = (
        insert(RemediationRun)
        .values(**values)
        .on_conflict_do_nothing(
            index_elements=["tenant", "asset_id", "playbook_name"],
            index_where=text(sql_in_list("state", ACTIVE_RUN_STATES)),
        )
        .returning(RemediationRun.id)
    )
    inserted: uuid.UUID | None = session.scalar(statement)
    return inserted


def active_run(
    session: Session, tenant: str, asset_id: uuid.UUID, playbook_name: str
) -> RemediationRun | None:
    return session.scalars(
        select(RemediationRun).where(
            RemediationRun.tenant == tenant,
            RemediationRun.asset_id == asset_id,
            RemediationRun.playbook_name == playbook_name,
            RemediationRun.state.in_([state.value for state in ACTIVE_RUN_STATES]),
        )
    ).first()


def get_run(
    session: Session, run_id: uuid.UUID, tenant: str | None, *, lock: bool = False
) -> RemediationRun:
    """A run, if the tenant (None: any) may see it; RunNotFoundError otherwise."""
    run = session.get(RemediationRun, run_id, with_for_update=lock, populate_existing=lock)
    if run is None or (tenant is not None and run.tenant != tenant):
        raise RunNotFoundError(run_id)
    return run


def list_runs(
    session: Session,
    *,
    tenant: str | None,
    state: str | None = None,
    asset_id: uuid.UUID | None = None,
    limit: int = 50,
) -> list[RemediationRun]:
    query = select(RemediationRun).order_by(RemediationRun.requested_at.desc()).limit(limit)
    if tenant is not None:
        query = query.where(RemediationRun.tenant == tenant)
    if state is not None:
        query = query.where(RemediationRun.state == state)
    if asset_id is not None:
        query = query.where(RemediationRun.asset_id == asset_id)
    return list(session.scalars(query))


def running_run_on_asset(session: Session, asset_id: uuid.UUID) -> RemediationRun | None:
    return session.scalars(
        select(RemediationRun).where(
            RemediationRun.asset_id == asset_id, RemediationRun.state == RunState.RUNNING.value
        )
    ).first()


def runs_waiting_past(session: Session, now: datetime, limit: int) -> list[RemediationRun]:
    """Runs whose wait ran out: pending approval past its deadline, or approved but not started
    before the approval expired. Read through the two partial indexes."""
    pending = select(RemediationRun.id).where(
        RemediationRun.state == RunState.PENDING_APPROVAL.value,
        RemediationRun.approval_deadline <= now,
    )
    approved = select(RemediationRun.id).where(
        RemediationRun.state == RunState.QUEUED.value,
        RemediationRun.approval_expires_at.is_not(None),
        RemediationRun.approval_expires_at <= now,
        RemediationRun.attempts == 0,
    )
    ids = session.scalars(pending.union(approved).limit(limit)).all()
    return list(
        session.scalars(
            select(RemediationRun)
            .where(RemediationRun.id.in_(ids))
            .with_for_update(skip_locked=True)
            .order_by(RemediationRun.requested_at)
        )
    )


def unsent_runs(session: Session, older_than: datetime, limit: int) -> list[RemediationRun]:
    """Queued runs with no job: their enqueue failed after they were recorded."""
    return list(
        session.scalars(
            select(RemediationRun)
            .where(
                RemediationRun.state == RunState.QUEUED.value,
                RemediationRun.job_id.is_(None),
                RemediationRun.updated_at <= older_than,
            )
            .order_by(RemediationRun.updated_at)
            .limit(limit)
        )
    )


# -- audit and artifacts -----------------------------------------------------------------------


def audit(
    session: Session,
    run: RemediationRun,
    action: RemediationAuditAction,
    actor: str,
    reason: str = "",
    **detail: Any,
) -> RemediationAudit:
    row = RemediationAudit(
        run_id=run.id,
        tenant=run.tenant,
        action=action.value,
        actor=actor,
        reason=reason,
        detail=detail,
    )
    session.add(row)
    return row


def audit_trail(session: Session, run_id: uuid.UUID) -> list[RemediationAudit]:
    return list(
        session.scalars(
            select(RemediationAudit)
            .where(RemediationAudit.run_id == run_id)
            .order_by(RemediationAudit.id)
        )
    )


def keep_artifact(
    session: Session,
    run_id: uuid.UUID,
    tenant: str,
    attempt: int,
    step_index: int,
    fields: dict[str, Any],
) -> None:
    """Keep one step's artifact; a step already kept for this attempt is left as it is."""
    session.execute(
        insert(RemediationArtifact)
        .values(run_id=run_id, tenant=tenant, attempt=attempt, step_index=step_index, **fields)
        .on_conflict_do_nothing(index_elements=["run_id", "attempt", "step_index"])
    )


def artifacts(session: Session, run_id: uuid.UUID) -> Sequence[RemediationArtifact]:
    return session.scalars(
        select(RemediationArtifact)
        .where(RemediationArtifact.run_id == run_id)
        .order_by(RemediationArtifact.attempt, RemediationArtifact.step_index)
    ).all()


# -- tenant policy -----------------------------------------------------------------------------


def tenant_requires_approval(session: Session, tenant: str) -> bool:
    policy = session.get(TenantPolicy, tenant)
    return bool(policy and policy.remediation_requires_approval)


def set_tenant_policy(session: Session, tenant: str, *, requires_approval: bool, by: str) -> None:
    session.execute(
        insert(TenantPolicy)
        .values(tenant=tenant, remediation_requires_approval=requires_approval, updated_by=by)
        .on_conflict_do_update(
            index_elements=["tenant"],
            set_={
                "remediation_requires_approval": requires_approval,
                "updated_by": by,
                "updated_at": func.now(),
            },
        )
    )

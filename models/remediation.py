"""Remediation rows: playbook versions, runs (one active per tenant, asset and playbook), their
audit trail and artifacts, and tenant policy. Every read takes the caller's tenant: a row of
another tenant is not found, exactly as if it did not exist."""

from __future__ import annotations

import uuid
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime
from enum import StrEnum
from typing import Any

from sqlalchemy import (
    BigInteger,
    CheckConstraint,
    DateTime,
    ForeignKey,
    Index,
    Integer,
    String,
    Text,
    UniqueConstraint,
    Uuid,
    func,
    select,
    text,
)
from sqlalchemy.dialects.postgresql import JSONB, insert
from sqlalchemy.orm import Mapped, Session, mapped_column

from kernel.errors import DrydockError, NotFoundError
from models import stream, versioned
from models.base import Base, sql_in_list
from models.versioned import TenantVersioned


class ExecutorKind(StrEnum):
    """How a playbook acts: commands in a sandbox container (shell, container), an ansible
    playbook, libvirt domain actions, or Kubernetes node and deployment actions."""

    SHELL = "shell"
    CONTAINER = "container"
    ANSIBLE = "ansible"
    LIBVIRT = "libvirt"
    KUBERNETES = "kubernetes"


class RunState(StrEnum):
    PENDING_APPROVAL = "pending_approval"
    QUEUED = "queued"
    RUNNING = "running"
    SUCCEEDED = "succeeded"
    FAILED = "failed"
    CANCELLED = "cancelled"
    EXPIRED = "expired"


# A run in one of these holds its (tenant, asset, playbook): a second request joins it.
ACTIVE_RUN_STATES: tuple[RunState, ...] = (
    RunState.PENDING_APPROVAL,
    RunState.QUEUED,
    RunState.RUNNING,
)


class RemediationPlaybook(TenantVersioned, Base):
    """One version of a tenant's playbook (models.versioned: versions are never changed, and
    runs keep the version they ran)."""

    __tablename__ = "remediation_playbooks"

    executor: Mapped[str] = mapped_column(String(20))
    # Validated by the executor's spec model (tasks.remediation.playbooks) before it is stored.
    spec: Mapped[dict[str, Any]] = mapped_column(JSONB)
    timeout_seconds: Mapped[int] = mapped_column(Integer)
    requires_approval: Mapped[bool] = mapped_column(default=False)
    # Asset kinds (vm, host, accelerator) it may run against.
    asset_kinds: Mapped[list[str]] = mapped_column(JSONB)
    # Made by a workspace promotion: it runs only where an activation names it (the scope it
    # was promoted for), never as the playbook's newest version elsewhere.
    scoped: Mapped[bool] = mapped_column(default=False, server_default=text("false"))

    __table_args__ = (
        UniqueConstraint("tenant", "name", "version"),
        CheckConstraint(sql_in_list("executor", tuple(ExecutorKind)), name="executor"),
        CheckConstraint("timeout_seconds > 0", name="timeout_seconds"),
        CheckConstraint("version > 0", name="version"),
    )


class RemediationRun(Base):
    """One request to run a playbook against an asset, from request to outcome.

    At most one run per (tenant, asset, playbook name) is active (pending approval, queued or
    running): the partial unique index ``uq_remediation_runs_active`` makes concurrent requests
    collapse into one run, whoever asks."""

    __tablename__ = "remediation_runs"

    id: Mapped[uuid.UUID] = mapped_column(Uuid, primary_key=True, default=uuid.uuid4)
    tenant: Mapped[str] = mapped_column(String(100))
    asset_id: Mapped[uuid.UUID] = mapped_column(
        Uuid, ForeignKey("trust_assets.id", ondelete="RESTRICT")
    )
    playbook_id: Mapped[uuid.UUID] = mapped_column(
        Uuid, ForeignKey("remediation_playbooks.id", ondelete="RESTRICT")
    )
    playbook_name: Mapped[str] = mapped_column(String(100))
    playbook_version: Mapped[int] = mapped_column(Integer)
    state: Mapped[str] = mapped_column(String(30))
    reason: Mapped[str] = mapped_column(Text, default="")
    requested_by: Mapped[str] = mapped_column(String(200))
    requested_at: Mapped[datetime] = mapped_column(
        DateTime(timezone=True), server_default=func.now()
    )
    # Why an approval is needed (the playbook, the asset, the tenant); [] when none is.
    approval_reasons: Mapped[list[str]] = mapped_column(JSONB, default=list)
    # A run still pending approval at this time expires.
    approval_deadline: Mapped[datetime | None] = mapped_column(DateTime(timezone=True))
    approved_by: Mapped[str | None] = mapped_column(String(200))
    approved_at: Mapped[datetime | None] = mapped_column(DateTime(timezone=True))
    # The approval token's expiry and id: a run not started by then expires.
    approval_expires_at: Mapped[datetime | None] = mapped_column(DateTime(timezone=True))
    approval_token_id: Mapped[str | None] = mapped_column(String(64))
    # The asset's trust state, newest transition and verdict when the run was requested.
    trust_context: Mapped[dict[str, Any]] = mapped_column(JSONB, default=dict)
    # Executions started (a worker lost mid-run, or an engine outage, means another).
    attempts: Mapped[int] = mapped_column(Integer, default=0)
    job_id: Mapped[uuid.UUID | None] = mapped_column(
        Uuid, ForeignKey("jobs.id", ondelete="SET NULL")
    )
    started_at: Mapped[datetime | None] = mapped_column(DateTime(timezone=True))
    finished_at: Mapped[datetime | None] = mapped_column(DateTime(timezone=True))
    # Why it failed, was cancelled or expired; the last transient error while queued.
    error: Mapped[str | None] = mapped_column(Text)
    # The steps' structured outputs, merged, once it finished.
    outputs: Mapped[dict[str, Any]] = mapped_column(JSONB, default=dict)
    # The challenge the asset's fresh evidence must carry after a successful run (hex).
    evidence_nonce: Mapped[str | None] = mapped_column(String(128))
    updated_at: Mapped[datetime] = mapped_column(
        DateTime(timezone=True), server_default=func.now(), onupdate=func.now()
    )

    __table_args__ = (
        Index(
            "uq_remediation_runs_active",
            "tenant",
            "asset_id",
            "playbook_name",
            unique=True,
            postgresql_where=text(sql_in_list("state", ACTIVE_RUN_STATES)),
        ),
        # One playbook at a time acts on an asset, whichever playbooks were requested.
        Index(
            "uq_remediation_runs_running_asset",
            "asset_id",
            unique=True,
            postgresql_where=text("state = 'running'"),
        ),
        CheckConstraint(sql_in_list("state", tuple(RunState)), name="state"),
        Index(None, "tenant", "requested_at"),
        Index(None, "asset_id", "requested_at"),
        # The expiry sweep reads only runs that wait, through these.
        Index(
            "ix_remediation_runs_approval_deadline",
            "approval_deadline",
            postgresql_where=text("state = 'pending_approval'"),
        ),
        Index(
            "ix_remediation_runs_approval_expiry",
            "approval_expires_at",
            postgresql_where=text("state = 'queued' AND approval_expires_at IS NOT NULL"),
        ),
        # Queued runs whose job could not be sent (the broker was down): the sweep sends them.
        Index(
            "ix_remediation_runs_unsent",
            "updated_at",
            postgresql_where=text("state = 'queued' AND job_id IS NULL"),
        ),
    )


class RemediationAuditAction(StrEnum):
    REQUESTED = "requested"
    # Another request for an asset and playbook that already had an active run.
    JOINED = "joined"
    APPROVED = "approved"
    REJECTED = "rejected"
    # An approval token presented to run it was forged, for another run, or expired.
    TOKEN_REFUSED = "token_refused"
    CANCELLED = "cancelled"
    EXPIRED = "expired"
    STARTED = "started"
    # A workspace promotion moved the run, not yet started, to the version it promoted.
    RELINKED = "relinked"
    SUCCEEDED = "succeeded"
    FAILED = "failed"


class RemediationAudit(Base):
    """Every decision about a run: who, when, why. Append-only (a trigger refuses UPDATE and
    DELETE, see migration 0005)."""

    __tablename__ = "remediation_audit"

    id: Mapped[int] = mapped_column(BigInteger, primary_key=True, autoincrement=True)
    run_id: Mapped[uuid.UUID] = mapped_column(
        Uuid, ForeignKey("remediation_runs.id", ondelete="RESTRICT")
    )
    tenant: Mapped[str] = mapped_column(String(100))
    action: Mapped[str] = mapped_column(String(30))
    actor: Mapped[str] = mapped_column(String(200))
    reason: Mapped[str] = mapped_column(Text, default="")
    detail: Mapped[dict[str, Any]] = mapped_column(JSONB, default=dict)
    at: Mapped[datetime] = mapped_column(DateTime(timezone=True), server_default=func.now())

    __table_args__ = (
        CheckConstraint(sql_in_list("action", tuple(RemediationAuditAction)), name="action"),
        Index(None, "run_id", "id"),
    )


class KeptStepColumns:
    """The columns of one step as kept (a run's artifact, a workspace's simulated step): its
    output capped with secrets redacted, exit code, structured outputs and timings (a mixin;
    ``tasks.remediation.artifacts.kept_step`` fills them)."""

    step_name: Mapped[str] = mapped_column(String(200))
    ok: Mapped[bool]
    timed_out: Mapped[bool] = mapped_column(default=False)
    exit_code: Mapped[int | None] = mapped_column(Integer)
    error: Mapped[str | None] = mapped_column(Text)
    stdout: Mapped[str] = mapped_column(Text, default="")
    stderr: Mapped[str] = mapped_column(Text, default="")
    # Sizes as produced, before the cap: more than kept means the middle was cut.
    stdout_bytes: Mapped[int] = mapped_column(Integer, default=0)
    stderr_bytes: Mapped[int] = mapped_column(Integer, default=0)
    truncated: Mapped[bool] = mapped_column(default=False)
    outputs: Mapped[dict[str, Any]] = mapped_column(JSONB, default=dict)
    started_at: Mapped[datetime] = mapped_column(DateTime(timezone=True))
    finished_at: Mapped[datetime] = mapped_column(DateTime(timezone=True))
    duration_ms: Mapped[float]


class RemediationArtifact(KeptStepColumns, Base):
    """What one step of one attempt left. One row per (run, attempt, step)."""

    __tablename__ = "remediation_artifacts"

    id: Mapped[int] = mapped_column(BigInteger, primary_key=True, autoincrement=True)
    run_id: Mapped[uuid.UUID] = mapped_column(
        Uuid, ForeignKey("remediation_runs.id", ondelete="RESTRICT")
    )
    tenant: Mapped[str] = mapped_column(String(100))
    attempt: Mapped[int] = mapped_column(Integer)
    step_index: Mapped[int] = mapped_column(Integer)

    __table_args__ = (UniqueConstraint("run_id", "attempt", "step_index"),)


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
    version = versioned.next_version(session, RemediationPlaybook, fields["tenant"], fields["name"])
    playbook = RemediationPlaybook(version=version, **fields)
    session.add(playbook)
    session.flush()
    return playbook


def get_playbook(
    session: Session, tenant: str, name: str, version: int | None = None
) -> RemediationPlaybook:
    """A tenant's playbook: the given version, or the newest."""
    playbook = versioned.find_version(session, RemediationPlaybook, tenant, name, version)
    if playbook is None:
        raise PlaybookNotFoundError(tenant, name, version)
    return playbook


def get_playbook_or_none(
    session: Session, tenant: str, name: str, version: int | None = None
) -> RemediationPlaybook | None:
    return versioned.find_version(session, RemediationPlaybook, tenant, name, version)


def list_playbooks(session: Session, tenant: str | None) -> list[RemediationPlaybook]:
    """The newest version of every playbook (of one tenant, or of all)."""
    return versioned.newest_of_each(session, RemediationPlaybook, tenant)


def playbook_versions(session: Session, tenant: str, name: str) -> list[RemediationPlaybook]:
    return versioned.every_version(session, RemediationPlaybook, tenant, name)


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

    def update() -> dict[str, Any]:
        # Built at commit: the run's state is then what this decision made it.
        return {
            "audit_id": row.id,
            "run_id": str(run.id),
            "tenant": run.tenant,
            "asset_id": str(run.asset_id),
            "playbook": run.playbook_name,
            "playbook_version": run.playbook_version,
            "action": row.action,
            "state": run.state,
            "attempts": run.attempts,
            "actor": row.actor,
            "reason": row.reason,
            "detail": row.detail,
        }

    stream.stage(session, stream.StreamEventKind.REMEDIATION_UPDATE, run.tenant, update)
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


@dataclass(frozen=True)
class AwaitingRemediation:
    """A quarantined asset whose class names a playbook, with no active run of it."""

    asset_id: uuid.UUID
    tenant: str
    playbook: str
    cause: str


# Quarantined assets whose class names a playbook and which have no active run of it. An asset
# quarantined again because its run failed (cause remediation_failed) is left to an operator:
# the loop tries once per quarantine, never round and round.
_AWAITING_REMEDIATION_SQL = f"""
    SELECT a.id AS asset_id, a.tenant, c.remediation_playbook AS playbook, last.cause
      FROM trust_assets a
      JOIN trust_asset_classes c ON c.name = a.asset_class
      JOIN LATERAL (
            SELECT t.cause FROM trust_transitions t
             WHERE t.asset_id = a.id ORDER BY t.seq DESC LIMIT 1
      ) last ON true
     WHERE a.state = 'quarantined'
       AND c.remediation_playbook IS NOT NULL
       AND last.cause <> 'remediation_failed'
       AND NOT EXISTS (
            SELECT 1 FROM remediation_runs r
             WHERE r.asset_id = a.id AND r.playbook_name = c.remediation_playbook
               AND {sql_in_list("r.state", ACTIVE_RUN_STATES)}
       )
     ORDER BY a.id
     LIMIT :limit
"""


def awaiting_remediation(session: Session, limit: int) -> list[AwaitingRemediation]:
    rows = session.execute(text(_AWAITING_REMEDIATION_SQL), {"limit": limit}).all()
    return [AwaitingRemediation(r.asset_id, r.tenant, r.playbook, r.cause) for r in rows]

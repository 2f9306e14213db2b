"""How releases move: each tier's promotion rules, rollouts, and the release history of a
server (promotions, rollouts, rollbacks), append-only and announced.

A promotion is one history row with the checkpoints it walked, each passed or failed with its
reason. A rollout is a ``runtime_rollouts`` row that moves ``running → succeeded`` or
``running → rolled_back`` (``failed`` when it could not even start its new instance's launch),
with one history row when it starts and one when it ends; a rollback is one history row of its
own, and a partial unique index holds a rollout to at most one, however often its job is
delivered. Another partial unique index allows one running rollout per server and tier.
"""

from __future__ import annotations

import uuid
from collections.abc import Sequence
from datetime import UTC, datetime
from enum import StrEnum
from typing import Any

from sqlalchemy import (
    BigInteger,
    Boolean,
    CheckConstraint,
    DateTime,
    Float,
    ForeignKey,
    Identity,
    Index,
    String,
    Text,
    Uuid,
    func,
    select,
    text,
)
from sqlalchemy.dialects.postgresql import JSONB
from sqlalchemy.exc import IntegrityError
from sqlalchemy.orm import Mapped, Session, mapped_column

from kernel.errors import NotFoundError
from models import stream
from models.base import Base, sql_in_list


class ChangeKind(StrEnum):
    PROMOTION = "promotion"
    ROLLOUT = "rollout"
    ROLLBACK = "rollback"


class ChangeOutcome(StrEnum):
    PROMOTED = "promoted"
    REFUSED = "refused"
    STARTED = "started"
    SUCCEEDED = "succeeded"
    ROLLED_BACK = "rolled_back"
    FAILED = "failed"


class RolloutState(StrEnum):
    RUNNING = "running"
    SUCCEEDED = "succeeded"
    ROLLED_BACK = "rolled_back"
    FAILED = "failed"


class RuntimeTierRule(Base):
    """What promoting to a tier takes beyond a fresh certification and trusted hosts."""

    __tablename__ = "runtime_tier_rules"

    tier: Mapped[str] = mapped_column(
        String(100), ForeignKey("evaluation_tiers.name", ondelete="CASCADE"), primary_key=True
    )
    # Every anomaly score of the digest's repository must be at most this.
    anomaly_threshold: Mapped[float] = mapped_column(Float)
    # Promotions to it need an approval token (``drydock releases approve``).
    protected: Mapped[bool] = mapped_column(Boolean, default=False)
    # How long a rollout to it watches the new instance before shifting to it.
    analysis_seconds: Mapped[float] = mapped_column(Float)
    updated_at: Mapped[datetime] = mapped_column(
        DateTime(timezone=True), server_default=func.now(), onupdate=func.now()
    )
    updated_by: Mapped[str | None] = mapped_column(String(200))


class RuntimeRollout(Base):
    """One rollout of a release at a tier beside the instance serving it."""

    __tablename__ = "runtime_rollouts"

    id: Mapped[uuid.UUID] = mapped_column(Uuid, primary_key=True, default=uuid.uuid4)
    server_id: Mapped[uuid.UUID] = mapped_column(
        Uuid, ForeignKey("runtime_servers.id", ondelete="CASCADE")
    )
    tier: Mapped[str] = mapped_column(String(100))
    # The job carrying it out: a redelivery finds its rollout by it.
    job_id: Mapped[uuid.UUID] = mapped_column(Uuid, unique=True)
    to_release_id: Mapped[uuid.UUID] = mapped_column(
        Uuid, ForeignKey("runtime_releases.id", ondelete="CASCADE")
    )
    # What served the tier when it started (None: nothing did).
    from_release_id: Mapped[uuid.UUID | None] = mapped_column(
        Uuid, ForeignKey("runtime_releases.id", ondelete="CASCADE")
    )
    from_instance_id: Mapped[uuid.UUID | None] = mapped_column(Uuid)
    to_instance_id: Mapped[uuid.UUID | None] = mapped_column(Uuid)
    state: Mapped[str] = mapped_column(String(20))
    analysis_seconds: Mapped[float] = mapped_column(Float)
    reason: Mapped[str] = mapped_column(Text, default="")
    actor: Mapped[str] = mapped_column(String(200))
    created_at: Mapped[datetime] = mapped_column(DateTime(timezone=True), server_default=func.now())
    finished_at: Mapped[datetime | None] = mapped_column(DateTime(timezone=True))

    __table_args__ = (
        CheckConstraint(sql_in_list("state", tuple(RolloutState)), name="state"),
        Index(
            "uq_runtime_rollouts_running",
            "server_id",
            "tier",
            unique=True,
            postgresql_where=text("state = 'running'"),
        ),
    )


class ReleaseChange(Base):
    """One promotion, rollout start or end, or rollback. Append-only (a trigger refuses
    changes)."""

    __tablename__ = "runtime_release_history"

    id: Mapped[int] = mapped_column(BigInteger, Identity(), primary_key=True)
    server_id: Mapped[uuid.UUID] = mapped_column(
        Uuid, ForeignKey("runtime_servers.id", ondelete="CASCADE")
    )
    tenant: Mapped[str] = mapped_column(String(100))
    kind: Mapped[str] = mapped_column(String(20))
    outcome: Mapped[str] = mapped_column(String(20))
    tier: Mapped[str] = mapped_column(String(100))
    digest: Mapped[str] = mapped_column(String(100))
    # The release it replaces (a rollout's old digest; a rollback's digest back in service).
    from_digest: Mapped[str | None] = mapped_column(String(100))
    rollout_id: Mapped[uuid.UUID | None] = mapped_column(
        Uuid, ForeignKey("runtime_rollouts.id", ondelete="CASCADE")
    )
    # [{"gate", "passed", "reason"}]: a promotion's checkpoints, a rollout's analysis.
    checkpoints: Mapped[list[dict[str, Any]]] = mapped_column(JSONB, default=list)
    detail: Mapped[str] = mapped_column(Text, default="")
    actor: Mapped[str] = mapped_column(String(200))
    job_id: Mapped[uuid.UUID | None] = mapped_column(Uuid)
    at: Mapped[datetime] = mapped_column(DateTime(timezone=True), server_default=func.now())

    __table_args__ = (
        CheckConstraint(sql_in_list("kind", tuple(ChangeKind)), name="kind"),
        CheckConstraint(sql_in_list("outcome", tuple(ChangeOutcome)), name="outcome"),
        Index(None, "server_id", "at"),
        # A rollout starts, ends and rolls back once each, whatever its deliveries.
        Index(
            "uq_runtime_release_history_rollout_step",
            "rollout_id",
            "kind",
            "outcome",
            unique=True,
            postgresql_where=text("rollout_id IS NOT NULL"),
        ),
    )


class RolloutNotFoundError(NotFoundError):
    def __init__(self, ref: object) -> None:
        super().__init__(f"no rollout {ref}")


def tier_rule(session: Session, tier: str) -> RuntimeTierRule | None:
    return session.get(RuntimeTierRule, tier)


def put_tier_rule(
    session: Session,
    tier: str,
    *,
    anomaly_threshold: float,
    protected: bool,
    analysis_seconds: float,
    by: str,
) -> RuntimeTierRule:
    rule = session.get(RuntimeTierRule, tier, with_for_update=True)
    if rule is None:
        rule = RuntimeTierRule(tier=tier)
        session.add(rule)
    rule.anomaly_threshold = anomaly_threshold
    rule.protected = protected
    rule.analysis_seconds = analysis_seconds
    rule.updated_by = by
    session.flush()
    return rule


def record_change(session: Session, change: ReleaseChange) -> ReleaseChange | None:
    """Append ``change`` and stage its ``runtime.release`` event; None when a rollout's step
    was recorded already (a redelivery), and nothing is staged."""
    change.detail = change.detail[:4000]
    if change.rollout_id is None:
        session.add(change)
        session.flush()
    else:
        recorded = session.scalar(
            select(ReleaseChange.id).where(
                ReleaseChange.rollout_id == change.rollout_id,
                ReleaseChange.kind == change.kind,
                ReleaseChange.outcome == change.outcome,
            )
        )
        if recorded is not None:
            return None
        try:
            # The unique index settles two deliveries racing past the read above.
            with session.begin_nested():
                session.add(change)
                session.flush()
        except IntegrityError:
            return None
    stream.stage(
        session,
        stream.StreamEventKind.RUNTIME_RELEASE,
        change.tenant,
        {**change_json(change), "at": datetime.now(UTC).isoformat()},
    )
    return change


def change_json(change: ReleaseChange) -> dict[str, Any]:
    return {
        "id": change.id,
        "server_id": str(change.server_id),
        "kind": change.kind,
        "outcome": change.outcome,
        "tier": change.tier,
        "digest": change.digest,
        "from_digest": change.from_digest,
        "rollout_id": str(change.rollout_id) if change.rollout_id else None,
        "checkpoints": change.checkpoints,
        "detail": change.detail,
        "actor": change.actor,
        "job_id": str(change.job_id) if change.job_id else None,
        "at": change.at.isoformat() if change.at else None,
    }


def release_history(
    session: Session,
    server_id: uuid.UUID,
    *,
    kind: ChangeKind | None = None,
    before: int | None = None,
    limit: int = 50,
) -> Sequence[ReleaseChange]:
    """Newest first; ``before`` an id, for the next page."""
    query = select(ReleaseChange).where(ReleaseChange.server_id == server_id)
    if kind is not None:
        query = query.where(ReleaseChange.kind == kind.value)
    if before is not None:
        query = query.where(ReleaseChange.id < before)
    return session.scalars(query.order_by(ReleaseChange.id.desc()).limit(limit)).all()


def rollout_of_job(session: Session, job_id: uuid.UUID) -> RuntimeRollout | None:
    return session.scalar(
        select(RuntimeRollout).where(RuntimeRollout.job_id == job_id).with_for_update()
    )


def running_rollout(session: Session, server_id: uuid.UUID, tier: str) -> RuntimeRollout | None:
    return session.scalar(
        select(RuntimeRollout).where(
            RuntimeRollout.server_id == server_id,
            RuntimeRollout.tier == tier,
            RuntimeRollout.state == RolloutState.RUNNING.value,
        )
    )


def get_rollout(session: Session, rollout_id: uuid.UUID) -> RuntimeRollout:
    rollout = session.get(RuntimeRollout, rollout_id)
    if rollout is None:
        raise RolloutNotFoundError(rollout_id)
    return rollout

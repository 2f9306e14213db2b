"""Evaluation tiers and certifications: their tables, queries and the lineage of a (digest,
tier). The cadence sweep Beat runs is ``models.evaluation_cadence``.

A certification row is one evaluation. A pass makes it ``active`` (the previous active row of the
same digest and tier becomes ``superseded``); a fail makes it ``failed`` and revokes the active
one. ``replaces_id`` links each row to the one it followed, so ``lineage`` walks the history.
"""

from __future__ import annotations

import uuid
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime, timedelta
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
    Uuid,
    func,
    select,
    text,
    update,
)
from sqlalchemy.dialects.postgresql import JSONB
from sqlalchemy.orm import Mapped, Session, mapped_column

from kernel.errors import DrydockError, NotFoundError
from models.base import Base, sql_in_list


class ImageCertification(Base):
    """An evaluation certification bound to an image digest. Retention never deletes a digest
    with a live one (not revoked, not expired); the evaluation queue issues and refreshes them."""

    __tablename__ = "image_certifications"

    id: Mapped[int] = mapped_column(BigInteger, primary_key=True, autoincrement=True)
    host: Mapped[str] = mapped_column(String(255))
    repository: Mapped[str] = mapped_column(String(255))
    digest: Mapped[str] = mapped_column(String(100))
    name: Mapped[str] = mapped_column(String(200))
    issued_at: Mapped[datetime] = mapped_column(DateTime(timezone=True), server_default=func.now())
    expires_at: Mapped[datetime] = mapped_column(DateTime(timezone=True))
    revoked_at: Mapped[datetime | None] = mapped_column(DateTime(timezone=True))

    __table_args__ = (Index(None, "host", "repository", "digest"),)


class CertificationStatus(StrEnum):
    # The newest passing evaluation of a (digest, tier), within its validity.
    ACTIVE = "active"
    # Replaced by a newer passing evaluation (``replaces_id`` on the newer row points here).
    SUPERSEDED = "superseded"
    # Nobody refreshed it before it expired: the policy engine denies it.
    STALE = "stale"
    # A later evaluation failed, or an operator revoked it.
    REVOKED = "revoked"
    # This evaluation failed; its evidence says which checks.
    FAILED = "failed"


class EvaluationTier(Base):
    """A tier of certification: the suite an image must pass for it and how long a pass lasts."""

    __tablename__ = "evaluation_tiers"

    name: Mapped[str] = mapped_column(String(100), primary_key=True)
    # tasks.evaluation.suite.SuiteSpec: the command run in the image, its files, result format.
    suite: Mapped[dict[str, Any]] = mapped_column(JSONB)
    # How long a passing evaluation certifies the digest.
    validity_seconds: Mapped[int] = mapped_column(Integer)
    # How long before expiry Beat enqueues the refresh.
    refresh_window_seconds: Mapped[int] = mapped_column(Integer)
    description: Mapped[str] = mapped_column(Text, default="")
    updated_at: Mapped[datetime] = mapped_column(
        DateTime(timezone=True), server_default=func.now(), onupdate=func.now()
    )
    updated_by: Mapped[str | None] = mapped_column(String(200))

    __table_args__ = (
        CheckConstraint("validity_seconds > 0", name="validity_positive"),
        CheckConstraint(
            "refresh_window_seconds >= 0 AND refresh_window_seconds < validity_seconds",
            name="window_inside_validity",
        ),
    )


class EvaluationCertification(Base):
    """One evaluation of an image digest at a tier: its per-check evidence and what it
    certifies, until when. Rows of one (digest, tier) form a lineage through ``replaces_id``."""

    __tablename__ = "evaluation_certifications"

    id: Mapped[uuid.UUID] = mapped_column(Uuid, primary_key=True, default=uuid.uuid4)
    digest: Mapped[str] = mapped_column(String(100))
    tier: Mapped[str] = mapped_column(
        String(100), ForeignKey("evaluation_tiers.name", ondelete="RESTRICT")
    )
    # Where the image is pulled from for its evaluations.
    host: Mapped[str] = mapped_column(String(255))
    repository: Mapped[str] = mapped_column(String(255))
    status: Mapped[str] = mapped_column(String(20))
    # Per-check results: [{"name", "status", "message", "duration_ms"}].
    evidence: Mapped[list[dict[str, Any]]] = mapped_column(JSONB, default=list)
    summary: Mapped[str] = mapped_column(Text, default="")
    evaluated_at: Mapped[datetime] = mapped_column(DateTime(timezone=True))
    # Set on a pass: the certification holds from issued_at to expires_at, and Beat enqueues
    # its refresh from refresh_at (expires_at less the tier's window).
    issued_at: Mapped[datetime | None] = mapped_column(DateTime(timezone=True))
    expires_at: Mapped[datetime | None] = mapped_column(DateTime(timezone=True))
    refresh_at: Mapped[datetime | None] = mapped_column(DateTime(timezone=True))
    cadence_seconds: Mapped[int] = mapped_column(Integer)
    replaces_id: Mapped[uuid.UUID | None] = mapped_column(
        Uuid, ForeignKey("evaluation_certifications.id", ondelete="RESTRICT")
    )
    # The job whose evaluation this is.
    job_id: Mapped[uuid.UUID | None] = mapped_column(
        Uuid, ForeignKey("jobs.id", ondelete="SET NULL")
    )
    # The refresh Beat enqueued for this certification: set once, so a second sweep skips it.
    refresh_job_id: Mapped[uuid.UUID | None] = mapped_column(Uuid)
    refresh_requested_at: Mapped[datetime | None] = mapped_column(DateTime(timezone=True))
    revoked_at: Mapped[datetime | None] = mapped_column(DateTime(timezone=True))
    reason: Mapped[str] = mapped_column(Text, default="")
    updated_at: Mapped[datetime] = mapped_column(
        DateTime(timezone=True), server_default=func.now(), onupdate=func.now()
    )

    __table_args__ = (
        CheckConstraint(sql_in_list("status", tuple(CertificationStatus)), name="status"),
        CheckConstraint(
            "status <> 'active' OR (issued_at IS NOT NULL AND expires_at IS NOT NULL "
            "AND refresh_at IS NOT NULL)",
            name="active_has_validity",
        ),
        # One live certification per digest and tier.
        Index(
            "uq_evaluation_certifications_active",
            "digest",
            "tier",
            unique=True,
            postgresql_where=text("status = 'active'"),
        ),
        # One evaluation per job: a redelivered refresh finds its row instead of adding one.
        Index("uq_evaluation_certifications_job", "job_id", unique=True),
        Index(None, "digest", "tier", "evaluated_at"),
        # The cadence sweep reads only due rows, through these.
        Index(
            "ix_evaluation_certifications_refresh_due",
            "refresh_at",
            postgresql_where=text("status = 'active' AND refresh_job_id IS NULL"),
        ),
        Index(
            "ix_evaluation_certifications_expiry",
            "expires_at",
            postgresql_where=text("status = 'active'"),
        ),
        # Claimed refreshes, for finding claims whose job was never sent.
        Index(
            "ix_evaluation_certifications_refresh_claimed",
            "refresh_requested_at",
            postgresql_where=text("status = 'active' AND refresh_job_id IS NOT NULL"),
        ),
    )


# The name image_certifications rows carry for a tier, so retention keeps certified digests.
IMAGE_CERTIFICATION_PREFIX = "evaluation:"


class TierNotFoundError(NotFoundError):
    pass


class CertificationError(DrydockError):
    """A certification request that cannot be honoured as asked."""


def image_certification_name(tier: str) -> str:
    return f"{IMAGE_CERTIFICATION_PREFIX}{tier}"


# ---- tiers ---------------------------------------------------------------------------------------


def put_tier(
    session: Session,
    *,
    name: str,
    suite: dict[str, Any],
    validity_seconds: int,
    refresh_window_seconds: int,
    description: str,
    by: str,
) -> EvaluationTier:
    """Create or replace a tier. Certifications already issued keep their times; the next
    evaluation uses the new suite and validity."""
    if validity_seconds <= 0:
        raise CertificationError("validity must be positive")
    if not 0 <= refresh_window_seconds < validity_seconds:
        raise CertificationError(
            f"the refresh window ({refresh_window_seconds}s) must be shorter than the validity "
            f"({validity_seconds}s), or the refresh would be due as soon as a certification is "
            "issued"
        )
    tier = session.get(EvaluationTier, name, with_for_update=True)
    if tier is None:
        tier = EvaluationTier(name=name)
        session.add(tier)
    tier.suite = suite
    tier.validity_seconds = validity_seconds
    tier.refresh_window_seconds = refresh_window_seconds
    tier.description = description
    tier.updated_by = by
    session.flush()
    return tier


def get_tier(session: Session, name: str) -> EvaluationTier:
    tier = session.get(EvaluationTier, name)
    if tier is None:
        raise TierNotFoundError(f"no evaluation tier {name!r}; create it with `drydock tiers put`")
    return tier


def list_tiers(session: Session) -> Sequence[EvaluationTier]:
    return session.execute(select(EvaluationTier).order_by(EvaluationTier.name)).scalars().all()


# ---- certifications ------------------------------------------------------------------------------


def active_certification(
    session: Session, digest: str, tier: str, *, lock: bool = False
) -> EvaluationCertification | None:
    stmt = select(EvaluationCertification).where(
        EvaluationCertification.digest == digest,
        EvaluationCertification.tier == tier,
        EvaluationCertification.status == CertificationStatus.ACTIVE.value,
    )
    if lock:
        stmt = stmt.with_for_update()
    return session.execute(stmt).scalar_one_or_none()


def latest_certification(
    session: Session, digest: str, tier: str
) -> EvaluationCertification | None:
    """The newest evaluation of a digest at a tier, whatever its outcome: what the policy
    engine's freshness gate judges."""
    return session.execute(
        select(EvaluationCertification)
        .where(EvaluationCertification.digest == digest, EvaluationCertification.tier == tier)
        .order_by(EvaluationCertification.evaluated_at.desc())
        .limit(1)
    ).scalar_one_or_none()


def certification_for_job(session: Session, job_id: uuid.UUID) -> EvaluationCertification | None:
    return session.execute(
        select(EvaluationCertification).where(EvaluationCertification.job_id == job_id)
    ).scalar_one_or_none()


def get_certification(session: Session, cert_id: uuid.UUID) -> EvaluationCertification:
    cert = session.get(EvaluationCertification, cert_id)
    if cert is None:
        raise NotFoundError(f"no certification {cert_id}")
    return cert


def lineage(session: Session, cert_id: uuid.UUID) -> list[EvaluationCertification]:
    """The certification and every one it replaced, newest first (one recursive query)."""
    rows = session.execute(
        text(
            """
            WITH RECURSIVE chain(id, depth) AS (
                SELECT id, 0 FROM evaluation_certifications WHERE id = :id
                UNION ALL
                SELECT c.replaces_id, chain.depth + 1
                  FROM chain JOIN evaluation_certifications c ON c.id = chain.id
                 WHERE c.replaces_id IS NOT NULL AND chain.depth < 1000
            )
            SELECT id FROM chain ORDER BY depth
            """
        ),
        {"id": cert_id},
    ).scalars()
    ids = list(rows)
    if not ids:
        raise NotFoundError(f"no certification {cert_id}")
    found = {
        c.id: c
        for c in session.execute(
            select(EvaluationCertification).where(EvaluationCertification.id.in_(ids))
        ).scalars()
    }
    return [found[i] for i in ids]


def list_certifications(
    session: Session,
    *,
    digest: str | None = None,
    tier: str | None = None,
    status: str | None = None,
    limit: int = 50,
) -> Sequence[EvaluationCertification]:
    stmt = select(EvaluationCertification)
    if digest is not None:
        stmt = stmt.where(EvaluationCertification.digest == digest)
    if tier is not None:
        stmt = stmt.where(EvaluationCertification.tier == tier)
    if status is not None:
        stmt = stmt.where(EvaluationCertification.status == status)
    return (
        session.execute(stmt.order_by(EvaluationCertification.evaluated_at.desc()).limit(limit))
        .scalars()
        .all()
    )


@dataclass(frozen=True)
class Evaluation:
    """What one run of a tier's suite found, to be recorded."""

    job_id: uuid.UUID
    digest: str
    tier: str
    host: str
    repository: str
    passed: bool
    evidence: list[dict[str, Any]]
    summary: str
    evaluated_at: datetime


def record_evaluation(session: Session, evaluation: Evaluation) -> EvaluationCertification:
    """Record an evaluation: on a pass, issue the next certification (the active one is
    superseded); on a fail, keep the evidence as a failed row and revoke the active one.

    Idempotent per job: a redelivered refresh finds the row its first delivery wrote."""
    existing = certification_for_job(session, evaluation.job_id)
    if existing is not None:
        return existing
    tier = get_tier(session, evaluation.tier)
    current = active_certification(session, evaluation.digest, evaluation.tier, lock=True)
    previous = current or latest_certification(session, evaluation.digest, evaluation.tier)
    at = evaluation.evaluated_at
    row = EvaluationCertification(
        digest=evaluation.digest,
        tier=evaluation.tier,
        host=evaluation.host,
        repository=evaluation.repository,
        evidence=evaluation.evidence,
        summary=evaluation.summary,
        evaluated_at=at,
        cadence_seconds=tier.validity_seconds,
        replaces_id=previous.id if previous is not None else None,
        job_id=evaluation.job_id,
    )
    name = image_certification_name(evaluation.tier)
    if current is not None:
        current.status = (
            CertificationStatus.SUPERSEDED.value
            if evaluation.passed
            else CertificationStatus.REVOKED.value
        )
        if not evaluation.passed:
            current.revoked_at = at
            current.reason = f"evaluation failed: {evaluation.summary}"
        # The unique index allows one active row: the old one leaves before the new one comes.
        session.flush()
    if evaluation.passed:
        row.status = CertificationStatus.ACTIVE.value
        row.issued_at = at
        row.expires_at = at + timedelta(seconds=tier.validity_seconds)
        row.refresh_at = row.expires_at - timedelta(seconds=tier.refresh_window_seconds)
        _keep_image_certification(session, evaluation, name, row.issued_at, row.expires_at)
    else:
        row.status = CertificationStatus.FAILED.value
        row.reason = evaluation.summary
        _revoke_image_certifications(session, evaluation.digest, name, at)
    session.add(row)
    session.flush()
    return row


def revoke(session: Session, cert_id: uuid.UUID, *, reason: str, at: datetime) -> None:
    """An operator's revocation of an active certification."""
    cert = session.get(EvaluationCertification, cert_id, with_for_update=True)
    if cert is None:
        raise NotFoundError(f"no certification {cert_id}")
    if cert.status != CertificationStatus.ACTIVE.value:
        raise CertificationError(f"certification {cert_id} is {cert.status}, not active")
    cert.status = CertificationStatus.REVOKED.value
    cert.revoked_at = at
    cert.reason = reason
    _revoke_image_certifications(session, cert.digest, image_certification_name(cert.tier), at)


def release_refresh(session: Session, cert_id: uuid.UUID, refresh_job_id: uuid.UUID) -> bool:
    """Let the next sweep enqueue a refresh again: the one claimed (``refresh_job_id``) did not
    produce an evaluation (refused by policy, preempted, dead-lettered, or never sent)."""
    released = session.execute(
        update(EvaluationCertification)
        .where(
            EvaluationCertification.id == cert_id,
            EvaluationCertification.refresh_job_id == refresh_job_id,
            EvaluationCertification.status == CertificationStatus.ACTIVE.value,
        )
        .values(refresh_job_id=None, refresh_requested_at=None)
    )
    return bool(released.rowcount)  # type: ignore[attr-defined]


def _keep_image_certification(
    session: Session, evaluation: Evaluation, name: str, issued: datetime, expires: datetime
) -> None:
    live = session.execute(
        select(ImageCertification)
        .where(
            ImageCertification.host == evaluation.host,
            ImageCertification.repository == evaluation.repository,
            ImageCertification.digest == evaluation.digest,
            ImageCertification.name == name,
            ImageCertification.revoked_at.is_(None),
        )
        .with_for_update()
    ).scalars()
    rows = list(live)
    if rows:
        for row in rows:
            row.expires_at = expires
        return
    session.add(
        ImageCertification(
            host=evaluation.host,
            repository=evaluation.repository,
            digest=evaluation.digest,
            name=name,
            issued_at=issued,
            expires_at=expires,
        )
    )


def _revoke_image_certifications(session: Session, digest: str, name: str, at: datetime) -> None:
    session.execute(
        update(ImageCertification)
        .where(
            ImageCertification.digest == digest,
            ImageCertification.name == name,
            ImageCertification.revoked_at.is_(None),
        )
        .values(revoked_at=at)
    )

"""Admission approval tokens as rows: who issued one, for which asset, tenant and task pattern,
until when; whether (and by which job) it was used, and whether it was revoked.

A token is a signed JWT (``policy.admission``) whose ``jti`` is this row's id: the signature
says the fleet made it, the row says it still stands. Each token admits one job: the use is
claimed in the enqueue's own transaction (an UPDATE guarded by ``used_at IS NULL``), so two
enqueues racing with one token admit one job, and an enqueue that fails gives the use back.
"""

from __future__ import annotations

import uuid
from collections.abc import Sequence
from datetime import datetime

from sqlalchemy import DateTime, ForeignKey, Index, String, Uuid, func, select, update
from sqlalchemy.orm import Mapped, Session, mapped_column

from kernel.errors import NotFoundError
from models.base import Base


class AdmissionToken(Base):
    __tablename__ = "admission_tokens"

    # The JWT's jti.
    id: Mapped[str] = mapped_column(String(64), primary_key=True)
    asset_id: Mapped[uuid.UUID] = mapped_column(
        Uuid, ForeignKey("trust_assets.id", ondelete="CASCADE")
    )
    tenant: Mapped[str] = mapped_column(String(100))
    task_pattern: Mapped[str] = mapped_column(String(200))
    approver: Mapped[str] = mapped_column(String(200))
    issued_at: Mapped[datetime] = mapped_column(DateTime(timezone=True))
    expires_at: Mapped[datetime] = mapped_column(DateTime(timezone=True))
    used_at: Mapped[datetime | None] = mapped_column(DateTime(timezone=True))
    used_by_job_id: Mapped[uuid.UUID | None] = mapped_column(
        Uuid, ForeignKey("jobs.id", ondelete="SET NULL")
    )
    revoked_at: Mapped[datetime | None] = mapped_column(DateTime(timezone=True))
    revoked_by: Mapped[str | None] = mapped_column(String(200))

    __table_args__ = (Index(None, "tenant", "issued_at"), Index(None, "used_by_job_id"))


def record_issued(session: Session, token: AdmissionToken) -> None:
    session.add(token)
    session.flush()


def claim_use(session: Session, token_id: str, job_id: uuid.UUID | None) -> str | None:
    """Mark the token used by ``job_id``; None when claimed, else why it cannot be (never
    issued here, revoked, already used). Commits or rolls back with the caller's session."""
    claimed = session.execute(
        update(AdmissionToken)
        .where(
            AdmissionToken.id == token_id,
            AdmissionToken.used_at.is_(None),
            AdmissionToken.revoked_at.is_(None),
        )
        .values(used_at=func.now(), used_by_job_id=job_id)
        .returning(AdmissionToken.id)
    ).first()
    if claimed is not None:
        return None
    row = session.get(AdmissionToken, token_id)
    if row is None:
        return "this fleet has no record of issuing it"
    if row.revoked_at is not None:
        return f"it was revoked by {row.revoked_by} at {row.revoked_at:%Y-%m-%d %H:%M:%S}"
    used_by = f" by job {row.used_by_job_id}" if row.used_by_job_id else ""
    return f"it was already used{used_by}: each token admits one job"


def release_use(session: Session, job_id: uuid.UUID) -> None:
    """Give back the use of the token that admitted a job that was never sent."""
    session.execute(
        update(AdmissionToken)
        .where(AdmissionToken.used_by_job_id == job_id)
        .values(used_at=None, used_by_job_id=None)
    )


def revoke(session: Session, token_id: str, *, by: str) -> AdmissionToken:
    """Revoke a token (it admits nothing from now on); revoking twice keeps the first."""
    row = session.get(AdmissionToken, token_id, with_for_update=True)
    if row is None:
        raise NotFoundError(f"no admission token {token_id}")
    if row.revoked_at is None:
        row.revoked_at = func.now()
        row.revoked_by = by
        session.flush()
        session.refresh(row)
    return row


def list_tokens(
    session: Session, *, tenant: str | None, limit: int = 100
) -> Sequence[AdmissionToken]:
    stmt = select(AdmissionToken)
    if tenant is not None:
        stmt = stmt.where(AdmissionToken.tenant == tenant)
    return session.scalars(stmt.order_by(AdmissionToken.issued_at.desc()).limit(limit)).all()

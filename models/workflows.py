"""Workflow definitions as stored: one row per version of a tenant's workflow. Every read takes
the caller's tenant: another tenant's workflow is not found, exactly as if it did not exist."""

from __future__ import annotations

import uuid
from datetime import datetime
from typing import Any

from sqlalchemy import (
    CheckConstraint,
    DateTime,
    Integer,
    String,
    Text,
    UniqueConstraint,
    Uuid,
    func,
    select,
)
from sqlalchemy.dialects.postgresql import JSONB, distinct_on
from sqlalchemy.orm import Mapped, Session, mapped_column

from kernel.errors import NotFoundError
from models.base import Base


class WorkflowVersion(Base):
    """One version of a tenant's workflow. Versions are never changed: a new definition under
    the same name is the next version, so a run can name exactly what it ran."""

    __tablename__ = "workflow_definitions"

    id: Mapped[uuid.UUID] = mapped_column(Uuid, primary_key=True, default=uuid.uuid4)
    tenant: Mapped[str] = mapped_column(String(100))
    name: Mapped[str] = mapped_column(String(100))
    version: Mapped[int] = mapped_column(Integer)
    # The whole definition as validated (tasks.workflows.definitions), steps and all; never a
    # secret's value, only references to secrets.
    definition: Mapped[dict[str, Any]] = mapped_column(JSONB)
    description: Mapped[str] = mapped_column(Text, default="")
    created_at: Mapped[datetime] = mapped_column(DateTime(timezone=True), server_default=func.now())
    created_by: Mapped[str | None] = mapped_column(String(200))

    __table_args__ = (
        UniqueConstraint("tenant", "name", "version"),
        CheckConstraint("version > 0", name="version"),
    )


class WorkflowNotFoundError(NotFoundError):
    def __init__(self, tenant: str, name: str, version: int | None = None) -> None:
        which = f"{name} version {version}" if version is not None else name
        super().__init__(f"tenant {tenant} has no workflow {which}")


def add_definition_version(
    session: Session,
    *,
    tenant: str,
    name: str,
    definition: dict[str, Any],
    description: str,
    created_by: str | None,
) -> WorkflowVersion:
    """Store the next version of a tenant's workflow (1 for a new name). Two writers racing
    for the same version meet the unique constraint; the caller tries again."""
    newest = session.scalar(
        select(func.max(WorkflowVersion.version)).where(
            WorkflowVersion.tenant == tenant, WorkflowVersion.name == name
        )
    )
    row = WorkflowVersion(
        tenant=tenant,
        name=name,
        version=(newest or 0) + 1,
        definition=definition,
        description=description,
        created_by=created_by,
    )
    session.add(row)
    session.flush()
    return row


def get_definition(
    session: Session, tenant: str, name: str, version: int | None = None
) -> WorkflowVersion:
    """A tenant's workflow: the given version, or the newest."""
    query = select(WorkflowVersion).where(
        WorkflowVersion.tenant == tenant, WorkflowVersion.name == name
    )
    if version is not None:
        query = query.where(WorkflowVersion.version == version)
    row = session.scalars(query.order_by(WorkflowVersion.version.desc()).limit(1)).first()
    if row is None:
        raise WorkflowNotFoundError(tenant, name, version)
    return row


def list_definitions(session: Session, tenant: str | None) -> list[WorkflowVersion]:
    """The newest version of every workflow (of one tenant, or of all)."""
    query = (
        select(WorkflowVersion)
        .ext(distinct_on(WorkflowVersion.tenant, WorkflowVersion.name))
        .order_by(
            WorkflowVersion.tenant,
            WorkflowVersion.name,
            WorkflowVersion.version.desc(),
        )
    )
    if tenant is not None:
        query = query.where(WorkflowVersion.tenant == tenant)
    return list(session.scalars(query))


def definition_versions(session: Session, tenant: str, name: str) -> list[int]:
    return list(
        session.scalars(
            select(WorkflowVersion.version)
            .where(WorkflowVersion.tenant == tenant, WorkflowVersion.name == name)
            .order_by(WorkflowVersion.version)
        )
    )

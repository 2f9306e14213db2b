"""Workflow definitions as stored: one row per version of a tenant's workflow. Every read takes
the caller's tenant: another tenant's workflow is not found, exactly as if it did not exist."""

from __future__ import annotations

from typing import Any

from sqlalchemy import (
    CheckConstraint,
    UniqueConstraint,
)
from sqlalchemy.dialects.postgresql import JSONB
from sqlalchemy.orm import Mapped, Session, mapped_column

from kernel.errors import NotFoundError
from models import versioned
from models.base import Base
from models.versioned import TenantVersioned


class WorkflowVersion(TenantVersioned, Base):
    """One version of a tenant's workflow (models.versioned: versions are never changed, so a
    run can name exactly what it ran)."""

    __tablename__ = "workflow_definitions"

    # The whole definition as validated (tasks.workflows.definitions), steps and all; never a
    # secret's value, only references to secrets.
    definition: Mapped[dict[str, Any]] = mapped_column(JSONB)

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
    row = WorkflowVersion(
        tenant=tenant,
        name=name,
        version=versioned.next_version(session, WorkflowVersion, tenant, name),
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
    row = versioned.find_version(session, WorkflowVersion, tenant, name, version)
    if row is None:
        raise WorkflowNotFoundError(tenant, name, version)
    return row


def list_definitions(session: Session, tenant: str | None) -> list[WorkflowVersion]:
    """The newest version of every workflow (of one tenant, or of all)."""
    return versioned.newest_of_each(session, WorkflowVersion, tenant)


def definition_versions(session: Session, tenant: str, name: str) -> list[int]:
    return [row.version for row in versioned.every_version(session, WorkflowVersion, tenant, name)]

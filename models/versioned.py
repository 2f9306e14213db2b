"""Definitions a tenant keeps by name in numbered versions (remediation playbooks, workflows):
the columns they share and the queries on them, written once.

A version is never changed: a new definition under a name is its next version, so whatever
ran (a remediation run, a workflow run) names exactly what it ran.
"""

from __future__ import annotations

import uuid
from datetime import datetime
from typing import TypeVar

from sqlalchemy import DateTime, Integer, String, Text, Uuid, func, select
from sqlalchemy.dialects.postgresql import distinct_on
from sqlalchemy.orm import Mapped, Session, mapped_column


class TenantVersioned:
    """The columns of a tenant's definition kept in versions (a mixin of mapped classes, which
    add ``UniqueConstraint("tenant", "name", "version")`` to their table)."""

    id: Mapped[uuid.UUID] = mapped_column(Uuid, primary_key=True, default=uuid.uuid4)
    tenant: Mapped[str] = mapped_column(String(100))
    name: Mapped[str] = mapped_column(String(100))
    version: Mapped[int] = mapped_column(Integer)
    description: Mapped[str] = mapped_column(Text, default="")
    created_at: Mapped[datetime] = mapped_column(DateTime(timezone=True), server_default=func.now())
    created_by: Mapped[str | None] = mapped_column(String(200))


VersionedT = TypeVar("VersionedT", bound=TenantVersioned)


def next_version(session: Session, model: type[TenantVersioned], tenant: str, name: str) -> int:
    """The version a new definition under ``name`` gets (1 for a new name). Two writers racing
    for it meet the table's unique constraint; the caller tries again."""
    newest = session.scalar(
        select(func.max(model.version)).where(model.tenant == tenant, model.name == name)
    )
    return (newest or 0) + 1


def find_version(
    session: Session, model: type[VersionedT], tenant: str, name: str, version: int | None
) -> VersionedT | None:
    """The given version of a tenant's definition, or the newest; None when there is none."""
    query = select(model).where(model.tenant == tenant, model.name == name)
    if version is not None:
        query = query.where(model.version == version)
    return session.scalars(query.order_by(model.version.desc()).limit(1)).first()


def newest_of_each(
    session: Session, model: type[VersionedT], tenant: str | None
) -> list[VersionedT]:
    """The newest version of every definition (of one tenant, or of all), by tenant and name."""
    query = (
        select(model)
        .ext(distinct_on(model.tenant, model.name))
        .order_by(model.tenant, model.name, model.version.desc())
    )
    if tenant is not None:
        query = query.where(model.tenant == tenant)
    return list(session.scalars(query))


def every_version(
    session: Session, model: type[VersionedT], tenant: str, name: str
) -> list[VersionedT]:
    """Every version of a tenant's definition, oldest first."""
    return list(
        session.scalars(
            select(model).where(model.tenant == tenant, model.name == name).order_by(model.version)
        )
    )

"""Projects and their git remotes: where a workflow run clones from (the project's repository
at a revision) and where it pushes each step's commit (every remote of the project).

A remote names its credential (``credential_ref``), never holds it: the worker resolves the
name from its own environment (``DRYDOCK_GIT_CREDENTIAL_<NAME>``), so no secret is stored,
shown or sent over the API. URLs carrying credentials are refused for the same reason.
"""

from __future__ import annotations

import re
import uuid
from collections.abc import Sequence
from datetime import datetime
from urllib.parse import urlsplit

from sqlalchemy import (
    DateTime,
    Float,
    ForeignKey,
    String,
    Text,
    UniqueConstraint,
    Uuid,
    func,
    select,
)
from sqlalchemy.dialects.postgresql import JSONB
from sqlalchemy.orm import Mapped, Session, mapped_column, relationship

from kernel.errors import DrydockError, NotFoundError
from models.base import Base

DEFAULT_PROTECTED_BRANCHES = ("main",)

# A credential reference becomes part of an environment variable's name.
_CREDENTIAL_REF = re.compile(r"^[A-Za-z][A-Za-z0-9_]{0,62}$")
_NAME = re.compile(r"^[a-z0-9][a-z0-9_.-]{0,62}$")


class ProjectRefusedError(DrydockError):
    """A project or remote Drydock will not store; the message says why."""


class Project(Base):
    __tablename__ = "projects"

    id: Mapped[uuid.UUID] = mapped_column(Uuid, primary_key=True, default=uuid.uuid4)
    tenant: Mapped[str] = mapped_column(String(100))
    name: Mapped[str] = mapped_column(String(100))
    # The clone source of every run.
    repository_url: Mapped[str] = mapped_column(Text)
    default_branch: Mapped[str] = mapped_column(String(255), default="main")
    created_at: Mapped[datetime] = mapped_column(DateTime(timezone=True), server_default=func.now())
    created_by: Mapped[str | None] = mapped_column(String(200))

    remotes: Mapped[list[ProjectRemote]] = relationship(
        back_populates="project", order_by="ProjectRemote.name", cascade="all, delete-orphan"
    )

    __table_args__ = (UniqueConstraint("tenant", "name"),)


class ProjectRemote(Base):
    __tablename__ = "project_remotes"

    id: Mapped[uuid.UUID] = mapped_column(Uuid, primary_key=True, default=uuid.uuid4)
    project_id: Mapped[uuid.UUID] = mapped_column(
        Uuid, ForeignKey("projects.id", ondelete="CASCADE")
    )
    name: Mapped[str] = mapped_column(String(100))
    url: Mapped[str] = mapped_column(Text)
    # A name only (of DRYDOCK_GIT_CREDENTIAL_<NAME> in the worker's environment); None: anonymous.
    credential_ref: Mapped[str | None] = mapped_column(String(100))
    # fnmatch patterns of branches a push to needs an approval token.
    protected_branches: Mapped[list[str]] = mapped_column(
        JSONB, default=lambda: list(DEFAULT_PROTECTED_BRANCHES)
    )
    last_checked_at: Mapped[datetime | None] = mapped_column(DateTime(timezone=True))
    last_check_ok: Mapped[bool | None]
    last_check_latency_ms: Mapped[float | None] = mapped_column(Float)
    last_check_error: Mapped[str | None] = mapped_column(Text)

    project: Mapped[Project] = relationship(back_populates="remotes")

    __table_args__ = (UniqueConstraint("project_id", "name"),)


class ProjectNotFoundError(NotFoundError):
    def __init__(self, tenant: str, name: str) -> None:
        super().__init__(f"tenant {tenant} has no project {name}")


def _check_url(url: str) -> str:
    """Refuse a URL carrying a password or token. Scheme and shape are the edge's to check
    (adapters.git_workspace.check_remote_url) before a URL reaches here: models sit below
    adapters."""
    if "://" in url:
        try:
            parts = urlsplit(url)
        except ValueError:
            raise ProjectRefusedError("the URL cannot be parsed") from None
        # Over HTTP a user name alone can be the token (https://<token>@host/...).
        token_as_user = parts.scheme.lower() in ("http", "https") and parts.username is not None
        if parts.password is not None or token_as_user:
            raise ProjectRefusedError(
                "the URL carries a credential; name one with a credential reference instead"
            )
    return url


def _check_name(name: str, what: str) -> str:
    if not _NAME.match(name):
        raise ProjectRefusedError(f"{what} {name!r} must match {_NAME.pattern}")
    return name


def create_project(
    session: Session,
    *,
    tenant: str,
    name: str,
    repository_url: str,
    default_branch: str,
    created_by: str | None,
) -> Project:
    _check_name(name, "project name")
    _check_url(repository_url)
    if session.scalar(select(Project.id).where(Project.tenant == tenant, Project.name == name)):
        raise ProjectRefusedError(f"tenant {tenant} already has a project {name}")
    row = Project(
        tenant=tenant,
        name=name,
        repository_url=repository_url,
        default_branch=default_branch,
        created_by=created_by,
    )
    session.add(row)
    session.flush()
    return row


def get_project(session: Session, tenant: str, name: str) -> Project:
    row = session.scalars(
        select(Project).where(Project.tenant == tenant, Project.name == name)
    ).first()
    if row is None:
        raise ProjectNotFoundError(tenant, name)
    return row


def list_projects(session: Session, tenant: str | None = None) -> Sequence[Project]:
    query = select(Project)
    if tenant is not None:
        query = query.where(Project.tenant == tenant)
    return session.scalars(query.order_by(Project.tenant, Project.name)).all()


def add_remote(
    session: Session,
    project: Project,
    *,
    name: str,
    url: str,
    credential_ref: str | None,
    protected_branches: Sequence[str] | None,
) -> ProjectRemote:
    _check_name(name, "remote name")
    _check_url(url)
    if credential_ref is not None and not _CREDENTIAL_REF.match(credential_ref):
        raise ProjectRefusedError(
            f"credential reference {credential_ref!r} must be a name ({_CREDENTIAL_REF.pattern}), "
            "never the credential itself"
        )
    if any(r.name == name for r in project.remotes):
        raise ProjectRefusedError(f"project {project.name} already has a remote {name}")
    row = ProjectRemote(
        name=name,
        url=url,
        credential_ref=credential_ref,
        protected_branches=list(
            DEFAULT_PROTECTED_BRANCHES if protected_branches is None else protected_branches
        ),
    )
    project.remotes.append(row)
    session.flush()
    return row


def remove_remote(session: Session, project: Project, name: str) -> None:
    for remote in project.remotes:
        if remote.name == name:
            project.remotes.remove(remote)
            session.flush()
            return
    raise NotFoundError(f"project {project.name} has no remote {name}")


def remotes_to_check(
    session: Session, *, tenant: str | None = None, project: str | None = None
) -> Sequence[ProjectRemote]:
    query = select(ProjectRemote).join(Project)
    if tenant is not None:
        query = query.where(Project.tenant == tenant)
    if project is not None:
        query = query.where(Project.name == project)
    return session.scalars(query.order_by(Project.tenant, Project.name, ProjectRemote.name)).all()


def record_check(
    session: Session,
    remote_id: uuid.UUID,
    *,
    ok: bool,
    latency_ms: float | None,
    error: str | None,
) -> None:
    row = session.get(ProjectRemote, remote_id)
    if row is None:
        return
    row.last_checked_at = func.now()
    row.last_check_ok = ok
    row.last_check_latency_ms = latency_ms
    row.last_check_error = error
    session.flush()

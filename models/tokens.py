"""API tokens: created with a name and task-name scopes, stored as SHA-256, revoked by name.

Scopes are task-name patterns, plus the permissions in PERMISSIONS for what is not a task
(approving remediation runs). A token may be bound to a tenant: it then reads and changes only
that tenant's remediation playbooks, runs and artifacts.

A token is 256 random bits, so a fast hash is enough: nobody can brute-force the preimage, and
looking a token up by its hash is one index probe per request.
"""

from __future__ import annotations

import fnmatch
import hashlib
import re
import secrets
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta

from sqlalchemy import (
    BigInteger,
    DateTime,
    Index,
    String,
    func,
    select,
    text,
    update,
)
from sqlalchemy.dialects.postgresql import JSONB
from sqlalchemy.orm import Mapped, Session, mapped_column

from kernel.errors import DrydockError
from models.base import Base


class ApiToken(Base):
    """A bearer token of the HTTP API. Only its SHA-256 is stored: the token itself is shown
    once, when it is created."""

    __tablename__ = "api_tokens"

    id: Mapped[int] = mapped_column(BigInteger, primary_key=True, autoincrement=True)
    name: Mapped[str] = mapped_column(String(100))
    token_hash: Mapped[str] = mapped_column(String(64), unique=True)
    # Task-name patterns (fnmatch, e.g. "builds.*"): what the token may enqueue and read.
    scopes: Mapped[list[str]] = mapped_column(JSONB)
    # The tenant the token acts for: it sees and changes only that tenant's remediation
    # playbooks, runs and artifacts. None: an operator token, across tenants.
    tenant: Mapped[str | None] = mapped_column(String(100))
    created_at: Mapped[datetime] = mapped_column(DateTime(timezone=True), server_default=func.now())
    created_by: Mapped[str | None] = mapped_column(String(200))
    last_used_at: Mapped[datetime | None] = mapped_column(DateTime(timezone=True))
    revoked_at: Mapped[datetime | None] = mapped_column(DateTime(timezone=True))

    # A name is reused only once its previous token is revoked; revoked ones stay for audit.
    __table_args__ = (
        Index(
            "uq_api_tokens_active_name",
            "name",
            unique=True,
            postgresql_where=text("revoked_at IS NULL"),
        ),
    )


TOKEN_PREFIX = "ddk_"
# Writing last_used_at on every request would make each authenticated read a write.
LAST_USED_RESOLUTION = timedelta(minutes=1)
_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9_.@-]{0,99}")
_SCOPE = re.compile(r"[a-z0-9_.*?\[\]-]{1,200}")


# Scopes that are not task names: what else a token may do.
PERMISSIONS: dict[str, str] = {
    "remediation.approve": (
        "approve or reject remediation runs, approve workspaces, set lanes and freezes"
    ),
    "remediation.playbooks": "create remediation playbooks; draft, simulate and promote workspaces",
    "policy.decide": "ask for placement decisions and read recorded decisions",
    "admission.approve": "issue approval tokens for jobs on protected assets",
    "trust.read": "read trust assets, their history and posture; stream their transitions",
    "trust.transition": "move trust assets by hand (quarantine, attest again)",
    "workflows.define": "create workflow definitions (new versions)",
    "workflows.read": "read workflow definitions",
    "runtime.servers": "add MCP servers and their releases",
    "runtime.read": "read MCP servers, their releases, instances and release history",
    "runtime.promote": "promote releases to tiers; set each tier's promotion rules",
    "runtime.approve": "issue approval tokens for promotions to protected tiers",
}


class TokenError(DrydockError):
    """A token could not be created or revoked as asked."""


@dataclass(frozen=True)
class Caller:
    """Who is calling the API, as far as authorisation cares."""

    name: str
    scopes: tuple[str, ...]
    # The tenant the token acts for; None: an operator token, across tenants.
    tenant: str | None = None

    def may_use(self, task_name: str) -> bool:
        return task_may_be_used(self.scopes, task_name)

    def allowed_tasks(self, known: Iterable[str]) -> list[str]:
        return sorted(name for name in known if self.may_use(name))


def task_may_be_used(scopes: Sequence[str], task_name: str) -> bool:
    return any(fnmatch.fnmatchcase(task_name, pattern) for pattern in scopes)


def hash_token(token: str) -> str:
    return hashlib.sha256(token.encode()).hexdigest()


def check_scopes(scopes: Sequence[str], known_tasks: Iterable[str]) -> list[str]:
    """The scopes, cleaned; TokenError for a malformed one or one that matches no task (a typo
    would otherwise make a token that can do nothing, silently)."""
    known = sorted({*known_tasks, *PERMISSIONS})
    cleaned: list[str] = []
    for raw in scopes:
        for scope in (part.strip() for part in raw.split(",")):
            if not scope:
                continue
            if not _SCOPE.fullmatch(scope):
                raise TokenError(
                    f"scope {scope!r} is not a task-name pattern like 'builds.*' or "
                    "'pushes.push_image'"
                )
            if not any(fnmatch.fnmatchcase(task, scope) for task in known):
                raise TokenError(
                    f"scope {scope!r} matches no task or permission; known: {', '.join(known)}"
                )
            if scope not in cleaned:
                cleaned.append(scope)
    if not cleaned:
        raise TokenError("give at least one scope, e.g. --scope 'builds.*' (or '*' for all)")
    return cleaned


def create_token(
    session: Session,
    *,
    name: str,
    scopes: Sequence[str],
    known_tasks: Iterable[str],
    created_by: str | None,
    tenant: str | None = None,
) -> tuple[ApiToken, str]:
    """A new token and its plaintext, which is not stored anywhere and cannot be shown again."""
    if not _NAME.fullmatch(name):
        raise TokenError(
            f"token name {name!r} must be 1-100 letters, digits or _.@- and start with a "
            "letter or digit"
        )
    cleaned = check_scopes(scopes, known_tasks)
    if tenant is not None and not _NAME.fullmatch(tenant):
        raise TokenError(f"tenant {tenant!r} must be 1-100 letters, digits or _.@-")
    existing = session.execute(
        select(ApiToken.id).where(ApiToken.name == name, ApiToken.revoked_at.is_(None))
    ).first()
    if existing is not None:
        raise TokenError(f"a token named {name!r} already exists; revoke it first")
    plaintext = TOKEN_PREFIX + secrets.token_urlsafe(32)
    token = ApiToken(
        name=name,
        token_hash=hash_token(plaintext),
        scopes=cleaned,
        created_by=created_by,
        tenant=tenant,
    )
    session.add(token)
    session.flush()
    return token, plaintext


def revoke_token(session: Session, name: str, *, at: datetime | None = None) -> bool:
    """Revoke the active token of that name; False when there is none."""
    result = session.execute(
        update(ApiToken)
        .where(ApiToken.name == name, ApiToken.revoked_at.is_(None))
        .values(revoked_at=at or datetime.now(UTC))
        .returning(ApiToken.id)
    )
    return result.first() is not None


def list_tokens(session: Session, *, include_revoked: bool = False) -> Sequence[ApiToken]:
    query = select(ApiToken).order_by(ApiToken.created_at.desc(), ApiToken.id.desc())
    if not include_revoked:
        query = query.where(ApiToken.revoked_at.is_(None))
    return session.execute(query).scalars().all()


def authenticate(session: Session, plaintext: str, *, now: datetime | None = None) -> Caller | None:
    """The caller a presented token stands for, or None for an unknown or revoked token."""
    if not plaintext.startswith(TOKEN_PREFIX):
        return None
    token = session.execute(
        select(ApiToken).where(
            ApiToken.token_hash == hash_token(plaintext), ApiToken.revoked_at.is_(None)
        )
    ).scalar_one_or_none()
    if token is None:
        return None
    moment = now or datetime.now(UTC)
    if token.last_used_at is None or moment - token.last_used_at > LAST_USED_RESOLUTION:
        token.last_used_at = moment
    return Caller(name=token.name, scopes=tuple(token.scopes), tenant=token.tenant)


def caller_by_id(session: Session, token_id: int) -> Caller | None:
    """The caller of a token known by its id (a console session's), or None once revoked."""
    token = session.get(ApiToken, token_id)
    if token is None or token.revoked_at is not None:
        return None
    return Caller(name=token.name, scopes=tuple(token.scopes), tenant=token.tenant)


def token_id_of(session: Session, plaintext: str) -> int | None:
    """The id of a presented, unrevoked token (what a console session keeps instead of it)."""
    if not plaintext.startswith(TOKEN_PREFIX):
        return None
    return session.execute(
        select(ApiToken.id).where(
            ApiToken.token_hash == hash_token(plaintext), ApiToken.revoked_at.is_(None)
        )
    ).scalar_one_or_none()

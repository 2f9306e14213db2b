"""Registry credentials at rest: one row per registry, the password sealed with the fleet key.

Rows, sealing and queries only: what a provider does to issue, refresh or rotate a credential
(an htpasswd file written, a credential helper asked) is ``adapters.credentials``', which
stores what it issued here, under the row lock ``locked_row`` takes. Every probe and rotation
is a ``credential_events`` row (``record_event``); its detail never holds a secret.
"""

from __future__ import annotations

import uuid
from collections.abc import Collection, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from enum import Enum, StrEnum
from typing import Any, Literal

from sqlalchemy import (
    BigInteger,
    CheckConstraint,
    DateTime,
    ForeignKey,
    Identity,
    Index,
    Integer,
    String,
    Text,
    Uuid,
    delete,
    func,
    select,
    update,
)
from sqlalchemy.dialects.postgresql import JSONB
from sqlalchemy.orm import Mapped, Session, mapped_column

from kernel.errors import DrydockError, NotFoundError
from kernel.kubernetes_names import NamespaceName, ObjectName
from kernel.redaction import seal, unseal
from kernel.settings import get_settings
from models.base import Base, sql_in_list
from models.db import session_scope


class CredentialProviderKind(StrEnum):
    STATIC = "static"
    HTPASSWD = "htpasswd"
    COMMAND = "command"


class RegistryCredentialRow(Base):
    """How Drydock gets credentials for one registry. Passwords are sealed with the fleet key
    (DRYDOCK_SECRET_KEY, Fernet) and never leave this table unsealed except into a push."""

    __tablename__ = "registry_credentials"

    id: Mapped[int] = mapped_column(BigInteger, primary_key=True, autoincrement=True)
    # The registry's host[:port], as image references name it ("registry.example.com:5000").
    host: Mapped[str] = mapped_column(String(255), unique=True)
    provider: Mapped[str] = mapped_column(String(20))
    username: Mapped[str | None] = mapped_column(String(255))
    # The last password issued (static: the one given; htpasswd: the one set; command: cached).
    sealed_password: Mapped[str | None] = mapped_column(Text)
    # Provider settings: {"htpasswd_path": ...} or {"command": [argv...]}. Never secrets.
    config: Mapped[dict[str, Any]] = mapped_column(JSONB, default=dict, server_default="{}")
    created_at: Mapped[datetime] = mapped_column(DateTime(timezone=True), server_default=func.now())
    updated_at: Mapped[datetime] = mapped_column(DateTime(timezone=True), server_default=func.now())
    refreshed_at: Mapped[datetime | None] = mapped_column(DateTime(timezone=True))
    refresh_count: Mapped[int] = mapped_column(Integer, default=0, server_default="0")
    # Rotation (Beat's credential-rotation): rotate once the password is this old (None: only
    # when it is refused or its provider says it expires), and when the provider's credential
    # expires (a helper may say so).
    rotate_after_seconds: Mapped[int | None] = mapped_column(Integer)
    expires_at: Mapped[datetime | None] = mapped_column(DateTime(timezone=True))
    # The Kubernetes image-pull secret (a dockerconfigjson Secret) kept in step with it.
    pull_secret_namespace: Mapped[str | None] = mapped_column(String(253))
    pull_secret_name: Mapped[str | None] = mapped_column(String(253))
    probed_at: Mapped[datetime | None] = mapped_column(DateTime(timezone=True))
    probe_accepted: Mapped[bool | None]

    __table_args__ = (
        CheckConstraint(sql_in_list("provider", tuple(CredentialProviderKind)), name="provider"),
    )


class CredentialEventKind(StrEnum):
    # The registry accepted the stored credential.
    PROBE_ACCEPTED = "probe_accepted"
    # The registry refused it, or could not be asked.
    PROBE_REFUSED = "probe_refused"
    PROBE_FAILED = "probe_failed"
    ROTATED = "rotated"
    ROTATION_FAILED = "rotation_failed"
    # Its provider cannot rotate it (static): an operator must.
    ROTATION_UNSUPPORTED = "rotation_unsupported"
    # The Kubernetes image-pull secret now holds the new credential.
    PULL_SECRET_WRITTEN = "pull_secret_written"
    PULL_SECRET_FAILED = "pull_secret_failed"


class CredentialEvent(Base):
    """Every probe and rotation of a registry credential. ``detail`` never holds a secret."""

    __tablename__ = "credential_events"

    id: Mapped[int] = mapped_column(BigInteger, Identity(), primary_key=True)
    host: Mapped[str] = mapped_column(String(255))
    kind: Mapped[str] = mapped_column(String(30))
    detail: Mapped[dict[str, Any]] = mapped_column(JSONB, default=dict)
    job_id: Mapped[uuid.UUID | None] = mapped_column(
        Uuid, ForeignKey("jobs.id", ondelete="SET NULL")
    )
    at: Mapped[datetime] = mapped_column(DateTime(timezone=True), server_default=func.now())

    __table_args__ = (
        CheckConstraint(sql_in_list("kind", tuple(CredentialEventKind)), name="kind"),
        Index(None, "host", "at"),
        Index(None, "kind", "at"),
    )


class SecretKeyRequiredError(DrydockError):
    pass


class CredentialConfigError(DrydockError):
    """A provider configured with something unusable (no such file, empty command)."""


@dataclass(frozen=True)
class PullSecretRef:
    """A Kubernetes image-pull Secret kept holding a registry's credential."""

    namespace: str
    name: str

    def __str__(self) -> str:
        return f"{self.namespace}/{self.name}"

    @classmethod
    def parse(cls, text: str) -> PullSecretRef:
        """``NAMESPACE/NAME``, each a valid Kubernetes name; CredentialConfigError otherwise."""
        from pydantic import TypeAdapter, ValidationError

        namespace, slash, name = text.strip().partition("/")
        if not slash:
            raise CredentialConfigError(f"pull secret {text!r} must be NAMESPACE/NAME")
        try:
            TypeAdapter(NamespaceName).validate_python(namespace)
            TypeAdapter(ObjectName).validate_python(name)
        except ValidationError as exc:
            problems = "; ".join(error["msg"] for error in exc.errors(include_input=False))
            raise CredentialConfigError(f"pull secret {text!r}: {problems}") from None
        return cls(namespace, name)


@dataclass(frozen=True)
class CredentialSummary:
    """What an operator may see of a stored credential: never the password."""

    host: str
    provider: str
    username: str | None
    config: dict[str, Any]
    has_password: bool
    updated_at: datetime
    refreshed_at: datetime | None
    refresh_count: int
    # Rotation policy and state (Beat's credential-rotation).
    rotate_after_seconds: int | None = None
    expires_at: datetime | None = None
    pull_secret: PullSecretRef | None = None
    probed_at: datetime | None = None
    probe_accepted: bool | None = None

    @property
    def version(self) -> str:
        """Names the password in use: it changes whenever the password does (``updated_at``).
        Rotation compares it to tell "still the one I probed" and "pull secret in step"."""
        return credential_version(self.updated_at)


def credential_version(updated_at: datetime) -> str:
    return updated_at.astimezone(UTC).isoformat()


def _key() -> str:
    key = get_settings().secret_key
    if key is None:
        raise SecretKeyRequiredError(
            "registry credentials are stored encrypted with DRYDOCK_SECRET_KEY, which is not "
            "set; create one with `drydock keygen` and give it to every worker"
        )
    return key.get_secret_value()


def seal_password(password: str) -> str:
    """``password`` sealed with the fleet key (SecretKeyRequiredError without one)."""
    return seal({"password": password}, _key())


def stored_password(row: RegistryCredentialRow) -> str | None:
    """The row's password, unsealed (None: a helper's, not asked yet)."""
    if row.sealed_password is None:
        return None
    return str(unseal(row.sealed_password, _key())["password"])


def normalize_host(host: str) -> str:
    cleaned = host.strip().lower()
    if not cleaned or "/" in cleaned or any(ch.isspace() for ch in cleaned):
        raise ValueError(f"registry {host!r} must be a host[:port], like registry.example.com:5000")
    return cleaned


def locked_row(session: Session, host: str) -> RegistryCredentialRow | None:
    """The registry's row, locked until the session commits: one refresh at a time."""
    return session.execute(
        select(RegistryCredentialRow)
        .where(RegistryCredentialRow.host == normalize_host(host))
        .with_for_update()
    ).scalar_one_or_none()


def store_provider(
    session: Session,
    host: str,
    provider: CredentialProviderKind,
    *,
    username: str | None,
    password: str | None,
    config: dict[str, Any],
) -> None:
    """Make ``provider`` (with ``config``) the registry's, with this login (or none yet)."""
    host = normalize_host(host)
    sealed = seal_password(password) if password is not None else None
    row = locked_row(session, host)
    now = datetime.now(UTC)
    if row is None:
        session.add(
            RegistryCredentialRow(
                host=host,
                provider=provider.value,
                username=username,
                sealed_password=sealed,
                config=config,
                updated_at=now,
            )
        )
        return
    row.provider = provider.value
    row.username = username
    row.sealed_password = sealed
    row.config = config
    row.updated_at = now


def store_static(session: Session, host: str, username: str, password: str) -> None:
    if not username or not password:
        raise CredentialConfigError("a static credential needs a username and a password")
    store_provider(
        session,
        host,
        CredentialProviderKind.STATIC,
        username=username,
        password=password,
        config={},
    )


def store_command(session: Session, host: str, command: Sequence[str]) -> None:
    if not command or not command[0].strip():
        raise CredentialConfigError("the credential helper command is empty")
    store_provider(
        session,
        host,
        CredentialProviderKind.COMMAND,
        username=None,
        password=None,
        config={"command": list(command)},
    )


def remove(session: Session, host: str) -> None:
    gone = session.execute(
        delete(RegistryCredentialRow)
        .where(RegistryCredentialRow.host == normalize_host(host))
        .returning(RegistryCredentialRow.id)
    ).all()
    if not gone:
        raise NotFoundError(f"no credentials stored for registry {host}")


def summaries(session: Session, hosts: Collection[str] | None = None) -> list[CredentialSummary]:
    """Every stored credential (or those of ``hosts``), by host."""
    query = select(RegistryCredentialRow).order_by(RegistryCredentialRow.host)
    if hosts is not None:
        query = query.where(RegistryCredentialRow.host.in_([normalize_host(h) for h in hosts]))
    return [_summary(row) for row in session.execute(query).scalars()]


def _summary(row: RegistryCredentialRow) -> CredentialSummary:
    pull_secret = None
    if row.pull_secret_namespace and row.pull_secret_name:
        pull_secret = PullSecretRef(row.pull_secret_namespace, row.pull_secret_name)
    return CredentialSummary(
        host=row.host,
        provider=row.provider,
        username=row.username,
        config=dict(row.config),
        has_password=row.sealed_password is not None,
        updated_at=row.updated_at,
        refreshed_at=row.refreshed_at,
        refresh_count=row.refresh_count,
        rotate_after_seconds=row.rotate_after_seconds,
        expires_at=row.expires_at,
        pull_secret=pull_secret,
        probed_at=row.probed_at,
        probe_accepted=row.probe_accepted,
    )


def provider_of(host: str) -> str | None:
    with session_scope() as session:
        return session.execute(
            select(RegistryCredentialRow.provider).where(
                RegistryCredentialRow.host == normalize_host(host)
            )
        ).scalar_one_or_none()


def keep_issued(
    row: RegistryCredentialRow, username: str, password: str, expires_at: datetime | None
) -> None:
    """Store what the row's provider just issued: it is the version in use from now."""
    row.username = username
    row.sealed_password = seal_password(password)
    row.updated_at = datetime.now(UTC)
    row.expires_at = expires_at


def count_refresh(row: RegistryCredentialRow) -> None:
    """One more refresh after a registry refused the stored credential."""
    row.refreshed_at = datetime.now(UTC)
    row.refresh_count += 1


# ---- rotation ----------------------------------------------------------------------------------


class _Keep(Enum):
    KEEP = "keep"


# "Leave this setting as it is" for ``set_rotation_policy``.
Keep = Literal[_Keep.KEEP]
KEEP: Keep = _Keep.KEEP


def set_rotation_policy(
    session: Session,
    host: str,
    *,
    rotate_after_seconds: int | Keep | None = KEEP,
    pull_secret: PullSecretRef | Keep | None = KEEP,
) -> CredentialSummary:
    """Rotate ``host``'s credential once it is ``rotate_after_seconds`` old (None: only when
    refused or expiring), and keep ``pull_secret`` holding it (None: no pull secret). The
    password and its age are left alone."""
    row = locked_row(session, host)
    if row is None:
        raise NotFoundError(f"no credentials stored for registry {host}")
    if rotate_after_seconds is not KEEP:
        if rotate_after_seconds is not None and rotate_after_seconds <= 0:
            raise CredentialConfigError("a rotation interval must be positive")
        row.rotate_after_seconds = rotate_after_seconds
    if pull_secret is not KEEP:
        row.pull_secret_namespace = pull_secret.namespace if pull_secret else None
        row.pull_secret_name = pull_secret.name if pull_secret else None
    session.flush()
    return _summary(row)


def record_probe(session: Session, host: str, accepted: bool | None, at: datetime) -> None:
    """The outcome of the newest probe (None: the registry could not be asked)."""
    session.execute(
        update(RegistryCredentialRow)
        .where(RegistryCredentialRow.host == normalize_host(host))
        .values(probed_at=at, probe_accepted=accepted)
    )


def record_event(
    session: Session,
    host: str,
    kind: CredentialEventKind,
    detail: dict[str, Any],
    job_id: uuid.UUID | None = None,
) -> None:
    """One ``credential_events`` row. Callers put no secret in ``detail``."""
    session.add(
        CredentialEvent(host=normalize_host(host), kind=kind.value, detail=detail, job_id=job_id)
    )


def credential_events(
    session: Session, host: str | None = None, *, limit: int = 50
) -> list[CredentialEvent]:
    """The newest probe and rotation events (of ``host``), newest first."""
    query = select(CredentialEvent).order_by(CredentialEvent.id.desc()).limit(limit)
    if host is not None:
        query = query.where(CredentialEvent.host == normalize_host(host))
    return list(session.execute(query).scalars())


def pull_secret_version(session: Session, host: str, pull_secret: PullSecretRef) -> str | None:
    """The credential version last written to ``pull_secret`` for ``host`` (None: never)."""
    written = session.execute(
        select(CredentialEvent.detail)
        .where(
            CredentialEvent.host == normalize_host(host),
            CredentialEvent.kind == CredentialEventKind.PULL_SECRET_WRITTEN.value,
            CredentialEvent.detail["namespace"].astext == pull_secret.namespace,
            CredentialEvent.detail["name"].astext == pull_secret.name,
        )
        .order_by(CredentialEvent.id.desc())
        .limit(1)
    ).scalar_one_or_none()
    version = (written or {}).get("credential_version")
    return version if isinstance(version, str) else None

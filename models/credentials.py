"""Registry credentials at rest: one row per registry, the password sealed with the fleet key.

``credential_for`` gives a push the credentials to use (None: the registry is used without);
``refresh_credential`` is called when the registry refused them, and gives fresh ones or
raises. Both lock the row, so two pushes refused at once refresh once: the second finds the
password already changed and uses it.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from sqlalchemy import delete, select
from sqlalchemy.orm import Session

from models.db import session_scope
from models.tables import CredentialProviderKind, RegistryCredentialRow
from tasks.pushes.credentials import (
    CredentialConfigError,
    CredentialRefusedError,
    RegistryCredential,
    new_password,
    run_credential_helper,
    set_htpasswd_password,
)
from workers.errors import DrydockError, NotFoundError
from workers.redaction import seal, unseal
from workers.settings import get_settings


class SecretKeyRequiredError(DrydockError):
    pass


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


def _key() -> str:
    key = get_settings().secret_key
    if key is None:
        raise SecretKeyRequiredError(
            "registry credentials are stored encrypted with DRYDOCK_SECRET_KEY, which is not "
            "set; create one with `drydock keygen` and give it to every worker"
        )
    return key.get_secret_value()


def _seal(password: str) -> str:
    return seal({"password": password}, _key())


def _unseal(row: RegistryCredentialRow) -> str | None:
    if row.sealed_password is None:
        return None
    return str(unseal(row.sealed_password, _key())["password"])


def normalize_host(host: str) -> str:
    cleaned = host.strip().lower()
    if not cleaned or "/" in cleaned or any(ch.isspace() for ch in cleaned):
        raise ValueError(f"registry {host!r} must be a host[:port], like registry.example.com:5000")
    return cleaned


def _locked_row(session: Session, host: str) -> RegistryCredentialRow | None:
    """The registry's row, locked until the session commits: one refresh at a time."""
    return session.execute(
        select(RegistryCredentialRow)
        .where(RegistryCredentialRow.host == normalize_host(host))
        .with_for_update()
    ).scalar_one_or_none()


def _upsert(
    session: Session,
    host: str,
    provider: CredentialProviderKind,
    *,
    username: str | None,
    password: str | None,
    config: dict[str, Any],
) -> None:
    host = normalize_host(host)
    sealed = _seal(password) if password is not None else None
    row = _locked_row(session, host)
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
    _upsert(
        session,
        host,
        CredentialProviderKind.STATIC,
        username=username,
        password=password,
        config={},
    )


def store_htpasswd(session: Session, host: str, username: str, htpasswd_path: Path) -> None:
    """Manage ``username`` in the registry's htpasswd file: set a fresh password now."""
    path = htpasswd_path.absolute()
    if not path.parent.is_dir():
        raise CredentialConfigError(f"no directory {path.parent} for the htpasswd file")
    password = new_password()
    # Sealed first: with no fleet key, the file is left untouched.
    _seal(password)
    set_htpasswd_password(path, username, password)
    _upsert(
        session,
        host,
        CredentialProviderKind.HTPASSWD,
        username=username,
        password=password,
        config={"htpasswd_path": str(path)},
    )


def store_command(session: Session, host: str, command: Sequence[str]) -> None:
    if not command or not command[0].strip():
        raise CredentialConfigError("the credential helper command is empty")
    _upsert(
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


def summaries(session: Session) -> list[CredentialSummary]:
    rows = session.execute(
        select(RegistryCredentialRow).order_by(RegistryCredentialRow.host)
    ).scalars()
    return [
        CredentialSummary(
            host=row.host,
            provider=row.provider,
            username=row.username,
            config=dict(row.config),
            has_password=row.sealed_password is not None,
            updated_at=row.updated_at,
            refreshed_at=row.refreshed_at,
            refresh_count=row.refresh_count,
        )
        for row in rows
    ]


def provider_of(host: str) -> str | None:
    with session_scope() as session:
        return session.execute(
            select(RegistryCredentialRow.provider).where(
                RegistryCredentialRow.host == normalize_host(host)
            )
        ).scalar_one_or_none()


def credential_for(host: str) -> RegistryCredential | None:
    """The credentials a push to ``host`` uses, or None when none are configured."""
    with session_scope() as session:
        row = _locked_row(session, host)
        if row is None:
            return None
        password = _unseal(row)
        if password is not None and row.username is not None:
            return RegistryCredential(row.username, password)
        # A command provider asked for the first time (or after its cache was dropped).
        fresh = _issue(row)
        _keep(row, fresh)
        return fresh


def refresh_credential(host: str, refused: RegistryCredential) -> RegistryCredential:
    """Fresh credentials for ``host`` after the registry refused ``refused``.

    Raises CredentialRefusedError when the provider cannot do better (a static credential
    nobody has changed, a helper that gives the refused ones again), CredentialUnavailableError
    when it cannot answer now."""
    with session_scope() as session:
        row = _locked_row(session, host)
        if row is None:
            raise CredentialRefusedError(
                f"the registry {host} refused the credentials and none are stored for it any more"
            )
        stored = _unseal(row)
        if stored is not None and row.username is not None:
            current = RegistryCredential(row.username, stored)
            if current != refused:
                # Changed since this push read them: an operator, or another push's refresh.
                return current
        if row.provider == CredentialProviderKind.STATIC.value:
            raise CredentialRefusedError(
                f"the registry {host} refused the static credentials of user {row.username!r}; "
                f"store working ones with `drydock registry login {host}`"
            )
        fresh = _issue(row)
        if fresh == refused:
            raise CredentialRefusedError(
                f"the credential helper for {host} gave the same credentials the registry refused"
            )
        _keep(row, fresh)
        row.refreshed_at = datetime.now(UTC)
        row.refresh_count += 1
        return fresh


def _issue(row: RegistryCredentialRow) -> RegistryCredential:
    """New credentials from the row's provider (htpasswd: a password set now)."""
    if row.provider == CredentialProviderKind.HTPASSWD.value:
        if row.username is None:
            raise CredentialConfigError(f"htpasswd credentials of {row.host} have no user name")
        password = new_password()
        set_htpasswd_password(Path(row.config["htpasswd_path"]), row.username, password)
        return RegistryCredential(row.username, password)
    if row.provider == CredentialProviderKind.COMMAND.value:
        return run_credential_helper(row.config.get("command") or [], row.host)
    raise CredentialRefusedError(f"the static credentials of {row.host} have no password")


def _keep(row: RegistryCredentialRow, credential: RegistryCredential) -> None:
    row.username = credential.username
    row.sealed_password = _seal(credential.password)
    row.updated_at = datetime.now(UTC)

"""Registry credentials at rest and their providers: static, an htpasswd file Drydock manages,
and a Docker credential helper; sealed in the database; refreshed once when refused."""

from __future__ import annotations

import json
import stat
from collections.abc import Iterator
from pathlib import Path

import bcrypt
import pytest
from sqlalchemy import select

from adapters import credentials as providers
from adapters.credentials import (
    CredentialRefusedError,
    CredentialUnavailableError,
    RegistryCredential,
    set_htpasswd_password,
)
from kernel.settings import Settings
from models import credentials as store
from models.credentials import RegistryCredentialRow
from models.db import session_scope

HOST = "registry.test:5000"


@pytest.fixture
def empty_store(migrated_db: str) -> Iterator[None]:
    with session_scope() as session:
        session.query(RegistryCredentialRow).delete()
    yield


def _row() -> RegistryCredentialRow:
    with session_scope() as session:
        row = session.execute(select(RegistryCredentialRow)).scalar_one()
        session.expunge(row)
        return row


def _htpasswd_users(path: Path) -> dict[str, str]:
    return dict(line.split(":", 1) for line in path.read_text().splitlines() if line)


def test_static_credentials_are_sealed_and_a_refusal_needs_an_operator(empty_store: None) -> None:
    with session_scope() as session:
        store.store_static(session, HOST, "alice", "first-password")
    assert providers.credential_for(HOST) == RegistryCredential("alice", "first-password")
    row = _row()
    assert row.sealed_password and "first-password" not in row.sealed_password
    with session_scope() as session:
        listed = store.summaries(session)
    assert "first-password" not in repr(listed) and listed[0].has_password

    with pytest.raises(CredentialRefusedError, match="drydock registry login"):
        providers.refresh_credential(HOST, RegistryCredential("alice", "first-password"))
    # An operator stored new ones: the refresh hands them over.
    with session_scope() as session:
        store.store_static(session, HOST, "alice", "second-password")
    fresh = providers.refresh_credential(HOST, RegistryCredential("alice", "first-password"))
    assert fresh.password == "second-password"
    assert "second-password" not in repr(fresh)


def test_htpasswd_provider_sets_and_rotates_the_password_keeping_other_users(
    empty_store: None, tmp_path: Path
) -> None:
    htpasswd = tmp_path / "htpasswd"
    set_htpasswd_password(htpasswd, "someone-else", "their-password")
    with session_scope() as session:
        providers.store_htpasswd(session, HOST, "drydock", htpasswd)
    issued = providers.credential_for(HOST)
    assert issued is not None and issued.username == "drydock"
    users = _htpasswd_users(htpasswd)
    assert bcrypt.checkpw(issued.password.encode(), users["drydock"].encode())
    assert bcrypt.checkpw(b"their-password", users["someone-else"].encode())
    assert stat.S_IMODE(htpasswd.stat().st_mode) == 0o600

    fresh = providers.refresh_credential(HOST, issued)
    assert fresh.password != issued.password
    users = _htpasswd_users(htpasswd)
    assert bcrypt.checkpw(fresh.password.encode(), users["drydock"].encode())
    assert not bcrypt.checkpw(issued.password.encode(), users["drydock"].encode())
    assert bcrypt.checkpw(b"their-password", users["someone-else"].encode())
    assert _row().refresh_count == 1

    # A second push refused with the old password at the same time gets the new one: the
    # password is not rotated twice.
    assert providers.refresh_credential(HOST, issued) == fresh
    assert _row().refresh_count == 1


def _helper(tmp_path: Path, answer: dict[str, str] | None, exit_code: int = 0) -> list[str]:
    """A Docker credential helper: prints the JSON in answer.json (or fails), and records the
    registry it was asked about."""
    (tmp_path / "answer.json").write_text(json.dumps(answer or {}))
    script = tmp_path / "docker-credential-test"
    script.write_text(
        "#!/bin/sh\n"
        f"cat > {tmp_path}/asked\n"
        f"[ {exit_code} -eq 0 ] || {{ echo 'credentials not found in native keychain' >&2; "
        f"exit {exit_code}; }}\n"
        f"cat {tmp_path}/answer.json\n"
    )
    script.chmod(0o755)
    return [str(script), "get"]


def test_a_credential_helper_is_asked_then_asked_again_on_refusal(
    empty_store: None, tmp_path: Path
) -> None:
    command = _helper(tmp_path, {"Username": "robot", "Secret": "helper-secret-1"})
    with session_scope() as session:
        store.store_command(session, HOST, command)
    first = providers.credential_for(HOST)
    assert first == RegistryCredential("robot", "helper-secret-1")
    assert (tmp_path / "asked").read_text() == HOST

    # The vault rotated the secret: a refusal asks the helper again.
    _helper(tmp_path, {"Username": "robot", "Secret": "helper-secret-2"})
    assert providers.refresh_credential(HOST, first).password == "helper-secret-2"
    # A helper that keeps giving what the registry refused is a refusal for good.
    with pytest.raises(CredentialRefusedError, match="same credentials"):
        providers.refresh_credential(HOST, RegistryCredential("robot", "helper-secret-2"))


def test_a_failing_helper_is_unavailable_and_says_why_without_secrets(
    empty_store: None, tmp_path: Path
) -> None:
    command = _helper(tmp_path, {"Username": "robot", "Secret": "never-shown"}, exit_code=3)
    with session_scope() as session:
        store.store_command(session, HOST, command)
    with pytest.raises(CredentialUnavailableError) as raised:
        providers.credential_for(HOST)
    assert "exit 3" in str(raised.value) and "keychain" in str(raised.value)
    assert "never-shown" not in str(raised.value)


def test_credentials_are_refused_without_a_fleet_key(
    empty_store: None, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(store, "get_settings", lambda: Settings(secret_key=None))
    with (
        pytest.raises(store.SecretKeyRequiredError, match="drydock keygen"),
        session_scope() as session,
    ):
        store.store_static(session, HOST, "alice", "pw")

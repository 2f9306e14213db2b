"""Registry credentials: where a push gets them, and how it gets fresh ones when refused.

Three providers, chosen per registry (``drydock registry ...``; the rows, sealed, are
``models.credentials``'):

- ``static``: a username and password an operator gave. A refusal cannot be fixed by Drydock;
  an operator stores new ones.
- ``htpasswd``: for a registry Drydock runs next to itself (distribution's htpasswd auth).
  Drydock owns the user's password: it sets a random one in the htpasswd file (bcrypt), and a
  refusal (someone changed the file) is fixed by setting a fresh one. The registry rereads the
  file when it changes.
- ``command``: an external program speaking the Docker credential-helper protocol
  (``docker-credential-<name> get``: the registry on stdin, ``{"Username", "Secret"}`` on stdout),
  such as a vault or cloud helper. A refusal is fixed by asking it again. A helper may add
  ``"ExpiresAt"`` (RFC 3339) to its answer: credential rotation asks it again before then.

``credential_for`` gives a push the credentials to use (None: the registry is used without);
``refresh_credential`` is called when the registry refused them, and gives fresh ones or
raises. Both lock the row, so two pushes refused at once refresh once: the second finds the
password already changed and uses it.

Rotation (``tasks.pushes.rotation``) uses the same lock: ``rotate`` issues a new password only
if the credential is still the one the rotation looked at, so a rotation and a push's refresh
(or two rotations) never replace the password twice, and a push that read the old password
is refused once and refreshed to the new one.
"""

from __future__ import annotations

import json
import os
import secrets
import subprocess
import tempfile
from collections.abc import Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path

import bcrypt
from sqlalchemy.orm import Session

from kernel.errors import DrydockError, NotFoundError, TransientError
from models import credentials as credential_store
from models.credentials import (
    CredentialConfigError,
    CredentialProviderKind,
    RegistryCredentialRow,
    credential_version,
)
from models.db import session_scope

# A helper that takes longer than this is treated as unavailable (and retried later).
COMMAND_TIMEOUT_SECONDS = 30


@dataclass(frozen=True)
class RegistryCredential:
    username: str
    # repr=False: a credential in a traceback, a log line or a dead letter shows no password.
    password: str = field(repr=False)
    # When the provider says it stops working (a helper's "ExpiresAt"); not part of equality:
    # the same username and password are the same credential to a registry.
    expires_at: datetime | None = field(default=None, compare=False)


def engine_auth_config(credential: RegistryCredential | None, registry: str) -> dict[str, str]:
    """The Docker Engine API's auth_config for a push or pull: exactly this credential, or none
    at all, so the engine's own stored logins are never used."""
    if credential is None:
        return {}
    return {
        "username": credential.username,
        "password": credential.password,
        "serveraddress": registry,
    }


class CredentialUnavailableError(TransientError):
    """The provider could not give credentials now (a helper failed or timed out)."""


class CredentialRefusedError(DrydockError):
    """The registry refused the credentials and the provider has no better ones: an operator
    must act (store new ones, fix the helper). Not retried."""


def new_password() -> str:
    return secrets.token_urlsafe(24)


# bcrypt cost of the passwords Drydock sets. The registry checks the hash on every request, so a
# higher cost slows every push; a password Drydock generates has 144 random bits anyway.
HTPASSWD_BCRYPT_ROUNDS = 10


def set_htpasswd_password(
    path: Path, username: str, password: str, *, rounds: int = HTPASSWD_BCRYPT_ROUNDS
) -> None:
    """Set ``username``'s bcrypt entry in an htpasswd file, keeping every other user's line.

    The file is replaced atomically (written beside it, then renamed), so the registry never
    reads half a file, and keeps its mode (0600 for a new one)."""
    if not username or ":" in username or "\n" in username:
        raise CredentialConfigError(f"htpasswd user name {username!r} is not usable")
    hashed = bcrypt.hashpw(password.encode(), bcrypt.gensalt(rounds=rounds)).decode()
    try:
        lines = path.read_text().splitlines()
        mode = path.stat().st_mode & 0o777
    except FileNotFoundError:
        lines, mode = [], 0o600
    kept = [line for line in lines if line.strip() and line.split(":", 1)[0] != username]
    kept.append(f"{username}:{hashed}")
    handle, temporary = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.")
    try:
        with os.fdopen(handle, "w") as out:
            out.write("\n".join(kept) + "\n")
        os.chmod(temporary, mode)
        os.replace(temporary, path)
    except BaseException:
        Path(temporary).unlink(missing_ok=True)
        raise


def run_credential_helper(command: Sequence[str], registry: str) -> RegistryCredential:
    """Ask a Docker credential helper for ``registry``'s credentials.

    ``command`` is the full argv, e.g. ``["docker-credential-pass", "get"]``. The helper's
    output is never logged or quoted in errors (it carries the secret)."""
    if not command:
        raise CredentialConfigError("the credential helper command is empty")
    try:
        completed = subprocess.run(
            list(command),
            input=registry.encode(),
            capture_output=True,
            timeout=COMMAND_TIMEOUT_SECONDS,
            check=False,
        )
    except FileNotFoundError:
        raise CredentialConfigError(f"credential helper {command[0]!r} is not installed") from None
    except subprocess.TimeoutExpired:
        raise CredentialUnavailableError(
            f"credential helper {command[0]!r} did not answer within {COMMAND_TIMEOUT_SECONDS}s"
        ) from None
    if completed.returncode != 0:
        # Helpers print "credentials not found in native keychain" and the like on stdout or
        # stderr; the first line says why without echoing anything the helper was given.
        said = (completed.stderr or completed.stdout).decode(errors="replace").strip()
        first = said.splitlines()[0][:200] if said else "no message"
        raise CredentialUnavailableError(
            f"credential helper {command[0]!r} failed (exit {completed.returncode}): {first}"
        )
    try:
        answer = json.loads(completed.stdout)
        username, secret = answer["Username"], answer["Secret"]
    except (ValueError, KeyError, TypeError):
        raise CredentialUnavailableError(
            f"credential helper {command[0]!r} did not print a JSON object with Username and Secret"
        ) from None
    if not isinstance(username, str) or not isinstance(secret, str) or not secret:
        raise CredentialUnavailableError(
            f"credential helper {command[0]!r} gave an empty or non-text username or secret"
        )
    return RegistryCredential(username, secret, _expiry(answer.get("ExpiresAt"), command[0]))


def _expiry(value: object, helper: str) -> datetime | None:
    """A helper's optional ``ExpiresAt``: an RFC 3339 time (without a zone: UTC)."""
    if value is None:
        return None
    try:
        moment = datetime.fromisoformat(value) if isinstance(value, str) else None
    except ValueError:
        moment = None
    if moment is None:
        raise CredentialUnavailableError(
            f"credential helper {helper!r} gave an ExpiresAt that is not an RFC 3339 time"
        )
    return moment if moment.tzinfo else moment.replace(tzinfo=UTC)


# ---- the stored providers ----------------------------------------------------------------------


class RotationUnsupportedError(DrydockError):
    """The provider cannot issue a new credential (static): an operator must store one."""


def store_htpasswd(session: Session, host: str, username: str, htpasswd_path: Path) -> None:
    """Manage ``username`` in the registry's htpasswd file: set a fresh password now."""
    path = htpasswd_path.absolute()
    if not path.parent.is_dir():
        raise CredentialConfigError(f"no directory {path.parent} for the htpasswd file")
    password = new_password()
    # Sealed first: with no fleet key, the file is left untouched.
    credential_store.seal_password(password)
    set_htpasswd_password(path, username, password)
    credential_store.store_provider(
        session,
        host,
        CredentialProviderKind.HTPASSWD,
        username=username,
        password=password,
        config={"htpasswd_path": str(path)},
    )


@dataclass(frozen=True)
class VersionedCredential:
    """A stored credential and its version (``CredentialSummary.version``)."""

    credential: RegistryCredential
    version: str


def credential_for(host: str) -> RegistryCredential | None:
    """The credentials a push to ``host`` uses, or None when none are configured."""
    current = current_credential(host)
    return None if current is None else current.credential


def current_credential(host: str) -> VersionedCredential | None:
    """``credential_for`` with the version of what it gave."""
    with session_scope() as session:
        row = credential_store.locked_row(session, host)
        if row is None:
            return None
        password = credential_store.stored_password(row)
        if password is not None and row.username is not None:
            credential = RegistryCredential(row.username, password, row.expires_at)
        else:
            # A command provider asked for the first time (or after its cache was dropped).
            credential = _issue(row)
            _keep(row, credential)
        return VersionedCredential(credential, credential_version(row.updated_at))


def refresh_credential(host: str, refused: RegistryCredential) -> RegistryCredential:
    """Fresh credentials for ``host`` after the registry refused ``refused``.

    Raises CredentialRefusedError when the provider cannot do better (a static credential
    nobody has changed, a helper that gives the refused ones again), CredentialUnavailableError
    when it cannot answer now."""
    with session_scope() as session:
        row = credential_store.locked_row(session, host)
        if row is None:
            raise CredentialRefusedError(
                f"the registry {host} refused the credentials and none are stored for it any more"
            )
        stored = credential_store.stored_password(row)
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
        credential_store.count_refresh(row)
        return fresh


@dataclass(frozen=True)
class Rotation(VersionedCredential):
    """What ``rotate`` left stored, and whether this call issued it (False: it had changed
    since the caller looked, and is kept as it is)."""

    rotated: bool


def rotate(host: str, *, seen_version: str) -> Rotation:
    """Issue a new credential through ``host``'s provider and store it, under the row lock.

    Only if the stored credential is still version ``seen_version``: otherwise a push's
    refresh, an operator or another rotation replaced it since the caller looked, and that one
    is returned unchanged. Raises RotationUnsupportedError for a static credential, and the
    provider's errors (CredentialUnavailableError, CredentialConfigError, OSError writing an
    htpasswd file) with nothing stored."""
    with session_scope() as session:
        row = credential_store.locked_row(session, host)
        if row is None:
            raise NotFoundError(f"no credentials stored for registry {host}")
        version = credential_version(row.updated_at)
        stored = credential_store.stored_password(row)
        if version != seen_version and stored is not None and row.username is not None:
            current = RegistryCredential(row.username, stored, row.expires_at)
            return Rotation(current, version, rotated=False)
        if row.provider == CredentialProviderKind.STATIC.value:
            raise RotationUnsupportedError(
                f"the static credentials of {row.host} cannot be rotated by Drydock; store new "
                f"ones with `drydock registry login {row.host}`"
            )
        fresh = _issue(row)
        _keep(row, fresh)
        session.flush()
        return Rotation(fresh, credential_version(row.updated_at), rotated=True)


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
    credential_store.keep_issued(
        row, credential.username, credential.password, credential.expires_at
    )

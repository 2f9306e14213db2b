"""Registry credentials: where a push gets them, and how it gets fresh ones when refused.

Three providers, chosen per registry (``drydock registry ...``; stored by
``models.credentials``):

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

from kernel.errors import DrydockError, TransientError

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


class CredentialConfigError(DrydockError):
    """A provider configured with something unusable (no such file, empty command)."""


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

"""Beat's credential rotation: probe every registry credential, rotate those due through their
provider, and keep their Kubernetes image-pull secrets in step.

For each stored credential (or each one named), ``rotate_credentials``:

1. probes it: ``GET /v2/`` with it (``RegistryClient.check_credentials``: Basic, or a token
   from the registry's token service). The registry accepts it, refuses it, or cannot be asked:
   a ``probe_*`` event, and the row's ``probed_at``/``probe_accepted``;
2. decides (``rotation_reason``, no I/O) whether it is due: forced, refused, expiring within
   ``credential_rotation_margin_seconds`` (its provider said when), or older than its
   ``rotate_after_seconds``;
3. rotates a due one through its provider (``adapters.credentials.rotate``, under the row lock
   a push's refresh takes): htpasswd sets a new password in the file, a helper is asked again;
   a static one cannot be (``rotation_unsupported``: an operator must). The new credential is
   probed at once (``after_rotation`` in that probe event's detail);
4. writes the image-pull secret when the credential has one and it does not hold the current
   password: just rotated, changed by a push's refresh or an operator, or an earlier write
   failed. A Kubernetes API failure is a ``pull_secret_failed`` event: the rotation stands, and
   the next run writes the secret again.

Pushes in flight: a push that read the old password is refused once, and its refresh (which
takes the same row lock) finds the new password stored and uses it, so nothing is rotated
twice. No password goes into an event, a result or a log line.
"""

from __future__ import annotations

import uuid
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from enum import StrEnum
from typing import Any, Literal

from adapters import credentials as credential_providers
from adapters.credentials import (
    CredentialUnavailableError,
    RegistryCredential,
    RotationUnsupportedError,
    VersionedCredential,
)
from adapters.kubernetes import KubernetesAdapter, KubernetesApiError, KubernetesUnavailableError
from adapters.registry_errors import PushErrorKind, RegistryPushError
from catalog.pushes import RotateCredentialsPayload
from kernel.errors import DrydockError, NotFoundError
from kernel.logs import get_logger
from kernel.redaction import scrub_text
from kernel.settings import Settings, get_settings
from models import credentials as credential_store
from models.credentials import (
    CredentialConfigError,
    CredentialEventKind,
    CredentialSummary,
    PullSecretRef,
)
from models.db import session_scope
from tasks.pushes.domain import registry_client

# Errors kept in events and results are cut to this length.
MAX_ERROR_CHARS = 500
# What a registry answers to a credential it does not take.
REFUSED_KINDS = frozenset(
    {PushErrorKind.AUTH_EXPIRED, PushErrorKind.AUTH_REQUIRED, PushErrorKind.DENIED}
)

ProbeOutcome = Literal["accepted", "refused", "failed"]
_PROBE_EVENTS: dict[ProbeOutcome, CredentialEventKind] = {
    "accepted": CredentialEventKind.PROBE_ACCEPTED,
    "refused": CredentialEventKind.PROBE_REFUSED,
    "failed": CredentialEventKind.PROBE_FAILED,
}


class RotationReason(StrEnum):
    FORCED = "forced"
    REFUSED = "refused"
    EXPIRING = "expiring"
    AGE = "age"


@dataclass(frozen=True)
class Probe:
    """What the registry said to a credential (``failed``: it could not be asked)."""

    outcome: ProbeOutcome
    status: int | None = None
    error_kind: str | None = None
    error: str | None = None

    def detail(self) -> dict[str, Any]:
        said = {"status": self.status, "error_kind": self.error_kind, "error": self.error}
        return {key: value for key, value in said.items() if value is not None}


def probe_credential(host: str, credential: RegistryCredential, settings: Settings) -> Probe:
    """Ask the registry whether it accepts ``credential`` (``GET /v2/``)."""
    try:
        registry_client(host, credential, settings).check_credentials()
    except RegistryPushError as exc:
        outcome: ProbeOutcome = "refused" if exc.kind in REFUSED_KINDS else "failed"
        return Probe(outcome, exc.status, exc.kind.value, _said(exc, credential))
    return Probe("accepted")


def rotation_reason(
    credential: CredentialSummary,
    probe: Probe,
    *,
    now: datetime,
    margin: timedelta,
    force: bool,
) -> RotationReason | None:
    """Why ``credential`` is rotated now, or None when it is not due. A registry that could
    not be asked says nothing either way: age and expiry still count."""
    if force:
        return RotationReason.FORCED
    if probe.outcome == "refused":
        return RotationReason.REFUSED
    if credential.expires_at is not None and credential.expires_at <= now + margin:
        return RotationReason.EXPIRING
    if credential.rotate_after_seconds is not None and now - credential.updated_at >= timedelta(
        seconds=credential.rotate_after_seconds
    ):
        return RotationReason.AGE
    return None


def rotate_credentials(
    payload: RotateCredentialsPayload,
    *,
    job_id: uuid.UUID | None,
    settings: Settings | None = None,
) -> dict[str, Any]:
    """Probe each credential, rotate those due, write their pull secrets; a summary per host.

    Raises NotFoundError when a host asked for has no stored credential (before touching any).
    A failure with one credential is recorded and the others are still handled."""
    settings = settings or get_settings()
    with session_scope() as session:
        stored = credential_store.summaries(session, payload.hosts)
    missing = sorted(set(payload.hosts or ()) - {credential.host for credential in stored})
    if missing:
        raise NotFoundError(f"no credentials stored for registry {', '.join(missing)}")
    pull_secrets = _PullSecretWriter(settings.kubeconfig)
    try:
        return {
            "hosts": {
                credential.host: _Rotation(credential, payload.force, job_id, settings).run(
                    pull_secrets
                )
                for credential in stored
            }
        }
    finally:
        pull_secrets.close()


class _Rotation:
    """One credential's turn: probe, decide, rotate, write the pull secret."""

    def __init__(
        self,
        credential: CredentialSummary,
        force: bool,
        job_id: uuid.UUID | None,
        settings: Settings,
    ) -> None:
        self.credential = credential
        self.host = credential.host
        self.force = force
        self.job_id = job_id
        self.settings = settings
        self.summary: dict[str, Any] = {"provider": credential.provider}
        self.log = get_logger(host=self.host, job_id=str(job_id) if job_id else None)

    def run(self, pull_secrets: _PullSecretWriter) -> dict[str, Any]:
        now = datetime.now(UTC)
        try:
            current, probe = self._probe_stored(now)
        except _RemovedError:
            # An operator removed it since the run listed it: nothing left to do.
            return {**self.summary, "removed": True}
        self.summary["probe"] = probe.outcome
        reason = rotation_reason(
            self.credential,
            probe,
            now=now,
            margin=timedelta(seconds=self.settings.credential_rotation_margin_seconds),
            force=self.force,
        )
        self.summary["due"] = reason.value if reason else None
        if reason is None:
            self.summary["rotation"] = "not_due"
        else:
            current = self._rotate(current, reason, now)
        if self.credential.pull_secret is None:
            self.summary["pull_secret"] = None
        elif current is None:
            # No credential could be read to write into it.
            self.summary["pull_secret"] = "skipped"
        else:
            self.summary["pull_secret"] = self._write_pull_secret(
                pull_secrets, self.credential.pull_secret, current
            )
        return self.summary

    def _probe_stored(self, now: datetime) -> tuple[VersionedCredential | None, Probe]:
        try:
            current = credential_providers.current_credential(self.host)
        except (CredentialUnavailableError, CredentialConfigError) as exc:
            probe = Probe("failed", error=str(exc)[:MAX_ERROR_CHARS])
            self._record_probe(probe, now, self.credential.username, after_rotation=False)
            self.summary["error"] = probe.error
            return None, probe
        if current is None:
            raise _RemovedError()
        probe = probe_credential(self.host, current.credential, self.settings)
        self._record_probe(probe, now, current.credential.username, after_rotation=False)
        return current, probe

    def _rotate(
        self, seen: VersionedCredential | None, reason: RotationReason, now: datetime
    ) -> VersionedCredential | None:
        """Rotate through the provider; what is stored afterwards (``seen`` when nothing
        changed; None when nothing could be read, as with a helper that does not answer)."""
        detail: dict[str, Any] = {
            "reason": reason.value,
            "provider": self.credential.provider,
            "previous_age_seconds": round((now - self.credential.updated_at).total_seconds()),
        }
        scrub = [seen.credential.password] if seen else []
        try:
            rotation = credential_providers.rotate(
                self.host, seen_version=seen.version if seen else self.credential.version
            )
        except RotationUnsupportedError as exc:
            self._event(
                CredentialEventKind.ROTATION_UNSUPPORTED,
                {**detail, "username": self.credential.username, "message": str(exc)},
            )
            self.summary["rotation"] = "unsupported"
            return seen
        except (DrydockError, OSError) as exc:
            # The provider failed (a helper down, an htpasswd file not writable): nothing was
            # stored, and the old credential stays in use.
            error = scrub_text(str(exc), scrub)[:MAX_ERROR_CHARS]
            self._event(
                CredentialEventKind.ROTATION_FAILED,
                {**detail, "error_class": type(exc).__name__, "error": error},
            )
            self.summary.update(rotation="failed", error=error)
            return seen
        if not rotation.rotated:
            self.summary["rotation"] = "superseded"
            return rotation
        expires_at = rotation.credential.expires_at
        self._event(
            CredentialEventKind.ROTATED,
            {
                **detail,
                "username": rotation.credential.username,
                "expires_at": expires_at.isoformat() if expires_at else None,
            },
        )
        self.summary["rotation"] = "rotated"
        verified = probe_credential(self.host, rotation.credential, self.settings)
        self._record_probe(
            verified, datetime.now(UTC), rotation.credential.username, after_rotation=True
        )
        self.summary["verified"] = verified.outcome
        return rotation

    def _write_pull_secret(
        self, writer: _PullSecretWriter, where: PullSecretRef, current: VersionedCredential
    ) -> str:
        with session_scope() as session:
            written = credential_store.pull_secret_version(session, self.host, where)
        if written == current.version:
            return "in_step"
        detail = {
            "namespace": where.namespace,
            "name": where.name,
            "credential_version": current.version,
        }
        try:
            action = writer.write(where, self.host, current.credential)
        except (KubernetesUnavailableError, KubernetesApiError) as exc:
            error = _said(exc, current.credential)
            self._event(CredentialEventKind.PULL_SECRET_FAILED, {**detail, "error": error})
            self.summary["pull_secret_error"] = error
            return "failed"
        self._event(CredentialEventKind.PULL_SECRET_WRITTEN, {**detail, "applied": action})
        return action

    def _record_probe(
        self, probe: Probe, at: datetime, username: str | None, *, after_rotation: bool
    ) -> None:
        detail: dict[str, Any] = {
            "provider": self.credential.provider,
            "username": username,
            "after_rotation": after_rotation,
            **probe.detail(),
        }
        if not after_rotation:
            expires_at = self.credential.expires_at
            detail.update(
                age_seconds=round((at - self.credential.updated_at).total_seconds()),
                expires_at=expires_at.isoformat() if expires_at else None,
            )
        accepted = None if probe.outcome == "failed" else probe.outcome == "accepted"
        with session_scope() as session:
            credential_store.record_probe(session, self.host, accepted, at)
            credential_store.record_event(
                session, self.host, _PROBE_EVENTS[probe.outcome], detail, self.job_id
            )
        self.log.info("credential.probed", action=_PROBE_EVENTS[probe.outcome].value, **detail)

    def _event(self, kind: CredentialEventKind, detail: dict[str, Any]) -> None:
        with session_scope() as session:
            credential_store.record_event(session, self.host, kind, detail, self.job_id)
        self.log.info(f"credential.{kind.value}", action=kind.value, **detail)


class _RemovedError(Exception):
    pass


class _PullSecretWriter:
    """The Kubernetes API, connected on the first write of the run (most runs write none)."""

    def __init__(self, kubeconfig: str | None) -> None:
        self._kubeconfig = kubeconfig
        self._adapter: KubernetesAdapter | None = None

    def write(
        self, where: PullSecretRef, registry: str, credential: RegistryCredential
    ) -> Literal["created", "replaced"]:
        if self._adapter is None:
            self._adapter = KubernetesAdapter.from_config(self._kubeconfig)
        return self._adapter.apply_image_pull_secret(
            where.namespace, where.name, registry, credential.username, credential.password
        )

    def close(self) -> None:
        if self._adapter is not None:
            self._adapter.close()


def _said(exc: BaseException, credential: RegistryCredential) -> str:
    """An error's message for an event: cut short, the password scrubbed out in case some
    library quoted it."""
    return scrub_text(str(exc), [credential.password])[:MAX_ERROR_CHARS]

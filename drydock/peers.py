"""Probing the fleet's peers for health: the Docker engine, the registries Drydock holds
credentials for, the libvirt connection and the Kubernetes API.

Each probe is one cheap request (the engine's version, a registry's ``GET /v2/`` with its
stored credential, libvirt's library version, the Kubernetes ``/version``) bounded by
``settings.health_peer_timeout_seconds``. The probes run at the same time, each in a daemon
thread, and ``probe_peers`` waits for them at most that timeout (plus a little slack): one
that has not answered by then is reported unreachable and its thread is left to end on its
own, so ``/health/fleet`` stays fast whatever a peer does.

A peer nobody configured is reported "not configured", never unreachable:

- the Docker engine: DRYDOCK_DOCKER_HOST or DOCKER_HOST set, or the default socket present;
- registries: one per stored credential (``drydock credentials``); none stored, none probed;
- libvirt: DRYDOCK_LIBVIRT_URI set explicitly (its default, ``qemu:///system``, is only a
  guess: a fleet without VMs must not look broken);
- Kubernetes: DRYDOCK_KUBECONFIG set, the in-cluster service account, or ``$KUBECONFIG`` or
  ``~/.kube/config`` present.

Health reads and never writes: a registry probe sends the password already stored (a command
provider's cached one) and never runs a credential helper or records the outcome (Beat's
credential rotation does). No report holds a secret: errors are scrubbed of the password sent
and of anything that looks like a credential.
"""

from __future__ import annotations

import os
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, replace
from functools import partial
from pathlib import Path
from typing import Literal

from sqlalchemy import select
from sqlalchemy.orm import Session

from adapters.credentials import RegistryCredential
from adapters.image_reference import registry_is_insecure
from kernel.redaction import SealError, scrub_text
from kernel.settings import Settings
from models import credentials as credential_store
from models.credentials import RegistryCredentialRow, SecretKeyRequiredError

PeerKind = Literal["docker_engine", "registry", "libvirt", "kubernetes"]

# The queues whose tasks talk to each kind of peer: builds, evaluation suites, workflow steps,
# remediation's sandboxes and the runtime's servers run on the engine; pushes reach registries;
# attestation's inventory and libvirt playbooks open libvirt; kubernetes playbooks and
# credential rotation (on pushes) call the API.
PEER_QUEUES: dict[PeerKind, tuple[str, ...]] = {
    "docker_engine": ("builds", "evaluation", "remediation", "workflows", "runtime"),
    "registry": ("pushes",),
    "libvirt": ("attestation", "remediation"),
    "kubernetes": ("remediation", "pushes"),
}
PEER_LABELS: dict[PeerKind, str] = {
    "docker_engine": "Docker engine",
    "registry": "registry",
    "libvirt": "libvirt",
    "kubernetes": "Kubernetes API",
}
DEFAULT_DOCKER_SOCKET = Path("/var/run/docker.sock")
# What probe_peers waits past the per-probe timeout before calling a probe unanswered.
WAIT_SLACK_SECONDS = 0.5
MAX_ERROR_CHARS = 300


@dataclass(frozen=True)
class PeerProbe:
    """What one probe found. ``reachable`` is None when the peer is not configured;
    ``credential_accepted`` is None when no credential was sent or the peer never answered."""

    kind: PeerKind
    name: str
    configured: bool
    reachable: bool | None = None
    latency_ms: float | None = None
    error: str | None = None
    credential_accepted: bool | None = None
    detail: str | None = None


@dataclass(frozen=True)
class RegistryTarget:
    """A registry to probe: its host and the stored credential (never reported)."""

    host: str
    credential: RegistryCredential | None

    def __repr__(self) -> str:
        return f"RegistryTarget({self.host!r})"


def registry_targets(session: Session) -> list[RegistryTarget]:
    """One target per stored credential, with its password when one is stored and can be
    unsealed (without the fleet key, the probe sends none)."""
    rows = session.execute(
        select(RegistryCredentialRow).order_by(RegistryCredentialRow.host)
    ).scalars()
    targets = []
    for row in rows:
        try:
            password = credential_store.stored_password(row)
        except (SecretKeyRequiredError, SealError):
            password = None
        credential = None
        if password is not None and row.username is not None:
            credential = RegistryCredential(row.username, password, row.expires_at)
        targets.append(RegistryTarget(row.host, credential))
    return targets


def probe_peers(settings: Settings, registries: list[RegistryTarget] | None) -> list[PeerProbe]:
    """Every peer, probed at the same time; ``registries`` None: the store could not be read,
    so no registry is known."""
    timeout = settings.health_peer_timeout_seconds
    probes: list[tuple[PeerProbe, Callable[[], PeerProbe]]] = []
    docker_address = _docker_address(settings)
    engine = PeerProbe("docker_engine", docker_address or "", configured=docker_address is not None)
    probes.append((engine, lambda: probe_docker_engine(engine.name, timeout)))
    for target in registries or []:
        seed = PeerProbe("registry", target.host, configured=True)
        insecure = registry_is_insecure(target.host, settings.insecure_registries)
        probes.append((seed, partial(probe_registry, target, insecure=insecure, timeout=timeout)))
    libvirt_configured = "libvirt_uri" in settings.model_fields_set
    libvirt_peer = PeerProbe("libvirt", settings.libvirt_uri, configured=libvirt_configured)
    probes.append((libvirt_peer, lambda: probe_libvirt(libvirt_peer.name)))
    kube_source = _kube_source(settings)
    kube = PeerProbe("kubernetes", kube_source or "", configured=kube_source is not None)
    probes.append((kube, lambda: probe_kubernetes(settings.kubeconfig, kube.name, timeout)))
    return _run_bounded(probes, timeout + WAIT_SLACK_SECONDS)


def probe_docker_engine(address: str, timeout: float) -> PeerProbe:
    """The engine's ``GET /version``."""
    import docker

    peer = PeerProbe("docker_engine", address, configured=True)
    started = time.monotonic()
    try:
        client = docker.APIClient(base_url=address, timeout=timeout, version="auto")
        try:
            version = client.version(api_version=False)
        finally:
            client.close()
    except Exception as exc:
        return _unreachable(peer, started, exc)
    return replace(
        peer,
        reachable=True,
        latency_ms=_since(started),
        detail=f"Docker {version.get('Version', '?')}, API {version.get('ApiVersion', '?')}",
    )


def probe_registry(target: RegistryTarget, *, insecure: bool, timeout: float) -> PeerProbe:
    """``GET /v2/`` with the stored credential, answering the registry's challenge (Basic, or
    Bearer with a token from its token service). Any HTTP answer but a 5xx means reachable;
    401 or 403 with a credential sent means it was refused."""
    from adapters.registry import RegistryClient
    from adapters.registry_errors import RegistryPushError

    peer = PeerProbe("registry", target.host, configured=True)
    secrets = [target.credential.password] if target.credential else []
    started = time.monotonic()
    try:
        client = RegistryClient(target.host, target.credential, insecure=insecure, timeout=timeout)
        client.check_credentials()
    except RegistryPushError as exc:
        latency = _since(started)
        if exc.status is None or exc.status >= 500:
            return replace(peer, reachable=False, latency_ms=latency, error=_clean(exc, secrets))
        refused = exc.status in (401, 403)
        return replace(
            peer,
            reachable=True,
            latency_ms=latency,
            credential_accepted=(not refused) if target.credential else None,
            detail=_clean(exc, secrets),
        )
    except Exception as exc:
        return _unreachable(peer, started, exc, secrets)
    return replace(
        peer,
        reachable=True,
        latency_ms=_since(started),
        credential_accepted=True if target.credential else None,
        detail="HTTP 200" if target.credential else "HTTP 200 (no password stored: sent none)",
    )


def probe_libvirt(uri: str) -> PeerProbe:
    """A read-only connection, asked its library version."""
    import libvirt

    # libvirt prints every error to stderr besides raising it; the error is reported here.
    libvirt.registerErrorHandler(_ignore_libvirt_error, None)
    peer = PeerProbe("libvirt", uri, configured=True)
    started = time.monotonic()
    try:
        conn = libvirt.openReadOnly(uri)
        try:
            version = conn.getLibVersion()
        finally:
            conn.close()
    except Exception as exc:
        return _unreachable(peer, started, exc)
    major, minor, micro = version // 1_000_000, version // 1000 % 1000, version % 1000
    return replace(
        peer, reachable=True, latency_ms=_since(started), detail=f"libvirt {major}.{minor}.{micro}"
    )


def _ignore_libvirt_error(context: object, error: object) -> None:
    return None


def probe_kubernetes(kubeconfig: str | None, source: str, timeout: float) -> PeerProbe:
    """``GET /version`` with the configured identity. Any answer but a 5xx means reachable; a
    401 means the identity was refused (a 403 or 404: accepted, only not allowed there)."""
    from adapters.kubernetes import KubernetesAdapter, KubernetesApiError

    peer = PeerProbe("kubernetes", source, configured=True)
    started = time.monotonic()
    adapter = None
    try:
        adapter = KubernetesAdapter.from_config(
            kubeconfig, deadline=started + timeout, request_timeout=timeout
        )
        peer = replace(peer, name=adapter.server)
        version = adapter.request("GET", "/version")
    except KubernetesApiError as exc:
        if exc.status >= 500:
            return _unreachable(peer, started, exc)
        return replace(
            peer,
            reachable=True,
            latency_ms=_since(started),
            credential_accepted=exc.status != 401,
            detail=f"HTTP {exc.status}",
        )
    except Exception as exc:
        return _unreachable(peer, started, exc)
    finally:
        if adapter is not None:
            adapter.close()
    return replace(
        peer,
        reachable=True,
        latency_ms=_since(started),
        credential_accepted=True,
        detail=f"Kubernetes {version.get('gitVersion', '?')}",
    )


def _run_bounded(
    probes: list[tuple[PeerProbe, Callable[[], PeerProbe]]], wait_seconds: float
) -> list[PeerProbe]:
    """Each configured peer's probe in a daemon thread; one not done within ``wait_seconds``
    (for all of them together) is reported unanswered."""
    results: dict[int, PeerProbe] = {}
    threads: list[tuple[int, threading.Thread]] = []
    for index, (seed, probe) in enumerate(probes):
        if not seed.configured:
            results[index] = seed
            continue

        def run(
            index: int = index, seed: PeerProbe = seed, probe: Callable[[], PeerProbe] = probe
        ) -> None:
            try:
                results[index] = probe()
            except Exception as exc:  # a probe's own bug must not take health down with it
                results[index] = replace(seed, reachable=False, error=_clean(exc, []))

        thread = threading.Thread(target=run, name=f"peer-probe-{seed.kind}", daemon=True)
        thread.start()
        threads.append((index, thread))
    deadline = time.monotonic() + wait_seconds
    for index, thread in threads:
        thread.join(max(0.0, deadline - time.monotonic()))
        if index not in results:
            seed = probes[index][0]
            results[index] = replace(
                seed, reachable=False, error=f"no answer within {wait_seconds:.1f}s"
            )
    return [results[index] for index in range(len(probes))]


def _docker_address(settings: Settings) -> str | None:
    address = settings.docker_host or os.environ.get("DOCKER_HOST")
    if address:
        return address
    if DEFAULT_DOCKER_SOCKET.exists():
        return f"unix://{DEFAULT_DOCKER_SOCKET}"
    return None


def _kube_source(settings: Settings) -> str | None:
    """Where the Kubernetes identity comes from, or None: nothing configures one."""
    if settings.kubeconfig:
        return f"kubeconfig {settings.kubeconfig}"
    if os.environ.get("KUBERNETES_SERVICE_HOST"):
        return "in-cluster service account"
    default = os.environ.get("KUBECONFIG") or str(Path("~/.kube/config").expanduser())
    if default and Path(default.split(os.pathsep)[0]).is_file():
        return f"kubeconfig {default}"
    return None


def _unreachable(
    peer: PeerProbe, started: float, exc: BaseException, secrets: list[str] | None = None
) -> PeerProbe:
    return replace(
        peer, reachable=False, latency_ms=_since(started), error=_clean(exc, secrets or [])
    )


def _clean(exc: BaseException, secrets: list[str]) -> str:
    text = " ".join(str(exc).split()) or type(exc).__name__
    return scrub_text(text, [s for s in secrets if s])[:MAX_ERROR_CHARS]


def _since(started: float) -> float:
    return round((time.monotonic() - started) * 1000, 1)

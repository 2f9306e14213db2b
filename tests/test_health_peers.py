"""Health of the fleet's peers: the verdict rule on its own, then the real peers of the suite (a
Docker engine, two registries, libvirt's test driver, the Kubernetes stand-in) reachable, and
the same kinds pointed at closed ports."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest
from fastapi.testclient import TestClient

from drydock import localservers
from drydock.health import FleetHealth, PeerReport, assess, check_fleet, gather
from drydock.peers import PeerProbe, probe_libvirt
from kernel.settings import Settings, get_settings
from kernel.topology import WORK_QUEUES
from models import credentials as credential_store
from models.db import session_scope
from testkit.docker_engine import DockerEngine
from testkit.registry import RegistryServer
from tests.conftest import WorkerProcess
from tests.kube_standin import KubeStandIn, write_kubeconfig
from tests.test_health import facts, settings, worker

# ---- the rule, without peers -------------------------------------------------------------------

UNREACHABLE_REGISTRY = PeerProbe(
    "registry", "registry.test:5000", configured=True, reachable=False, error="refused"
)


def test_an_unreachable_peer_fails_the_fleet_only_while_a_queue_needing_it_is_served() -> None:
    # Everything but pushes (the only queue that needs registries) has a live worker.
    others = tuple(q for q in WORK_QUEUES if q != "pushes")
    unserved = assess(
        facts(workers=[worker("others@h", others)], peers=[UNREACHABLE_REGISTRY]), settings()
    )
    assert unserved.reasons == ["queue pushes has no live worker (0 waiting)"]
    assert "registry registry.test:5000 unreachable: refused" in unserved.warnings
    [report] = unserved.peers
    assert (report.status, report.error, report.live_queues) == ("unreachable", "refused", [])

    served = assess(facts(peers=[UNREACHABLE_REGISTRY]), settings())
    assert served.reasons == [
        "registry registry.test:5000 unreachable, and live workers serve pushes, whose tasks "
        "need it"
    ]
    assert "registry registry.test:5000 unreachable: refused" in served.warnings
    assert served.peers[0].live_queues == ["pushes"]


def test_a_peer_not_configured_or_refusing_its_credential_is_no_failure() -> None:
    absent = PeerProbe("kubernetes", "", configured=False)
    refusing = PeerProbe(
        "registry",
        "registry.test:5000",
        configured=True,
        reachable=True,
        latency_ms=3.0,
        credential_accepted=False,
        detail="auth_expired: HTTP 401",
    )
    health = assess(facts(peers=[absent, refusing]), settings())
    assert health.healthy and health.reasons == []
    assert health.warnings == [
        "registry registry.test:5000 refused the credential sent: auth_expired: HTTP 401"
    ]
    assert [p.status for p in health.peers] == ["not configured", "reachable"]


# ---- the real peers ----------------------------------------------------------------------------


@pytest.fixture
def stored_registries(
    fleet: WorkerProcess, registry_server: RegistryServer, token_registry_server: RegistryServer
) -> Iterator[list[RegistryServer]]:
    """Both test registries' credentials stored, as `drydock registry login` would."""
    servers = [registry_server, token_registry_server]
    with session_scope() as session:
        for server in servers:
            credential_store.store_static(session, server.host, server.username, server.password)
    yield servers
    with session_scope() as session:
        for server in servers:
            credential_store.remove(session, server.host)


def closed_port() -> int:
    return localservers.free_port()


def by_kind(health: FleetHealth, kind: str) -> list[PeerReport]:
    return [p for p in health.peers if p.kind == kind]


def test_reachable_peers_show_their_latency_and_no_secret(
    docker_engine: DockerEngine,
    stored_registries: list[RegistryServer],
    kube_standin: KubeStandIn,
    kubeconfig_file: Path,
) -> None:
    health = check_fleet(Settings(kubeconfig=str(kubeconfig_file)))

    [engine] = by_kind(health, "docker_engine")
    assert engine.name == os.environ["DRYDOCK_DOCKER_HOST"]
    assert engine.status == "reachable" and engine.detail and "API" in engine.detail
    registries = {p.name: p for p in by_kind(health, "registry")}
    assert set(registries) == {s.host for s in stored_registries}
    for registry in registries.values():
        assert registry.status == "reachable", registry
        assert registry.credential_accepted is True
    [libvirt] = by_kind(health, "libvirt")
    assert (libvirt.name, libvirt.status) == ("test:///default", "reachable")
    [kube] = by_kind(health, "kubernetes")
    assert (kube.name, kube.status, kube.credential_accepted) == (
        kube_standin.url,
        "reachable",
        True,
    )
    # The stand-in answers /version 404 once it has checked the token: authenticated.
    assert kube_standin.requests_to("GET", "/version")
    for peer in health.peers:
        assert peer.latency_ms is not None and peer.latency_ms > 0, peer
        assert peer.error is None and peer.queues
    assert not any("unreachable" in w for w in health.warnings), health.warnings

    document = health.model_dump_json()
    for secret in [kube_standin.token, *(s.password for s in stored_registries)]:
        assert secret not in document


def test_a_refused_registry_credential_is_reachable_and_a_warning(
    stored_registries: list[RegistryServer],
) -> None:
    wrong = "not-the-password-" + stored_registries[0].password[:4]
    with session_scope() as session:
        for server in stored_registries:
            credential_store.store_static(session, server.host, server.username, wrong)

    health = check_fleet()
    registries = {p.name: p for p in by_kind(health, "registry")}
    for server in stored_registries:
        report = registries[server.host]
        assert (report.status, report.credential_accepted) == ("reachable", False), report
        assert f"registry {server.host} refused the credential sent" in " ".join(health.warnings)
    assert not any("registry" in r for r in health.reasons)
    assert wrong not in health.model_dump_json()


def test_peers_at_closed_ports_are_unreachable_and_fail_the_served_queues(
    fleet: WorkerProcess, tmp_path: Path, kube_standin: KubeStandIn
) -> None:
    engine_port, registry_port, kube_port, libvirt_port = (closed_port() for _ in range(4))
    registry_host = f"127.0.0.1:{registry_port}"
    with session_scope() as session:
        credential_store.store_static(session, registry_host, "someone", "closed-port-secret")
    kubeconfig = write_kubeconfig(
        tmp_path / "kubeconfig",
        f"https://127.0.0.1:{kube_port}",
        kube_standin.token,
        kube_standin.ca_pem,
    )
    probing = Settings(
        docker_host=f"tcp://127.0.0.1:{engine_port}",
        kubeconfig=str(kubeconfig),
        libvirt_uri=f"test+tcp://127.0.0.1:{libvirt_port}/default",
    )
    try:
        found = gather(probing)
    finally:
        with session_scope() as session:
            credential_store.remove(session, registry_host)

    health = assess(found, probing)
    peers: dict[str, PeerReport] = {p.kind: p for p in health.peers}
    assert set(peers) == {"docker_engine", "registry", "libvirt", "kubernetes"}
    for kind, peer in peers.items():
        assert peer.status == "unreachable", peer
        assert peer.error, peer
        label = {"docker_engine": "Docker engine", "kubernetes": "Kubernetes API"}.get(kind, kind)
        assert any(w.startswith(f"{label} {peer.name} unreachable: ") for w in health.warnings)
    assert "refused" in (peers["docker_engine"].error or "").lower()
    # The shared worker serves builds, pushes and attestation: each unreachable peer stops work.
    assert not health.healthy
    for needed, served in [
        ("docker_engine", "builds"),
        ("registry", "pushes"),
        ("libvirt", "attestation"),
        ("kubernetes", "pushes"),
    ]:
        [reason] = [r for r in health.reasons if f" {peers[needed].name} unreachable, " in r]
        assert served in reason.split("live workers serve ")[1], reason
    assert "closed-port-secret" not in health.model_dump_json()

    # The same peers with no live worker on any queue: warnings, and no peer reason.
    found.workers = []
    idle = assess(found, probing)
    assert not any("live workers serve" in r for r in idle.reasons)
    assert sum("unreachable:" in w for w in idle.warnings) == 4


def test_probes_stay_bounded_when_a_peer_never_answers(fleet: WorkerProcess) -> None:
    # A listening socket nobody accepts on: the connection hangs until the timeout.
    import socket
    import time

    with socket.socket() as silent:
        silent.bind(("127.0.0.1", 0))
        silent.listen(0)
        port = silent.getsockname()[1]
        probing = Settings(docker_host=f"tcp://127.0.0.1:{port}", health_peer_timeout_seconds=0.5)
        started = time.monotonic()
        health = check_fleet(probing)
        took = time.monotonic() - started
    [engine] = by_kind(health, "docker_engine")
    assert engine.status == "unreachable" and engine.error
    assert took < 5, took


def test_libvirt_probe_reports_the_driver_error() -> None:
    missing = probe_libvirt("test:///nonexistent/definitely-missing.xml")
    assert missing.reachable is False and missing.error


def test_the_api_and_the_cli_report_the_peers(
    docker_engine: DockerEngine,
    stored_registries: list[RegistryServer],
    kubeconfig_file: Path,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    from drydock.api import app

    monkeypatch.setenv("DRYDOCK_KUBECONFIG", str(kubeconfig_file))
    get_settings.cache_clear()
    try:
        with TestClient(app) as client:
            response = client.get("/health/fleet")
    finally:
        monkeypatch.undo()
        get_settings.cache_clear()
    body = response.json()
    kinds = {p["kind"]: p["status"] for p in body["peers"]}
    assert kinds == {
        "docker_engine": "reachable",
        "registry": "reachable",
        "libvirt": "reachable",
        "kubernetes": "reachable",
    }, body["peers"]
    for server in stored_registries:
        assert server.password not in response.text

    result = subprocess.run(
        [sys.executable, "-m", "drydock.cli", "health", "--json"],
        capture_output=True,
        text=True,
        env={**os.environ, "COLUMNS": "200"},
        timeout=60,
    )
    report = json.loads(result.stdout)
    assert {p["kind"] for p in report["peers"]} >= {"docker_engine", "registry", "libvirt"}
    assert all(s.password not in result.stdout for s in stored_registries)
    table = subprocess.run(
        [sys.executable, "-m", "drydock.cli", "health"],
        capture_output=True,
        text=True,
        env={**os.environ, "COLUMNS": "200"},
        timeout=60,
    )
    assert "docker_engine" in table.stdout and "reachable" in table.stdout

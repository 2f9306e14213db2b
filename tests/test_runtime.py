"""The runtime: MCP servers launched on the real Docker engine where policy allows (the images
and the world they run in: ``tests/runtime_world.py``)."""

from __future__ import annotations

import threading
import uuid
from datetime import UTC, datetime, timedelta
from typing import Any

import docker
from sqlalchemy import select, update

from dispatch.enqueue import enqueue
from models import credentials, evaluation
from models.db import session_scope
from models.jobs import DeadLetter
from models.policy import PolicyDecision
from models.runtime import RuntimeInstance
from models.stream import StreamEvent
from tasks.runtime import servers
from testkit.registry import RegistryServer
from tests.conftest import WorkerProcess, wait_for_job
from tests.runtime_world import (
    PROBE_PATH,
    TENANT,
    McpImages,
    certify,
    fleet_docker_host,
    history,
    instance_of,
    launch,
    released_by_the_ledger,
    trusted_host_with_login,
)


def test_an_mcp_server_is_pulled_run_locked_down_and_answers_its_probe_then_stops(
    runtime_world: McpImages,
) -> None:
    job = launch(runtime_world.good)
    assert job.status == "succeeded", job.error
    instance = instance_of(job)
    assert (instance.state, instance.target, instance.backend) == (
        "running",
        "docker-1",
        "docker",
    ), instance.reason
    assert instance.health is not None and instance.health["ok"]
    assert "server echo-mcp 1.0" in instance.health["detail"]
    assert instance.endpoint is not None and instance.endpoint.startswith("http://127.0.0.1:")

    # It really serves: initialize answered at its endpoint, from outside the runtime.
    from models.runtime import ProbeKind
    from tasks.runtime.probes import probe

    assert probe(instance.endpoint, ProbeKind.MCP, PROBE_PATH).ok

    engine: Any = docker.DockerClient(base_url=fleet_docker_host())
    try:
        container = engine.containers.get(instance.handle["container_name"])
        host_config = container.attrs["HostConfig"]
        assert host_config["ReadonlyRootfs"] is True
        assert host_config["SecurityOpt"] == ["no-new-privileges"]
        assert host_config["CapDrop"] == ["ALL"]
        assert host_config["Memory"] == 512 * 1024 * 1024
        assert host_config["PidsLimit"] == 256
        # Pulled by digest with the stored credential: the engine has it by digest now.
        engine.images.get(f"{runtime_world.repository}@{runtime_world.good}")
    finally:
        engine.close()

    with session_scope() as session:
        decision = session.get(PolicyDecision, instance.decision_id)
        assert decision is not None and decision.allowed
        assert decision.gates[0]["gate"] == "backend_capability"
        assert "docker-1 (docker) chosen" in decision.gates[0]["reason"]
        assert {g["gate"] for g in decision.gates} >= {"trust_state", "evaluation_freshness"}

    stopped = wait_for_job(
        enqueue("runtime.stop", {"instance_id": str(instance.id), "reason": "test over"}).id,
        timeout=60,
    )
    assert stopped.status == "succeeded", stopped.error
    assert history(instance.id) == [
        (None, "pending", "launch_requested"),
        ("pending", "starting", "placed"),
        ("starting", "running", "probe_passed"),
        ("running", "draining", "stop_requested"),
        ("draining", "stopped", "stopped"),
    ]
    with session_scope() as session:
        done = session.get(RuntimeInstance, instance.id)
        assert done is not None and done.state == "stopped"
        assert done.log_tail is not None and "serving on" in done.log_tail
        # Every move is an event on the watch stream.
        events = session.scalars(
            select(StreamEvent).where(StreamEvent.kind == "runtime.instance")
        ).all()
        moves = [e.data["to_state"] for e in events if e.data["instance_id"] == str(instance.id)]
        assert moves == ["pending", "starting", "running", "draining", "stopped"]
    engine = docker.DockerClient(base_url=fleet_docker_host())
    try:
        assert not engine.containers.list(all=True, filters={"name": f"drydock-rt-{instance.id}"})
    finally:
        engine.close()


def test_stale_evidence_leaves_the_launch_blocked_with_the_gate_named(
    runtime_world: McpImages,
) -> None:
    # The good digest's certification: an hour past its validity.
    with session_scope() as session:
        session.execute(
            update(evaluation.EvaluationCertification)
            .where(evaluation.EvaluationCertification.digest == runtime_world.good)
            .values(expires_at=datetime.now(UTC) - timedelta(hours=1))
        )
    job = launch(runtime_world.good)
    assert job.status == "succeeded", job.error
    assert job.result["state"] == "blocked"
    instance = instance_of(job)
    assert instance.state == "blocked"
    assert "evaluation_freshness" in instance.reason
    assert "evidence is stale" in instance.reason
    with session_scope() as session:
        decision = session.get(PolicyDecision, instance.decision_id)
        assert decision is not None and not decision.allowed
        failing = [g["gate"] for g in decision.gates if not g["passed"]]
        assert failing == ["evaluation_freshness"]
        assert decision.request["selection"][0]["outcome"] == "denied"

    # Fresh evidence again: the next launch takes the same (blocked) instance up.
    certify(runtime_world.good, "standard", runtime_world, evaluated_at=datetime.now(UTC))
    again = launch(runtime_world.good)
    assert again.status == "succeeded", again.error
    assert again.result["instance_id"] == str(instance.id)
    assert again.result["state"] == "running"


def test_a_digest_failing_its_probe_fails_the_launch_with_the_reason_and_leaves_nothing(
    runtime_world: McpImages,
) -> None:
    job = launch(runtime_world.broken)
    assert job.status == "dead_lettered"
    with session_scope() as session:
        instance = session.scalar(
            select(RuntimeInstance).where(RuntimeInstance.launch_job_id == job.id)
        )
        assert instance is not None and instance.state == "failed"
        assert "probe failed" in instance.reason
        assert "the server is broken" in instance.reason
        assert instance.log_tail is not None and "serving on" in instance.log_tail
        letter = session.scalar(select(DeadLetter).where(DeadLetter.job_id == job.id))
        assert letter is not None and "the server is broken" in letter.message
    engine = docker.DockerClient(base_url=fleet_docker_host())
    try:
        assert not engine.containers.list(all=True, filters={"name": f"drydock-rt-{instance.id}"})
    finally:
        engine.close()


def test_no_capable_target_blocks_and_names_every_target_passed_over(
    runtime_world: McpImages,
) -> None:
    servers.add_server(
        tenant=TENANT,
        name="vault",
        repository=runtime_world.repository,
        probe_path=PROBE_PATH,
        isolation="vm",
        confidential=True,
        actor="test",
    )
    servers.add_release(
        tenant=TENANT, server="vault", digest=runtime_world.good, tier="standard", actor="test"
    )
    job = wait_for_job(
        enqueue(
            "runtime.launch",
            {"tenant": TENANT, "server": "vault", "digest": runtime_world.good},
        ).id,
        timeout=60,
    )
    assert job.status == "succeeded", job.error
    assert job.result["state"] == "blocked"
    reason = job.result["reason"]
    assert "backend_capability: no target can run it" in reason
    assert "docker-1 (isolation container, vm needed; no confidential computing)" in reason


def test_two_racing_launches_of_one_release_make_one_instance(runtime_world: McpImages) -> None:
    payload = {"tenant": TENANT, "server": "echo", "digest": runtime_world.good}
    jobs: list[Any] = []
    barrier = threading.Barrier(2)

    def send() -> None:
        barrier.wait()
        jobs.append(enqueue("runtime.launch", payload))

    threads = [threading.Thread(target=send) for _ in range(2)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    done = [wait_for_job(job.id, timeout=60) for job in jobs]
    assert [job.status for job in done] == ["succeeded", "succeeded"]
    assert {job.result["instance_id"] for job in done} == {done[0].result["instance_id"]}
    with session_scope() as session:
        instances = session.scalars(select(RuntimeInstance)).all()
        assert len(instances) == 1
        assert instances[0].state == "running"


def test_the_cli_adds_a_server_and_release_launches_it_shows_its_history_and_stops_it(
    fleet: WorkerProcess, mcp_images: McpImages, registry_server: RegistryServer
) -> None:
    from tests.test_cli import assert_one_line_error, drydock

    trusted_host_with_login(registry_server, "docker-host-2")
    released_by_the_ledger(mcp_images)
    steps = [
        ("runtime", "targets", "add", "docker-2", "--backend", "docker", "--asset",
         f"{TENANT}/docker-host-2", "--platform", "linux/amd64"),
        ("servers", "add", "echo", "--tenant", TENANT, "--repository", mcp_images.repository,
         "--probe-path", PROBE_PATH),
        ("releases", "add", "echo", mcp_images.good, "--tier", "standard", "--tenant", TENANT),
    ]  # fmt: skip
    for args in steps:
        done = drydock(*args)
        assert done.returncode == 0, done.stderr

    # Bad input: one line naming what is wrong, nothing stored.
    refused = drydock("releases", "add", "echo", "sha256:" + "0" * 64, "--tier", "standard",
                      "--tenant", TENANT)  # fmt: skip
    assert_one_line_error(refused, "is not in the artifact ledger")
    refused = drydock("servers", "add", "Bad Name", "--tenant", TENANT, "--repository", "x")
    assert_one_line_error(refused, "name 'Bad Name'", "repository 'x'")

    launched = drydock("runtime", "launch", "echo", mcp_images.good, "--tenant", TENANT, "--wait")
    assert launched.returncode == 0, launched.stderr
    assert " running on docker-2 at http://127.0.0.1:" in launched.stdout
    instance_id = launched.stdout.split("instance ", 1)[1].split()[0]

    shown = drydock("runtime", "show", instance_id)
    assert shown.returncode == 0, shown.stderr
    assert "pending -> starting (placed: on docker-2 (docker))" in shown.stdout
    assert "starting -> running (probe_passed: MCP 2025-06-18, server echo-mcp 1.0)" in shown.stdout

    stopped = drydock("runtime", "stop", instance_id, "--reason", "done", "--wait")
    assert stopped.returncode == 0, stopped.stderr
    assert f"instance {instance_id} stopped" in stopped.stdout
    with session_scope() as session:
        credentials.remove(session, registry_server.host)


def test_the_api_adds_servers_and_releases_for_a_tenant_launches_and_reads_instances(
    fleet: WorkerProcess, mcp_images: McpImages, registry_server: RegistryServer
) -> None:
    from fastapi.testclient import TestClient

    from drydock.api import app
    from tests.test_api import bearer, make_token

    trusted_host_with_login(registry_server, "docker-host-3")
    servers.put_target(name="docker-3", backend="docker", asset=f"{TENANT}/docker-host-3",
                       platforms=["linux/amd64"], actor="test")  # fmt: skip
    released_by_the_ledger(mcp_images)
    api = TestClient(app)
    acme = bearer(make_token("acme-ops", "runtime.*", tenant=TENANT))
    other = bearer(make_token("globex-ops", "runtime.*", tenant="globex"))

    bad = api.post("/v1/servers", json={"name": "echo", "repository": "not a repo"}, headers=acme)
    assert bad.status_code == 422, bad.text
    assert [p["loc"] for p in bad.json()["detail"]] == [["body", "repository"]]
    made = api.post(
        "/v1/servers",
        json={"name": "echo", "repository": mcp_images.repository, "probe_path": PROBE_PATH},
        headers=acme,
    )
    assert made.status_code == 201, made.text
    server_id = made.json()["id"]
    releases = f"/v1/servers/{server_id}/releases"
    unknown_digest = {"digest": "sha256:" + "1" * 64, "tier": "standard"}
    unknown = api.post(releases, json=unknown_digest, headers=acme)
    assert unknown.status_code == 409 and "not in the artifact ledger" in unknown.text
    good = {"digest": mcp_images.good, "tier": "standard"}
    released = api.post(releases, json=good, headers=acme)
    assert released.status_code == 201, released.text
    assert released.json()["platforms"] == ["linux/amd64"]
    assert api.get(f"/v1/servers/{server_id}", headers=other).status_code == 404

    sent = api.post(
        "/v1/jobs/runtime.launch",
        json={"tenant": TENANT, "server": "echo", "digest": mcp_images.good},
        headers=acme,
    )
    assert sent.status_code == 202, sent.text
    job = wait_for_job(uuid.UUID(sent.json()["id"]), timeout=60)
    assert job.status == "succeeded", job.error
    instance_id = job.result["instance_id"]
    shown = api.get(f"/v1/instances/{instance_id}", headers=acme)
    assert shown.status_code == 200, shown.text
    assert shown.json()["state"] == "running"
    assert [m["to_state"] for m in shown.json()["history"]] == ["pending", "starting", "running"]
    assert api.get(f"/v1/instances/{instance_id}", headers=other).status_code == 404
    detail = api.get("/v1/servers/echo", headers=acme).json()
    assert [i["id"] for i in detail["instances"]] == [instance_id]

    stopped = api.post("/v1/jobs/runtime.stop", json={"instance_id": instance_id}, headers=acme)
    assert stopped.status_code == 202, stopped.text
    assert wait_for_job(uuid.UUID(stopped.json()["id"]), timeout=60).status == "succeeded"
    with session_scope() as session:
        credentials.remove(session, registry_server.host)

"""The runtime: MCP servers launched on the real Docker engine where policy allows.

The server image is built ``FROM scratch`` here: busybox's httpd serving a CGI script that
answers the MCP ``initialize`` call over streamable HTTP (JSON-RPC in, JSON-RPC out), listening
on 127.0.0.1 at the ``PORT`` the runtime gives it. A second image of the same server answers
with a JSON-RPC error instead: a digest that fails its probe. Both are pushed to the tests'
registry (htpasswd) and removed from the engine, so a launch pulls by digest with the stored
credential. The artifact ledger is seeded with their digests, as a build would leave them.
"""

from __future__ import annotations

import shutil
import threading
import uuid
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from typing import Any, NamedTuple

import docker
import pytest
from sqlalchemy import select, update

from dispatch.enqueue import enqueue
from models import credentials, evaluation
from models.builds import BuildPlatform, BuildRun
from models.db import session_scope
from models.jobs import DeadLetter, Job
from models.policy import PolicyDecision
from models.runtime import RuntimeInstance, RuntimeInstanceMove
from models.stream import StreamEvent
from models.trust import TrustState
from tasks.builds.backends import DockerBackend
from tasks.runtime import servers
from testkit.docker_engine import DockerEngine
from testkit.registry import RegistryServer
from tests.conftest import WorkerProcess, _missing, wait_for_job
from tests.image_builders import BUSYBOX
from tests.test_evaluation import asset_in, put_tier

MCP_REPOSITORY = "runtime/echo-mcp"
PROBE_PATH = "/cgi-bin/mcp"
TENANT = "acme"

# Reads the request, answers initialize for its id. MCP_ANSWER picks the behaviour at build.
MCP_CGI = """#!/bin/sh
read -n "$CONTENT_LENGTH" body
id=$(echo "$body" | sed -n 's/.*"id" *: *\\([0-9]*\\).*/\\1/p')
printf 'Content-Type: application/json\\r\\n\\r\\n'
echo "request $id" >&2
printf '{"jsonrpc":"2.0","id":%s,%s}' "$id" "$(cat /etc/mcp-answer)"
"""
GOOD_ANSWER = (
    '"result":{"protocolVersion":"2025-06-18","capabilities":{"tools":{}},'
    '"serverInfo":{"name":"echo-mcp","version":"1.0"}}'
)
BROKEN_ANSWER = '"error":{"code":-32603,"message":"the server is broken"}'
DOCKERFILE = """\
FROM scratch
COPY busybox /bin/busybox
RUN ["/bin/busybox", "--install", "-s", "/bin"]
COPY mcp /www/cgi-bin/mcp
COPY answer /etc/mcp-answer
RUN ["/bin/chmod", "755", "/www/cgi-bin/mcp"]
ENV PATH=/bin
USER 65534:65534
CMD ["/bin/sh", "-c", "echo serving on $PORT; exec httpd -f -v -p 127.0.0.1:$PORT -h /www"]
"""


class McpImages(NamedTuple):
    host: str
    good: str
    broken: str

    @property
    def repository(self) -> str:
        return f"{self.host}/{MCP_REPOSITORY}"


@pytest.fixture(scope="session")
def mcp_images(
    docker_engine: DockerEngine,
    registry_server: RegistryServer,
    tmp_path_factory: pytest.TempPathFactory,
) -> McpImages:
    if not BUSYBOX.exists():
        _missing(f"a static busybox at {BUSYBOX}")
    digests = {}
    client: Any = docker.DockerClient(base_url=docker_engine.url)
    try:
        for variant, answer in (("good", GOOD_ANSWER), ("broken", BROKEN_ANSWER)):
            context = tmp_path_factory.mktemp(f"mcp-{variant}")
            shutil.copy2(BUSYBOX, context / "busybox")
            (context / "mcp").write_text(MCP_CGI)
            (context / "answer").write_text(answer)
            (context / "Dockerfile").write_text(DOCKERFILE)
            tag = f"{registry_server.host}/{MCP_REPOSITORY}:{variant}-{uuid.uuid4().hex[:8]}"
            client.images.build(path=str(context), tag=tag, rm=True, network_mode="none")
            pushed = DockerBackend(docker_engine.url).push(
                tag, tag, registry_server.credential(), insecure=True, on_line=lambda _l: None
            )
            client.images.remove(tag, force=True)
            digests[variant] = pushed.digest
    finally:
        client.close()
    return McpImages(registry_server.host, digests["good"], digests["broken"])


@pytest.fixture
def runtime_world(
    fleet: WorkerProcess, mcp_images: McpImages, registry_server: RegistryServer
) -> Iterator[McpImages]:
    """A trusted host with a docker target on it, the registry login, a tier, the ledger's
    rows for both digests, and the echo-mcp server with a release of each."""
    trusted_host_with_login(registry_server, "docker-host-1")
    servers.put_target(
        name="docker-1",
        backend="docker",
        asset=f"{TENANT}/docker-host-1",
        platforms=["linux/amd64", "linux/arm64"],
        actor="test",
    )
    put_tier("standard", "true")
    for digest in (mcp_images.good, mcp_images.broken):
        seed_ledger(digest)
        certify(digest, "standard", mcp_images, evaluated_at=datetime.now(UTC))
    servers.add_server(
        tenant=TENANT,
        name="echo",
        repository=mcp_images.repository,
        probe_path=PROBE_PATH,
        actor="test",
    )
    for digest in (mcp_images.good, mcp_images.broken):
        servers.add_release(
            tenant=TENANT, server="echo", digest=digest, tier="standard", actor="test"
        )
    yield mcp_images
    engine = docker.DockerClient(base_url=fleet_docker_host())
    try:
        for container in engine.containers.list(
            all=True, filters={"label": "io.drydock.runtime.instance"}
        ):
            container.remove(force=True)
    finally:
        engine.close()
    with session_scope() as session:
        credentials.remove(session, registry_server.host)


def trusted_host_with_login(registry_server: RegistryServer, host: str) -> None:
    """The registry login stored in Drydock and a trusted host asset of the tenant."""
    with session_scope() as session:
        credentials.store_static(
            session, registry_server.host, registry_server.username, registry_server.password
        )
    asset_in(TrustState.TRUSTED, TENANT, host)


def released_by_the_ledger(images: McpImages) -> None:
    """The good digest built (in the ledger) and freshly certified at the tier."""
    put_tier("standard", "true")
    seed_ledger(images.good)
    certify(images.good, "standard", images, evaluated_at=datetime.now(UTC))


def fleet_docker_host() -> str:
    import os

    return os.environ["DRYDOCK_DOCKER_HOST"]


def seed_ledger(digest: str, platform: str = "linux/amd64") -> None:
    """A build of ``digest`` in the artifact ledger, as builds.build_image leaves one."""
    job_id = uuid.uuid4()
    with session_scope() as session:
        session.add(
            Job(id=job_id, task_name="builds.build_image", queue="builds", payload={},
                status="succeeded")
        )  # fmt: skip
        session.flush()
        run = BuildRun(
            job_id=job_id,
            repository_url="file:///srv/echo-mcp.git",
            revision="main",
            image="echo-mcp",
            backend="docker",
            platforms=[platform],
            status="published",
        )
        session.add(run)
        session.flush()
        session.add(
            BuildPlatform(run_id=run.id, platform=platform, tag="echo-mcp:main", status="pushed",
                          digest=digest)
        )  # fmt: skip


def certify(digest: str, tier: str, images: McpImages, *, evaluated_at: datetime) -> None:
    job_id = uuid.uuid4()
    with session_scope() as session:
        session.add(
            Job(id=job_id, task_name="evaluation.refresh_certification", queue="evaluation",
                payload={}, status="succeeded")
        )  # fmt: skip
        session.flush()
        evaluation.record_evaluation(
            session,
            evaluation.Evaluation(
                job_id=job_id,
                digest=digest,
                tier=tier,
                host=images.host,
                repository=MCP_REPOSITORY,
                passed=True,
                evidence=[{"name": "seeded", "status": "passed"}],
                summary="seeded",
                evaluated_at=evaluated_at,
            ),
        )


def launch(digest: str, **extra: Any) -> Any:
    job = enqueue(
        "runtime.launch",
        {"tenant": TENANT, "server": "echo", "digest": digest, "tier": "standard", **extra},
    )
    return wait_for_job(job.id, timeout=60)


def instance_of(job: Any) -> RuntimeInstance:
    with session_scope() as session:
        instance = session.scalar(
            select(RuntimeInstance).where(RuntimeInstance.launch_job_id == job.id)
        )
        assert instance is not None, f"job {job.id} made no instance"
        session.expunge(instance)
        return instance


def history(instance_id: uuid.UUID) -> list[tuple[str | None, str, str]]:
    with session_scope() as session:
        return [
            (m.from_state, m.to_state, m.cause)
            for m in session.scalars(
                select(RuntimeInstanceMove)
                .where(RuntimeInstanceMove.instance_id == instance_id)
                .order_by(RuntimeInstanceMove.seq)
            )
        ]


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

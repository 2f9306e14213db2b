"""The runtime tests' world: MCP server images, a trusted host with a docker target, the ledger's
rows, and helpers to launch and read instances back (a pytest plugin: ``tests/conftest.py``).

The server image is built ``FROM scratch`` here: busybox's httpd serving a CGI script that
answers the MCP ``initialize`` call over streamable HTTP (JSON-RPC in, JSON-RPC out), listening
on 127.0.0.1 at the ``PORT`` the runtime gives it. A second image of the same server answers
with a JSON-RPC error instead: a digest that fails its probe; a third is version 2.0 of the good
one, and a fourth answers for six seconds and then exits (a rollout's analysis catches it). All
are pushed to the tests' registry (htpasswd) and removed from the engine, so a launch pulls by
digest with the stored credential. The artifact ledger is seeded with their digests, as a build
would leave them.
"""

from __future__ import annotations

import http.server
import json
import shutil
import threading
import uuid
from collections.abc import Iterator
from datetime import UTC, datetime
from typing import Any, NamedTuple

import docker
import pytest
from sqlalchemy import select

from dispatch.enqueue import enqueue
from models import credentials, evaluation
from models.builds import BuildPlatform, BuildRun
from models.db import session_scope
from models.jobs import Job
from models.runtime import RuntimeInstance, RuntimeInstanceMove
from models.trust import TrustState
from tasks.builds.backends import DockerBackend
from tasks.runtime import servers
from testkit.docker_engine import DockerEngine
from testkit.libvirt_daemon import LibvirtDaemon
from testkit.libvirt_daemon import missing as libvirt_missing
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
CMD ["/bin/sh", "-c", "{command}"]
"""
SERVE = "echo serving on $PORT; exec httpd -f -v -p 127.0.0.1:$PORT -h /www"
# Serves for a few seconds (its launch probe passes), then exits: a rollout's analysis fails.
SERVE_THEN_DIE = (
    "echo serving on $PORT; httpd -f -v -p 127.0.0.1:$PORT -h /www & sleep 6; "
    "echo giving up; exit 3"
)
# name: (its initialize answer, its command)
VARIANTS = {
    "good": (GOOD_ANSWER, SERVE),
    "broken": (BROKEN_ANSWER, SERVE),
    "v2": (GOOD_ANSWER.replace('"version":"1.0"', '"version":"2.0"'), SERVE),
    "dying": (GOOD_ANSWER, SERVE_THEN_DIE),
}


class McpImages(NamedTuple):
    host: str
    good: str
    broken: str
    # A second good version, and one that stops answering seconds after it starts.
    v2: str
    dying: str

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
        for variant, (answer, command) in VARIANTS.items():
            context = tmp_path_factory.mktemp(f"mcp-{variant}")
            shutil.copy2(BUSYBOX, context / "busybox")
            (context / "mcp").write_text(MCP_CGI)
            (context / "answer").write_text(answer)
            (context / "Dockerfile").write_text(DOCKERFILE.replace("{command}", command))
            tag = f"{registry_server.host}/{MCP_REPOSITORY}:{variant}-{uuid.uuid4().hex[:8]}"
            client.images.build(path=str(context), tag=tag, rm=True, network_mode="none")
            pushed = DockerBackend(docker_engine.url).push(
                tag, tag, registry_server.credential(), insecure=True, on_line=lambda _l: None
            )
            client.images.remove(tag, force=True)
            digests[variant] = pushed.digest
    finally:
        client.close()
    return McpImages(
        registry_server.host, digests["good"], digests["broken"], digests["v2"], digests["dying"]
    )


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


class McpPod:
    """What a server's pod answers behind the Kubernetes stand-in's service proxy: the same
    ``initialize`` answers as the image's CGI (``answer``: GOOD_ANSWER or BROKEN_ANSWER), from a
    loopback HTTP server; every request it got is kept."""

    def __init__(self) -> None:
        self.answer = GOOD_ANSWER
        self.requests: list[tuple[str, str, dict[str, Any]]] = []
        pod = self

        class Handler(http.server.BaseHTTPRequestHandler):
            def do_POST(self) -> None:
                body = json.loads(self.rfile.read(int(self.headers["Content-Length"] or 0)))
                pod.requests.append((self.command, self.path, body))
                payload = f'{{"jsonrpc":"2.0","id":{body["id"]},{pod.answer}}}'.encode()
                self.send_response(200)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(payload)))
                self.end_headers()
                self.wfile.write(payload)

            def log_message(self, format: str, *args: object) -> None:
                return None

        self._server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        threading.Thread(target=self._server.serve_forever, args=(0.05,), daemon=True).start()

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self._server.server_address[1]}"

    def close(self) -> None:
        self._server.shutdown()
        self._server.server_close()


@pytest.fixture
def mcp_pod() -> Iterator[McpPod]:
    pod = McpPod()
    yield pod
    pod.close()


@pytest.fixture(scope="session")
def libvirt_daemon(tmp_path_factory: pytest.TempPathFactory) -> Iterator[LibvirtDaemon]:
    """A libvirtd serving the test driver: the worker and the test see the same domains."""
    missing = libvirt_missing()
    if missing:
        _missing(missing)
    daemon = LibvirtDaemon(tmp_path_factory.mktemp("libvirtd"))
    daemon.start()
    yield daemon
    daemon.stop()

"""Real servers for the tests: Redis and PostgreSQL as their own processes on free ports, and
real ``drydock worker`` processes against them.

Ports and settings are fixed in ``pytest_configure`` (before any Drydock module reads its
settings); the servers themselves start only when a test asks for them. Without a server binary
the tests that need it skip locally and fail in CI (``CI`` set).
"""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

from drydock import localservers, pidrecord
from kernel.topology import WORK_QUEUES

# The session worker serves every queue but this one: tests that start and kill their own
# workers use it, so the session worker can never take their jobs.
PRIVATE_QUEUE = "remediation"
SHARED_QUEUES = "builds,pushes,attestation,evaluation,workflows,runtime"
# Builds and pushes talk to a Docker engine, buildah and a registry: more room than the rest.
TEST_TIME_LIMIT = 8
TEST_BUILD_TIME_LIMIT = 30
# Redelivery after a lost worker waits for this; it must exceed every time limit + retry cap.
TEST_VISIBILITY_TIMEOUT = TEST_BUILD_TIME_LIMIT + 2

_state: dict[str, Any] = {}

# Fixtures of the builds and pushes tests: a Docker engine, buildah, git repositories, a registry.
pytest_plugins = [
    "tests.image_builders",
    "tests.registry_server",
    "tests.tpm_simulator",
    "tests.sandbox_image",
    "tests.kube_standin",
    "tests.evaluation_images",
    "tests.runtime_world",
]


def _record_every_child(patcher: pytest.MonkeyPatch) -> None:
    """Record every process this pytest process starts (drydock/pidrecord.py), for CI to stop
    by PID whatever a test left running. Done in ``Popen`` itself, so a fixture or a test that
    starts a server, a worker or a helper cannot forget to; the servers and children that
    ``localservers`` and ``drydock up`` start in other processes record themselves."""
    spawn = subprocess.Popen.__init__

    def recording_init(self: subprocess.Popen[Any], *args: Any, **kwargs: Any) -> None:
        spawn(self, *args, **kwargs)
        argv = kwargs.get("args", args[0] if args else "?")
        words = [argv] if isinstance(argv, str | bytes | os.PathLike) else list(argv)
        try:
            pidrecord.record(self.pid, " ".join(os.fsdecode(word) for word in words))
        except OSError as exc:
            # The child runs already: failing here would lose its handle, and so the child.
            print(f"warning: could not record test process {self.pid}: {exc}", file=sys.stderr)

    patcher.setattr(subprocess.Popen, "__init__", recording_init)


def pytest_configure(config: pytest.Config) -> None:
    from cryptography.fernet import Fernet

    if pidrecord.recording_to():
        patcher = pytest.MonkeyPatch()
        _record_every_child(patcher)
        _state["undo_recording"] = patcher.undo
    base = Path(tempfile.mkdtemp(prefix="drydock-tests-"))
    redis_port, pg_port = localservers.free_port(), localservers.free_port()
    registry_port = localservers.free_port()
    _state.update(base=base, redis_port=redis_port, pg_port=pg_port, registry_port=registry_port)
    os.environ.update(
        {
            "DRYDOCK_BROKER_URL": f"redis://127.0.0.1:{redis_port}/0",
            "DRYDOCK_DATABASE_URL": f"postgresql+psycopg://drydock@127.0.0.1:{pg_port}/drydock",
            "DRYDOCK_SECRET_KEY": Fernet.generate_key().decode(),
            "DRYDOCK_RETRY_MAX_ATTEMPTS": "3",
            "DRYDOCK_RETRY_BASE_SECONDS": "0.05",
            "DRYDOCK_RETRY_MAX_SECONDS": "1",
            "DRYDOCK_VISIBILITY_TIMEOUT": str(TEST_VISIBILITY_TIMEOUT),
            "DRYDOCK_TIME_LIMITS": json.dumps(
                {
                    **dict.fromkeys(WORK_QUEUES, TEST_TIME_LIMIT),
                    "builds": TEST_BUILD_TIME_LIMIT,
                    "pushes": TEST_BUILD_TIME_LIMIT,
                    # A VM launch waits for its agent's evidence.
                    "runtime": TEST_BUILD_TIME_LIMIT,
                }
            ),
            "DRYDOCK_RESTORE_SWEEP_SECONDS": "1",
            "DRYDOCK_CANARY_INTERVAL_SECONDS": "0",
            "DRYDOCK_LOG_JSON": "true",
            # Workers and Beat beat twice a second: a lost one shows in health within ~2 s.
            "DRYDOCK_HEARTBEAT_SECONDS": "0.5",
            # A worker silent for 5 s is lost: the jobs it held come back within ~7 s, well
            # before the visibility timeout (the orphan sweep, workers/orphans.py).
            "DRYDOCK_ORPHAN_AFTER_SECONDS": "5",
            "DRYDOCK_ORPHAN_SWEEP_SECONDS": "1",
            # Builds: a Docker engine and buildah storage of the tests' own (tests/images.py
            # starts them), sources from git repositories the tests create on disk.
            "DRYDOCK_DOCKER_HOST": f"unix://{base}/docker/docker.sock",
            "DRYDOCK_BUILDAH_ROOT": str(base / "buildah" / "root"),
            "DRYDOCK_BUILDAH_RUNROOT": str(base / "buildah" / "run"),
            "DRYDOCK_BUILD_WORK_DIR": str(base / "build-work"),
            "DRYDOCK_GIT_ALLOWED_SCHEMES": json.dumps(["https", "ssh", "file"]),
            "DRYDOCK_GIT_TIMEOUT_SECONDS": "60",
            # Attestation: the vendors' roots the samples chain to, pinned; libvirt's built-in
            # test driver (a real connection to a fake hypervisor); Beat's sweep off.
            "DRYDOCK_ATTESTATION_ROOTS_DIR": str(_pin_sample_roots(base / "attestation-roots")),
            "DRYDOCK_LIBVIRT_URI": "test:///default",
            "DRYDOCK_TRUST_STALENESS_INTERVAL_SECONDS": "0",
            # Remediation: Beat's sweep off (tests run it themselves).
            "DRYDOCK_REMEDIATION_EXPIRY_INTERVAL_SECONDS": "0",
            # Evaluation, anomaly and credential upkeep: Beat's entries off (tests run them).
            "DRYDOCK_EVALUATION_CADENCE_INTERVAL_SECONDS": "0",
            "DRYDOCK_ANOMALY_INTERVAL_SECONDS": "0",
            "DRYDOCK_CREDENTIAL_ROTATION_INTERVAL_SECONDS": "0",
            # The evaluation workers' host, as registered (and made trusted) by the tests that
            # run suites; absent, every refresh is refused by the host-trust gate.
            "DRYDOCK_EVALUATION_HOST_ASSET": "fleet/evaluation-host",
            # Runtime: a launched server has 4 s to answer its probe (inside the 8 s limit).
            "DRYDOCK_RUNTIME_PROBE_TIMEOUT_SECONDS": "4",
            # ... and a VM 20 s to attest (inside the runtime queue's 30 s); Beat's trust sweep
            # off (tests run runtime.enforce_trust themselves).
            "DRYDOCK_RUNTIME_ATTESTATION_TIMEOUT_SECONDS": "20",
            "DRYDOCK_RUNTIME_TRUST_SWEEP_SECONDS": "0",
        }
    )


SAMPLES = Path(__file__).parent / "data" / "attestation-samples"


def _pin_sample_roots(directory: Path) -> Path:
    """The AMD ARKs (Milan, Turin) and the Intel SGX Root CA the vendor samples chain to."""
    directory.mkdir(parents=True)
    sources = {
        "amd-milan.pem": SAMPLES / "sev-snp" / "virtee-milan-v2" / "ask_ark_milan.pem",
        "amd-turin.pem": SAMPLES / "sev-snp" / "virtee-turin-vcek-chain-only" / "ask_ark_turin.pem",
        "intel-sgx-root.pem": SAMPLES / "tdx" / "go-tdx-guest-spr-v4" / "intel_sgx_root_ca.pem",
    }
    for name, source in sources.items():
        shutil.copyfile(source, directory / name)
    return directory


def pytest_unconfigure(config: pytest.Config) -> None:
    for stop in reversed(_state.get("stops", [])):
        try:
            stop()
        except Exception as exc:
            print(f"warning: stopping a test server failed: {exc}", file=sys.stderr)
    base = _state.get("base")
    if base:
        shutil.rmtree(base, ignore_errors=True)
    undo = _state.get("undo_recording")
    if undo:
        undo()


def _missing(what: str) -> None:
    message = f"{what} is not available on this machine"
    if os.environ.get("CI"):
        pytest.fail(f"{message}; CI must provide it (see .ci/run)")
    pytest.skip(f"{message} (in CI, with CI set, this fails instead)")


def _register_stop(stop: Callable[[], None]) -> None:
    _state.setdefault("stops", []).append(stop)


@pytest.fixture(scope="session")
def redis_server() -> str:
    if not localservers.redis_available():
        _missing("redis-server")
    server = localservers.start_redis(_state["base"] / "redis", _state["redis_port"])
    _register_stop(server.stop)
    assert server.url == os.environ["DRYDOCK_BROKER_URL"]
    return server.url


@pytest.fixture(scope="session")
def postgres_server() -> str:
    if not localservers.postgres_available():
        _missing("PostgreSQL (initdb, pg_ctl)")
    server = localservers.start_postgres(_state["base"] / "postgres", _state["pg_port"], fast=True)
    _register_stop(server.stop)
    assert server.url == os.environ["DRYDOCK_DATABASE_URL"]
    return server.url


@pytest.fixture(scope="session")
def migrated_db(postgres_server: str) -> str:
    from models.migrate import upgrade

    upgrade("head")
    return postgres_server


QUEUE_KEYS = [
    "builds",
    "pushes",
    "attestation",
    "remediation",
    "evaluation",
    "dead_letter",
    "unacked",
    "unacked_index",
]


@pytest.fixture
def clean_state(migrated_db: str, redis_server: str) -> Iterator[None]:
    """Empty tables and queues before each test (queue bindings stay, or sends would vanish).
    Stored registry credentials go too: health probes every one, and a registry an earlier test
    made up (or stopped) would make the fleet unhealthy."""
    import redis
    from sqlalchemy import text
    from sqlalchemy.exc import OperationalError
    from tenacity import Retrying, retry_if_exception, stop_after_attempt, wait_fixed

    from models.db import get_engine

    # A worker still finishing an earlier test's job (a sweep) may hold locks on these tables
    # taken in another order: PostgreSQL then aborts the TRUNCATE as a deadlock (CI saw it).
    # The TRUNCATE is all or nothing, so trying again is safe.
    def deadlocked(exc: BaseException) -> bool:
        return isinstance(exc, OperationalError) and "deadlock detected" in str(exc)

    for attempt in Retrying(
        retry=retry_if_exception(deadlocked), stop=stop_after_attempt(5), wait=wait_fixed(0.2),
        reraise=True,
    ):  # fmt: skip
        with attempt, get_engine().begin() as conn:
            conn.execute(
                text(
                    "TRUNCATE jobs, job_events, dead_letters, api_tokens, trust_assets, "
                    "trust_asset_classes, remediation_playbooks, tenant_policies, "
                    "evaluation_tiers, evaluation_certifications, policy_decisions, "
                    "capability_scores, credential_events, registry_credentials, stream_events, "
                    "workflow_definitions, projects, project_remotes, runtime_servers, "
                    "remediation_lanes, remediation_freezes CASCADE"
                )
            )
    client = redis.Redis.from_url(redis_server)
    client.delete(*QUEUE_KEYS)
    # Heartbeats of workers earlier tests killed (the live ones' stay), and Beat's last tick.
    from workers.heartbeat import BEAT_KEY, BEAT_KEY_PREFIX, WORKER_KEY_PREFIX, read_workers

    stale = [
        WORKER_KEY_PREFIX + beat.hostname
        for beat in read_workers(client)
        if time.time() - beat.last_heartbeat > 1.5
    ]
    client.delete(BEAT_KEY, *stale)
    # Beat's lock and schedule (celery-redbeat): a Beat an earlier test killed would hold the
    # lock until it expires.
    beat_keys = list(client.scan_iter(match=f"{BEAT_KEY_PREFIX}*"))
    if beat_keys:
        client.delete(*beat_keys)
    client.close()
    yield


@dataclass
class ChildProcess:
    """A `drydock` process a test started in its own process group, logging to a file."""

    proc: subprocess.Popen[bytes]
    log_path: Path

    @property
    def pid(self) -> int:
        return self.proc.pid

    def log(self) -> str:
        return self.log_path.read_text(errors="replace")

    def kill(self) -> None:
        """SIGKILL the process and its children: no warm shutdown, no acks, no lock released."""
        with contextlib.suppress(ProcessLookupError):
            os.killpg(self.proc.pid, signal.SIGKILL)
        self.proc.wait(10)

    def stop(self) -> None:
        if self.proc.poll() is None:
            os.killpg(self.proc.pid, signal.SIGTERM)
            try:
                self.proc.wait(20)
            except subprocess.TimeoutExpired:
                self.kill()


@dataclass
class WorkerProcess(ChildProcess):
    hostname: str


def start_worker(
    queues: str, name: str, concurrency: int = 2, env: dict[str, str] | None = None
) -> WorkerProcess:
    log_path = _state["base"] / f"worker-{name}-{time.monotonic_ns()}.log"
    hostname = f"{name}@test"
    with open(log_path, "wb") as log:
        proc = subprocess.Popen(
            [
                sys.executable,
                "-m",
                "drydock.cli",
                "worker",
                "-Q",
                queues,
                f"--concurrency={concurrency}",
                f"--hostname={hostname}",
                "--loglevel=INFO",
            ],
            stdout=log,
            stderr=subprocess.STDOUT,
            start_new_session=True,
            env={**os.environ, **(env or {})},
        )
    worker = WorkerProcess(proc, log_path, hostname)
    try:
        localservers.wait_for(lambda: "ready." in worker.log(), 60, f"worker {name}")
    except localservers.ServerUnavailableError:
        worker.stop()
        raise RuntimeError(f"worker {name} did not start:\n{worker.log()[-3000:]}") from None
    return worker


@pytest.fixture(scope="session")
def session_worker(migrated_db: str, redis_server: str) -> Iterator[WorkerProcess]:
    worker = start_worker(SHARED_QUEUES, "shared")
    yield worker
    worker.stop()


@pytest.fixture
def fleet(clean_state: None, session_worker: WorkerProcess) -> WorkerProcess:
    """A clean outcome store and queues, and a running worker on every shared queue."""
    return session_worker


@pytest.fixture
def worker_factory(clean_state: None) -> Iterator[Callable[..., WorkerProcess]]:
    started: list[WorkerProcess] = []

    def factory(
        name: str,
        queues: str = PRIVATE_QUEUE,
        concurrency: int = 1,
        env: dict[str, str] | None = None,
    ) -> WorkerProcess:
        worker = start_worker(queues, name, concurrency, env)
        started.append(worker)
        return worker

    yield factory
    for worker in started:
        worker.stop()


@pytest.fixture(scope="session")
def api_url(migrated_db: str, redis_server: str) -> Iterator[str]:
    """The API (and its console) served by a real uvicorn over TCP, in this process."""
    import uvicorn

    from drydock.api import app

    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    server = uvicorn.Server(
        uvicorn.Config(app, host="127.0.0.1", port=port, log_level="warning", lifespan="off")
    )
    thread = threading.Thread(target=server.run, daemon=True)
    thread.start()
    poll(lambda: server.started, 20, "uvicorn to start")
    yield f"http://127.0.0.1:{port}"
    server.should_exit = True
    thread.join(10)


def poll(check: Callable[[], Any], timeout: float, what: str) -> Any:
    """Call ``check`` until it returns something truthy; that value."""
    deadline = time.monotonic() + timeout
    last: Any = None
    while time.monotonic() < deadline:
        last = check()
        if last:
            return last
        time.sleep(0.2)
    raise AssertionError(f"{what} within {timeout}s (last: {last!r})")


def wait_for_job(
    job_id: Any, statuses: tuple[str, ...] = ("succeeded", "dead_lettered"), timeout: float = 30
) -> Any:
    """Poll the outcome store until the job reaches one of ``statuses``; return the row."""
    from models.db import session_scope
    from models.jobs import Job

    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        with session_scope() as session:
            job = session.get(Job, job_id)
            if job is not None and job.status in statuses:
                return job
        time.sleep(0.1)
    raise AssertionError(f"job {job_id} did not reach {statuses} within {timeout}s")

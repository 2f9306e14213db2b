"""Real servers for the tests: Redis and PostgreSQL as their own processes on free ports, and
real ``drydock worker`` processes against them.

Ports and settings are fixed in ``pytest_configure`` (before any Drydock module reads its
settings); the servers themselves start only when a test asks for them. Without a server binary
the tests that need it skip locally and fail in CI (``CI`` set).
"""

from __future__ import annotations

import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

PG_BIN_DIRS = ["/usr/lib/postgresql/16/bin", "/usr/lib/postgresql/15/bin"]
# The session worker serves every queue but this one: tests that start and kill their own
# workers use it, so the session worker can never take their jobs.
PRIVATE_QUEUE = "remediation"
SHARED_QUEUES = "builds,pushes,attestation,evaluation"
# Redelivery after a lost worker waits for this; it must exceed time limit + retry cap.
TEST_VISIBILITY_TIMEOUT = 12
TEST_TIME_LIMIT = 8

_state: dict[str, Any] = {}


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def pytest_configure(config: pytest.Config) -> None:
    from cryptography.fernet import Fernet

    base = Path(tempfile.mkdtemp(prefix="drydock-tests-"))
    redis_port, pg_port = _free_port(), _free_port()
    _state.update(base=base, redis_port=redis_port, pg_port=pg_port)
    os.environ.update(
        {
            "DRYDOCK_BROKER_URL": f"redis://127.0.0.1:{redis_port}/0",
            "DRYDOCK_DATABASE_URL": f"postgresql+psycopg://drydock@127.0.0.1:{pg_port}/drydock",
            "DRYDOCK_SECRET_KEY": Fernet.generate_key().decode(),
            "DRYDOCK_RETRY_MAX_ATTEMPTS": "3",
            "DRYDOCK_RETRY_BASE_SECONDS": "0.05",
            "DRYDOCK_RETRY_MAX_SECONDS": "1",
            "DRYDOCK_VISIBILITY_TIMEOUT": str(TEST_VISIBILITY_TIMEOUT),
            "DRYDOCK_TIME_LIMITS": (
                '{"builds": %d, "pushes": %d, "attestation": %d, "remediation": %d, '
                '"evaluation": %d}' % ((TEST_TIME_LIMIT,) * 5)
            ),
            "DRYDOCK_RESTORE_SWEEP_SECONDS": "1",
            "DRYDOCK_CANARY_INTERVAL_SECONDS": "0",
            "DRYDOCK_LOG_JSON": "true",
        }
    )


def pytest_unconfigure(config: pytest.Config) -> None:
    for stop in reversed(_state.get("stops", [])):
        try:
            stop()
        except Exception as exc:  # noqa: BLE001  keep stopping the others
            print(f"warning: stopping a test server failed: {exc}", file=sys.stderr)
    base = _state.get("base")
    if base:
        shutil.rmtree(base, ignore_errors=True)


def _missing(what: str) -> None:
    message = f"{what} is not available on this machine"
    if os.environ.get("CI"):
        pytest.fail(f"{message}; CI must provide it (see .ci/run)")
    pytest.skip(message)


def _wait_for(check: Callable[[], bool], timeout: float, what: str) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            if check():
                return
        except Exception:  # noqa: BLE001,S110  not up yet
            pass
        time.sleep(0.1)
    raise RuntimeError(f"{what} did not come up within {timeout}s")


def _register_stop(stop: Callable[[], None]) -> None:
    _state.setdefault("stops", []).append(stop)


@pytest.fixture(scope="session")
def redis_server() -> str:
    binary = shutil.which("redis-server")
    if binary is None:
        _missing("redis-server")
    port = _state["redis_port"]
    workdir = _state["base"] / "redis"
    workdir.mkdir()
    proc = subprocess.Popen(
        [binary or "", "--port", str(port), "--bind", "127.0.0.1", "--save", "",
         "--appendonly", "no", "--dir", str(workdir)],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    _register_stop(lambda: (proc.terminate(), proc.wait(10)))
    import redis

    client = redis.Redis(port=port)
    _wait_for(lambda: bool(client.ping()), 15, "redis-server")
    return os.environ["DRYDOCK_BROKER_URL"]


def _pg_bin(name: str) -> str | None:
    for directory in PG_BIN_DIRS:
        candidate = Path(directory) / name
        if candidate.exists():
            return str(candidate)
    return shutil.which(name)


@pytest.fixture(scope="session")
def postgres_server() -> str:
    initdb, pg_ctl = _pg_bin("initdb"), _pg_bin("pg_ctl")
    if initdb is None or pg_ctl is None:
        _missing("PostgreSQL (initdb, pg_ctl)")
    port = _state["pg_port"]
    workdir = _state["base"] / "postgres"
    workdir.mkdir()
    # PostgreSQL refuses to run as root: run it as the postgres user when we are root.
    as_user: list[str] = []
    if os.geteuid() == 0:
        as_user = ["runuser", "-u", "postgres", "--"]
        shutil.chown(workdir, "postgres")
        os.chmod(_state["base"], 0o755)
    data = workdir / "data"
    subprocess.run(
        [*as_user, initdb or "", "-D", str(data), "-A", "trust", "-U", "drydock", "-E", "UTF8"],
        check=True,
        stdout=subprocess.DEVNULL,
    )
    options = (
        f"-p {port} -k {workdir} -c listen_addresses=127.0.0.1 -c fsync=off "
        "-c synchronous_commit=off -c full_page_writes=off -c max_connections=200"
    )
    subprocess.run(
        [*as_user, pg_ctl or "", "-D", str(data), "-o", options, "-l", str(workdir / "log"),
         "-w", "start"],
        check=True,
        stdout=subprocess.DEVNULL,
    )
    _register_stop(
        lambda: subprocess.run(
            [*as_user, pg_ctl or "", "-D", str(data), "-m", "immediate", "stop"],
            check=False,
            stdout=subprocess.DEVNULL,
        )
    )
    import psycopg

    def create_db() -> bool:
        with psycopg.connect(f"host=127.0.0.1 port={port} user=drydock dbname=postgres",
                             autocommit=True) as conn:
            conn.execute("CREATE DATABASE drydock")
        return True

    _wait_for(create_db, 20, "PostgreSQL")
    return os.environ["DRYDOCK_DATABASE_URL"]


@pytest.fixture(scope="session")
def migrated_db(postgres_server: str) -> str:
    from models.migrate import upgrade

    upgrade("head")
    return postgres_server


QUEUE_KEYS = [
    "builds", "pushes", "attestation", "remediation", "evaluation", "dead_letter",
    "unacked", "unacked_index",
]


@pytest.fixture
def clean_state(migrated_db: str, redis_server: str) -> Iterator[None]:
    """Empty tables and queues before each test (queue bindings stay, or sends would vanish)."""
    import redis
    from sqlalchemy import text

    from models.db import get_engine

    with get_engine().begin() as conn:
        conn.execute(text("TRUNCATE jobs, job_events, dead_letters CASCADE"))
    redis.Redis.from_url(redis_server).delete(*QUEUE_KEYS)
    yield


@dataclass
class WorkerProcess:
    proc: subprocess.Popen[bytes]
    log_path: Path
    hostname: str

    def log(self) -> str:
        return self.log_path.read_text(errors="replace")

    def kill(self) -> None:
        """SIGKILL the worker and its pool processes: no warm shutdown, no acks."""
        try:
            os.killpg(self.proc.pid, signal.SIGKILL)
        except ProcessLookupError:
            pass
        self.proc.wait(10)

    def stop(self) -> None:
        if self.proc.poll() is None:
            os.killpg(self.proc.pid, signal.SIGTERM)
            try:
                self.proc.wait(20)
            except subprocess.TimeoutExpired:
                self.kill()


def start_worker(queues: str, name: str, concurrency: int = 2) -> WorkerProcess:
    log_path = _state["base"] / f"worker-{name}-{time.monotonic_ns()}.log"
    hostname = f"{name}@test"
    with open(log_path, "wb") as log:
        proc = subprocess.Popen(
            [sys.executable, "-m", "drydock.cli", "worker", "-Q", queues,
             f"--concurrency={concurrency}", f"--hostname={hostname}", "--loglevel=INFO"],
            stdout=log,
            stderr=subprocess.STDOUT,
            start_new_session=True,
            env=os.environ.copy(),
        )
    worker = WorkerProcess(proc, log_path, hostname)
    try:
        _wait_for(lambda: "ready." in worker.log(), 60, f"worker {name}")
    except RuntimeError:
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

    def factory(name: str, queues: str = PRIVATE_QUEUE, concurrency: int = 1) -> WorkerProcess:
        worker = start_worker(queues, name, concurrency)
        started.append(worker)
        return worker

    yield factory
    for worker in started:
        worker.stop()


def wait_for_job(job_id: Any, statuses: tuple[str, ...] = ("succeeded", "dead_lettered"),
                 timeout: float = 30) -> Any:
    """Poll the outcome store until the job reaches one of ``statuses``; return the row."""
    from models.db import session_scope
    from models.tables import Job

    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        with session_scope() as session:
            job = session.get(Job, job_id)
            if job is not None and job.status in statuses:
                return job
        time.sleep(0.1)
    raise AssertionError(f"job {job_id} did not reach {statuses} within {timeout}s")

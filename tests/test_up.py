"""`drydock up` as a newcomer meets it: a subprocess with no settings, in an empty directory."""

from __future__ import annotations

import json
import os
import queue
import signal
import subprocess
import sys
import threading
import time
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest

from drydock import localservers
from kernel.topology import WORK_QUEUES

pytestmark = pytest.mark.fleet

# The servers' own settings are what `drydock up` must find by itself.
# What a newcomer has not set: the servers, and the tests' own Docker engine (health probes
# the engine a fleet is configured with, and these tests start none).
UNSET_FOR_A_NEWCOMER = (
    "DRYDOCK_BROKER_URL",
    "DRYDOCK_DATABASE_URL",
    "DRYDOCK_SECRET_KEY",
    "DRYDOCK_DOCKER_HOST",
)


def newcomer_env() -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if k not in UNSET_FOR_A_NEWCOMER}
    return {**env, "COLUMNS": "250"}


def drydock(cwd: Path, *args: str, timeout: float = 60) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "drydock.cli", *args],
        cwd=cwd,
        env=newcomer_env(),
        capture_output=True,
        text=True,
        timeout=timeout,
    )


def processes_under(directory: Path) -> list[str]:
    """Processes whose working directory or command line is inside ``directory``."""
    found = []
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit() or int(entry.name) == os.getpid():
            continue
        try:
            cwd = os.readlink(entry / "cwd")
            cmdline = (entry / "cmdline").read_bytes().replace(b"\0", b" ").decode()
        except OSError:
            continue
        if cwd.startswith(str(directory)) or str(directory) in cmdline:
            found.append(f"{entry.name}: {cmdline[:200]}")
    return found


class UpProcess:
    def __init__(self, cwd: Path, api_port: int, flower_port: int) -> None:
        self.proc = subprocess.Popen(
            [
                sys.executable,
                "-m",
                "drydock.cli",
                "up",
                "--api-port",
                str(api_port),
                "--flower-port",
                str(flower_port),
                "--concurrency",
                "1",
                "--shutdown-timeout",
                "30",
            ],
            cwd=cwd,
            env=newcomer_env(),
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            text=True,
        )
        self.lines: queue.Queue[str] = queue.Queue()
        self.output: list[str] = []
        threading.Thread(target=self._read, daemon=True).start()

    def _read(self) -> None:
        assert self.proc.stdout is not None
        for line in self.proc.stdout:
            self.lines.put(line)

    def wait_for_line(self, fragment: str, timeout: float) -> None:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            try:
                line = self.lines.get(timeout=0.5)
            except queue.Empty:
                if self.proc.poll() is not None:
                    break
                continue
            self.output.append(line)
            if fragment in line:
                return
        raise AssertionError(f"no {fragment!r} from drydock up:\n{''.join(self.output)}")


def serves(workers: dict[str, Any], queue: str) -> bool:
    """Flower's worker list holds `drydock up`'s worker of ``queue``, serving it alone."""
    return any(
        name.startswith(f"drydock-{queue}@")
        and {q["name"] for q in info.get("active_queues", [])} == {queue}
        and f"{queue}.canary" in info.get("registered", [])
        for name, info in workers.items()
    )


def flower_workers_listed(url: str, auth: tuple[str, str], timeout: float) -> dict[str, Any]:
    """Poll Flower's ``/api/workers`` (with basic auth, without ``refresh``) until it lists a
    worker for every queue, serving that queue and its canary; the list."""
    deadline = time.monotonic() + timeout
    workers: dict[str, Any] = {}
    while time.monotonic() < deadline:
        response = httpx.get(f"{url}/api/workers", auth=auth, timeout=10)
        assert response.status_code == 200, response.text
        workers = response.json()
        if all(serves(workers, queue) for queue in WORK_QUEUES):
            return workers
        time.sleep(0.5)
    raise AssertionError(f"Flower did not list a worker per queue within {timeout}s: {workers}")


@pytest.fixture
def up(tmp_path: Path, redis_server: str, postgres_server: str) -> Iterator[UpProcess]:
    # redis_server/postgres_server only prove the binaries exist (and fail in CI if not).
    process = UpProcess(tmp_path, localservers.free_port(), localservers.free_port())
    yield process
    if process.proc.poll() is None:
        process.proc.send_signal(signal.SIGINT)
        try:
            process.proc.wait(60)
        except subprocess.TimeoutExpired:
            process.proc.kill()


def test_up_runs_a_whole_fleet_that_other_commands_find_and_ctrl_c_stops_it(
    up: UpProcess, tmp_path: Path
) -> None:
    up.wait_for_line("drydock up: ready", timeout=180)
    summary = "".join(up.output)
    for component in ("broker", "database", "worker builds", "worker evaluation", "beat", "flower"):
        assert component in summary
    fleet = json.loads((tmp_path / ".drydock" / "fleet.json").read_text())
    token = (tmp_path / ".drydock" / "api-token").read_text().strip()
    assert oct((tmp_path / ".drydock" / "api-token").stat().st_mode)[-3:] == "600"

    # Flower lists every worker with the queue it serves, unasked (no ?refresh=1), although it
    # started before the workers could answer its first inspection.
    flower_user, flower_password = (
        (tmp_path / ".drydock" / "flower-credentials").read_text().strip().split(":", 1)
    )
    assert flower_workers_listed(fleet["flower_url"], (flower_user, flower_password), 20)

    # A second fleet in the same directory is refused, and starts nothing.
    second = drydock(tmp_path, "up", "--api-port", "1", timeout=60)
    assert second.returncode == 1 and "already running" in second.stdout

    # An upstream service enqueues over HTTP...
    response = httpx.post(
        f"{fleet['api_url']}/v1/jobs/builds.canary",
        json={"message": "from a newcomer"},
        headers={"Authorization": f"Bearer {token}"},
        timeout=10,
    )
    assert response.status_code == 202, response.text
    job_id = response.json()["id"]

    # ...and an operator in a second terminal follows it and sees it, with no settings at all.
    follow = drydock(tmp_path, "job", job_id, "--follow", "--timeout", "60", timeout=90)
    assert follow.returncode == 0, follow.stdout + follow.stderr
    assert "succeeded" in follow.stdout
    listing = drydock(tmp_path, "jobs")
    assert listing.returncode == 0 and job_id in listing.stdout
    enqueued = drydock(tmp_path, "enqueue", "pushes.canary", "--json", '{"message": "cli"}')
    assert enqueued.returncode == 0, enqueued.stderr
    health = drydock(tmp_path, "health")
    assert health.returncode == 0, health.stdout + health.stderr

    # A job still running at Ctrl-C finishes before the fleet stops (warm shutdown).
    slow = httpx.post(
        f"{fleet['api_url']}/v1/jobs/evaluation.canary",
        json={"sleep_seconds": 3},
        headers={"Authorization": f"Bearer {token}"},
        timeout=10,
    ).json()["id"]
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline:
        status = httpx.get(
            f"{fleet['api_url']}/v1/jobs/{slow}",
            headers={"Authorization": f"Bearer {token}"},
            timeout=10,
        ).json()["status"]
        if status == "running":
            break
        time.sleep(0.1)
    up.proc.send_signal(signal.SIGINT)
    assert up.proc.wait(90) == 0
    up.wait_for_line("drydock up: stopped", timeout=5)

    assert not (tmp_path / ".drydock" / "fleet.json").exists()
    deadline = time.monotonic() + 10
    while processes_under(tmp_path) and time.monotonic() < deadline:
        time.sleep(0.2)
    assert processes_under(tmp_path) == []

    # The data stays under .drydock: start its PostgreSQL again and read the outcome.
    store = localservers.start_postgres(tmp_path / ".drydock" / "postgres")
    try:
        import psycopg

        with psycopg.connect(store.url.replace("+psycopg", "")) as conn:
            row = conn.execute(
                "SELECT status FROM jobs WHERE id = %s", (uuid.UUID(slow),)
            ).fetchone()
        assert row == ("succeeded",)
    finally:
        store.stop()

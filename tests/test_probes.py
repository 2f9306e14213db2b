"""Container probes and the preStop drain: what a platform relies on to restart a wedged worker
and to roll workers without cutting jobs short."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path

import pytest

from dispatch.enqueue import enqueue
from tests.conftest import WorkerProcess, wait_for_job
from workers.heartbeat_file import LocalHeartbeat, probe_problem, read_local_heartbeat

NOW = 1_800_000_000.0


def heartbeat(*, age: float = 0.0, broker_ok: bool = True) -> LocalHeartbeat:
    return LocalHeartbeat(
        role="worker",
        hostname="drydock-builds@pod-1",
        pid=7,
        queues=("builds",),
        held=1,
        written_at=NOW - age,
        broker_ok=broker_ok,
    )


# ---- the verdicts on their own ----


def test_a_fresh_heartbeat_is_live_and_ready() -> None:
    beat = heartbeat(age=2)
    assert probe_problem(beat, now=NOW, stale_after=30, need_broker=False) is None
    assert probe_problem(beat, now=NOW, stale_after=30, need_broker=True) is None


def test_a_stale_heartbeat_is_neither_live_nor_ready() -> None:
    beat = heartbeat(age=31)
    for need_broker in (False, True):
        problem = probe_problem(beat, now=NOW, stale_after=30, need_broker=need_broker)
        assert problem is not None
        assert "drydock-builds@pod-1 last beat 31s ago" in problem


def test_a_worker_cut_off_from_its_broker_is_live_but_not_ready() -> None:
    beat = heartbeat(age=1, broker_ok=False)
    assert probe_problem(beat, now=NOW, stale_after=30, need_broker=False) is None
    assert probe_problem(beat, now=NOW, stale_after=30, need_broker=True) == (
        "worker drydock-builds@pod-1 cannot reach the broker"
    )


def test_a_missing_or_foreign_heartbeat_file_is_reported_not_crashed_on(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="no heartbeat file at"):
        read_local_heartbeat(str(tmp_path / "absent.json"))
    garbage = tmp_path / "garbage.json"
    garbage.write_text('{"role": "worker"}')
    with pytest.raises(ValueError, match="is not a heartbeat record"):
        read_local_heartbeat(str(garbage))
    beat = heartbeat()
    good = tmp_path / "good.json"
    good.write_bytes(beat.as_json())
    assert read_local_heartbeat(str(good)) == beat


# ---- a real worker ----


def drydock(*args: str, env: dict[str, str]) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "drydock.cli", *args],
        env={**os.environ, **env},
        capture_output=True,
        text=True,
        timeout=60,
    )


@pytest.fixture
def probed_worker(
    worker_factory: Callable[..., WorkerProcess], tmp_path: Path
) -> tuple[WorkerProcess, dict[str, str]]:
    env = {"DRYDOCK_HEARTBEAT_FILE": str(tmp_path / "heartbeat.json")}
    worker = worker_factory("probed", env=env)
    deadline = time.monotonic() + 10
    while not (tmp_path / "heartbeat.json").exists():
        assert time.monotonic() < deadline, worker.log()[-2000:]
        time.sleep(0.1)
    return worker, env


def test_a_running_worker_is_live_and_ready_and_a_wedged_one_is_not(
    probed_worker: tuple[WorkerProcess, dict[str, str]],
) -> None:
    worker, env = probed_worker
    assert drydock("probe", "live", env=env).returncode == 0
    assert drydock("probe", "ready", env=env).returncode == 0

    # Freeze the worker's main process, as a wedged event loop would be: it stops beating.
    os.kill(worker.pid, signal.SIGSTOP)
    try:
        time.sleep(2.0)  # three heartbeats of 0.5 s, and a little more
        live = drydock("probe", "live", env=env)
        assert live.returncode == 1
        assert f"worker {worker.hostname} last beat" in live.stderr
        assert drydock("probe", "ready", env=env).returncode == 1
    finally:
        os.kill(worker.pid, signal.SIGCONT)
    deadline = time.monotonic() + 10
    while drydock("probe", "live", env=env).returncode != 0:
        assert time.monotonic() < deadline, "the worker did not beat again after SIGCONT"
        time.sleep(0.2)


def test_probes_without_a_heartbeat_file_setting_say_so() -> None:
    result = drydock("probe", "live", env={"DRYDOCK_HEARTBEAT_FILE": ""})
    assert result.returncode == 1
    assert "DRYDOCK_HEARTBEAT_FILE is not set" in result.stderr


def test_drain_stops_taking_jobs_and_waits_for_the_running_one(
    probed_worker: tuple[WorkerProcess, dict[str, str]],
    worker_factory: Callable[..., WorkerProcess],
) -> None:
    worker, env = probed_worker
    running = enqueue("remediation.canary", {"sleep_seconds": 3, "message": "finish me"})
    wait_for_job(running.id, statuses=("running",))

    drain = subprocess.Popen(
        [sys.executable, "-m", "drydock.cli", "drain", "--timeout", "60"],
        env={**os.environ, **env},
        stderr=subprocess.PIPE,
        text=True,
    )
    assert drain.stderr is not None
    first = drain.stderr.readline()
    assert first.strip() == f"drain: {worker.hostname} stopped taking jobs from remediation"
    # A job enqueued once the worker stopped consuming must wait for another worker.
    waiting = enqueue("remediation.canary", {"message": "not yours"})
    rest = drain.communicate(timeout=30)[1]
    assert drain.returncode == 0, first + rest
    assert f"drain: {worker.hostname} holds no job" in rest

    # The drain returned only once the running job had finished, and took nothing new.
    done = wait_for_job(running.id, timeout=0.5)
    assert done.status == "succeeded" and done.worker == worker.hostname
    row = wait_for_job(waiting.id, statuses=("queued",), timeout=0.5)
    assert row.worker is None
    assert read_local_heartbeat(env["DRYDOCK_HEARTBEAT_FILE"]).queues == ()

    # SIGTERM now finds nothing to wait for; the waiting job is not lost.
    worker.stop()
    successor = worker_factory("successor")
    row = wait_for_job(waiting.id, timeout=30)
    assert row.status == "succeeded" and row.worker == successor.hostname


def test_drain_gives_up_at_its_timeout_and_says_what_is_still_running(
    probed_worker: tuple[WorkerProcess, dict[str, str]],
) -> None:
    worker, env = probed_worker
    job = enqueue("remediation.canary", {"sleep_seconds": 5})
    wait_for_job(job.id, statuses=("running",))
    result = drydock("drain", "--timeout", "1", env=env)
    assert result.returncode == 1
    assert f"drain: 1 job(s) still held by {worker.hostname} after 1s" in result.stderr
    # Giving up does not cut the job short: the warm shutdown still lets it finish.
    assert wait_for_job(job.id, timeout=15).status == "succeeded"

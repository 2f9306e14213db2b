"""Fleet health: the verdict rules on their own, then a real fleet turning unhealthy."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
import uuid
from collections.abc import Callable, Iterator
from datetime import UTC, datetime
from pathlib import Path

import pytest

from dispatch.enqueue import enqueue
from drydock.health import FleetFacts, FleetHealth, assess, check_fleet
from kernel.settings import Settings
from kernel.topology import WORK_QUEUES
from models.job_reads import RunningJob
from testkit.docker_engine import DockerEngine
from tests.conftest import PRIVATE_QUEUE, WorkerProcess, wait_for_job
from workers.heartbeat import WorkerBeat

NOW = 1_800_000_000.0


def settings() -> Settings:
    return Settings(
        heartbeat_seconds=10, time_limits=dict.fromkeys(WORK_QUEUES, 300), visibility_timeout=7500
    )


def worker(name: str, queues: tuple[str, ...], age: float = 1.0) -> WorkerBeat:
    return WorkerBeat(
        hostname=name,
        pid=1,
        queues=queues,
        concurrency=2,
        active=0,
        started_at=NOW - 100,
        last_heartbeat=NOW - age,
    )


def facts(**overrides: object) -> FleetFacts:
    base = FleetFacts(
        now=NOW,
        queue_depths={**dict.fromkeys(WORK_QUEUES, 0), "dead_letter": 0},
        workers=[worker("all@h", WORK_QUEUES)],
        beat_tick=NOW - 2,
        running_jobs=[],
    )
    for name, value in overrides.items():
        setattr(base, name, value)
    return base


def running(worker_name: str, seconds: float, queue: str = "builds") -> RunningJob:
    return RunningJob(
        id=uuid.uuid4(),
        task_name=f"{queue}.canary",
        queue=queue,
        worker=worker_name,
        started_at=datetime.fromtimestamp(NOW - seconds, UTC),
        attempts=1,
    )


# ---- the rules, without a broker ---------------------------------------------------------------


def test_a_fully_served_fleet_is_healthy() -> None:
    health = assess(facts(), settings())
    assert health.healthy and health.reasons == []
    assert all(q.workers == ["all@h"] for q in health.queues)


def test_a_queue_without_a_live_worker_is_unhealthy() -> None:
    served = tuple(q for q in WORK_QUEUES if q != "evaluation")
    depths = {**dict.fromkeys(WORK_QUEUES, 0), "evaluation": 7, "dead_letter": 0}
    health = assess(facts(workers=[worker("w@h", served)], queue_depths=depths), settings())
    assert health.reasons == ["queue evaluation has no live worker (7 waiting)"]


def test_a_silent_worker_is_lost_and_its_jobs_are_stuck() -> None:
    job = running("old@h", seconds=5)
    health = assess(
        facts(
            workers=[worker("all@h", WORK_QUEUES), worker("old@h", ("builds",), age=31)],
            running_jobs=[job, running("all@h", seconds=5)],
        ),
        settings(),
    )
    assert "worker old@h lost: last heartbeat 31s ago" in health.reasons
    assert [s.id for s in health.stuck_jobs] == [str(job.id)]
    assert health.stuck_jobs[0].reason == "its worker old@h is lost"
    # Three missed heartbeats, not one: a busy loop may be a little late.
    assert assess(facts(workers=[worker("all@h", WORK_QUEUES, age=29)]), settings()).healthy


def test_a_job_past_its_time_limit_is_stuck_even_on_a_live_worker() -> None:
    late = running("all@h", seconds=301)
    health = assess(facts(running_jobs=[late, running("all@h", seconds=299)]), settings())
    assert [s.id for s in health.stuck_jobs] == [str(late.id)]
    assert "past its 300s time limit" in health.stuck_jobs[0].reason
    assert health.reasons == ["1 stuck job(s)"]


def test_a_job_whose_worker_never_beat_is_stuck() -> None:
    health = assess(facts(running_jobs=[running("ghost@h", seconds=1)]), settings())
    assert health.stuck_jobs[0].reason == "its worker ghost@h has no heartbeat"


def test_beat_must_have_ticked_recently() -> None:
    assert "Beat has not ticked" in assess(facts(beat_tick=None), settings()).reasons[0]
    assert assess(facts(beat_tick=NOW - 31), settings()).reasons == ["Beat last ticked 31s ago"]


def test_unreachable_sources_are_reasons_and_dead_letters_a_warning() -> None:
    down = assess(
        facts(
            queue_depths=None,
            workers=None,
            beat_tick=None,
            running_jobs=None,
            broker_error="Connection refused",
            database_error="timeout",
        ),
        settings(),
    )
    assert down.reasons == [
        "broker unreachable: Connection refused",
        "database unreachable: timeout",
    ]
    depths = {**dict.fromkeys(WORK_QUEUES, 0), "dead_letter": 3}
    parked = assess(facts(queue_depths=depths), settings())
    assert parked.healthy and parked.warnings == [
        "3 job(s) in the dead-letter queue (drydock dlq list)"
    ]


# ---- a real fleet ------------------------------------------------------------------------------


@pytest.fixture
def beat(fleet: WorkerProcess, tmp_path: Path) -> Iterator[subprocess.Popen[bytes]]:
    log = (tmp_path / "beat.log").open("wb")
    proc = subprocess.Popen(
        [sys.executable, "-m", "drydock.cli", "beat"],
        stdout=log,
        stderr=subprocess.STDOUT,
        start_new_session=True,
    )
    yield proc
    if proc.poll() is None:
        os.killpg(proc.pid, signal.SIGTERM)
        proc.wait(20)
    log.close()


def wait_for_health(check: Callable[[FleetHealth], bool], timeout: float = 20) -> FleetHealth:
    deadline = time.monotonic() + timeout
    health = check_fleet()
    while not check(health):
        if time.monotonic() > deadline:
            raise AssertionError(f"health never got there: {health.model_dump_json(indent=2)}")
        time.sleep(0.2)
        health = check_fleet()
    return health


def drydock_health() -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "drydock.cli", "health"],
        capture_output=True,
        text=True,
        env={**os.environ, "COLUMNS": "200"},
        timeout=60,
    )


@pytest.mark.fleet
def test_health_follows_workers_coming_stopping_and_dying(
    fleet: WorkerProcess,
    beat: subprocess.Popen[bytes],
    worker_factory: Callable[..., WorkerProcess],
    docker_engine: DockerEngine,
) -> None:
    # (The Docker engine: the fleet's worker serves builds, whose tasks need it, so health
    # would fail the fleet without it; tests/test_health_peers.py checks that rule.)
    # The shared worker serves every queue but the private one: unhealthy until someone does.
    health = wait_for_health(lambda h: h.beat.alive and bool(h.workers))
    assert health.reasons == [f"queue {PRIVATE_QUEUE} has no live worker (0 waiting)"]
    result = drydock_health()
    assert result.returncode == 1
    assert f"queue {PRIVATE_QUEUE} has no live worker" in result.stdout

    private = worker_factory("health-private")
    health = wait_for_health(lambda h: h.healthy)
    by_host = {w.hostname: w for w in health.workers}
    assert by_host[private.hostname].queues == [PRIVATE_QUEUE]
    assert by_host[fleet.hostname].alive
    result = drydock_health()
    assert result.returncode == 0, result.stdout + result.stderr
    assert "fleet healthy" in result.stdout and private.hostname in result.stdout

    # A warm shutdown removes the worker: its queue is unserved again, nobody is "lost".
    private.stop()
    health = wait_for_health(lambda h: not h.healthy)
    assert health.reasons == [f"queue {PRIVATE_QUEUE} has no live worker (0 waiting)"]

    # A worker killed mid-job: lost, and the job it held is stuck until it is redelivered.
    doomed = worker_factory("health-doomed")
    job = enqueue(f"{PRIVATE_QUEUE}.canary", {"sleep_seconds": 30})
    wait_for_job(job.id, ("running",))
    doomed.kill()
    health = wait_for_health(lambda h: bool(h.stuck_jobs))
    assert any(r.startswith(f"worker {doomed.hostname} lost") for r in health.reasons)
    assert [s.id for s in health.stuck_jobs] == [str(job.id)]
    assert health.stuck_jobs[0].reason == f"its worker {doomed.hostname} is lost"

    # Beat stopping is noticed too.
    os.killpg(beat.pid, signal.SIGKILL)
    beat.wait(10)
    health = wait_for_health(lambda h: not h.beat.alive)
    assert any(r.startswith("Beat last ticked") for r in health.reasons)

"""Beat under a lock in Redis: run two and one fires; kill it and the other takes over.

Real `drydock beat` processes against the tests' Redis. What Beat fires is read from the broker
itself: the canary entry of the queue no test worker serves (``PRIVATE_QUEUE``) leaves each of
its messages on that queue's Redis list, and each message names the process that sent it
(``origin``, ``gen<pid>@<host>``) and when (its ``expires`` is the send time plus the interval).
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
import uuid
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from itertools import pairwise
from pathlib import Path

import pytest
import redis
from pydantic import ValidationError
from sqlalchemy import select

from kernel.settings import Settings, get_settings
from models.db import session_scope
from models.jobs import Job
from tests.conftest import PRIVATE_QUEUE, ChildProcess
from workers.heartbeat import (
    BEAT_KEY,
    BEAT_KEY_PREFIX,
    HeartbeatScheduler,
    last_beat_tick,
)
from workers.heartbeat_file import read_local_heartbeat

pytestmark = pytest.mark.fleet

CANARY_TASK = f"{PRIVATE_QUEUE}.canary"
CANARY_ENTRY = f"canary-{PRIVATE_QUEUE}"
LOCK_KEY = BEAT_KEY_PREFIX + ":lock"
LOCK_TIMEOUT_SECONDS = 2


def beat_environment(canary_interval: int) -> dict[str, str]:
    """The canaries every ``canary_interval`` seconds (0: none) and every other entry off."""
    quiet = {
        f"DRYDOCK_{name.upper()}": "0"
        for name in Settings.model_fields
        if name.endswith("_interval_seconds")
    }
    return {
        **quiet,
        "DRYDOCK_CANARY_INTERVAL_SECONDS": str(canary_interval),
        # Tests beat twice a second, so a lock of 2 s outlives a tick's sleep 4 times over.
        "DRYDOCK_BEAT_LOCK_TIMEOUT_SECONDS": str(LOCK_TIMEOUT_SECONDS),
    }


class BeatProcess(ChildProcess):
    """A `drydock beat`; kill() leaves its lock in Redis until it expires."""


@dataclass(frozen=True)
class Fire:
    """One message Beat sent: which entry's task, from which Beat process, when."""

    task: str
    pid: int
    sent_at: datetime


def fires(client: redis.Redis[bytes], interval: float) -> list[Fire]:
    """The canaries Beat sent to the private queue, oldest first."""
    found = []
    for raw in client.lrange(PRIVATE_QUEUE, 0, -1):
        headers = json.loads(raw)["headers"]
        origin = headers["origin"]  # "gen<pid>@<hostname>", the sending process
        found.append(
            Fire(
                task=headers["task"],
                pid=int(origin.split("@")[0].removeprefix("gen")),
                sent_at=datetime.fromisoformat(headers["expires"]) - timedelta(seconds=interval),
            )
        )
    return sorted(found, key=lambda fire: fire.sent_at)


def poll(
    check: Callable[[], bool], what: str, beats: list[BeatProcess], timeout: float = 30
) -> None:
    deadline = time.monotonic() + timeout
    while not check():
        if time.monotonic() > deadline:
            logs = "\n".join(f"--- beat {b.pid}:\n{b.log()[-3000:]}" for b in beats)
            raise AssertionError(f"{what} within {timeout}s\n{logs}")
        time.sleep(0.1)


def forget_beat_state(client: redis.Redis[bytes]) -> None:
    """Beat's schedule, lock and last tick, as earlier tests (maybe killed Beats) left them."""
    client.delete(BEAT_KEY, *client.scan_iter(match=BEAT_KEY_PREFIX + "*"))


@pytest.fixture
def broker(clean_state: None) -> Iterator[redis.Redis[bytes]]:
    client = redis.Redis.from_url(get_settings().broker_url)
    forget_beat_state(client)
    yield client
    forget_beat_state(client)
    client.close()


@pytest.fixture
def start_beat(broker: redis.Redis[bytes], tmp_path: Path) -> Iterator[Callable[..., BeatProcess]]:
    started: list[BeatProcess] = []

    def start(canary_interval: int, env: dict[str, str] | None = None) -> BeatProcess:
        log_path = tmp_path / f"beat-{len(started)}.log"
        with log_path.open("wb") as log:
            proc = subprocess.Popen(
                [sys.executable, "-m", "drydock.cli", "beat", "--loglevel=INFO"],
                stdout=log,
                stderr=subprocess.STDOUT,
                start_new_session=True,
                env={**os.environ, **beat_environment(canary_interval), **(env or {})},
            )
        beat = BeatProcess(proc, log_path)
        started.append(beat)
        # Logged once the schedule is in Redis, before the Beat asks for the lock.
        poll(lambda: "beat: Starting..." in beat.log(), "Beat did not start", [beat], 60)
        return beat

    yield start
    for beat in started:
        beat.stop()


def assert_fired_at_most_once_per_interval(canaries: list[Fire], interval: float) -> None:
    # One Beat sends an entry when its interval has passed since the last send, wherever that
    # send came from; two Beats firing independently would send pairs moments apart. The send
    # time is stamped a moment after the entry is reserved, and on a loaded 2-core machine that
    # moment varies by a tenth of a second or more (CI saw a gap under 0.9 s): allow a quarter.
    gaps = [(b.sent_at - a.sent_at).total_seconds() for a, b in pairwise(canaries)]
    assert all(gap > interval * 0.75 for gap in gaps), gaps


def test_two_beats_fire_once_and_the_standby_takes_over_when_the_holder_dies(
    broker: redis.Redis[bytes], start_beat: Callable[..., BeatProcess]
) -> None:
    first = start_beat(canary_interval=1)
    poll(lambda: bool(fires(broker, 1)), "the first Beat did not fire", [first])
    second = start_beat(canary_interval=1)
    started_both = len(fires(broker, 1))
    # Both run for several intervals: the first fires on, the second waits on the lock.
    poll(
        lambda: len(fires(broker, 1)) >= started_both + 4,
        "the canary stopped firing with two Beats",
        [first, second],
    )
    sent = fires(broker, 1)
    assert {fire.task for fire in sent} == {CANARY_TASK}
    assert {fire.pid for fire in sent} == {first.pid}
    assert_fired_at_most_once_per_interval(sent, 1)
    assert broker.exists(LOCK_KEY) and 0 < broker.pttl(LOCK_KEY) <= LOCK_TIMEOUT_SECONDS * 1000
    assert "beat: Acquired lock" in first.log()
    assert "beat: Acquired lock" not in second.log()

    # The holder dies without releasing the lock: the other Beat takes it once it expires.
    first.kill()
    poll(
        lambda: any(fire.pid == second.pid for fire in fires(broker, 1)),
        "the second Beat did not take over",
        [first, second],
    )
    poll(
        lambda: sum(fire.pid == second.pid for fire in fires(broker, 1)) >= 3,
        "the second Beat did not go on firing",
        [second],
    )
    sent = fires(broker, 1)
    assert {fire.pid for fire in sent} == {first.pid, second.pid}
    # Every fire of the second comes after the last of the first: never both at once.
    assert max(f.sent_at for f in sent if f.pid == first.pid) < min(
        f.sent_at for f in sent if f.pid == second.pid
    )
    assert_fired_at_most_once_per_interval(sent, 1)
    assert "beat: Acquired lock" in second.log()


def test_a_beat_waiting_on_the_lock_neither_fires_nor_records_ticks(
    broker: redis.Redis[bytes], start_beat: Callable[..., BeatProcess], tmp_path: Path
) -> None:
    # Another Beat (elsewhere, say) holds the lock.
    broker.set(LOCK_KEY, "held-by-another-beat", px=60_000)
    heartbeat_file = {"DRYDOCK_HEARTBEAT_FILE": str(tmp_path / "beat-heartbeat.json")}
    probe_env = {**os.environ, **heartbeat_file}
    waiting = start_beat(canary_interval=1, env=heartbeat_file)
    # Many of its would-be ticks (0.5 s apart) pass: health must not see it as firing.
    time.sleep(3)
    assert waiting.proc.poll() is None
    assert last_beat_tick(broker) is None
    assert fires(broker, 1) == []
    # Nor does its container probe: a Beat that never ticks is not live (a startup probe
    # must allow for the wait, see deploy/).
    probe = [sys.executable, "-m", "drydock.cli", "probe", "live"]
    assert subprocess.run(probe, env=probe_env, capture_output=True).returncode == 1

    # The lock is released: it takes it, fires and records its ticks.
    broker.delete(LOCK_KEY)
    poll(lambda: bool(fires(broker, 1)), "the waiting Beat did not fire", [waiting])
    poll(lambda: last_beat_tick(broker) is not None, "no tick was recorded", [waiting])
    assert {fire.pid for fire in fires(broker, 1)} == {waiting.pid}
    assert subprocess.run(probe, env=probe_env, capture_output=True).returncode == 0
    assert read_local_heartbeat(probe_env["DRYDOCK_HEARTBEAT_FILE"]).role == "beat"


def test_a_beat_that_lost_its_lock_exits_instead_of_firing_alongside_the_new_holder(
    broker: redis.Redis[bytes], start_beat: Callable[..., BeatProcess]
) -> None:
    beat = start_beat(canary_interval=1)
    poll(lambda: bool(fires(broker, 1)), "the Beat did not fire", [beat])
    # As if it had stalled past the lock's timeout and another Beat had taken the lock.
    broker.set(LOCK_KEY, "taken-by-another-beat", px=60_000)
    poll(lambda: beat.proc.poll() is not None, "the Beat did not exit", [beat])
    assert beat.proc.returncode != 0
    assert "LockNotOwnedError" in beat.log()
    # It left the new holder's lock alone.
    assert broker.get(LOCK_KEY) == b"taken-by-another-beat"


def test_the_schedule_survives_a_restart_and_entries_turned_off_are_removed(
    broker: redis.Redis[bytes], start_beat: Callable[..., BeatProcess]
) -> None:
    interval = 4
    entry_key = BEAT_KEY_PREFIX + CANARY_ENTRY
    beat = start_beat(canary_interval=interval)
    # A new entry first fires one interval after Beat starts (as with Celery's own scheduler).
    poll(lambda: len(fires(broker, interval)) == 1, "the entry did not fire", [beat])
    beat.stop()
    # A clean stop releases the lock: the next Beat need not wait for it to expire.
    assert not broker.exists(LOCK_KEY)
    assert broker.exists(entry_key)

    # No Beat runs while the entry comes due; the next one fires it on its first tick, because
    # Redis kept when it last ran (a schedule started afresh would wait a whole interval).
    overdue_at = fires(broker, interval)[0].sent_at + timedelta(seconds=interval + 0.5)
    time.sleep(max(0.0, (overdue_at - datetime.now(UTC)).total_seconds()))
    broker.delete(BEAT_KEY)
    restarted = start_beat(canary_interval=interval)
    poll(lambda: last_beat_tick(broker) is not None, "the restarted Beat did not tick", [restarted])
    assert [fire.pid for fire in fires(broker, interval)] == [beat.pid, restarted.pid]
    restarted.stop()

    # Restarted with the canaries off, their entries leave Redis instead of firing on.
    broker.delete(BEAT_KEY)
    quiet = start_beat(canary_interval=0)
    poll(lambda: last_beat_tick(broker) is not None, "the restarted Beat did not tick", [quiet])
    assert not broker.exists(entry_key)
    schedule = broker.zrange(BEAT_KEY_PREFIX + ":schedule", 0, -1)
    assert not [key for key in schedule if b"canary" in key], schedule
    assert not [m for m in broker.smembers(BEAT_KEY_PREFIX + ":statics") if b"canary" in m]
    assert len(fires(broker, interval)) == 2


def test_the_lock_must_outlast_a_tick() -> None:
    with pytest.raises(ValidationError, match="beat_lock_timeout_seconds"):
        Settings(heartbeat_seconds=10, beat_lock_timeout_seconds=15)
    assert Settings(heartbeat_seconds=10, beat_lock_timeout_seconds=20).beat_lock_timeout_seconds


def test_a_fractional_lock_timeout_is_renewed_whole_not_truncated() -> None:
    from workers.app import app

    # RedBeat renews the lock for int(timeout) seconds: 0.6 s would renew it to nothing.
    scheduler = HeartbeatScheduler(app, lazy=True, lock_timeout=0.6)
    assert scheduler.lock_timeout == 1


def test_every_fire_is_an_enqueue_recorded_before_any_worker_takes_it(
    broker: redis.Redis[bytes], start_beat: Callable[..., BeatProcess]
) -> None:
    # Beat sends through dispatch.enqueue: each fire is a job row (validated, admitted) from the
    # moment it is due, named for its entry, though no worker serves the queue.
    beat = start_beat(canary_interval=1)
    poll(lambda: len(fires(broker, 1)) >= 2, "Beat did not fire twice", [beat])
    beat.stop()
    sent = [
        uuid.UUID(json.loads(raw)["headers"]["id"]) for raw in broker.lrange(PRIVATE_QUEUE, 0, -1)
    ]
    with session_scope() as session:
        rows = session.scalars(select(Job).where(Job.id.in_(sent))).all()
        recorded = {
            row.id: (row.task_name, row.enqueued_by, row.status, bool(row.policy_context))
            for row in rows
        }
    assert recorded == {
        job_id: (CANARY_TASK, f"beat:{CANARY_ENTRY}", "queued", True) for job_id in sent
    }

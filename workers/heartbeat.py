"""Heartbeats of workers and Beat, kept in Redis for `/health/fleet` and `drydock health`.

Each worker writes one small JSON record (hostname, pid, queues, concurrency, active jobs, last
beat) from its consumer's own event loop, so a worker whose loop is wedged stops beating even
though its process lives. A worker that shuts down cleanly removes its record; one that dies
leaves it to age, and health reports it lost until ``worker_forget_seconds`` expire it.

Beat records the time of each scheduler tick; Drydock caps the tick interval at the heartbeat
interval so a quiet schedule still beats. Only the Beat holding the schedule's lock ticks (see
``HeartbeatScheduler``), so the tick says that schedules fire, not merely that a Beat runs.

With ``heartbeat_file`` set, each worker and Beat also write their heartbeat to a local file on
every beat, whether or not Redis took it: container probes (``drydock probe``) and the preStop
hook (``drydock drain``) read it without a network round trip, so a broker outage makes workers
unready rather than killing them all.
"""

from __future__ import annotations

import math
import os
import socket
import time
from dataclasses import dataclass
from typing import Any

import orjson
import redis
from celery import bootsteps
from redbeat import RedBeatScheduler

from kernel.logs import get_logger
from kernel.settings import Settings, get_settings
from workers.heartbeat_file import LocalHeartbeat, write_local_heartbeat

WORKER_KEY_PREFIX = "drydock:heartbeat:worker:"
BEAT_KEY = "drydock:heartbeat:beat"
# Beat's schedule, the lock and each entry's last run (celery-redbeat's keys). RedBeat appends
# ":schedule", ":statics" and ":lock" to the prefix, so they never clash with an entry's name.
BEAT_KEY_PREFIX = "drydock:beat:"


@dataclass(frozen=True)
class WorkerBeat:
    hostname: str
    pid: int
    queues: tuple[str, ...]
    concurrency: int | None
    active: int
    started_at: float
    last_heartbeat: float
    # Delivery tags of the messages the worker holds unacknowledged (running, prefetched or
    # waiting for their ETA), for the orphan sweep (workers.orphans). None: a worker from
    # before the field existed, whose holdings are unknown.
    held: tuple[str, ...] | None = None

    def age(self, now: float) -> float:
        return max(0.0, now - self.last_heartbeat)

    def as_json(self) -> bytes:
        return orjson.dumps(
            {
                "hostname": self.hostname,
                "pid": self.pid,
                "queues": list(self.queues),
                "concurrency": self.concurrency,
                "active": self.active,
                "started_at": self.started_at,
                "last_heartbeat": self.last_heartbeat,
                "held": None if self.held is None else list(self.held),
            }
        )

    @classmethod
    def from_json(cls, raw: bytes) -> WorkerBeat:
        data = orjson.loads(raw)
        return cls(
            hostname=str(data["hostname"]),
            pid=int(data["pid"]),
            queues=tuple(data["queues"]),
            concurrency=data.get("concurrency"),
            active=int(data.get("active", 0)),
            started_at=float(data["started_at"]),
            last_heartbeat=float(data["last_heartbeat"]),
            held=None if data.get("held") is None else tuple(str(t) for t in data["held"]),
        )


def redis_client(settings: Settings | None = None) -> redis.Redis[bytes]:
    settings = settings or get_settings()
    return redis.Redis.from_url(
        settings.broker_url, socket_timeout=5, socket_connect_timeout=5, health_check_interval=30
    )


def record_worker(client: redis.Redis[bytes], beat: WorkerBeat, *, keep_seconds: int) -> None:
    client.set(WORKER_KEY_PREFIX + beat.hostname, beat.as_json(), ex=keep_seconds)


def forget_worker(client: redis.Redis[bytes], hostname: str) -> None:
    client.delete(WORKER_KEY_PREFIX + hostname)


def read_workers(client: redis.Redis[bytes]) -> list[WorkerBeat]:
    keys = sorted(client.scan_iter(match=WORKER_KEY_PREFIX + "*", count=500))
    if not keys:
        return []
    beats = []
    for raw in client.mget(keys):
        if raw is None:  # expired between SCAN and MGET
            continue
        try:
            beats.append(WorkerBeat.from_json(raw))
        except (ValueError, KeyError, TypeError):
            continue  # not ours to interpret; health must not fail on one bad record
    return beats


def record_beat_tick(client: redis.Redis[bytes], *, at: float, keep_seconds: int) -> None:
    client.set(BEAT_KEY, repr(at), ex=keep_seconds)


def last_beat_tick(client: redis.Redis[bytes]) -> float | None:
    raw = client.get(BEAT_KEY)
    return None if raw is None else float(raw)


class RepeatingRedisStep(bootsteps.StartStopStep):
    """A consumer bootstep that calls ``tick`` every ``interval`` seconds on the consumer's own
    timer (its event loop: a wedged loop stops it too), with a Redis client of its own."""

    requires = ("celery.worker.consumer.tasks:Tasks",)
    timer_priority = 10
    # Tick once as soon as the consumer starts, before the first interval has passed.
    tick_at_start = False

    def __init__(self, parent: Any, **kwargs: Any) -> None:
        super().__init__(parent, **kwargs)
        self._timer_entry: Any = None
        self._client: redis.Redis[bytes] | None = None
        self._pid = os.getpid()

    def interval(self, settings: Settings) -> float:
        """Seconds between ticks; 0 or less: the step does nothing."""
        raise NotImplementedError

    def tick(self, parent: Any, client: redis.Redis[bytes]) -> None:
        raise NotImplementedError

    def before_close(self, parent: Any, client: redis.Redis[bytes]) -> None:
        """Called once when the worker stops, with the client still open."""

    def start(self, parent: Any) -> None:
        settings = get_settings()
        interval = self.interval(settings)
        if interval <= 0:
            return
        self._pid = os.getpid()
        self._client = redis_client(settings)
        if self.tick_at_start:
            self._tick(parent)
        self._timer_entry = parent.timer.call_repeatedly(
            interval, self._tick, (parent,), priority=self.timer_priority
        )

    def stop(self, parent: Any) -> None:
        if os.getpid() != self._pid:
            # A forked pool process inherited this object: the worker is not stopping.
            return
        if self._timer_entry is not None:
            self._timer_entry.cancel()
            self._timer_entry = None
        if self._client is not None:
            self.before_close(parent, self._client)
            self._client.close()
            self._client = None

    shutdown = stop

    def _tick(self, parent: Any) -> None:
        if self._client is not None and os.getpid() == self._pid:
            self.tick(parent, self._client)


class WorkerHeartbeat(RepeatingRedisStep):
    """Consumer bootstep: beat every ``heartbeat_seconds`` on the consumer's timer."""

    tick_at_start = True

    def __init__(self, parent: Any, **kwargs: Any) -> None:
        super().__init__(parent, **kwargs)
        self._started_at = time.time()

    def interval(self, settings: Settings) -> float:
        return settings.heartbeat_seconds

    def before_close(self, parent: Any, client: redis.Redis[bytes]) -> None:
        try:
            forget_worker(client, parent.hostname)
        except redis.RedisError as exc:
            get_logger().warning("worker.heartbeat_failed", error=str(exc))

    def tick(self, parent: Any, client: redis.Redis[bytes]) -> None:
        from celery.worker import state

        settings = get_settings()
        queues = tuple(sorted(q.name for q in parent.task_consumer.queues))
        pool = getattr(parent, "pool", None)
        beat = WorkerBeat(
            hostname=parent.hostname,
            pid=os.getpid(),
            queues=queues,
            concurrency=getattr(pool, "num_processes", None) or getattr(pool, "limit", None),
            active=len(state.active_requests),
            started_at=self._started_at,
            last_heartbeat=time.time(),
            held=held_delivery_tags(parent),
        )
        broker_ok = True
        try:
            record_worker(client, beat, keep_seconds=settings.worker_forget_seconds)
        except redis.RedisError as exc:
            # The broker is down: the worker cannot take jobs either, and health will say so.
            get_logger().warning("worker.heartbeat_failed", error=str(exc))
            broker_ok = False
        if settings.heartbeat_file:
            write_local_heartbeat(
                settings.heartbeat_file,
                LocalHeartbeat(
                    role="worker",
                    hostname=beat.hostname,
                    pid=beat.pid,
                    queues=beat.queues,
                    held=len(state.reserved_requests),
                    written_at=beat.last_heartbeat,
                    broker_ok=broker_ok,
                ),
            )


def held_delivery_tags(consumer: Any) -> tuple[str, ...]:
    """The delivery tags this worker's consumer holds unacknowledged: kombu's virtual QoS
    keeps them (``_delivered``, less the acknowledged ones not yet flushed, ``_dirty``)."""
    channel = getattr(getattr(consumer, "task_consumer", None), "channel", None)
    qos = getattr(channel, "qos", None)
    delivered = getattr(qos, "_delivered", None)
    if not delivered:
        return ()
    settled: set[Any] = getattr(qos, "_dirty", set())
    return tuple(str(tag) for tag in list(delivered) if tag not in settled)


class HeartbeatScheduler(RedBeatScheduler):  # type: ignore[misc]  # redbeat is untyped
    """Celery Beat's scheduler: one Beat fires at a time, and each tick is recorded for health.

    RedBeat keeps the schedule (entries and when each last ran) in Redis, and a lock: a Beat
    takes it before its first tick and renews it on every tick, so a second Beat blocks on it
    (ticking, firing and recording nothing) until the first stops renewing it, then takes over.
    A Beat whose lock lapsed (it stalled longer than the lock's timeout; another may hold it
    now) raises from ``tick`` and exits instead of firing alongside. At startup every Beat
    writes the configured entries into Redis, keeping when each last ran, and deletes those an
    earlier configuration had that this one no longer has.
    """

    lock_timeout: float

    def __init__(self, app: Any, **kwargs: Any) -> None:
        super().__init__(app, **kwargs)
        # RedBeat renews the lock for int(lock_timeout) seconds: whole seconds, rounded up, so
        # a renewal never makes the lock shorter than it was taken for (0.5 would make it 0).
        self.lock_timeout = math.ceil(self.lock_timeout)
        self._heartbeat_client: redis.Redis[bytes] | None = None

    def tick(self, *args: Any, **kwargs: Any) -> float:
        # Renews the lock first (raising if it is no longer ours), then fires what is due; only
        # then is the tick recorded, so a Beat without the lock never looks like it fired.
        delay: float = super().tick(*args, **kwargs)
        settings = get_settings()
        now = time.time()
        broker_ok = True
        try:
            if self._heartbeat_client is None:
                self._heartbeat_client = redis_client(settings)
            record_beat_tick(
                self._heartbeat_client, at=now, keep_seconds=settings.worker_forget_seconds
            )
        except redis.RedisError as exc:
            get_logger().warning("beat.heartbeat_failed", error=str(exc))
            broker_ok = False
        if settings.heartbeat_file:
            write_local_heartbeat(
                settings.heartbeat_file,
                LocalHeartbeat(
                    role="beat",
                    hostname=socket.gethostname(),
                    pid=os.getpid(),
                    queues=(),
                    held=0,
                    written_at=now,
                    broker_ok=broker_ok,
                ),
            )
        return min(delay, settings.heartbeat_seconds)

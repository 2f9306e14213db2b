"""The orphan sweep: jobs held by a worker that died go back to their queue within a minute.

Redis has no consumer sessions: a message a worker took stays in kombu's ``unacked`` hash, and
kombu gives it back only once the visibility timeout passes (7,500 s by default, since it must
outlast the longest job). But every worker writes a heartbeat that lists the delivery tags it
holds (``WorkerBeat.held``), so a held message that no live worker lists belongs to a lost one.

Every worker runs the sweep on its consumer's timer, every ``orphan_sweep_seconds``; a lock in
Redis lets one sweep at a time across the fleet. A message is given back when

- it was delivered more than ``orphan_after_seconds`` (plus a heartbeat, for clock skew) ago,
  so that any live worker holding it has listed it in a heartbeat since; and
- no worker whose heartbeat is younger than ``orphan_after_seconds`` lists it.

It goes back to the head of its queue (``give_back``, in a transaction watching the hash, so an
ack racing the sweep wins). Its job then runs on another worker and ends with one
outcome (the base task's status guard). The sweep stands down when a live worker's heartbeat
does not list its holdings (a worker from before this field, mid-upgrade) or this worker's own
heartbeat is not fresh, and touches only Drydock's work queues. The visibility timeout stays
the backstop.

A worker whose event loop stalls longer than ``orphan_after_seconds`` is taken for lost: its
jobs may then run a second time while it lives, as after the visibility timeout today.
"""

from __future__ import annotations

import json
import time
from typing import Any

import redis

from kernel.logs import get_logger
from kernel.settings import Settings, get_settings
from kernel.topology import WORK_QUEUES
from workers.heartbeat import RepeatingRedisStep, held_delivery_tags, read_workers

SWEEP_LOCK_KEY = "drydock:orphan-sweep:lock"
# Candidates looked at per sweep: a fleet-wide loss is drained over a few sweeps.
SWEEP_BATCH = 500


def sweep_orphans(
    client: redis.Redis[bytes],
    qos: Any,
    *,
    hostname: str,
    own_held: tuple[str, ...],
    settings: Settings,
    now: float | None = None,
) -> list[str]:
    """Give back the messages held by lost workers; returns their delivery tags."""
    now = time.time() if now is None else now
    beats = read_workers(client)
    fresh = [beat for beat in beats if beat.age(now) < settings.orphan_after]
    if hostname not in {beat.hostname for beat in fresh}:
        return []  # this worker's own view is stale (its heartbeat is not landing)
    if any(beat.held is None for beat in fresh):
        return []  # a live worker does not say what it holds: nothing can be called orphaned
    held = set(own_held)
    for beat in fresh:
        held.update(beat.held or ())
    oldest_allowed = now - settings.orphan_after - settings.heartbeat_seconds
    candidates = client.zrangebyscore(
        qos.unacked_index_key, "-inf", oldest_allowed, start=0, num=SWEEP_BATCH
    )
    restored: list[str] = []
    log = get_logger(worker=hostname)
    for raw_tag in candidates:
        tag = raw_tag.decode() if isinstance(raw_tag, bytes) else str(raw_tag)
        if tag in held:
            continue
        entry = client.hget(qos.unacked_key, tag)
        if entry is None:
            continue  # acknowledged meanwhile
        try:
            message, _exchange, routing_key = json.loads(entry)
            job_id = (message.get("headers") or {}).get("id")
        except (ValueError, TypeError, AttributeError):
            continue  # not a message of ours to judge; the visibility timeout handles it
        if routing_key not in WORK_QUEUES:
            continue
        if not give_back(client, qos, tag):
            continue
        restored.append(tag)
        log.warning(
            "job.orphan_requeued",
            action="requeue",
            job_id=job_id,
            queue=routing_key,
            delivery_tag=tag,
        )
    return restored


def give_back(client: redis.Redis[bytes], qos: Any, tag: str) -> bool:
    """Move the held message ``tag`` from kombu's unacknowledged set to the head of its queue,
    in one transaction watching the set (an ack racing this wins). False when it was gone.

    Not kombu's ``restore_by_tag``: that routes through the channel's exchange table, which a
    worker that does not consume the message's queue never declared, and a message routed
    nowhere is dropped. In Drydock's topology a work queue's exchange and routing key are its
    name (kernel.topology), so the queue is the routing key; kombu consumes from the right."""
    moved = False

    def transaction(pipe: Any) -> None:
        nonlocal moved
        entry = pipe.hget(qos.unacked_key, tag)
        pipe.multi()
        pipe.zrem(qos.unacked_index_key, tag)
        pipe.hdel(qos.unacked_key, tag)
        if entry is None:
            return
        message, _exchange, routing_key = json.loads(entry)
        if isinstance(message.get("headers"), dict):
            message["headers"]["redelivered"] = True
        pipe.rpush(routing_key, json.dumps(message))
        moved = True

    watched: Any = client  # redis-py's transaction() is untyped in its stubs
    watched.transaction(transaction, qos.unacked_key)
    return moved


class OrphanSweep(RepeatingRedisStep):
    """Consumer bootstep: ``sweep_orphans`` every ``orphan_sweep_seconds`` under a fleet lock."""

    timer_priority = 20

    def interval(self, settings: Settings) -> float:
        return settings.orphan_sweep_seconds

    def tick(self, parent: Any, client: redis.Redis[bytes]) -> None:
        settings = get_settings()
        qos = getattr(getattr(parent.task_consumer, "channel", None), "qos", None)
        if qos is None:
            return
        try:
            # One sweeper per interval across the fleet; the lock lapses by itself.
            lock_ms = max(100, int(settings.orphan_sweep_seconds * 1000 * 0.8))
            if not client.set(SWEEP_LOCK_KEY, parent.hostname, nx=True, px=lock_ms):
                return
            sweep_orphans(
                client,
                qos,
                hostname=parent.hostname,
                own_held=held_delivery_tags(parent),
                settings=settings,
            )
        except Exception as exc:  # the sweep must never take the consumer down
            get_logger(worker=parent.hostname).warning(
                "worker.orphan_sweep_failed", error=f"{type(exc).__name__}: {exc}"[:300]
            )

"""Bare Celery for the benchmark's baseline: Drydock's broker, queues and worker settings, and a
no-op task with no validation, no outcome rows and no events.

``attestation.noop`` runs under the same time limits Drydock gives the queue's tasks, so the
comparison measures Drydock's bookkeeping alone; ``attestation.noop_unlimited`` has none, to
show what Celery's own time-limit timers cost."""

from __future__ import annotations

import time
from typing import Any

import redis
from celery import Celery

from kernel.settings import get_settings
from workers.app import celery_config

settings = get_settings()
app = Celery("bare")
app.conf.update({**celery_config(settings), "include": ["bench.bare_app"], "beat_schedule": {}})

_starts: Any = None
soft_limit, hard_limit = settings.time_limits_for("attestation")


def _note_start(task_id: str) -> None:
    global _starts
    if _starts is None:
        _starts = redis.Redis.from_url(settings.broker_url)
    _starts.hset("bench:starts", task_id, time.time())


@app.task(
    name="attestation.noop",
    acks_late=True,
    ignore_result=True,
    time_limit=hard_limit,
    soft_time_limit=soft_limit,
)
def noop(probe: bool = False) -> None:
    # Latency probes note when they started; throughput jobs do nothing at all.
    if probe:
        _note_start(noop.request.id or "")


@app.task(name="attestation.noop_unlimited", acks_late=True, ignore_result=True)
def noop_unlimited(probe: bool = False) -> None:
    if probe:
        _note_start(noop_unlimited.request.id or "")

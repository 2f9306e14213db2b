"""Bare Celery for the benchmark's baseline: Drydock's broker, queues and worker settings, and a
no-op task with no validation, no outcome rows and no events."""

from __future__ import annotations

import time
from typing import Any

import redis
from celery import Celery

from workers.app import celery_config
from workers.settings import get_settings

settings = get_settings()
app = Celery("bare")
app.conf.update({**celery_config(settings), "include": ["bench.bare_app"], "beat_schedule": {}})

_starts: Any = None


@app.task(name="attestation.noop", acks_late=True, ignore_result=True)
def noop(probe: bool = False) -> None:
    # Latency probes note when they started; throughput jobs do nothing at all.
    if probe:
        global _starts
        if _starts is None:
            _starts = redis.Redis.from_url(settings.broker_url)
        _starts.hset("bench:starts", noop.request.id, time.time())

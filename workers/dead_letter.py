"""The ``dead_letter`` queue: a parking lot in Redis, one message per dead-lettered job.

No worker consumes it. The ``dead_letters`` table is the record operators list, replay and
purge; the queue's depth is what monitoring watches. Messages carry only redacted data.
"""

from __future__ import annotations

import json
import uuid
from collections.abc import Iterable
from typing import Any

from celery import Celery
from kombu import Exchange, Queue

from kernel.topology import DEAD_LETTER_JOB_HEADER, DEAD_LETTER_QUEUE

_exchange = Exchange(DEAD_LETTER_QUEUE, type="direct")
_queue = Queue(DEAD_LETTER_QUEUE, _exchange, routing_key=DEAD_LETTER_QUEUE)


def parked_body(
    job_id: uuid.UUID,
    *,
    task_name: str,
    queue: str,
    error_class: str,
    message: str,
    reason: str,
    attempts: int,
    payload: dict[str, Any],
) -> dict[str, Any]:
    """The parked message of a dead job (redacted data only)."""
    return {
        "job_id": str(job_id),
        "task_name": task_name,
        "queue": queue,
        "error_class": error_class,
        "message": message,
        "reason": reason,
        "attempts": attempts,
        "payload": payload,
    }


def park(app: Celery, job_id: uuid.UUID, body: dict[str, Any]) -> None:
    with app.producer_or_acquire() as producer:
        producer.publish(
            body,
            exchange=_exchange,
            routing_key=DEAD_LETTER_QUEUE,
            serializer="json",
            headers={DEAD_LETTER_JOB_HEADER: str(job_id)},
            declare=[_queue],
            retry=True,
            retry_policy={"max_retries": 5, "interval_start": 0.2, "interval_step": 0.5},
        )


def remove_parked(app: Celery, job_ids: Iterable[uuid.UUID]) -> int:
    """Remove the parked messages of these jobs; returns how many were removed.

    Scans the Redis list (LRANGE) and removes exact entries (LREM): the DLQ is meant to be
    small and drained by operators, so a linear scan is the simple, safe choice.
    """
    wanted = {str(j) for j in job_ids}
    if not wanted:
        return 0
    removed = 0
    with app.connection_for_write() as conn:
        client = _redis_client(conn)
        for raw in client.lrange(DEAD_LETTER_QUEUE, 0, -1):
            try:
                headers = json.loads(raw).get("headers") or {}
            except (ValueError, AttributeError):
                continue
            if headers.get(DEAD_LETTER_JOB_HEADER) in wanted:
                removed += int(client.lrem(DEAD_LETTER_QUEUE, 1, raw))
    return removed


def _redis_client(conn: Any) -> Any:
    # The Redis transport's channel holds a redis-py client; kombu's types do not say so.
    return conn.default_channel.client

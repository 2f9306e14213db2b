"""The kombu queues and the Celery router built from the topology in ``kernel.topology``.

Automatic queue creation is off (``workers.app``), so a typo is an error, not a new queue.
"""

from __future__ import annotations

from typing import Any

from kombu import Exchange, Queue

from kernel.topology import ALL_QUEUES, queue_for_task


def celery_queues() -> list[Queue]:
    return [Queue(name, Exchange(name, type="direct"), routing_key=name) for name in ALL_QUEUES]


def route_task(
    name: str, args: Any, kwargs: Any, options: Any, task: Any = None, **kw: Any
) -> dict[str, str]:
    """Celery router: every task goes to the queue its name starts with."""
    queue = queue_for_task(name)
    return {"queue": queue, "routing_key": queue, "exchange": queue}

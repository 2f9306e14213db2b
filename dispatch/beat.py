"""Celery Beat, sending through the one dispatch path.

Stock Beat publishes each due entry's message itself: the job would be validated, admitted and
recorded only when a worker picked it up. Here every due entry is an ``enqueue`` like any other
(``enqueued_by`` ``beat:<entry>``), so a Beat job is in the outcome store from the moment it is
due, a bad entry is refused with the catalog's error in Beat's log, and the entry's ``expires``
bounds how long it may wait (the next tick sends a fresh one; an expired job is recorded as
preempted by the worker that drops it).
"""

from __future__ import annotations

import types
from typing import Any

from celery.beat import SchedulingError

from catalog import spec_for
from dispatch.enqueue import enqueue
from kernel.errors import DrydockError
from workers.heartbeat import HeartbeatScheduler


class DispatchingScheduler(HeartbeatScheduler):
    """RedBeat's scheduler with its tick recorded for health (``HeartbeatScheduler``), sending
    each due entry through ``dispatch.enqueue``."""

    def apply_async(
        self, entry: Any, producer: Any = None, advance: bool = True, **kwargs: Any
    ) -> Any:
        entry = self.reserve(entry) if advance else entry
        try:
            job = enqueue(
                entry.task,
                _entry_kwargs(entry),
                enqueued_by=f"beat:{entry.name}",
                expires=_entry_expiry(entry),
            )
        except DrydockError as exc:
            raise SchedulingError(f"Couldn't apply scheduled task {entry.name}: {exc}") from exc
        finally:
            self._tasks_since_sync += 1
            if self.should_sync():
                self._do_sync()
        # Beat logs the sent message's id.
        return types.SimpleNamespace(id=str(job.id))


def _entry_kwargs(entry: Any) -> dict[str, Any]:
    if entry.args:
        raise SchedulingError(
            f"Beat entry {entry.name} has positional arguments; Drydock tasks take a payload "
            "of named fields (kwargs) only"
        )
    queue = (entry.options or {}).get("queue")
    expected = spec_for(entry.task).queue
    if queue is not None and queue != expected:
        raise SchedulingError(
            f"Beat entry {entry.name} names queue {queue!r}, but {entry.task} runs on {expected!r}"
        )
    return dict(entry.kwargs or {})


def _entry_expiry(entry: Any) -> float | None:
    expires = (entry.options or {}).get("expires")
    return None if expires is None else float(expires)

"""Watching a running step: a cancel as soon as its run is stopping, and its heartbeat."""

from __future__ import annotations

import contextlib
import threading
import uuid
from collections.abc import Iterator
from dataclasses import dataclass, field

from kernel.context import JobContext
from models import workflow_runs as store
from models.db import session_scope

# How often the watcher looks for a stop, and how often it beats the step's heartbeat.
WATCH_SECONDS = 0.5
HEARTBEAT_SECONDS = 5.0


@dataclass
class Watch:
    cancel: threading.Event = field(default_factory=threading.Event)
    reason: str | None = None


@contextlib.contextmanager
def watching(run_id: uuid.UUID, name: str, ctx: JobContext) -> Iterator[Watch]:
    """While the body runs: set ``cancel`` as soon as the run is stopping, and beat the step's
    heartbeat (its runner named) every HEARTBEAT_SECONDS."""
    watch = Watch()
    done = threading.Event()

    def beat() -> None:
        with session_scope() as session:
            store.beat_heartbeat(session, run_id, name, ctx.who.hostname)

    def loop() -> None:
        last_beat = 0.0
        ticks = 0
        while not done.wait(WATCH_SECONDS):
            ticks += 1
            try:
                with session_scope() as session:
                    reason = store.stop_reason(session, store.get_run(session, run_id))
                if reason is not None:
                    watch.reason = reason
                    watch.cancel.set()
                    return
                if ticks * WATCH_SECONDS - last_beat >= HEARTBEAT_SECONDS:
                    beat()
                    last_beat = ticks * WATCH_SECONDS
            # The database away a moment: look again next tick.
            except Exception:
                continue

    beat()
    thread = threading.Thread(target=loop, name=f"drydock-step-watch-{name}", daemon=True)
    thread.start()
    try:
        yield watch
    finally:
        done.set()
        thread.join(timeout=5)

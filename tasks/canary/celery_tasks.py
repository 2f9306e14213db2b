"""``<queue>.canary`` on every work queue: thin Celery tasks over ``tasks.canary.domain``."""

from __future__ import annotations

import signal
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

from catalog.canary import CanaryPayload
from kernel.context import JobContext
from kernel.topology import WORK_QUEUES
from tasks.canary.domain import CanaryTransientError, run_canary
from workers.base_task import DrydockTask, drydock_task


def canary(payload: CanaryPayload, ctx: JobContext) -> dict[str, Any]:
    with _soft_limit_blocked(payload.ignore_soft_limit):
        return run_canary(payload, ctx.attempt, lambda pct, msg: ctx.progress(pct, msg))


@contextmanager
def _soft_limit_blocked(blocked: bool) -> Iterator[None]:
    """Hold back the pool's soft-time-limit signal (SIGUSR1) while the canary works, the way
    code stuck in a C call never sees it."""
    if not blocked:
        yield
        return
    previous = signal.pthread_sigmask(signal.SIG_BLOCK, {signal.SIGUSR1})
    try:
        yield
    finally:
        signal.pthread_sigmask(signal.SIG_SETMASK, previous)


CANARIES: dict[str, DrydockTask] = {
    queue: drydock_task(f"{queue}.canary", transient=(CanaryTransientError,))(canary)
    for queue in WORK_QUEUES
}

"""``<queue>.canary`` on every work queue: thin Celery tasks over ``tasks.canary.domain``."""

from __future__ import annotations

from typing import Any

from tasks.canary.domain import CanaryTransientError, run_canary
from tasks.canary.payloads import CanaryPayload
from workers.base_task import DrydockTask, JobContext, drydock_task
from workers.queues import WORK_QUEUES


def canary(payload: CanaryPayload, ctx: JobContext) -> dict[str, Any]:
    return run_canary(payload, ctx.attempt, lambda pct, msg: ctx.progress(pct, msg))


CANARIES: dict[str, DrydockTask] = {
    queue: drydock_task(f"{queue}.canary", transient=(CanaryTransientError,))(canary)
    for queue in WORK_QUEUES
}

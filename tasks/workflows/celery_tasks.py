"""The workflows queue's Celery tasks: thin wrappers over ``tasks.workflows.runs``."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from catalog.workflows import RunStepPayload, StartRunPayload, SweepWorkflowRunsPayload
from kernel.context import JobContext
from kernel.errors import BrokerUnavailableError
from tasks.workflows import runs
from tasks.workflows.step_errors import StepAttemptFailedError
from workers.base_task import DrydockTask, drydock_task


def start_run(payload: StartRunPayload, ctx: JobContext) -> dict[str, Any]:
    return runs.start_run(payload, ctx)


def run_step(payload: RunStepPayload, ctx: JobContext) -> dict[str, Any]:
    return runs.run_step(payload, ctx)


def sweep_runs(payload: SweepWorkflowRunsPayload, ctx: JobContext) -> dict[str, Any]:
    return runs.sweep_runs(payload.limit)


def step_deliveries(arguments: Mapping[str, Any]) -> int | None:
    """A step's job may be delivered as often as its retries, plus worker losses, allow."""
    deliveries = arguments.get("deliveries")
    return deliveries if isinstance(deliveries, int) and deliveries > 0 else None


# Retried with backoff: the broker unreachable while sending the next steps. A step's failed
# attempt is retried while its retries last (StepAttemptFailedError); then the step fails and
# its job is dead-lettered (StepFailedError), as is a start whose workflow cannot run.
START_RUN: DrydockTask = drydock_task("workflows.start_run", transient=(BrokerUnavailableError,))(
    start_run
)

RUN_STEP: DrydockTask = drydock_task(
    "workflows.run_step",
    transient=(BrokerUnavailableError, StepAttemptFailedError),
    on_dead_lettered=runs.step_job_lost,
    attempt_budget=step_deliveries,
)(run_step)

SWEEP_RUNS: DrydockTask = drydock_task("workflows.sweep_runs", transient=(BrokerUnavailableError,))(
    sweep_runs
)

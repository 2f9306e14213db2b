"""The remediation queue's Celery tasks: thin wrappers over ``tasks.remediation.domain``."""

from __future__ import annotations

from typing import Any

from catalog.remediation import (
    RefreshWorkspaceRunsPayload,
    RunPlaybookPayload,
    SimulateWorkspacePayload,
    SweepRunsPayload,
)
from kernel.context import JobContext
from models.trust import TransitionConflictError
from tasks.remediation import domain, promotion, simulation, sweep
from tasks.remediation.executors.base import ExecutorUnavailableError
from tasks.remediation.run_records import actor_of
from workers.base_task import DrydockTask, drydock_task

# Retried with backoff: the engine, daemon or API unreachable; another playbook running on the
# asset; writers racing for the asset. A playbook step that fails is an outcome, not an error.
# A refused job (bad approval token, another tenant's run) is dead-lettered at once.


def run_playbook(payload: RunPlaybookPayload, ctx: JobContext) -> dict[str, Any]:
    return domain.execute_run(payload, ctx)


def sweep_runs(payload: SweepRunsPayload, ctx: JobContext) -> dict[str, Any]:
    return sweep.sweep_runs(payload, ctx)


RUN_PLAYBOOK: DrydockTask = drydock_task(
    "remediation.run_playbook",
    transient=(ExecutorUnavailableError, domain.AssetBusyError, TransitionConflictError),
    on_dead_lettered=domain.gave_up,
)(run_playbook)

SWEEP_RUNS: DrydockTask = drydock_task(
    "remediation.sweep_runs", transient=(TransitionConflictError,)
)(sweep_runs)


def simulate_workspace(payload: SimulateWorkspacePayload, ctx: JobContext) -> dict[str, Any]:
    return simulation.run_simulation(payload, ctx)


def refresh_workspace_runs(payload: RefreshWorkspaceRunsPayload, ctx: JobContext) -> dict[str, Any]:
    return promotion.refresh_runs(payload.workspace_id, payload.tenant, actor_of(ctx))


SIMULATE_WORKSPACE: DrydockTask = drydock_task(
    "remediation.simulate_workspace",
    transient=(ExecutorUnavailableError,),
    on_dead_lettered=simulation.gave_up,
)(simulate_workspace)

# Retried: writers racing for an asset's trust row, a transient store error; an asset's own
# refusal is a recorded skip, not an error.
REFRESH_WORKSPACE_RUNS: DrydockTask = drydock_task(
    "remediation.refresh_workspace_runs", transient=(TransitionConflictError,)
)(refresh_workspace_runs)

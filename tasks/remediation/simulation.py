"""A workspace's simulation: its draft run against a sandbox replica, never the real target.

The replica is built from the first asset in the workspace's scope (or, with none, from the
scope itself): its name and kind, but none of the ways to reach it. Each executor then acts on
the replica only (``RunContext.simulation``):

- shell and container steps run in their no-network sandbox, told ``DRYDOCK_SIMULATION=1``;
- ansible runs in check mode with diff against the worker itself as the replica host (check
  mode cannot be turned off by a task: ``check_mode`` is a refused keyword);
- Kubernetes actions are server-side dry runs (``dryRun=All``): checked, never persisted;
- libvirt actions run on a replica domain in a private test driver (a file-backed ``test://``
  connection), not the fleet's hypervisor.

Each step is kept (output capped, secrets redacted, the diff with it) under the simulation's
number; a job for a simulation that has since been superseded does nothing.
"""

from __future__ import annotations

import sys
import uuid
from typing import Any

from sqlalchemy import delete, select

from catalog.remediation import SimulateWorkspacePayload
from kernel.context import JobContext
from kernel.errors import DrydockError, TransientError
from kernel.logs import get_logger
from kernel.redaction import scrub_text, secret_strings
from kernel.settings import get_settings
from models import remediation_workspaces as spaces
from models.db import session_scope
from models.remediation_workspaces import (
    RemediationSimulationStep,
    RemediationWorkspace,
    WorkspaceAction,
    WorkspaceState,
)
from tasks.remediation import artifacts
from tasks.remediation.domain import SecretUnavailableError, resolve_secret_env
from tasks.remediation.executors import executor_for
from tasks.remediation.executors.base import ExecutorKind, RunContext, Target
from tasks.remediation.playbooks import parse_spec
from tasks.remediation.run_records import actor_of

SIMULATE_TASK = "remediation.simulate_workspace"
_REPLICA_NAMESPACE = uuid.UUID("0b6d3f55-4a1c-4f2e-9a71-3e5c2d8b9f10")
# Connection variables a replica keeps: where a Kubernetes node or libvirt domain is named
# (the dry run and the replica domain need the name); never how a host is reached.
_REPLICA_KEEPS = ("kubernetes_node", "libvirt_domain")


class SimulationRefusedError(DrydockError):
    """A job for another tenant's workspace: dead-lettered at once."""


def replica_of(session: Any, workspace: RemediationWorkspace) -> Target:
    """The sandbox replica the draft runs against."""
    assets = spaces.assets_in_scope(session, workspace)
    model = assets[0] if assets else None
    kinds = list(workspace.draft.get("asset_kinds") or ["vm"])
    kind = model.kind if model is not None else kinds[0]
    connection: dict[str, Any] = {
        key: model.connection[key]
        for key in _REPLICA_KEEPS
        if model is not None and key in (model.connection or {})
    }
    if workspace.draft.get("executor") == ExecutorKind.ANSIBLE.value:
        connection.update(ansible_connection="local", ansible_python_interpreter=sys.executable)
    return Target(
        asset_id=uuid.uuid5(_REPLICA_NAMESPACE, f"{workspace.id}|{model.id if model else ''}"),
        tenant=workspace.tenant,
        name=f"{model.name if model else workspace.scope_lane}.replica",
        kind=kind,
        libvirt_uuid=None,
        connection=connection,
    )


def run_simulation(payload: SimulateWorkspacePayload, ctx: JobContext) -> dict[str, Any]:
    """The task: run the draft's steps against the replica, keep each, record the outcome."""
    with session_scope() as session:
        workspace = spaces.workspace_by_id(session, payload.workspace_id)
        if workspace is None or workspace.tenant != payload.tenant:
            raise SimulationRefusedError(
                f"tenant {payload.tenant} has no remediation workspace {payload.workspace_id}"
            )
        current = (
            workspace.state == WorkspaceState.SIMULATING.value
            and workspace.simulation == payload.simulation
        )
        if not current:
            return {
                "workspace": workspace.name,
                "simulation": payload.simulation,
                "state": workspace.state,
                "note": f"simulation {payload.simulation} is not the workspace's current one",
            }
        draft = dict(workspace.draft)
        revision = workspace.revision
        target = replica_of(session, workspace)
    kind = ExecutorKind(draft["executor"])
    spec = parse_spec(kind, draft["spec"])
    try:
        secret_env = resolve_secret_env(spec)
    except SecretUnavailableError as exc:
        return _conclude(payload, ctx, revision, target, 0, failure=str(exc))
    scrub = secret_strings(secret_env)
    run = RunContext.starting_now(
        payload.workspace_id,
        payload.simulation,
        float(draft["timeout_seconds"]),
        secret_env,
        simulation=True,
    )
    settings = get_settings()
    ran = 0
    failure: str | None = None
    try:
        steps_run = executor_for(kind).execute(spec, target, run)
        try:
            for index, step in enumerate(steps_run):
                kept = artifacts.kept_step(
                    step,
                    secrets=scrub,
                    max_bytes=settings.remediation_artifact_max_bytes,
                    extra_secret_fields=settings.extra_secret_fields,
                )
                with session_scope() as session:
                    spaces.keep_step(session, payload.workspace_id, payload.simulation, index, kept)
                ran = index + 1
                ctx.progress(
                    None,
                    f"simulated step {ran} {kept['step_name']}: {'ok' if step.ok else 'failed'}",
                    workspace_id=str(payload.workspace_id),
                )
                if not step.ok:
                    reason = step.error or "no reason given"
                    failure = scrub_text(f"step {ran} {step.name!r} failed: {reason}", scrub)
                    break
        finally:
            getattr(steps_run, "close", lambda: None)()
    except TransientError:
        # The engine or API could not be reached: this attempt's steps go, the retry runs the
        # simulation again from its first step.
        with session_scope() as session:
            session.execute(
                delete(RemediationSimulationStep).where(
                    RemediationSimulationStep.workspace_id == payload.workspace_id,
                    RemediationSimulationStep.simulation == payload.simulation,
                )
            )
        raise
    if not ran:
        failure = "the draft ran no step"
    return _conclude(payload, ctx, revision, target, ran, failure=failure)


def _conclude(
    payload: SimulateWorkspacePayload,
    ctx: JobContext,
    revision: int,
    target: Target,
    steps: int,
    *,
    failure: str | None,
) -> dict[str, Any]:
    result: dict[str, Any] = {
        "ok": failure is None,
        "steps": steps,
        "failure": failure,
        "revision": revision,
        "replica": {"name": target.name, "kind": target.kind},
    }
    with session_scope() as session:
        workspace = spaces.workspace_by_id(session, payload.workspace_id, lock=True)
        assert workspace is not None
        if (
            workspace.state == WorkspaceState.SIMULATING.value
            and workspace.simulation == payload.simulation
        ):
            workspace.state = (
                WorkspaceState.SIMULATED_PASSED
                if failure is None
                else WorkspaceState.SIMULATED_FAILED
            ).value
            workspace.simulation_result = result
            session.flush()
            spaces.record(
                session,
                workspace,
                WorkspaceAction.SIMULATED,
                actor_of(ctx),
                simulation=payload.simulation,
                **result,
            )
        return {"workspace": workspace.name, "state": workspace.state, **result}


def gave_up(exc: BaseException, ctx: JobContext, reason: str) -> None:
    """The job was dead-lettered (retries spent, the time limit, a bug): its simulation failed,
    with the reason. A refused job (another tenant's workspace) leaves the workspace as it is."""
    failure = f"{reason}: {type(exc).__name__}: {exc}"[:2000]
    with session_scope() as session:
        workspace = session.scalars(
            select(RemediationWorkspace)
            .where(RemediationWorkspace.simulation_job_id == ctx.job_id)
            .with_for_update()
        ).first()
        if workspace is None or workspace.state != WorkspaceState.SIMULATING.value:
            return
        get_logger(workspace_id=str(workspace.id)).warning(
            "remediation.simulation_gave_up", error=failure[:300]
        )
        workspace.state = WorkspaceState.SIMULATED_FAILED.value
        workspace.simulation_result = {"ok": False, "failure": failure, "steps": 0}
        session.flush()
        spaces.record(
            session,
            workspace,
            WorkspaceAction.SIMULATED,
            actor_of(ctx),
            simulation=workspace.simulation,
            ok=False,
            failure=failure,
        )

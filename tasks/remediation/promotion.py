"""A workspace's way out: simulate, approve, promote, and the promotion loop.

``promote`` walks every gate, whatever the ones before it said, so a refusal names all that
failed, and records each with its pass or fail and reason:

- ``simulation``: the newest simulation ran the exact draft revision and passed;
- ``approval``: a protected lane needs the approval token ``approve`` issued for this
  workspace's revision (someone other than its author approves); other lanes need none;
- ``freeze``: no freeze in force covers the scope's lane or asset class.

A promotion that passes stores the draft as the playbook's next version (marked ``scoped``: it
runs only where an activation names it) and makes it the scope's active version, in one
transaction; the version it replaces stays readable. The loop then runs as its own job
(``remediation.refresh_workspace_runs``): for each asset in scope, by id, a run of the promoted
version when the asset is quarantined and has none, a run not yet started re-linked to it (or
left, as the workspace says), a running one left to finish. Each outcome is one history event
per asset (a unique index), so a loop run again, or two promotions racing, never make a second
run or a second event for an asset: the one-active-run index decides who creates it.
"""

from __future__ import annotations

import uuid
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Any

from sqlalchemy.exc import IntegrityError
from sqlalchemy.orm import Session
from sqlalchemy.orm.exc import StaleDataError

from dispatch.enqueue import enqueue
from kernel.decisions import Gate, GateName
from kernel.errors import BrokerUnavailableError, DrydockError, TransientError
from kernel.logs import get_logger
from kernel.settings import get_settings
from models import remediation as store
from models import remediation_workspaces as spaces
from models.db import session_scope
from models.remediation import RemediationRefusedError, RunState
from models.remediation_workspaces import (
    ActiveRuns,
    RemediationWorkspace,
    WorkspaceAction,
    WorkspaceConflictError,
    WorkspaceState,
)
from models.trust import TrustAsset, TrustState
from policy import approvals
from tasks.remediation.requests import request_run
from tasks.remediation.run_records import A, iso_time

SIMULATE_TASK = "remediation.simulate_workspace"
REFRESH_TASK = "remediation.refresh_workspace_runs"
GATES = (GateName.SIMULATION, GateName.APPROVAL, GateName.FREEZE)
# Approval subjects are UUIDs derived from (workspace, revision): a token approves exactly one
# revision of one workspace, as a run's token approves one run.
_SUBJECT_NAMESPACE = uuid.UUID("3f1e9d2a-6c4b-4e8f-a1d7-5b2c9e0f4a63")
# A promoted workspace whose loop has not finished this long after is finished by the sweep.
LOOP_GRACE = timedelta(seconds=60)


class PromotionRefusedError(DrydockError):
    """A promotion a gate refused: every failing gate named (each recorded with its reason)."""

    def __init__(self, name: str, gates: list[Gate]) -> None:
        failing = "; ".join(f"{g.name.value}: {g.reason}" for g in gates if not g.passed)
        super().__init__(f"promotion of workspace {name} refused: {failing}")
        self.gates = gates


def approval_subject(workspace_id: uuid.UUID, revision: int) -> uuid.UUID:
    return uuid.uuid5(_SUBJECT_NAMESPACE, f"{workspace_id}|{revision}")


# -- simulate ----------------------------------------------------------------------------------


def simulate(name: str, *, tenant: str, actor: str) -> dict[str, Any]:
    """Start a simulation of the draft's current revision (its job runs on the remediation
    queue). Any approval of an earlier simulation is gone: the new one must pass again."""
    try:
        with session_scope() as session:
            workspace = spaces.get_workspace(session, tenant, name, lock=True)
            if workspace.state not in spaces.EDITABLE_STATES:
                raise WorkspaceConflictError(
                    f"workspace {name} is {workspace.state}: it cannot be simulated now"
                )
            before = (workspace.state, workspace.approved_revision, workspace.approved_by)
            workspace.state = WorkspaceState.SIMULATING.value
            workspace.simulation += 1
            workspace.simulated_revision = workspace.revision
            workspace.simulation_result = {}
            workspace.simulation_job_id = None
            workspace.approved_revision = None
            workspace.approved_by = None
            session.flush()
            spaces.record(
                session,
                workspace,
                WorkspaceAction.SIMULATION_STARTED,
                actor,
                simulation=workspace.simulation,
            )
            workspace_id, number = workspace.id, workspace.simulation
    except StaleDataError:
        raise WorkspaceConflictError(f"workspace {name} changed meanwhile; try again") from None
    try:
        job = enqueue(
            SIMULATE_TASK,
            {"workspace_id": str(workspace_id), "tenant": tenant, "simulation": number},
            f"remediation-simulation:{workspace_id}:{number}",
            enqueued_by=actor,
        )
    except BrokerUnavailableError:
        # Not sent: the workspace goes back to where it stood, and the caller is told to retry.
        with session_scope() as session:
            workspace = spaces.get_workspace(session, tenant, name, lock=True)
            if workspace.simulation == number:
                workspace.state, workspace.approved_revision, workspace.approved_by = before
        raise
    with session_scope() as session:
        workspace = spaces.get_workspace(session, tenant, name, lock=True)
        if workspace.simulation == number:
            workspace.simulation_job_id = job.id
    return {"workspace": name, "simulation": number, "job_id": str(job.id), "state": "simulating"}


# -- approve -----------------------------------------------------------------------------------


@dataclass(frozen=True)
class WorkspaceApproval:
    workspace: str
    revision: int
    approver: str
    token: str
    expires_at: datetime


def approve(name: str, *, tenant: str, approver: str, reason: str = "") -> WorkspaceApproval:
    """Approve the simulated revision: the workspace is approved, and the token returned is
    what a protected lane's promotion presents. Its author cannot approve it."""
    key = approvals.signing_key()
    with session_scope() as session:
        workspace = spaces.get_workspace(session, tenant, name, lock=True)
        if workspace.state != WorkspaceState.SIMULATED_PASSED.value:
            raise WorkspaceConflictError(
                f"workspace {name} is {workspace.state}: only a draft whose simulation passed "
                "can be approved (`drydock remediation workspaces simulate`)"
            )
        if approver == workspace.created_by:
            raise WorkspaceConflictError(
                f"workspace {name} was made by {approver}: someone else must approve it"
            )
        grant = approvals.new_grant(
            approval_subject(workspace.id, workspace.revision),
            tenant,
            approver,
            ttl_seconds=get_settings().remediation_approval_ttl_seconds,
            now=datetime.now(UTC),
        )
        workspace.state = WorkspaceState.APPROVED.value
        workspace.approved_revision = workspace.revision
        workspace.approved_by = approver
        workspace.approved_at = grant.issued_at
        session.flush()
        spaces.record(
            session,
            workspace,
            WorkspaceAction.APPROVED,
            approver,
            reason=reason,
            token_id=grant.token_id,
            expires_at=iso_time(grant.expires_at),
        )
        revision = workspace.revision
    token = approvals.mint(grant, key, audience=approvals.WORKSPACE_AUDIENCE)
    return WorkspaceApproval(name, revision, approver, token, grant.expires_at)


# -- promote -----------------------------------------------------------------------------------


def promote(
    name: str, *, tenant: str, actor: str, approval_token: str | None = None, reason: str = ""
) -> dict[str, Any]:
    """Walk the gates; promote when all pass (PromotionRefusedError names those that did not,
    after recording them), then send the loop's job."""
    for _ in range(5):
        try:
            outcome = _promote_once(name, tenant, actor, approval_token, reason)
            break
        except IntegrityError:
            continue  # a racing promotion took the version number or made the activation
    else:
        raise TransientError(f"workspace {name}: promotions kept racing; try again")
    if isinstance(outcome, PromotionRefusedError):
        raise outcome
    outcome["loop_job_id"] = send_loop(uuid.UUID(outcome["workspace_id"]), tenant)
    return outcome


def _promote_once(
    name: str, tenant: str, actor: str, token: str | None, reason: str
) -> dict[str, Any] | PromotionRefusedError:
    now = datetime.now(UTC)
    with session_scope() as session:
        workspace = spaces.get_workspace(session, tenant, name, lock=True)
        if workspace.state in spaces.FINISHED_STATES:
            raise WorkspaceConflictError(f"workspace {name} is {workspace.state} already")
        gates = [
            _simulation_gate(workspace),
            _approval_gate(session, workspace, token),
            _freeze_gate(session, workspace, now),
        ]
        if not all(gate.passed for gate in gates):
            spaces.record(
                session,
                workspace,
                WorkspaceAction.PROMOTION_REFUSED,
                actor,
                reason=reason,
                gates=[gate.as_json() for gate in gates],
            )
            return PromotionRefusedError(name, gates)
        draft = workspace.draft
        book = store.add_playbook_version(
            session,
            tenant=tenant,
            name=workspace.playbook_name,
            executor=draft["executor"],
            spec=draft["spec"],
            timeout_seconds=draft["timeout_seconds"],
            requires_approval=draft["requires_approval"],
            asset_kinds=draft["asset_kinds"],
            description=draft.get("description", ""),
            created_by=actor,
            scoped=True,
        )
        previous = spaces.activate(session, workspace, book, actor)
        replaced = session.get(store.RemediationPlaybook, previous) if previous else None
        previous_version = replaced.version if replaced is not None else None
        workspace.state = WorkspaceState.PROMOTED.value
        workspace.promoted_playbook_id = book.id
        workspace.promoted_at = now
        workspace.promoted_by = actor
        session.flush()
        spaces.record(
            session,
            workspace,
            WorkspaceAction.PROMOTED,
            actor,
            reason=reason,
            gates=[gate.as_json() for gate in gates],
            version=book.version,
            previous_version=previous_version,
        )
        return {
            "workspace": name,
            "workspace_id": str(workspace.id),
            "state": workspace.state,
            "playbook": book.name,
            "version": book.version,
            "previous_version": previous_version,
            "gates": [gate.as_json() for gate in gates],
        }


def _simulation_gate(workspace: RemediationWorkspace) -> Gate:
    name = GateName.SIMULATION
    result = workspace.simulation_result or {}
    if workspace.state == WorkspaceState.SIMULATING.value:
        return Gate(name, False, f"simulation {workspace.simulation} is still running")
    if workspace.simulated_revision != workspace.revision or not result:
        return Gate(
            name, False, f"revision {workspace.revision} has not been simulated (`... simulate`)"
        )
    if not result.get("ok"):
        return Gate(
            name,
            False,
            f"simulation {workspace.simulation} of revision {workspace.revision} failed: "
            f"{result.get('failure')}",
        )
    return Gate(
        name,
        True,
        f"simulation {workspace.simulation} of revision {workspace.revision} passed "
        f"({result.get('steps')} step(s) on {result.get('replica', {}).get('name')})",
    )


def _approval_gate(session: Session, workspace: RemediationWorkspace, token: str | None) -> Gate:
    name = GateName.APPROVAL
    lane = spaces.get_lane(session, workspace.tenant, workspace.scope_lane)
    if lane is None or not lane.protected:
        return Gate(name, True, f"lane {workspace.scope_lane} is not protected")
    where = f"lane {lane.name} is protected"
    if workspace.state != WorkspaceState.APPROVED.value:
        return Gate(name, False, f"{where}: the workspace needs an approval (`... approve`)")
    if not token:
        return Gate(name, False, f"{where}: the approval token must be presented")
    try:
        grant = approvals.verify(
            token,
            run_id=approval_subject(workspace.id, workspace.revision),
            tenant=workspace.tenant,
            key=approvals.signing_key(),
            audience=approvals.WORKSPACE_AUDIENCE,
        )
    except approvals.ApprovalTokenError as exc:
        return Gate(
            name, False, f"{where}: the token does not approve this revision ({exc.problem.value})"
        )
    if grant.approver == workspace.created_by:
        return Gate(name, False, f"{where}: approved by its own author {grant.approver}")
    return Gate(name, True, f"{where}: approved by {grant.approver}")


def _freeze_gate(session: Session, workspace: RemediationWorkspace, now: datetime) -> Gate:
    name = GateName.FREEZE
    freezes = spaces.freezes_over(
        session, workspace.tenant, workspace.scope_lane, workspace.scope_asset_class, now
    )
    if not freezes:
        return Gate(name, True, "no freeze covers the scope")
    said = []
    for freeze in freezes:
        covers = " and ".join(
            f"{what} {value}"
            for what, value in (("lane", freeze.lane), ("class", freeze.asset_class))
            if value
        )
        until = f"until {iso_time(freeze.ends_at)}" if freeze.ends_at else "until lifted"
        said.append(
            f"freeze {freeze.id} of {covers or 'the whole tenant'} {until}: {freeze.reason}"
        )
    return Gate(name, False, "; ".join(said))


# -- the promotion loop ------------------------------------------------------------------------


def send_loop(workspace_id: uuid.UUID, tenant: str) -> str | None:
    """Enqueue the loop (once per workspace: one idempotency key). None when the broker is
    down: the sweep sends it."""
    try:
        job = enqueue(
            REFRESH_TASK,
            {"workspace_id": str(workspace_id), "tenant": tenant},
            f"remediation-workspace-loop:{workspace_id}",
            enqueued_by=f"remediation-workspace:{workspace_id}",
        )
    except BrokerUnavailableError as exc:
        get_logger(workspace_id=str(workspace_id)).warning(
            "remediation.loop_send_failed", error=str(exc)[:300]
        )
        return None
    return str(job.id)


def refresh_runs(workspace_id: uuid.UUID, tenant: str, actor: str) -> dict[str, Any]:
    """The loop: every asset in scope, by id, handled once."""
    with session_scope() as session:
        workspace = spaces.workspace_by_id(session, workspace_id)
        if workspace is None or workspace.tenant != tenant:
            raise RemediationRefusedError(
                f"tenant {tenant} has no remediation workspace {workspace_id}"
            )
        if workspace.state != WorkspaceState.PROMOTED.value:
            return {"workspace": workspace.name, "state": workspace.state, "note": "not promoted"}
        asset_ids = [asset.id for asset in spaces.assets_in_scope(session, workspace)]
    counts: dict[str, Any] = {"created": 0, "refreshed": 0, "skipped": 0, "unaffected": 0}
    for asset_id in asset_ids:
        counts[_refresh_one(workspace_id, asset_id, actor)] += 1
    with session_scope() as session:
        workspace = spaces.workspace_by_id(session, workspace_id, lock=True)
        assert workspace is not None
        if workspace.loop_finished_at is None:
            workspace.loop_finished_at = datetime.now(UTC)
            session.flush()
            spaces.record(session, workspace, WorkspaceAction.LOOP_FINISHED, actor, **counts)
        return {"workspace": workspace.name, "assets": len(asset_ids), **counts}


def _refresh_one(workspace_id: uuid.UUID, asset_id: uuid.UUID, actor: str) -> str:
    """What the promotion does for one asset: created, refreshed, skipped or unaffected."""
    with session_scope() as session:
        workspace = spaces.workspace_by_id(session, workspace_id)
        asset = session.get(TrustAsset, asset_id)
        assert workspace is not None and asset is not None
        book = session.get(store.RemediationPlaybook, workspace.promoted_playbook_id)
        assert book is not None
        superseded = _superseded(session, workspace, book, asset)
        active = store.active_run(session, workspace.tenant, asset_id, book.name)
        quarantined = asset.state == TrustState.QUARANTINED.value
        tenant, playbook, name = workspace.tenant, book.name, workspace.name
    if superseded is not None:
        return _note(workspace_id, asset_id, WorkspaceAction.RUN_SKIPPED, actor, superseded)
    if active is None and not quarantined:
        return "unaffected"
    if active is None:
        try:
            outcome = request_run(
                tenant=tenant,
                asset=str(asset_id),
                playbook=playbook,
                requested_by=f"workspace:{name}",
                reason=f"workspace {name} promoted {playbook} v{book.version}",
            )
        except DrydockError as exc:
            return _note(workspace_id, asset_id, WorkspaceAction.RUN_SKIPPED, actor, str(exc))
        if outcome.created:
            return _note(
                workspace_id,
                asset_id,
                WorkspaceAction.RUN_CREATED,
                actor,
                f"run {outcome.run_id} of v{book.version} requested ({outcome.state})",
                run_id=str(outcome.run_id),
            )
    return _relink_or_skip(workspace_id, asset_id, actor)


def _superseded(
    session: Session,
    workspace: RemediationWorkspace,
    book: store.RemediationPlaybook,
    asset: TrustAsset,
) -> str | None:
    """Why this promotion no longer decides the asset's runs (a later promotion's version is
    the asset's active one now: its own loop handles the asset), or None."""
    current = spaces.playbook_for_asset(session, workspace.tenant, book.name, asset)
    if current.id == book.id:
        return None
    return (
        f"v{current.version}, promoted after v{book.version}, is the asset's active version: "
        "its promotion's loop handles the asset"
    )


def _relink_or_skip(workspace_id: uuid.UUID, asset_id: uuid.UUID, actor: str) -> str:
    with session_scope() as session:
        workspace = spaces.workspace_by_id(session, workspace_id)
        assert workspace is not None
        book = session.get(store.RemediationPlaybook, workspace.promoted_playbook_id)
        assert book is not None
        found = store.active_run(session, workspace.tenant, asset_id, book.name)
        if found is None:
            return _note(
                workspace_id, asset_id, WorkspaceAction.RUN_SKIPPED, actor,
                "its run ended meanwhile",
            )  # fmt: skip
        run = store.get_run(session, found.id, None, lock=True)
        # Read with the run locked: a later promotion's loop that handled the run committed
        # its activation first, so it is seen here, and this loop leaves the run to it.
        asset = session.get(TrustAsset, asset_id)
        assert asset is not None
        why = _superseded(session, workspace, book, asset) or _why_left(workspace, book, run)
        if why is not None:
            recorded = spaces.record(
                session, workspace, WorkspaceAction.RUN_SKIPPED, actor, asset_id=asset_id,
                reason=why, run_id=str(run.id),
            )  # fmt: skip
            return "skipped" if recorded else "unaffected"
        old = run.playbook_version
        run.playbook_id = book.id
        run.playbook_version = book.version
        store.audit(
            session, run, A.RELINKED, actor, f"workspace {workspace.name} promoted v{book.version}",
            from_version=old, to_version=book.version,
        )  # fmt: skip
        recorded = spaces.record(
            session, workspace, WorkspaceAction.RUN_REFRESHED, actor, asset_id=asset_id,
            reason=f"run {run.id} re-linked from v{old} to v{book.version}", run_id=str(run.id),
        )  # fmt: skip
        return "refreshed" if recorded else "unaffected"


def _why_left(
    workspace: RemediationWorkspace, book: store.RemediationPlaybook, run: store.RemediationRun
) -> str | None:
    """Why the loop leaves an active run on the version it has (None: it is re-linked)."""
    if run.playbook_id == book.id:
        return f"run {run.id} already runs v{book.version}"
    if run.state == RunState.RUNNING.value or run.attempts:
        return f"run {run.id} of v{run.playbook_version} is under way: left to finish"
    if workspace.active_runs == ActiveRuns.FINISH.value:
        return f"run {run.id} left on v{run.playbook_version} (active_runs: finish)"
    if book.requires_approval and not run.approval_reasons:
        return (
            f"run {run.id} left on v{run.playbook_version}: v{book.version} requires "
            "approval, which the run was not asked for"
        )
    return None


def _note(
    workspace_id: uuid.UUID,
    asset_id: uuid.UUID,
    action: WorkspaceAction,
    actor: str,
    reason: str,
    **detail: Any,
) -> str:
    with session_scope() as session:
        workspace = spaces.workspace_by_id(session, workspace_id)
        assert workspace is not None
        recorded = spaces.record(
            session, workspace, action, actor, asset_id=asset_id, reason=reason, **detail
        )
    if not recorded:
        return "unaffected"
    return {WorkspaceAction.RUN_CREATED: "created", WorkspaceAction.RUN_SKIPPED: "skipped"}.get(
        action, "refreshed"
    )


def finish_unfinished_loops(now: datetime, limit: int, actor: str) -> list[str]:
    """The sweep's part: promoted workspaces whose loop has not finished (its job was lost or
    died) have it run here; each asset already handled is not handled again."""
    with session_scope() as session:
        pending = [
            (row.id, row.tenant)
            for row in (
                spaces.workspace_by_id(session, workspace_id)
                for workspace_id in spaces.loops_pending(session, now - LOOP_GRACE, limit)
            )
            if row is not None
        ]
    for workspace_id, tenant in pending:
        refresh_runs(workspace_id, tenant, actor)
    return [str(workspace_id) for workspace_id, _ in pending]

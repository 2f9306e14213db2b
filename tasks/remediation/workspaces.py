"""Remediation workspaces: a playbook changed safely. A workspace holds a draft revision of one
playbook (started from a named version, or new), the scope it is meant for (an asset class, a
lane, a selector of asset names) and where it stands:

    draft -> simulating -> simulated_passed | simulated_failed -> approved -> promoted
    (or abandoned, from anywhere before promoted)

Every edit is a new revision and sends the workspace back to draft: what was simulated or
approved was an earlier revision. An invalid draft is refused at create and edit with every
problem named by its path (``draft.spec.steps.0.run``). Simulation, approval and promotion are
``tasks.remediation.promotion``; this module is the drafts themselves.
"""

from __future__ import annotations

from typing import Annotated, Any, Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationError
from sqlalchemy.exc import IntegrityError
from sqlalchemy.orm import Session
from sqlalchemy.orm.exc import StaleDataError

from kernel.errors import DrydockError, FieldProblem, field_problems, list_problems
from models import remediation as store
from models import remediation_workspaces as spaces
from models.db import session_scope
from models.remediation_workspaces import (
    RemediationWorkspace,
    WorkspaceAction,
    WorkspaceConflictError,
    WorkspaceState,
)
from models.trust import TrustAssetClass
from tasks.remediation.executors import spec_model_for
from tasks.remediation.executors.base import ExecutorKind
from tasks.remediation.playbooks import NAME_PATTERN, PlaybookDefinition
from tasks.remediation.run_records import check_tenant, iso_time

# What a draft holds: a playbook definition but its name (the workspace's playbook).
DRAFT_FIELDS = (
    "executor",
    "spec",
    "timeout_seconds",
    "requires_approval",
    "asset_kinds",
    "description",
)
MAX_SELECTOR_NAMES = 50
# Asset names a description of the workspace lists (the count is always whole).
SHOWN_ASSETS = 100

Name = Annotated[str, Field(pattern=f"^{NAME_PATTERN}$")]
# ActiveRuns' values as a Literal, which strict validation accepts as JSON text.
ActiveRunsName = Literal["relink", "finish"]


class WorkspaceScope(BaseModel):
    """Which assets a workspace's promotion covers: the tenant's assets of the class, in the
    lane, whose names match one of ``names`` (shell globs; none: every one)."""

    model_config = ConfigDict(extra="forbid", strict=True)

    asset_class: str = Field(min_length=1, max_length=100, description="A trust asset class.")
    lane: Name = Field(description="A lane of the tenant's (`drydock remediation lanes put`).")
    names: list[Annotated[str, Field(min_length=1, max_length=200)]] = Field(
        default_factory=list,
        max_length=MAX_SELECTOR_NAMES,
        description="Shell globs of asset names (`db-*`); empty: every asset of class and lane.",
    )

    def selector(self) -> dict[str, Any]:
        return {"names": list(dict.fromkeys(self.names))}


class WorkspaceCreate(BaseModel):
    model_config = ConfigDict(extra="forbid", strict=True)

    name: Name = Field(description="The workspace's name, unique in the tenant.")
    playbook: Name = Field(description="The playbook it changes (or makes).")
    base_version: int | None = Field(
        None, ge=1, le=1_000_000, description="The version it starts from (default: the newest)."
    )
    draft: dict[str, Any] | None = Field(
        None,
        description="The draft: a playbook definition without its name. Default: a copy of the "
        "base version.",
    )
    scope: WorkspaceScope
    active_runs: ActiveRunsName = Field(
        "relink",
        description="relink: a promotion moves runs not yet started to the new version; "
        "finish: they keep the version they were requested with.",
    )
    reason: str = Field("", max_length=2000)


class WorkspaceEdit(BaseModel):
    model_config = ConfigDict(extra="forbid", strict=True)

    draft: dict[str, Any] | None = None
    scope: WorkspaceScope | None = None
    active_runs: ActiveRunsName | None = Field(
        None, description="relink or finish (see the workspace's create)."
    )
    expected_revision: int | None = Field(
        None,
        ge=1,
        le=1_000_000,
        description="Refuse the edit unless the workspace is still at this revision.",
    )
    reason: str = Field("", max_length=2000)


class WorkspaceInvalidError(DrydockError):
    """A draft or scope that cannot be stored, with every problem named by its path."""

    def __init__(self, problems: list[FieldProblem]) -> None:
        super().__init__(f"invalid workspace: {list_problems(problems)}")
        self.problems = problems


def checked_draft(playbook: str, draft: Any) -> dict[str, Any]:
    """The draft as it is stored (its spec as its executor's model reads it), or
    WorkspaceInvalidError naming every problem under ``draft.``."""
    if not isinstance(draft, dict):
        raise WorkspaceInvalidError([FieldProblem("draft", "must be a JSON object")])
    problems: list[FieldProblem] = []
    if "name" in draft:
        problems.append(FieldProblem("draft.name", "the draft's name is the workspace's playbook"))
    executor = draft.get("executor")
    kinds = {kind.value: kind for kind in ExecutorKind}
    if isinstance(executor, str) and executor in kinds:
        try:
            spec_model_for(kinds[executor]).model_validate(draft.get("spec"))
        except ValidationError as exc:
            problems += field_problems(exc, whole="(spec)", prefix="draft.spec.")
    try:
        definition = PlaybookDefinition.model_validate({**draft, "name": playbook})
    except ValidationError as exc:
        spec_named = any(p.field.startswith("draft.spec") for p in problems)
        for found in field_problems(exc, whole="(draft)", prefix="draft."):
            # The definition's own check of its spec repeats, as one, what is named above.
            if not (spec_named and found.field in ("draft.(draft)", "draft.spec")):
                problems.append(found)
    if problems:
        raise WorkspaceInvalidError(problems)
    stored = definition.model_dump(mode="json", include=set(DRAFT_FIELDS))
    stored["spec"] = definition.parsed_spec().model_dump(mode="json")
    return stored


def _draft_of(book: store.RemediationPlaybook) -> dict[str, Any]:
    return {
        "executor": book.executor,
        "spec": dict(book.spec),
        "timeout_seconds": book.timeout_seconds,
        "requires_approval": book.requires_approval,
        "asset_kinds": list(book.asset_kinds),
        "description": book.description,
    }


def _missing_in_scope(session: Session, tenant: str, scope: WorkspaceScope) -> list[str]:
    """What the scope names that the store does not hold (refused as a conflict, 409: the
    request is well formed; the asset class or lane is what is missing)."""
    missing = []
    if session.get(TrustAssetClass, scope.asset_class) is None:
        missing.append(f"no asset class {scope.asset_class!r}")
    if spaces.get_lane(session, tenant, scope.lane) is None:
        missing.append(
            f"tenant {tenant} has no lane {scope.lane!r} "
            "(`drydock remediation lanes put` makes one)"
        )
    return missing


def _refuse_missing(missing: list[str]) -> None:
    if missing:
        raise WorkspaceConflictError("; ".join(missing))


def create(request: WorkspaceCreate, *, tenant: str, actor: str) -> dict[str, Any]:
    """A new workspace, in draft, from the base version (or the draft given)."""
    check_tenant(tenant)
    # The draft's own problems first (422), then what it names that does not exist (409).
    draft = checked_draft(request.playbook, request.draft) if request.draft is not None else None
    with session_scope() as session:
        missing = _missing_in_scope(session, tenant, request.scope)
        base = store.get_playbook_or_none(session, tenant, request.playbook, request.base_version)
        if request.base_version is not None and base is None:
            missing.append(f"playbook {request.playbook} has no version {request.base_version}")
        elif base is None and draft is None:
            missing.append(
                f"tenant {tenant} has no playbook {request.playbook} to start from: give the draft"
            )
        _refuse_missing(missing)
        if draft is None:
            assert base is not None
            draft = _draft_of(base)
        assert draft is not None
        workspace = RemediationWorkspace(
            tenant=tenant,
            name=request.name,
            playbook_name=request.playbook,
            base_playbook_id=base.id if base else None,
            base_version=base.version if base else None,
            draft=draft,
            revision=1,
            scope_asset_class=request.scope.asset_class,
            scope_lane=request.scope.lane,
            scope_selector=request.scope.selector(),
            active_runs=request.active_runs,
            state=WorkspaceState.DRAFT.value,
            reason=request.reason,
            created_by=actor,
        )
        session.add(workspace)
        try:
            session.flush()
        except IntegrityError:
            raise WorkspaceConflictError(
                f"tenant {tenant} already has a workspace {request.name}"
            ) from None
        spaces.record(
            session,
            workspace,
            WorkspaceAction.CREATED,
            actor,
            base_version=workspace.base_version,
            reason=request.reason,
        )
        return describe_row(session, workspace)


def edit(name: str, change: WorkspaceEdit, *, tenant: str, actor: str) -> dict[str, Any]:
    """A new revision of the draft, scope or run policy; the workspace is a draft again."""
    if change.draft is None and change.scope is None and change.active_runs is None:
        raise WorkspaceConflictError("nothing to change: give draft, scope or active_runs")
    try:
        with session_scope() as session:
            workspace = spaces.get_workspace(session, tenant, name, lock=True)
            _check_editable(workspace, change.expected_revision)
            draft = None
            if change.draft is not None:
                draft = checked_draft(workspace.playbook_name, change.draft)
            if change.scope is not None:
                _refuse_missing(_missing_in_scope(session, tenant, change.scope))
            changed = []
            if draft is not None:
                workspace.draft = draft
                changed.append("draft")
            if change.scope is not None:
                workspace.scope_asset_class = change.scope.asset_class
                workspace.scope_lane = change.scope.lane
                workspace.scope_selector = change.scope.selector()
                changed.append("scope")
            if change.active_runs is not None:
                workspace.active_runs = change.active_runs
                changed.append("active_runs")
            workspace.revision += 1
            workspace.state = WorkspaceState.DRAFT.value
            workspace.approved_revision = None
            workspace.approved_by = None
            workspace.approved_at = None
            session.flush()
            spaces.record(
                session, workspace, WorkspaceAction.EDITED, actor, changed=changed,
                reason=change.reason,
            )  # fmt: skip
            return describe_row(session, workspace)
    except StaleDataError:
        raise WorkspaceConflictError(
            f"workspace {name} changed while it was being edited; read it again"
        ) from None


def _check_editable(workspace: RemediationWorkspace, expected_revision: int | None) -> None:
    if workspace.state not in spaces.EDITABLE_STATES:
        raise WorkspaceConflictError(
            f"workspace {workspace.name} is {workspace.state}: "
            + (
                "wait for its simulation to end"
                if workspace.state == WorkspaceState.SIMULATING.value
                else "it can no longer be edited"
            )
        )
    if expected_revision is not None and expected_revision != workspace.revision:
        raise WorkspaceConflictError(
            f"workspace {workspace.name} is at revision {workspace.revision}, not "
            f"{expected_revision}: someone else edited it; read it again"
        )


def abandon(name: str, *, tenant: str, actor: str, reason: str = "") -> dict[str, Any]:
    """Give a workspace up: nothing it drafted goes live."""
    try:
        with session_scope() as session:
            workspace = spaces.get_workspace(session, tenant, name, lock=True)
            if workspace.state in spaces.FINISHED_STATES:
                raise WorkspaceConflictError(
                    f"workspace {name} is {workspace.state} already: nothing to abandon"
                )
            workspace.state = WorkspaceState.ABANDONED.value
            session.flush()
            spaces.record(session, workspace, WorkspaceAction.ABANDONED, actor, reason=reason)
            return describe_row(session, workspace)
    except StaleDataError:
        raise WorkspaceConflictError(f"workspace {name} changed meanwhile; read it again") from None


# -- reading -----------------------------------------------------------------------------------


def describe(name: str, *, tenant: str) -> dict[str, Any]:
    with session_scope() as session:
        return describe_row(session, spaces.get_workspace(session, tenant, name))


def list_summaries(
    *, tenant: str | None, states: list[WorkspaceState], limit: int
) -> list[dict[str, Any]]:
    with session_scope() as session:
        rows = spaces.list_workspaces(session, tenant, [s.value for s in states], limit)
        return [summary(row) for row in rows]


def summary(workspace: RemediationWorkspace) -> dict[str, Any]:
    return {
        "id": str(workspace.id),
        "tenant": workspace.tenant,
        "name": workspace.name,
        "playbook": workspace.playbook_name,
        "base_version": workspace.base_version,
        "revision": workspace.revision,
        "state": workspace.state,
        "scope": {
            "asset_class": workspace.scope_asset_class,
            "lane": workspace.scope_lane,
            "names": list(workspace.scope_selector.get("names") or []),
        },
        "active_runs": workspace.active_runs,
        "simulated_revision": workspace.simulated_revision,
        "approved_revision": workspace.approved_revision,
        "approved_by": workspace.approved_by,
        "promoted_version": None,
        "promoted_at": iso_time(workspace.promoted_at),
        "promoted_by": workspace.promoted_by,
        "loop_finished_at": iso_time(workspace.loop_finished_at),
        "created_by": workspace.created_by,
        "created_at": iso_time(workspace.created_at),
        "updated_at": iso_time(workspace.updated_at),
    }


def describe_row(session: Session, workspace: RemediationWorkspace) -> dict[str, Any]:
    """The workspace whole: its draft, scope, newest simulation step by step, and history."""
    session.refresh(workspace)
    shown = summary(workspace)
    if workspace.promoted_playbook_id is not None:
        promoted = session.get(store.RemediationPlaybook, workspace.promoted_playbook_id)
        shown["promoted_version"] = promoted.version if promoted else None
    assets = spaces.assets_in_scope(session, workspace)
    steps = spaces.simulation_steps(session, workspace.id, workspace.simulation)
    return {
        **shown,
        "draft": workspace.draft,
        "reason": workspace.reason,
        "assets_in_scope": len(assets),
        "assets": [
            {"id": str(a.id), "name": a.name, "state": a.state} for a in assets[:SHOWN_ASSETS]
        ],
        "simulation": {
            "number": workspace.simulation,
            "revision": workspace.simulated_revision,
            "job_id": str(workspace.simulation_job_id) if workspace.simulation_job_id else None,
            "result": workspace.simulation_result,
            "steps": [
                {
                    "step": step.step_index,
                    "name": step.step_name,
                    "ok": step.ok,
                    "timed_out": step.timed_out,
                    "exit_code": step.exit_code,
                    "error": step.error,
                    "stdout": step.stdout,
                    "stderr": step.stderr,
                    "truncated": step.truncated,
                    "outputs": step.outputs,
                    "diff": step.outputs.get("diff"),
                    "duration_ms": step.duration_ms,
                }
                for step in steps
            ],
        },
        "history": [
            {
                "id": event.id,
                "action": event.action,
                "actor": event.actor,
                "revision": event.revision,
                "asset_id": str(event.asset_id) if event.asset_id else None,
                "detail": event.detail,
                "at": iso_time(event.at),
            }
            for event in spaces.history(session, workspace.id)
        ],
    }

"""Remediation workspaces: a draft playbook revision worked on safely before it goes live, with
its scope, its simulations' steps, its append-only history; the lanes and freezes that govern
promotion; and the activations that make a promoted version the one a scope runs.

A workspace's ``version`` is its optimistic lock (SQLAlchemy adds ``AND version = <read>`` to
every UPDATE and raises StaleDataError when another writer got there first), so two operators
editing, simulating or promoting one workspace at once cannot overwrite each other: the second
is told to read it again.
"""

from __future__ import annotations

import fnmatch
import uuid
from collections.abc import Sequence
from datetime import UTC, datetime
from enum import StrEnum
from typing import Any

import orjson
from sqlalchemy import (
    BigInteger,
    CheckConstraint,
    DateTime,
    ForeignKey,
    Index,
    Integer,
    String,
    Text,
    UniqueConstraint,
    Uuid,
    func,
    or_,
    select,
    text,
)
from sqlalchemy.dialects.postgresql import JSONB, insert
from sqlalchemy.orm import Mapped, Session, mapped_column

from kernel.errors import DrydockError, NotFoundError
from models import stream
from models.base import Base, sql_in_list
from models.remediation import KeptStepColumns, PlaybookNotFoundError, RemediationPlaybook
from models.trust import TrustAsset


class WorkspaceState(StrEnum):
    DRAFT = "draft"
    SIMULATING = "simulating"
    SIMULATED_PASSED = "simulated_passed"
    SIMULATED_FAILED = "simulated_failed"
    APPROVED = "approved"
    PROMOTED = "promoted"
    ABANDONED = "abandoned"


# A draft in one of these may be edited (an edit sends it back to draft).
EDITABLE_STATES: frozenset[str] = frozenset(
    {
        WorkspaceState.DRAFT,
        WorkspaceState.SIMULATED_PASSED,
        WorkspaceState.SIMULATED_FAILED,
        WorkspaceState.APPROVED,
    }
)
FINISHED_STATES: frozenset[str] = frozenset({WorkspaceState.PROMOTED, WorkspaceState.ABANDONED})


class ActiveRuns(StrEnum):
    """What a promotion does with a run of the playbook already active on an asset in scope:
    ``relink`` moves one not yet started to the promoted version (a running one always
    finishes: stopping a playbook halfway leaves the asset in a state nobody chose);
    ``finish`` leaves every active run on the version it was requested with."""

    RELINK = "relink"
    FINISH = "finish"


class WorkspaceAction(StrEnum):
    CREATED = "created"
    EDITED = "edited"
    SIMULATION_STARTED = "simulation_started"
    SIMULATED = "simulated"
    APPROVED = "approved"
    PROMOTION_REFUSED = "promotion_refused"
    PROMOTED = "promoted"
    RUN_CREATED = "run_created"
    RUN_REFRESHED = "run_refreshed"
    RUN_SKIPPED = "run_skipped"
    LOOP_FINISHED = "loop_finished"
    ABANDONED = "abandoned"


LOOP_ACTIONS: tuple[WorkspaceAction, ...] = (
    WorkspaceAction.RUN_CREATED,
    WorkspaceAction.RUN_REFRESHED,
    WorkspaceAction.RUN_SKIPPED,
)


class RemediationLane(Base):
    """A lane (stage) of a tenant's assets: ``production``, ``canary``. Promotion into a
    protected lane needs an approval token from someone other than the workspace's author."""

    __tablename__ = "remediation_lanes"

    tenant: Mapped[str] = mapped_column(String(100), primary_key=True)
    name: Mapped[str] = mapped_column(String(100), primary_key=True)
    protected: Mapped[bool] = mapped_column(default=False)
    description: Mapped[str] = mapped_column(Text, default="")
    updated_at: Mapped[datetime] = mapped_column(
        DateTime(timezone=True), server_default=func.now(), onupdate=func.now()
    )
    updated_by: Mapped[str | None] = mapped_column(String(200))


class RemediationFreeze(Base):
    """No promotion into the scope it covers (a lane, an asset class, both, or the whole
    tenant when neither is named) from ``starts_at`` until ``ends_at`` or until lifted."""

    __tablename__ = "remediation_freezes"

    id: Mapped[uuid.UUID] = mapped_column(Uuid, primary_key=True, default=uuid.uuid4)
    tenant: Mapped[str] = mapped_column(String(100))
    lane: Mapped[str | None] = mapped_column(String(100))
    asset_class: Mapped[str | None] = mapped_column(String(100))
    reason: Mapped[str] = mapped_column(Text)
    starts_at: Mapped[datetime] = mapped_column(DateTime(timezone=True))
    ends_at: Mapped[datetime | None] = mapped_column(DateTime(timezone=True))
    created_by: Mapped[str] = mapped_column(String(200))
    created_at: Mapped[datetime] = mapped_column(DateTime(timezone=True), server_default=func.now())
    lifted_at: Mapped[datetime | None] = mapped_column(DateTime(timezone=True))
    lifted_by: Mapped[str | None] = mapped_column(String(200))

    __table_args__ = (
        CheckConstraint("ends_at IS NULL OR ends_at > starts_at", name="window"),
        Index(None, "tenant", "starts_at"),
    )


class RemediationWorkspace(Base):
    """One draft revision of a tenant's playbook, its scope, and where it stands."""

    __tablename__ = "remediation_workspaces"

    id: Mapped[uuid.UUID] = mapped_column(Uuid, primary_key=True, default=uuid.uuid4)
    tenant: Mapped[str] = mapped_column(String(100))
    name: Mapped[str] = mapped_column(String(100))
    playbook_name: Mapped[str] = mapped_column(String(100))
    # The version the draft started from; None for a new playbook.
    base_playbook_id: Mapped[uuid.UUID | None] = mapped_column(
        Uuid, ForeignKey("remediation_playbooks.id", ondelete="RESTRICT")
    )
    base_version: Mapped[int | None] = mapped_column(Integer)
    # The draft: a playbook definition without its name (executor, spec, timeout_seconds,
    # requires_approval, asset_kinds, description), validated before it is stored.
    draft: Mapped[dict[str, Any]] = mapped_column(JSONB)
    # Bumped by every edit: a simulation, an approval and a promotion name the revision.
    revision: Mapped[int] = mapped_column(Integer, default=1)
    scope_asset_class: Mapped[str] = mapped_column(
        String(100), ForeignKey("trust_asset_classes.name", ondelete="RESTRICT")
    )
    scope_lane: Mapped[str] = mapped_column(String(100))
    # {"names": [glob, ...]}: the assets of the class and lane it covers ([]: all of them).
    scope_selector: Mapped[dict[str, Any]] = mapped_column(JSONB, default=dict)
    active_runs: Mapped[str] = mapped_column(String(20), default=ActiveRuns.RELINK.value)
    state: Mapped[str] = mapped_column(String(30), default=WorkspaceState.DRAFT.value)
    version: Mapped[int] = mapped_column(Integer, nullable=False)
    # The newest simulation: its number, the revision it ran, its job, and its outcome.
    simulation: Mapped[int] = mapped_column(Integer, default=0)
    simulated_revision: Mapped[int | None] = mapped_column(Integer)
    simulation_job_id: Mapped[uuid.UUID | None] = mapped_column(Uuid)
    simulation_result: Mapped[dict[str, Any]] = mapped_column(JSONB, default=dict)
    approved_revision: Mapped[int | None] = mapped_column(Integer)
    approved_by: Mapped[str | None] = mapped_column(String(200))
    approved_at: Mapped[datetime | None] = mapped_column(DateTime(timezone=True))
    # The version a promotion made, and when the runs it affects were all handled.
    promoted_playbook_id: Mapped[uuid.UUID | None] = mapped_column(
        Uuid, ForeignKey("remediation_playbooks.id", ondelete="RESTRICT")
    )
    promoted_at: Mapped[datetime | None] = mapped_column(DateTime(timezone=True))
    promoted_by: Mapped[str | None] = mapped_column(String(200))
    loop_finished_at: Mapped[datetime | None] = mapped_column(DateTime(timezone=True))
    reason: Mapped[str] = mapped_column(Text, default="")
    created_by: Mapped[str] = mapped_column(String(200))
    created_at: Mapped[datetime] = mapped_column(DateTime(timezone=True), server_default=func.now())
    updated_at: Mapped[datetime] = mapped_column(
        DateTime(timezone=True), server_default=func.now(), onupdate=func.now()
    )

    __mapper_args__ = {"version_id_col": version}  # noqa: RUF012 (SQLAlchemy reads a dict)
    __table_args__ = (
        UniqueConstraint("tenant", "name"),
        CheckConstraint(sql_in_list("state", tuple(WorkspaceState)), name="state"),
        CheckConstraint(sql_in_list("active_runs", tuple(ActiveRuns)), name="active_runs"),
        CheckConstraint("revision > 0", name="revision"),
        # The sweep finishes promotion loops a lost worker left unfinished.
        Index(
            "ix_remediation_workspaces_loop_pending",
            "promoted_at",
            postgresql_where=text("state = 'promoted' AND loop_finished_at IS NULL"),
        ),
    )


class RemediationWorkspaceEvent(Base):
    """What happened to a workspace, in order: edits, simulations, gates, the promotion and
    every run it created, refreshed or skipped. Append-only (migration 0019's trigger)."""

    __tablename__ = "remediation_workspace_events"

    id: Mapped[int] = mapped_column(BigInteger, primary_key=True, autoincrement=True)
    workspace_id: Mapped[uuid.UUID] = mapped_column(
        Uuid, ForeignKey("remediation_workspaces.id", ondelete="RESTRICT")
    )
    tenant: Mapped[str] = mapped_column(String(100))
    action: Mapped[str] = mapped_column(String(30))
    actor: Mapped[str] = mapped_column(String(200))
    revision: Mapped[int] = mapped_column(Integer)
    # The asset a promotion-loop event is about.
    asset_id: Mapped[uuid.UUID | None] = mapped_column(Uuid)
    detail: Mapped[dict[str, Any]] = mapped_column(JSONB, default=dict)
    at: Mapped[datetime] = mapped_column(DateTime(timezone=True), server_default=func.now())

    __table_args__ = (
        CheckConstraint(sql_in_list("action", tuple(WorkspaceAction)), name="action"),
        Index(None, "workspace_id", "id"),
        # One loop event per asset and workspace (a workspace is promoted once): a loop run
        # again (a redelivered job, the sweep) records each asset once.
        Index(
            "uq_remediation_workspace_events_loop_asset",
            "workspace_id",
            "asset_id",
            unique=True,
            postgresql_where=text(sql_in_list("action", LOOP_ACTIONS)),
        ),
    )


class RemediationSimulationStep(KeptStepColumns, Base):
    """One step of one simulation, kept as a run's step is (its diff among its outputs)."""

    __tablename__ = "remediation_simulation_steps"

    id: Mapped[int] = mapped_column(BigInteger, primary_key=True, autoincrement=True)
    workspace_id: Mapped[uuid.UUID] = mapped_column(
        Uuid, ForeignKey("remediation_workspaces.id", ondelete="RESTRICT")
    )
    simulation: Mapped[int] = mapped_column(Integer)
    step_index: Mapped[int] = mapped_column(Integer)

    __table_args__ = (UniqueConstraint("workspace_id", "simulation", "step_index"),)


class RemediationActivation(Base):
    """The version of a playbook a scope runs, made by a promotion. A run requested for an
    asset the scope covers uses it; elsewhere the newest version made outside workspaces runs."""

    __tablename__ = "remediation_activations"

    id: Mapped[uuid.UUID] = mapped_column(Uuid, primary_key=True, default=uuid.uuid4)
    tenant: Mapped[str] = mapped_column(String(100))
    playbook_name: Mapped[str] = mapped_column(String(100))
    asset_class: Mapped[str] = mapped_column(String(100))
    lane: Mapped[str] = mapped_column(String(100))
    # The scope's selector as canonical JSON: one activation per exact scope.
    selector_key: Mapped[str] = mapped_column(Text)
    selector: Mapped[dict[str, Any]] = mapped_column(JSONB)
    playbook_id: Mapped[uuid.UUID] = mapped_column(
        Uuid, ForeignKey("remediation_playbooks.id", ondelete="RESTRICT")
    )
    playbook_version: Mapped[int] = mapped_column(Integer)
    # The one before it (still readable: versions are never changed).
    previous_playbook_id: Mapped[uuid.UUID | None] = mapped_column(
        Uuid, ForeignKey("remediation_playbooks.id", ondelete="RESTRICT")
    )
    workspace_id: Mapped[uuid.UUID] = mapped_column(
        Uuid, ForeignKey("remediation_workspaces.id", ondelete="RESTRICT")
    )
    activated_at: Mapped[datetime] = mapped_column(
        DateTime(timezone=True), server_default=func.now()
    )
    activated_by: Mapped[str] = mapped_column(String(200))

    __table_args__ = (
        UniqueConstraint("tenant", "playbook_name", "asset_class", "lane", "selector_key"),
    )


class WorkspaceNotFoundError(NotFoundError):
    def __init__(self, tenant: str, name: str) -> None:
        super().__init__(f"tenant {tenant} has no remediation workspace {name}")


class WorkspaceConflictError(DrydockError):
    """The workspace is not in a state that allows this, or changed under the caller."""


# -- scopes ------------------------------------------------------------------------------------


def selector_key(selector: dict[str, Any]) -> str:
    return orjson.dumps(selector, option=orjson.OPT_SORT_KEYS).decode()


def selector_matches(selector: dict[str, Any], asset_name: str) -> bool:
    names = selector.get("names") or []
    return not names or any(fnmatch.fnmatchcase(asset_name, pattern) for pattern in names)


def assets_in_scope(session: Session, workspace: RemediationWorkspace) -> list[TrustAsset]:
    """The tenant's assets of the workspace's class and lane that its selector matches, by id
    (the promotion loop's order, so two loops meet the assets in one order)."""
    assets = session.scalars(
        select(TrustAsset)
        .where(
            TrustAsset.tenant == workspace.tenant,
            TrustAsset.asset_class == workspace.scope_asset_class,
            TrustAsset.lane == workspace.scope_lane,
        )
        .order_by(TrustAsset.id)
    ).all()
    return [a for a in assets if selector_matches(workspace.scope_selector, a.name)]


# -- workspaces --------------------------------------------------------------------------------


def get_workspace(
    session: Session, tenant: str, name: str, *, lock: bool = False
) -> RemediationWorkspace:
    query = select(RemediationWorkspace).where(
        RemediationWorkspace.tenant == tenant, RemediationWorkspace.name == name
    )
    if lock:
        query = query.with_for_update().execution_options(populate_existing=True)
    workspace = session.scalars(query).first()
    if workspace is None:
        raise WorkspaceNotFoundError(tenant, name)
    return workspace


def workspace_by_id(
    session: Session, workspace_id: uuid.UUID, *, lock: bool = False
) -> RemediationWorkspace | None:
    return session.get(
        RemediationWorkspace, workspace_id, with_for_update=lock, populate_existing=lock
    )


def list_workspaces(
    session: Session, tenant: str | None, states: Sequence[str] = (), limit: int = 100
) -> list[RemediationWorkspace]:
    query = select(RemediationWorkspace).order_by(RemediationWorkspace.updated_at.desc())
    if tenant is not None:
        query = query.where(RemediationWorkspace.tenant == tenant)
    if states:
        query = query.where(RemediationWorkspace.state.in_(list(states)))
    return list(session.scalars(query.limit(limit)))


def loops_pending(session: Session, older_than: datetime, limit: int) -> list[uuid.UUID]:
    """Promoted workspaces whose promotion loop has not finished (its job was lost)."""
    return list(
        session.scalars(
            select(RemediationWorkspace.id)
            .where(
                RemediationWorkspace.state == WorkspaceState.PROMOTED.value,
                RemediationWorkspace.loop_finished_at.is_(None),
                RemediationWorkspace.promoted_at <= older_than,
            )
            .order_by(RemediationWorkspace.promoted_at)
            .limit(limit)
        )
    )


def record(
    session: Session,
    workspace: RemediationWorkspace,
    action: WorkspaceAction,
    actor: str,
    *,
    asset_id: uuid.UUID | None = None,
    **detail: Any,
) -> bool:
    """Add a history event (announced on the watch stream at commit). A promotion-loop event
    for an asset already recorded is not added again: False."""
    values = {
        "workspace_id": workspace.id,
        "tenant": workspace.tenant,
        "action": action.value,
        "actor": actor,
        "revision": workspace.revision,
        "asset_id": asset_id,
        "detail": detail,
    }
    statement = insert(RemediationWorkspaceEvent).values(**values)
    if action in LOOP_ACTIONS:
        statement = statement.on_conflict_do_nothing(
            index_elements=["workspace_id", "asset_id"],
            index_where=text(sql_in_list("action", LOOP_ACTIONS)),
        )
    event_id = session.scalar(statement.returning(RemediationWorkspaceEvent.id))
    if event_id is None:
        return False
    data = {
        "event_id": event_id,
        "workspace": workspace.name,
        "workspace_id": str(workspace.id),
        "playbook": workspace.playbook_name,
        "revision": workspace.revision,
        "action": action.value,
        "actor": actor,
        "asset_id": str(asset_id) if asset_id else None,
        "detail": detail,
    }

    def with_state() -> dict[str, Any]:
        # Read at commit: the state this transaction left the workspace in.
        return {**data, "state": workspace.state}

    stream.stage(
        session, stream.StreamEventKind.REMEDIATION_WORKSPACE, workspace.tenant, with_state
    )
    return True


def history(session: Session, workspace_id: uuid.UUID) -> list[RemediationWorkspaceEvent]:
    return list(
        session.scalars(
            select(RemediationWorkspaceEvent)
            .where(RemediationWorkspaceEvent.workspace_id == workspace_id)
            .order_by(RemediationWorkspaceEvent.id)
        )
    )


def keep_step(
    session: Session, workspace_id: uuid.UUID, simulation: int, step_index: int, fields: Any
) -> None:
    """Keep one simulated step; one already kept for this simulation is left as it is."""
    session.execute(
        insert(RemediationSimulationStep)
        .values(workspace_id=workspace_id, simulation=simulation, step_index=step_index, **fields)
        .on_conflict_do_nothing(index_elements=["workspace_id", "simulation", "step_index"])
    )


def simulation_steps(
    session: Session, workspace_id: uuid.UUID, simulation: int
) -> Sequence[RemediationSimulationStep]:
    return session.scalars(
        select(RemediationSimulationStep)
        .where(
            RemediationSimulationStep.workspace_id == workspace_id,
            RemediationSimulationStep.simulation == simulation,
        )
        .order_by(RemediationSimulationStep.step_index)
    ).all()


# -- lanes and freezes -------------------------------------------------------------------------


def get_lane(session: Session, tenant: str, name: str) -> RemediationLane | None:
    return session.get(RemediationLane, (tenant, name))


def put_lane(
    session: Session, tenant: str, name: str, *, protected: bool, description: str, by: str
) -> RemediationLane:
    session.execute(
        insert(RemediationLane)
        .values(
            tenant=tenant, name=name, protected=protected, description=description, updated_by=by
        )
        .on_conflict_do_update(
            index_elements=["tenant", "name"],
            set_={
                "protected": protected,
                "description": description,
                "updated_by": by,
                "updated_at": func.now(),
            },
        )
    )
    lane = session.get(RemediationLane, (tenant, name), populate_existing=True)
    assert lane is not None
    return lane


def list_lanes(session: Session, tenant: str | None) -> list[RemediationLane]:
    query = select(RemediationLane).order_by(RemediationLane.tenant, RemediationLane.name)
    if tenant is not None:
        query = query.where(RemediationLane.tenant == tenant)
    return list(session.scalars(query))


def freezes_over(
    session: Session, tenant: str, lane: str, asset_class: str, now: datetime
) -> list[RemediationFreeze]:
    """The freezes in force now that cover the lane and asset class."""
    return list(
        session.scalars(
            select(RemediationFreeze)
            .where(
                RemediationFreeze.tenant == tenant,
                RemediationFreeze.lifted_at.is_(None),
                RemediationFreeze.starts_at <= now,
                or_(RemediationFreeze.ends_at.is_(None), RemediationFreeze.ends_at > now),
                or_(RemediationFreeze.lane.is_(None), RemediationFreeze.lane == lane),
                or_(
                    RemediationFreeze.asset_class.is_(None),
                    RemediationFreeze.asset_class == asset_class,
                ),
            )
            .order_by(RemediationFreeze.starts_at)
        )
    )


def list_freezes(
    session: Session, tenant: str | None, *, include_past: bool, now: datetime
) -> list[RemediationFreeze]:
    query = select(RemediationFreeze).order_by(RemediationFreeze.starts_at.desc()).limit(200)
    if tenant is not None:
        query = query.where(RemediationFreeze.tenant == tenant)
    if not include_past:
        query = query.where(
            RemediationFreeze.lifted_at.is_(None),
            or_(RemediationFreeze.ends_at.is_(None), RemediationFreeze.ends_at > now),
        )
    return list(session.scalars(query))


# -- activations -------------------------------------------------------------------------------


def activation_of(
    session: Session, tenant: str, playbook_name: str, asset: TrustAsset
) -> RemediationActivation | None:
    """The activation that covers ``asset`` for the playbook (the newest, when several
    selectors match it); None when no promotion covers it."""
    if asset.asset_class is None or asset.lane is None:
        return None
    candidates = session.scalars(
        select(RemediationActivation)
        .where(
            RemediationActivation.tenant == tenant,
            RemediationActivation.playbook_name == playbook_name,
            RemediationActivation.asset_class == asset.asset_class,
            RemediationActivation.lane == asset.lane,
        )
        .order_by(RemediationActivation.activated_at.desc(), RemediationActivation.id)
    ).all()
    return next((a for a in candidates if selector_matches(a.selector, asset.name)), None)


def activate(
    session: Session,
    workspace: RemediationWorkspace,
    playbook: RemediationPlaybook,
    actor: str,
) -> uuid.UUID | None:
    """Make ``playbook`` the version the workspace's scope runs; the version it replaces (None
    when the scope had none of its own)."""
    key = selector_key(workspace.scope_selector)
    current = session.scalars(
        select(RemediationActivation)
        .where(
            RemediationActivation.tenant == workspace.tenant,
            RemediationActivation.playbook_name == playbook.name,
            RemediationActivation.asset_class == workspace.scope_asset_class,
            RemediationActivation.lane == workspace.scope_lane,
            RemediationActivation.selector_key == key,
        )
        .with_for_update()
    ).first()
    previous = current.playbook_id if current is not None else None
    if current is None:
        current = RemediationActivation(
            tenant=workspace.tenant,
            playbook_name=playbook.name,
            asset_class=workspace.scope_asset_class,
            lane=workspace.scope_lane,
            selector_key=key,
            selector=workspace.scope_selector,
        )
        session.add(current)
    current.playbook_id = playbook.id
    current.playbook_version = playbook.version
    current.previous_playbook_id = previous
    current.workspace_id = workspace.id
    current.activated_by = actor
    current.activated_at = datetime.now(UTC)
    session.flush()
    return previous


def playbook_for_asset(
    session: Session, tenant: str, name: str, asset: TrustAsset
) -> RemediationPlaybook:
    """The version of the tenant's playbook that runs against ``asset``: its scope's active
    version when a promotion covers it, else the newest version made outside workspaces."""
    activation = activation_of(session, tenant, name, asset)
    if activation is not None:
        book = session.get(RemediationPlaybook, activation.playbook_id)
        assert book is not None  # a foreign key
        return book
    book = session.scalars(
        select(RemediationPlaybook)
        .where(
            RemediationPlaybook.tenant == tenant,
            RemediationPlaybook.name == name,
            RemediationPlaybook.scoped.is_(False),
        )
        .order_by(RemediationPlaybook.version.desc())
        .limit(1)
    ).first()
    if book is None:
        raise PlaybookNotFoundError(tenant, name)
    return book

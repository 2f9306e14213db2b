"""What governs workspace promotions: a tenant's lanes (protected or not), the freezes that stop
promotion into a scope for a while, and the lane each asset is in."""

from __future__ import annotations

import re
import uuid
from datetime import UTC, datetime
from typing import Any

from sqlalchemy.orm import Session

from kernel.errors import FieldProblem, NotFoundError
from models import remediation_workspaces as spaces
from models import trust
from models.db import session_scope
from models.remediation_workspaces import (
    RemediationFreeze,
    RemediationLane,
    WorkspaceConflictError,
)
from models.trust import Move, TrustAsset
from tasks.remediation.playbooks import NAME_PATTERN
from tasks.remediation.run_records import check_tenant, iso_time
from tasks.remediation.workspaces import WorkspaceInvalidError

MAX_REASON = 2000


def _check_lane_name(name: str, field: str = "lane") -> None:
    if not re.fullmatch(NAME_PATTERN, name):
        raise WorkspaceInvalidError(
            [FieldProblem(field, "lower-case letters, digits, '_', '.', '-'; at most 100")]
        )


def lane_json(lane: RemediationLane) -> dict[str, Any]:
    return {
        "tenant": lane.tenant,
        "name": lane.name,
        "protected": lane.protected,
        "description": lane.description,
        "updated_at": iso_time(lane.updated_at),
        "updated_by": lane.updated_by,
    }


def put_lane(
    *, tenant: str, name: str, protected: bool, description: str, actor: str
) -> dict[str, Any]:
    """Make or change a lane: a protected lane's promotions need an approval."""
    check_tenant(tenant)
    _check_lane_name(name, "name")
    if len(description) > MAX_REASON:
        raise WorkspaceInvalidError([FieldProblem("description", f"at most {MAX_REASON}")])
    with session_scope() as session:
        lane = spaces.put_lane(
            session, tenant, name, protected=protected, description=description, by=actor
        )
        return lane_json(lane)


def list_lanes(*, tenant: str | None) -> list[dict[str, Any]]:
    with session_scope() as session:
        return [lane_json(lane) for lane in spaces.list_lanes(session, tenant)]


def freeze_json(freeze: RemediationFreeze, now: datetime | None = None) -> dict[str, Any]:
    now = now or datetime.now(UTC)
    in_force = (
        freeze.lifted_at is None
        and freeze.starts_at <= now
        and (freeze.ends_at is None or freeze.ends_at > now)
    )
    return {
        "id": str(freeze.id),
        "tenant": freeze.tenant,
        "lane": freeze.lane,
        "asset_class": freeze.asset_class,
        "reason": freeze.reason,
        "starts_at": iso_time(freeze.starts_at),
        "ends_at": iso_time(freeze.ends_at),
        "in_force": in_force,
        "created_by": freeze.created_by,
        "lifted_at": iso_time(freeze.lifted_at),
        "lifted_by": freeze.lifted_by,
    }


def add_freeze(
    *,
    tenant: str,
    lane: str | None,
    asset_class: str | None,
    reason: str,
    starts_at: datetime | None,
    ends_at: datetime | None,
    actor: str,
) -> dict[str, Any]:
    """Stop promotions into a lane, an asset class, both, or (neither named) the tenant."""
    check_tenant(tenant)
    if not reason.strip() or len(reason) > MAX_REASON:
        raise WorkspaceInvalidError(
            [FieldProblem("reason", f"say why, in 1 to {MAX_REASON} characters")]
        )
    start = (starts_at or datetime.now(UTC)).astimezone(UTC)
    # Refused as conflicts (409): well formed, but a window that covers nothing, or a lane that
    # does not exist.
    if ends_at is not None and ends_at.astimezone(UTC) <= start:
        raise WorkspaceConflictError(
            f"a freeze ending at {ends_at.isoformat()} ends before it starts: it covers nothing"
        )
    with session_scope() as session:
        if lane is not None and spaces.get_lane(session, tenant, lane) is None:
            raise WorkspaceConflictError(f"tenant {tenant} has no lane {lane!r}")
        freeze = RemediationFreeze(
            tenant=tenant,
            lane=lane,
            asset_class=asset_class,
            reason=reason,
            starts_at=start,
            ends_at=ends_at,
            created_by=actor,
        )
        session.add(freeze)
        session.flush()
        return freeze_json(freeze)


def list_freezes(*, tenant: str | None, include_past: bool) -> list[dict[str, Any]]:
    now = datetime.now(UTC)
    with session_scope() as session:
        return [
            freeze_json(freeze, now)
            for freeze in spaces.list_freezes(session, tenant, include_past=include_past, now=now)
        ]


def lift_freeze(freeze_id: uuid.UUID, *, tenant: str | None, actor: str) -> dict[str, Any]:
    with session_scope() as session:
        freeze = session.get(RemediationFreeze, freeze_id, with_for_update=True)
        if freeze is None or (tenant is not None and freeze.tenant != tenant):
            raise FreezeNotFoundError(freeze_id)
        if freeze.lifted_at is not None:
            raise WorkspaceConflictError(f"freeze {freeze_id} was lifted already")
        freeze.lifted_at = datetime.now(UTC)
        freeze.lifted_by = actor
        return freeze_json(freeze)


class FreezeNotFoundError(NotFoundError):
    def __init__(self, freeze_id: uuid.UUID) -> None:
        super().__init__(f"no remediation freeze {freeze_id}")


def set_asset_lane(*, tenant: str, asset: str, lane: str | None, actor: str) -> str:
    """Put an asset in a lane (None: in none): the workspace promotions of that lane cover it."""
    check_tenant(tenant)
    with session_scope() as session:
        if lane is not None and spaces.get_lane(session, tenant, lane) is None:
            raise WorkspaceConflictError(f"tenant {tenant} has no lane {lane!r}")
        target = trust.find_asset(session, asset, tenant)
        asset_id, name = target.id, f"{target.tenant}/{target.name}"

    def plan(session: Session, row: TrustAsset) -> list[Move]:
        row.lane = lane
        return []

    trust.transition(asset_id, plan, actor=actor)
    return name

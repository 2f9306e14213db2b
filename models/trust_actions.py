"""What operators do to the trust registry by hand, and how they read it page by page.

A hand move names the asset version it was decided on (HTTP ``If-Match``): when the asset has
moved since, the move is refused with the version it has now, never applied to a state the
operator did not see. Only two moves are an operator's: quarantine (take it out of service) and
attest again (doubt its evidence). Everything else is decided by evidence and remediation: a
quarantined asset is released only by a remediation run.
"""

from __future__ import annotations

import uuid
from collections.abc import Sequence

from sqlalchemy import select
from sqlalchemy.orm import Session

from kernel.errors import DrydockError
from models import trust
from models.trust import Move, TransitionRecord, TrustAsset, TrustState

# The states an operator may move an asset to, and the cause recorded for each.
OPERATOR_MOVES: dict[TrustState, str] = {
    TrustState.QUARANTINED: "operator_quarantine",
    TrustState.PENDING_ATTESTATION: "operator_reattest",
}


class VersionMismatchError(DrydockError):
    """The asset is no longer at the version the move was decided on."""

    def __init__(self, asset: str, expected: int, current: int) -> None:
        super().__init__(
            f"asset {asset} is at version {current}, not {expected}: it moved since it was "
            "read; read it again and decide on what it is now"
        )
        self.current = current


class NotAnOperatorMoveError(DrydockError):
    def __init__(self, to_state: TrustState) -> None:
        allowed = ", ".join(sorted(OPERATOR_MOVES))
        super().__init__(
            f"an operator moves an asset to {allowed} only, not to {to_state.value}: evidence "
            "and remediation decide the rest"
        )


def move_by_operator(
    asset_id: uuid.UUID,
    to_state: TrustState,
    *,
    reason: str,
    actor: str,
    expected_version: int | None,
) -> list[TransitionRecord]:
    """Move the asset to ``to_state`` if it is still at ``expected_version`` (None: whatever
    version it is at). Raises VersionMismatchError, or IllegalTransitionError for an edge the
    lifecycle does not have from the state it is in."""
    cause = OPERATOR_MOVES.get(to_state)
    if cause is None:
        raise NotAnOperatorMoveError(to_state)

    def plan(session: Session, asset: TrustAsset) -> Sequence[Move]:
        # On the fresh read of each attempt: a race lost in between is judged on the new version.
        if expected_version is not None and asset.version != expected_version:
            raise VersionMismatchError(
                f"{asset.tenant}/{asset.name}", expected_version, asset.version
            )
        return [Move(to_state, cause, reason)]

    return trust.transition(asset_id, plan, actor=actor)


def list_assets(
    session: Session,
    *,
    tenant: str | None,
    state: TrustState | None = None,
    kind: trust.AssetKind | None = None,
    asset_class: str | None = None,
    limit: int = 50,
    offset: int = 0,
) -> Sequence[TrustAsset]:
    """Assets by tenant and name."""
    query = select(TrustAsset).order_by(TrustAsset.tenant, TrustAsset.name)
    if tenant is not None:
        query = query.where(TrustAsset.tenant == tenant)
    if state is not None:
        query = query.where(TrustAsset.state == state.value)
    if kind is not None:
        query = query.where(TrustAsset.kind == kind.value)
    if asset_class is not None:
        query = query.where(TrustAsset.asset_class == asset_class)
    return session.scalars(query.limit(limit).offset(offset)).all()


def visible_asset(session: Session, asset_id: uuid.UUID, tenant: str | None) -> TrustAsset:
    """The asset, if ``tenant`` (None: any) may see it; another tenant's is not found."""
    asset = session.get(TrustAsset, asset_id)
    if asset is None or (tenant is not None and asset.tenant != tenant):
        raise trust.AssetNotFoundError(str(asset_id))
    return asset

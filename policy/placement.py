"""Placement decisions: gather the facts from the store, let the engine decide, record it."""

from __future__ import annotations

from datetime import UTC, datetime

from sqlalchemy.orm import Session

from models.policy import (
    PlacementRequest,
    PolicyDecision,
    PolicyDecisionKind,
    placement_facts,
    record_decision,
)
from policy import engine


def decide_placement(
    session: Session, request: PlacementRequest, *, actor: str, now: datetime | None = None
) -> PolicyDecision:
    """Gather the facts, decide, and record the decision (announced on commit)."""
    facts = placement_facts(session, request, now or datetime.now(UTC))
    return record_decision(
        session,
        PolicyDecisionKind.PLACEMENT,
        engine.decide_placement(facts),
        request=request.as_json(),
        tenant=request.tenant,
        actor=actor,
    )

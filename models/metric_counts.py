"""Counts across the domains' tables for ``/metrics``: trust assets, remediation runs,
credential probes and policy denials. Each is one GROUP BY, cheap enough per scrape (the
scrape is cached); the labels are enums (states, gates, kinds) or operator-defined names
(asset classes, registry hosts), so their cardinality stays bounded."""

from __future__ import annotations

from dataclasses import dataclass

from sqlalchemy import Boolean, column, false, func, select, true
from sqlalchemy.dialects.postgresql import JSONB
from sqlalchemy.orm import Session

from models.credentials import CredentialEvent, CredentialEventKind
from models.policy import PolicyDecision
from models.remediation import RemediationRun
from models.trust import TrustAsset

# The credential events that are probe outcomes (the rest are rotations and pull secrets).
PROBE_EVENT_KINDS = (
    CredentialEventKind.PROBE_ACCEPTED,
    CredentialEventKind.PROBE_REFUSED,
    CredentialEventKind.PROBE_FAILED,
)


@dataclass(frozen=True)
class TrustAssetCount:
    # The asset's class, "" for one without.
    asset_class: str
    state: str
    count: int


@dataclass(frozen=True)
class GateDenialCount:
    gate: str
    decision_kind: str
    count: int


def trust_asset_counts(session: Session) -> list[TrustAssetCount]:
    """Assets by class and trust state."""
    asset_class = func.coalesce(TrustAsset.asset_class, "")
    rows = session.execute(
        select(asset_class, TrustAsset.state, func.count()).group_by(asset_class, TrustAsset.state)
    ).all()
    return [TrustAssetCount(c, s, int(n)) for c, s, n in rows]


def remediation_run_counts(session: Session) -> dict[str, int]:
    """Remediation runs by state."""
    rows = session.execute(
        select(RemediationRun.state, func.count()).group_by(RemediationRun.state)
    ).all()
    return {state: int(n) for state, n in rows}


def credential_probe_counts(session: Session) -> list[tuple[str, str, int]]:
    """(registry host, probe outcome event kind, count) of every credential probe recorded."""
    rows = session.execute(
        select(CredentialEvent.host, CredentialEvent.kind, func.count())
        .where(CredentialEvent.kind.in_([k.value for k in PROBE_EVENT_KINDS]))
        .group_by(CredentialEvent.host, CredentialEvent.kind)
    ).all()
    return [(host, kind, int(n)) for host, kind, n in rows]


def gate_denial_counts(session: Session) -> list[GateDenialCount]:
    """Decisions by kind with each gate that failed in them: a decision two gates refused
    counts once for each."""
    gate = func.jsonb_array_elements(PolicyDecision.gates).table_valued(column("value", JSONB))
    name = gate.c.value["gate"].astext
    failed = gate.c.value["passed"].astext.cast(Boolean) == false()
    rows = session.execute(
        select(name, PolicyDecision.kind, func.count())
        .select_from(PolicyDecision)
        .join(gate, true())
        .where(failed)
        .group_by(name, PolicyDecision.kind)
    ).all()
    return [GateDenialCount(g, k, int(n)) for g, k, n in rows]

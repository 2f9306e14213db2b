"""The policy engine's vocabulary: the facts it decides on and the decisions it gives, gate by
gate. Plain data with no clock, database or broker, so the store (``models.policy``) records
decisions and gathers facts without importing the engine (``policy.engine``) that makes them.
"""

from __future__ import annotations

import uuid
from collections.abc import Sequence
from dataclasses import dataclass, field
from datetime import datetime
from enum import StrEnum
from typing import Any


class GateName(StrEnum):
    TRUST_STATE = "trust_state"
    ACCELERATOR_POSTURE = "accelerator_posture"
    EVALUATION_FRESHNESS = "evaluation_freshness"
    ACTIVE_REMEDIATION = "active_remediation"
    ANOMALY_SCORE = "anomaly_score"
    TENANT_RULES = "tenant_rules"
    TASK_KIND = "task_kind"
    TARGET_TRUST = "target_trust"
    PROTECTED_TARGET = "protected_target"
    HOST_TRUST = "host_trust"
    BACKEND_CAPABILITY = "backend_capability"
    # Promotions and rollouts of runtime releases.
    CERTIFICATION = "certification"
    APPROVAL = "approval"
    PROBE_ANALYSIS = "probe_analysis"
    # A rollout's new instance could not be placed (its instance's reason names the gates).
    PLACEMENT = "placement"
    # Promotions of remediation workspaces.
    SIMULATION = "simulation"
    FREEZE = "freeze"


@dataclass(frozen=True)
class Gate:
    name: GateName
    passed: bool
    reason: str

    def as_json(self) -> dict[str, Any]:
        return {"gate": self.name.value, "passed": self.passed, "reason": self.reason}


@dataclass(frozen=True)
class Decision:
    allowed: bool
    gates: tuple[Gate, ...]

    @classmethod
    def of(cls, gates: Sequence[Gate]) -> Decision:
        return cls(allowed=all(g.passed for g in gates), gates=tuple(gates))

    @property
    def failing(self) -> tuple[Gate, ...]:
        return tuple(g for g in self.gates if not g.passed)

    @property
    def summary(self) -> str:
        if self.allowed:
            return "allowed"
        return "; ".join(f"{g.name.value}: {g.reason}" for g in self.failing)

    def gates_json(self) -> list[dict[str, Any]]:
        return [g.as_json() for g in self.gates]


# ---- facts ---------------------------------------------------------------------------------------


@dataclass(frozen=True)
class AssetFacts:
    id: uuid.UUID
    tenant: str
    name: str
    kind: str
    state: str
    evidence_expires_at: datetime | None
    protected: bool = False

    @property
    def label(self) -> str:
        return f"{self.tenant}/{self.name}"


@dataclass(frozen=True)
class CertificationFacts:
    id: uuid.UUID
    status: str
    expires_at: datetime | None
    evaluated_at: datetime
    summary: str


@dataclass(frozen=True)
class ScoreFacts:
    metric: str
    value: float
    flagged: bool


@dataclass(frozen=True)
class TenantRules:
    # Task-name patterns the tenant may enqueue; None: any.
    allowed_tasks: tuple[str, ...] | None = None
    # Tiers the tenant may place at; None: any.
    allowed_tiers: tuple[str, ...] | None = None


@dataclass(frozen=True)
class PlacementFacts:
    """Everything the placement gates read, gathered at one instant ``now``."""

    now: datetime
    digest: str
    tier: str
    tenant: str
    # None: no such asset.
    asset: AssetFacts | None
    accelerators: tuple[AssetFacts, ...] = ()
    # Accelerators asked for (id or name) that do not exist.
    unknown_accelerators: tuple[str, ...] = ()
    # The newest evaluation of the digest at the tier; None: never evaluated.
    certification: CertificationFacts | None = None
    # Ids of the asset's pending, queued or running remediation runs.
    active_remediations: tuple[uuid.UUID, ...] = ()
    # The digest's repository (from the build ledger) and its scores; None: not built here.
    repository: str | None = None
    scores: tuple[ScoreFacts, ...] = ()
    rules: TenantRules = field(default_factory=TenantRules)


# ---- admission facts -------------------------------------------------------------------------


class TokenCheck(StrEnum):
    """What became of the approval token presented with a job, checked by the caller."""

    NONE = "none"
    VALID = "valid"
    INVALID = "invalid"


@dataclass(frozen=True)
class AdmissionFacts:
    task_name: str
    tenant: str | None
    rules: TenantRules = field(default_factory=TenantRules)
    # The asset the job is bound to, as the caller named it (id or name), and what it names:
    # None with a reference given means no such asset.
    target_ref: str | None = None
    target: AssetFacts | None = None
    token: TokenCheck = TokenCheck.NONE
    # Why a presented token was refused (forged, expired, another task or asset...).
    token_problem: str = ""

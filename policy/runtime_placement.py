"""Where a release of an MCP server runs: a target chosen by capability, then judged by the
placement gates, in one recorded decision.

Targets are tried in their order (priority, then name). One that cannot run the server at all
(no platform of the release, weaker isolation than asked, no confidential computing when it is
needed, no matching accelerator) is passed over; a capable one is judged by the policy engine's
placement gates (``policy.engine.decide_placement``: trust, accelerators, evaluation freshness,
remediation, anomaly scores, tenant rules) on its trust asset. The first allowed wins. The
decision recorded names every target passed over and why (the ``backend_capability`` gate and
the request's ``selection``), and carries the placement gates of the chosen target, or, when
none was allowed, of the most preferred capable one: a denial names the gates that failed.
"""

from __future__ import annotations

import fnmatch
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

from sqlalchemy.orm import Session

from kernel.decisions import Decision, Gate, GateName
from models.policy import (
    PlacementRequest,
    PolicyDecision,
    PolicyDecisionKind,
    placement_facts,
    record_decision,
)
from models.runtime import ISOLATION_RANK, Isolation, RuntimeTarget
from policy import engine


@dataclass(frozen=True)
class ServerNeeds:
    """What a launch needs of a target."""

    # The release's platforms (os/arch): the target must run one of them.
    platforms: tuple[str, ...]
    isolation: Isolation = Isolation.CONTAINER
    confidential: bool = False
    # An fnmatch pattern of accelerator asset names the target must offer one of; None: none.
    accelerator: str | None = None
    # Only this target (the operator pinned it).
    target: str | None = None

    def as_json(self) -> dict[str, Any]:
        return {
            "platforms": list(self.platforms),
            "isolation": self.isolation.value,
            "confidential": self.confidential,
            "accelerator": self.accelerator,
            "target": self.target,
        }


@dataclass(frozen=True)
class Placement:
    decision: PolicyDecision
    # None: denied.
    target: RuntimeTarget | None


def capability_problems(target: RuntimeTarget, needs: ServerNeeds) -> list[str]:
    """Why ``target`` cannot run a server with these needs (empty: it can)."""
    problems = []
    if needs.target is not None and target.name != needs.target:
        problems.append(f"not the target asked for ({needs.target})")
    if not set(needs.platforms) & set(target.platforms):
        problems.append(
            f"runs {', '.join(target.platforms) or 'no platform'}, "
            f"the release is {', '.join(needs.platforms)}"
        )
    if ISOLATION_RANK[Isolation(target.isolation)] < ISOLATION_RANK[needs.isolation]:
        problems.append(f"isolation {target.isolation}, {needs.isolation.value} needed")
    if needs.confidential and not target.confidential:
        problems.append("no confidential computing")
    if needs.accelerator is not None and _accelerator(target, needs.accelerator) is None:
        problems.append(f"no accelerator matching {needs.accelerator}")
    return problems


def _accelerator(target: RuntimeTarget, pattern: str) -> str | None:
    return next((a for a in target.accelerators if fnmatch.fnmatchcase(a, pattern)), None)


def place_release(
    session: Session,
    *,
    tenant: str,
    digest: str,
    tier: str,
    needs: ServerNeeds,
    targets: Sequence[RuntimeTarget],
    actor: str,
    now: datetime | None = None,
) -> Placement:
    """Choose a target and record the decision (announced on commit)."""
    at = now or datetime.now(UTC)
    selection: list[dict[str, Any]] = []
    passed_over: list[str] = []
    chosen: RuntimeTarget | None = None
    judged: Decision | None = None
    for target in targets:
        problems = capability_problems(target, needs)
        if problems:
            selection.append(_entry(target, "incapable", "; ".join(problems)))
            passed_over.append(f"{target.name} ({'; '.join(problems)})")
            continue
        decision = engine.decide_placement(
            placement_facts(session, _request(session, target, tenant, digest, tier, needs), at)
        )
        if decision.allowed:
            selection.append(_entry(target, "chosen", "every placement gate passed"))
            chosen, judged = target, decision
            break
        selection.append(_entry(target, "denied", decision.summary))
        passed_over.append(f"{target.name} (denied: {decision.summary})")
        if judged is None:
            judged = decision
    capability = _capability_gate(chosen, judged is not None, passed_over, targets)
    gates = [capability, *(judged.gates if judged is not None else ())]
    final = Decision(allowed=chosen is not None, gates=tuple(gates))
    row = record_decision(
        session,
        PolicyDecisionKind.PLACEMENT,
        final,
        request={
            "digest": digest,
            "tier": tier,
            "tenant": tenant,
            "needs": needs.as_json(),
            "selection": selection,
            "target": chosen.name if chosen is not None else None,
        },
        tenant=tenant,
        actor=actor,
    )
    return Placement(decision=row, target=chosen)


def _request(
    session: Session,
    target: RuntimeTarget,
    tenant: str,
    digest: str,
    tier: str,
    needs: ServerNeeds,
) -> PlacementRequest:
    accelerators: tuple[str, ...] = ()
    if needs.accelerator is not None:
        name = _accelerator(target, needs.accelerator)
        accelerators = (name,) if name is not None else ()
    return PlacementRequest(
        digest=digest,
        tier=tier,
        # By id: another tenant's asset is found, and refused by the tenant_rules gate.
        asset=str(target.asset_id),
        tenant=tenant,
        accelerators=accelerators,
    )


def _entry(target: RuntimeTarget, outcome: str, reason: str) -> dict[str, Any]:
    return {"target": target.name, "backend": target.backend, "outcome": outcome, "reason": reason}


def _capability_gate(
    chosen: RuntimeTarget | None,
    any_capable: bool,
    passed_over: list[str],
    targets: Sequence[RuntimeTarget],
) -> Gate:
    name = GateName.BACKEND_CAPABILITY
    fallbacks = f"; passed over {', '.join(passed_over)}" if passed_over else ""
    if chosen is not None:
        return Gate(name, True, f"{chosen.name} ({chosen.backend}) chosen{fallbacks}")
    if not targets:
        return Gate(name, False, "no runtime target is enabled (`drydock runtime targets add`)")
    if any_capable:
        return Gate(name, True, f"no capable target was allowed{fallbacks}")
    return Gate(name, False, f"no target can run it{fallbacks}")

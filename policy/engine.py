"""The policy engine: placement and admission decisions from facts, with a reason per gate.

Pure: the caller gathers the facts (``models.policy.placement_facts`` and ``admission_facts``)
and records the decision; nothing here reads a clock, a database or a broker, so every rule is
tested by building facts. Every gate is always evaluated, so a denial names all that failed, not
just the first.

Placement gates, in order:

- ``trust_state``: the target asset is ``trusted`` and its evidence has not expired;
- ``accelerator_posture``: every accelerator the placement would use is trusted (its posture
  passed its tier's gates) and belongs to the tenant;
- ``evaluation_freshness``: the digest's newest evaluation at the tier is an active
  certification that has not expired;
- ``active_remediation``: no remediation run is pending, queued or running on the asset;
- ``anomaly_score``: no capability score of the digest's repository is flagged;
- ``tenant_rules``: the asset is the tenant's, and the tenant may place at the tier.

Admission gates (every enqueue):

- ``task_kind``: the tenant's rules allow the task;
- ``target_trust``: a bound target asset is not quarantined (work would be preempted anyway);
- ``protected_target``: a protected target needs a valid approval token for this task.
"""

from __future__ import annotations

import fnmatch
from datetime import UTC, datetime

from kernel.decisions import (
    AdmissionFacts,
    AssetFacts,
    Decision,
    Gate,
    GateName,
    PlacementFacts,
    TokenCheck,
)


def decide_placement(facts: PlacementFacts) -> Decision:
    return Decision.of(
        [
            _trust_state(facts),
            _accelerator_posture(facts),
            _evaluation_freshness(facts),
            _active_remediation(facts),
            _anomaly_score(facts),
            _tenant_rules(facts),
        ]
    )


def _trust_state(facts: PlacementFacts) -> Gate:
    name = GateName.TRUST_STATE
    asset = facts.asset
    if asset is None:
        return Gate(name, False, "no such target asset")
    if asset.state != "trusted":
        return Gate(name, False, f"{asset.label} is {asset.state}, not trusted")
    if asset.evidence_expires_at is not None and asset.evidence_expires_at <= facts.now:
        return Gate(
            name,
            False,
            f"{asset.label}'s evidence expired at {_when(asset.evidence_expires_at)}",
        )
    return Gate(name, True, f"{asset.label} is trusted")


def _accelerator_posture(facts: PlacementFacts) -> Gate:
    name = GateName.ACCELERATOR_POSTURE
    accelerators = list(facts.accelerators)
    if facts.asset is not None and facts.asset.kind == "accelerator":
        accelerators.insert(0, facts.asset)
    problems = [f"no accelerator {missing}" for missing in facts.unknown_accelerators]
    for acc in accelerators:
        if acc.kind != "accelerator":
            problems.append(f"{acc.label} is a {acc.kind}, not an accelerator")
        elif acc.state != "trusted":
            problems.append(f"{acc.label}'s posture is {acc.state}, not trusted")
        elif acc.tenant != facts.tenant:
            problems.append(f"{acc.label} belongs to another tenant")
    if problems:
        return Gate(name, False, "; ".join(problems))
    if not accelerators:
        return Gate(name, True, "no accelerator in the placement")
    return Gate(name, True, f"{len(accelerators)} accelerator(s) trusted")


def _evaluation_freshness(facts: PlacementFacts) -> Gate:
    name = GateName.EVALUATION_FRESHNESS
    cert = facts.certification
    what = f"{_short(facts.digest)} at tier {facts.tier}"
    if cert is None:
        return Gate(name, False, f"{what} was never evaluated")
    if cert.status == "stale":
        return Gate(
            name, False, f"{what}: evidence is stale (expired {_when(cert.expires_at)} unrefreshed)"
        )
    if cert.status == "failed":
        return Gate(name, False, f"{what}: the newest evaluation failed ({cert.summary})")
    if cert.status != "active" or cert.expires_at is None:
        return Gate(name, False, f"{what}: certification is {cert.status}")
    if cert.expires_at <= facts.now:
        return Gate(name, False, f"{what}: evidence is stale (expired {_when(cert.expires_at)})")
    return Gate(name, True, f"{what} certified until {_when(cert.expires_at)}")


def _active_remediation(facts: PlacementFacts) -> Gate:
    name = GateName.ACTIVE_REMEDIATION
    if facts.active_remediations:
        runs = ", ".join(str(r) for r in facts.active_remediations)
        return Gate(name, False, f"remediation in progress on the asset (run {runs})")
    return Gate(name, True, "no remediation in progress")


def _anomaly_score(facts: PlacementFacts) -> Gate:
    name = GateName.ANOMALY_SCORE
    if facts.repository is None:
        return Gate(name, True, "no build of this digest in the ledger to score")
    flagged = [s for s in facts.scores if s.flagged]
    if flagged:
        listed = ", ".join(f"{s.metric}={s.value:g}" for s in flagged)
        return Gate(name, False, f"{facts.repository} is flagged: {listed}")
    return Gate(name, True, f"{facts.repository}: no flagged score")


def _tenant_rules(facts: PlacementFacts) -> Gate:
    name = GateName.TENANT_RULES
    problems = []
    if facts.asset is not None and facts.asset.tenant != facts.tenant:
        problems.append(f"{facts.asset.label} is not an asset of tenant {facts.tenant}")
    tiers = facts.rules.allowed_tiers
    if tiers is not None and facts.tier not in tiers:
        problems.append(
            f"tenant {facts.tenant} may place at tiers {', '.join(tiers) or '(none)'}, "
            f"not {facts.tier}"
        )
    if problems:
        return Gate(name, False, "; ".join(problems))
    return Gate(name, True, f"within tenant {facts.tenant}'s rules")


# ---- admission -----------------------------------------------------------------------------------


def decide_admission(facts: AdmissionFacts) -> Decision:
    return Decision.of([_task_kind(facts), _target_trust(facts), _protected_target(facts)])


def _task_kind(facts: AdmissionFacts) -> Gate:
    name = GateName.TASK_KIND
    allowed = facts.rules.allowed_tasks
    if facts.tenant is None or allowed is None:
        return Gate(name, True, "no task rules apply")
    if any(fnmatch.fnmatchcase(facts.task_name, pattern) for pattern in allowed):
        return Gate(name, True, f"tenant {facts.tenant} may enqueue {facts.task_name}")
    return Gate(
        name,
        False,
        f"tenant {facts.tenant} may enqueue only {', '.join(allowed) or '(nothing)'}, "
        f"not {facts.task_name}",
    )


def _target_trust(facts: AdmissionFacts) -> Gate:
    name = GateName.TARGET_TRUST
    if facts.target_ref is None:
        return Gate(name, True, "no target asset")
    if facts.target is None:
        return Gate(name, False, f"no target asset {facts.target_ref}")
    if facts.tenant is not None and facts.target.tenant != facts.tenant:
        return Gate(name, False, f"{facts.target.label} is not an asset of tenant {facts.tenant}")
    if facts.target.state == "quarantined":
        return Gate(name, False, f"{facts.target.label} is quarantined")
    return Gate(name, True, f"{facts.target.label} is {facts.target.state}")


def _protected_target(facts: AdmissionFacts) -> Gate:
    name = GateName.PROTECTED_TARGET
    if facts.target is None or not facts.target.protected:
        return Gate(name, True, "target not protected")
    if facts.token is TokenCheck.VALID:
        return Gate(name, True, f"{facts.target.label} is protected; approval token valid")
    if facts.token is TokenCheck.INVALID:
        return Gate(
            name,
            False,
            f"{facts.target.label} is protected and the approval token was refused: "
            f"{facts.token_problem}",
        )
    return Gate(
        name,
        False,
        f"{facts.target.label} is protected: enqueueing {facts.task_name} on it needs an "
        "approval token (`drydock admission approve`)",
    )


# ---- the evaluation host -------------------------------------------------------------------------


def decide_evaluation_host(
    host: AssetFacts | None, *, configured: str | None, now: datetime
) -> Decision:
    """May this worker run an evaluation suite? Only on a host whose trust state is trusted."""
    name = GateName.HOST_TRUST
    if configured is None:
        gate = Gate(
            name,
            False,
            "this worker's host is not named (DRYDOCK_EVALUATION_HOST_ASSET), so its trust is "
            "unknown",
        )
    elif host is None:
        gate = Gate(name, False, f"no trust asset {configured!r} (DRYDOCK_EVALUATION_HOST_ASSET)")
    elif host.state != "trusted":
        gate = Gate(name, False, f"this worker's host {host.label} is {host.state}, not trusted")
    elif host.evidence_expires_at is not None and host.evidence_expires_at <= now:
        gate = Gate(name, False, f"this worker's host {host.label} has expired evidence")
    else:
        gate = Gate(name, True, f"this worker's host {host.label} is trusted")
    return Decision.of([gate])


def _short(digest: str) -> str:
    return digest if len(digest) <= 19 else digest[:19] + "…"


def _when(at: datetime | None) -> str:
    return "never" if at is None else at.astimezone(UTC).strftime("%Y-%m-%d %H:%M:%SZ")

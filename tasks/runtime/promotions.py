"""Promoting a server's digest to a tier, through checkpoints, in one recorded decision.

``drydock releases promote SERVER DIGEST --to TIER`` walks every checkpoint, whatever the ones
before it said, so a refusal names all that failed:

- ``certification``: the digest has an active certification at the target tier that has not
  expired (``drydock evaluate`` makes one);
- ``host_trust``: at least one enabled target that can run the release sits on a trusted asset
  whose evidence has not expired, and every host already running one of the server's instances
  is trusted;
- ``anomaly_score``: no anomaly score of the repository the ledger built the digest from is
  above the tier's threshold (its rule, else DRYDOCK_RUNTIME_ANOMALY_THRESHOLD);
- ``approval``: a protected tier needs an approval token for this very promotion (server,
  digest, tier), issued by ``drydock releases approve`` to someone allowed to approve.

Promoted or refused, the promotion is one ``runtime_release_history`` row with each checkpoint's
reason, announced on the watch stream. A promotion makes (or restores, if a rollout had rolled
it back) the server's release of the digest at the tier; running it there is a launch or a
rollout (``tasks.runtime.rollouts``).
"""

from __future__ import annotations

import uuid
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

from sqlalchemy import select
from sqlalchemy.orm import Session

from kernel.decisions import Gate, GateName
from kernel.settings import get_settings
from models import anomaly, evaluation, runtime
from models import runtime_releases as history
from models.db import session_scope
from models.runtime import RuntimeInstance, RuntimeRelease, RuntimeServer
from models.runtime_releases import ChangeKind, ChangeOutcome, ReleaseChange, RuntimeTierRule
from models.trust import TrustAsset
from policy import approvals
from policy.runtime_placement import capability_problems
from tasks.runtime.lifecycle import needs_of
from tasks.runtime.servers import DIGEST, RuntimeConflictError, RuntimeInputError, release_json

# Every checkpoint, in the order walked.
CHECKPOINTS = (
    GateName.CERTIFICATION,
    GateName.HOST_TRUST,
    GateName.ANOMALY_SCORE,
    GateName.APPROVAL,
)
# Promotion subjects are UUIDs derived from (server, digest, tier), so an approval token names
# exactly one promotion the way a remediation token names one run.
_SUBJECT_NAMESPACE = uuid.UUID("5e0c1d5c-8f0a-4b7e-9b8e-6d2f3c1a7e42")


@dataclass(frozen=True)
class TierRules:
    tier: str
    anomaly_threshold: float
    protected: bool
    analysis_seconds: float

    @classmethod
    def of(cls, session: Session, tier: str) -> TierRules:
        rule = history.tier_rule(session, tier)
        if rule is not None:
            return cls(tier, rule.anomaly_threshold, rule.protected, rule.analysis_seconds)
        settings = get_settings()
        return cls(
            tier, settings.runtime_anomaly_threshold, False, settings.runtime_analysis_seconds
        )

    def as_json(self) -> dict[str, Any]:
        return {
            "tier": self.tier,
            "anomaly_threshold": self.anomaly_threshold,
            "protected": self.protected,
            "analysis_seconds": self.analysis_seconds,
        }


def promotion_subject(server_id: uuid.UUID, digest: str, tier: str) -> uuid.UUID:
    return uuid.uuid5(_SUBJECT_NAMESPACE, f"{server_id}|{digest}|{tier}")


def put_rules(
    tier: str,
    *,
    anomaly_threshold: float,
    protected: bool,
    analysis_seconds: float,
    actor: str,
) -> dict[str, Any]:
    """Set a tier's promotion rules (the tier must exist: ``drydock tiers put``)."""
    problems = []
    if not 0 <= anomaly_threshold <= 1_000_000:
        problems.append(f"anomaly threshold {anomaly_threshold}: between 0 and 1000000")
    if not 0 <= analysis_seconds <= 3600:
        problems.append(f"analysis seconds {analysis_seconds}: between 0 and 3600")
    if problems:
        raise RuntimeInputError(problems)
    with session_scope() as session:
        evaluation.get_tier(session, tier)
        history.put_tier_rule(
            session,
            tier,
            anomaly_threshold=anomaly_threshold,
            protected=protected,
            analysis_seconds=analysis_seconds,
            by=actor,
        )
        return TierRules.of(session, tier).as_json()


def list_rules() -> list[dict[str, Any]]:
    with session_scope() as session:
        rules = session.scalars(select(RuntimeTierRule).order_by(RuntimeTierRule.tier)).all()
        return [
            TierRules(r.tier, r.anomaly_threshold, r.protected, r.analysis_seconds).as_json()
            for r in rules
        ]


@dataclass(frozen=True)
class ApprovalIssued:
    token: str
    approver: str
    expires_at: datetime


def approve(
    *, tenant: str | None, server: str, digest: str, tier: str, approver: str
) -> ApprovalIssued:
    """An approval token for promoting ``digest`` of ``server`` to ``tier``."""
    _check_digest(digest)
    key = approvals.signing_key()
    with session_scope() as session:
        found = runtime.find_server(session, server, tenant)
        evaluation.get_tier(session, tier)
        grant = approvals.new_grant(
            promotion_subject(found.id, digest, tier),
            found.tenant,
            approver,
            ttl_seconds=get_settings().runtime_promotion_approval_ttl_seconds,
            now=datetime.now(UTC),
        )
    token = approvals.mint(grant, key, audience=approvals.PROMOTION_AUDIENCE)
    return ApprovalIssued(token, approver, grant.expires_at)


def promote(
    *,
    tenant: str | None,
    server: str,
    digest: str,
    tier: str,
    actor: str,
    approval_token: str | None = None,
    reason: str = "",
) -> dict[str, Any]:
    """Walk the checkpoints and record the promotion; ``outcome`` says whether it passed."""
    _check_digest(digest)
    now = datetime.now(UTC)
    with session_scope() as session:
        found = runtime.find_server(session, server, tenant)
        evaluation.get_tier(session, tier)
        source = session.scalars(
            select(RuntimeRelease)
            .where(RuntimeRelease.server_id == found.id, RuntimeRelease.digest == digest)
            .order_by(RuntimeRelease.created_at.desc())
            .limit(1)
        ).first()
        if source is None:
            raise RuntimeConflictError(
                f"{digest} is not a release of {found.tenant}/{found.name}: release it at a "
                "first tier (`drydock releases add`) before promoting it"
            )
        rules = TierRules.of(session, tier)
        gates = [
            _certification(session, digest, tier, now),
            _host_trust(session, found, source.platforms, now),
            _anomaly(session, digest, rules),
            _approval(found, digest, tier, rules, approval_token),
        ]
        passed = all(gate.passed for gate in gates)
        serving = _serving_digest(session, found.id, tier)
        release = _released(session, found, source, tier, actor) if passed else None
        change = history.record_change(
            session,
            ReleaseChange(
                server_id=found.id,
                tenant=found.tenant,
                kind=ChangeKind.PROMOTION.value,
                outcome=(ChangeOutcome.PROMOTED if passed else ChangeOutcome.REFUSED).value,
                tier=tier,
                digest=digest,
                from_digest=serving,
                checkpoints=[gate.as_json() for gate in gates],
                detail=_detail(reason, source, tier, gates),
                actor=actor,
            ),
        )
        assert change is not None
        return {
            **history.change_json(change),
            "rules": rules.as_json(),
            "release": release_json(release) if release is not None else None,
        }


def history_of(
    *,
    tenant: str | None,
    server: str,
    kind: ChangeKind | None = None,
    before: int | None = None,
    limit: int = 50,
) -> dict[str, Any]:
    """A server's promotions, rollouts and rollbacks, newest first."""
    limit = max(1, min(limit, 200))
    with session_scope() as session:
        found = runtime.find_server(session, server, tenant)
        rows = history.release_history(session, found.id, kind=kind, before=before, limit=limit + 1)
        more = len(rows) > limit
        items = [history.change_json(row) for row in rows[:limit]]
    return {
        "server_id": str(found.id),
        "server": f"{found.tenant}/{found.name}",
        "items": items,
        "next_before": items[-1]["id"] if more and items else None,
    }


# ---- checkpoints ---------------------------------------------------------------------------------


def _certification(session: Session, digest: str, tier: str, now: datetime) -> Gate:
    name = GateName.CERTIFICATION
    active = evaluation.active_certification(session, digest, tier)
    if active is not None and (active.expires_at is None or active.expires_at > now):
        until = f" until {_when(active.expires_at)}" if active.expires_at else ""
        return Gate(name, True, f"certified at tier {tier}{until} (evaluation {active.id})")
    if active is not None:
        return Gate(name, False, f"its certification at tier {tier} expired at "
                    f"{_when(active.expires_at)}: evaluate it again")  # fmt: skip
    latest = evaluation.latest_certification(session, digest, tier)
    if latest is None:
        return Gate(name, False, f"never evaluated at tier {tier} (`drydock evaluate`)")
    return Gate(
        name, False, f"not certified at tier {tier}: its newest evaluation is {latest.status}"
    )


def _host_trust(
    session: Session, server: RuntimeServer, platforms: list[str], now: datetime
) -> Gate:
    """A trusted place to run it, and no untrusted host running the server now."""
    name = GateName.HOST_TRUST
    needs = needs_of(server, platforms, None)
    capable = [t for t in runtime.enabled_targets(session) if not capability_problems(t, needs)]
    live = session.scalars(
        select(RuntimeInstance).where(
            RuntimeInstance.server_id == server.id,
            RuntimeInstance.state.in_([s.value for s in runtime.LIVE_STATES]),
            RuntimeInstance.asset_id.is_not(None),
        )
    ).all()
    asset_ids = {t.asset_id for t in capable} | {i.asset_id for i in live if i.asset_id}
    assets = {
        a.id: a
        for a in session.scalars(select(TrustAsset).where(TrustAsset.id.in_(asset_ids))).all()
    }

    def trusted(asset_id: uuid.UUID) -> bool:
        asset = assets.get(asset_id)
        return (
            asset is not None
            and asset.state == "trusted"
            and (asset.evidence_expires_at is None or asset.evidence_expires_at > now)
        )

    untrusted_hosts = sorted(
        {f"{i.target} ({_state(assets.get(i.asset_id))})" for i in live
         if i.asset_id and not trusted(i.asset_id)}
    )  # fmt: skip
    trusted_targets = [t.name for t in capable if trusted(t.asset_id)]
    problems = []
    if not capable:
        problems.append("no enabled target can run it")
    elif not trusted_targets:
        problems.append(
            "no capable target is on a trusted host: "
            + ", ".join(f"{t.name} ({_state(assets.get(t.asset_id))})" for t in capable)
        )
    if untrusted_hosts:
        problems.append(f"it runs on untrusted hosts: {', '.join(untrusted_hosts)}")
    if problems:
        return Gate(name, False, "; ".join(problems))
    return Gate(name, True, f"trusted targets: {', '.join(trusted_targets)}")


def _anomaly(session: Session, digest: str, rules: TierRules) -> Gate:
    name = GateName.ANOMALY_SCORE
    repository = anomaly.repository_for_digest(session, digest)
    if repository is None:
        return Gate(name, False, "the artifact ledger does not know which repository built it")
    scores = anomaly.scores_for(session, repository)
    over = [s for s in scores if abs(s.value) > rules.anomaly_threshold]
    if over:
        listed = ", ".join(f"{s.metric} {s.value:g}" for s in over)
        return Gate(
            name,
            False,
            f"{repository}: {listed} over tier {rules.tier}'s threshold "
            f"{rules.anomaly_threshold:g}",
        )
    if not scores:
        return Gate(name, True, f"{repository} has no anomaly scores yet")
    top = max(scores, key=lambda s: abs(s.value))
    return Gate(
        name,
        True,
        f"{repository}: highest {top.metric} {top.value:g}, threshold {rules.anomaly_threshold:g}",
    )


def _approval(
    server: RuntimeServer, digest: str, tier: str, rules: TierRules, token: str | None
) -> Gate:
    name = GateName.APPROVAL
    if not rules.protected:
        return Gate(name, True, f"tier {tier} is not protected")
    if not token:
        return Gate(
            name,
            False,
            f"tier {tier} is protected: an approval token is needed (`drydock releases approve`)",
        )
    try:
        grant = approvals.verify(
            token,
            run_id=promotion_subject(server.id, digest, tier),
            tenant=server.tenant,
            key=approvals.signing_key(),
            audience=approvals.PROMOTION_AUDIENCE,
        )
    except approvals.ApprovalTokenError as exc:
        return Gate(name, False, f"the approval token does not approve this promotion "
                    f"({exc.problem.value})")  # fmt: skip
    return Gate(name, True, f"approved by {grant.approver} until {_when(grant.expires_at)}")


# ---- helpers -------------------------------------------------------------------------------------


def _released(
    session: Session, server: RuntimeServer, source: RuntimeRelease, tier: str, actor: str
) -> RuntimeRelease:
    release = session.scalar(
        select(RuntimeRelease)
        .where(
            RuntimeRelease.server_id == server.id,
            RuntimeRelease.digest == source.digest,
            RuntimeRelease.tier == tier,
        )
        .with_for_update()
    )
    if release is None:
        release = RuntimeRelease(
            server_id=server.id,
            digest=source.digest,
            tier=tier,
            platforms=list(source.platforms),
            created_by=actor,
        )
        session.add(release)
    release.rolled_back_at = None
    session.flush()
    return release


def _serving_digest(session: Session, server_id: uuid.UUID, tier: str) -> str | None:
    """The digest the tier shows now: its newest release not rolled back."""
    return session.scalar(
        select(RuntimeRelease.digest)
        .where(
            RuntimeRelease.server_id == server_id,
            RuntimeRelease.tier == tier,
            RuntimeRelease.rolled_back_at.is_(None),
        )
        .order_by(RuntimeRelease.created_at.desc())
        .limit(1)
    )


def _detail(reason: str, source: RuntimeRelease, tier: str, gates: list[Gate]) -> str:
    failing = [f"{gate.name.value}: {gate.reason}" for gate in gates if not gate.passed]
    said = [reason] if reason else []
    if failing:
        return "; ".join([*said, f"refused at {len(failing)} checkpoint(s)", *failing])
    return "; ".join([*said, f"from tier {source.tier}"] if source.tier != tier else said)


def _check_digest(digest: str) -> None:
    if not DIGEST.fullmatch(digest):
        raise RuntimeInputError([f"digest {digest!r}: sha256:<64 hex digits>"])


def _state(asset: TrustAsset | None) -> str:
    return asset.state if asset is not None else "unknown"


def _when(at: datetime | None) -> str:
    return at.astimezone(UTC).isoformat(timespec="seconds") if at else "never"

"""The policy engine's facts and records: gathering what ``policy.engine`` decides on (its
caller, ``policy.placement``, joins the two),
persisting each decision (``policy_decisions``), and preempting waiting jobs of a quarantined
asset.

A decision is announced with ``pg_notify`` inside the transaction that records it, on the same
footing as trust transitions: ``drydock policy watch`` hears it only if it committed, in commit
order, beside the transitions.
"""

from __future__ import annotations

import json
import uuid
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from enum import StrEnum
from typing import Any, cast

from sqlalchemy import (
    BigInteger,
    CheckConstraint,
    DateTime,
    Identity,
    Index,
    String,
    Table,
    Text,
    Uuid,
    bindparam,
    func,
    select,
    text,
)
from sqlalchemy import insert as insert_row
from sqlalchemy.dialects.postgresql import ARRAY, JSONB, insert
from sqlalchemy.orm import Mapped, Session, mapped_column

from kernel.decisions import (
    AssetFacts,
    CertificationFacts,
    Decision,
    Gate,
    GateName,
    PlacementFacts,
    ScoreFacts,
    TenantRules,
)
from kernel.errors import NotFoundError
from models import anomaly, notices, stream, trust, workflow_events
from models.base import Base, sql_in_list
from models.remediation import ACTIVE_RUN_STATES
from models.trust import TrustAsset


class TenantPolicy(Base):
    """What a tenant requires of work on its assets."""

    __tablename__ = "tenant_policies"

    tenant: Mapped[str] = mapped_column(String(100), primary_key=True)
    # Every remediation of the tenant's assets needs an approval.
    remediation_requires_approval: Mapped[bool] = mapped_column(default=False)
    # Task-name patterns (``builds.*``) the tenant may enqueue; None: every task its tokens allow.
    allowed_tasks: Mapped[list[str] | None] = mapped_column(JSONB)
    # Evaluation tiers the tenant may place digests at; None: any tier.
    allowed_tiers: Mapped[list[str] | None] = mapped_column(JSONB)
    updated_at: Mapped[datetime] = mapped_column(
        DateTime(timezone=True), server_default=func.now(), onupdate=func.now()
    )
    updated_by: Mapped[str | None] = mapped_column(String(200))


class PolicyDecisionKind(StrEnum):
    # May this digest at this tier be placed on this asset for this tenant?
    PLACEMENT = "placement"
    # May this job be enqueued?
    ADMISSION = "admission"
    # May this evaluation worker run a suite on its host?
    EVALUATION_HOST = "evaluation_host"
    # A waiting job cancelled because its target asset was quarantined.
    PREEMPTION = "preemption"
    # May this commit be pushed to a protected branch of a project's remote?
    PUSH = "push"


class PolicyDecision(Base):
    """Every decision the policy engine made: the request, each gate with its reason, and the
    outcome. Append-only by use."""

    __tablename__ = "policy_decisions"

    id: Mapped[int] = mapped_column(BigInteger, Identity(), primary_key=True)
    kind: Mapped[str] = mapped_column(String(30))
    allowed: Mapped[bool]
    tenant: Mapped[str | None] = mapped_column(String(100))
    # The request as decided (digest, tier, asset, task name...).
    request: Mapped[dict[str, Any]] = mapped_column(JSONB)
    # [{"gate", "passed", "reason"}], in the order the engine checked them.
    gates: Mapped[list[dict[str, Any]]] = mapped_column(JSONB)
    # The failing gates' reasons joined, or "allowed".
    summary: Mapped[str] = mapped_column(Text)
    # The job decided about (admitted, refused before it existed: None, or preempted).
    job_id: Mapped[uuid.UUID | None] = mapped_column(Uuid)
    actor: Mapped[str] = mapped_column(String(200))
    decided_at: Mapped[datetime] = mapped_column(DateTime(timezone=True), server_default=func.now())

    # The INSERT returns decided_at (and the id) itself: no second round trip per decision.
    __mapper_args__ = {"eager_defaults": True}  # noqa: RUF012 (SQLAlchemy reads a dict)

    __table_args__ = (
        CheckConstraint(sql_in_list("kind", tuple(PolicyDecisionKind)), name="kind"),
        Index(None, "decided_at"),
        Index(None, "tenant", "decided_at"),
        Index(None, "job_id"),
    )


PG_CHANNEL = "drydock_policy"


def asset_facts(asset: TrustAsset) -> AssetFacts:
    return AssetFacts(
        id=asset.id,
        tenant=asset.tenant,
        name=asset.name,
        kind=asset.kind,
        state=asset.state,
        evidence_expires_at=asset.evidence_expires_at,
        protected=asset.protected,
    )


def tenant_rules(session: Session, tenant: str | None) -> TenantRules:
    if tenant is None:
        return TenantRules()
    policy = session.get(TenantPolicy, tenant)
    if policy is None:
        return TenantRules()
    return TenantRules(
        allowed_tasks=None if policy.allowed_tasks is None else tuple(policy.allowed_tasks),
        allowed_tiers=None if policy.allowed_tiers is None else tuple(policy.allowed_tiers),
    )


def set_tenant_rules(
    session: Session,
    tenant: str,
    *,
    allowed_tasks: Sequence[str] | None,
    allowed_tiers: Sequence[str] | None,
    by: str,
) -> TenantPolicy:
    """Replace a tenant's admission and placement rules (None: no restriction)."""
    policy = session.get(TenantPolicy, tenant, with_for_update=True)
    if policy is None:
        policy = TenantPolicy(tenant=tenant, remediation_requires_approval=False)
        session.add(policy)
    policy.allowed_tasks = None if allowed_tasks is None else list(allowed_tasks)
    policy.allowed_tiers = None if allowed_tiers is None else list(allowed_tiers)
    policy.updated_by = by
    session.flush()
    return policy


@dataclass(frozen=True)
class PlacementRequest:
    digest: str
    tier: str
    asset: str
    tenant: str
    accelerators: tuple[str, ...] = ()

    def as_json(self) -> dict[str, Any]:
        return {
            "digest": self.digest,
            "tier": self.tier,
            "asset": self.asset,
            "tenant": self.tenant,
            "accelerators": list(self.accelerators),
        }


# Every fact a placement gate judges, of one asset (by id), digest, tier and tenant, in one
# statement: a launch decides in as few round trips as it can (bench/runtime.py).
_PLACEMENT_FACTS = text(
    f"""
    SELECT asset.id AS asset_id, asset.tenant AS asset_tenant, asset.name AS asset_name,
           asset.kind AS asset_kind, asset.state AS asset_state,
           asset.evidence_expires_at AS asset_evidence_expires_at,
           asset.protected AS asset_protected,
           cert.id AS cert_id, cert.status AS cert_status, cert.expires_at AS cert_expires_at,
           cert.evaluated_at AS cert_evaluated_at, cert.summary AS cert_summary,
           repository.repository,
           (SELECT coalesce(jsonb_agg(jsonb_build_array(score.metric, score.value, score.flagged)
                                      ORDER BY score.metric), '[]'::jsonb)
              FROM capability_scores AS score
             WHERE score.repository = repository.repository) AS scores,
           (SELECT coalesce(array_agg(run.id ORDER BY run.requested_at), '{{}}')
              FROM remediation_runs AS run
             WHERE run.asset_id = asset.id AND run.state = ANY(:active_states)) AS runs,
           rules.tenant IS NOT NULL AS has_rules, rules.allowed_tasks, rules.allowed_tiers
      FROM (SELECT 1) AS one
      LEFT JOIN trust_assets AS asset ON asset.id = :asset_id
      LEFT JOIN LATERAL (
            SELECT id, status, expires_at, evaluated_at, summary
              FROM evaluation_certifications
             WHERE digest = :digest AND tier = :tier
             ORDER BY evaluated_at DESC
             LIMIT 1) AS cert ON true
      LEFT JOIN LATERAL ({anomaly.REPOSITORY_FOR_DIGEST_SQL}) AS repository ON true
      LEFT JOIN tenant_policies AS rules ON rules.tenant = :tenant
    """
).bindparams(bindparam("asset_id", type_=Uuid), bindparam("active_states", type_=ARRAY(Text)))
_ACTIVE_RUN_STATES = [s.value for s in ACTIVE_RUN_STATES]


def placement_facts(session: Session, request: PlacementRequest, now: datetime) -> PlacementFacts:
    try:
        asset_id: uuid.UUID | None = uuid.UUID(request.asset)
    except ValueError:
        by_name = _maybe_asset(session, request.asset, request.tenant)
        asset_id = by_name.id if by_name is not None else None
    accelerators: list[AssetFacts] = []
    unknown: list[str] = []
    for ref in request.accelerators:
        found = _maybe_asset(session, ref, request.tenant)
        if found is None:
            unknown.append(ref)
        else:
            accelerators.append(asset_facts(found))
    row = session.execute(
        _PLACEMENT_FACTS,
        {
            "asset_id": asset_id,
            "digest": request.digest,
            "tier": request.tier,
            "tenant": request.tenant,
            "active_states": _ACTIVE_RUN_STATES,
        },
    ).one()
    return PlacementFacts(
        now=now,
        digest=request.digest,
        tier=request.tier,
        tenant=request.tenant,
        asset=(
            AssetFacts(
                id=row.asset_id,
                tenant=row.asset_tenant,
                name=row.asset_name,
                kind=row.asset_kind,
                state=row.asset_state,
                evidence_expires_at=row.asset_evidence_expires_at,
                protected=row.asset_protected,
            )
            if row.asset_id is not None
            else None
        ),
        accelerators=tuple(accelerators),
        unknown_accelerators=tuple(unknown),
        certification=(
            CertificationFacts(
                id=row.cert_id,
                status=row.cert_status,
                expires_at=row.cert_expires_at,
                evaluated_at=row.cert_evaluated_at,
                summary=row.cert_summary,
            )
            if row.cert_id is not None
            else None
        ),
        active_remediations=tuple(row.runs),
        repository=row.repository,
        scores=tuple(
            ScoreFacts(metric, float(value), flagged) for metric, value, flagged in row.scores
        ),
        rules=(
            TenantRules(
                allowed_tasks=_optional_tuple(row.allowed_tasks),
                allowed_tiers=_optional_tuple(row.allowed_tiers),
            )
            if row.has_rules
            else TenantRules()
        ),
    )


def _optional_tuple(values: list[str] | None) -> tuple[str, ...] | None:
    return None if values is None else tuple(values)


def _maybe_asset(session: Session, ref: str, tenant: str | None) -> TrustAsset | None:
    try:
        return trust.find_asset(session, ref, tenant)
    except NotFoundError:
        return None


# Core, not the unit of work: one INSERT returning what the row's defaults gave it.
_DECISIONS = cast(Table, PolicyDecision.__table__)
_INSERT_DECISION = insert_row(_DECISIONS).returning(_DECISIONS.c.id, _DECISIONS.c.decided_at)


def record_decision(
    session: Session,
    kind: PolicyDecisionKind,
    decision: Decision,
    *,
    request: dict[str, Any],
    tenant: str | None,
    actor: str,
    job_id: uuid.UUID | None = None,
) -> PolicyDecision:
    """Persist a decision and announce it (``pg_notify`` and the stream, both on commit). The
    row returned is a detached copy of what was inserted."""
    values: dict[str, Any] = {
        "kind": kind.value,
        "allowed": decision.allowed,
        "tenant": tenant,
        "request": request,
        "gates": decision.gates_json(),
        "summary": decision.summary,
        "job_id": job_id,
        "actor": actor,
    }
    inserted = session.execute(_INSERT_DECISION, values).one()
    row = PolicyDecision(id=inserted.id, decided_at=inserted.decided_at, **values)
    stream.stage_notice(session, PG_CHANNEL, decision_message(row))
    stream.stage(session, stream.StreamEventKind.POLICY_DECISION, tenant, decision_json(row))
    return row


def decision_json(row: PolicyDecision) -> dict[str, Any]:
    return {
        "id": row.id,
        "kind": row.kind,
        "allowed": row.allowed,
        "tenant": row.tenant,
        "request": row.request,
        "gates": row.gates,
        "summary": row.summary,
        "job_id": str(row.job_id) if row.job_id else None,
        "actor": row.actor,
        "decided_at": row.decided_at.astimezone(UTC).isoformat(),
    }


def decision_message(row: PolicyDecision) -> str:
    message = decision_json(row)
    # NOTIFY payloads must stay under 8000 bytes; the row keeps everything.
    message["gates"] = [{**g, "reason": str(g.get("reason", ""))[:300]} for g in message["gates"]]
    return json.dumps(message, separators=(",", ":"))


def list_decisions(
    session: Session,
    *,
    tenant: str | None = None,
    kind: str | None = None,
    limit: int = 50,
) -> Sequence[PolicyDecision]:
    stmt = select(PolicyDecision)
    if tenant is not None:
        stmt = stmt.where(PolicyDecision.tenant == tenant)
    if kind is not None:
        stmt = stmt.where(PolicyDecision.kind == kind)
    return session.scalars(stmt.order_by(PolicyDecision.id.desc()).limit(limit)).all()


# ---- preemption ----------------------------------------------------------------------------------

# Waiting jobs bound to the asset end "preempted", with their outcome event, in the quarantine's
# own transaction: a worker that receives one later finds it finished and runs nothing.
_PREEMPT_SQL = """
    WITH preempted AS (
        UPDATE jobs
           SET status = 'preempted', finished_at = now(), error = :reason,
               error_class = 'Preempted'
         WHERE target_asset_id = :asset_id AND status IN ('queued', 'retrying')
     RETURNING id, task_name, queue, tenant, attempts, policy_context
    ), events AS (
        INSERT INTO job_events (job_id, kind, attempt, at, queue, detail)
        SELECT id, 'preempted', attempts, now(), queue,
               jsonb_build_object('reason', CAST(:reason AS text), 'policy', policy_context)
          FROM preempted
    )
    SELECT id, task_name, tenant FROM preempted
"""


def preempt_waiting_jobs(
    session: Session, asset: TrustAsset, *, reason: str, actor: str
) -> list[uuid.UUID]:
    """Cancel the asset's queued and retrying jobs, each with a recorded decision."""
    rows = session.execute(text(_PREEMPT_SQL), {"asset_id": asset.id, "reason": reason}).all()
    decision = Decision.of([Gate(GateName.TARGET_TRUST, False, reason)])
    for row in rows:
        record_decision(
            session,
            PolicyDecisionKind.PREEMPTION,
            decision,
            request={"task_name": row.task_name, "target_asset_id": str(asset.id)},
            tenant=row.tenant or asset.tenant,
            actor=actor,
            job_id=row.id,
        )
    if rows:
        session.flush()
    return [row.id for row in rows]


# ---- watching ------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Announcement:
    """One thing ``policy watch`` shows: a decision or a trust transition, as published."""

    kind: str  # "decision" or "transition"
    data: dict[str, Any]


def watch(
    *, tenant: str | None = None, on_ready: Callable[[], None] | None = None
) -> Iterator[Announcement]:
    """Decisions, trust transitions and workflow run events as they commit, forever (the
    caller stops)."""
    channels = [PG_CHANNEL, trust.PG_CHANNEL, workflow_events.PG_CHANNEL]
    kinds = {PG_CHANNEL: "decision", trust.PG_CHANNEL: "transition"}
    for notice in notices.pg_listen(channels, on_ready=on_ready):
        data = json.loads(notice.payload)
        if tenant is not None and data.get("tenant") != tenant:
            continue
        kind = kinds.get(notice.channel, "workflow")
        yield Announcement(kind, data)


# ---- remediation's tenant policy --------------------------------------------------------------


def tenant_requires_approval(session: Session, tenant: str) -> bool:
    policy = session.get(TenantPolicy, tenant)
    return bool(policy and policy.remediation_requires_approval)


def set_tenant_policy(session: Session, tenant: str, *, requires_approval: bool, by: str) -> None:
    session.execute(
        insert(TenantPolicy)
        .values(tenant=tenant, remediation_requires_approval=requires_approval, updated_by=by)
        .on_conflict_do_update(
            index_elements=["tenant"],
            set_={
                "remediation_requires_approval": requires_approval,
                "updated_by": by,
                "updated_at": func.now(),
            },
        )
    )

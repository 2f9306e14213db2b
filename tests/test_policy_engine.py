"""The policy engine's rules, from facts alone: no database, no broker, no clock."""

from __future__ import annotations

import uuid
from dataclasses import replace
from datetime import UTC, datetime, timedelta

from kernel.decisions import (
    AdmissionFacts,
    AssetFacts,
    CertificationFacts,
    GateName,
    PlacementFacts,
    ScoreFacts,
    TenantRules,
    TokenCheck,
)
from policy.engine import decide_admission, decide_evaluation_host, decide_placement

NOW = datetime(2026, 11, 21, 12, 0, tzinfo=UTC)
DIGEST = "sha256:" + "c" * 64


def asset(**changes: object) -> AssetFacts:
    base = AssetFacts(
        id=uuid.UUID(int=1),
        tenant="acme",
        name="node-1",
        kind="host",
        state="trusted",
        evidence_expires_at=NOW + timedelta(hours=1),
    )
    return replace(base, **changes)  # type: ignore[arg-type]


def placement(**changes: object) -> PlacementFacts:
    base = PlacementFacts(
        now=NOW,
        digest=DIGEST,
        tier="standard",
        tenant="acme",
        asset=asset(),
        certification=CertificationFacts(
            id=uuid.UUID(int=2),
            status="active",
            expires_at=NOW + timedelta(days=1),
            evaluated_at=NOW - timedelta(days=6),
            summary="5 checks: 5 passed",
        ),
        repository="https://git.example/app.git",
        scores=(ScoreFacts("build_latency", 0.4, False),),
    )
    return replace(base, **changes)  # type: ignore[arg-type]


def failing(facts: PlacementFacts) -> dict[str, str]:
    return {g.name.value: g.reason for g in decide_placement(facts).failing}


def test_everything_in_order_allows_with_every_gate_named() -> None:
    decision = decide_placement(placement())
    assert decision.allowed
    assert decision.summary == "allowed"
    assert [g.name for g in decision.gates] == [
        GateName.TRUST_STATE,
        GateName.ACCELERATOR_POSTURE,
        GateName.EVALUATION_FRESHNESS,
        GateName.ACTIVE_REMEDIATION,
        GateName.ANOMALY_SCORE,
        GateName.TENANT_RULES,
    ]


def test_each_gate_denies_on_its_own_fact_with_a_reason() -> None:
    assert failing(placement(asset=asset(state="stale"))) == {
        "trust_state": "acme/node-1 is stale, not trusted"
    }
    assert failing(placement(asset=asset(evidence_expires_at=NOW))) == {
        "trust_state": "acme/node-1's evidence expired at 2026-11-21 12:00:00Z"
    }
    assert set(failing(placement(asset=None))) == {"trust_state"}
    gpu = asset(id=uuid.UUID(int=3), name="gpu-0", kind="accelerator", state="quarantined")
    assert failing(placement(accelerators=(gpu,))) == {
        "accelerator_posture": "acme/gpu-0's posture is quarantined, not trusted"
    }
    foreign_gpu = replace(gpu, state="trusted", tenant="globex")
    assert failing(placement(accelerators=(foreign_gpu,))) == {
        "accelerator_posture": "globex/gpu-0 belongs to another tenant"
    }
    run = uuid.UUID(int=9)
    assert failing(placement(active_remediations=(run,))) == {
        "active_remediation": f"remediation in progress on the asset (run {run})"
    }
    flagged = (ScoreFacts("missing_architectures", 1, True),)
    assert failing(placement(scores=flagged)) == {
        "anomaly_score": "https://git.example/app.git is flagged: missing_architectures=1"
    }
    # A digest not built here has nothing to score: the gate passes and says so.
    unscored = decide_placement(placement(repository=None, scores=flagged))
    assert unscored.allowed
    assert failing(placement(tenant="globex")) == {
        "tenant_rules": "acme/node-1 is not an asset of tenant globex"
    }
    assert failing(placement(rules=TenantRules(allowed_tiers=("gold",)))) == {
        "tenant_rules": "tenant acme may place at tiers gold, not standard"
    }


def test_freshness_denies_stale_failed_expired_and_unevaluated_digests() -> None:
    cert = placement().certification
    assert cert is not None
    stale = replace(cert, status="stale", expires_at=NOW - timedelta(hours=2))
    assert (
        "evidence is stale (expired 2026-11-21 10:00:00Z unrefreshed)"
        in (failing(placement(certification=stale))["evaluation_freshness"])
    )
    expired = replace(cert, expires_at=NOW - timedelta(seconds=1))
    assert (
        "evidence is stale (expired"
        in failing(placement(certification=expired))["evaluation_freshness"]
    )
    failed = replace(cert, status="failed", summary="1 failed (manifest)")
    assert (
        "the newest evaluation failed (1 failed (manifest))"
        in failing(placement(certification=failed))["evaluation_freshness"]
    )
    assert "was never evaluated" in failing(placement(certification=None))["evaluation_freshness"]
    revoked = replace(cert, status="revoked")
    assert (
        "certification is revoked"
        in failing(placement(certification=revoked))["evaluation_freshness"]
    )


def test_a_denial_names_every_failing_gate_not_just_the_first() -> None:
    decision = decide_placement(placement(asset=asset(state="quarantined"), certification=None))
    assert [g.name.value for g in decision.failing] == ["trust_state", "evaluation_freshness"]
    assert decision.summary.startswith("trust_state: acme/node-1 is quarantined")
    assert "; evaluation_freshness: " in decision.summary


def test_admission_rules() -> None:
    plain = AdmissionFacts(task_name="builds.build_image", tenant=None)
    assert decide_admission(plain).allowed
    ruled = AdmissionFacts(
        task_name="builds.build_image",
        tenant="acme",
        rules=TenantRules(allowed_tasks=("attestation.*", "builds.canary")),
    )
    assert [g.reason for g in decide_admission(ruled).failing] == [
        "tenant acme may enqueue only attestation.*, builds.canary, not builds.build_image"
    ]
    allowed = replace(ruled, task_name="attestation.verify_evidence")
    assert decide_admission(allowed).allowed

    protected = asset(protected=True)
    bound = AdmissionFacts(
        task_name="builds.canary", tenant="acme", target_ref="node-1", target=protected
    )
    assert [g.name for g in decide_admission(bound).failing] == [GateName.PROTECTED_TARGET]
    assert decide_admission(replace(bound, token=TokenCheck.VALID)).allowed
    refused = replace(bound, token=TokenCheck.INVALID, token_problem="it has expired")
    assert (
        decide_admission(refused)
        .failing[0]
        .reason.endswith("the approval token was refused: it has expired")
    )
    quarantined = replace(bound, target=asset(state="quarantined"), token=TokenCheck.VALID)
    assert [g.name for g in decide_admission(quarantined).failing] == [GateName.TARGET_TRUST]
    missing = AdmissionFacts(task_name="builds.canary", tenant=None, target_ref="acme/ghost")
    assert decide_admission(missing).failing[0].reason == "no target asset acme/ghost"


def test_evaluation_host_must_be_named_and_trusted() -> None:
    assert not decide_evaluation_host(None, configured=None, now=NOW).allowed
    assert not decide_evaluation_host(None, configured="fleet/x", now=NOW).allowed
    assert not decide_evaluation_host(asset(state="stale"), configured="x", now=NOW).allowed
    expired = asset(evidence_expires_at=NOW - timedelta(seconds=1))
    assert not decide_evaluation_host(expired, configured="x", now=NOW).allowed
    assert decide_evaluation_host(asset(), configured="acme/node-1", now=NOW).allowed

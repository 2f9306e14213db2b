"""The evaluation queue end to end: certifications refreshed by real suite runs in containers on
the Docker engine, the host-trust gate, Beat's cadence sweep (once per certification, however
often it runs), stale evidence denying placements, and the lineage of a (digest, tier)."""

from __future__ import annotations

import uuid
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest
from fastapi.testclient import TestClient
from sqlalchemy import select

from dispatch.enqueue import enqueue
from models import evaluation, evaluation_cadence, trust
from models import policy as policy_store
from models.db import session_scope
from models.evaluation import EvaluationCertification, ImageCertification
from models.jobs import DeadLetter, Job
from models.policy import PolicyDecision
from models.trust import AssetKind, TrustState
from policy import placement
from testkit.registry import RegistryServer
from tests.conftest import WorkerProcess, wait_for_job
from tests.evaluation_images import EvaluationImage
from tests.test_remediation import move_to

S = TrustState
HOST = ("fleet", "evaluation-host")

# Checks a hardened MCP-server image should pass: it has a shell, runs as non-root, was given
# the digest it is evaluated as, and cannot reach the network.
PASSING_CHECKS = """\
report() { echo "{\\"check\\": \\"$1\\", \\"status\\": \\"$2\\", \\"message\\": \\"$3\\"}"; }
report shell pass "sh runs"
if [ "$(id -u)" != "0" ]; then report non_root pass "uid $(id -u)";
  else report non_root fail "root"; fi
case "$DRYDOCK_DIGEST" in sha256:*) report digest_given pass "$DRYDOCK_DIGEST";;
  *) report digest_given fail "no digest";; esac
if nc -w 1 10.255.255.1 80 </dev/null 2>/dev/null; then report no_network fail "reached";
  else report no_network pass "unreachable"; fi
"""
# The same, plus a check this image fails: it ships no MCP server manifest.
FAILING_CHECKS = (
    PASSING_CHECKS
    + """\
if [ -f /etc/mcp/server.json ]; then report manifest pass ok;
  else report manifest fail "/etc/mcp/server.json is missing"; fi
"""
)


@pytest.fixture
def registry_login(registry_server: RegistryServer) -> Iterator[None]:
    """The tests' registry credential stored in Drydock, as `drydock registry login` would."""
    from models import credentials

    with session_scope() as session:
        credentials.store_static(
            session, registry_server.host, registry_server.username, registry_server.password
        )
    yield
    with session_scope() as session:
        credentials.remove(session, registry_server.host)


def suite(checks: str) -> dict[str, Any]:
    return {
        "command": ["/bin/sh", "/eval/checks.sh"],
        "files": {"checks.sh": checks},
        "results": "jsonl",
        "timeout_seconds": 5,
    }


def put_tier(name: str, checks: str, *, validity: int = 3600, window: int = 600) -> None:
    with session_scope() as session:
        evaluation.put_tier(
            session,
            name=name,
            suite=suite(checks),
            validity_seconds=validity,
            refresh_window_seconds=window,
            description="",
            by="test",
        )


def asset_in(
    state: TrustState, tenant: str, name: str, kind: AssetKind = AssetKind.HOST
) -> uuid.UUID:
    """An asset moved through the registry's own transitions to ``state``."""
    asset_id, _ = trust.register_asset(tenant=tenant, name=name, kind=kind, actor="test")
    path = {
        S.TRUSTED: (S.PENDING_ATTESTATION, S.TRUSTED),
        S.QUARANTINED: (S.PENDING_ATTESTATION, S.QUARANTINED),
        S.PENDING_ATTESTATION: (S.PENDING_ATTESTATION,),
    }[state]
    move_to(asset_id, *path)
    return asset_id


def refresh(image: EvaluationImage, tier: str, **extra: Any) -> Any:
    job = enqueue(
        "evaluation.refresh_certification",
        {
            "digest": image.digest,
            "tier": tier,
            "registry": image.host,
            "repository": image.repository,
            **extra,
        },
    )
    return wait_for_job(job.id, timeout=60)


def certification_of(job_id: uuid.UUID) -> EvaluationCertification:
    with session_scope() as session:
        cert = evaluation.certification_for_job(session, job_id)
        assert cert is not None, f"job {job_id} recorded no evaluation"
        session.expunge(cert)
        return cert


def test_a_passing_suite_certifies_the_digest_and_a_failing_one_revokes_it(
    fleet: WorkerProcess, evaluation_image: EvaluationImage, registry_login: None
) -> None:
    asset_in(S.TRUSTED, *HOST)
    put_tier("standard", PASSING_CHECKS)

    first_job = refresh(evaluation_image, "standard")
    assert first_job.status == "succeeded", first_job.error
    first = certification_of(first_job.id)
    assert first.status == "active"
    assert first.replaces_id is None
    assert first.issued_at is not None and first.expires_at is not None
    assert first.expires_at - first.issued_at == timedelta(seconds=3600)
    assert first.refresh_at == first.expires_at - timedelta(seconds=600)
    assert {(c["name"], c["status"]) for c in first.evidence} == {
        ("shell", "passed"),
        ("non_root", "passed"),
        ("digest_given", "passed"),
        ("no_network", "passed"),
    }
    with session_scope() as session:
        kept = session.scalars(
            select(ImageCertification).where(ImageCertification.digest == evaluation_image.digest)
        ).all()
        # Retention (pushes.prune_tags) keeps this digest while the certification lives.
        assert [(c.name, c.revoked_at, c.expires_at) for c in kept] == [
            ("evaluation:standard", None, first.expires_at)
        ]

    # The tier grows a check this image fails: the next evaluation revokes the certification.
    put_tier("standard", FAILING_CHECKS)
    second_job = refresh(evaluation_image, "standard", certification_id=str(first.id))
    assert second_job.status == "succeeded", second_job.error
    second = certification_of(second_job.id)
    assert second.status == "failed"
    assert second.replaces_id == first.id
    failed = [c for c in second.evidence if c["status"] == "failed"]
    assert [(c["name"], c["message"]) for c in failed] == [
        ("manifest", "/etc/mcp/server.json is missing")
    ]
    assert "manifest" in second.summary
    assert second_job.result["status"] == "failed"
    with session_scope() as session:
        assert [c.id for c in evaluation.lineage(session, second.id)] == [second.id, first.id]
        revoked = session.get(EvaluationCertification, first.id)
        assert revoked is not None and revoked.status == "revoked"
        assert revoked.reason.startswith("evaluation failed")
        assert session.scalars(
            select(ImageCertification.revoked_at).where(
                ImageCertification.digest == evaluation_image.digest
            )
        ).all() != [None]
        # Both runs passed the host-trust gate, and each says so.
        gates = session.scalars(
            select(PolicyDecision).where(PolicyDecision.kind == "evaluation_host")
        ).all()
        assert {(d.job_id, d.allowed) for d in gates} == {
            (first_job.id, True),
            (second_job.id, True),
        }


def test_a_suite_never_runs_on_a_host_that_is_not_trusted(
    fleet: WorkerProcess, evaluation_image: EvaluationImage, registry_login: None
) -> None:
    asset_in(S.QUARANTINED, *HOST)
    put_tier("standard", PASSING_CHECKS)

    job = refresh(evaluation_image, "standard")

    assert job.status == "dead_lettered"
    assert job.attempts == 1  # refused at once, not retried
    with session_scope() as session:
        letter = session.scalar(select(DeadLetter).where(DeadLetter.job_id == job.id))
        assert letter is not None and letter.error_class == "EvaluationRefusedError"
        assert "fleet/evaluation-host is quarantined, not trusted" in letter.message
        decision = session.scalar(select(PolicyDecision).where(PolicyDecision.job_id == job.id))
        assert decision is not None
        assert (decision.kind, decision.allowed) == ("evaluation_host", False)
        assert decision.gates[0]["gate"] == "host_trust"
        assert evaluation.certification_for_job(session, job.id) is None


def _certified(tier: str, image: EvaluationImage, evaluated_at: datetime) -> uuid.UUID:
    """An active certification evaluated at ``evaluated_at`` (a real job row owns it)."""
    job_id = uuid.uuid4()
    with session_scope() as session:
        session.add(
            Job(id=job_id, task_name="evaluation.refresh_certification", queue="evaluation",
                payload={}, status="succeeded")
        )  # fmt: skip
        session.flush()
        cert = evaluation.record_evaluation(
            session,
            evaluation.Evaluation(
                job_id=job_id,
                digest=image.digest,
                tier=tier,
                host=image.host,
                repository=image.repository,
                passed=True,
                evidence=[{"name": "seeded", "status": "passed"}],
                summary="seeded",
                evaluated_at=evaluated_at,
            ),
        )
        return cert.id


def test_a_certification_aging_into_its_window_is_claimed_once_and_goes_stale_after_expiry(
    fleet: WorkerProcess, evaluation_image: EvaluationImage, registry_login: None
) -> None:
    put_tier("standard", PASSING_CHECKS, validity=100, window=20)
    t0 = datetime(2026, 1, 1, tzinfo=UTC)
    cert_id = _certified("standard", evaluation_image, t0)

    with session_scope() as session:
        assert (
            evaluation_cadence.claim_due_refreshes(
                session, now=t0 + timedelta(seconds=79), limit=10
            )
            == []
        )
    with session_scope() as session:
        due = evaluation_cadence.claim_due_refreshes(
            session, now=t0 + timedelta(seconds=80), limit=10
        )
    assert [d.certification_id for d in due] == [cert_id]
    with session_scope() as session:
        # Claimed: a second sweep, at the same time or later, finds nothing to do.
        assert (
            evaluation_cadence.claim_due_refreshes(
                session, now=t0 + timedelta(seconds=90), limit=10
            )
            == []
        )
        assert evaluation_cadence.mark_stale(session, now=t0 + timedelta(seconds=99)) == 0
    with session_scope() as session:
        assert evaluation_cadence.mark_stale(session, now=t0 + timedelta(seconds=100)) == 1
    with session_scope() as session:
        cert = session.get(EvaluationCertification, cert_id)
        assert cert is not None and cert.status == "stale"


def test_two_cadence_sweeps_enqueue_one_refresh_which_renews_the_certification(
    fleet: WorkerProcess, evaluation_image: EvaluationImage, registry_login: None
) -> None:
    asset_in(S.TRUSTED, *HOST)
    put_tier("standard", PASSING_CHECKS, validity=3600, window=600)
    # Evaluated 50 minutes ago: ten minutes from expiry, inside the refresh window.
    old = _certified("standard", evaluation_image, datetime.now(UTC) - timedelta(minutes=50))

    sweeps = [enqueue("evaluation.sweep_certifications", {}) for _ in range(2)]
    results = [wait_for_job(s.id).result for s in sweeps]

    assert sorted(r["enqueued"] for r in results) == [0, 1]
    with session_scope() as session:
        refreshes = session.scalars(
            select(Job).where(Job.task_name == "evaluation.refresh_certification",
                              Job.enqueued_by == "beat:evaluation-cadence")
        ).all()  # fmt: skip
        assert len(refreshes) == 1
        claimed = session.get(EvaluationCertification, old)
        assert claimed is not None and claimed.refresh_job_id == refreshes[0].id
        assert refreshes[0].payload["certification_id"] == str(old)
    done = wait_for_job(refreshes[0].id, timeout=60)
    assert done.status == "succeeded", done.error
    renewed = certification_of(done.id)
    assert (renewed.status, renewed.replaces_id) == ("active", old)
    with session_scope() as session:
        previous = session.get(EvaluationCertification, old)
        assert previous is not None and previous.status == "superseded"


def test_stale_evidence_denies_a_placement_and_names_the_reason(
    fleet: WorkerProcess, evaluation_image: EvaluationImage, registry_login: None
) -> None:
    from drydock.api import app
    from tests.test_api import bearer, make_token

    target = asset_in(S.TRUSTED, "acme", "node-1")
    put_tier("standard", PASSING_CHECKS, validity=100, window=20)
    cert_id = _certified("standard", evaluation_image, datetime.now(UTC) - timedelta(hours=1))
    request = policy_store.PlacementRequest(
        digest=evaluation_image.digest, tier="standard", asset="node-1", tenant="acme"
    )

    # Expired but not yet swept: denied already, as expired.
    with session_scope() as session:
        row = placement.decide_placement(session, request, actor="test")
        assert not row.allowed
        assert "evidence is stale (expired" in row.summary
    sweep = wait_for_job(enqueue("evaluation.sweep_certifications", {}).id)
    assert sweep.result["stale"] == 1

    api = TestClient(app)
    token = make_token("placer", "policy.decide")
    answer = api.post(
        "/v1/policy/decide",
        json={"digest": evaluation_image.digest, "tier": "standard", "asset": "node-1",
              "tenant": "acme"},
        headers=bearer(token),
    )  # fmt: skip
    assert answer.status_code == 200, answer.text
    body = answer.json()
    assert body["allowed"] is False
    gates = {g["gate"]: g for g in body["gates"]}
    assert set(gates) == {
        "trust_state",
        "accelerator_posture",
        "evaluation_freshness",
        "active_remediation",
        "anomaly_score",
        "tenant_rules",
    }
    assert [name for name, g in gates.items() if not g["passed"]] == ["evaluation_freshness"]
    assert "evidence is stale" in gates["evaluation_freshness"]["reason"]
    assert body["summary"].startswith("evaluation_freshness: ")
    with session_scope() as session:
        recorded = session.get(PolicyDecision, body["id"])
        assert recorded is not None and recorded.kind == "placement" and not recorded.allowed
        stale = session.get(EvaluationCertification, cert_id)
        assert stale is not None and stale.status == "stale"

    # A fresh evaluation makes the same placement allowed; a quarantined target denies it.
    _certified("standard", evaluation_image, datetime.now(UTC))
    with session_scope() as session:
        assert placement.decide_placement(session, request, actor="test").allowed
    move_to(target, S.QUARANTINED)
    with session_scope() as session:
        denied = placement.decide_placement(session, request, actor="test")
        assert not denied.allowed
        assert denied.summary == "trust_state: acme/node-1 is quarantined, not trusted"


@pytest.mark.parametrize("as_operator", [True, False])
def test_tenant_tokens_decide_only_for_their_tenant(
    fleet: WorkerProcess, as_operator: bool
) -> None:
    from catalog import CATALOG
    from drydock.api import app
    from models import tokens
    from tests.test_api import bearer

    with session_scope() as session:
        _, plaintext = tokens.create_token(
            session, name="t", scopes=["policy.decide"], known_tasks=CATALOG, created_by="test",
            tenant=None if as_operator else "acme",
        )  # fmt: skip
    api = TestClient(app)
    body = {"digest": "sha256:" + "a" * 64, "tier": "standard", "asset": "x", "tenant": "globex"}
    answer = api.post("/v1/policy/decide", json=body, headers=bearer(plaintext))
    if as_operator:
        assert answer.status_code == 200
        assert answer.json()["tenant"] == "globex"
    else:
        assert answer.status_code == 403

"""/metrics: Prometheus text that Prometheus's own parser reads, with numbers that add up."""

from __future__ import annotations

import os
import time
from collections.abc import Callable

import pytest
from fastapi.testclient import TestClient
from prometheus_client.parser import text_string_to_metric_families

from dispatch.enqueue import enqueue
from drydock import metrics as metrics_module
from tests.conftest import WorkerProcess, wait_for_job

pytestmark = pytest.mark.fleet


def scrape(client: TestClient) -> dict[str, dict[tuple[tuple[str, str], ...], float]]:
    response = client.get("/metrics")
    assert response.status_code == 200
    assert response.headers["content-type"].startswith("text/plain")
    samples: dict[str, dict[tuple[tuple[str, str], ...], float]] = {}
    for family in text_string_to_metric_families(response.text):
        for sample in family.samples:
            key = tuple(sorted(sample.labels.items()))
            samples.setdefault(sample.name, {})[key] = sample.value
    return samples


def test_metrics_count_jobs_retries_dead_letters_durations_and_depth(
    fleet: WorkerProcess,
    worker_factory: Callable[..., WorkerProcess],
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    from drydock.api import app

    monkeypatch.setattr(metrics_module, "CACHE_SECONDS", 0.0)
    ok = [enqueue("builds.canary", {"message": str(n)}) for n in range(3)]
    retried = enqueue("pushes.canary", {"fail_attempts": 1})
    dead = enqueue("pushes.canary", {"fail_permanently": True})
    for job in [*ok, retried, dead]:
        wait_for_job(job.id)
    # Nobody serves the private queue in this test: these wait there.
    for _ in range(2):
        enqueue("remediation.canary", {})

    with TestClient(app) as client:
        samples = scrape(client)

    jobs = samples["drydock_jobs"]
    assert jobs[(("queue", "builds"), ("status", "succeeded"), ("task", "builds.canary"))] == 3
    assert jobs[(("queue", "pushes"), ("status", "succeeded"), ("task", "pushes.canary"))] == 1
    assert jobs[(("queue", "pushes"), ("status", "dead_lettered"), ("task", "pushes.canary"))] == 1
    assert (
        jobs[(("queue", "remediation"), ("status", "queued"), ("task", "remediation.canary"))] == 2
    )

    assert samples["drydock_job_retries_total"][(("task", "pushes.canary"),)] == 1
    assert samples["drydock_job_dead_letters_total"][(("task", "pushes.canary"),)] == 1
    waiting = samples["drydock_dead_letters_waiting"]
    assert waiting[(("reason", "permanent_error"), ("task", "pushes.canary"))] == 1

    depth = samples["drydock_queue_depth"]
    assert depth[(("queue", "remediation"),)] == 2
    assert depth[(("queue", "dead_letter"),)] == 1
    assert depth[(("queue", "builds"),)] == 0

    counts = samples["drydock_job_attempt_duration_seconds_count"]
    assert counts[(("outcome", "succeeded"), ("task", "builds.canary"))] == 3
    assert counts[(("outcome", "retry"), ("task", "pushes.canary"))] == 1
    assert counts[(("outcome", "failed"), ("task", "pushes.canary"))] == 1
    buckets = samples["drydock_job_attempt_duration_seconds_bucket"]
    inf = buckets[(("le", "+Inf"), ("outcome", "succeeded"), ("task", "builds.canary"))]
    assert inf == 3
    # Cumulative: each bucket holds at least as many as the one below it.
    ordered = sorted(
        (float(dict(k)["le"]), v)
        for k, v in buckets.items()
        if dict(k)["outcome"] == "succeeded" and dict(k)["task"] == "builds.canary"
    )
    assert [v for _, v in ordered] == sorted(v for _, v in ordered)

    # No beat and an unserved queue: the fleet is not healthy, and the metric says so.
    assert samples["drydock_fleet_healthy"][()] == 0
    assert samples["drydock_workers"][(("state", "alive"),)] >= 1, samples["drydock_workers"]

    # Counters only grow: another retry shows up on the next scrape.
    again = enqueue("pushes.canary", {"fail_attempts": 1})
    wait_for_job(again.id)
    time.sleep(0.05)
    with TestClient(app) as client:
        assert scrape(client)["drydock_job_retries_total"][(("task", "pushes.canary"),)] == 2


def test_metrics_count_trust_assets_remediation_runs_probes_and_denials(
    fleet: WorkerProcess, monkeypatch: pytest.MonkeyPatch
) -> None:
    from sqlalchemy import update

    from drydock.api import app
    from kernel.decisions import Decision, Gate, GateName
    from models import credentials, policy, trust
    from models.db import session_scope
    from models.remediation import RemediationPlaybook, RemediationRun

    monkeypatch.setattr(metrics_module, "CACHE_SECONDS", 0.0)
    with session_scope() as session:
        session.merge(trust.TrustAssetClass(name="gpu-node", evidence_ttl_seconds=3600))
    gpu = [
        trust.register_asset(
            tenant="t",
            name=f"gpu-{n}",
            kind=trust.AssetKind.HOST,
            actor="test",
            asset_class="gpu-node",
        )[0]
        for n in range(3)
    ]
    trust.register_asset(tenant="t", name="plain", kind=trust.AssetKind.VM, actor="test")
    with session_scope() as session:
        session.execute(
            update(trust.TrustAsset)
            .where(trust.TrustAsset.id == gpu[0])
            .values(state=trust.TrustState.QUARANTINED.value)
        )
        playbook = RemediationPlaybook(
            tenant="t",
            name="reboot",
            version=1,
            executor="shell",
            spec={},
            timeout_seconds=60,
            asset_kinds=["host"],
        )
        session.add(playbook)
        session.flush()
        for state in ("succeeded", "succeeded", "failed", "queued"):
            session.add(
                RemediationRun(
                    tenant="t",
                    asset_id=gpu[0],
                    playbook_id=playbook.id,
                    playbook_name="reboot",
                    playbook_version=1,
                    state=state,
                    requested_by="test",
                )
            )
        for kind in ("probe_accepted", "probe_accepted", "probe_refused", "rotated"):
            credentials.record_event(
                session, "registry.test:5000", credentials.CredentialEventKind(kind), {}
            )
        refused_twice = Decision.of(
            [
                Gate(GateName.TRUST_STATE, False, "quarantined"),
                Gate(GateName.TENANT_RULES, False, "digest not allowed"),
            ]
        )
        refused_once = Decision.of(
            [Gate(GateName.TRUST_STATE, True, "trusted"), Gate(GateName.TASK_KIND, False, "no")]
        )
        allowed = Decision.of([Gate(GateName.TRUST_STATE, True, "trusted")])
        for kind, decision in [
            (policy.PolicyDecisionKind.PLACEMENT, refused_twice),
            (policy.PolicyDecisionKind.PLACEMENT, refused_twice),
            (policy.PolicyDecisionKind.ADMISSION, refused_once),
            (policy.PolicyDecisionKind.ADMISSION, allowed),
        ]:
            policy.record_decision(session, kind, decision, request={}, tenant="t", actor="test")

    with TestClient(app) as client:
        samples = scrape(client)

    assets = samples["drydock_trust_assets"]
    assert assets[(("asset_class", "gpu-node"), ("state", "unknown"))] == 2
    assert assets[(("asset_class", "gpu-node"), ("state", "quarantined"))] == 1
    assert assets[(("asset_class", ""), ("state", "unknown"))] == 1
    runs = samples["drydock_remediation_runs"]
    assert runs == {
        (("state", "succeeded"),): 2,
        (("state", "failed"),): 1,
        (("state", "queued"),): 1,
    }
    probes = samples["drydock_credential_probes_total"]
    assert probes == {
        (("outcome", "accepted"), ("registry", "registry.test:5000")): 2,
        (("outcome", "refused"), ("registry", "registry.test:5000")): 1,
    }
    denials = samples["drydock_policy_denials_total"]
    assert denials == {
        (("gate", "trust_state"), ("kind", "placement")): 2,
        (("gate", "tenant_rules"), ("kind", "placement")): 2,
        (("gate", "task_kind"), ("kind", "admission")): 1,
    }
    # Peers health probed: the engine configured for the tests, libvirt's test driver.
    up = samples["drydock_peer_up"]
    assert up[(("kind", "libvirt"), ("name", "test:///default"))] == 1
    assert (("kind", "docker_engine"), ("name", os.environ["DRYDOCK_DOCKER_HOST"])) in up
    latency = samples["drydock_peer_latency_seconds"]
    assert latency[(("kind", "libvirt"), ("name", "test:///default"))] > 0

"""/metrics: Prometheus text that Prometheus's own parser reads, with numbers that add up."""

from __future__ import annotations

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

"""Prometheus metrics for `/metrics`, read from the outcome store and the broker at scrape time.

The outcome store already holds every job and every attempt, so the metrics are aggregates of
it rather than counters kept in each worker process (which prefork pools would scatter across
processes and lose on restart). Each scrape runs a few GROUP BY queries over the jobs and
job_events tables; results are cached for ``CACHE_SECONDS`` so several scrapers cost one read.
On a very large table, pruning old jobs keeps a scrape cheap.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Iterable, Iterator

from prometheus_client import CollectorRegistry, generate_latest
from prometheus_client.core import (
    CounterMetricFamily,
    GaugeMetricFamily,
    HistogramMetricFamily,
    Metric,
)
from prometheus_client.registry import Collector
from sqlalchemy.orm import Session

from drydock.health import FleetHealth, check_fleet
from kernel.settings import Settings, get_settings
from models import job_reads, metric_counts
from models.builds import registry_telemetry_counts
from models.db import session_scope
from models.jobs import EventKind

CACHE_SECONDS = 5.0
# Seconds; from a canary's milliseconds to an hour-long build.
DURATION_BUCKETS = (0.05, 0.25, 1.0, 5.0, 30.0, 120.0, 600.0, 1800.0, 3600.0)


class DrydockCollector(Collector):
    def __init__(self, settings: Settings | None = None) -> None:
        self._settings = settings
        self._lock = threading.Lock()
        self._cached: tuple[float, list[Metric]] | None = None

    def collect(self) -> Iterator[Metric]:
        with self._lock:
            now = time.monotonic()
            if self._cached is None or now - self._cached[0] > CACHE_SECONDS:
                self._cached = (now, list(self._read()))
            yield from self._cached[1]

    def _read(self) -> Iterable[Metric]:
        settings = self._settings or get_settings()
        health = check_fleet(settings)
        yield from _fleet_metrics(health)
        if not health.database_reachable:
            return
        with session_scope() as session:
            jobs = GaugeMetricFamily(
                "drydock_jobs",
                "Jobs in the outcome store by task, queue and current status.",
                labels=["task", "queue", "status"],
            )
            for task, queue, status, count in job_reads.job_counts(session):
                jobs.add_metric([task, queue, status], count)
            yield jobs

            counts = job_reads.event_counts(session, [EventKind.RETRY, EventKind.DEAD_LETTERED])
            retries = CounterMetricFamily(
                "drydock_job_retries", "Retries scheduled after transient errors.", labels=["task"]
            )
            dead = CounterMetricFamily(
                "drydock_job_dead_letters", "Jobs dead-lettered.", labels=["task"]
            )
            for task, kind, count in counts:
                (retries if kind == EventKind.RETRY.value else dead).add_metric([task], count)
            yield retries
            yield dead

            waiting = GaugeMetricFamily(
                "drydock_dead_letters_waiting",
                "Dead letters not yet replayed, by task and reason.",
                labels=["task", "reason"],
            )
            for task, reason, count in job_reads.waiting_dead_letters(session):
                waiting.add_metric([task, reason], count)
            yield waiting

            durations = HistogramMetricFamily(
                "drydock_job_attempt_duration_seconds",
                "How long attempts ran, by task and how they ended.",
                labels=["task", "outcome"],
            )
            for row in job_reads.attempt_durations(session, DURATION_BUCKETS):
                buckets = [
                    (_bound(bound), float(n))
                    for bound, n in zip(DURATION_BUCKETS, row.cumulative, strict=True)
                ]
                buckets.append(("+Inf", float(row.count)))
                durations.add_metric(
                    [row.task_name, row.outcome], buckets, sum_value=row.sum_seconds
                )
            yield durations

            registry_events = CounterMetricFamily(
                "drydock_registry_events",
                "Registry telemetry events by kind, platform and error kind (push_failed, "
                "push_retry), and auth refreshes by outcome.",
                labels=["kind", "platform", "error_kind", "outcome"],
            )
            pushed_bytes = CounterMetricFamily(
                "drydock_registry_pushed_bytes",
                "Layer bytes sent to registries by successful pushes.",
                labels=["platform"],
            )
            for counted in registry_telemetry_counts(session):
                registry_events.add_metric(
                    [counted.kind, counted.platform, counted.error_kind, counted.outcome],
                    counted.count,
                )
                if counted.kind == "push_succeeded":
                    pushed_bytes.add_metric([counted.platform], counted.bytes)
            yield registry_events
            yield pushed_bytes
            yield from _domain_metrics(session)


def _domain_metrics(session: Session) -> Iterable[Metric]:
    trust = GaugeMetricFamily(
        "drydock_trust_assets",
        "Trust assets by class (empty: none) and trust state.",
        labels=["asset_class", "state"],
    )
    for counted in metric_counts.trust_asset_counts(session):
        trust.add_metric([counted.asset_class, counted.state], counted.count)
    yield trust

    runs = GaugeMetricFamily(
        "drydock_remediation_runs", "Remediation runs by current state.", labels=["state"]
    )
    for state, count in sorted(metric_counts.remediation_run_counts(session).items()):
        runs.add_metric([state], count)
    yield runs

    probes = CounterMetricFamily(
        "drydock_credential_probes",
        "Registry credential probes by registry and outcome (accepted, refused, failed: the "
        "registry could not be asked).",
        labels=["registry", "outcome"],
    )
    for host, kind, count in metric_counts.credential_probe_counts(session):
        probes.add_metric([host, kind.removeprefix("probe_")], count)
    yield probes

    denials = CounterMetricFamily(
        "drydock_policy_denials",
        "Policy decisions a gate refused, by gate and decision kind (a decision several gates "
        "refused counts for each).",
        labels=["gate", "kind"],
    )
    for denied in metric_counts.gate_denial_counts(session):
        denials.add_metric([denied.gate, denied.decision_kind], denied.count)
    yield denials


def _fleet_metrics(health: FleetHealth) -> Iterable[Metric]:
    healthy = GaugeMetricFamily(
        "drydock_fleet_healthy", "1 when /health/fleet says healthy, else 0."
    )
    healthy.add_metric([], 1.0 if health.healthy else 0.0)
    yield healthy

    depth = GaugeMetricFamily(
        "drydock_queue_depth", "Messages waiting in each queue.", labels=["queue"]
    )
    for queue in health.queues:
        depth.add_metric([queue.name], queue.depth)
    if health.dead_letter_depth is not None:
        depth.add_metric(["dead_letter"], health.dead_letter_depth)
    yield depth

    workers = GaugeMetricFamily(
        "drydock_workers", "Workers known by heartbeat, alive or lost.", labels=["state"]
    )
    workers.add_metric(["alive"], sum(1 for w in health.workers if w.alive))
    workers.add_metric(["lost"], sum(1 for w in health.workers if not w.alive))
    yield workers

    stuck = GaugeMetricFamily("drydock_stuck_jobs", "Jobs health considers stuck.")
    stuck.add_metric([], len(health.stuck_jobs))
    yield stuck

    if health.beat.last_tick is not None:
        beat = GaugeMetricFamily(
            "drydock_beat_last_tick_timestamp_seconds", "When Beat last ticked (Unix time)."
        )
        beat.add_metric([], health.beat.last_tick.timestamp())
        yield beat

    configured = [peer for peer in health.peers if peer.status != "not configured"]
    up = GaugeMetricFamily(
        "drydock_peer_up",
        "1 when health reached the peer (Docker engine, registry, libvirt, Kubernetes API).",
        labels=["kind", "name"],
    )
    latency = GaugeMetricFamily(
        "drydock_peer_latency_seconds",
        "How long the peer took to answer health's probe.",
        labels=["kind", "name"],
    )
    for peer in configured:
        up.add_metric([peer.kind, peer.name], 1.0 if peer.status == "reachable" else 0.0)
        if peer.status == "reachable" and peer.latency_ms is not None:
            latency.add_metric([peer.kind, peer.name], peer.latency_ms / 1000)
    yield up
    yield latency


def _bound(bound: float) -> str:
    return repr(float(bound))


def render(collector: DrydockCollector) -> bytes:
    registry = CollectorRegistry(auto_describe=False)
    registry.register(collector)
    return generate_latest(registry)

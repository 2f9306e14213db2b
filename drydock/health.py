"""Is the fleet healthy? One answer for `/health/fleet`, `drydock health` and `/metrics`.

``gather`` reads the facts (queue depths and heartbeats from Redis, running jobs from
PostgreSQL); ``assess`` turns facts into a verdict with reasons and is pure, so every rule is
testable without a broker. The fleet is unhealthy when:

- the broker or the database cannot be reached;
- a work queue has no live worker;
- a worker stopped heartbeating (it died, or its event loop is wedged);
- a job is stuck: running longer than its queue's hard time limit, or its worker is lost;
- Beat has not ticked within three heartbeats (or never did);
- a peer (the Docker engine, a registry, libvirt, the Kubernetes API) cannot be reached and a
  queue whose tasks need it (``peers.PEER_QUEUES``) has a live worker: that work would fail.

Dead letters waiting for an operator are a warning, not a failure: the fleet is doing its job.
So is every unreachable peer (a warning always, a reason only under the rule above: a peer
that no live worker's queue uses cannot stop any work), and a peer that answered but refused
its credential (a registry's 401, the Kubernetes API's 401: Beat's credential rotation or an
operator fixes that, and the tasks report it). A peer nobody configured is "not configured",
neither a warning nor a reason (``drydock.peers`` says what configures each). Peer probes are
bounded by ``health_peer_timeout_seconds``, together, and no report holds a secret.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from typing import Literal

import redis
from kombu.transport.redis import PRIORITY_STEPS
from kombu.transport.redis import Channel as RedisChannel
from pydantic import BaseModel
from sqlalchemy.exc import SQLAlchemyError

from drydock import peers
from drydock.peers import PEER_LABELS, PEER_QUEUES, PeerKind, PeerProbe
from kernel.settings import Settings, get_settings
from kernel.topology import DEAD_LETTER_QUEUE, WORK_QUEUES
from models import job_reads
from models.db import session_scope
from workers.heartbeat import WorkerBeat, last_beat_tick, read_workers, redis_client


class QueueReport(BaseModel):
    name: str
    depth: int
    workers: list[str]


class WorkerReport(BaseModel):
    hostname: str
    pid: int
    queues: list[str]
    concurrency: int | None
    active: int
    last_heartbeat: datetime
    seconds_since_heartbeat: float
    alive: bool


class StuckJobReport(BaseModel):
    id: str
    task_name: str
    queue: str
    worker: str | None
    started_at: datetime | None
    running_seconds: float | None
    reason: str


class BeatReport(BaseModel):
    last_tick: datetime | None
    seconds_since_tick: float | None
    alive: bool


class PeerReport(BaseModel):
    kind: PeerKind
    # The engine's address, the registry's host, the libvirt URI, the Kubernetes API server.
    name: str
    status: Literal["reachable", "unreachable", "not configured"]
    latency_ms: float | None
    # Whether the peer accepted the credential sent (None: none sent, or no answer).
    credential_accepted: bool | None
    # What the peer said (its version, the HTTP status), or why it could not be asked.
    detail: str | None
    error: str | None
    # The queues whose tasks need this peer, and those of them a live worker serves.
    queues: list[str]
    live_queues: list[str]


class FleetHealth(BaseModel):
    status: Literal["healthy", "unhealthy"]
    reasons: list[str]
    warnings: list[str]
    checked_at: datetime
    broker_reachable: bool
    database_reachable: bool
    queues: list[QueueReport]
    dead_letter_depth: int | None
    workers: list[WorkerReport]
    stuck_jobs: list[StuckJobReport]
    beat: BeatReport
    peers: list[PeerReport] = []

    @property
    def healthy(self) -> bool:
        return self.status == "healthy"


@dataclass
class FleetFacts:
    """What ``gather`` read; None where the source could not be reached."""

    now: float
    queue_depths: dict[str, int] | None
    workers: list[WorkerBeat] | None
    beat_tick: float | None
    running_jobs: list[job_reads.RunningJob] | None
    # None: not probed (``gather(probe_peers=False)``, or facts made by hand).
    peers: list[PeerProbe] | None = None
    broker_error: str | None = None
    database_error: str | None = None
    notes: list[str] = field(default_factory=list)


def queue_depth(client: redis.Redis[bytes], queue: str) -> int:
    # Kombu's Redis transport keeps each priority level of a queue in a list of its own.
    names = [f"{queue}{RedisChannel.sep}{step}" if step else queue for step in PRIORITY_STEPS]
    pipe = client.pipeline(transaction=False)
    for name in names:
        pipe.llen(name)
    return sum(int(n) for n in pipe.execute())


def gather(
    settings: Settings | None = None, *, now: float | None = None, probe_peers: bool = True
) -> FleetFacts:
    settings = settings or get_settings()
    facts = FleetFacts(
        now=now or time.time(), queue_depths=None, workers=None, beat_tick=None, running_jobs=None
    )
    client = redis_client(settings)
    try:
        facts.queue_depths = {q: queue_depth(client, q) for q in (*WORK_QUEUES, DEAD_LETTER_QUEUE)}
        facts.workers = read_workers(client)
        facts.beat_tick = last_beat_tick(client)
    except redis.RedisError as exc:
        facts.broker_error = str(exc) or type(exc).__name__
    finally:
        client.close()
    since = datetime.fromtimestamp(facts.now, UTC) - timedelta(hours=settings.stuck_scan_hours)
    registries: list[peers.RegistryTarget] | None = None
    try:
        with session_scope() as session:
            facts.running_jobs = job_reads.running_jobs(session, enqueued_since=since)
            registries = peers.registry_targets(session) if probe_peers else []
    except SQLAlchemyError as exc:
        original = getattr(exc, "orig", None) or exc
        facts.database_error = " ".join(str(original).split())[:300]
    if probe_peers:
        facts.peers = peers.probe_peers(settings, registries)
        if registries is None:
            facts.notes.append("registries not probed: their credentials could not be read")
    return facts


def assess(facts: FleetFacts, settings: Settings) -> FleetHealth:
    reasons: list[str] = []
    warnings: list[str] = []
    stale_after = settings.heartbeat_stale_seconds
    if facts.broker_error:
        reasons.append(f"broker unreachable: {facts.broker_error}")
    if facts.database_error:
        reasons.append(f"database unreachable: {facts.database_error}")

    workers = [
        WorkerReport(
            hostname=w.hostname,
            pid=w.pid,
            queues=list(w.queues),
            concurrency=w.concurrency,
            active=w.active,
            last_heartbeat=datetime.fromtimestamp(w.last_heartbeat, UTC),
            seconds_since_heartbeat=round(w.age(facts.now), 1),
            alive=w.age(facts.now) <= stale_after,
        )
        for w in sorted(facts.workers or [], key=lambda w: w.hostname)
    ]
    alive = {w.hostname: w for w in workers if w.alive}
    for w in workers:
        if not w.alive:
            reasons.append(
                f"worker {w.hostname} lost: last heartbeat {w.seconds_since_heartbeat:.0f}s ago"
            )

    queues: list[QueueReport] = []
    if facts.queue_depths is not None:
        for name in WORK_QUEUES:
            serving = sorted(h for h, w in alive.items() if name in w.queues)
            depth = facts.queue_depths.get(name, 0)
            queues.append(QueueReport(name=name, depth=depth, workers=serving))
            if not serving:
                reasons.append(f"queue {name} has no live worker ({depth} waiting)")
    dead_letters = None if facts.queue_depths is None else facts.queue_depths[DEAD_LETTER_QUEUE]
    if dead_letters:
        warnings.append(f"{dead_letters} job(s) in the dead-letter queue (drydock dlq list)")

    stuck = _stuck_jobs(facts, settings, alive, {w.hostname: w for w in workers})
    if stuck:
        reasons.append(f"{len(stuck)} stuck job(s)")

    if facts.beat_tick is None:
        beat = BeatReport(last_tick=None, seconds_since_tick=None, alive=False)
        if not facts.broker_error:  # unknown, not silent: the broker reason says why
            reasons.append("Beat has not ticked (is `drydock beat` running?)")
    else:
        age = max(0.0, facts.now - facts.beat_tick)
        beat = BeatReport(
            last_tick=datetime.fromtimestamp(facts.beat_tick, UTC),
            seconds_since_tick=round(age, 1),
            alive=age <= stale_after,
        )
        if not beat.alive:
            reasons.append(f"Beat last ticked {age:.0f}s ago")

    peer_reports = _peer_reports(facts.peers or [], queues, reasons, warnings)

    return FleetHealth(
        status="unhealthy" if reasons else "healthy",
        reasons=reasons,
        warnings=warnings + facts.notes,
        checked_at=datetime.fromtimestamp(facts.now, UTC),
        broker_reachable=facts.broker_error is None,
        database_reachable=facts.database_error is None,
        queues=queues,
        dead_letter_depth=dead_letters,
        workers=workers,
        stuck_jobs=stuck,
        beat=beat,
        peers=peer_reports,
    )


def _peer_reports(
    probes: list[PeerProbe],
    queues: list[QueueReport],
    reasons: list[str],
    warnings: list[str],
) -> list[PeerReport]:
    """The peers' reports; each unreachable one a warning, and a reason when a queue that needs
    it has a live worker; a refused credential a warning."""
    served = {q.name for q in queues if q.workers}
    reports = []
    for probe in probes:
        needed_by = list(PEER_QUEUES[probe.kind])
        live = [q for q in needed_by if q in served]
        label = f"{PEER_LABELS[probe.kind]} {probe.name}".strip()
        if not probe.configured:
            status: Literal["reachable", "unreachable", "not configured"] = "not configured"
        elif probe.reachable:
            status = "reachable"
        else:
            status = "unreachable"
            warnings.append(f"{label} unreachable: {probe.error}")
            if live:
                reasons.append(
                    f"{label} unreachable, and live workers serve {', '.join(live)}, "
                    "whose tasks need it"
                )
        if probe.configured and probe.reachable and probe.credential_accepted is False:
            warnings.append(f"{label} refused the credential sent: {probe.detail}")
        reports.append(
            PeerReport(
                kind=probe.kind,
                name=probe.name,
                status=status,
                latency_ms=probe.latency_ms,
                credential_accepted=probe.credential_accepted,
                detail=probe.detail,
                error=probe.error,
                queues=needed_by,
                live_queues=live,
            )
        )
    return reports


def _stuck_jobs(
    facts: FleetFacts,
    settings: Settings,
    alive: dict[str, WorkerReport],
    known: dict[str, WorkerReport],
) -> list[StuckJobReport]:
    stuck = []
    for job in facts.running_jobs or []:
        running = None if job.started_at is None else facts.now - job.started_at.timestamp()
        limit = settings.time_limits.get(job.queue)
        reason = None
        if limit is not None and running is not None and running > limit:
            reason = f"running {running:.0f}s, past its {limit}s time limit"
        elif facts.workers is not None and job.worker and job.worker not in alive:
            if job.worker in known:
                reason = f"its worker {job.worker} is lost"
            else:
                reason = f"its worker {job.worker} has no heartbeat"
        if reason is None:
            continue
        stuck.append(
            StuckJobReport(
                id=str(job.id),
                task_name=job.task_name,
                queue=job.queue,
                worker=job.worker,
                started_at=job.started_at,
                running_seconds=None if running is None else round(running, 1),
                reason=reason,
            )
        )
    return stuck


def check_fleet(settings: Settings | None = None) -> FleetHealth:
    settings = settings or get_settings()
    return assess(gather(settings), settings)

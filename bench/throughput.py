"""Throughput of Drydock against bare Celery, on the same Redis and worker settings.

    python bench/throughput.py [--jobs 20000] [--concurrency 2] [--probes 1000]

It starts its own Redis and PostgreSQL (default durability settings: fsync on), then for each of
(a) bare Celery with a no-op task and (b) Drydock's canary with its outcome and event rows:

1. fills the ``attestation`` queue with N jobs through each one's own producer path (bare:
   ``send_task``; Drydock: ``enqueue``, which validates and writes the job row) and reports the
   enqueue rate;
2. starts one worker with the same settings (``drydock worker`` defaults for the queue) and
   times it from ready until the queue is drained and every message acknowledged: jobs/s;
3. sends latency probes at a steady rate below capacity to the running worker and reports
   enqueue→start latency p50/p99 (from the producer's call to the moment the job started).

The target is a ratio (Drydock / bare jobs/s) of at least 0.8: Drydock's bookkeeping may cost
at most a fifth of bare Celery's throughput. Both run under the time limits Drydock gives the
queue's tasks (a worker setting: Celery's parent process keeps a timer per task, which alone
costs about a tenth of this worker's throughput), so the ratio measures the bookkeeping. A third
run, bare Celery without time limits, is printed for reference. It also prints the CPU each
process spent per job while draining (worker main process, pool, PostgreSQL, Redis), which is
where to look when the ratio moves.
"""

from __future__ import annotations

import argparse
import os
import shutil
import signal
import statistics
import subprocess
import sys
import tempfile
import time
import uuid
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from drydock import localservers  # noqa: E402

QUEUE = "attestation"
# Bare Celery without the time limits Drydock's tasks run under: shown, not compared.
BARE_NO_LIMITS = "bare-no-limits"
MODES = ("bare", "drydock", BARE_NO_LIMITS)


def configure(redis_url: str, db_url: str) -> None:
    os.environ.update(
        {
            "DRYDOCK_BROKER_URL": redis_url,
            "DRYDOCK_DATABASE_URL": db_url,
            "DRYDOCK_CANARY_INTERVAL_SECONDS": "0",
            # The producer (this process) stays quiet; workers log at INFO like production.
            "DRYDOCK_LOG_LEVEL": "WARNING",
        }
    )


def start_worker(kind: str, concurrency: int, log_path: Path) -> subprocess.Popen[bytes]:
    from workers.queues import prefetch_for

    common = [
        f"--concurrency={concurrency}",
        f"--prefetch-multiplier={prefetch_for([QUEUE])}",
        "--loglevel=INFO",
        "--task-events",
        "-O",
        "fair",
        f"--hostname=bench-{kind}@%h",
        f"--queues={QUEUE}",
    ]
    if kind.startswith("bare"):
        argv = [sys.executable, "-m", "celery", "-A", "bench.bare_app", "worker", *common]
    else:
        argv = [sys.executable, "-m", "celery", "-A", "workers.app", "worker", *common]
    log = open(log_path, "wb")  # noqa: SIM115  closed with the process
    proc = subprocess.Popen(
        argv,
        stdout=log,
        stderr=subprocess.STDOUT,
        cwd=ROOT,
        start_new_session=True,
        env={**os.environ, "DRYDOCK_LOG_LEVEL": "INFO"},
    )
    localservers.wait_for(
        lambda: b"ready." in log_path.read_bytes() or proc.poll() is not None, 60, kind
    )
    if proc.poll() is not None:
        raise RuntimeError(f"{kind} worker exited:\n{log_path.read_text()[-2000:]}")
    return proc


def stop_worker(proc: subprocess.Popen[bytes]) -> None:
    os.killpg(proc.pid, signal.SIGTERM)
    try:
        proc.wait(30)
    except subprocess.TimeoutExpired:
        os.killpg(proc.pid, signal.SIGKILL)
        proc.wait(10)


_TICKS = os.sysconf("SC_CLK_TCK")


def cpu_seconds(pid: int) -> float:
    """User+system CPU of one process (and its reaped children), from /proc."""
    try:
        fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    except (FileNotFoundError, ProcessLookupError):
        return 0.0
    # utime, stime, cutime, cstime are fields 14-17 (1-based); after the comm they start at 11.
    return sum(int(f) for f in fields[11:15]) / _TICKS


def children(pid: int) -> list[int]:
    out = subprocess.run(["pgrep", "-P", str(pid)], capture_output=True, text=True).stdout
    return [int(p) for p in out.split()]


def cpu_snapshot(worker_pid: int, servers: dict[str, list[int]]) -> dict[str, float]:
    """CPU seconds so far per role: the worker's main process, its pool, and each server."""
    snap = {"worker main": cpu_seconds(worker_pid)}
    snap["worker pool"] = sum(cpu_seconds(c) for c in children(worker_pid))
    for name, roots in servers.items():
        snap[name] = sum(cpu_seconds(r) + sum(cpu_seconds(c) for c in children(r)) for r in roots)
    return snap


def drained(client: Any) -> bool:
    return bool(client.llen(QUEUE) == 0 and client.hlen("unacked") == 0)


def run_mode(
    kind: str,
    jobs: int,
    probes: int,
    concurrency: int,
    workdir: Path,
    servers: dict[str, list[int]],
) -> dict[str, Any]:
    import redis

    from workers.settings import get_settings

    client = redis.Redis.from_url(get_settings().broker_url)
    client.delete(QUEUE, "unacked", "unacked_index", "bench:starts")
    send = producer(kind)

    started = time.perf_counter()
    for _ in range(jobs):
        send(False)
    enqueue_seconds = time.perf_counter() - started
    print(f"  {kind}: enqueued {jobs} jobs at {jobs / enqueue_seconds:,.0f} jobs/s", flush=True)

    proc = start_worker(kind, concurrency, workdir / f"worker-{kind}.log")
    try:
        before = cpu_snapshot(proc.pid, servers)
        began = time.perf_counter()
        while not drained(client):
            time.sleep(0.02)
        run_seconds = time.perf_counter() - began
        after = cpu_snapshot(proc.pid, servers)
        cpu_ms = {role: (after[role] - before[role]) * 1000 / jobs for role in after}
        rate = jobs / run_seconds
        print(f"  {kind}: ran {jobs} jobs in {run_seconds:.1f}s: {rate:,.0f} jobs/s", flush=True)
        latencies = probe_latency(kind, send, probes, rate)
    finally:
        stop_worker(proc)
    if kind == "drydock":
        verify_drydock_records(jobs + probes)
    return {
        "rate": rate,
        "enqueue_rate": jobs / enqueue_seconds,
        "latencies": latencies,
        "cpu_ms": cpu_ms,
    }


def producer(kind: str) -> Any:
    if kind.startswith("bare"):
        from bench.bare_app import app

        task_name = "attestation.noop_unlimited" if kind == BARE_NO_LIMITS else "attestation.noop"

        def send_bare(probe: bool) -> str:
            task_id = str(uuid.uuid4())
            app.send_task(task_name, kwargs={"probe": probe}, task_id=task_id, queue=QUEUE)
            return task_id

        return send_bare

    from drydock.client import enqueue

    def send_drydock(probe: bool) -> str:
        return str(enqueue("attestation.canary", {"message": "bench"}).id)

    return send_drydock


def probe_latency(kind: str, send: Any, probes: int, capacity: float) -> list[float]:
    """Send probes at half the measured capacity; return enqueue→start latencies in ms."""
    import redis

    from workers.settings import get_settings

    interval = 2.0 / capacity
    called: dict[str, float] = {}
    next_at = time.time()
    for _ in range(probes):
        now = time.time()
        if now < next_at:
            time.sleep(next_at - now)
        next_at += interval
        at = time.time()
        called[send(True)] = at
    client = redis.Redis.from_url(get_settings().broker_url)
    while not drained(client):
        time.sleep(0.02)
    time.sleep(0.5)
    if kind.startswith("bare"):
        starts = {k.decode(): float(v) for k, v in client.hgetall("bench:starts").items()}
    else:
        starts = drydock_start_times(list(called))
    return [(starts[job_id] - at) * 1000 for job_id, at in called.items() if job_id in starts]


def drydock_start_times(job_ids: list[str]) -> dict[str, float]:
    from sqlalchemy import select

    from models.db import session_scope
    from models.tables import JobEvent

    with session_scope() as session:
        rows = session.execute(
            select(JobEvent.job_id, JobEvent.at).where(
                JobEvent.kind == "started", JobEvent.job_id.in_([uuid.UUID(j) for j in job_ids])
            )
        ).all()
    return {str(job_id): at.timestamp() for job_id, at in rows}


def verify_drydock_records(expected: int) -> None:
    """Every job has its outcome and its four events: nothing was dropped to go faster."""
    from sqlalchemy import func, select

    from models.db import session_scope
    from models.tables import Job, JobEvent

    with session_scope() as session:
        succeeded = session.scalar(
            select(func.count()).select_from(Job).where(Job.status == "succeeded")
        )
        events = session.scalar(select(func.count()).select_from(JobEvent))
    print(f"  drydock: {succeeded} succeeded job rows, {events} event rows", flush=True)
    if succeeded != expected or events != expected * 3:
        raise SystemExit(
            f"records missing: expected {expected} succeeded jobs and {expected * 3} events"
        )


def percentile(values: list[float], pct: float) -> float:
    if not values:
        return float("nan")
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, round(pct / 100 * (len(ordered) - 1)))]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--jobs", type=int, default=20_000)
    parser.add_argument("--probes", type=int, default=1_000)
    parser.add_argument("--concurrency", type=int, default=2)
    parser.add_argument("--keep", action="store_true", help="keep the work dir (worker logs)")
    args = parser.parse_args()

    workdir = Path(tempfile.mkdtemp(prefix="drydock-bench-"))
    redis_server = localservers.start_redis(workdir / "redis")
    pg_server = localservers.start_postgres(workdir / "postgres")
    try:
        configure(redis_server.url, pg_server.url)
        from models.migrate import upgrade

        upgrade("head")
        print(f"{args.jobs} jobs each, concurrency {args.concurrency}, queue {QUEUE}", flush=True)
        servers = {
            "postgres": [pg_server.pid or 0],
            "redis": [redis_server.pid or 0],
        }
        results = {
            kind: run_mode(kind, args.jobs, args.probes, args.concurrency, workdir, servers)
            for kind in MODES
        }
    finally:
        pg_server.stop()
        redis_server.stop()
        if args.keep:
            print(f"work dir kept: {workdir}")
        else:
            shutil.rmtree(workdir, ignore_errors=True)

    print()
    print(f"{'':16}{'jobs/s':>10}{'enqueue/s':>12}{'p50 ms':>10}{'p99 ms':>10}")
    for kind, result in results.items():
        lat = result["latencies"]
        print(
            f"{kind:16}{result['rate']:>10,.0f}{result['enqueue_rate']:>12,.0f}"
            f"{percentile(lat, 50):>10.1f}{percentile(lat, 99):>10.1f}"
        )
    print()
    roles = list(results["bare"]["cpu_ms"])
    print("CPU ms per job while draining: " + ", ".join(roles))
    for kind, result in results.items():
        print(f"{kind:16}" + "".join(f"{result['cpu_ms'][r]:>13.3f}" for r in roles))
    ratio = results["drydock"]["rate"] / results["bare"]["rate"]
    print(
        f"ratio drydock/bare: {ratio:.2f} (target >= 0.80){'' if ratio >= 0.8 else '  MISSED'}"
        "  [both under the queue's time limits; Drydock's bookkeeping is the difference]"
    )
    plain = results["drydock"]["rate"] / results[BARE_NO_LIMITS]["rate"]
    print(f"ratio drydock/bare without time limits: {plain:.2f} (for reference)")
    print(
        f"median of {len(results['drydock']['latencies'])} drydock probes: "
        f"{statistics.median(results['drydock']['latencies']):.1f} ms"
    )


if __name__ == "__main__":
    main()

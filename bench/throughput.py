"""Throughput of Drydock against bare Celery, on the same Redis and worker settings.

    python bench/throughput.py [--jobs 20000] [--rounds 2] [--concurrency 2] [--probes 1000]

It starts its own Redis and PostgreSQL (default durability settings: fsync on), then, in rounds
that alternate the order (bare, Drydock, Drydock, bare, ...), with N jobs per mode in all, for
(a) bare Celery with a no-op task and (b) Drydock's canary with its outcome and event rows:

1. fills the ``attestation`` queue with that round's jobs through each producer path (bare:
   ``send_task``; Drydock: ``enqueue``, which validates and writes the job row) and reports the
   enqueue rate;
2. starts one worker with the same settings (``drydock worker`` defaults for the queue) and
   times it from ready until the queue is drained and every message acknowledged: jobs/s;
3. sends latency probes at a steady rate below capacity to the running worker and reports
   enqueue→start latency p50/p99 (from the producer's call to the moment the job started).

The target is a ratio (Drydock / bare jobs/s) of at least 0.8: Drydock's bookkeeping may cost
at most a fifth of bare Celery's throughput. Bare Celery runs under the same time limits Drydock
gives the queue's tasks, so that the ratio measures the bookkeeping alone (``--modes
bare,drydock,bare-no-limits`` adds a run without time limits, for reference). Each drain also
reports its rate per 5-second window (does it hold as the tables grow?) and the CPU each process
spent per job (worker main process, pool, PostgreSQL, Redis): that is where to look when the
ratio moves. On a 2-core machine where the database shares the cores, runs differ by several
percent from one to the next; the alternating rounds keep that drift off the ratio.
"""

from __future__ import annotations

import argparse
import os
import shutil
import signal
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
# Drain rate is also reported per window, to show whether it holds steady as tables grow.
WINDOW_SECONDS = 5.0
TARGET_RATIO = 0.8


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
    from kernel.topology import prefetch_for

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

    from kernel.settings import get_settings

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
        windows: list[float] = []
        window_start, window_left = began, client.llen(QUEUE)
        while not drained(client):
            time.sleep(0.02)
            now = time.perf_counter()
            if now - window_start >= WINDOW_SECONDS:
                left = client.llen(QUEUE)
                windows.append((window_left - left) / (now - window_start))
                window_start, window_left = now, left
        run_seconds = time.perf_counter() - began
        after = cpu_snapshot(proc.pid, servers)
        cpu = {role: after[role] - before[role] for role in after}
        rate = jobs / run_seconds
        print(f"  {kind}: ran {jobs} jobs in {run_seconds:.1f}s: {rate:,.0f} jobs/s", flush=True)
        trace = " ".join(f"{w:.0f}" for w in windows)
        print(f"  {kind}: jobs/s per {WINDOW_SECONDS:g}s window: {trace}", flush=True)
        latencies = probe_latency(kind, send, probes, rate)
    finally:
        stop_worker(proc)
    return {
        "jobs": jobs,
        "seconds": run_seconds,
        "enqueue_seconds": enqueue_seconds,
        "latencies": latencies,
        "cpu": cpu,
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

    from dispatch.enqueue import enqueue

    def send_drydock(probe: bool) -> str:
        return str(enqueue("attestation.canary", {"message": "bench"}).id)

    return send_drydock


def probe_latency(kind: str, send: Any, probes: int, capacity: float) -> list[float]:
    """Send probes at half the measured capacity; return enqueue→start latencies in ms."""
    import redis

    from kernel.settings import get_settings

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
    from models.jobs import JobEvent

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
    from models.jobs import Job, JobEvent

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
    parser.add_argument("--jobs", type=int, default=20_000, help="jobs per mode, in all rounds")
    parser.add_argument("--rounds", type=int, default=2, help="interleaved rounds (ABBA order)")
    parser.add_argument("--probes", type=int, default=1_000, help="latency probes per mode")
    parser.add_argument("--concurrency", type=int, default=2)
    parser.add_argument("--keep", action="store_true", help="keep the work dir (worker logs)")
    parser.add_argument("--modes", default="bare,drydock", help=f"of {', '.join(MODES)}")
    args = parser.parse_args()
    modes = args.modes.split(",")
    unknown = set(modes) - set(MODES)
    if unknown:
        parser.error(f"unknown modes {sorted(unknown)}; choose from {', '.join(MODES)}")
    per_round = -(-args.jobs // args.rounds)

    workdir = Path(tempfile.mkdtemp(prefix="drydock-bench-"))
    redis_server = localservers.start_redis(workdir / "redis")
    pg_server = localservers.start_postgres(workdir / "postgres")
    rounds: dict[str, list[dict[str, Any]]] = {kind: [] for kind in modes}
    try:
        configure(redis_server.url, pg_server.url)
        from models.migrate import upgrade

        upgrade("head")
        print(
            f"{per_round * args.rounds} jobs per mode in {args.rounds} interleaved rounds, "
            f"concurrency {args.concurrency}, queue {QUEUE}",
            flush=True,
        )
        servers = {"postgres": [pg_server.pid or 0], "redis": [redis_server.pid or 0]}
        drydock_jobs = 0
        for number in range(args.rounds):
            # ABBA: alternate the order so drift over the run (a warming database, a busy
            # neighbour) weighs on every mode alike.
            order = modes if number % 2 == 0 else list(reversed(modes))
            print(f"round {number + 1}: {', '.join(order)}", flush=True)
            for kind in order:
                probes = -(-args.probes // args.rounds)
                result = run_mode(kind, per_round, probes, args.concurrency, workdir, servers)
                rounds[kind].append(result)
                if kind == "drydock":
                    drydock_jobs += per_round + probes
                    verify_drydock_records(drydock_jobs)
    finally:
        pg_server.stop()
        redis_server.stop()
        if args.keep:
            print(f"work dir kept: {workdir}")
        else:
            shutil.rmtree(workdir, ignore_errors=True)
    report(rounds)


def report(rounds: dict[str, list[dict[str, Any]]]) -> None:
    totals: dict[str, dict[str, Any]] = {}
    for kind, results in rounds.items():
        jobs = sum(r["jobs"] for r in results)
        totals[kind] = {
            "rate": jobs / sum(r["seconds"] for r in results),
            "enqueue_rate": jobs / sum(r["enqueue_seconds"] for r in results),
            "latencies": [lat for r in results for lat in r["latencies"]],
            "cpu_ms": {
                role: sum(r["cpu"][role] for r in results) * 1000 / jobs
                for role in results[0]["cpu"]
            },
            "per_round": [r["jobs"] / r["seconds"] for r in results],
        }
    print()
    print(f"{'':16}{'jobs/s':>10}{'enqueue/s':>12}{'p50 ms':>10}{'p99 ms':>10}   per round")
    for kind, total in totals.items():
        lat = total["latencies"]
        print(
            f"{kind:16}{total['rate']:>10,.0f}{total['enqueue_rate']:>12,.0f}"
            f"{percentile(lat, 50):>10.1f}{percentile(lat, 99):>10.1f}   "
            + " ".join(f"{rate:,.0f}" for rate in total["per_round"])
        )
    print()
    roles = list(next(iter(totals.values()))["cpu_ms"])
    print("CPU ms per job while draining: " + ", ".join(roles))
    for kind, total in totals.items():
        print(f"{kind:16}" + "".join(f"{total['cpu_ms'][r]:>13.3f}" for r in roles))
    if "drydock" in totals and "bare" in totals:
        ratio = totals["drydock"]["rate"] / totals["bare"]["rate"]
        verdict = "" if ratio >= TARGET_RATIO else "  MISSED"
        print(f"ratio drydock/bare: {ratio:.2f} (target >= {TARGET_RATIO:.2f}){verdict}")
    if "drydock" in totals and BARE_NO_LIMITS in totals:
        plain = totals["drydock"]["rate"] / totals[BARE_NO_LIMITS]["rate"]
        print(f"ratio drydock/bare without time limits: {plain:.2f} (for reference)")


if __name__ == "__main__":
    main()

"""Workflow scheduling: a step's overhead over its container, and a DAG's wall time over its
critical path.

    python bench/workflows.py [--steps 10] [--dag-steps 50] [--width 5] [--concurrency 4]
                              [--sleep 0.2]

It starts its own Redis, PostgreSQL (fsync off), Docker engine (vfs, no bridge) and ``git
daemon`` in a temporary directory, builds the FROM-scratch busybox step image there, makes a
project whose repository and first remote are on the daemon and whose second remote is a
file:// mirror, and starts one ``drydock worker -Q workflows``; everything it started is stopped
by PID when it ends. Then:

1. **Per-step overhead**: a run of ``--steps`` sequential no-op container steps (``true``: no
   change, so no commit and no push) against the same container run ``--steps`` times directly
   with ``run_container_step`` on a plain directory. Printed: mean seconds per step each way,
   the ratio (run / direct) and the overhead in ms per step. The overhead is the step's job
   (send, pick up, rows), its workspace (clone at the base commit, fetch of the branch) and the
   decision sending the next step. A second run of steps that each write a file adds a commit
   and a push to both remotes per step, shown beside it.
2. **DAG**: a run of ``--dag-steps`` container steps (``sleep --sleep``) in layers of
   ``--width``, each needing one or two steps of the layer before, on a worker of
   ``--concurrency``. The critical path is the longest chain of the steps' measured durations
   along ``needs``. Printed: wall time, critical path, their ratio, and the bound the worker's
   concurrency sets (sum of durations / concurrency), since a DAG wider than the worker cannot
   run at its critical path.

Goals (ratios, on this 2-core machine): per-step overhead ratio (no-op run / direct) ≤ 5, and
DAG wall time ≤ 1.5 x max(critical path, concurrency bound). Missing one exits 1.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import time
import uuid
from collections.abc import Callable
from datetime import datetime
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from drydock import localservers  # noqa: E402
from testkit.docker_engine import start_dockerd  # noqa: E402

IMAGE = "registry.example.com/tools/busybox:1"
TENANT = "bench"
PROJECT = "bench"
OVERHEAD_GOAL = 5.0
DAG_GOAL = 1.5


def git(*args: str, cwd: Path | None = None) -> str:
    env = {
        **os.environ,
        "GIT_AUTHOR_NAME": "bench",
        "GIT_AUTHOR_EMAIL": "bench@example.invalid",
        "GIT_COMMITTER_NAME": "bench",
        "GIT_COMMITTER_EMAIL": "bench@example.invalid",
        "GIT_CONFIG_NOSYSTEM": "1",
    }
    done = subprocess.run(
        ["git", *args], cwd=cwd, env=env, capture_output=True, text=True, check=True
    )
    return done.stdout.strip()


def bare_repo(path: Path, seed: Path | None = None) -> Path:
    git("init", "--quiet", "--bare", str(path))
    if seed is not None:
        git("push", "--quiet", f"file://{path}", "HEAD:main", cwd=seed)
    return path


def start_git_daemon(base: Path) -> tuple[subprocess.Popen[bytes], int]:
    port = localservers.free_port()
    proc = subprocess.Popen(
        [
            "git", "daemon", "--reuseaddr", "--enable=receive-pack", f"--base-path={base}",
            "--export-all", "--listen=127.0.0.1", f"--port={port}", str(base),
        ],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
        start_new_session=True,
    )  # fmt: skip
    localservers.wait_for(lambda: _port_open(port), 10, "git daemon")
    return proc, port


def _port_open(port: int) -> bool:
    import socket

    with socket.socket() as sock:
        return sock.connect_ex(("127.0.0.1", port)) == 0


def stop_group(proc: subprocess.Popen[bytes]) -> None:
    if proc.poll() is None:
        os.killpg(proc.pid, signal.SIGTERM)
        try:
            proc.wait(10)
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait(5)


def start_worker(concurrency: int, log_path: Path) -> subprocess.Popen[bytes]:
    log = open(log_path, "wb")  # noqa: SIM115 - closed with the process
    proc = subprocess.Popen(
        [
            sys.executable, "-m", "drydock.cli", "worker", "-Q", "workflows",
            f"--concurrency={concurrency}", "--hostname=bench-workflows@%h", "--loglevel=INFO",
        ],
        stdout=log,
        stderr=subprocess.STDOUT,
        cwd=ROOT,
        start_new_session=True,
    )  # fmt: skip
    localservers.wait_for(
        lambda: b"ready." in log_path.read_bytes() or proc.poll() is not None, 60, "worker"
    )
    if proc.poll() is not None:
        raise RuntimeError(f"the worker exited:\n{log_path.read_text()[-2000:]}")
    return proc


def container_step(name: str, script: str, needs: list[str]) -> dict[str, Any]:
    return {
        "name": name,
        "kind": "container",
        "needs": needs,
        "image": IMAGE,
        "command": ["sh", "-c", script],
        "timeout_seconds": 120,
    }


def run_workflow(name: str, steps: list[dict[str, Any]], timeout: float) -> dict[str, Any]:
    """Define ``name``, run it on the project, wait; the run's view and its wall seconds."""
    from tasks.workflows import run_operations, store
    from tasks.workflows.definitions import parse_definition

    store.create_definition(
        parse_definition({"name": name, "steps": steps}, tenant=TENANT), tenant=TENANT, actor="b"
    )
    began = time.perf_counter()
    run_id = run_operations.request_run(
        tenant=TENANT, workflow=name, version=None, reason="bench", requested_by="bench",
        project=PROJECT,
    )  # fmt: skip
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            view = run_operations.run_view(run_id)
        except Exception:  # the start job has not written it yet
            time.sleep(0.05)
            continue
        if view["state"] in ("succeeded", "failed", "cancelled"):
            if view["state"] != "succeeded":
                raise RuntimeError(f"run {name} {view['state']}: {view['error']}")
            view["wall_seconds"] = time.perf_counter() - began
            return view
        time.sleep(0.05)
    raise RuntimeError(f"run {name} did not finish within {timeout:g} s")


def step_seconds(step: dict[str, Any]) -> float:
    started = datetime.fromisoformat(step["started_at"])
    finished = datetime.fromisoformat(step["finished_at"])
    return (finished - started).total_seconds()


def run_span(view: dict[str, Any]) -> float:
    """From the first step's start to the last one's end (the run's own scheduling)."""
    starts = [datetime.fromisoformat(s["started_at"]) for s in view["steps"]]
    ends = [datetime.fromisoformat(s["finished_at"]) for s in view["steps"]]
    return (max(ends) - min(starts)).total_seconds()


def direct_runs(count: int, base: Path) -> list[float]:
    from tasks.workflows.container_step import run_container_step
    from tasks.workflows.definitions import WorkflowContainerStep

    step = WorkflowContainerStep.model_validate(container_step("direct", "true", []))
    workspace = base / "direct"
    workspace.mkdir()
    times = []
    for _ in range(count):
        began = time.perf_counter()
        outcome = run_container_step(
            step, workspace=workspace, env_secrets={}, run_id=uuid.uuid4(), step_name="direct"
        )
        times.append(time.perf_counter() - began)
        if not outcome.ok:
            raise RuntimeError(f"the direct container failed: {outcome.error}")
    return times


def dag(count: int, width: int, sleep: float) -> list[dict[str, Any]]:
    steps: list[dict[str, Any]] = []
    previous: list[str] = []
    layer = 0
    while len(steps) < count:
        current = []
        for index in range(min(width, count - len(steps))):
            name = f"s{layer}-{index}"
            needs = (
                sorted({previous[index % len(previous)], previous[(index + 1) % len(previous)]})
                if previous
                else []
            )
            steps.append(container_step(name, f"sleep {sleep}", needs))
            current.append(name)
        previous = current
        layer += 1
    return steps


def critical_path(view: dict[str, Any]) -> float:
    by_name = {step["name"]: step for step in view["steps"]}
    longest: dict[str, float] = {}

    def finish(name: str) -> float:
        if name not in longest:
            step = by_name[name]
            longest[name] = step_seconds(step) + max(
                (finish(need) for need in step["needs"]), default=0.0
            )
        return longest[name]

    return max(finish(name) for name in by_name)


def set_up_project(base: Path, daemon_port: int, daemon_base: Path) -> None:
    from models import projects
    from models.db import session_scope

    seed = base / "seed"
    git("init", "--quiet", "-b", "main", str(seed))
    (seed / "README").write_text("bench\n")
    git("add", "README", cwd=seed)
    git("commit", "--quiet", "-m", "seed", cwd=seed)
    bare_repo(daemon_base / "project.git", seed)
    mirror = bare_repo(base / "mirror.git")
    url = f"git://127.0.0.1:{daemon_port}/project.git"
    with session_scope() as session:
        row = projects.create_project(
            session, tenant=TENANT, name=PROJECT, repository_url=url, default_branch="main",
            created_by="bench",
        )  # fmt: skip
        projects.add_remote(
            session, row, name="origin", url=url, credential_ref=None, protected_branches=None
        )
        projects.add_remote(
            session, row, name="mirror", url=f"file://{mirror}", credential_ref=None,
            protected_branches=None,
        )  # fmt: skip


def main() -> int:
    parser = argparse.ArgumentParser(description=(__doc__ or "").split("\n\n")[0])
    parser.add_argument("--steps", type=int, default=10)
    parser.add_argument("--dag-steps", type=int, default=50)
    parser.add_argument("--width", type=int, default=5)
    parser.add_argument("--concurrency", type=int, default=4)
    parser.add_argument("--sleep", type=float, default=0.2)
    args = parser.parse_args()

    base = Path(tempfile.mkdtemp(prefix="drydock-bench-workflows-"))
    base.chmod(0o755)
    stops: list[Callable[[], None]] = []
    try:
        redis = localservers.start_redis(base / "redis")
        stops.append(redis.stop)
        postgres = localservers.start_postgres(base / "postgres", fast=True)
        stops.append(postgres.stop)
        engine = start_dockerd(f"unix://{base}/docker/docker.sock", base / "docker")
        stops.append(engine.stop)
        daemon_base = base / "daemon"
        daemon_base.mkdir()
        daemon, port = start_git_daemon(daemon_base)
        stops.append(lambda: stop_group(daemon))
        from cryptography.fernet import Fernet

        os.environ.update(
            {
                "DRYDOCK_BROKER_URL": redis.url,
                "DRYDOCK_DATABASE_URL": postgres.url,
                "DRYDOCK_DOCKER_HOST": engine.url,
                "DRYDOCK_SECRET_KEY": Fernet.generate_key().decode(),
                "DRYDOCK_GIT_ALLOWED_SCHEMES": '["git", "file"]',
                "DRYDOCK_WORKFLOW_WORKSPACE_ROOT": str(base / "workspaces"),
                "DRYDOCK_CANARY_INTERVAL_SECONDS": "0",
                "DRYDOCK_LOG_LEVEL": "WARNING",
            }
        )
        from models.migrate import upgrade
        from tasks.remediation.executors.sandbox import build_sandbox_image

        upgrade("head")
        build_sandbox_image(IMAGE, busybox=Path("/bin/busybox"), base_url=engine.url)
        set_up_project(base, port, daemon_base)
        worker = start_worker(args.concurrency, base / "worker.log")
        stops.append(lambda: stop_group(worker))

        direct = direct_runs(args.steps, base)
        chain = [
            container_step(f"n{i}", "true", [f"n{i - 1}"] if i else []) for i in range(args.steps)
        ]
        noop = run_workflow("noop-chain", chain, timeout=60 + 20 * args.steps)
        writes = [
            container_step(f"w{i}", f"echo {i} > step-{i}.txt", [f"w{i - 1}"] if i else [])
            for i in range(args.steps)
        ]
        writing = run_workflow("write-chain", writes, timeout=60 + 20 * args.steps)
        graph = run_workflow(
            "dag", dag(args.dag_steps, args.width, args.sleep), timeout=120 + 10 * args.dag_steps
        )
        return report(args, direct, noop, writing, graph)
    finally:
        for stop in reversed(stops):
            try:
                stop()
            except Exception as exc:  # keep stopping the rest
                print(f"stopping: {exc}", file=sys.stderr)
        shutil.rmtree(base, ignore_errors=True)


def report(
    args: argparse.Namespace,
    direct: list[float],
    noop: dict[str, Any],
    writing: dict[str, Any],
    graph: dict[str, Any],
) -> int:
    direct_mean = sum(direct) / len(direct)
    noop_per_step = run_span(noop) / len(noop["steps"])
    write_per_step = run_span(writing) / len(writing["steps"])
    overhead_ratio = noop_per_step / direct_mean
    wall = run_span(graph)
    path = critical_path(graph)
    durations = [step_seconds(step) for step in graph["steps"]]
    bound = sum(durations) / args.concurrency
    dag_ratio = wall / path
    bound_ratio = wall / max(path, bound)
    print(f"\nper step, {args.steps} sequential steps:")
    print(f"  direct container run     {direct_mean * 1000:8.1f} ms")
    print(
        f"  no-op step in a run      {noop_per_step * 1000:8.1f} ms   ratio {overhead_ratio:.2f}"
        f"   overhead {(noop_per_step - direct_mean) * 1000:.1f} ms/step"
    )
    print(
        f"  step committing + pushing to 2 remotes {write_per_step * 1000:8.1f} ms"
        f"   ratio {write_per_step / direct_mean:.2f}"
    )
    print(f"\n{len(graph['steps'])}-step DAG (width {args.width}, concurrency {args.concurrency}):")
    print(f"  wall {wall:.2f} s, critical path {path:.2f} s: ratio {dag_ratio:.2f}")
    print(f"  concurrency bound (sum {sum(durations):.2f} s / {args.concurrency}) {bound:.2f} s:")
    print(f"  wall / max(critical path, bound) {bound_ratio:.2f}")
    overhead_ok = overhead_ratio <= OVERHEAD_GOAL
    dag_ok = bound_ratio <= DAG_GOAL
    print(
        f"\ngoals: overhead ratio ≤ {OVERHEAD_GOAL:g}: {'met' if overhead_ok else 'MISSED'}; "
        f"DAG ≤ {DAG_GOAL:g} x max(critical path, bound): {'met' if dag_ok else 'MISSED'}"
    )
    summary = {
        "direct_ms": round(direct_mean * 1000, 1),
        "noop_step_ms": round(noop_per_step * 1000, 1),
        "write_step_ms": round(write_per_step * 1000, 1),
        "overhead_ratio": round(overhead_ratio, 2),
        "dag_wall_s": round(wall, 2),
        "dag_critical_path_s": round(path, 2),
        "dag_ratio": round(dag_ratio, 2),
        "dag_bound_s": round(bound, 2),
        "dag_bound_ratio": round(bound_ratio, 2),
    }
    print(json.dumps(summary))
    return 0 if overhead_ok and dag_ok else 1


if __name__ == "__main__":
    sys.exit(main())

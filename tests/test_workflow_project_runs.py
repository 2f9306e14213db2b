"""Workflow runs on a project's code, end to end on real peers: container steps on the session's
Docker engine, a project whose remotes are a ``git daemon`` (receive-pack on) and a second bare
repository, workflows workers as real processes. Every push is checked by cloning the remote
back.

Covered: a DAG with a parallel pair committing and pushing to both remotes, a step that changed
nothing skipped, the run's provenance signed and a tampered log failing verification; the worker
SIGKILLed mid-step resuming without a second commit; an unreachable remote failing the run
before any step; a rejected (non-fast-forward) push failing the step; a protected branch refused
without an approval token and pushed with one.
"""

from __future__ import annotations

import base64
import json
import os
import subprocess
import sys
import time
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import docker
import pytest
from typer.testing import CliRunner

from models import projects
from models.db import session_scope
from testkit.docker_engine import DockerEngine
from tests import test_workflow_remotes
from tests.conftest import WorkerProcess, poll
from tests.test_workflow_remotes import Remotes, bare_repo, closed_port_url, git
from tests.test_workflow_runs import define, steps, wait_for_run

pytestmark = pytest.mark.fleet
# The git daemon and the bare repositories, as that module starts them (module-scoped).
remotes = test_workflow_remotes.remotes

TENANT = "acme"
PROJECT = "web"
STEP_IMAGE = "registry.example.com/tools/busybox:1"
RUNNER = ("Drydock Runner", "runner@drydock.invalid")


@pytest.fixture(scope="module")
def step_image(sandbox_image: str, docker_engine: DockerEngine) -> Iterator[str]:
    client = docker.DockerClient(base_url=docker_engine.url)
    client.images.get(sandbox_image).tag(STEP_IMAGE)
    yield STEP_IMAGE
    client.close()


@pytest.fixture
def runners(
    fleet: WorkerProcess, worker_factory: Callable[..., WorkerProcess], step_image: str
) -> Iterator[Callable[[str], WorkerProcess]]:
    """The shared worker off the workflows queue; yields a function starting a workflows
    worker that may use the loopback git transports."""
    from workers.app import app as celery

    env = {"DRYDOCK_GIT_ALLOWED_SCHEMES": '["git", "file"]'}
    celery.control.cancel_consumer("workflows", destination=[fleet.hostname], reply=True)
    try:
        yield lambda name: worker_factory(name, queues="workflows", concurrency=3, env=env)
    finally:
        celery.control.add_consumer("workflows", destination=[fleet.hostname], reply=True)


@pytest.fixture
def git_schemes(monkeypatch: pytest.MonkeyPatch) -> Iterator[None]:
    """This process (the edge) may name the loopback transports too."""
    from kernel.settings import get_settings

    monkeypatch.setenv("DRYDOCK_GIT_ALLOWED_SCHEMES", '["git", "file"]')
    get_settings.cache_clear()
    yield
    monkeypatch.undo()
    get_settings.cache_clear()


def make_project(
    remotes: Remotes, tmp: Path, *, origin: str | None = None, protected: list[str] | None = None
) -> tuple[str, str]:
    """The project: the daemon's repository, pushed to a fresh bare repository on the daemon
    (origin) and a fresh file:// mirror. Returns (origin URL, mirror URL)."""
    name = f"push-{uuid.uuid4().hex[:8]}.git"
    bare_repo(remotes.base / name, remotes.seed)
    origin_url = origin or f"{remotes.daemon_url.rsplit('/', 1)[0]}/{name}"
    mirror_url = f"file://{bare_repo(tmp / 'mirror.git')}"
    with session_scope() as session:
        row = projects.create_project(
            session,
            tenant=TENANT,
            name=PROJECT,
            repository_url=remotes.daemon_url,
            default_branch="main",
            created_by="test",
        )
        projects.add_remote(
            session, row, name="origin", url=origin_url, credential_ref=None,
            protected_branches=protected,
        )  # fmt: skip
        projects.add_remote(
            session, row, name="mirror", url=mirror_url, credential_ref=None,
            protected_branches=None,
        )  # fmt: skip
    return origin_url, mirror_url


def shell_step(name: str, script: str, *needs: str, **fields: Any) -> dict[str, Any]:
    return {
        "name": name,
        "kind": "container",
        "needs": list(needs),
        "image": STEP_IMAGE,
        "command": ["sh", "-c", script],
        "timeout_seconds": 60,
        **fields,
    }


def start(workflow: str, **fields: Any) -> uuid.UUID:
    from tasks.workflows import run_operations

    return run_operations.request_run(
        tenant=TENANT,
        workflow=workflow,
        version=None,
        reason="test",
        requested_by="test",
        project=PROJECT,
        **fields,
    )


def clone_back(url: str, branch: str, tmp: Path) -> Path:
    dest = tmp / f"back-{time.monotonic_ns()}"
    git("clone", "--quiet", "--branch", branch, url, str(dest))
    return dest


def commits_by_step(checkout: Path, run_id: uuid.UUID) -> dict[str, list[str]]:
    """Commits of the run on the checkout's HEAD, by the step their trailer names."""
    out = git(
        "log",
        "--format=%H%x00%an <%ae>%x00%(trailers:key=Drydock-Run,valueonly)%x00"
        "%(trailers:key=Drydock-Step,valueonly)%x01",
        cwd=checkout,
    )
    found: dict[str, list[str]] = {}
    for entry in out.split("\x01"):
        fields = entry.strip().split("\x00")
        if len(fields) == 4 and fields[2].strip() == str(run_id):
            assert fields[1] == f"{RUNNER[0]} <{RUNNER[1]}>"
            found.setdefault(fields[3].strip(), []).append(fields[0])
    return found


def test_a_dag_commits_each_changing_step_once_and_pushes_every_remote(
    runners: Callable[[str], WorkerProcess], remotes: Remotes, git_schemes: None, tmp_path: Path
) -> None:
    origin, mirror = make_project(remotes, tmp_path)
    runners("wf-project-1")
    define(
        "edit",
        [
            shell_step("prepare", "echo prepared > prepared.txt"),
            shell_step("left", "sleep 1; echo left > left.txt", "prepare"),
            shell_step("right", "sleep 1; echo right > right.txt", "prepare"),
            shell_step("check", "test -f left.txt && test -f right.txt", "left", "right"),
        ],
    )
    run_id = start("edit")
    run = wait_for_run(run_id, "succeeded", "failed", timeout=120)
    assert run["state"] == "succeeded", run
    by_name = steps(run)
    branch = f"drydock/runs/{run_id}"
    assert run["branch"] == branch

    # Both remotes have the branch at the run's head, with one commit per changing step.
    for url in (origin, mirror):
        checkout = clone_back(url, branch, tmp_path)
        assert git("rev-parse", "HEAD", cwd=checkout) == run["head_commit"]
        assert {p.name for p in checkout.iterdir()} >= {"prepared.txt", "left.txt", "right.txt"}
        made = commits_by_step(checkout, run_id)
        assert {name: len(shas) for name, shas in made.items()} == {
            "prepare": 1,
            "left": 1,
            "right": 1,
        }
        subject = git("log", "-1", "--format=%s", made["prepare"][0], cwd=checkout)
        assert subject == f"workflow edit run {run_id}: step prepare"
    # The parallel pair ran at once; the second to push was rebased onto the first.
    left, right = by_name["left"], by_name["right"]
    assert left["started_at"] < right["finished_at"] and right["started_at"] < left["finished_at"]
    assert left["commit"] in made["left"] and right["commit"] in made["right"]
    # In the remotes' name order.
    assert [p["remote"] for p in left["pushes"]] == ["mirror", "origin"]
    assert all(p["status"] == "pushed" for p in left["pushes"])

    # The step that changed nothing made no commit and pushed nothing.
    check = by_name["check"]
    assert check["state"] == "succeeded" and check["commit"] is None
    assert check["result"]["skipped"] is True and check["pushes"] == []

    # Provenance: signed when the run ended; it verifies, and a tampered log does not.
    from drydock.cli import app as cli_app

    cli = CliRunner()
    verified = cli.invoke(cli_app, ["workflows", "provenance", str(run_id), "--verify"])
    assert verified.exit_code == 0, verified.output
    assert "provenance verified" in verified.output
    shown = json.loads(cli.invoke(cli_app, ["workflows", "provenance", str(run_id)]).stdout)
    statement = json.loads(base64.b64decode(shown["envelope"]["payload"]))
    subjects = {s["digest"]["gitCommit"] for s in statement["subject"]}
    assert {left["commit"], right["commit"], by_name["prepare"]["commit"]} <= subjects
    assert set(shown["steps"]) == {"prepare", "left", "right", "check"}
    assert shown["steps"]["left"]["commit"]["sha"] == left["commit"]
    assert shown["steps"]["check"]["commit"]["skipped"] is True

    from sqlalchemy import update

    from models.workflow_runs import WorkflowStep

    tampered = dict(shown["steps"]["left"], command=["sh", "-c", "echo innocent"])
    with session_scope() as session:
        session.execute(
            update(WorkflowStep)
            .where(WorkflowStep.run_id == run_id, WorkflowStep.name == "left")
            .values(provenance=tampered)
        )
    refused = cli.invoke(cli_app, ["workflows", "provenance", str(run_id), "--verify"])
    assert refused.exit_code == 1
    assert "step_log_digest_mismatch" in refused.output and "left" in refused.output


def test_a_worker_killed_mid_step_resumes_without_a_second_commit(
    runners: Callable[[str], WorkerProcess], remotes: Remotes, git_schemes: None, tmp_path: Path
) -> None:
    origin, _ = make_project(remotes, tmp_path)
    doomed = runners("wf-project-doomed")
    define(
        "slow",
        [
            shell_step("first", "echo one > one.txt"),
            shell_step("second", "echo two > two.txt; sleep 3", "first"),
        ],
    )
    run_id = start("slow")
    poll(
        lambda: steps(_view(run_id)).get("second", {}).get("state") == "running",
        60,
        "the second step to run",
    )
    time.sleep(1.0)  # inside its container now
    doomed.kill()
    runners("wf-project-rescue")
    run = wait_for_run(run_id, "succeeded", "failed", timeout=120)
    assert run["state"] == "succeeded", (run["error"], run["steps"])
    by_name = steps(run)
    assert by_name["first"]["attempts"] == 1
    assert by_name["second"]["attempts"] == 2
    made = commits_by_step(clone_back(origin, f"drydock/runs/{run_id}", tmp_path), run_id)
    assert {name: len(shas) for name, shas in made.items()} == {"first": 1, "second": 1}
    # No container of the killed attempt is left on the engine.
    from tasks.workflows.container_step import remove_orphaned_step_containers

    assert remove_orphaned_step_containers(run_id) == 0


def _view(run_id: uuid.UUID) -> dict[str, Any]:
    from models.workflow_runs import RunNotFoundError
    from tasks.workflows import run_operations

    try:
        return run_operations.run_view(run_id)
    except RunNotFoundError:
        return {"steps": []}


def test_an_unreachable_remote_fails_the_run_before_any_step(
    runners: Callable[[str], WorkerProcess], remotes: Remotes, git_schemes: None, tmp_path: Path
) -> None:
    make_project(remotes, tmp_path, origin=closed_port_url())
    runners("wf-project-unreachable")
    define("never", [shell_step("only", "echo x > x.txt")])
    asked = time.monotonic()
    run_id = start("never")
    run = wait_for_run(run_id, "succeeded", "failed", timeout=60)
    assert time.monotonic() - asked < 30
    assert run["state"] == "failed"
    assert "before its first step" in run["error"] and "origin" in run["error"]
    assert "unreachable" in run["error"]
    only = steps(run)["only"]
    assert only["state"] == "cancelled" and only["attempts"] == 0


def test_a_rejected_push_fails_the_step_naming_it(
    runners: Callable[[str], WorkerProcess], remotes: Remotes, git_schemes: None, tmp_path: Path
) -> None:
    origin, _ = make_project(remotes, tmp_path)
    # Origin already has the branch, diverged: the run's push to it is not a fast-forward (the
    # branch is read from the first remote by name, the mirror, which has none).
    other = tmp_path / "other"
    git("clone", "--quiet", origin, str(other))
    git("checkout", "--quiet", "-b", "feature/x", cwd=other)
    (other / "theirs.txt").write_text("theirs\n")
    git("add", "theirs.txt", cwd=other)
    git("-c", "user.name=t", "-c", "user.email=t@t", "commit", "--quiet", "-m", "t", cwd=other)
    git("push", "--quiet", "origin", "feature/x", cwd=other)

    runners("wf-project-rejected")
    define("clash", [shell_step("edit", "echo ours > ours.txt")])
    run_id = start("clash", branch="feature/x")
    run = wait_for_run(run_id, "succeeded", "failed", timeout=120)
    assert run["state"] == "failed", run
    edit = steps(run)["edit"]
    assert edit["state"] == "failed"
    assert [(p["remote"], p["status"]) for p in edit["pushes"]] == [
        ("mirror", "pushed"),
        ("origin", "failed"),
    ]
    assert edit["pushes"][1]["failure"] == "rejected_non_fast_forward"
    assert "feature/x" in edit["error"]


def test_a_protected_branch_is_refused_without_a_token_and_pushed_with_one(
    runners: Callable[[str], WorkerProcess], remotes: Remotes, git_schemes: None, tmp_path: Path
) -> None:
    from models.trust import TrustState
    from policy.admission import issue_token
    from tests.test_evaluation import asset_in

    origin, _ = make_project(remotes, tmp_path, protected=["release/*"])
    runners("wf-project-protected")
    define("release", [shell_step("bump", "echo 2 > VERSION")])

    refused = wait_for_run(start("release", branch="release/2"), "succeeded", "failed")
    assert refused["state"] == "failed"
    assert "protected" in refused["error"] and "git.push:web/origin/release/2" in refused["error"]
    assert steps(refused)["bump"]["attempts"] == 0

    asset = asset_in(TrustState.TRUSTED, TENANT, "node-1")
    token = issue_token(
        asset_id=asset, task_pattern="git.push:web/origin/release/*", tenant=TENANT,
        approver="lead", ttl_seconds=120,
    )  # fmt: skip
    run_id = start("release", branch="release/2", approval_token=token.token)
    allowed = wait_for_run(run_id, "succeeded", "failed", timeout=120)
    assert allowed["state"] == "succeeded", allowed
    checkout = clone_back(origin, "release/2", tmp_path)
    assert (checkout / "VERSION").read_text() == "2\n"
    assert token.token not in json.dumps(allowed)
    # The token was claimed once, by this run: a second run with it is refused.
    again = wait_for_run(
        start("release", branch="release/2", approval_token=token.token), "succeeded", "failed"
    )
    assert again["state"] == "failed" and "already used" in again["error"]


def test_the_cli_refuses_a_workspace_workflow_without_a_project(clean_state: None) -> None:
    from drydock.cli import app as cli_app

    define("needs-code", [shell_step("only", "true")])
    from drydock.cli import _explain

    result = CliRunner().invoke(cli_app, ["workflows", "run", "needs-code", "--tenant", TENANT])
    assert result.exit_code != 0 and result.exception is not None
    # What `drydock` prints for it, in one line.
    assert "step only is a container step" in str(_explain(result.exception))
    assert "needs a project (--project)" in str(_explain(result.exception))


def test_operators_follow_the_timeline_and_see_runners_and_stuck_runs(
    runners: Callable[[str], WorkerProcess], remotes: Remotes, git_schemes: None, tmp_path: Path
) -> None:
    from fastapi.testclient import TestClient
    from sqlalchemy import func, select, update

    from drydock.api import app
    from drydock.cli import app as cli_app
    from models.stream import StreamEvent
    from models.workflow_runs import WorkflowStep
    from tests.test_api import bearer, make_token

    make_project(remotes, tmp_path)
    worker = runners("wf-project-ops")
    define("one", [shell_step("touch", "echo hi > hi.txt")])
    watcher = subprocess.Popen(
        [sys.executable, "-m", "drydock.cli", "policy", "watch"],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        env=os.environ.copy(),
        text=True,
    )
    assert watcher.stderr is not None and watcher.stdout is not None
    assert "watching" in watcher.stderr.readline()
    run_id = start("one")
    followed = CliRunner().invoke(cli_app, ["workflows", "follow", str(run_id)])
    assert followed.exit_code == 0, followed.output
    lines = followed.output.splitlines()
    assert any(f"step.started touch on {worker.hostname}" in line for line in lines), lines
    assert any("step.commit touch" in line for line in lines)
    assert any("step.push touch mirror pushed" in line for line in lines)
    assert any(line.startswith("[1/1] run.succeeded") for line in lines)
    assert lines[-1] == f"run {run_id} succeeded"
    # `drydock policy watch` showed the run's events as they committed.
    watched: list[str] = []
    try:
        deadline = time.monotonic() + 20
        while time.monotonic() < deadline and not any("run.succeeded" in w for w in watched):
            watched.append(watcher.stdout.readline().strip())
    finally:
        watcher.terminate()
        watcher.wait(10)
    assert f"workflow run {run_id} step.push touch mirror pushed" in watched
    assert f"workflow run {run_id} run.succeeded" in " ".join(watched)

    reader = bearer(make_token("reader", "workflows.read", tenant=TENANT))
    with TestClient(app) as api:
        timeline = api.get(f"/v1/workflows/runs/{run_id}/timeline", headers=reader).json()
        kinds = [event["type"] for event in timeline]
        assert kinds[0] == "run.started" and kinds[-1] == "run.succeeded"
        assert kinds.count("step.push") == 2
        # The step's audit row: its runner and the policy it ran under.
        audit = next(event for event in timeline if event["type"] == "step.succeeded")
        assert audit["runner"] == worker.hostname
        assert audit["policy"]["project"] == PROJECT
        assert audit["policy"]["branch"] == f"drydock/runs/{run_id}"
        assert audit["commit"] == steps(_view(run_id))["touch"]["commit"]
        later = api.get(
            f"/v1/workflows/runs/{run_id}/timeline",
            params={"after": timeline[-2]["id"]},
            headers=reader,
        ).json()
        assert [event["type"] for event in later] == ["run.succeeded"]
        provenance = api.get(
            f"/v1/workflows/runs/{run_id}/provenance", params={"verify": True}, headers=reader
        ).json()
        assert provenance["verification"]["ok"] is True
        assert "BEGIN PUBLIC KEY" in provenance["public_key"]

        health = api.get("/health/workflows")
        assert health.status_code == 200, health.text
        assert health.json()["queue_depth"] == 0
        assert worker.hostname in [r["runner"] for r in health.json()["runners"]]

        # A step marked running whose runner went silent long ago: the run is reported stuck.
        from models.workflow_runs import WorkflowRun

        with session_scope() as session:
            session.execute(
                update(WorkflowRun).where(WorkflowRun.id == run_id).values(state="running")
            )
            session.execute(
                update(WorkflowStep)
                .where(WorkflowStep.run_id == run_id)
                .values(state="running", heartbeat_at=func.now() - func.make_interval(0, 0, 0, 1))
            )
        stuck = api.get("/health/workflows")
        assert stuck.status_code == 503
        assert [(s["run_id"], s["step"]) for s in stuck.json()["stuck"]] == [(str(run_id), "touch")]
    # The same events are on the event stream, for `drydock policy watch` and GET /v1/stream.
    with session_scope() as session:
        streamed = session.scalar(
            select(func.count())
            .select_from(StreamEvent)
            .where(
                StreamEvent.kind == "workflow.event",
                StreamEvent.data["run_id"].astext == str(run_id),
            )
        )
    assert streamed == len(timeline)

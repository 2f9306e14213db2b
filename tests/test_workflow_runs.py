"""Workflow runs on real workers: steps as rows, independent steps at once, a finished step
never run again (also when the worker running the next one is SIGKILLed), retries within a
step's budget then the dead-letter queue, retry from the failed step, cancel mid-step.

The steps here are ``job`` steps whose children run ``remediation.canary`` on a worker of
their own; the run's steps run on a dedicated ``workflows`` worker (the shared worker stops
consuming ``workflows`` for these tests), so a test can kill the worker running a step.
"""

from __future__ import annotations

import json
import re
import time
import uuid
from collections.abc import Callable, Iterator
from typing import Any

import pytest

from tests.conftest import WorkerProcess, poll, wait_for_job

pytestmark = pytest.mark.fleet

TENANT = "acme"


@pytest.fixture
def workflow_workers(
    fleet: WorkerProcess, worker_factory: Callable[..., WorkerProcess]
) -> Iterator[Callable[[str], WorkerProcess]]:
    """Children's worker (remediation) started; the shared worker off the workflows queue for
    the test. Yields a function that starts a workflows worker."""
    from workers.app import app as celery

    worker_factory("wf-children", queues="remediation", concurrency=3)
    celery.control.cancel_consumer("workflows", destination=[fleet.hostname], reply=True)
    try:
        yield lambda name: worker_factory(name, queues="workflows", concurrency=3)
    finally:
        celery.control.add_consumer("workflows", destination=[fleet.hostname], reply=True)


def define(name: str, steps: list[dict[str, Any]]) -> None:
    from tasks.workflows import store
    from tasks.workflows.definitions import parse_definition

    definition = parse_definition({"name": name, "steps": steps}, tenant=TENANT)
    store.create_definition(definition, tenant=TENANT, actor="test")


def canary_step(name: str, *needs: str, sleep: float = 0.2, **payload: Any) -> dict[str, Any]:
    return {
        "name": name,
        "kind": "job",
        "needs": list(needs),
        "task": "remediation.canary",
        "payload": {"sleep_seconds": sleep, "message": name, **payload},
        "timeout_seconds": 60,
    }


def start(name: str) -> uuid.UUID:
    from tasks.workflows import run_operations

    return run_operations.request_run(
        tenant=TENANT, workflow=name, version=None, reason="test", requested_by="test"
    )


def view(run_id: uuid.UUID) -> dict[str, Any]:
    from tasks.workflows import run_operations

    return run_operations.run_view(run_id)


def wait_for_run(run_id: uuid.UUID, *states: str, timeout: float = 60) -> dict[str, Any]:
    from models.workflow_runs import RunNotFoundError

    def finished() -> dict[str, Any] | None:
        try:
            current = view(run_id)
        except RunNotFoundError:
            return None
        return current if current["state"] in states else None

    result: dict[str, Any] = poll(finished, timeout, f"run {run_id} to be {states}")
    return result


def step_state(run_id: uuid.UUID, step: str) -> str | None:
    """The step's state; None while the start job has not written the run."""
    from models.workflow_runs import RunNotFoundError

    try:
        return str(steps(view(run_id))[step]["state"])
    except RunNotFoundError:
        return None


def steps(run: dict[str, Any]) -> dict[str, dict[str, Any]]:
    return {step["name"]: step for step in run["steps"]}


def child_jobs(run_id: uuid.UUID) -> list[Any]:
    from sqlalchemy import select

    from models.db import session_scope
    from models.jobs import Job

    with session_scope() as session:
        return list(
            session.scalars(select(Job).where(Job.enqueued_by.like(f"workflow:{run_id}:%")))
        )


def test_a_dag_runs_independent_steps_at_once_and_each_step_once(
    workflow_workers: Callable[[str], WorkerProcess],
) -> None:
    workflow_workers("wf-1")
    define(
        "fan",
        [
            canary_step("prepare"),
            canary_step("left", "prepare", sleep=2),
            canary_step("right", "prepare", sleep=2),
            canary_step("join", "left", "right"),
        ],
    )
    run_id = start("fan")
    run = wait_for_run(run_id, "succeeded", "failed")
    assert run["state"] == "succeeded", run
    by_name = steps(run)
    assert all(step["state"] == "succeeded" for step in by_name.values())
    assert all(step["attempts"] == 1 and step["failures"] == 0 for step in by_name.values())
    # Every step's child ran once, and its result is the step's.
    children = child_jobs(run_id)
    assert sorted(job.enqueued_by.rsplit(":", 1)[1] for job in children) == sorted(by_name)
    assert by_name["join"]["result"]["result"]["message"] == "join"

    left, right = by_name["left"], by_name["right"]
    # The pair overlapped: each started before the other finished.
    assert left["started_at"] < right["finished_at"] and right["started_at"] < left["finished_at"]
    # And join waited for both.
    assert by_name["join"]["started_at"] >= max(left["finished_at"], right["finished_at"])


def test_a_run_survives_the_worker_killed_mid_step(
    workflow_workers: Callable[[str], WorkerProcess],
) -> None:
    doomed = workflow_workers("wf-doomed")
    define("long", [canary_step("first"), canary_step("second", "first", sleep=5)])
    run_id = start("long")

    poll(lambda: step_state(run_id, "second") == "running", 30, "the second step to run")
    doomed.kill()  # SIGKILL, mid-step
    workflow_workers("wf-rescue")
    run = wait_for_run(run_id, "succeeded", "failed", timeout=90)
    assert run["state"] == "succeeded", run
    by_name = steps(run)
    # The finished step was not run again; the interrupted one ran again, on the new worker.
    assert by_name["first"]["attempts"] == 1
    assert by_name["second"]["attempts"] == 2
    # And its child job was not sent twice: the redelivery waited on the same one.
    names = [job.enqueued_by.rsplit(":", 1)[1] for job in child_jobs(run_id)]
    assert sorted(names) == ["first", "second"]


def test_a_step_retries_within_its_budget_then_the_run_fails_and_resumes(
    workflow_workers: Callable[[str], WorkerProcess],
) -> None:
    from sqlalchemy import select

    from models.db import session_scope
    from models.jobs import DeadLetter

    workflow_workers("wf-retry")
    failing = canary_step("flaky", "ok", fail_permanently=True)
    failing["retries"] = 1
    define("breaks", [canary_step("ok"), failing, canary_step("after", "flaky")])
    run_id = start("breaks")
    run = wait_for_run(run_id, "failed", "succeeded")
    assert run["state"] == "failed"
    by_name = steps(run)
    assert by_name["ok"]["state"] == "succeeded"
    assert (by_name["flaky"]["state"], by_name["flaky"]["failures"]) == ("failed", 2)
    assert "dead_lettered" in (by_name["flaky"]["error"] or "")
    assert by_name["after"]["state"] == "cancelled"
    assert "flaky" in (run["error"] or "")
    # The step's job is in the dead-letter queue, its payload naming the run and step.
    step_job = uuid.UUID(by_name["flaky"]["job_id"])
    wait_for_job(step_job, ("dead_lettered",))
    with session_scope() as session:
        letter = session.scalar(select(DeadLetter).where(DeadLetter.job_id == step_job))
        assert letter is not None
        assert letter.payload["run_id"] == str(run_id) and letter.payload["step"] == "flaky"
    # Two children for the two attempts of flaky, one for ok.
    names = sorted(job.enqueued_by.rsplit(":", 1)[1] for job in child_jobs(run_id))
    assert names == ["flaky", "flaky", "ok"]

    # Retry resumes from the failed step; the succeeded one is kept, not run again.
    from kernel.errors import DrydockError
    from tasks.workflows import run_operations

    with pytest.raises(DrydockError, match="nothing to cancel"):
        run_operations.cancel_run(run_id, tenant=None, actor="test")
    sent = run_operations.retry_run(run_id, tenant=TENANT, actor="test")
    assert sent == ["flaky"]
    again = wait_for_run(run_id, "failed", "succeeded")
    assert again["state"] == "failed"  # it fails every time: but only it ran again
    assert steps(again)["ok"]["attempts"] == 1


def test_cancel_stops_a_run_mid_step(workflow_workers: Callable[[str], WorkerProcess]) -> None:
    from tasks.workflows import run_operations

    workflow_workers("wf-cancel")
    define("slow", [canary_step("wait", sleep=6), canary_step("never", "wait")])
    run_id = start("slow")
    poll(lambda: step_state(run_id, "wait") == "running", 30, "the step to run")
    asked = time.monotonic()
    run_operations.cancel_run(run_id, tenant=TENANT, actor="ops")
    run = wait_for_run(run_id, "cancelled", "succeeded", "failed", timeout=30)
    assert run["state"] == "cancelled"
    assert time.monotonic() - asked < 5, "the running step did not stop within seconds"
    by_name = steps(run)
    assert by_name["wait"]["state"] == "cancelled" and by_name["never"]["state"] == "cancelled"
    assert by_name["never"]["attempts"] == 0


def test_a_workflow_this_fleet_cannot_run_is_refused_at_the_edge(clean_state: None) -> None:
    from tasks.workflows import run_operations, runs

    define(
        "shell",
        [
            {
                "name": "build",
                "kind": "container",
                "image": "registry.local/x:1",
                "command": ["true"],
            }
        ],
    )
    with pytest.raises(runs.NotRunnableError, match="step build is a container step"):
        start("shell")
    with pytest.raises(Exception, match="no workflow"):
        run_operations.request_run(
            tenant="other", workflow="shell", version=None, reason="", requested_by="test"
        )


def test_operators_run_follow_and_inspect_runs_from_the_cli(
    workflow_workers: Callable[[str], WorkerProcess],
) -> None:
    from typer.testing import CliRunner

    from drydock.cli import app as cli_app

    workflow_workers("wf-cli")
    define("pair", [canary_step("one"), canary_step("two", "one")])
    runner = CliRunner()
    ran = runner.invoke(cli_app, ["workflows", "run", "pair", "--tenant", TENANT, "--wait"])
    assert ran.exit_code == 0, ran.output
    started = re.search(r"run (\S+) of acme/pair started", ran.stdout)
    assert started is not None, ran.stdout
    run_id = started.group(1)
    assert f"run {run_id} succeeded" in ran.stdout
    # The timeline as it happened, with the steps done so far.
    assert "[0/2] run.started" in ran.stdout
    assert re.search(r"\[1/2\] step.started two on wf-cli@", ran.stdout)
    assert "[2/2] step.succeeded two" in ran.stdout

    status = runner.invoke(cli_app, ["workflows", "status", run_id, "--json"])
    assert status.exit_code == 0, status.output
    assert [s["state"] for s in json.loads(status.stdout)["steps"]] == ["succeeded"] * 2
    listed = runner.invoke(cli_app, ["workflows", "runs", "--tenant", TENANT])
    assert run_id in listed.output and "succeeded" in listed.output
    # Cancelling a finished run, or another tenant's, is refused; nothing changes.
    assert runner.invoke(cli_app, ["workflows", "cancel", run_id]).exit_code != 0
    other = runner.invoke(cli_app, ["workflows", "status", run_id, "--tenant", "globex"])
    assert other.exit_code != 0
    unknown = runner.invoke(cli_app, ["workflows", "run", "nope", "--tenant", TENANT])
    assert unknown.exit_code != 0


def test_runs_over_http_per_tenant(workflow_workers: Callable[[str], WorkerProcess]) -> None:
    from fastapi.testclient import TestClient

    from drydock.api import app
    from tests.test_api import bearer, make_token

    workflow_workers("wf-api")
    define("pair", [canary_step("one"), canary_step("two", "one")])
    define(
        "boxed",
        [{"name": "box", "kind": "container", "image": "registry.local/x:1", "command": ["true"]}],
    )
    operator = bearer(make_token("ops", "workflows.*"))
    acme = bearer(make_token("acme-wf", "workflows.*", tenant=TENANT))
    globex = bearer(make_token("globex-wf", "workflows.*", tenant="globex"))
    reader = bearer(make_token("reader", "workflows.read", tenant=TENANT))
    with TestClient(app) as api:
        started = api.post("/v1/workflows/pair/runs", json={"reason": "ship"}, headers=acme)
        assert started.status_code == 202, started.text
        run_url = started.headers["Location"]
        assert run_url == started.json()["url"]
        run_id = uuid.UUID(started.json()["run_id"])
        wait_for_run(run_id, "succeeded", "failed")
        shown = api.get(run_url, headers=reader)
        assert shown.status_code == 200
        body = shown.json()
        assert body["state"] == "succeeded" and body["reason"] == "ship"
        assert [s["name"] for s in body["steps"]] == ["one", "two"]
        assert [r["id"] for r in api.get("/v1/workflows/runs", headers=acme).json()] == [
            str(run_id)
        ]

        # Another tenant's run is not there; reading does not let one start or cancel.
        assert api.get(run_url, headers=globex).status_code == 404
        assert api.get("/v1/workflows/runs", headers=globex).json() == []
        assert api.post("/v1/workflows/pair/runs", headers=reader).status_code == 403
        assert api.post(f"{run_url}/cancel", headers=reader).status_code == 403
        # An operator names the tenant; a finished run has nothing to cancel.
        assert api.post("/v1/workflows/pair/runs", headers=operator).status_code == 403
        assert api.post(f"{run_url}/cancel", headers=operator).status_code == 409
        assert api.post("/v1/workflows/nope/runs", headers=acme).status_code == 404
        boxed = api.post("/v1/workflows/boxed/runs", headers=acme)
        assert boxed.status_code == 409 and "container step" in boxed.json()["detail"]
        again = api.post("/v1/workflows/pair/runs", params={"tenant": TENANT}, headers=operator)
        assert again.status_code == 202
        wait_for_run(uuid.UUID(again.json()["run_id"]), "succeeded", "failed")


def test_the_sweep_moves_on_a_run_that_nothing_is_moving(
    workflow_workers: Callable[[str], WorkerProcess],
) -> None:
    """An advance that died between marking a step queued and sending it, and a step's job that
    ended at a hard time limit without telling the run: the sweep recovers both."""
    from dispatch.enqueue import enqueue
    from models import workflows as definitions
    from models.db import session_scope
    from models.workflow_runs import StepState, WorkflowRun, WorkflowStep
    from tasks.workflows import runs

    workflow_workers("wf-sweep")
    define("lonely", [canary_step("only")])
    # A job that has ended (dead-lettered), standing for one killed at its hard time limit.
    lost_job = enqueue("remediation.canary", {"fail_permanently": True}).id
    wait_for_job(lost_job, ("dead_lettered",))
    with session_scope() as session:
        version = definitions.get_definition(session, TENANT, "lonely")
        stuck, lost = uuid.uuid4(), uuid.uuid4()
        for run_id in (stuck, lost):
            session.add(
                WorkflowRun(
                    id=run_id,
                    tenant=TENANT,
                    workflow_id=version.id,
                    workflow_name="lonely",
                    workflow_version=version.version,
                    state="running",
                    reason="",
                    requested_by="test",
                )
            )
        session.flush()
        spec = version.definition["steps"][0]
        # Marked queued with the id of a job that was never sent.
        session.add(
            WorkflowStep(
                run_id=stuck, name="only", kind="job", needs=[], spec=spec,
                state=StepState.QUEUED.value, attempts=0, failures=0, job_id=uuid.uuid4(),
            )
        )  # fmt: skip
        # Marked running on a job that has ended.
        session.add(
            WorkflowStep(
                run_id=lost, name="only", kind="job", needs=[], spec=spec,
                state=StepState.RUNNING.value, attempts=1, failures=0, job_id=lost_job,
            )
        )  # fmt: skip
    assert runs.sweep_runs(100) == {"runs": 2, "steps_lost": 1}
    assert wait_for_run(stuck, "succeeded", "failed")["state"] == "succeeded"
    failed = wait_for_run(lost, "failed", "succeeded")
    assert "ended without finishing" in (steps(failed)["only"]["error"] or "")
    # Runs with a step in flight are left alone.
    assert runs.sweep_runs(100) == {"runs": 0, "steps_lost": 0}

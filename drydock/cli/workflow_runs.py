"""``drydock workflows run|runs|status|cancel|retry``: runs of workflows, from the CLI."""

from __future__ import annotations

import json
import sys
import time
import uuid
from typing import Any

import typer

from drydock.cli.text import CliError, current_operator
from drydock.cli.workflows import say, workflows_app

FINISHED = ("succeeded", "failed", "cancelled")


def _run_id(text: str) -> uuid.UUID:
    try:
        return uuid.UUID(text)
    except ValueError:
        raise CliError(f"RUN {text!r}: expected a run id (a UUID)") from None


@workflows_app.command("run")
def run_workflow(
    name: str = typer.Argument(..., help="The workflow's name."),
    tenant: str = typer.Option(..., "--tenant", help="The workflow's tenant."),
    version: int | None = typer.Option(None, "--version", min=1, help="Default: the newest."),
    reason: str = typer.Option("", "--reason", help="Why: kept with the run."),
    project: str | None = typer.Option(
        None, "--project", help="The project whose code it works on (container, agent steps)."
    ),
    revision: str | None = typer.Option(
        None, "--revision", help="Branch, tag or commit to start from; default: default branch."
    ),
    branch: str | None = typer.Option(
        None, "--branch", help="Branch to commit and push to; default: drydock/runs/<run id>."
    ),
    approval_token: str | None = typer.Option(
        None,
        "--approval-token",
        envvar="DRYDOCK_APPROVAL_TOKEN",
        help="Approval for git.push:<project>/<remote>/<branch> (a protected branch).",
    ),
    wait: bool = typer.Option(False, "--wait", help="Follow the run until it finishes."),
) -> None:
    """Start a run; prints its id (and with --wait each step as it finishes; exit 1 unless
    the run succeeded)."""
    from tasks.workflows import run_operations

    run_id = run_operations.request_run(
        tenant=tenant,
        workflow=name,
        version=version,
        reason=reason,
        requested_by=f"operator:{current_operator()}",
        project=project,
        revision=revision,
        branch=branch,
        approval_token=approval_token,
    )
    say(f"run {run_id} of {tenant}/{name} started")
    if wait:
        state = _follow(run_id, tenant)
        if state != "succeeded":
            raise typer.Exit(1)


def _follow(run_id: uuid.UUID, tenant: str | None, *, as_json: bool = False) -> str:
    """Print the run's timeline as it happens, each line with the steps done so far; the
    run's final state."""
    from models.workflow_runs import RunNotFoundError
    from tasks.workflows import run_operations

    seen = 0
    while True:
        try:
            view = run_operations.run_view(run_id, tenant)
            events = run_operations.run_timeline(run_id, tenant, seen)
        except RunNotFoundError:
            time.sleep(0.5)  # the start job has not written the run yet
            continue
        total = len(view["steps"])
        done = sum(1 for step in view["steps"] if step["state"] in FINISHED)
        for event in events:
            seen = event["id"]
            if as_json:
                sys.stdout.write(json.dumps(event, separators=(",", ":")) + "\n")
            else:
                say(f"[{done}/{total}] {event_line(event)}")
        if view["state"] in FINISHED and not events:
            if not as_json:
                tail = f": {view['error']}" if view["error"] else ""
                say(f"run {run_id} {view['state']}{tail}")
            return str(view["state"])
        time.sleep(0.5)


def event_line(event: dict[str, Any]) -> str:
    kind = str(event["type"])
    step = f" {event['step']}" if event.get("step") else ""
    detail = ""
    if kind == "step.push":
        detail = f" {event.get('remote')} {event.get('status')}"
        if event.get("failure"):
            detail += f" ({event['failure']})"
    elif event.get("commit") and kind in ("step.commit", "step.succeeded"):
        detail = f" {str(event['commit'])[:12]}"
    elif kind == "run.succeeded" and event.get("head_commit"):
        detail = f" at {str(event['head_commit'])[:12]}"
    if event.get("error"):
        detail += f": {event['error']}"
    runner = f" on {event['runner']}" if event.get("runner") and kind == "step.started" else ""
    return f"{kind}{step}{detail}{runner}"


@workflows_app.command("follow")
def follow(
    run: str = typer.Argument(..., metavar="RUN"),
    tenant: str | None = typer.Option(None, "--tenant"),
    as_json: bool = typer.Option(False, "--json", help="One JSON event per line."),
) -> None:
    """Follow a run's timeline (each step's start, commit, pushes and outcome, with the steps
    done so far) until it ends; exit 1 unless it succeeded."""
    if _follow(_run_id(run), tenant, as_json=as_json) != "succeeded":
        raise typer.Exit(1)


@workflows_app.command("runs")
def list_runs(
    tenant: str | None = typer.Option(None, "--tenant", help="Only this tenant's runs."),
    limit: int = typer.Option(20, "--limit", min=1, max=500),
) -> None:
    """Runs, newest first."""
    from models import workflow_runs
    from models.db import session_scope

    with session_scope() as session:
        for run in workflow_runs.list_runs(session, tenant, limit):
            say(
                f"{run.id}  {run.tenant}/{run.workflow_name} v{run.workflow_version}  "
                f"{run.state}  {run.created_at:%Y-%m-%d %H:%M:%S}Z"
            )


@workflows_app.command("status")
def run_status(
    run: str = typer.Argument(..., metavar="RUN", help="The run's id."),
    tenant: str | None = typer.Option(None, "--tenant"),
    as_json: bool = typer.Option(False, "--json", help="Print as JSON."),
) -> None:
    """A run and every step: state, attempts, timing, error."""
    from tasks.workflows import run_operations

    view = run_operations.run_view(_run_id(run), tenant)
    if as_json:
        sys.stdout.write(json.dumps(view, indent=2) + "\n")
        return
    say(f"run {view['id']} {view['tenant']}/{view['workflow']} v{view['version']}: {view['state']}")
    if view["error"]:
        say(f"  error: {view['error']}")
    for step in view["steps"]:
        took = f" {step['duration_ms'] / 1000:.1f}s" if step["duration_ms"] is not None else ""
        tail = f"  {step['error']}" if step["error"] else ""
        say(
            f"  {step['name']:<20} {step['state']:<10} attempts {step['attempts']}"
            f" failures {step['failures']}{took}{tail}"
        )


@workflows_app.command("cancel")
def cancel(
    run: str = typer.Argument(..., metavar="RUN"),
    tenant: str | None = typer.Option(None, "--tenant"),
) -> None:
    """Stop a run: steps not started never start; a running step stops within a second."""
    from tasks.workflows import run_operations

    state = run_operations.cancel_run(
        _run_id(run), tenant=tenant, actor=f"operator:{current_operator()}"
    )
    say(f"run {run}: cancel requested ({state})")


@workflows_app.command("retry")
def retry(
    run: str = typer.Argument(..., metavar="RUN"),
    tenant: str | None = typer.Option(None, "--tenant"),
) -> None:
    """Resume a failed or cancelled run from its failed steps; succeeded steps are kept."""
    from tasks.workflows import run_operations

    sent = run_operations.retry_run(
        _run_id(run), tenant=tenant, actor=f"operator:{current_operator()}"
    )
    say(f"run {run} resumed: {', '.join(sent) or 'nothing to send yet'}")


@workflows_app.command("provenance")
def provenance(
    run: str = typer.Argument(..., metavar="RUN"),
    tenant: str | None = typer.Option(None, "--tenant"),
    verify: bool = typer.Option(
        False, "--verify", help="Check the signature and every step log; exit 1 on a problem."
    ),
) -> None:
    """Print the run's signed provenance (a DSSE envelope) and its steps' logs as JSON; with
    --verify, check them against the fleet's key instead and name every problem."""
    from tasks.workflows.run_provenance import run_provenance, verify_run

    found = run_provenance(_run_id(run), tenant)
    if not verify:
        sys.stdout.write(json.dumps(found.as_dict(), indent=2) + "\n")
        return
    checked = verify_run(found)
    if checked.ok:
        say(f"run {run}: provenance verified (key {checked.keyid}, {len(found.step_logs)} steps)")
        return
    for problem in checked.problems:
        where = f" step {problem.step}:" if problem.step else ""
        say(f"run {run}: {problem.kind.value}:{where} {problem.message}")
    raise typer.Exit(1)

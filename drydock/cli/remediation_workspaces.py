"""``drydock remediation workspaces|lanes|freezes|lane``: change a playbook safely.

A workspace drafts a playbook revision for a scope, simulates it against a sandbox replica,
is approved and promoted through its gates; the promotion then refreshes the runs of the
assets it covers. Lanes (protected or not), freezes and an asset's lane govern promotions.
"""

from __future__ import annotations

import json
import sys
import time
import uuid
from datetime import UTC, datetime
from typing import Any

import typer
from pydantic import ValidationError
from rich.console import Console
from rich.table import Column, Table

from drydock.cli.remediation import acting, print_json, read_mapping
from drydock.cli.text import when
from kernel.errors import DrydockError, field_problems, list_problems

workspaces_app = typer.Typer(
    help=(
        "Remediation workspaces: create, edit, show, list, abandon a draft; simulate it against "
        "a sandbox replica, approve it, promote it."
    ),
    no_args_is_help=True,
)
lanes_app = typer.Typer(help="Lanes of a tenant's assets: put, list.", no_args_is_help=True)
freezes_app = typer.Typer(help="Freezes on promotion: add, list, lift.", no_args_is_help=True)

out = Console()
BY_HELP = "Who is acting, for the history (default: operator:<your user>)."
DRAFT_KEYS = "executor, spec, timeout_seconds, ..."


def _model(model: Any, fields: dict[str, Any]) -> Any:
    try:
        return model.model_validate_json(json.dumps(fields))
    except ValidationError as exc:
        raise DrydockError(list_problems(field_problems(exc, whole="(options)"))) from None


def _scope(asset_class: str | None, lane: str | None, names: list[str]) -> dict[str, Any] | None:
    if asset_class is None and lane is None and not names:
        return None
    if asset_class is None or lane is None:
        raise DrydockError("a scope needs both --asset-class and --lane")
    return {"asset_class": asset_class, "lane": lane, "names": names}


@workspaces_app.command("create")
def create(
    name: str = typer.Argument(..., help="The workspace's name."),
    tenant: str = typer.Option(..., "--tenant"),
    playbook: str = typer.Option(..., "--playbook", help="The playbook it changes (or makes)."),
    asset_class: str = typer.Option(..., "--asset-class", help="The scope's asset class."),
    lane: str = typer.Option(..., "--lane", help="The scope's lane."),
    names: list[str] = typer.Option([], "--name", help="Asset name glob; repeatable."),
    base_version: int | None = typer.Option(None, "--base-version", help="Default: newest."),
    draft: str | None = typer.Option(
        None, "--draft", help="The draft (YAML/JSON; -: stdin). Default: the base version."
    ),
    active_runs: str = typer.Option("relink", "--active-runs", help="relink or finish."),
    reason: str = typer.Option("", "--reason"),
    by: str | None = typer.Option(None, "--by", help=BY_HELP),
) -> None:
    """Open a workspace: every problem of its draft and scope is named."""
    from tasks.remediation import workspaces

    request = _model(
        workspaces.WorkspaceCreate,
        {
            "name": name,
            "playbook": playbook,
            "base_version": base_version,
            "draft": read_mapping(draft, DRAFT_KEYS) if draft is not None else None,
            "scope": _scope(asset_class, lane, names),
            "active_runs": active_runs,
            "reason": reason,
        },
    )
    shown = workspaces.create(request, tenant=tenant, actor=acting(by))
    out.print(
        f"workspace {tenant}/{name}: {playbook} revision {shown['revision']} ({shown['state']}), "
        f"{shown['assets_in_scope']} asset(s) in scope",
        highlight=False,
    )


@workspaces_app.command("edit")
def edit(
    name: str = typer.Argument(...),
    tenant: str = typer.Option(..., "--tenant"),
    draft: str | None = typer.Option(None, "--draft", help="A new draft (YAML/JSON; -: stdin)."),
    asset_class: str | None = typer.Option(None, "--asset-class"),
    lane: str | None = typer.Option(None, "--lane"),
    names: list[str] = typer.Option([], "--name", help="Asset name glob; repeatable."),
    active_runs: str | None = typer.Option(None, "--active-runs", help="relink or finish."),
    expected_revision: int | None = typer.Option(
        None, "--expected-revision", help="Refuse unless still at this revision."
    ),
    reason: str = typer.Option("", "--reason"),
    by: str | None = typer.Option(None, "--by", help=BY_HELP),
) -> None:
    """A new revision: the workspace is a draft again (simulate it again)."""
    from tasks.remediation import workspaces

    change = _model(
        workspaces.WorkspaceEdit,
        {
            "draft": read_mapping(draft, DRAFT_KEYS) if draft is not None else None,
            "scope": _scope(asset_class, lane, names),
            "active_runs": active_runs,
            "expected_revision": expected_revision,
            "reason": reason,
        },
    )
    shown = workspaces.edit(name, change, tenant=tenant, actor=acting(by))
    out.print(f"workspace {tenant}/{name}: revision {shown['revision']} (draft)", highlight=False)


@workspaces_app.command("show")
def show(
    name: str = typer.Argument(...),
    tenant: str = typer.Option(..., "--tenant"),
    as_json: bool = typer.Option(False, "--json", help="The whole workspace as JSON."),
) -> None:
    """A workspace: scope, simulation step by step, and its history, promotion runs included."""
    from tasks.remediation import workspaces

    shown = workspaces.describe(name, tenant=tenant)
    if as_json:
        print_json(shown)
        return
    scope = shown["scope"]
    lines = [
        f"workspace {shown['tenant']}/{shown['name']}  {shown['state']}",
        f"  playbook {shown['playbook']} (base v{shown['base_version'] or '-'}), "
        f"revision {shown['revision']}, active runs: {shown['active_runs']}",
        f"  scope: class {scope['asset_class']}, lane {scope['lane']}, names "
        f"{', '.join(scope['names']) or 'all'} ({shown['assets_in_scope']} asset(s))",
    ]
    if shown["promoted_version"] is not None:
        lines.append(
            f"  promoted as v{shown['promoted_version']} by {shown['promoted_by']} "
            f"{when(shown['promoted_at'])}"
        )
    simulation = shown["simulation"]
    if simulation["number"]:
        result = simulation["result"] or {}
        verdict = "running" if not result else ("passed" if result.get("ok") else "failed")
        lines.append(
            f"  simulation {simulation['number']} of revision {simulation['revision']}: {verdict}"
            + (f" ({result['failure']})" if result.get("failure") else "")
        )
        for step in simulation["steps"]:
            lines.append(
                f"    {step['step'] + 1}. {step['name']}: {'ok' if step['ok'] else 'failed'}"
                + (f" ({step['error']})" if step["error"] else "")
            )
            for stream in ("stdout", "diff"):
                text = step["stdout"] if stream == "stdout" else step["diff"]
                for line in (text or "").splitlines()[:40]:
                    lines.append(f"        {line}")
    lines.append("  history:")
    for event in shown["history"]:
        detail = event["detail"]
        said = detail.get("reason") or ""
        if event["action"] in ("promoted", "promotion_refused"):
            said = "; ".join(
                f"{g['gate']} {'passed' if g['passed'] else 'FAILED'}: {g['reason']}"
                for g in detail.get("gates", [])
            )
        lines.append(
            f"    {when(event['at'])}  r{event['revision']}  {event['action']:<18} "
            f"{event['actor']}  {said}".rstrip()
        )
    for line in lines:
        out.print(line, markup=False, highlight=False, soft_wrap=True)


@workspaces_app.command("list")
def list_workspaces(
    tenant: str | None = typer.Option(None, "--tenant"),
    state: list[str] = typer.Option([], "--state", help="Only these states; repeatable."),
    limit: int = typer.Option(100, "--limit", min=1, max=500),
) -> None:
    """Workspaces, most recently changed first."""
    from models.remediation_workspaces import WorkspaceState
    from tasks.remediation import workspaces

    try:
        states = [WorkspaceState(s) for s in state]
    except ValueError:
        known = ", ".join(s.value for s in WorkspaceState)
        raise DrydockError(f"--state: one of {known}") from None
    # Names and states whole: the other columns wrap on a narrow terminal.
    table = Table(
        Column("workspace", no_wrap=True), "playbook", "rev", Column("state", no_wrap=True),
        "scope", "updated",
    )  # fmt: skip
    for row in workspaces.list_summaries(tenant=tenant, states=states, limit=limit):
        scope = row["scope"]
        table.add_row(
            f"{row['tenant']}/{row['name']}",
            row["playbook"],
            str(row["revision"]),
            row["state"],
            f"{scope['asset_class']} / {scope['lane']}",
            when(row["updated_at"]),
        )
    out.print(table)


@workspaces_app.command("abandon")
def abandon(
    name: str = typer.Argument(...),
    tenant: str = typer.Option(..., "--tenant"),
    reason: str = typer.Option("", "--reason"),
    by: str | None = typer.Option(None, "--by", help=BY_HELP),
) -> None:
    """Give a workspace up: nothing it drafted goes live."""
    from tasks.remediation import workspaces

    workspaces.abandon(name, tenant=tenant, actor=acting(by), reason=reason)
    out.print(f"workspace {tenant}/{name}: abandoned", highlight=False)


@workspaces_app.command("simulate")
def simulate(
    name: str = typer.Argument(...),
    tenant: str = typer.Option(..., "--tenant"),
    wait: float = typer.Option(0, "--wait", help="Seconds to wait for the outcome (0: don't)."),
    by: str | None = typer.Option(None, "--by", help=BY_HELP),
) -> None:
    """Simulate the current revision against a sandbox replica (never the real target)."""
    from tasks.remediation import promotion, workspaces

    started = promotion.simulate(name, tenant=tenant, actor=acting(by))
    out.print(
        f"workspace {tenant}/{name}: simulation {started['simulation']} job {started['job_id']}",
        highlight=False,
    )
    deadline = time.monotonic() + wait
    while wait and time.monotonic() < deadline:
        shown = workspaces.describe(name, tenant=tenant)
        if shown["state"] != "simulating":
            out.print(f"workspace {tenant}/{name}: {shown['state']}", highlight=False)
            if shown["state"] == "simulated_failed":
                raise typer.Exit(1)
            return
        time.sleep(0.5)
    if wait:
        raise DrydockError(f"the simulation did not end within {wait:g}s; it goes on")


@workspaces_app.command("approve")
def approve(
    name: str = typer.Argument(...),
    tenant: str = typer.Option(..., "--tenant"),
    reason: str = typer.Option("", "--reason"),
    by: str | None = typer.Option(None, "--by", help=BY_HELP),
) -> None:
    """Approve the simulated revision; prints the token a protected lane's promotion needs."""
    from tasks.remediation import promotion

    approved = promotion.approve(name, tenant=tenant, approver=acting(by), reason=reason)
    out.print(
        f"workspace {tenant}/{name} revision {approved.revision} approved by {approved.approver} "
        f"until {approved.expires_at.isoformat()}",
        highlight=False,
    )
    sys.stdout.write(approved.token + "\n")


@workspaces_app.command("promote")
def promote(
    name: str = typer.Argument(...),
    tenant: str = typer.Option(..., "--tenant"),
    token: str | None = typer.Option(None, "--token", help="The approval token (protected)."),
    reason: str = typer.Option("", "--reason"),
    by: str | None = typer.Option(None, "--by", help=BY_HELP),
) -> None:
    """Promote through the gates: simulation, approval (protected lanes), freeze."""
    from tasks.remediation import promotion

    done = promotion.promote(
        name, tenant=tenant, actor=acting(by), approval_token=token, reason=reason
    )
    was = f"v{done['previous_version']}" if done["previous_version"] else "none"
    out.print(
        f"workspace {tenant}/{name}: {done['playbook']} v{done['version']} is the scope's active "
        f"version (was {was}); promotion loop job {done['loop_job_id']}",
        highlight=False,
    )


# ---- lanes, freezes, an asset's lane ---------------------------------------------------------


@lanes_app.command("put")
def put_lane(
    name: str = typer.Argument(...),
    tenant: str = typer.Option(..., "--tenant"),
    protected: bool = typer.Option(False, "--protected/--unprotected"),
    description: str = typer.Option("", "--description"),
    by: str | None = typer.Option(None, "--by", help=BY_HELP),
) -> None:
    """Make or change a lane; promotions into a protected one need an approval."""
    from tasks.remediation import governance

    lane = governance.put_lane(
        tenant=tenant, name=name, protected=protected, description=description, actor=acting(by)
    )
    out.print(
        f"lane {tenant}/{name}: {'protected' if lane['protected'] else 'unprotected'}",
        highlight=False,
    )


@lanes_app.command("list")
def list_lanes(tenant: str | None = typer.Option(None, "--tenant")) -> None:
    from tasks.remediation import governance

    table = Table("lane", "protected", "description")
    for lane in governance.list_lanes(tenant=tenant):
        table.add_row(
            f"{lane['tenant']}/{lane['name']}", "yes" if lane["protected"] else "-",
            lane["description"],
        )  # fmt: skip
    out.print(table)


@freezes_app.command("add")
def add_freeze(
    tenant: str = typer.Option(..., "--tenant"),
    reason: str = typer.Option(..., "--reason"),
    lane: str | None = typer.Option(None, "--lane", help="Default: every lane."),
    asset_class: str | None = typer.Option(None, "--asset-class", help="Default: every class."),
    until: datetime | None = typer.Option(None, "--until", help="Default: until lifted."),
    by: str | None = typer.Option(None, "--by", help=BY_HELP),
) -> None:
    """Stop promotions into a lane, a class, both, or the whole tenant."""
    from tasks.remediation import governance

    ends = until.replace(tzinfo=until.tzinfo or UTC) if until else None
    freeze = governance.add_freeze(
        tenant=tenant, lane=lane, asset_class=asset_class, reason=reason, starts_at=None,
        ends_at=ends, actor=acting(by),
    )  # fmt: skip
    out.print(f"freeze {freeze['id']}", highlight=False)


@freezes_app.command("list")
def list_freezes(
    tenant: str | None = typer.Option(None, "--tenant"),
    past: bool = typer.Option(False, "--past", help="Also lifted and ended ones."),
) -> None:
    from tasks.remediation import governance

    table = Table("freeze", "tenant", "lane", "class", "until", "in force", "reason")
    for freeze in governance.list_freezes(tenant=tenant, include_past=past):
        table.add_row(
            freeze["id"], freeze["tenant"], freeze["lane"] or "*", freeze["asset_class"] or "*",
            when(freeze["ends_at"]) if freeze["ends_at"] else "lifted",
            "yes" if freeze["in_force"] else "-", freeze["reason"],
        )  # fmt: skip
    out.print(table)


@freezes_app.command("lift")
def lift_freeze(
    freeze_id: str = typer.Argument(...),
    tenant: str | None = typer.Option(None, "--tenant"),
    by: str | None = typer.Option(None, "--by", help=BY_HELP),
) -> None:
    from tasks.remediation import governance

    try:
        parsed = uuid.UUID(freeze_id)
    except ValueError:
        raise DrydockError(f"{freeze_id!r} is not a freeze id (a UUID)") from None
    governance.lift_freeze(parsed, tenant=tenant, actor=acting(by))
    out.print(f"freeze {freeze_id} lifted", highlight=False)


def set_lane(
    asset: str = typer.Argument(..., help="The asset's id or name."),
    lane: str | None = typer.Argument(None, help="The lane; omitted: out of every lane."),
    tenant: str = typer.Option(..., "--tenant"),
    by: str | None = typer.Option(None, "--by", help=BY_HELP),
) -> None:
    """Put an asset in a lane: workspace promotions scoped to it cover it."""
    from tasks.remediation import governance

    name = governance.set_asset_lane(tenant=tenant, asset=asset, lane=lane, actor=acting(by))
    out.print(f"asset {name}: lane {lane or '(none)'}", highlight=False)

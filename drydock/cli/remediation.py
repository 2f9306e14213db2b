"""``drydock playbooks`` and ``drydock remediation``: define playbooks, request, approve and
follow runs, read their artifacts.

Operators act as ``operator:<user>`` unless ``--by`` says who; ``--tenant`` limits every read
and write to that tenant (another tenant's run is not found, as over the API).
"""

from __future__ import annotations

import json
import sys
import uuid
from pathlib import Path
from typing import Any

import typer
from rich.console import Console
from rich.table import Column, Table

from drydock.cli.text import current_operator, when
from kernel.errors import DrydockError, field_problems, list_problems

playbooks_app = typer.Typer(
    help="Remediation playbooks: create (a new version), list, show.", no_args_is_help=True
)
remediation_app = typer.Typer(
    help=(
        "Remediation runs against quarantined assets: request, approve, reject, cancel, list, "
        "show; asset protection and connection variables; the shell sandbox image."
    ),
    no_args_is_help=True,
)
sandbox_app = typer.Typer(help="The sandbox image shell playbooks run in.", no_args_is_help=True)
remediation_app.add_typer(sandbox_app, name="sandbox")

out = Console()
err = Console(stderr=True)

BY_HELP = "Who is acting, for the audit trail (default: operator:<your user>)."
TENANT_HELP = "Only this tenant's runs and playbooks."


def acting(by: str | None) -> str:
    return by or f"operator:{current_operator()}"


def _run_id(text: str) -> uuid.UUID:
    try:
        return uuid.UUID(text)
    except ValueError:
        raise DrydockError(f"{text!r} is not a run id (a UUID)") from None


def say(text: str) -> None:
    """One line of text as it is: no rich markup or highlighting of what a playbook printed."""
    out.print(text, markup=False, highlight=False, soft_wrap=True)


def print_json(document: Any) -> None:
    sys.stdout.write(json.dumps(document, indent=2, default=str) + "\n")


def read_mapping(file: str, expected: str) -> dict[str, Any]:
    """A YAML or JSON mapping from ``file`` (``-``: stdin); ``expected`` names its keys."""
    import yaml

    try:
        text = sys.stdin.read() if file == "-" else Path(file).read_text()
    except (OSError, UnicodeDecodeError) as exc:
        reason = exc.strerror if isinstance(exc, OSError) and exc.strerror else str(exc)
        raise DrydockError(f"cannot read {file}: {reason}") from None
    try:
        document = yaml.safe_load(text)
    except yaml.YAMLError as exc:
        raise DrydockError(f"{file}: not YAML or JSON: {' '.join(str(exc).split())}") from None
    if not isinstance(document, dict):
        raise DrydockError(f"{file}: expected a mapping ({expected})")
    return document


# ---- playbooks -------------------------------------------------------------------------------


@playbooks_app.command("create")
def create_playbook(
    file: str = typer.Argument(
        ..., metavar="FILE", help="The definition, YAML or JSON; - reads stdin."
    ),
    tenant: str = typer.Option(..., "--tenant", help="The tenant the playbook belongs to."),
    by: str | None = typer.Option(None, "--by", help=BY_HELP),
) -> None:
    """Create a playbook, or the next version of one with the same name."""
    from pydantic import ValidationError

    from tasks.remediation import playbook_store
    from tasks.remediation.playbooks import PlaybookDefinition

    document = read_mapping(file, "name, executor, spec, ...")
    try:
        definition = PlaybookDefinition.model_validate(document)
    except ValidationError as exc:
        problems = list_problems(field_problems(exc, whole="(definition)"))
        raise DrydockError(f"{file}: invalid playbook: {problems}") from None
    summary = playbook_store.create_playbook(definition, tenant=tenant, actor=acting(by))
    out.print(
        f"playbook {summary['tenant']}/{summary['name']} version {summary['version']} "
        f"({summary['executor']}) {summary['id']}",
        highlight=False,
    )


@playbooks_app.command("list")
def list_playbooks(tenant: str | None = typer.Option(None, "--tenant", help=TENANT_HELP)) -> None:
    """Every playbook's newest version."""
    from models import remediation as store
    from models.db import session_scope

    table = Table("playbook", "version", "executor", "timeout", "approval", "asset kinds")
    with session_scope() as session:
        for book in store.list_playbooks(session, tenant):
            table.add_row(
                f"{book.tenant}/{book.name}",
                str(book.version),
                book.executor,
                f"{book.timeout_seconds}s",
                "required" if book.requires_approval else "-",
                ", ".join(book.asset_kinds),
            )
    out.print(table)


@playbooks_app.command("show")
def show_playbook(
    name: str = typer.Argument(..., help="The playbook's name."),
    tenant: str = typer.Option(..., "--tenant"),
    version: int | None = typer.Option(None, "--version", min=1, help="Default: the newest."),
    as_json: bool = typer.Option(False, "--json", help="Print as JSON."),
) -> None:
    """A playbook version with its spec."""
    from tasks.remediation import playbook_store

    summary = playbook_store.describe_playbook(tenant, name, version)
    if as_json:
        print_json(summary)
        return
    out.print(f"[bold]{tenant}/{name}[/] version {summary['version']}", highlight=False)
    out.print(f"  versions   {', '.join(str(v) for v in summary['versions'])}", highlight=False)
    out.print(f"  executor   {summary['executor']}", highlight=False)
    out.print(f"  timeout    {summary['timeout_seconds']}s", highlight=False)
    approval = "required" if summary["requires_approval"] else "when the asset or tenant needs it"
    out.print(f"  approval   {approval}", highlight=False)
    out.print(f"  for        {', '.join(summary['asset_kinds'])}", highlight=False)
    out.print(f"  created    {summary['created_at']} by {summary['created_by']}", highlight=False)
    if summary["description"]:
        out.print(f"  about      {summary['description']}", markup=False, highlight=False)
    out.print("spec:")
    out.print(json.dumps(summary["spec"], indent=2), markup=False, highlight=False)


# ---- runs ------------------------------------------------------------------------------------


@remediation_app.command("request")
def request(
    asset: str = typer.Argument(..., help="The asset's id or name."),
    playbook: str = typer.Argument(..., help="The playbook's name."),
    tenant: str = typer.Option(..., "--tenant"),
    reason: str = typer.Option("", "--reason", help="Why: kept in the audit trail."),
    by: str | None = typer.Option(None, "--by", help=BY_HELP),
) -> None:
    """Ask for a playbook to run against a quarantined asset (joins its active run if any)."""
    from tasks.remediation import requests

    outcome = requests.request_run(
        tenant=tenant, asset=asset, playbook=playbook, requested_by=acting(by), reason=reason
    )
    verb = "requested" if outcome.created else "joined active"
    out.print(f"{verb} run {outcome.run_id}: {outcome.state}", highlight=False)
    for why in outcome.approval_reasons:
        out.print(f"  needs approval: {why}", highlight=False)
    if outcome.job_id:
        out.print(f"  job {outcome.job_id}", highlight=False)


@remediation_app.command("approve")
def approve(
    run: str = typer.Argument(..., metavar="RUN", help="The run's id."),
    tenant: str | None = typer.Option(None, "--tenant", help=TENANT_HELP),
    reason: str = typer.Option("", "--reason", help="Why: kept in the audit trail."),
    by: str | None = typer.Option(None, "--by", help=BY_HELP),
) -> None:
    """Approve a pending run: it is queued with a signed, expiring approval token."""
    from tasks.remediation import requests

    approved = requests.approve_run(_run_id(run), tenant=tenant, approver=acting(by), reason=reason)
    out.print(
        f"approved run {approved.run_id}; the approval expires {when(approved.expires_at)} UTC",
        highlight=False,
    )
    if approved.job_id:
        out.print(f"  job {approved.job_id}", highlight=False)
    else:
        out.print("  the broker is unreachable: the next sweep sends the job", highlight=False)
    err.print("approval token (bound to this run):", highlight=False)
    sys.stdout.write(approved.token + "\n")


@remediation_app.command("reject")
def reject(
    run: str = typer.Argument(..., metavar="RUN"),
    reason: str = typer.Option(..., "--reason", help="Why it must not run."),
    tenant: str | None = typer.Option(None, "--tenant", help=TENANT_HELP),
    by: str | None = typer.Option(None, "--by", help=BY_HELP),
) -> None:
    """Refuse a pending run (it becomes cancelled)."""
    from tasks.remediation import requests

    state = requests.reject_run(_run_id(run), tenant=tenant, actor=acting(by), reason=reason)
    out.print(f"rejected run {run}: {state}", highlight=False)


@remediation_app.command("cancel")
def cancel(
    run: str = typer.Argument(..., metavar="RUN"),
    reason: str = typer.Option("", "--reason"),
    tenant: str | None = typer.Option(None, "--tenant", help=TENANT_HELP),
    by: str | None = typer.Option(None, "--by", help=BY_HELP),
) -> None:
    """Cancel a run that has not started."""
    from tasks.remediation import requests

    state = requests.cancel_run(_run_id(run), tenant=tenant, actor=acting(by), reason=reason)
    out.print(f"cancelled run {run}: {state}", highlight=False)


@remediation_app.command("list")
def list_runs(
    tenant: str | None = typer.Option(None, "--tenant", help=TENANT_HELP),
    state: str | None = typer.Option(None, "--state"),
    asset: str | None = typer.Option(None, "--asset", help="Only runs against this asset."),
    limit: int = typer.Option(50, "--limit", min=1, max=500),
) -> None:
    """Runs, newest first."""
    from models.remediation import RunState
    from tasks.remediation import views

    if state is not None and state not in {s.value for s in RunState}:
        raise DrydockError(f"--state {state!r}: one of {', '.join(s.value for s in RunState)}")
    # The run id is what the other commands take: never wrapped.
    table = Table(
        Column("run", no_wrap=True), "tenant", "playbook", "state", "attempts", "requested", "by"
    )
    for view in views.list_run_views(tenant=tenant, state=state, asset=asset, limit=limit):
        table.add_row(
            view["id"],
            view["tenant"],
            f"{view['playbook']} v{view['playbook_version']}",
            view["state"],
            str(view["attempts"]),
            (view["requested_at"] or "")[:19],
            view["requested_by"],
        )
    out.print(table)


@remediation_app.command("show")
def show(
    run: str = typer.Argument(..., metavar="RUN"),
    tenant: str | None = typer.Option(None, "--tenant", help=TENANT_HELP),
    as_json: bool = typer.Option(False, "--json", help="Print as JSON."),
) -> None:
    """A run: its state, trust context, every decision, and each step's artifacts."""
    from tasks.remediation import views

    view = views.describe_run(_run_id(run), tenant=tenant)
    if as_json:
        print_json(view)
        return
    asset = view["asset"] or {}
    say(f"run {view['id']} ({view['tenant']})")
    say(f"  playbook   {view['playbook']} v{view['playbook_version']}")
    say(f"  asset      {asset.get('name')} ({asset.get('kind')}), now {asset.get('state')}")
    say(f"  state      {view['state']} after {view['attempts']} attempt(s)")
    say(f"  requested  {view['requested_at']} by {view['requested_by']}: {view['reason'] or '-'}")
    for why in view["approval_reasons"]:
        say(f"  approval   needed: {why}")
    if view["approved_by"]:
        say(f"  approved   {view['approved_at']} by {view['approved_by']}")
    if view["error"]:
        say(f"  error      {view['error']}")
    if view["evidence_nonce"]:
        say(f"  evidence   requested with nonce {view['evidence_nonce']}")
    context = view["trust_context"].get("last_transition") or {}
    if context:
        why = f"{context.get('cause')}: {context.get('detail')}"
        say(f"  trust      {context.get('to')} because {why}")
    say("decisions:")
    for row in view["audit"]:
        why = f": {row['reason']}" if row["reason"] else ""
        say(f"  {(row['at'] or '')[:19]} {row['action']} by {row['actor']}{why}")
    if view["artifacts"]:
        say("steps:")
    for step in view["artifacts"]:
        status = "ok" if step["ok"] else ("timed out" if step["timed_out"] else "failed")
        code = "" if step["exit_code"] is None else f" exit {step['exit_code']}"
        say(
            f"  [{step['attempt']}.{step['step']}] {step['name']}: {status}{code} "
            f"in {step['duration_ms'] / 1000:.2f}s"
        )
        if step["error"]:
            say(f"      error: {step['error']}")
        for stream in ("stdout", "stderr"):
            if step[stream]:
                say(f"      {stream}:")
                for line in step[stream].splitlines():
                    say(f"        {line}")
        if step["outputs"]:
            say(f"      outputs: {json.dumps(step['outputs'])}")
        if step["truncated"]:
            say("      (output cut to DRYDOCK_REMEDIATION_ARTIFACT_MAX_BYTES)")


# ---- assets and tenants ----------------------------------------------------------------------


@remediation_app.command("protect")
def protect(
    tenant: str = typer.Option(..., "--tenant"),
    asset: str | None = typer.Option(
        None, "--asset", help="One asset; without it, the whole tenant."
    ),
    off: bool = typer.Option(False, "--off", help="Remove the protection."),
    by: str | None = typer.Option(None, "--by", help=BY_HELP),
) -> None:
    """Require an approval for every remediation of an asset, or of a tenant's assets."""
    from tasks.remediation import requests

    what = requests.set_protection(tenant=tenant, asset=asset, protected=not off, actor=acting(by))
    out.print(f"{what}: remediation {'no longer requires' if off else 'requires'} approval")


@remediation_app.command("connect")
def connect(
    asset: str = typer.Argument(..., help="The asset's id or name."),
    tenant: str = typer.Option(..., "--tenant"),
    var: list[str] = typer.Option(
        [],
        "--var",
        help="NAME=VALUE: ansible host vars (ansible_host, ansible_user, ...), kubernetes_node, "
        "libvirt_domain; repeatable. None given: clears them.",
    ),
    by: str | None = typer.Option(None, "--by", help=BY_HELP),
) -> None:
    """Set how playbooks reach an asset. Secrets are refused: they stay with the workers."""
    from tasks.remediation import requests

    connection: dict[str, Any] = {}
    for item in var:
        name, sep, value = item.partition("=")
        if not sep or not name.strip():
            raise DrydockError(f"--var {item!r}: expected NAME=VALUE")
        connection[name.strip()] = value
    requests.set_connection(tenant=tenant, asset=asset, connection=connection, actor=acting(by))
    out.print(f"{tenant}/{asset}: {len(connection)} connection variable(s) set")


@sandbox_app.command("build")
def build_sandbox(
    tag: str | None = typer.Option(
        None, "--tag", help="Default: DRYDOCK_REMEDIATION_SANDBOX_IMAGE."
    ),
    busybox: Path = typer.Option(Path("/bin/busybox"), "--busybox", help="A static busybox."),
) -> None:
    """Build the shell sandbox image on the Docker engine: scratch plus a static busybox."""
    from kernel.settings import get_settings
    from tasks.remediation.executors.sandbox import build_sandbox_image

    image = tag or get_settings().remediation_sandbox_image
    image_id = build_sandbox_image(image, busybox)
    out.print(f"built {image} {image_id}", highlight=False)

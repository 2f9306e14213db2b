"""``drydock servers``, ``drydock releases`` and ``drydock runtime``: MCP servers, their
releases, where they may run, and the instances that run them.

Launches and stops are jobs on the ``runtime`` queue (``runtime.launch``, ``runtime.stop``),
enqueued with admission like any other; ``--wait`` follows the job to its end and prints the
instance as it ended (exit 1 unless it is running, or stopped for a stop).
"""

from __future__ import annotations

import json
import time
import uuid
from typing import Any

import typer
from rich.console import Console

from drydock.cli.text import current_operator
from kernel.errors import DrydockError

servers_app = typer.Typer(help="MCP servers: add, list, show.", no_args_is_help=True)
releases_app = typer.Typer(help="A server's releases: digests at tiers.", no_args_is_help=True)
runtime_app = typer.Typer(
    help="Run servers: targets, launch, stop, instances, show.", no_args_is_help=True
)
targets_app = typer.Typer(help="Where servers may run.", no_args_is_help=True)
runtime_app.add_typer(targets_app, name="targets")

out = Console()
WAIT_SECONDS = 900.0


def say(text: str) -> None:
    out.print(text, markup=False, highlight=False, soft_wrap=True)


def operator_actor(by: str | None) -> str:
    return by or f"operator:{current_operator()}"


@servers_app.command("add")
def add_server(
    name: str = typer.Argument(..., help="The server's name within its tenant."),
    tenant: str = typer.Option(..., "--tenant"),
    repository: str = typer.Option(
        ..., "--repository", help="host[:port]/path its releases are pulled from by digest."
    ),
    probe: str = typer.Option("mcp", "--probe", help="mcp (the initialize call) or http (GET)."),
    probe_path: str = typer.Option("/mcp", "--probe-path", help="Path the probe calls."),
    isolation: str = typer.Option("container", "--isolation", help="container or vm."),
    confidential: bool = typer.Option(False, "--confidential", help="Needs confidential VMs."),
    accelerator: str | None = typer.Option(
        None, "--accelerator", help="Needs an accelerator whose name matches this pattern."
    ),
    by: str | None = typer.Option(None, "--by", help="Who (default: operator:<your user>)."),
) -> None:
    """Add a server."""
    from tasks.runtime import servers

    server = servers.add_server(
        tenant=tenant,
        name=name,
        repository=repository,
        probe_kind=probe,
        probe_path=probe_path,
        isolation=isolation,
        confidential=confidential,
        accelerator=accelerator,
        actor=operator_actor(by),
    )
    say(f"server {tenant}/{name} added ({server['id']})")


@servers_app.command("list")
def list_servers(
    tenant: str | None = typer.Option(None, "--tenant"),
    as_json: bool = typer.Option(False, "--json"),
) -> None:
    from tasks.runtime import servers

    rows = servers.list_servers(tenant=tenant)
    if as_json:
        say(json.dumps(rows, indent=2))
        return
    for row in rows:
        say(f"{row['tenant']}/{row['name']}  {row['repository']}  probe {row['probe']['kind']}")


@servers_app.command("show")
def show_server(
    server: str = typer.Argument(..., help="Id, or name (with --tenant), or tenant/name."),
    tenant: str | None = typer.Option(None, "--tenant"),
    as_json: bool = typer.Option(False, "--json"),
) -> None:
    from tasks.runtime import servers

    detail = servers.describe_server(server, tenant)
    if as_json:
        say(json.dumps(detail, indent=2))
        return
    say(f"{detail['tenant']}/{detail['name']}  {detail['repository']}")
    for release in detail["releases"]:
        say(f"  release {release['digest']} tier {release['tier']} {release['platforms']}")
    for instance in detail["instances"]:
        say("  " + instance_line(instance))


@releases_app.command("add")
def add_release(
    server: str = typer.Argument(...),
    digest: str = typer.Argument(..., help="sha256:... as the artifact ledger has it."),
    tier: str = typer.Option(..., "--tier"),
    tenant: str | None = typer.Option(None, "--tenant"),
    by: str | None = typer.Option(None, "--by"),
) -> None:
    """Release a digest the artifact ledger built, at a tier."""
    from tasks.runtime import servers

    release = servers.add_release(
        tenant=tenant, server=server, digest=digest, tier=tier, actor=operator_actor(by)
    )
    say(f"release {release['id']}: {digest} at {tier}, platforms {', '.join(release['platforms'])}")


@targets_app.command("add")
def add_target(
    name: str = typer.Argument(...),
    backend: str = typer.Option(..., "--backend", help="docker, kubernetes or libvirt."),
    asset: str = typer.Option(..., "--asset", help="The trust asset it runs on (tenant/name)."),
    platform: list[str] = typer.Option(..., "--platform", help="os/arch; repeat for more."),
    isolation: str = typer.Option("container", "--isolation"),
    confidential: bool = typer.Option(False, "--confidential"),
    accelerator: list[str] = typer.Option([], "--accelerator", help="Accelerator asset names."),
    priority: int = typer.Option(100, "--priority", help="Lower is tried first."),
    docker_host: str | None = typer.Option(None, "--docker-host", help="Its Docker engine."),
    namespace: str | None = typer.Option(None, "--namespace", help="Kubernetes: its namespace."),
    kubeconfig: str | None = typer.Option(
        None, "--kubeconfig", help="Kubernetes: its kubeconfig file (else DRYDOCK_KUBECONFIG)."
    ),
    libvirt_uri: str | None = typer.Option(
        None, "--libvirt-uri", help="libvirt: its connection URI (else DRYDOCK_LIBVIRT_URI)."
    ),
    vm_class: str | None = typer.Option(
        None, "--vm-class", help="libvirt: the trust class its VMs' evidence is judged by."
    ),
    disabled: bool = typer.Option(False, "--disabled"),
    by: str | None = typer.Option(None, "--by"),
) -> None:
    """Add or replace a runtime target."""
    from tasks.runtime import servers

    servers.put_target(
        name=name,
        backend=backend,
        asset=asset,
        platforms=platform,
        isolation=isolation,
        confidential=confidential,
        accelerators=accelerator,
        priority=priority,
        connection={
            key: value
            for key, value in (
                ("docker_host", docker_host),
                ("namespace", namespace),
                ("kubeconfig", kubeconfig),
                ("libvirt_uri", libvirt_uri),
                ("asset_class", vm_class),
            )
            if value
        },
        enabled=not disabled,
        actor=operator_actor(by),
    )
    say(f"target {name} ({backend}) saved")


@targets_app.command("list")
def list_targets(as_json: bool = typer.Option(False, "--json")) -> None:
    from tasks.runtime import servers

    rows = servers.list_targets()
    if as_json:
        say(json.dumps(rows, indent=2))
        return
    for row in rows:
        enabled = "" if row["enabled"] else "  (disabled)"
        say(
            f"{row['name']}  {row['backend']}  {', '.join(row['platforms'])}  "
            f"isolation {row['isolation']}  priority {row['priority']}{enabled}"
        )


@runtime_app.command("launch")
def launch(
    server: str = typer.Argument(...),
    digest: str = typer.Argument(...),
    tenant: str = typer.Option(..., "--tenant"),
    tier: str | None = typer.Option(None, "--tier", help="Default: the release's newest tier."),
    target: str | None = typer.Option(None, "--target", help="Only this target."),
    reason: str = typer.Option("", "--reason"),
    wait: bool = typer.Option(False, "--wait", help="Wait for the launch to end."),
) -> None:
    """Launch a release where policy allows (a runtime.launch job)."""
    from dispatch.enqueue import enqueue

    payload = {"tenant": tenant, "server": server, "digest": digest, "reason": reason}
    payload |= {k: v for k, v in (("tier", tier), ("target", target)) if v is not None}
    job = enqueue("runtime.launch", payload, enqueued_by="cli", tenant=tenant)
    say(f"launch job {job.id} enqueued")
    if wait:
        result = wait_for_result(job.id)
        say(instance_line(result))
        if result.get("state") != "running":
            raise typer.Exit(1)


@runtime_app.command("stop")
def stop(
    instance: str = typer.Argument(..., help="The instance's id."),
    reason: str = typer.Option("", "--reason"),
    wait: bool = typer.Option(False, "--wait"),
) -> None:
    """Drain and stop an instance (a runtime.stop job)."""
    from dispatch.enqueue import enqueue

    job = enqueue(
        "runtime.stop",
        {"instance_id": str(_instance_id(instance)), "reason": reason},
        enqueued_by="cli",
    )
    say(f"stop job {job.id} enqueued")
    if wait:
        result = wait_for_result(job.id)
        say(instance_line(result))
        if result.get("state") != "stopped":
            raise typer.Exit(1)


@runtime_app.command("instances")
def instances(
    server: str | None = typer.Option(None, "--server"),
    tenant: str | None = typer.Option(None, "--tenant"),
    as_json: bool = typer.Option(False, "--json"),
) -> None:
    from tasks.runtime import servers

    rows = servers.list_instances(tenant=tenant, server=server)
    if as_json:
        say(json.dumps(rows, indent=2))
        return
    for row in rows:
        say(instance_line(row))


@runtime_app.command("show")
def show_instance(
    instance: str = typer.Argument(...),
    tenant: str | None = typer.Option(None, "--tenant"),
    as_json: bool = typer.Option(False, "--json"),
) -> None:
    """An instance with its history, move by move."""
    from tasks.runtime import servers

    detail = servers.instance_detail(_instance_id(instance), tenant)
    if as_json:
        say(json.dumps(detail, indent=2))
        return
    say(instance_line(detail))
    for move in detail["history"]:
        moved = f"{move['from_state'] or '(new)'} -> {move['to_state']}"
        why = f"{move['cause']}: {move['detail']}" if move["detail"] else move["cause"]
        say(f"  {move['at'][:19]}Z {moved} ({why}) by {move['actor']}")


@runtime_app.command("vm")
def vm(
    server: str = typer.Argument(..., help="The server: its id, or its name."),
    tenant: str | None = typer.Option(None, "--tenant"),
    as_json: bool = typer.Option(False, "--json"),
) -> None:
    """The server's VMs and their attestation posture (newest first)."""
    from tasks.runtime.vm_posture import vm_posture

    posture = vm_posture(server, tenant)
    if as_json:
        say(json.dumps(posture, indent=2))
        return
    if not posture["vms"]:
        say(f"server {posture['server']} has no VM instances")
    for row in posture["vms"]:
        where = f"on {row['target']}: domain {row['domain']}"
        say(f"instance {row['instance_id']} {row['state']} {where}")
        for role in ("host", "vm"):
            asset = row[role]
            if asset is None:
                say(f"  {role}: not registered")
                continue
            verified = asset["last_verified_at"] or "never"
            expires = asset["evidence_expires_at"] or "-"
            times = f"verified {verified}, expires {expires}"
            say(f"  {role} {asset['name']}: {asset['state']} ({times})")
        verdict = row["last_verdict"]
        if verdict is None:
            say(f"  evidence: none yet (its agent must quote nonce {row['evidence_nonce']})")
        else:
            outcome = "verified" if verdict["verified"] else "failed"
            asked = "" if verdict["answers_request"] else " (not this instance's nonce)"
            say(f"  evidence: {verdict['kind']} {outcome}{asked}: {verdict['summary']}")
        if row["reason"]:
            say(f"  {row['reason']}")


def catalog(
    tenant: str | None = typer.Option(None, "--tenant"),
    tier: str | None = typer.Option(None, "--tier", help="Only servers released at this tier."),
    health: str | None = typer.Option(
        None, "--health", help="healthy, degraded, down or none (never launched)."
    ),
    after: str | None = typer.Option(None, "--after", help="tenant/name: the page after it."),
    limit: int = typer.Option(50, "--limit", min=1, max=200),
    as_json: bool = typer.Option(False, "--json"),
) -> None:
    """The live catalog: servers with their release per tier, certification, instance health,
    host trust and anomaly scores."""
    from tasks.runtime.server_catalog import Health, catalog_page

    try:
        wanted = Health(health) if health else None
    except ValueError:
        choices = ", ".join(h.value for h in Health)
        raise DrydockError(f"--health {health!r}: one of {choices}") from None
    page = catalog_page(tenant=tenant, tier=tier, health=wanted, after=after, limit=limit)
    if as_json:
        say(json.dumps(page, indent=2))
        return
    for item in page["items"]:
        say(f"{item['tenant']}/{item['name']} {item['health']} ({item['repository']})")
        for tier_name, release in item["tiers"].items():
            cert = release["certification"]
            certified = (
                f"{cert['status']} until {cert['expires_at'] or '-'}" if cert else "uncertified"
            )
            instance = release["instance"]
            running = (
                f"instance {instance['state']} on {instance['target']} "
                f"(host {instance['host_trust'] or '-'})"
                if instance
                else "no instance"
            )
            flagged = [s["metric"] for s in release["anomaly_scores"] if s["flagged"]]
            anomalies = f"; flagged: {', '.join(flagged)}" if flagged else ""
            say(f"  {tier_name}: {release['digest'][:19]}… {certified}; {running}{anomalies}")
    if page["next_after"]:
        say(f"more: --after {page['next_after']}")


def instance_line(row: dict[str, Any]) -> str:
    ident = row.get("id") or row.get("instance_id")
    where = f" on {row['target']}" if row.get("target") else ""
    at = f" at {row['endpoint']}" if row.get("endpoint") else ""
    why = f" ({row['reason']})" if row.get("reason") else ""
    return f"instance {ident} {row.get('state')}{where}{at}{why}"


def _instance_id(text: str) -> uuid.UUID:
    try:
        return uuid.UUID(text)
    except ValueError:
        raise DrydockError(f"{text!r} is not an instance id") from None


def wait_for_result(job_id: uuid.UUID) -> dict[str, Any]:
    from models.db import session_scope
    from models.jobs import Job

    deadline = time.monotonic() + WAIT_SECONDS
    while time.monotonic() < deadline:
        with session_scope() as session:
            job = session.get(Job, job_id)
            if job is not None and job.status == "succeeded":
                return dict(job.result or {})
            if job is not None and job.status in ("dead_lettered", "preempted"):
                raise DrydockError(f"job {job_id} {job.status}: {job.error}")
        time.sleep(0.5)
    raise DrydockError(f"job {job_id} did not end within {WAIT_SECONDS:g}s")

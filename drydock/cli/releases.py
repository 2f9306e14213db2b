"""``drydock releases promote | approve | rollout | history | rules``: how a server's releases
move from tier to tier (the ``add`` command is in ``drydock.cli.runtime``).

``promote`` prints each checkpoint with ✓ or ✗ and its reason and exits 1 when refused (the
refusal is recorded either way); ``rollout`` enqueues a ``runtime.rollout`` job and, with
``--wait``, prints how it ended (exit 1 unless it succeeded).
"""

from __future__ import annotations

import json
from typing import Any

import typer

from drydock.cli.runtime import operator_actor, releases_app, say, wait_for_result

rules_app = typer.Typer(help="Each tier's promotion rules.", no_args_is_help=True)
releases_app.add_typer(rules_app, name="rules")


@releases_app.command("promote")
def promote(
    server: str = typer.Argument(..., help="Id, or name (with --tenant), or tenant/name."),
    digest: str = typer.Argument(..., help="A digest already released at some tier."),
    to: str = typer.Option(..., "--to", help="The tier promoted to."),
    tenant: str | None = typer.Option(None, "--tenant"),
    approval_token: str | None = typer.Option(
        None, "--approval-token", help="For a protected tier (`drydock releases approve`)."
    ),
    reason: str = typer.Option("", "--reason"),
    by: str | None = typer.Option(None, "--by"),
    as_json: bool = typer.Option(False, "--json"),
) -> None:
    """Promote a digest to a tier through its checkpoints (exit 1 when refused)."""
    from tasks.runtime import promotions

    result = promotions.promote(
        tenant=tenant,
        server=server,
        digest=digest,
        tier=to,
        actor=operator_actor(by),
        approval_token=approval_token,
        reason=reason,
    )
    if as_json:
        say(json.dumps(result, indent=2))
    else:
        say(f"promotion {result['id']} of {digest} to {to}: {result['outcome']}")
        for checkpoint in result["checkpoints"]:
            mark = "✓" if checkpoint["passed"] else "✗"
            say(f"  {mark} {checkpoint['gate']}: {checkpoint['reason']}")
        if result["release"] is not None:
            say(f"release {result['release']['id']} at {to}")
    if result["outcome"] != "promoted":
        raise typer.Exit(1)


@releases_app.command("approve")
def approve(
    server: str = typer.Argument(...),
    digest: str = typer.Argument(...),
    to: str = typer.Option(..., "--to", help="The protected tier."),
    tenant: str | None = typer.Option(None, "--tenant"),
    by: str | None = typer.Option(None, "--by"),
) -> None:
    """Print an approval token for promoting this digest to this tier (pass it to promote)."""
    from tasks.runtime import promotions

    issued = promotions.approve(
        tenant=tenant, server=server, digest=digest, tier=to, approver=operator_actor(by)
    )
    typer.echo(issued.token)
    typer.echo(f"approved by {issued.approver} until {issued.expires_at.isoformat()}", err=True)


@releases_app.command("rollout")
def rollout(
    server: str = typer.Argument(...),
    digest: str = typer.Argument(...),
    tier: str = typer.Option(..., "--tier"),
    tenant: str = typer.Option(..., "--tenant"),
    analysis_seconds: float | None = typer.Option(
        None, "--analysis-seconds", help="Default: the tier's rule."
    ),
    reason: str = typer.Option("", "--reason"),
    wait: bool = typer.Option(False, "--wait", help="Wait for the rollout to end."),
) -> None:
    """Roll a release out at its tier beside what serves it (a runtime.rollout job)."""
    from dispatch.enqueue import enqueue

    payload: dict[str, Any] = {
        "tenant": tenant,
        "server": server,
        "digest": digest,
        "tier": tier,
        "reason": reason,
    }
    if analysis_seconds is not None:
        payload["analysis_seconds"] = analysis_seconds
    job = enqueue("runtime.rollout", payload, enqueued_by="cli", tenant=tenant)
    say(f"rollout job {job.id} enqueued")
    if wait:
        result = wait_for_result(job.id)
        came_from = f" from {result['from_digest']}" if result.get("from_digest") else ""
        say(f"rollout {result['rollout_id']} of {result['digest']}{came_from}: {result['state']}")
        if result.get("state") != "succeeded":
            raise typer.Exit(1)


@releases_app.command("history")
def history(
    server: str = typer.Argument(...),
    tenant: str | None = typer.Option(None, "--tenant"),
    kind: str | None = typer.Option(None, "--kind", help="promotion, rollout or rollback."),
    before: int | None = typer.Option(None, "--before", help="For the next page."),
    limit: int = typer.Option(50, "--limit", min=1, max=200),
    as_json: bool = typer.Option(False, "--json"),
) -> None:
    """A server's promotions, rollouts and rollbacks, newest first."""
    from models.runtime_releases import ChangeKind
    from tasks.runtime import promotions
    from tasks.runtime.servers import RuntimeInputError

    try:
        wanted = ChangeKind(kind) if kind is not None else None
    except ValueError:
        kinds = ", ".join(k.value for k in ChangeKind)
        raise RuntimeInputError([f"kind {kind!r}: one of {kinds}"]) from None
    page = promotions.history_of(
        tenant=tenant, server=server, kind=wanted, before=before, limit=limit
    )
    if as_json:
        say(json.dumps(page, indent=2))
        return
    for change in page["items"]:
        came_from = f" (from {change['from_digest']})" if change["from_digest"] else ""
        say(
            f"{change['id']}  {change['at']}  {change['kind']} {change['outcome']}  "
            f"{change['digest']} at {change['tier']}{came_from}  by {change['actor']}"
        )
        for checkpoint in change["checkpoints"]:
            mark = "✓" if checkpoint["passed"] else "✗"
            say(f"    {mark} {checkpoint['gate']}: {checkpoint['reason']}")
        if change["detail"]:
            say(f"    {change['detail']}")
    if page["next_before"]:
        say(f"more: --before {page['next_before']}")


@rules_app.command("put")
def put_rules(
    tier: str = typer.Argument(...),
    anomaly_threshold: float = typer.Option(..., "--anomaly-threshold"),
    protected: bool = typer.Option(False, "--protected/--unprotected"),
    analysis_seconds: float = typer.Option(..., "--analysis-seconds"),
    by: str | None = typer.Option(None, "--by"),
) -> None:
    """Set a tier's promotion rules."""
    from tasks.runtime import promotions

    rules = promotions.put_rules(
        tier,
        anomaly_threshold=anomaly_threshold,
        protected=protected,
        analysis_seconds=analysis_seconds,
        actor=operator_actor(by),
    )
    say(_rules_line(rules))


@rules_app.command("list")
def list_rules(as_json: bool = typer.Option(False, "--json")) -> None:
    from tasks.runtime import promotions

    rows = promotions.list_rules()
    if as_json:
        say(json.dumps(rows, indent=2))
        return
    for rules in rows:
        say(_rules_line(rules))


def _rules_line(rules: dict[str, Any]) -> str:
    guard = "protected" if rules["protected"] else "unprotected"
    return (
        f"tier {rules['tier']}: anomaly threshold {rules['anomaly_threshold']:g}, {guard}, "
        f"analysis {rules['analysis_seconds']:g}s"
    )

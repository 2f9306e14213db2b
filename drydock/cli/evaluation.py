"""``drydock evaluation``, ``drydock policy`` and ``drydock admission``: tiers and
certifications, placement decisions and tenant rules, approvals for protected targets.

Operators act as ``operator:<user>`` unless ``--by`` says who.
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

from drydock.cli.text import current_operator, parse_duration, when
from kernel.errors import DrydockError

evaluation_app = typer.Typer(
    help="Evaluation tiers and certifications of image digests.", no_args_is_help=True
)
tiers_app = typer.Typer(help="Evaluation tiers: their suites and validity.", no_args_is_help=True)
evaluation_app.add_typer(tiers_app, name="tiers")
policy_app = typer.Typer(
    help="Placement decisions, tenant rules, and a live view of decisions and trust.",
    no_args_is_help=True,
)
admission_app = typer.Typer(
    help="Approval tokens for jobs on protected assets.", no_args_is_help=True
)

out = Console()
err = Console(stderr=True)

BY_HELP = "Who is acting, for the record (default: operator:<your user>)."


def _by(by: str | None) -> str:
    return by or f"operator:{current_operator()}"


def say(text: str) -> None:
    out.print(text, markup=False, highlight=False, soft_wrap=True)


def _print_json(document: Any) -> None:
    sys.stdout.write(json.dumps(document, indent=2, default=str) + "\n")


def _split_image(image: str) -> tuple[str, str, str]:
    """``registry/repo@sha256:...`` -> (registry, repository, digest)."""
    name, at, digest = image.partition("@")
    registry, slash, repository = name.partition("/")
    if not at or not slash or not repository:
        raise DrydockError(
            f"{image!r} is not an image by digest like registry:5000/team/app@sha256:<64 hex>"
        )
    return registry, repository, digest


# ---- tiers ---------------------------------------------------------------------------------------


@tiers_app.command("put")
def tiers_put(
    name: str = typer.Argument(..., help="The tier's name, e.g. standard."),
    suite_file: Path = typer.Option(
        ..., "--suite", help="JSON file: the suite (command, files, results, timeout_seconds)."
    ),
    validity: str = typer.Option("7d", "--validity", help="How long a pass certifies: 7d."),
    window: str = typer.Option(
        "1d", "--refresh-window", help="How long before expiry Beat refreshes it: 1d."
    ),
    description: str = typer.Option("", "--description"),
    by: str | None = typer.Option(None, "--by", help=BY_HELP),
) -> None:
    """Create or replace a tier. The suite is checked before it is stored."""
    from catalog.evaluation import checked_tier
    from models import evaluation
    from models.db import session_scope
    from tasks.evaluation.suite_spec import parse_suite_spec

    try:
        checked_tier(name)
    except ValueError as exc:
        raise DrydockError(f"tier {name!r}: {exc}") from None
    try:
        raw = json.loads(suite_file.read_text())
    except (OSError, json.JSONDecodeError) as exc:
        raise DrydockError(f"--suite {suite_file}: {exc}") from None
    suite = parse_suite_spec(raw)
    _check_fits_queue(suite.timeout_seconds)
    with session_scope() as session:
        evaluation.put_tier(
            session,
            name=name,
            suite=suite.model_dump(mode="json"),
            validity_seconds=int(parse_duration(validity).total_seconds()),
            refresh_window_seconds=int(parse_duration(window).total_seconds()),
            description=description,
            by=_by(by),
        )
    say(f"tier {name} stored")


def _check_fits_queue(timeout_seconds: int) -> None:
    from kernel.settings import get_settings

    longest = get_settings().work_budget_seconds("evaluation")
    if timeout_seconds > longest:
        raise DrydockError(
            f"the suite's timeout_seconds ({timeout_seconds}) must fit under the evaluation "
            f"queue's time limit: at most {longest}s"
        )


@tiers_app.command("list")
def tiers_list() -> None:
    """Every tier."""
    from models import evaluation
    from models.db import session_scope

    table = Table("tier", "validity", "refresh window", "suite timeout", "results", "description")
    with session_scope() as session:
        for tier in evaluation.list_tiers(session):
            table.add_row(
                tier.name,
                f"{tier.validity_seconds}s",
                f"{tier.refresh_window_seconds}s",
                f"{tier.suite.get('timeout_seconds')}s",
                str(tier.suite.get("results", "jsonl")),
                tier.description,
            )
    out.print(table)


# ---- certifications ------------------------------------------------------------------------------


@evaluation_app.command("certify")
def certify(
    image: str = typer.Argument(..., help="registry/repository@sha256:... to evaluate."),
    tier: str = typer.Option(..., "--tier", help="The tier whose suite runs."),
    target: str | None = typer.Option(
        None, "--target", help="Bind the job to the evaluation host's asset (id or tenant/name)."
    ),
) -> None:
    """Enqueue an evaluation now (the first, or an early refresh)."""
    from dispatch.enqueue import enqueue

    registry, repository, digest = _split_image(image)
    job = enqueue(
        "evaluation.refresh_certification",
        {"digest": digest, "tier": tier, "registry": registry, "repository": repository},
        enqueued_by=f"cli:{current_operator()}",
        target_asset=target,
    )
    say(f"{job.id} evaluation.refresh_certification on {job.queue} {job.status}")


@evaluation_app.command("list")
def certifications_list(
    digest: str | None = typer.Option(None, "--digest"),
    tier: str | None = typer.Option(None, "--tier"),
    status: str | None = typer.Option(None, "--status"),
    limit: int = typer.Option(50, min=1, max=1000),
) -> None:
    """Evaluations, newest first."""
    from models import evaluation
    from models.db import session_scope

    table = Table(
        "digest", "tier", "status", "evaluated", "expires", "summary", Column("id", no_wrap=True)
    )
    with session_scope() as session:
        for cert in evaluation.list_certifications(
            session, digest=digest, tier=tier, status=status, limit=limit
        ):
            table.add_row(
                cert.digest[:19] + "…",
                cert.tier,
                cert.status,
                when(cert.evaluated_at),
                when(cert.expires_at),
                cert.summary[:60],
                str(cert.id),
            )
    out.print(table)


@evaluation_app.command("show")
def certification_show(
    cert_id: str = typer.Argument(..., help="A certification id."),
    as_json: bool = typer.Option(False, "--json"),
) -> None:
    """One evaluation: per-check evidence, and the lineage of certifications it continues."""
    from models import evaluation
    from models.db import session_scope

    with session_scope() as session:
        chain = evaluation.lineage(session, _uuid(cert_id))
        documents: list[dict[str, Any]] = [
            {
                "id": str(c.id),
                "digest": c.digest,
                "tier": c.tier,
                "image": f"{c.host}/{c.repository}@{c.digest}",
                "status": c.status,
                "summary": c.summary,
                "evaluated_at": when(c.evaluated_at),
                "issued_at": when(c.issued_at),
                "expires_at": when(c.expires_at),
                "refresh_at": when(c.refresh_at),
                "reason": c.reason,
                "job_id": str(c.job_id) if c.job_id else None,
                "evidence": c.evidence,
            }
            for c in chain
        ]
    if as_json:
        _print_json({**documents[0], "lineage": documents})
        return
    head = documents[0]
    for key in ("id", "image", "status", "summary", "evaluated_at", "issued_at", "expires_at"):
        say(f"{key}: {head[key]}")
    if head["reason"]:
        say(f"reason: {head['reason']}")
    checks = Table("check", "status", "message")
    for check in head["evidence"]:
        checks.add_row(check.get("name", ""), check.get("status", ""), check.get("message", ""))
    out.print(checks)
    say("lineage (newest first):")
    for doc in documents:
        say(f"  {doc['evaluated_at']} {doc['status']:<10} {doc['id']} {doc['summary'][:60]}")


@evaluation_app.command("revoke")
def certification_revoke(
    cert_id: str = typer.Argument(..., help="An active certification's id."),
    reason: str = typer.Option(..., "--reason", help="Why: kept on the certification."),
    by: str | None = typer.Option(None, "--by", help=BY_HELP),
) -> None:
    """Revoke an active certification: placements needing it are denied from now on."""
    from datetime import UTC, datetime

    from models import evaluation
    from models.db import session_scope

    with session_scope() as session:
        evaluation.revoke(
            session, _uuid(cert_id), reason=f"{reason} ({_by(by)})", at=datetime.now(UTC)
        )
    say(f"certification {cert_id} revoked")


def _uuid(text: str) -> uuid.UUID:
    try:
        return uuid.UUID(text)
    except ValueError:
        raise DrydockError(f"{text!r} is not an id (a UUID)") from None


# ---- policy --------------------------------------------------------------------------------------


@policy_app.command("decide")
def policy_decide(
    digest: str = typer.Option(..., "--digest", help="The image digest to place."),
    tier: str = typer.Option(..., "--tier"),
    asset: str = typer.Option(..., "--asset", help="Target asset: id or tenant/name."),
    tenant: str = typer.Option(..., "--tenant", help="The tenant placing it."),
    accelerators: list[str] = typer.Option(
        None, "--accelerator", help="Accelerator assets the workload uses (repeatable)."
    ),
    as_json: bool = typer.Option(False, "--json"),
    by: str | None = typer.Option(None, "--by", help=BY_HELP),
) -> None:
    """Decide a placement, record it, print every gate. Exit code 0 allowed, 3 denied."""
    from models import policy as policy_store
    from models.db import session_scope
    from policy import placement

    request = policy_store.PlacementRequest(
        digest=digest,
        tier=tier,
        asset=asset,
        tenant=tenant,
        accelerators=tuple(accelerators or ()),
    )
    with session_scope() as session:
        row = placement.decide_placement(session, request, actor=_by(by))
        document = policy_store.decision_json(row)
    if as_json:
        _print_json(document)
    else:
        say(f"decision {document['id']}: {'ALLOW' if document['allowed'] else 'DENY'}")
        for gate in document["gates"]:
            mark = "pass" if gate["passed"] else "FAIL"
            say(f"  {mark:<4} {gate['gate']:<22} {gate['reason']}")
    if not document["allowed"]:
        raise typer.Exit(DENIED_EXIT)


# `drydock policy decide` exits with this when the placement is denied.
DENIED_EXIT = 3


@policy_app.command("decisions")
def policy_decisions(
    tenant: str | None = typer.Option(None, "--tenant"),
    kind: str | None = typer.Option(None, "--kind", help="placement, admission, ..."),
    limit: int = typer.Option(50, min=1, max=1000),
) -> None:
    """Recorded decisions, newest first."""
    from models import policy as policy_store
    from models.db import session_scope

    table = Table("id", "when", "kind", "tenant", "outcome", Column("summary", overflow="fold"))
    with session_scope() as session:
        for row in policy_store.list_decisions(session, tenant=tenant, kind=kind, limit=limit):
            table.add_row(
                str(row.id),
                when(row.decided_at),
                row.kind,
                row.tenant or "",
                "allow" if row.allowed else "deny",
                row.summary,
            )
    out.print(table)


@policy_app.command("watch")
def policy_watch(
    tenant: str | None = typer.Option(None, "--tenant", help="Only this tenant's."),
    as_json: bool = typer.Option(False, "--json", help="One JSON object per line."),
) -> None:
    """Stream decisions, trust transitions and workflow run events (step, commit, push) as
    they commit, until interrupted."""
    from models import policy as policy_store
    from models.trust import TransitionRecord

    def ready() -> None:
        scope = f" of tenant {tenant}" if tenant else ""
        err.print(f"watching decisions and transitions{scope} (Ctrl-C stops)", highlight=False)

    try:
        for item in policy_store.watch(tenant=tenant, on_ready=ready):
            if as_json:
                line = json.dumps({"type": item.kind, **item.data}, separators=(",", ":"))
            elif item.kind == "transition":
                line = "transition " + TransitionRecord.from_message(json.dumps(item.data)).line()
            elif item.kind == "workflow":
                from drydock.cli.workflow_runs import event_line

                line = f"workflow run {item.data['run_id']} " + event_line(item.data)
            else:
                data = item.data
                failing = [g for g in data["gates"] if not g["passed"]]
                why = "; ".join(f"{g['gate']}: {g['reason']}" for g in failing)
                outcome = "ALLOW" if data["allowed"] else f"DENY ({why})"
                job = f" job {data['job_id']}" if data.get("job_id") else ""
                line = (
                    f"decision {data['decided_at'][:19]}Z #{data['id']} {data['kind']} "
                    f"{data.get('tenant') or '-'} {outcome} by {data['actor']}{job}"
                )
            sys.stdout.write(line + "\n")
            sys.stdout.flush()
    except KeyboardInterrupt:
        raise typer.Exit(0) from None


@policy_app.command("rules")
def policy_rules(
    tenant: str = typer.Argument(..., help="The tenant."),
    tasks: str | None = typer.Option(
        None, "--tasks", help="Comma-separated task patterns it may enqueue ('any': no limit)."
    ),
    tiers: str | None = typer.Option(
        None, "--tiers", help="Comma-separated tiers it may place at ('any': no limit)."
    ),
    by: str | None = typer.Option(None, "--by", help=BY_HELP),
) -> None:
    """Show, or with --tasks/--tiers set, a tenant's admission and placement rules."""
    from models import policy as policy_store
    from models.db import session_scope

    with session_scope() as session:
        current = policy_store.tenant_rules(session, tenant)
        if tasks is not None or tiers is not None:
            new_tasks = _list_or_any(tasks) if tasks is not None else current.allowed_tasks
            new_tiers = _list_or_any(tiers) if tiers is not None else current.allowed_tiers
            policy_store.set_tenant_rules(
                session, tenant, allowed_tasks=new_tasks, allowed_tiers=new_tiers, by=_by(by)
            )
            current = policy_store.tenant_rules(session, tenant)
    listed_tasks = ", ".join(current.allowed_tasks) if current.allowed_tasks is not None else "any"
    listed_tiers = ", ".join(current.allowed_tiers) if current.allowed_tiers is not None else "any"
    say(f"tenant {tenant}: tasks {listed_tasks or '(none)'}; tiers {listed_tiers or '(none)'}")


def _list_or_any(text: str) -> tuple[str, ...] | None:
    if text.strip().lower() == "any":
        return None
    return tuple(part.strip() for part in text.split(",") if part.strip())


# ---- admission -----------------------------------------------------------------------------------


@admission_app.command("approve")
def admission_approve(
    asset: str = typer.Option(..., "--asset", help="The protected asset: id or tenant/name."),
    task: str = typer.Option(..., "--task", help="Task name or pattern approved, e.g. builds.*"),
    ttl: str = typer.Option("1h", "--ttl", help="How long the token is valid: 1h."),
    by: str | None = typer.Option(None, "--by", help=BY_HELP),
) -> None:
    """Print an approval token for enqueueing matching tasks on a protected asset."""
    from models import trust
    from models.db import session_scope
    from policy.admission import issue_token

    with session_scope() as session:
        found = trust.find_asset(session, asset)
        asset_id, tenant = found.id, found.tenant
    token = issue_token(
        asset_id=asset_id,
        task_pattern=task,
        tenant=tenant,
        approver=_by(by),
        ttl_seconds=int(parse_duration(ttl).total_seconds()),
    )
    # The token alone on stdout (for a pipe); its id, to revoke it by, on stderr.
    sys.stderr.write(f"token {token.id}, valid until {token.expires_at:%Y-%m-%d %H:%M:%S} UTC\n")
    sys.stdout.write(token.token + "\n")


@admission_app.command("revoke")
def admission_revoke(
    token_id: str = typer.Argument(..., help="The token's id (printed when it was issued)."),
    by: str | None = typer.Option(None, "--by", help=BY_HELP),
) -> None:
    """Revoke an approval token: from now on it admits nothing."""
    from models import admission_tokens
    from models.db import session_scope

    with session_scope() as session:
        row = admission_tokens.revoke(session, token_id.strip(), by=_by(by))
        revoked_by, revoked_at = row.revoked_by, row.revoked_at
    sys.stdout.write(
        f"revoked {token_id.strip()} (by {revoked_by} at {revoked_at:%Y-%m-%d %H:%M:%S})\n"
    )

"""``drydock registry``, ``drydock retention`` and ``drydock builds``: the operator's side of the
builds and pushes queues (registry credentials, retention policies, the artifact ledger)."""

from __future__ import annotations

import json
import re
import shlex
import sys
import uuid
from datetime import datetime
from pathlib import Path

import typer
from rich.console import Console
from rich.table import Table

from drydock.cli.text import current_operator, when
from kernel.errors import DrydockError

registry_app = typer.Typer(
    help=(
        "Registry credentials: static, an htpasswd file Drydock manages, or a credential helper; "
        "their rotation and Kubernetes image-pull secrets."
    ),
    no_args_is_help=True,
)
retention_app = typer.Typer(
    help="Retention policies per registry repository (used by pushes.prune_tags).",
    no_args_is_help=True,
)
builds_app = typer.Typer(help="The artifact ledger: build runs, platforms, digests, logs.")

out = Console()
err = Console(stderr=True)


class BuildsCliError(DrydockError):
    pass


# ---- registry credentials ----------------------------------------------------------------------


@registry_app.command("login")
def registry_login(
    registry: str = typer.Argument(..., help="Registry host[:port]."),
    username: str = typer.Option(..., "--username", "-u"),
    password_stdin: bool = typer.Option(
        False,
        "--password-stdin",
        help="Read the password from standard input (otherwise you are prompted for it).",
    ),
) -> None:
    """Store static credentials for a registry (encrypted with DRYDOCK_SECRET_KEY)."""
    from models import credentials
    from models.db import session_scope

    if password_stdin:
        password = sys.stdin.readline().rstrip("\r\n")
    else:
        password = typer.prompt("password", hide_input=True)
    with session_scope() as session:
        credentials.store_static(session, registry, username, password)
    out.print(f"stored static credentials of {username!r} for {registry}")


@registry_app.command("htpasswd")
def registry_htpasswd(
    registry: str = typer.Argument(..., help="Registry host[:port]."),
    file: Path = typer.Option(..., "--file", help="The htpasswd file the registry reads."),
    username: str = typer.Option(..., "--username", "-u"),
) -> None:
    """Let Drydock manage USERNAME in a local registry's htpasswd file: it sets a random password
    now, and a fresh one whenever the registry refuses it."""
    from adapters import credentials
    from models.db import session_scope

    with session_scope() as session:
        credentials.store_htpasswd(session, registry, username, file)
    out.print(f"{registry}: {username!r} managed in {file.absolute()} (password set)")


@registry_app.command("helper")
def registry_helper(
    registry: str = typer.Argument(..., help="Registry host[:port]."),
    command: str = typer.Argument(
        ..., help="The helper's command line, e.g. 'docker-credential-pass get'."
    ),
) -> None:
    """Get a registry's credentials from a Docker credential helper (asked again on refusal)."""
    from models import credentials
    from models.db import session_scope

    with session_scope() as session:
        credentials.store_command(session, registry, shlex.split(command))
    out.print(f"{registry}: credentials from `{command}`")


@registry_app.command("list")
def registry_list() -> None:
    """Registries with credentials: provider, user, when changed, rotation (never a password)."""
    from models import credentials
    from models.db import session_scope

    table = Table(
        "registry",
        "provider",
        "user",
        "config",
        "updated",
        "refreshed",
        "refreshes",
        "rotate every",
        "expires",
        "pull secret",
        "probed",
    )
    with session_scope() as session:
        for row in credentials.summaries(session):
            config = " ".join(f"{k}={v}" for k, v in row.config.items())
            table.add_row(
                row.host,
                row.provider,
                row.username or "",
                config,
                when(row.updated_at),
                when(row.refreshed_at),
                str(row.refresh_count),
                _duration_text(row.rotate_after_seconds),
                when(row.expires_at),
                str(row.pull_secret or ""),
                _probe_text(row.probed_at, row.probe_accepted),
            )
    out.print(table)


@registry_app.command("rotation")
def registry_rotation(
    registry: str = typer.Argument(..., help="Registry host[:port]."),
    every: str | None = typer.Option(
        None, "--every", help="Rotate once the password is this old: 90m, 12h, 30d."
    ),
    never: bool = typer.Option(
        False, "--never", help="Rotate only when refused or expiring, never for age."
    ),
    pull_secret: str | None = typer.Option(
        None,
        "--pull-secret",
        metavar="NAMESPACE/NAME",
        help="Keep this Kubernetes image-pull Secret (dockerconfigjson) holding the credential.",
    ),
    no_pull_secret: bool = typer.Option(
        False, "--no-pull-secret", help="Stop keeping a pull secret (it is left as it is)."
    ),
) -> None:
    """Show or set a credential's rotation policy and pull secret (options left out stay)."""
    from models import credentials
    from models.db import session_scope

    if every is not None and never:
        raise BuildsCliError("give --every or --never, not both")
    if pull_secret is not None and no_pull_secret:
        raise BuildsCliError("give --pull-secret or --no-pull-secret, not both")
    rotate_after: int | credentials.Keep | None = credentials.KEEP
    if every is not None:
        rotate_after = _duration_seconds(every)
    elif never:
        rotate_after = None
    secret: credentials.PullSecretRef | credentials.Keep | None = credentials.KEEP
    if pull_secret is not None:
        secret = credentials.PullSecretRef.parse(pull_secret)
    elif no_pull_secret:
        secret = None
    with session_scope() as session:
        policy = credentials.set_rotation_policy(
            session, registry, rotate_after_seconds=rotate_after, pull_secret=secret
        )
    age = _duration_text(policy.rotate_after_seconds)
    out.print(
        f"{policy.host}: rotate {'every ' + age if age else 'when refused or expiring'}; "
        f"pull secret {policy.pull_secret or 'none'}",
        markup=False,
    )


@registry_app.command("rotate")
def registry_rotate(
    registries: list[str] = typer.Argument(
        None, help="Registry hosts[:port]; default: every stored credential."
    ),
    force: bool = typer.Option(False, "--force", help="Rotate even credentials that are not due."),
) -> None:
    """Probe now (and rotate what is due) on the pushes queue, as Beat does; prints the job id."""
    from dispatch.enqueue import enqueue

    payload: dict[str, object] = {"force": force}
    if registries:
        payload["hosts"] = registries
    job = enqueue("pushes.rotate_credentials", payload, enqueued_by=f"cli:{current_operator()}")
    out.print(f"{job.id} {job.task_name} on {job.queue} {job.status}", markup=False)
    out.print(f"follow it with `drydock job {job.id} --follow`", markup=False)


@registry_app.command("events")
def registry_events(
    registry: str | None = typer.Argument(None, help="Registry host[:port]; default: all."),
    limit: int = typer.Option(20, "--limit", "-n", min=1, max=500),
) -> None:
    """Recent probes, rotations and pull-secret writes, newest first."""
    from models import credentials
    from models.db import session_scope

    table = Table("at", "registry", "event", "detail", "job")
    with session_scope() as session:
        for event in credentials.credential_events(session, registry, limit=limit):
            table.add_row(
                when(event.at),
                event.host,
                event.kind,
                json.dumps(event.detail, sort_keys=True),
                str(event.job_id or ""),
            )
    out.print(table)


@registry_app.command("remove")
def registry_remove(registry: str = typer.Argument(..., help="Registry host[:port].")) -> None:
    """Forget a registry's credentials (pushes to it go unauthenticated)."""
    from models import credentials
    from models.db import session_scope

    with session_scope() as session:
        credentials.remove(session, registry)
    out.print(f"removed the credentials of {registry}")


_UNITS = {"d": 86400, "h": 3600, "m": 60, "s": 1}


def _duration_seconds(text: str) -> int:
    match = re.fullmatch(r"(\d+)([smhd])", text.strip())
    if not match or int(match.group(1)) == 0:
        raise BuildsCliError(f"{text!r} is not a duration like 90m, 12h or 30d")
    return int(match.group(1)) * _UNITS[match.group(2)]


def _duration_text(seconds: int | None) -> str:
    if seconds is None:
        return ""
    unit = next(unit for unit, size in _UNITS.items() if seconds % size == 0)
    return f"{seconds // _UNITS[unit]}{unit}"


def _probe_text(at: datetime | None, accepted: bool | None) -> str:
    if at is None:
        return ""
    said = {True: "accepted", False: "refused", None: "failed"}[accepted]
    return f"{said} {when(at)}"


# ---- retention ---------------------------------------------------------------------------------


def _split_repository(text: str) -> tuple[str, str]:
    from catalog.pushes import PruneTagsPayload

    host, slash, repository = text.partition("/")
    if not slash or not repository:
        raise BuildsCliError(f"{text!r} must be REGISTRY/REPOSITORY, like 127.0.0.1:5000/mcp/app")
    try:
        checked = PruneTagsPayload(registry=host, repository=repository)
    except ValueError as exc:
        raise BuildsCliError(f"{text!r}: {exc}") from None
    return checked.registry, checked.repository


@retention_app.command("set")
def retention_set(
    repository: str = typer.Argument(..., help="REGISTRY/REPOSITORY."),
    keep_newest: int = typer.Option(..., "--keep-newest", min=0, help="Keep the N newest tags."),
    keep: list[str] = typer.Option(
        [], "--keep", help="Also keep tags matching this pattern (fnmatch, e.g. 'v*'); repeatable."
    ),
) -> None:
    """Set a repository's retention policy."""
    from models import builds
    from models.db import session_scope

    host, repo = _split_repository(repository)
    with session_scope() as session:
        builds.set_retention_policy(
            session, host, repo, keep_newest=keep_newest, keep_patterns=keep, by=current_operator()
        )
    patterns = f" and tags matching {', '.join(keep)}" if keep else ""
    out.print(f"{host}/{repo}: keep the newest {keep_newest}{patterns}")


@retention_app.command("list")
def retention_list() -> None:
    """Every retention policy."""
    from models import builds
    from models.db import session_scope

    table = Table("repository", "keep newest", "keep patterns", "updated", "by")
    with session_scope() as session:
        for policy in builds.retention_policies(session):
            table.add_row(
                f"{policy.host}/{policy.repository}",
                str(policy.keep_newest),
                ", ".join(policy.keep_patterns),
                when(policy.updated_at),
                policy.updated_by or "",
            )
    out.print(table)


# ---- the ledger --------------------------------------------------------------------------------


@builds_app.callback(invoke_without_command=True)
def builds_list(
    ctx: typer.Context,
    limit: int = typer.Option(20, "--limit", "-n", min=1, max=500),
) -> None:
    """Recent build runs (newest first). `drydock builds show RUN` for one."""
    if ctx.invoked_subcommand is not None:
        return
    from models import builds
    from models.db import session_scope

    table = Table("run", "status", "image", "revision", "commit", "backend", "platforms", "created")
    with session_scope() as session:
        for run in builds.list_runs(session, limit=limit):
            table.add_row(
                str(run.id),
                run.status,
                run.image,
                run.revision,
                (run.commit or "")[:12],
                run.backend,
                ", ".join(run.platforms),
                when(run.created_at),
            )
    out.print(table)


@builds_app.command("show")
def builds_show(
    run: str = typer.Argument(..., help="A build run id, or the id of its build job."),
    log: str | None = typer.Option(
        None, "--log", metavar="PLATFORM", help="Print this platform's build log."
    ),
) -> None:
    """One build run: what was asked, what it resolved to, every platform's image and digest."""
    from models import builds
    from models.builds import BuildRun
    from models.db import session_scope

    try:
        ident = uuid.UUID(run)
    except ValueError:
        raise BuildsCliError(f"{run!r} is not a run or job id (a UUID)") from None
    with session_scope() as session:
        found = session.get(BuildRun, ident) or builds.run_of_job(session, ident)
        if found is None:
            raise BuildsCliError(f"no build run or build job {run}")
        platforms = builds.platforms_of(session, found.id)
        if log is not None:
            chosen = [p for p in platforms if p.platform == log]
            if not chosen or chosen[0].log_artifact_id is None:
                raise BuildsCliError(f"run {found.id} has no build log for {log}")
            artifact = builds.get_artifact(session, chosen[0].log_artifact_id)
            assert artifact is not None
            sys.stdout.write(artifact.body.decode(errors="replace"))
            return
        out.print(f"run       {found.id} (job {found.job_id})", highlight=False)
        out.print(f"status    {found.status}", highlight=False)
        out.print(f"source    {found.repository_url} @ {found.revision}", highlight=False)
        out.print(f"commit    {found.commit or '-'} ({found.ref_kind or '-'})", highlight=False)
        out.print(f"image     {found.image} via {found.backend}", highlight=False)
        if found.push_target:
            target = found.push_target
            out.print(
                f"push      {target['registry']}/{target['repository']}"
                f" (credentials: {found.credential_outcome or '-'})",
                highlight=False,
            )
            out.print(f"index     {found.index_digest or '-'}", highlight=False)
        if found.error:
            out.print(f"error     {found.error}", highlight=False, markup=False)
        table = Table(
            "platform", "status", "image id", "size", "cached", "build ms", "digest", "sent"
        )
        for row in platforms:
            table.add_row(
                row.platform,
                row.status,
                (row.image_id or "")[:19],
                "" if row.size_bytes is None else f"{row.size_bytes:,}",
                "" if row.steps_total is None else f"{row.steps_cached}/{row.steps_total}",
                "" if row.build_ms is None else f"{row.build_ms:.0f}",
                row.digest or "",
                "" if row.bytes_sent is None else f"{row.bytes_sent:,}",
            )
        out.print(table)

"""``drydock projects`` (create, list, show; ``remote add|remove``) and ``drydock remotes
check``: the projects whose repositories workflow runs clone, and the remotes they push to.

A remote names its credential (``--credential NAME``: the worker reads
``DRYDOCK_GIT_CREDENTIAL_<NAME>``); a URL carrying one is refused, so nothing here ever holds a
secret.
"""

from __future__ import annotations

import json
from typing import Any

import typer
from rich.console import Console
from rich.table import Table

from drydock.cli.text import current_operator
from kernel.errors import DrydockError

projects_app = typer.Typer(
    help="Projects: repositories workflow runs clone, and remotes they push to.",
    no_args_is_help=True,
)
remote_app = typer.Typer(help="A project's remotes (add, remove).", no_args_is_help=True)
projects_app.add_typer(remote_app, name="remote")
remotes_app = typer.Typer(help="Remotes: reachability (git ls-remote).", no_args_is_help=True)

out = Console()


def say(text: str) -> None:
    out.print(text, markup=False, highlight=False, soft_wrap=True)


def _checked_url(url: str) -> str:
    from adapters.git_workspace import check_remote_url
    from kernel.settings import get_settings

    return check_remote_url(url, get_settings().git_allowed_schemes)


@projects_app.command("create")
def create_project(
    name: str = typer.Argument(..., help="The project's name, unique in its tenant."),
    repository: str = typer.Option(..., "--repository", help="URL runs clone from."),
    tenant: str = typer.Option(..., "--tenant"),
    default_branch: str = typer.Option("main", "--default-branch"),
    by: str | None = typer.Option(None, "--by", help="Who (default: operator:<your user>)."),
) -> None:
    """Create a project."""
    from adapters.git_inputs import check_revision
    from models import projects
    from models.db import session_scope

    check_revision(default_branch)
    url = _checked_url(repository)
    with session_scope() as session:
        row = projects.create_project(
            session,
            tenant=tenant,
            name=name,
            repository_url=url,
            default_branch=default_branch,
            created_by=by or current_operator(),
        )
        say(f"project {row.tenant}/{row.name} (default branch {row.default_branch})")


@projects_app.command("list")
def list_projects(tenant: str | None = typer.Option(None, "--tenant")) -> None:
    """Every project (of one tenant)."""
    from adapters.git_inputs import redact_url
    from models import projects
    from models.db import session_scope

    table = Table("tenant", "project", "repository", "default branch", "remotes")
    with session_scope() as session:
        for row in projects.list_projects(session, tenant):
            table.add_row(
                row.tenant,
                row.name,
                redact_url(row.repository_url),
                row.default_branch,
                ", ".join(r.name for r in row.remotes) or "-",
            )
    out.print(table)


@projects_app.command("show")
def show_project(
    name: str = typer.Argument(...),
    tenant: str = typer.Option(..., "--tenant"),
    as_json: bool = typer.Option(False, "--json"),
) -> None:
    """A project and its remotes (with their last check)."""
    from adapters.git_inputs import redact_url
    from models import projects
    from models.db import session_scope

    with session_scope() as session:
        row = projects.get_project(session, tenant, name)
        remotes: list[dict[str, Any]] = [
            {
                "name": r.name,
                "url": redact_url(r.url),
                "credential_ref": r.credential_ref,
                "protected_branches": r.protected_branches,
                "last_check_ok": r.last_check_ok,
                "last_check_latency_ms": r.last_check_latency_ms,
                "last_check_error": r.last_check_error,
                "last_checked_at": (r.last_checked_at.isoformat() if r.last_checked_at else None),
            }
            for r in row.remotes
        ]
        document: dict[str, Any] = {
            "tenant": row.tenant,
            "name": row.name,
            "repository_url": redact_url(row.repository_url),
            "default_branch": row.default_branch,
            "created_by": row.created_by,
            "remotes": remotes,
        }
    if as_json:
        say(json.dumps(document, indent=2))
        return
    say(f"project {document['tenant']}/{document['name']}: {document['repository_url']}")
    say(f"  default branch {document['default_branch']}")
    for remote in remotes:
        say(
            f"  remote {remote['name']}: {remote['url']} credential "
            f"{remote['credential_ref'] or '-'} protected {', '.join(remote['protected_branches'])}"
        )


@remote_app.command("add")
def add_remote(
    project: str = typer.Argument(...),
    name: str = typer.Argument(..., help="The remote's name (origin, mirror...)."),
    url: str = typer.Argument(...),
    tenant: str = typer.Option(..., "--tenant"),
    credential: str | None = typer.Option(
        None,
        "--credential",
        help="A credential NAME: the worker reads DRYDOCK_GIT_CREDENTIAL_<NAME>.",
    ),
    protected: list[str] = typer.Option(
        [], "--protected", help="A protected branch pattern (repeat; default: main)."
    ),
) -> None:
    """Add a remote every run of the project pushes to."""
    from models import projects
    from models.db import session_scope

    checked = _checked_url(url)
    with session_scope() as session:
        row = projects.get_project(session, tenant, project)
        remote = projects.add_remote(
            session,
            row,
            name=name,
            url=checked,
            credential_ref=credential,
            protected_branches=protected or None,
        )
        say(
            f"remote {name} of {tenant}/{project}; protected: "
            f"{', '.join(remote.protected_branches) or 'none'}"
        )


@remote_app.command("remove")
def remove_remote(
    project: str = typer.Argument(...),
    name: str = typer.Argument(...),
    tenant: str = typer.Option(..., "--tenant"),
) -> None:
    """Remove a remote."""
    from models import projects
    from models.db import session_scope

    with session_scope() as session:
        projects.remove_remote(session, projects.get_project(session, tenant, project), name)
    say(f"removed remote {name} of {tenant}/{project}")


@remotes_app.command("check")
def check_remotes(
    tenant: str | None = typer.Option(None, "--tenant"),
    project: str | None = typer.Option(None, "--project"),
    as_json: bool = typer.Option(False, "--json", help="The document GET /health/remotes gives."),
) -> None:
    """Probe each remote (git ls-remote, together, each within
    DRYDOCK_HEALTH_PEER_TIMEOUT_SECONDS); exit 1 when one is unreachable."""
    from drydock.api.remotes import remotes_report

    if project is not None and tenant is None:
        raise DrydockError("--project needs --tenant")
    report = remotes_report(tenant=tenant, project=project)
    if as_json:
        say(report.model_dump_json(indent=2))
    else:
        if not report.remotes:
            say("no remotes")
        for r in report.remotes:
            detail = f"{r.latency_ms:g} ms" if r.latency_ms is not None else (r.error or "")
            detail = " ".join(detail.split())
            say(f"{r.tenant}/{r.project} {r.remote} {r.url}: {r.status} ({detail})")
    if report.status != "healthy":
        raise typer.Exit(1)

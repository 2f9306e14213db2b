"""``drydock``: the operator's command line.

Every error is one line on stderr and a non-zero exit, never a traceback. The commands live in
one module per domain; this assembles them under the root app and runs it.
"""

from __future__ import annotations

import sys

import typer
from rich.console import Console

from drydock.cli import (
    admin,
    attest,
    builds,
    dead_letters,
    evaluation,
    fleet,
    jobs,
    probes,
    projects,
    releases,  # noqa: F401 (imported for its commands, on releases_app)
    remediation,
    remediation_workspaces,
    runtime,
    tokens,
    trust,
    workflow_runs,  # noqa: F401 (imported for its commands, on workflows_app)
    workflows,
)
from drydock.cli.text import CliError

app = typer.Typer(
    name="drydock",
    help="Drydock: the job fleet behind an MCP-server hosting platform.",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
)
# The order of registration is the order of `drydock --help`.
app.command()(probes.drain)
app.command()(admin.migrate)
app.command()(admin.schema)
app.command()(admin.keygen)
app.command()(fleet.worker)
app.command()(fleet.beat)
app.command()(fleet.flower)
app.command()(jobs.enqueue)
app.command()(jobs.jobs)
app.command("job")(jobs.job_detail)
app.command()(fleet.up)
app.command()(fleet.api)
app.command()(fleet.health)
app.add_typer(dead_letters.dlq_app, name="dlq")
app.add_typer(tokens.tokens_app, name="tokens")
app.add_typer(builds.registry_app, name="registry")
app.add_typer(builds.retention_app, name="retention")
app.add_typer(builds.builds_app, name="builds")
app.add_typer(attest.attest_app, name="attest")
app.add_typer(trust.trust_app, name="trust")
app.add_typer(remediation.playbooks_app, name="playbooks")
app.add_typer(evaluation.evaluation_app, name="evaluation")
app.add_typer(evaluation.policy_app, name="policy")
app.add_typer(evaluation.admission_app, name="admission")
app.add_typer(remediation.remediation_app, name="remediation")
remediation.remediation_app.add_typer(remediation_workspaces.workspaces_app, name="workspaces")
remediation.remediation_app.add_typer(remediation_workspaces.lanes_app, name="lanes")
remediation.remediation_app.add_typer(remediation_workspaces.freezes_app, name="freezes")
remediation.remediation_app.command("lane")(remediation_workspaces.set_lane)
app.add_typer(probes.probe_app, name="probe")
app.add_typer(workflows.workflows_app, name="workflows")
app.add_typer(projects.projects_app, name="projects")
app.add_typer(projects.remotes_app, name="remotes")
app.add_typer(runtime.servers_app, name="servers")
app.add_typer(runtime.releases_app, name="releases")
app.add_typer(runtime.runtime_app, name="runtime")
app.command("catalog")(runtime.catalog)

err = Console(stderr=True)

__all__ = ["CliError", "app", "main"]


def _explain(exc: BaseException) -> str | None:
    """One line for an error an operator can act on; None for a bug (shown with traceback)."""
    from kombu.exceptions import OperationalError as KombuOperationalError
    from pydantic import ValidationError
    from sqlalchemy.exc import OperationalError, ProgrammingError

    from kernel.errors import DrydockError

    if isinstance(exc, CliError | DrydockError):
        return str(exc)
    if isinstance(exc, ValidationError):
        problems = "; ".join(
            f"DRYDOCK_{'_'.join(str(p) for p in e['loc']).upper() or 'SETTINGS'}: {e['msg']}"
            for e in exc.errors(include_input=False, include_url=False)
        )
        return f"invalid settings: {problems}"
    if isinstance(exc, OperationalError):
        return f"cannot reach the database (DRYDOCK_DATABASE_URL): {str(exc.orig).strip()}"
    if isinstance(exc, ProgrammingError):
        return f"database error (has `drydock migrate` been run?): {str(exc.orig).strip()}"
    if isinstance(exc, KombuOperationalError):
        return f"cannot reach the broker (DRYDOCK_BROKER_URL): {exc}"
    return None


def main() -> None:
    try:
        # Without standalone mode click does not exit: it returns the code of a `typer.Exit`
        # raised by a command (and 130 for Ctrl-C), which is passed on below.
        code = app(standalone_mode=False)
    except typer.Exit as exc:
        sys.exit(exc.exit_code)
    except typer.Abort:
        err.print("aborted")
        sys.exit(1)
    except Exception as exc:
        import click

        # Typer carries its own copy of click, whose usage errors are TyperExceptions.
        if isinstance(exc, click.ClickException | typer.TyperException) and hasattr(exc, "show"):
            exc.show()
            sys.exit(exc.exit_code)
        message = _explain(exc)
        if message is None:
            message = f"unexpected {type(exc).__name__}: {exc}"
        one_line = " ".join(message.split())
        err.print(f"error: {one_line}", markup=False, highlight=False, soft_wrap=True)
        sys.exit(1)
    if isinstance(code, int) and code:
        sys.exit(code)

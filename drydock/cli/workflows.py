"""``drydock workflows``: workflow definitions (create a new version, list, show).

Operators act as ``operator:<user>`` unless ``--by`` says who; ``--tenant`` limits reads to that
tenant (another tenant's workflow is not found, as over the API).
"""

from __future__ import annotations

import json
import sys
from typing import Any

import typer
from rich.console import Console
from rich.table import Table

from drydock.cli.text import current_operator
from kernel.errors import field_problems

workflows_app = typer.Typer(
    help="Workflows: definitions (create, list, show) and runs (run, runs, status, cancel, retry).",
    no_args_is_help=True,
)

out = Console()
err = Console(stderr=True)

VALUE_ERROR = "Value error, "


def say(text: str) -> None:
    """One line as it is: no rich markup or highlighting of what a definition holds."""
    out.print(text, markup=False, highlight=False, soft_wrap=True)


@workflows_app.command("create")
def create_workflow(
    file: str = typer.Argument(
        ..., metavar="FILE", help="The definition, YAML or JSON; - reads stdin."
    ),
    tenant: str = typer.Option(..., "--tenant", help="The tenant the workflow belongs to."),
    by: str | None = typer.Option(
        None, "--by", help="Who is creating it (default: operator:<your user>)."
    ),
) -> None:
    """Create a workflow, or the next version of one with the same name. An invalid
    definition is refused with one line per problem, each at its place."""
    from pydantic import ValidationError

    from drydock.cli.remediation import read_mapping
    from tasks.workflows import store
    from tasks.workflows.definitions import parse_definition

    document = read_mapping(file, "name, steps, ...")
    try:
        definition = parse_definition(document, tenant=tenant)
    except ValidationError as exc:
        problems = field_problems(exc, whole="(definition)")
        err.print(
            f"error: {file}: invalid workflow definition, {len(problems)} "
            f"problem{'s' if len(problems) != 1 else ''}:",
            markup=False,
            highlight=False,
            soft_wrap=True,
        )
        for problem in problems:
            message = problem.problem.removeprefix(VALUE_ERROR)
            err.print(
                f"  {problem.field}: {' '.join(message.split())}",
                markup=False,
                highlight=False,
                soft_wrap=True,
            )
        raise typer.Exit(1) from None
    summary = store.create_definition(
        definition, tenant=tenant, actor=by or f"operator:{current_operator()}"
    )
    say(
        f"workflow {summary['tenant']}/{summary['name']} version {summary['version']} "
        f"({summary['steps']} steps) {summary['id']}"
    )


@workflows_app.command("list")
def list_workflows(
    tenant: str | None = typer.Option(None, "--tenant", help="Only this tenant's workflows."),
) -> None:
    """Every workflow's newest version."""
    from tasks.workflows import store

    table = Table("workflow", "version", "steps", "kinds", "created", "by")
    for summary in store.list_definitions(tenant):
        table.add_row(
            f"{summary['tenant']}/{summary['name']}",
            str(summary["version"]),
            str(summary["steps"]),
            ", ".join(summary["kinds"]),
            (summary["created_at"] or "")[:19].replace("T", " "),
            summary["created_by"] or "",
        )
    out.print(table)


@workflows_app.command("show")
def show_workflow(
    name: str = typer.Argument(..., help="The workflow's name."),
    tenant: str = typer.Option(..., "--tenant"),
    version: int | None = typer.Option(None, "--version", min=1, help="Default: the newest."),
    as_json: bool = typer.Option(False, "--json", help="Print as JSON."),
) -> None:
    """A workflow version with its steps, in the order they can run."""
    from tasks.workflows import store

    summary = store.describe_definition(tenant, name, version)
    if as_json:
        sys.stdout.write(json.dumps(summary, indent=2, default=str) + "\n")
        return
    say(f"{tenant}/{name} version {summary['version']}")
    say(f"  versions   {', '.join(str(v) for v in summary['versions'])}")
    say(f"  digest     {summary['digest']}")
    say(f"  created    {summary['created_at']} by {summary['created_by']}")
    if summary["description"]:
        say(f"  about      {summary['description']}")
    steps = {step["name"]: step for step in summary["definition"]["steps"]}
    say("steps (in an order they can run):")
    for step_name in summary["order"]:
        step = steps[step_name]
        needs = f" after {', '.join(step['needs'])}" if step["needs"] else ""
        say(
            f"  {step_name}  {step['kind']}: {_what(step)}{needs} "
            f"(timeout {step['timeout_seconds']}s, retries {step['retries']})"
        )


def _what(step: dict[str, Any]) -> str:
    if step["kind"] == "container":
        network = ", network" if step.get("network") else ""
        return f"{step['image']} {json.dumps(step['command'])}{network}"
    if step["kind"] == "agent":
        return f"{step['provider']}/{step['model']}"
    return str(step["task"])

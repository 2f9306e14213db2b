"""``drydock migrate``, ``drydock schema`` and ``drydock keygen``: setting up a deployment (the
outcome store's schema, payload schemas for producers, the secret key)."""

from __future__ import annotations

import json
import sys
from typing import Any

import typer
from rich.console import Console

out = Console()


def migrate(
    downgrade: str | None = typer.Option(
        None, "--downgrade", metavar="REVISION", help="Downgrade to REVISION (e.g. base)."
    ),
    revision: str = typer.Option("head", help="Upgrade to this revision."),
) -> None:
    """Upgrade the outcome store to the latest schema (or downgrade it)."""
    from models import migrate as migrations

    if downgrade is not None:
        migrations.downgrade(downgrade)
    else:
        migrations.upgrade(revision)
    out.print(f"database at revision {migrations.current_revision() or 'base'}")


def schema(
    task: str | None = typer.Argument(None, help="One task; all tasks if omitted."),
    registry_events: bool = typer.Option(
        False, "--registry-events", help="The versioned schemas of registry telemetry instead."
    ),
) -> None:
    """Print the JSON Schema of task payloads, for producers in other languages."""
    from catalog import CATALOG, spec_for

    if registry_events:
        from tasks.pushes.telemetry import json_schemas

        document: dict[str, Any] = json_schemas()
    elif task is not None:
        document = spec_for(task).json_schema()
    else:
        document = {name: spec.json_schema() for name, spec in sorted(CATALOG.items())}
    sys.stdout.write(json.dumps(document, indent=2) + "\n")


def keygen() -> None:
    """Print a new key for DRYDOCK_SECRET_KEY."""
    from kernel.redaction import new_key

    sys.stdout.write(new_key() + "\n")

"""Workflow definitions as stored: a definition becomes the next version of the tenant's
workflow of that name; versions are read back whole or summarised."""

from __future__ import annotations

import hashlib
import json
from datetime import UTC
from typing import Any

from sqlalchemy.exc import IntegrityError

from kernel.errors import DrydockError, TransientError
from models import workflows as rows
from models.db import session_scope
from models.workflows import WorkflowVersion
from tasks.workflows.definitions import WorkflowDefinition, topological_order

MAX_TENANT_LENGTH = 100


class WorkflowRefusedError(DrydockError):
    """A definition that cannot be stored as asked (an invalid tenant), with the reason."""


def check_tenant(tenant: str) -> str:
    if not tenant or len(tenant) > MAX_TENANT_LENGTH or tenant != tenant.strip():
        raise WorkflowRefusedError(f"tenant {tenant!r}: 1 to 100 characters, no padding")
    return tenant


def create_definition(definition: WorkflowDefinition, *, tenant: str, actor: str) -> dict[str, Any]:
    """Store the definition as the next version of the tenant's workflow of that name."""
    check_tenant(tenant)
    # Defaults written out: a version means the same thing whatever later defaults become.
    document = definition.model_dump(mode="json")
    for _ in range(5):
        try:
            with session_scope() as session:
                row = rows.add_definition_version(
                    session,
                    tenant=tenant,
                    name=definition.name,
                    definition=document,
                    description=definition.description,
                    created_by=actor,
                )
                return definition_summary(row)
        except IntegrityError:
            continue  # another writer took that version number: take the next
    raise TransientError(f"workflow {definition.name}: versions kept changing; try again")


def definition_digest(document: dict[str, Any]) -> str:
    """The stored definition's SHA-256 over its canonical JSON: what a run's provenance names."""
    canonical = json.dumps(document, sort_keys=True, separators=(",", ":"), ensure_ascii=False)
    return "sha256:" + hashlib.sha256(canonical.encode()).hexdigest()


def definition_summary(row: WorkflowVersion, *, with_definition: bool = True) -> dict[str, Any]:
    steps = row.definition.get("steps", [])
    summary: dict[str, Any] = {
        "id": str(row.id),
        "tenant": row.tenant,
        "name": row.name,
        "version": row.version,
        "description": row.description,
        "steps": len(steps),
        "kinds": sorted({step.get("kind") for step in steps}),
        "digest": definition_digest(row.definition),
        "created_at": row.created_at.astimezone(UTC).isoformat() if row.created_at else None,
        "created_by": row.created_by,
    }
    if with_definition:
        summary["definition"] = row.definition
        # From the stored steps, not a fresh validation: a version stays readable whatever the
        # catalog or the settings become.
        summary["order"] = topological_order(
            {step["name"]: step.get("needs", []) for step in steps}
        )
    return summary


def list_definitions(tenant: str | None) -> list[dict[str, Any]]:
    """The newest version of every workflow (of one tenant, or of all)."""
    with session_scope() as session:
        return [
            definition_summary(row, with_definition=False)
            for row in rows.list_definitions(session, tenant)
        ]


def describe_definition(tenant: str, name: str, version: int | None = None) -> dict[str, Any]:
    """One version of a workflow (the newest unless given) with its definition, its steps'
    order, and every version's number."""
    with session_scope() as session:
        row = rows.get_definition(session, tenant, name, version)
        return {
            **definition_summary(row),
            "versions": rows.definition_versions(session, tenant, name),
        }

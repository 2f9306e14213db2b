"""Remediation playbooks as stored: a definition becomes the next version of the tenant's
playbook of that name; versions are read back whole or summarised."""

from __future__ import annotations

from typing import Any

from sqlalchemy.exc import IntegrityError

from kernel.errors import TransientError
from models import remediation as store
from models.db import session_scope
from models.remediation import (
    RemediationPlaybook,
)
from tasks.remediation.playbooks import PlaybookDefinition
from tasks.remediation.run_records import check_tenant, iso_time


def create_playbook(definition: PlaybookDefinition, *, tenant: str, actor: str) -> dict[str, Any]:
    """Store the definition as the next version of the tenant's playbook of that name."""
    check_tenant(tenant)
    for _ in range(5):
        try:
            with session_scope() as session:
                playbook = store.add_playbook_version(
                    session,
                    tenant=tenant,
                    name=definition.name,
                    executor=definition.executor.value,
                    spec=definition.parsed_spec().model_dump(mode="json"),
                    timeout_seconds=definition.timeout_seconds,
                    requires_approval=definition.requires_approval,
                    asset_kinds=[kind.value for kind in definition.asset_kinds],
                    description=definition.description,
                    created_by=actor,
                )
                return playbook_summary(playbook)
        except IntegrityError:
            continue  # another writer took that version number: take the next
    raise TransientError(f"playbook {definition.name}: versions kept changing; try again")


def playbook_summary(playbook: RemediationPlaybook, *, with_spec: bool = True) -> dict[str, Any]:
    summary = {
        "id": str(playbook.id),
        "tenant": playbook.tenant,
        "name": playbook.name,
        "version": playbook.version,
        "executor": playbook.executor,
        "timeout_seconds": playbook.timeout_seconds,
        "requires_approval": playbook.requires_approval,
        "asset_kinds": playbook.asset_kinds,
        "description": playbook.description,
        "created_at": iso_time(playbook.created_at),
        "created_by": playbook.created_by,
    }
    if with_spec:
        summary["spec"] = playbook.spec
    return summary


def describe_playbook(tenant: str, name: str, version: int | None = None) -> dict[str, Any]:
    """One version of a playbook (the newest unless given) with its spec and every version."""
    with session_scope() as session:
        book = store.get_playbook(session, tenant, name, version)
        versions = [row.version for row in store.playbook_versions(session, tenant, name)]
        return {**playbook_summary(book), "versions": versions}

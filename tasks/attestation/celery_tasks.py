"""The attestation queue's Celery tasks: thin wrappers over ``tasks.attestation.domain``."""

from __future__ import annotations

from typing import Any

from catalog.attestation import (
    ExpireStaleEvidencePayload,
    IngestAcceleratorPosturePayload,
    SyncVmInventoryPayload,
    VerifyEvidencePayload,
)
from kernel.context import JobContext
from models.trust import TransitionConflictError
from tasks.attestation import domain
from tasks.attestation.inventory import InventoryUnavailableError
from workers.base_task import DrydockTask, drydock_task

# Retried with backoff: a writer that kept losing the race for an asset, libvirt unreachable.
# A verdict is never retried into a different answer: bad evidence is a verdict, not an error.


def verify_evidence(payload: VerifyEvidencePayload, ctx: JobContext) -> dict[str, Any]:
    return domain.verify_evidence(payload, ctx)


def ingest_accelerator_posture(
    payload: IngestAcceleratorPosturePayload, ctx: JobContext
) -> dict[str, Any]:
    return domain.ingest_accelerator_posture(payload, ctx)


def sync_vm_inventory(payload: SyncVmInventoryPayload, ctx: JobContext) -> dict[str, Any]:
    return domain.sync_vm_inventory(payload, ctx)


def expire_stale_evidence(payload: ExpireStaleEvidencePayload, ctx: JobContext) -> dict[str, Any]:
    return domain.expire_stale_evidence(payload, ctx)


VERIFY_EVIDENCE: DrydockTask = drydock_task(
    "attestation.verify_evidence", transient=(TransitionConflictError,)
)(verify_evidence)

INGEST_ACCELERATOR_POSTURE: DrydockTask = drydock_task(
    "attestation.ingest_accelerator_posture", transient=(TransitionConflictError,)
)(ingest_accelerator_posture)

SYNC_VM_INVENTORY: DrydockTask = drydock_task(
    "attestation.sync_vm_inventory",
    transient=(TransitionConflictError, InventoryUnavailableError),
)(sync_vm_inventory)

EXPIRE_STALE_EVIDENCE: DrydockTask = drydock_task(
    "attestation.expire_stale_evidence", transient=(TransitionConflictError,)
)(expire_stale_evidence)

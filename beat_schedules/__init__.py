"""Celery Beat entries. Each names its queue explicitly, so a schedule never lands by default."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from kernel.topology import WORK_QUEUES

if TYPE_CHECKING:
    from kernel.settings import Settings


def beat_schedule(settings: Settings) -> dict[str, dict[str, Any]]:
    return {
        **canaries(settings),
        **trust_upkeep(settings),
        **remediation_upkeep(settings),
        **evaluation_upkeep(settings),
        **credential_upkeep(settings),
        **workflow_upkeep(settings),
        **runtime_upkeep(settings),
    }


def runtime_upkeep(settings: Settings) -> dict[str, dict[str, Any]]:
    interval = settings.runtime_trust_sweep_seconds
    if not interval:
        return {}
    # A quarantine of a host or of a VM stops what runs there, whatever moved the asset (a
    # failed quote, an operator, expiry): the sweep reads the registry, so no move is missed.
    return {
        "runtime-enforce-trust": {
            "task": "runtime.enforce_trust",
            "schedule": float(interval),
            "kwargs": {},
            "options": {"queue": "runtime", "expires": float(interval)},
        }
    }


def workflow_upkeep(settings: Settings) -> dict[str, dict[str, Any]]:
    interval = settings.workflow_sweep_interval_seconds
    if not interval:
        return {}
    # Runs with no step in flight are moved on (a step's job never sent, or lost at a hard
    # time limit): a run never waits on something that will not come.
    return {
        "workflow-sweep": {
            "task": "workflows.sweep_runs",
            "schedule": float(interval),
            "kwargs": {},
            "options": {"queue": "workflows", "expires": float(interval)},
        }
    }


def trust_upkeep(settings: Settings) -> dict[str, dict[str, Any]]:
    interval = settings.trust_staleness_interval_seconds
    if not interval:
        return {}
    # Trusted assets whose evidence expired become stale. The sweep reads only due rows (a
    # partial index), so running it often costs nothing when nothing is due.
    return {
        "trust-staleness": {
            "task": "attestation.expire_stale_evidence",
            "schedule": float(interval),
            "kwargs": {},
            "options": {"queue": "attestation", "expires": float(interval)},
        }
    }


def remediation_upkeep(settings: Settings) -> dict[str, dict[str, Any]]:
    interval = settings.remediation_expiry_interval_seconds
    if not interval:
        return {}
    # Runs whose approval wait or approval ran out expire; runs whose job was never sent are
    # sent. Each part reads only due rows (partial indexes).
    return {
        "remediation-sweep": {
            "task": "remediation.sweep_runs",
            "schedule": float(interval),
            "kwargs": {},
            "options": {"queue": "remediation", "expires": float(interval)},
        }
    }


def evaluation_upkeep(settings: Settings) -> dict[str, dict[str, Any]]:
    entries: dict[str, dict[str, Any]] = {}
    cadence = settings.evaluation_cadence_interval_seconds
    if cadence:
        # Certifications inside their refresh window get one refresh each; expired ones turn
        # stale. Both read only due rows (partial indexes).
        entries["evaluation-cadence"] = {
            "task": "evaluation.sweep_certifications",
            "schedule": float(cadence),
            "kwargs": {},
            "options": {"queue": "evaluation", "expires": float(cadence)},
        }
    anomalies = settings.anomaly_interval_seconds
    if anomalies:
        # Capability scores from the build ledger, set-based, for the policy's anomaly gate.
        entries["anomaly-recompute"] = {
            "task": "evaluation.recompute_anomalies",
            "schedule": float(anomalies),
            "kwargs": {},
            "options": {"queue": "evaluation", "expires": float(anomalies)},
        }
    return entries


def credential_upkeep(settings: Settings) -> dict[str, dict[str, Any]]:
    interval = settings.credential_rotation_interval_seconds
    if not interval:
        return {}
    # Every registry credential is probed; those refused, expiring or past their rotation age
    # are rotated and their image-pull secrets rewritten.
    return {
        "credential-rotation": {
            "task": "pushes.rotate_credentials",
            "schedule": float(interval),
            "kwargs": {},
            "options": {"queue": "pushes", "expires": float(interval)},
        }
    }


def canaries(settings: Settings) -> dict[str, dict[str, Any]]:
    interval = settings.canary_interval_seconds
    if not interval:
        return {}
    # A canary on every queue: its jobs rows prove each queue is being served.
    return {
        f"canary-{queue}": {
            "task": f"{queue}.canary",
            "schedule": float(interval),
            "kwargs": {"message": "beat"},
            "options": {"queue": queue, "expires": float(interval)},
        }
        for queue in WORK_QUEUES
    }

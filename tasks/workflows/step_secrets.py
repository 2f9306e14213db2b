"""A workflow step's secrets: files of the tenant's under DRYDOCK_WORKFLOW_SECRETS_DIR, read when
the step starts; only their names are ever stored."""

from __future__ import annotations

from pathlib import Path

from kernel.settings import get_settings
from tasks.workflows.definitions import WorkflowContainerStep, WorkflowSecretRef
from tasks.workflows.step_errors import StepAttemptFailedError


def resolve_step_secrets(tenant: str, step: WorkflowContainerStep) -> dict[str, str]:
    """The values of the step's secret references, by secret name, read from
    ``DRYDOCK_WORKFLOW_SECRETS_DIR/<tenant>/<name>``. A missing one fails the step at once,
    named (never its value)."""
    names = sorted({v.secret for v in step.env.values() if isinstance(v, WorkflowSecretRef)})
    return {name: read_secret(tenant, name, f"step {step.name}") for name in names}


def read_secret(tenant: str, name: str, what: str) -> str:
    """The tenant's secret ``name``; a final attempt failure naming it (never its value)."""
    directory = get_settings().workflow_secrets_dir
    if not directory:
        raise StepAttemptFailedError(
            f"{what} needs secret {name!r} and DRYDOCK_WORKFLOW_SECRETS_DIR is not set here",
            final=True,
        )
    if "/" in tenant or tenant in (".", ".."):
        raise StepAttemptFailedError(f"tenant {tenant!r} has no secrets directory", final=True)
    path = Path(directory) / tenant / name
    try:
        return path.read_text(encoding="utf-8").rstrip("\r\n")
    except OSError:
        raise StepAttemptFailedError(
            f"{what}: tenant {tenant} has no secret {name!r} (no readable {path})", final=True
        ) from None

"""The runtime queue's Celery tasks: thin wrappers over ``tasks.runtime.lifecycle``."""

from __future__ import annotations

from typing import Any

from adapters.docker_engine import DockerEngineUnavailableError
from adapters.image_pull import RegistryUnavailableError
from adapters.kubernetes import KubernetesUnavailableError
from catalog.runtime import EnforceTrustPayload, LaunchPayload, RolloutPayload, StopPayload
from kernel.context import JobContext
from tasks.runtime import lifecycle, rollouts, trust_enforcement
from tasks.runtime.vm_executor import LibvirtUnavailableError
from workers.base_task import DrydockTask, drydock_task


def launch(payload: LaunchPayload, ctx: JobContext) -> dict[str, Any]:
    return lifecycle.launch(payload, ctx)


def rollout(payload: RolloutPayload, ctx: JobContext) -> dict[str, Any]:
    return rollouts.rollout(payload, ctx)


def stop(payload: StopPayload, ctx: JobContext) -> dict[str, Any]:
    return lifecycle.stop(payload, ctx)


def enforce_trust(payload: EnforceTrustPayload, ctx: JobContext) -> dict[str, Any]:
    return trust_enforcement.enforce_trust(payload, ctx)


# Retried with backoff while the engine, the registry or the Kubernetes API cannot answer (the
# instance stays starting, or draining, and the next attempt picks up from its saved handle); a
# launch that ran to a failed instance is dead-lettered with it.
_TRANSIENT = (
    DockerEngineUnavailableError,
    RegistryUnavailableError,
    KubernetesUnavailableError,
    LibvirtUnavailableError,
)

LAUNCH: DrydockTask = drydock_task("runtime.launch", transient=_TRANSIENT)(launch)
ROLLOUT: DrydockTask = drydock_task("runtime.rollout", transient=_TRANSIENT)(rollout)
STOP: DrydockTask = drydock_task("runtime.stop", transient=_TRANSIENT)(stop)
ENFORCE_TRUST: DrydockTask = drydock_task("runtime.enforce_trust", transient=_TRANSIENT)(
    enforce_trust
)

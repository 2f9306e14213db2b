"""The pushes queue's Celery tasks: thin wrappers over ``tasks.pushes.domain``."""

from __future__ import annotations

from typing import Any

from catalog.pushes import (
    PruneTagsPayload,
    PublishIndexPayload,
    PushImagePayload,
    RotateCredentialsPayload,
)
from kernel.context import JobContext
from tasks.builds.backends import BackendUnavailableError
from tasks.pushes import domain, rotation
from tasks.pushes.credentials import CredentialUnavailableError
from tasks.pushes.errors import RegistryPushError
from workers.base_task import DrydockTask, drydock_task

# Retried with backoff (workers.retry, tenacity's exponential full jitter): registry failures
# whose kind is retryable, a builder that is down, a helper that did not answer.
REGISTRY_TRANSIENT = (RegistryPushError, BackendUnavailableError, CredentialUnavailableError)


def push_image(payload: PushImagePayload, ctx: JobContext) -> dict[str, Any]:
    return domain.push_image(payload, ctx)


def publish_index(payload: PublishIndexPayload, ctx: JobContext) -> dict[str, Any]:
    return domain.publish_index(payload, ctx)


def prune_tags(payload: PruneTagsPayload, ctx: JobContext) -> dict[str, Any]:
    return domain.prune_tags(payload, ctx)


def rotate_credentials(payload: RotateCredentialsPayload, ctx: JobContext) -> dict[str, Any]:
    return rotation.rotate_credentials(payload, job_id=ctx.job_id)


PUSH_IMAGE: DrydockTask = drydock_task(
    "pushes.push_image",
    transient=REGISTRY_TRANSIENT,
    on_retry_scheduled=domain.push_retry_scheduled,
    on_dead_lettered=domain.push_dead_lettered,
    # In the header of the build's chord: Celery counts its finish to start publish_index.
    chord_member=True,
)(push_image)

PUBLISH_INDEX: DrydockTask = drydock_task(
    "pushes.publish_index",
    transient=(*REGISTRY_TRANSIENT, domain.IndexNotReadyError),
    on_dead_lettered=domain.run_dead_lettered,
)(publish_index)

PRUNE_TAGS: DrydockTask = drydock_task("pushes.prune_tags", transient=REGISTRY_TRANSIENT)(
    prune_tags
)

# Not retried: a registry or Kubernetes API that cannot be reached is recorded per credential,
# and Beat's next run probes (and writes the pull secrets) again.
ROTATE_CREDENTIALS: DrydockTask = drydock_task("pushes.rotate_credentials")(rotate_credentials)

"""The pushes queue's Celery tasks: thin wrappers over ``tasks.pushes.domain``."""

from __future__ import annotations

import uuid
from typing import Any

from adapters.credentials import CredentialUnavailableError
from adapters.image_store import BackendUnavailableError
from adapters.registry_errors import RegistryPushError
from catalog.pushes import (
    PruneTagsPayload,
    PublishIndexPayload,
    PushImagePayload,
    RotateCredentialsPayload,
    index_job_id,
)
from kernel.context import JobContext
from kernel.logs import get_logger
from tasks.pushes import domain, rotation
from workers.base_task import DrydockTask, dead_letter_now, drydock_task

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


def push_dead_lettered(exc: BaseException, ctx: JobContext, reason: str) -> None:
    """The dead-letter listener of ``pushes.push_image``: the run fails (``domain``), and its
    index job, which the chord will now never start, is dead-lettered with the reason."""
    message = domain.fail_push_run(exc, ctx, reason)
    if message is None:
        return
    index_job = index_job_id(uuid.UUID(ctx.notes[domain.NOTE_RUN]))
    dead_letter_now(
        "pushes.publish_index",
        index_job,
        0,
        ctx.who,
        error_class="DependencyFailedError",
        message=message,
        traceback=None,
        reason="dependency_failed",
        latency_ms=None,
        log=get_logger(job_id=str(index_job), task="pushes.publish_index"),
    )


PUSH_IMAGE: DrydockTask = drydock_task(
    "pushes.push_image",
    transient=REGISTRY_TRANSIENT,
    on_retry_scheduled=domain.push_retry_scheduled,
    on_dead_lettered=push_dead_lettered,
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

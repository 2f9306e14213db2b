"""``builds.build_image``: a thin Celery task over ``tasks.builds.domain``."""

from __future__ import annotations

import uuid
from collections.abc import Sequence
from typing import Any

from adapters.credentials import CredentialUnavailableError
from adapters.git import SourceFetchError
from adapters.image_store import BackendUnavailableError
from catalog.builds import BuildImagePayload
from catalog.pushes import index_job_id, push_job_id
from dispatch.chord import JobRequest, send_chord
from kernel.context import JobContext
from kernel.platforms import Platform
from tasks.builds.domain import build_image as run_build
from workers.base_task import DrydockTask, drydock_task


def dispatch_pushes(run_id: uuid.UUID, platforms: Sequence[Platform]) -> list[str]:
    """Record and send ``pushes.push_image`` for every platform and, once they all finish,
    ``pushes.publish_index``, through the one dispatch path (a chord). Returns the job ids,
    the index job's last."""
    members = [
        JobRequest(
            "pushes.push_image", push_job_id(run_id, p), {"run_id": str(run_id), "platform": str(p)}
        )
        for p in platforms
    ]
    callback = JobRequest("pushes.publish_index", index_job_id(run_id), {"run_id": str(run_id)})
    sent = send_chord(members, callback, enqueued_by=f"build:{run_id}")
    return [str(job_id) for job_id in sent]


def build_image(payload: BuildImagePayload, ctx: JobContext) -> dict[str, Any]:
    return run_build(payload, ctx, dispatch_pushes)


BUILD_IMAGE: DrydockTask = drydock_task(
    "builds.build_image",
    transient=(SourceFetchError, BackendUnavailableError, CredentialUnavailableError),
)(build_image)

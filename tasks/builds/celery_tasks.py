"""``builds.build_image``: a thin Celery task over ``tasks.builds.domain``."""

from __future__ import annotations

import time
import uuid
from collections.abc import Sequence
from typing import Any

from celery import chord, signature

from catalog import spec_for
from catalog.builds import BuildImagePayload
from kernel.context import JobContext
from kernel.platforms import Platform
from kernel.topology import ENQUEUED_AT_HEADER
from models import jobs as job_store
from models.db import session_scope
from tasks.builds.backends import BackendUnavailableError
from tasks.builds.domain import build_image as run_build
from tasks.builds.source import SourceFetchError
from tasks.pushes.credentials import CredentialUnavailableError
from tasks.pushes.domain import index_job_id, push_job_id
from workers.base_task import DrydockTask, drydock_task


def dispatch_pushes(run_id: uuid.UUID, platforms: Sequence[Platform]) -> list[str]:
    """Record and send ``pushes.push_image`` for every platform and, once they all finish,
    ``pushes.publish_index`` (a Celery chord). Returns the job ids, the index job's last."""
    members = [
        ("pushes.push_image", push_job_id(run_id, p), {"run_id": str(run_id), "platform": str(p)})
        for p in platforms
    ]
    callback = ("pushes.publish_index", index_job_id(run_id), {"run_id": str(run_id)})
    with session_scope() as session:
        for name, job_id, kwargs in [*members, callback]:
            job_store.create_job(
                session,
                job_store.NewJob(
                    id=job_id,
                    task_name=name,
                    queue=spec_for(name).queue,
                    payload=kwargs,
                    enqueued_by=f"build:{run_id}",
                ),
            )

    def immutable(name: str, job_id: uuid.UUID, kwargs: dict[str, Any]) -> Any:
        queue = spec_for(name).queue
        return signature(
            name,
            kwargs=kwargs,
            immutable=True,
            task_id=str(job_id),
            queue=queue,
            routing_key=queue,
            headers={ENQUEUED_AT_HEADER: time.time()},
        )

    chord([immutable(*member) for member in members], immutable(*callback)).apply_async()
    return [str(job_id) for _, job_id, _ in [*members, callback]]


def build_image(payload: BuildImagePayload, ctx: JobContext) -> dict[str, Any]:
    return run_build(payload, ctx, dispatch_pushes)


BUILD_IMAGE: DrydockTask = drydock_task(
    "builds.build_image",
    transient=(SourceFetchError, BackendUnavailableError, CredentialUnavailableError),
)(build_image)

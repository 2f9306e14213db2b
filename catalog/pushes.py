"""The pushes queue's job contract: its payloads, and the deterministic ids of a build run's
push jobs (the builds queue sends them, the pushes queue dead-letters the index job by id)."""

from __future__ import annotations

import uuid

from pydantic import Field, field_validator

from catalog.builds import RegistryHost, RepositoryPath, checked_registry_host
from kernel.payload import Payload
from kernel.platforms import Platform

# The push jobs of a build run have ids derived from it: sending the chord again (a build
# redelivered between sending it and recording that) cannot make a second set of jobs.
PUSH_JOB_NAMESPACE = uuid.UUID("0f5f2b8e-1c5a-4d3e-9c71-3a0b5d7e9f12")


def push_job_id(run_id: uuid.UUID, platform: Platform) -> uuid.UUID:
    """The job id of ``pushes.push_image`` for one platform of build run ``run_id``."""
    return uuid.uuid5(PUSH_JOB_NAMESPACE, f"{run_id}/push/{platform}")


def index_job_id(run_id: uuid.UUID) -> uuid.UUID:
    """The job id of ``pushes.publish_index`` for build run ``run_id``."""
    return uuid.uuid5(PUSH_JOB_NAMESPACE, f"{run_id}/publish_index")


class PushImagePayload(Payload):
    run_id: uuid.UUID = Field(description="The build run whose image is pushed.")
    platform: str = Field(description="Which of the run's platforms (os/arch[/variant]).")

    @field_validator("platform")
    @classmethod
    def _platform(cls, value: str) -> str:
        return str(Platform.parse(value))


class PublishIndexPayload(Payload):
    run_id: uuid.UUID = Field(
        description="The build run whose pushed platform images become one index tag."
    )


class PruneTagsPayload(Payload):
    registry: RegistryHost = Field(description="Registry host[:port].")
    repository: RepositoryPath = Field(description="Repository whose tags are pruned.")
    dry_run: bool = Field(
        True,
        description="List what would be deleted and delete nothing (the default: say false).",
    )


class RotateCredentialsPayload(Payload):
    hosts: list[str] | None = Field(
        None,
        min_length=1,
        description=(
            "Registry hosts[:port] whose credentials are probed (and rotated when due); "
            "default: every stored credential."
        ),
    )
    force: bool = Field(
        False,
        description=(
            "Rotate even credentials that are not due (static ones are reported as unsupported)."
        ),
    )

    @field_validator("hosts")
    @classmethod
    def _hosts(cls, value: list[str] | None) -> list[str] | None:
        if value is None:
            return None
        # Sorted and unique: the same request names the same hosts in the same order.
        return sorted({checked_registry_host(host) for host in value})

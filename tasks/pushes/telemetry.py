"""Registry telemetry: what happened on the way to the registry, one event per step, each
checked against a versioned schema before it is written.

An event that breaks its schema is a bug in the code emitting it, not bad input: ``validated``
raises ``TelemetrySchemaError`` and nothing is written. The schemas are published with
``drydock schema --registry-events`` so dashboards and alerting can rely on them; a change that is
not backwards compatible bumps ``SCHEMA_VERSION``.
"""

from __future__ import annotations

import uuid
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationError

from adapters.registry_errors import PushErrorKind
from kernel.errors import DrydockError, field_problems, list_problems
from kernel.logs import get_logger
from models.builds import RegistryEvent, RegistryEventKind
from models.db import session_scope

SCHEMA_VERSION = 1

DIGEST_PATTERN = r"^sha256:[0-9a-f]{64}$"


class TelemetrySchemaError(DrydockError):
    """An event does not match its schema: a bug in the code that emitted it."""


class _Event(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)

    platform: str | None = Field(
        description="The target platform (os/arch) the event is about; null for a whole request."
    )


class TagStarted(_Event):
    source: str = Field(description="The local image being tagged.")
    target: str = Field(description="The registry reference it is tagged as.")


class TagSucceeded(_Event):
    target: str


class TagFailed(_Event):
    target: str
    error: str


class PushStarted(_Event):
    target: str
    attempt: int = Field(ge=1, description="The job's attempt (1 for the first).")
    backend: Literal["docker", "buildah"]
    authenticated: bool = Field(description="Whether credentials were sent.")


class PushRetry(_Event):
    target: str
    attempt: int = Field(ge=1, description="The attempt that failed.")
    delay_seconds: float = Field(ge=0, description="Wait before the next try (0: at once).")
    error_kind: PushErrorKind


class PushFailed(_Event):
    target: str
    attempt: int = Field(ge=1)
    error_kind: PushErrorKind
    retryable: bool
    error: str = Field(max_length=2000)


class PushSucceeded(_Event):
    target: str
    digest: str = Field(pattern=DIGEST_PATTERN)
    bytes: int = Field(ge=0, description="Layer bytes sent (0 when the registry had them all).")
    layers_pushed: int = Field(ge=0)
    layers_reused: int = Field(ge=0)
    duration_ms: float = Field(ge=0)


class AuthRefresh(_Event):
    registry: str
    provider: Literal["static", "htpasswd", "command"]
    outcome: Literal["refreshed", "unavailable"]
    error: str | None = None


class IndexPublished(_Event):
    target: str
    digest: str = Field(pattern=DIGEST_PATTERN)
    platforms: list[str] = Field(min_length=1)


class TagDeleted(_Event):
    repository: str
    digest: str = Field(pattern=DIGEST_PATTERN)
    tags: list[str]


SCHEMAS: dict[RegistryEventKind, type[_Event]] = {
    RegistryEventKind.TAG_STARTED: TagStarted,
    RegistryEventKind.TAG_SUCCEEDED: TagSucceeded,
    RegistryEventKind.TAG_FAILED: TagFailed,
    RegistryEventKind.PUSH_STARTED: PushStarted,
    RegistryEventKind.PUSH_RETRY: PushRetry,
    RegistryEventKind.PUSH_FAILED: PushFailed,
    RegistryEventKind.PUSH_SUCCEEDED: PushSucceeded,
    RegistryEventKind.AUTH_REFRESH: AuthRefresh,
    RegistryEventKind.INDEX_PUBLISHED: IndexPublished,
    RegistryEventKind.TAG_DELETED: TagDeleted,
}


def validated(kind: RegistryEventKind | str, fields: dict[str, Any]) -> dict[str, Any]:
    """The event's detail in its JSON form, or TelemetrySchemaError naming what is wrong."""
    try:
        kind = RegistryEventKind(kind)
        model = SCHEMAS[kind]
    except (KeyError, ValueError):
        raise TelemetrySchemaError(f"no schema for registry event kind {kind!r}") from None
    try:
        return model.model_validate(fields).model_dump(mode="json")
    except ValidationError as exc:
        problems = list_problems(field_problems(exc, whole="(event)"))
        raise TelemetrySchemaError(
            f"registry event {kind.value} v{SCHEMA_VERSION} breaks its schema: {problems}"
        ) from None


def record(
    kind: RegistryEventKind,
    *,
    job_id: uuid.UUID,
    run_id: uuid.UUID | None,
    **fields: Any,
) -> dict[str, Any]:
    """Validate and write one event (a ``registry_events`` row and a JSON log line)."""
    detail = validated(kind, fields)
    with session_scope() as session:
        session.add(
            RegistryEvent(
                job_id=job_id,
                run_id=run_id,
                kind=kind.value,
                schema_version=SCHEMA_VERSION,
                platform=detail.get("platform"),
                detail=detail,
            )
        )
    get_logger(job_id=str(job_id)).info(
        f"registry.{kind.value}",
        action=kind.value,
        run_id=str(run_id) if run_id else None,
        **detail,
    )
    return detail


def json_schemas() -> dict[str, Any]:
    """Every event's JSON Schema, by kind, with the schema version."""
    return {
        "schema_version": SCHEMA_VERSION,
        "events": {kind.value: model.model_json_schema() for kind, model in SCHEMAS.items()},
    }

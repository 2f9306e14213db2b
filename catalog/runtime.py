"""Payloads of the runtime queue's tasks."""

from __future__ import annotations

import uuid

from pydantic import Field

from kernel.payload import Payload

SERVER_NAME_PATTERN = r"^[a-z0-9][a-z0-9_.-]{0,99}$"
DIGEST_PATTERN = r"^sha256:[0-9a-f]{64}$"
TIER_PATTERN = r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,99}$"
# host[:port]/path, as images are named (the registry host first, then lower-case path parts).
REPOSITORY_PATTERN = r"^[A-Za-z0-9.-]+(:[0-9]+)?(/[a-z0-9]+([._-][a-z0-9]+)*)+$"
PROBE_PATH_PATTERN = r"^/[^\s]{0,199}$"


class LaunchPayload(Payload):
    tenant: str = Field(min_length=1, max_length=100, description="The server's tenant.")
    server: str = Field(
        min_length=1, max_length=200, description="The server: its id, or its name."
    )
    digest: str = Field(pattern=DIGEST_PATTERN, description="The release's image digest.")
    tier: str | None = Field(
        None, pattern=TIER_PATTERN, description="The release's tier; none: its newest."
    )
    target: str | None = Field(
        None, max_length=100, description="Only this runtime target; none: chosen by policy."
    )
    reason: str = Field("", max_length=2000, description="Why: kept in the instance's history.")


class RolloutPayload(Payload):
    tenant: str = Field(min_length=1, max_length=100, description="The server's tenant.")
    server: str = Field(
        min_length=1, max_length=200, description="The server: its id, or its name."
    )
    digest: str = Field(pattern=DIGEST_PATTERN, description="The release rolled out.")
    tier: str = Field(pattern=TIER_PATTERN, description="The tier it is rolled out at.")
    analysis_seconds: float | None = Field(
        None,
        ge=0,
        le=3600,
        description="How long the new instance is probed before the shift; none: the tier's rule.",
    )
    reason: str = Field("", max_length=2000, description="Why: kept in the release history.")


class StopPayload(Payload):
    instance_id: uuid.UUID = Field(description="The instance to stop.")
    reason: str = Field("", max_length=2000, description="Why: kept in the instance's history.")


class EnforceTrustPayload(Payload):
    limit: int = Field(200, ge=1, le=10_000, description="Instances stopped per sweep, at most.")

"""Payloads of the evaluation queue's tasks."""

from __future__ import annotations

import re
import uuid

from pydantic import Field, field_validator

from catalog.builds import RegistryHost, RepositoryPath
from kernel.payload import Payload

_DIGEST = re.compile(r"^sha256:[0-9a-f]{64}$")
_TIER = re.compile(r"^[a-z0-9][a-z0-9_.-]{0,99}$")


def checked_digest(value: str) -> str:
    if not _DIGEST.fullmatch(value):
        raise ValueError("must be an image digest: sha256: and 64 lowercase hex digits")
    return value


def checked_tier(value: str) -> str:
    if not _TIER.fullmatch(value):
        raise ValueError(
            "must be a tier name: lowercase letters, digits, '_', '.', '-', up to 100 characters"
        )
    return value


class RefreshCertificationPayload(Payload):
    digest: str = Field(description="The image digest evaluated (sha256:...).")
    tier: str = Field(description="The evaluation tier whose suite runs.")
    registry: RegistryHost = Field(description="Registry host[:port] the image is pulled from.")
    repository: RepositoryPath = Field(description="Repository of the image in that registry.")
    certification_id: uuid.UUID | None = Field(
        None, description="The certification this refresh renews (Beat sets it); none: a first."
    )

    @field_validator("digest")
    @classmethod
    def _digest(cls, value: str) -> str:
        return checked_digest(value)

    @field_validator("tier")
    @classmethod
    def _tier(cls, value: str) -> str:
        return checked_tier(value)


class SweepCertificationsPayload(Payload):
    limit: int | None = Field(
        None,
        ge=1,
        le=100_000,
        description="Most refreshes to enqueue; default DRYDOCK_EVALUATION_REFRESH_BATCH.",
    )


class RecomputeAnomaliesPayload(Payload):
    window_seconds: int | None = Field(
        None, gt=0, description="The rolling window; default DRYDOCK_ANOMALY_WINDOW_SECONDS."
    )

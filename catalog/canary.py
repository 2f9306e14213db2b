from __future__ import annotations

from datetime import datetime
from typing import Any

from pydantic import Field

from kernel.payload import Payload


class CanaryPayload(Payload):
    message: str = Field("ping", max_length=1000, description="Echoed back in the result.")
    sleep_seconds: float = Field(
        0.0, ge=0, le=600, description="Work for this long, reporting progress each second."
    )
    fail_attempts: int = Field(
        0,
        ge=0,
        le=100,
        description="Fail the first N attempts with a transient error (rehearses retries).",
    )
    fail_until: datetime | None = Field(
        None,
        description="Fail with a transient error until this time (rehearses an outage that ends).",
    )
    fail_permanently: bool = Field(
        False, description="Fail with a non-transient error (rehearses the dead-letter path)."
    )
    ignore_soft_limit: bool = Field(
        False,
        description=(
            "Ignore the soft time limit, as code stuck in a C call would (rehearses the hard "
            "limit: the worker kills the process and the job is dead-lettered)."
        ),
    )
    data: dict[str, Any] = Field(
        default_factory=dict,
        description="Free-form data echoed back (secret-looking keys are "
        "redacted wherever the job is recorded).",
    )

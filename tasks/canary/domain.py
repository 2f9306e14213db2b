"""What the canary does, with no broker or database: testable as a plain function."""

from __future__ import annotations

import time
from collections.abc import Callable
from datetime import UTC, datetime
from typing import Any

from catalog.canary import CanaryPayload
from kernel.errors import DrydockError, TransientError


class CanaryTransientError(TransientError):
    """A rehearsed transient failure."""


class CanaryPermanentError(DrydockError):
    """A rehearsed permanent failure."""


def run_canary(
    payload: CanaryPayload,
    attempt: int,
    progress: Callable[[float, str], None],
    sleep: Callable[[float], None] = time.sleep,
    now: Callable[[], datetime] = lambda: datetime.now(UTC),
) -> dict[str, Any]:
    if payload.fail_permanently:
        raise CanaryPermanentError("canary asked to fail permanently")
    if attempt <= payload.fail_attempts:
        raise CanaryTransientError(
            f"canary rehearsing a transient failure on attempt {attempt} of "
            f"{payload.fail_attempts} planned"
        )
    if payload.fail_until is not None and now() < _aware(payload.fail_until):
        raise CanaryTransientError(
            f"canary rehearsing an outage until {payload.fail_until.isoformat()}"
        )
    remaining = payload.sleep_seconds
    while remaining > 0:
        step = min(1.0, remaining)
        sleep(step)
        remaining -= step
        done = payload.sleep_seconds - remaining
        progress(done / payload.sleep_seconds * 100, f"slept {done:.1f}s")
    return {"message": payload.message, "attempt": attempt, "data": payload.data}


def _aware(moment: datetime) -> datetime:
    return moment if moment.tzinfo else moment.replace(tzinfo=UTC)

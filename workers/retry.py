"""Retry policy as a pure function: given the error and the attempt, retry after N seconds or stop.

Only errors a task declares transient are retried; everything else (bugs, invalid input,
permanent refusals) goes straight to the dead-letter queue. Delays are exponential with full
jitter, computed by tenacity, inside a retry budget.
"""

from __future__ import annotations

from dataclasses import dataclass
from enum import StrEnum

from tenacity import RetryCallState, wait_random_exponential


class Verdict(StrEnum):
    RETRY = "retry"
    # A transient error that has used up the budget.
    BUDGET_EXHAUSTED = "budget_exhausted"
    # An error the task did not declare transient: retrying cannot help.
    PERMANENT = "permanent"


@dataclass(frozen=True)
class RetryPolicy:
    max_attempts: int
    base_seconds: float
    max_seconds: float

    def __post_init__(self) -> None:
        if self.max_attempts < 1:
            raise ValueError("max_attempts must be at least 1")
        if self.base_seconds <= 0 or self.max_seconds <= 0:
            raise ValueError("backoff seconds must be positive")


@dataclass(frozen=True)
class RetryDecision:
    verdict: Verdict
    delay_seconds: float = 0.0

    @property
    def retry(self) -> bool:
        return self.verdict is Verdict.RETRY


def decide(
    error: BaseException,
    attempt: int,
    transient: tuple[type[BaseException], ...],
    policy: RetryPolicy,
) -> RetryDecision:
    """Decide what to do after ``attempt`` (1-based) failed with ``error``.

    An error of a transient type can still say it is not worth retrying: one whose
    ``retryable`` attribute is False (a registry's "denied" is a ``RegistryPushError`` like a
    5xx, but no later attempt will fix it) is permanent.
    """
    if not isinstance(error, transient) or getattr(error, "retryable", True) is False:
        return RetryDecision(Verdict.PERMANENT)
    if attempt >= policy.max_attempts:
        return RetryDecision(Verdict.BUDGET_EXHAUSTED)
    return RetryDecision(Verdict.RETRY, backoff_seconds(attempt, policy))


def backoff_seconds(attempt: int, policy: RetryPolicy) -> float:
    """Full jitter: uniform in [0, min(max, base * 2**(attempt-1))]."""
    wait = wait_random_exponential(multiplier=policy.base_seconds, max=policy.max_seconds)
    state = RetryCallState(retry_object=None, fn=None, args=(), kwargs={})  # type: ignore[arg-type]
    state.attempt_number = attempt
    return float(wait(state))

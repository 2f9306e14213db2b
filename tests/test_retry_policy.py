"""The retry policy, with no broker: what is retried, for how long, and when it stops."""

from __future__ import annotations

import pytest

from tasks.canary.domain import CanaryPermanentError, CanaryTransientError
from workers.retry import RetryPolicy, Verdict, backoff_seconds, decide

POLICY = RetryPolicy(max_attempts=4, base_seconds=2.0, max_seconds=10.0)
TRANSIENT = (CanaryTransientError,)


def test_undeclared_errors_are_never_retried() -> None:
    decision = decide(CanaryPermanentError("no"), 1, TRANSIENT, POLICY)
    assert decision.verdict is Verdict.PERMANENT
    assert not decision.retry
    assert decide(KeyError("bug"), 1, TRANSIENT, POLICY).verdict is Verdict.PERMANENT


def test_declared_transient_errors_retry_until_the_budget_is_spent() -> None:
    for attempt in (1, 2, 3):
        decision = decide(CanaryTransientError("later"), attempt, TRANSIENT, POLICY)
        assert decision.retry, attempt
    last = decide(CanaryTransientError("later"), 4, TRANSIENT, POLICY)
    assert last.verdict is Verdict.BUDGET_EXHAUSTED


@pytest.mark.parametrize(
    ("attempt", "ceiling"), [(1, 2.0), (2, 4.0), (3, 8.0), (4, 10.0), (9, 10.0)]
)
def test_backoff_is_full_jitter_under_an_exponential_ceiling(attempt: int, ceiling: float) -> None:
    delays = [backoff_seconds(attempt, POLICY) for _ in range(400)]
    assert all(0 <= d <= ceiling for d in delays)
    # Full jitter spreads over the whole window, not just near its top.
    assert min(delays) < ceiling * 0.25
    assert max(delays) > ceiling * 0.75


def test_a_policy_without_attempts_is_refused() -> None:
    with pytest.raises(ValueError, match="max_attempts"):
        RetryPolicy(max_attempts=0, base_seconds=1, max_seconds=1)

"""Nothing is lost when a worker dies: its job comes back and completes exactly once."""

from __future__ import annotations

import os
import signal
import time
from collections.abc import Callable

import pytest
from sqlalchemy import select

from drydock.client import enqueue
from models.db import session_scope
from models.tables import Job, JobEvent
from tests.conftest import TEST_VISIBILITY_TIMEOUT, WorkerProcess, wait_for_job

pytestmark = pytest.mark.fleet


def wait_until_running(job_id: object, timeout: float = 30) -> Job:
    job: Job = wait_for_job(job_id, statuses=("running",), timeout=timeout)
    return job


def outcome_events(job_id: object) -> list[tuple[str, int]]:
    with session_scope() as session:
        rows = session.execute(
            select(JobEvent.kind, JobEvent.attempt)
            .where(JobEvent.job_id == job_id)
            .order_by(JobEvent.id)
        ).all()
    return [(kind, attempt) for kind, attempt in rows if kind not in ("progress",)]


def test_a_worker_killed_mid_job_gives_the_job_back_and_it_completes_once(
    worker_factory: Callable[..., WorkerProcess],
) -> None:
    doomed = worker_factory("doomed")
    job = enqueue("remediation.canary", {"sleep_seconds": 3, "message": "survive"})
    running = wait_until_running(job.id)
    assert running.worker == doomed.hostname
    time.sleep(0.5)
    doomed.kill()  # SIGKILL to the whole worker: no warm shutdown, no ack

    rescuer = worker_factory("rescuer")
    # Redis hands the unacknowledged message out again once the visibility timeout passes.
    row = wait_for_job(job.id, timeout=TEST_VISIBILITY_TIMEOUT * 4)
    assert row.status == "succeeded"
    assert row.worker == rescuer.hostname
    assert row.attempts == 2
    events = outcome_events(job.id)
    assert events == [("enqueued", 0), ("started", 1), ("started", 2), ("succeeded", 2)]
    with session_scope() as session:
        assert len(session.execute(select(Job)).scalars().all()) == 1
    # Still exactly one outcome after the rescuer has had time to see any stray redelivery.
    time.sleep(2)
    assert outcome_events(job.id).count(("succeeded", 2)) == 1


def test_a_pool_process_killed_mid_job_is_requeued_at_once(
    worker_factory: Callable[..., WorkerProcess],
) -> None:
    worker = worker_factory("survivor")
    job = enqueue("remediation.canary", {"sleep_seconds": 2})
    running = wait_until_running(job.id)
    assert running.worker_pid is not None and running.worker_pid != worker.proc.pid
    os.kill(running.worker_pid, signal.SIGKILL)  # only the pool process that runs the job
    # reject_on_worker_lost: the message is requeued now, not after the visibility timeout.
    row = wait_for_job(job.id, timeout=TEST_VISIBILITY_TIMEOUT - 2)
    assert row.status == "succeeded" and row.attempts == 2
    assert [k for k, _ in outcome_events(job.id)].count("succeeded") == 1


def test_a_worker_that_cannot_reach_the_store_hands_jobs_back(
    worker_factory: Callable[..., WorkerProcess],
) -> None:
    job = enqueue("remediation.canary", {"message": "patience"})
    unreachable = "postgresql+psycopg://drydock@127.0.0.1:1/drydock"
    blind = worker_factory("blind", env={"DRYDOCK_DATABASE_URL": unreachable})
    deadline = time.monotonic() + 30
    while blind.log().count("job.store_unavailable") < 3:
        assert time.monotonic() < deadline, blind.log()[-2000:]
        time.sleep(0.2)
    with session_scope() as session:
        untouched = session.get(Job, job.id)
        assert untouched is not None and untouched.status == "queued"
    blind.stop()  # warm shutdown gives its held message back to Redis

    worker_factory("sighted")
    row = wait_for_job(job.id, timeout=TEST_VISIBILITY_TIMEOUT * 3)
    assert row.status == "succeeded" and row.attempts == 1


def test_a_job_killed_at_the_hard_time_limit_is_dead_lettered_not_left_running(
    worker_factory: Callable[..., WorkerProcess],
) -> None:
    from tests.conftest import TEST_TIME_LIMIT

    worker_factory("strict")
    job = enqueue(
        "remediation.canary", {"sleep_seconds": TEST_TIME_LIMIT + 10, "ignore_soft_limit": True}
    )
    row = wait_for_job(job.id, timeout=TEST_TIME_LIMIT + 15)
    assert row.status == "dead_lettered"
    assert row.error_class == "TimeLimitExceeded"
    assert f"hard time limit of {TEST_TIME_LIMIT}" in row.error
    kinds = [kind for kind, _ in outcome_events(job.id)]
    assert kinds == ["enqueued", "started", "failed", "dead_lettered"]

"""Nothing is lost when a worker dies: its job comes back and completes exactly once."""

from __future__ import annotations

import json
import os
import signal
import time
from collections.abc import Callable

import pytest
from sqlalchemy import select

from dispatch.enqueue import enqueue
from kernel.topology import WORK_QUEUES
from models.db import session_scope
from models.jobs import Job, JobEvent
from tests.conftest import (
    PRIVATE_QUEUE as PRIVATE,
)
from tests.conftest import (
    TEST_TIME_LIMIT,
    TEST_VISIBILITY_TIMEOUT,
    WorkerProcess,
    wait_for_job,
)

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
    # The orphan sweep gives the message back once the dead worker's heartbeat is older than
    # DRYDOCK_ORPHAN_AFTER_SECONDS (the visibility timeout is only the backstop).
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


def test_a_dead_workers_job_is_back_long_before_the_visibility_timeout(
    worker_factory: Callable[..., WorkerProcess],
) -> None:
    """The sweep, not the visibility timeout: back within DRYDOCK_ORPHAN_AFTER_SECONDS (5 s in
    the tests) plus a sweep, where the visibility timeout would take 32 s."""
    doomed = worker_factory("doomed-early")
    job = enqueue("remediation.canary", {"sleep_seconds": 1, "message": "come back"})
    running = wait_until_running(job.id)
    assert running.worker == doomed.hostname
    doomed.kill()
    killed_at = time.monotonic()

    rescuer = worker_factory("rescuer-early")
    row = wait_for_job(job.id, timeout=TEST_VISIBILITY_TIMEOUT - 4)
    back_after = time.monotonic() - killed_at
    assert row.status == "succeeded"
    assert row.worker == rescuer.hostname
    assert row.attempts == 2
    assert back_after < TEST_VISIBILITY_TIMEOUT - 4
    assert "job.orphan_requeued" in rescuer.log() + _session_worker_log()


def _session_worker_log() -> str:
    """Whichever worker held the sweep's lock logged the requeue: perhaps the session's."""
    from tests.conftest import _state

    return "".join(
        path.read_text(errors="replace") for path in _state["base"].glob("worker-shared-*.log")
    )


def test_a_live_workers_long_job_is_not_taken_from_it(
    worker_factory: Callable[..., WorkerProcess],
) -> None:
    """A job running longer than DRYDOCK_ORPHAN_AFTER_SECONDS on a worker that beats is its
    own: no second attempt, though another worker is idle on the same queue."""
    limits = json.dumps(
        {**dict.fromkeys(WORK_QUEUES, TEST_TIME_LIMIT), "builds": 30, "pushes": 30, PRIVATE: 20}
    )
    requeues_before = _session_worker_log().count("job.orphan_requeued")
    holder = worker_factory("holder", env={"DRYDOCK_TIME_LIMITS": limits})
    job = enqueue("remediation.canary", {"sleep_seconds": 9, "message": "mine"})
    running = wait_until_running(job.id)
    assert running.worker == holder.hostname
    idle = worker_factory("idle", env={"DRYDOCK_TIME_LIMITS": limits})
    row = wait_for_job(job.id, timeout=30)
    assert row.status == "succeeded"
    assert row.worker == holder.hostname
    assert row.attempts == 1
    assert "job.orphan_requeued" not in idle.log() + holder.log()
    assert _session_worker_log().count("job.orphan_requeued") == requeues_before


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

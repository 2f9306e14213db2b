"""Progress of long jobs: the ``progress`` event, the Celery ``PROGRESS`` state, and
``drydock job ID --follow``, against real Redis, PostgreSQL and worker processes."""

from __future__ import annotations

import os
import select
import signal
import subprocess
import sys
import time
import uuid
from typing import Any, cast

import pytest
import redis
import structlog.testing
from celery.result import AsyncResult
from sqlalchemy import select as sql_select

from dispatch.enqueue import enqueue
from kernel.context import WorkerIdentity
from kernel.redaction import REDACTED
from kernel.settings import get_settings
from models import jobs as job_store
from models.db import session_scope
from models.jobs import JobEvent
from tests.conftest import WorkerProcess, wait_for_job
from workers.app import app
from workers.base_task import PROGRESS_STATE, DrydockTask
from workers.base_task import WorkerJobContext as JobContext

pytestmark = pytest.mark.fleet


def drydock(*args: str, timeout: float = 60) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "drydock.cli", *args],
        capture_output=True,
        text=True,
        env={**os.environ, "COLUMNS": "250"},
        timeout=timeout,
    )


def broker() -> redis.Redis[bytes]:
    return redis.Redis.from_url(get_settings().broker_url)


def state_key(job_id: uuid.UUID) -> str:
    return f"celery-task-meta-{job_id}"


def wait_for_state(job_id: uuid.UUID, state: str, timeout: float = 10) -> AsyncResult[Any]:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        result: AsyncResult[Any] = AsyncResult(str(job_id), app=app)
        if result.state == state:
            return result
        time.sleep(0.05)
    raise AssertionError(f"job {job_id} did not reach the Celery state {state} in {timeout}s")


def progress_events(job_id: uuid.UUID) -> list[dict[str, Any]]:
    with session_scope() as session:
        events = session.execute(
            sql_select(JobEvent)
            .where(JobEvent.job_id == job_id, JobEvent.kind == "progress")
            .order_by(JobEvent.id)
        ).scalars()
        return [dict(event.detail) for event in events]


# ---- the Celery state --------------------------------------------------------------------------


def test_a_running_job_shows_its_progress_as_a_celery_state(fleet: WorkerProcess) -> None:
    job = enqueue("builds.canary", {"sleep_seconds": 3})
    # Enqueueing subscribes to nothing: nobody waits on a Celery result here.
    assert broker().pubsub_channels("celery-task-meta-*") == []

    running = wait_for_state(job.id, PROGRESS_STATE)
    info = running.info
    assert 0 < info["percent"] <= 100
    assert info["message"].startswith("slept ")
    assert info["job_id"] == str(job.id) and info["attempt"] == 1
    assert 0 < broker().ttl(state_key(job.id)) <= 600

    assert wait_for_job(job.id).status == "succeeded"
    # The outcome is in PostgreSQL only: no result in Redis, and the progress state is gone.
    assert AsyncResult(str(job.id), app=app).state == "PENDING"
    assert not broker().exists(state_key(job.id))
    assert [e["percent"] for e in progress_events(job.id)] == [33.3, 66.7, 100.0]


def test_outcomes_retries_and_failures_store_nothing_in_redis(fleet: WorkerProcess) -> None:
    jobs = [
        enqueue("builds.canary", {}),
        enqueue("pushes.canary", {"fail_attempts": 1, "sleep_seconds": 1}),
        enqueue("attestation.canary", {"fail_permanently": True}),
    ]
    assert [wait_for_job(job.id).status for job in jobs] == [
        "succeeded",
        "succeeded",
        "dead_lettered",
    ]
    assert not [key for job in jobs for key in broker().keys(state_key(job.id))]
    for job in jobs:
        assert AsyncResult(str(job.id), app=app).state == "PENDING"


# ---- JobContext.progress -----------------------------------------------------------------------


def _context(job_id: uuid.UUID, task: DrydockTask | None) -> JobContext:
    with session_scope() as session:
        job_store.create_job(
            session,
            job_store.NewJob(id=job_id, task_name="builds.canary", queue="builds", payload={}),
        )
    who = WorkerIdentity("test@host", os.getpid(), "builds")
    return JobContext(job_id, 1, who, ("region",), _task=task, _task_id=str(job_id))


def _canary_task() -> DrydockTask:
    from tasks.canary.celery_tasks import CANARIES

    return CANARIES["builds"]


def test_progress_secrets_are_redacted_in_the_event_and_the_celery_state(
    clean_state: None,
) -> None:
    job_id = uuid.uuid4()
    ctx = _context(job_id, _canary_task())
    ctx.progress(42.44, "uploading", api_token="tok-s3cret", region="eu-secret", layer=3)

    expected = {
        "percent": 42.4,
        "message": "uploading",
        "api_token": REDACTED,
        "region": REDACTED,  # one of the context's extra secret names
        "layer": 3,
    }
    assert progress_events(job_id) == [expected]
    state: AsyncResult[Any] = AsyncResult(str(job_id), app=app)
    assert state.state == PROGRESS_STATE
    assert state.info == {**expected, "job_id": str(job_id), "attempt": 1}
    raw = broker().get(state_key(job_id)) or b""
    assert b"tok-s3cret" not in raw and b"eu-secret" not in raw

    ctx.end_attempt()
    assert AsyncResult(str(job_id), app=app).state == "PENDING"


def test_percent_is_none_or_clamped_to_0_100_and_nonsense_is_refused(clean_state: None) -> None:
    job_id = uuid.uuid4()
    ctx = _context(job_id, None)
    ctx.progress(None, "counting")
    ctx.progress(150, "over")
    ctx.progress(-3, "under")
    ctx.progress(99.96, "rounded")
    assert [e["percent"] for e in progress_events(job_id)] == [None, 100.0, 0.0, 100.0]
    with pytest.raises(ValueError, match="from 0 to 100"):
        ctx.progress(float("nan"), "nan")
    with pytest.raises(TypeError, match="not str"):
        ctx.progress("50", "text")  # type: ignore[arg-type]
    with pytest.raises(TypeError, match="not bool"):
        ctx.progress(True, "bool")
    assert len(progress_events(job_id)) == 4


class _DownBackend:
    def forget(self, task_id: str) -> None:
        raise redis.ConnectionError("Redis is down")


class _RedisDownTask:
    """A task whose result backend cannot be reached."""

    backend = _DownBackend()

    def update_state(self, **_: Any) -> None:
        raise redis.ConnectionError("Redis is down")


def test_a_failing_celery_state_never_fails_the_job(clean_state: None) -> None:
    job_id = uuid.uuid4()
    ctx = _context(job_id, cast(DrydockTask, _RedisDownTask()))
    with structlog.testing.capture_logs() as logged:
        ctx.progress(10, "still going")
        ctx.end_attempt()

    # The event, which is the record, is there; each failure is a warning in the log.
    assert progress_events(job_id) == [{"percent": 10.0, "message": "still going"}]
    failures = [line for line in logged if line["event"] == "job.progress_state_failed"]
    assert [line["state_operation"] for line in failures] == ["set", "clear"]
    assert all(line["error"] == "ConnectionError: Redis is down" for line in failures)


# ---- drydock job ID --follow -------------------------------------------------------------------


def test_follow_shows_progress_and_exits_0_when_the_job_succeeds(fleet: WorkerProcess) -> None:
    job = enqueue("builds.canary", {"sleep_seconds": 2.5, "message": "followed"})
    result = drydock("job", str(job.id), "--follow")
    assert result.returncode == 0, result.stdout + result.stderr
    lines = result.stdout.splitlines()
    assert lines[0].startswith(f"builds.canary {job.id}")
    kinds = [line.split()[2] for line in lines if line[:2] == "20" and len(line.split()) > 2]
    assert kinds == ["enqueued", "started", "progress", "progress", "progress", "succeeded"]
    for fragment in ("40% slept 1.0s", "80% slept 2.0s", "100% slept 2.5s", fleet.hostname):
        assert fragment in result.stdout
    assert lines[-1].startswith("succeeded after 1 attempt: result {")
    assert '"message": "followed"' in lines[-1]


def test_follow_shows_a_retry_and_the_next_attempt(fleet: WorkerProcess) -> None:
    job = enqueue("pushes.canary", {"fail_attempts": 1, "sleep_seconds": 1})
    result = drydock("job", str(job.id), "--follow")
    assert result.returncode == 0, result.stdout + result.stderr
    assert "CanaryTransientError" in result.stdout and '"next_attempt": 2' in result.stdout
    assert "succeeded after 2 attempts" in result.stdout


def test_follow_exits_1_with_the_error_when_the_job_is_dead_lettered(fleet: WorkerProcess) -> None:
    job = enqueue("attestation.canary", {"fail_permanently": True})
    result = drydock("job", str(job.id), "--follow")
    assert result.returncode == 1, result.stdout + result.stderr
    assert (
        "dead-lettered after 1 attempt: CanaryPermanentError: canary asked to fail permanently"
        in result.stdout
    )
    assert "Traceback" not in result.stderr


def test_follow_gives_up_at_its_timeout_with_124_and_the_job_carries_on(
    fleet: WorkerProcess,
) -> None:
    job = enqueue("builds.canary", {"sleep_seconds": 3})
    started = time.monotonic()
    result = drydock("job", str(job.id), "--follow", "--timeout", "1")
    assert result.returncode == 124, result.stdout + result.stderr
    assert "timed out after 1s" in result.stderr and "carries on" in result.stderr
    assert time.monotonic() - started < 2.9  # it stopped following; it did not wait the job out
    assert wait_for_job(job.id).status == "succeeded"


def test_ctrl_c_stops_following_with_130_and_no_traceback(fleet: WorkerProcess) -> None:
    job = enqueue("builds.canary", {"sleep_seconds": 3})
    proc = subprocess.Popen(
        [sys.executable, "-m", "drydock.cli", "job", str(job.id), "--follow"],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        env={**os.environ, "PYTHONUNBUFFERED": "1"},
    )
    try:
        # Wait until it is following (its first event line), then interrupt it.
        assert proc.stdout is not None
        seen = b""
        deadline = time.monotonic() + 20
        while b"  enqueued  " not in seen and time.monotonic() < deadline:
            ready, _, _ = select.select([proc.stdout], [], [], 0.5)
            if ready:
                seen += os.read(proc.stdout.fileno(), 4096)
        assert b"  enqueued  " in seen, seen
        proc.send_signal(signal.SIGINT)
        _, stderr = proc.communicate(timeout=20)
    finally:
        if proc.poll() is None:
            proc.kill()
    assert proc.returncode == 130
    assert b"interrupted" in stderr and b"carries on" in stderr
    assert b"Traceback" not in stderr
    assert wait_for_job(job.id).status == "succeeded"


def test_without_follow_the_timeline_is_a_table_and_timeout_needs_follow(
    fleet: WorkerProcess,
) -> None:
    job = enqueue("builds.canary", {"sleep_seconds": 1})
    wait_for_job(job.id)
    detail = drydock("job", str(job.id))
    assert detail.returncode == 0
    assert "progress" in detail.stdout and '"percent": 100.0' in detail.stdout
    refused = drydock("job", str(job.id), "--timeout", "5")
    assert refused.returncode == 1
    assert refused.stderr.strip() == "error: --timeout only applies with --follow"

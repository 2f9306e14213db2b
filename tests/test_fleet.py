"""The fleet for real: jobs through Redis to a worker process, outcomes in PostgreSQL."""

from __future__ import annotations

import json
import time
import uuid
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest
import redis
from sqlalchemy import func, select

from dispatch.enqueue import (
    IdempotencyConflictError,
    enqueue,
    purge_dead_letters,
    replay_dead_letter,
)
from kernel.errors import PayloadInvalidError, ReplayRefusedError, UnknownTaskError
from kernel.redaction import REDACTED, unseal
from kernel.settings import get_settings
from models.db import session_scope
from models.jobs import DeadLetter, Job, JobEvent
from tests.conftest import PRIVATE_QUEUE, WorkerProcess, wait_for_job
from workers.app import app

pytestmark = pytest.mark.fleet


def events_of(job_id: uuid.UUID) -> list[JobEvent]:
    with session_scope() as session:
        return list(
            session.execute(
                select(JobEvent).where(JobEvent.job_id == job_id).order_by(JobEvent.id)
            ).scalars()
        )


def kinds(job_id: uuid.UUID) -> list[tuple[str, int]]:
    return [(e.kind, e.attempt) for e in events_of(job_id)]


def worker_log_lines(worker: WorkerProcess) -> list[dict[str, Any]]:
    return [json.loads(line) for line in worker.log().splitlines() if line.startswith("{")]


def parked_messages() -> list[dict[str, Any]]:
    client = redis.Redis.from_url(get_settings().broker_url)
    return [json.loads(raw) for raw in client.lrange("dead_letter", 0, -1)]


def test_a_job_records_its_outcome_and_every_event(fleet: WorkerProcess) -> None:
    job = enqueue("builds.canary", {"message": "hello", "sleep_seconds": 1.5})
    row = wait_for_job(job.id)
    assert row.status == "succeeded"
    assert row.result["message"] == "hello"
    assert row.attempts == 1
    assert row.worker == fleet.hostname and row.worker_pid
    assert row.started_at is not None and row.finished_at >= row.started_at

    events = events_of(job.id)
    assert [e.kind for e in events] == ["enqueued", "started", "progress", "progress", "succeeded"]
    started, succeeded = events[1], events[-1]
    assert started.queue == "builds" and started.worker == fleet.hostname
    assert started.queue_wait_ms is not None and started.queue_wait_ms >= 0
    assert succeeded.latency_ms is not None and succeeded.latency_ms >= 1500
    assert events[3].detail["percent"] == 100.0

    mine = [line for line in worker_log_lines(fleet) if line.get("job_id") == str(job.id)]
    assert [line["action"] for line in mine] == ["started", "progress", "progress", "succeeded"]
    assert all(line["pid"] == row.worker_pid and line["queue"] == "builds" for line in mine)


def test_an_invalid_payload_is_dead_lettered_at_once_without_retries(fleet: WorkerProcess) -> None:
    # A producer that bypasses enqueue's validation (raw Celery protocol) meets the task's own.
    job_id = uuid.uuid4()
    app.send_task(
        "pushes.canary",
        kwargs={"sleep_seconds": "soon", "colour": "red"},
        task_id=str(job_id),
        queue="pushes",
    )
    row = wait_for_job(job_id)
    assert row.status == "dead_lettered"
    assert row.attempts == 1
    assert "sleep_seconds: Input should be a valid number" in row.error
    assert "colour: Extra inputs are not permitted" in row.error
    assert kinds(job_id) == [("enqueued", 0), ("started", 1), ("failed", 1), ("dead_lettered", 1)]
    actions = [
        line["action"] for line in worker_log_lines(fleet) if line.get("job_id") == str(job_id)
    ]
    assert actions == ["started", "failed", "dead_lettered"]
    with session_scope() as session:
        letter = session.execute(select(DeadLetter)).scalar_one()
        assert letter.reason == "invalid_payload" and letter.attempts == 1
        assert letter.error_class == "PayloadInvalidError"
    [parked] = parked_messages()
    assert parked["headers"]["drydock_job_id"] == str(job_id)


def test_the_edge_refuses_bad_input_and_records_nothing(fleet: WorkerProcess) -> None:
    with pytest.raises(PayloadInvalidError, match="mesage"):
        enqueue("builds.canary", {"mesage": "typo"})
    with pytest.raises(UnknownTaskError):
        enqueue("builds.nope", {})
    with session_scope() as session:
        assert session.scalar(select(func.count()).select_from(Job)) == 0


def test_a_transient_failure_succeeds_on_attempt_three(fleet: WorkerProcess) -> None:
    job = enqueue("attestation.canary", {"fail_attempts": 2})
    row = wait_for_job(job.id)
    assert row.status == "succeeded" and row.attempts == 3
    assert kinds(job.id) == [
        ("enqueued", 0),
        ("started", 1),
        ("retry", 1),
        ("started", 2),
        ("retry", 2),
        ("started", 3),
        ("succeeded", 3),
    ]
    retries = [e for e in events_of(job.id) if e.kind == "retry"]
    for event in retries:
        assert event.detail["error_class"] == "CanaryTransientError"
        assert 0 <= event.detail["delay_seconds"] <= get_settings().retry_max_seconds


def test_an_exhausted_budget_lands_in_the_dead_letter_queue(fleet: WorkerProcess) -> None:
    job = enqueue("evaluation.canary", {"fail_attempts": 50})
    row = wait_for_job(job.id)
    budget = get_settings().retry_max_attempts
    assert row.status == "dead_lettered" and row.attempts == budget
    assert [k for k, _ in kinds(job.id)].count("retry") == budget - 1
    with session_scope() as session:
        letter = session.execute(select(DeadLetter)).scalar_one()
    assert letter.reason == "retry_budget_exhausted"
    assert letter.error_class == "CanaryTransientError"
    assert f"attempt {budget} of 50" in letter.message  # the last error, not the first
    assert [m["headers"]["drydock_job_id"] for m in parked_messages()] == [str(job.id)]


def test_a_permanent_error_is_not_retried(fleet: WorkerProcess) -> None:
    job = enqueue("builds.canary", {"fail_permanently": True})
    row = wait_for_job(job.id)
    assert row.status == "dead_lettered" and row.attempts == 1
    assert "retry" not in [k for k, _ in kinds(job.id)]


def test_replay_after_the_outage_ends_runs_the_original_payload(fleet: WorkerProcess) -> None:
    outage_ends = datetime.now(UTC) + timedelta(seconds=3)
    payload = {"fail_until": outage_ends.isoformat(), "data": {"password": "s3cret-pw"}}
    job = enqueue("pushes.canary", payload)
    assert wait_for_job(job.id).status == "dead_lettered"
    assert len(parked_messages()) == 1

    time.sleep(max(0.0, (outage_ends - datetime.now(UTC)).total_seconds()))
    replayed = replay_dead_letter(job.id, by="alice")
    row = wait_for_job(replayed.id)
    assert row.status == "succeeded" and row.replay_of == job.id
    assert row.enqueued_by == "replay:alice"
    # The secret travelled to the worker again (sealed), and is still not stored in clear.
    assert row.payload["data"]["password"] == REDACTED
    key = get_settings().secret_key
    assert key is not None and row.sealed_secrets is not None
    assert unseal(row.sealed_secrets, key.get_secret_value()) == {"/data/password": "s3cret-pw"}

    with session_scope() as session:
        letter = session.execute(select(DeadLetter)).scalar_one()
        assert letter.replayed_by == "alice" and letter.replay_job_id == replayed.id
    assert parked_messages() == []
    with pytest.raises(ReplayRefusedError, match="already replayed by alice"):
        replay_dead_letter(job.id, by="bob")


def test_purge_removes_letters_and_parked_messages_but_keeps_the_record(
    fleet: WorkerProcess,
) -> None:
    first = enqueue("builds.canary", {"fail_permanently": True})
    second = enqueue("builds.canary", {"fail_permanently": True})
    wait_for_job(first.id), wait_for_job(second.id)
    assert purge_dead_letters(job_ids=[first.id]) == 1
    assert [m["headers"]["drydock_job_id"] for m in parked_messages()] == [str(second.id)]
    assert purge_dead_letters() == 1
    assert parked_messages() == []
    with session_scope() as session:
        assert session.scalar(select(func.count()).select_from(DeadLetter)) == 0
        kept = session.get(Job, first.id)
        assert kept is not None and kept.status == "dead_lettered"


def test_the_same_idempotency_key_twice_returns_the_first_job_and_sends_nothing(
    clean_state: None,
) -> None:
    # The private queue has no worker here, so the queue's length counts what was sent.
    first = enqueue("remediation.canary", {"message": "once"}, idempotency_key="req-42")
    again = enqueue("remediation.canary", {"message": "once"}, idempotency_key="req-42")
    assert first.created and not again.created
    assert again.id == first.id
    client = redis.Redis.from_url(get_settings().broker_url)
    assert client.llen(PRIVATE_QUEUE) == 1
    with session_scope() as session:
        assert session.scalar(select(func.count()).select_from(Job)) == 1
        assert session.scalar(select(func.count()).select_from(JobEvent)) == 1
    with pytest.raises(IdempotencyConflictError, match="req-42"):
        enqueue("remediation.canary", {"message": "different"}, idempotency_key="req-42")


def test_secrets_never_reach_rows_events_dead_letters_logs_or_flower(
    fleet: WorkerProcess,
) -> None:
    secret, token = "hunter2-correct-horse", "tok-0123456789"
    job = enqueue(
        "builds.canary",
        {
            "fail_attempts": 1,
            "fail_permanently": False,
            "sleep_seconds": 1.0,
            "data": {"password": secret, "nested": [{"api_token": token}], "user": "bob"},
        },
    )
    wait_for_job(job.id)
    dead = enqueue(
        "builds.canary",
        {"fail_permanently": True, "data": {"registry_password": secret, "access_token": token}},
    )
    wait_for_job(dead.id)
    # Flower reads kwargsrepr from the message; look at one nobody consumes.
    enqueue("remediation.canary", {"data": {"password": secret}})

    stored: list[Any] = []
    with session_scope() as session:
        for job_row in session.execute(select(Job)).scalars():
            stored += [job_row.payload, job_row.result, job_row.error, job_row.sealed_secrets]
        for event in session.execute(select(JobEvent)).scalars():
            stored.append(event.detail)
        for letter in session.execute(select(DeadLetter)).scalars():
            stored += [letter.payload, letter.message, letter.traceback]
    client = redis.Redis.from_url(get_settings().broker_url)
    flower_view = [
        json.loads(raw)["headers"]["kwargsrepr"] for raw in client.lrange(PRIVATE_QUEUE, 0, -1)
    ]
    everything = (
        json.dumps(stored) + json.dumps(parked_messages()) + fleet.log() + json.dumps(flower_view)
    )
    assert secret not in everything
    assert token not in everything
    assert REDACTED in json.dumps(stored) and REDACTED in flower_view[0]
    assert '"user": "bob"' in json.dumps(stored)  # only secret-looking fields are touched


def test_a_job_past_its_time_limit_is_stopped_and_dead_lettered(fleet: WorkerProcess) -> None:
    soft, hard = get_settings().time_limits_for("builds")
    job = enqueue("builds.canary", {"sleep_seconds": hard + 5})
    row = wait_for_job(job.id, timeout=hard + 20)
    assert row.status == "dead_lettered" and row.attempts == 1
    assert row.error_class == "TimeoutError"
    assert f"time limit of {soft}s" in row.error
    with session_scope() as session:
        letter = session.execute(select(DeadLetter)).scalar_one()
    assert letter.reason == "time_limit"
    # It was stopped, not left to run: progress stops at the soft limit.
    progress = [e for e in events_of(job.id) if e.kind == "progress"]
    assert len(progress) <= soft


def test_a_message_sent_around_enqueue_with_its_own_id_is_still_recorded(
    fleet: WorkerProcess,
) -> None:
    from workers.base_task import job_uuid

    app.send_task("builds.canary", kwargs={"message": "raw"}, task_id="order-77", queue="builds")
    row = wait_for_job(job_uuid("order-77"))
    assert row.status == "succeeded" and row.enqueued_by == "broker-message"
    assert row.payload == {"message": "raw"}
    assert [k for k, _ in kinds(row.id)] == ["enqueued", "started", "succeeded"]

"""The one dispatch path: what every sender (enqueue, the builds chord, Beat) goes through.

Against the real fleet: a chord with a bad member records nothing; its jobs are recorded with
their admission before anything is sent; a job whose message expires unrun gets an outcome.
"""

from __future__ import annotations

import uuid

import pytest
from sqlalchemy import select

from dispatch.chord import JobRequest, send_chord
from dispatch.enqueue import enqueue
from kernel.errors import PayloadInvalidError
from models.db import session_scope
from models.jobs import Job, JobEvent
from tests.conftest import PRIVATE_QUEUE, WorkerProcess, wait_for_job

pytestmark = pytest.mark.fleet


def jobs_with(ids: list[uuid.UUID]) -> dict[uuid.UUID, Job]:
    with session_scope() as session:
        rows = session.scalars(select(Job).where(Job.id.in_(ids))).all()
        session.expunge_all()
        return {row.id: row for row in rows}


def test_a_chord_with_an_invalid_member_is_refused_whole_and_records_nothing(
    clean_state: None,
) -> None:
    run_id = uuid.uuid4()
    good = JobRequest(
        "pushes.push_image", uuid.uuid4(), {"run_id": str(run_id), "platform": "linux/amd64"}
    )
    bad = JobRequest("pushes.push_image", uuid.uuid4(), {"run_id": "not-a-uuid"})
    callback = JobRequest("pushes.publish_index", uuid.uuid4(), {"run_id": str(run_id)})
    with pytest.raises(PayloadInvalidError) as refused:
        send_chord([good, bad], callback, enqueued_by="test")
    assert "pushes.push_image" in str(refused.value) and "run_id" in str(refused.value)
    assert jobs_with([good.job_id, bad.job_id, callback.job_id]) == {}


def test_a_chord_records_every_job_with_its_admission_before_sending(
    clean_state: None,
) -> None:
    # Canaries of the queue no test worker serves: the messages stay where they were sent.
    members = [
        JobRequest(f"{PRIVATE_QUEUE}.canary", uuid.uuid4(), {"message": f"member {n}"})
        for n in range(2)
    ]
    callback = JobRequest(f"{PRIVATE_QUEUE}.canary", uuid.uuid4(), {"message": "after"})
    sent = send_chord(members, callback, enqueued_by="build:test")
    assert sent == [m.job_id for m in members] + [callback.job_id]
    rows = jobs_with(sent)
    assert set(rows) == set(sent)
    for row in rows.values():
        assert (row.status, row.enqueued_by, row.queue) == ("queued", "build:test", PRIVATE_QUEUE)
        assert row.policy_context is not None and row.policy_context["allowed"] is True
    # Sent again (the build redelivered): the same jobs, nothing new recorded.
    assert send_chord(members, callback, enqueued_by="build:test") == sent
    assert set(jobs_with(sent)) == set(sent)


def test_a_job_whose_message_expires_unrun_is_recorded_preempted_not_left_queued(
    fleet: WorkerProcess,
) -> None:
    job = enqueue("builds.canary", {"message": "too late"}, expires=-1)
    row = wait_for_job(job.id, statuses=("preempted",))
    assert row.error_class == "Expired" and "expired before it started" in (row.error or "")
    with session_scope() as session:
        kinds = session.scalars(
            select(JobEvent.kind).where(JobEvent.job_id == job.id).order_by(JobEvent.id)
        ).all()
    assert list(kinds) == ["enqueued", "preempted"]


def test_a_message_carries_no_time_limit_even_from_a_sender_that_has_the_task(
    clean_state: None,
) -> None:
    # This process registers the canary tasks (with its own settings' limits); the worker that
    # runs the job must apply its queue's limits, not the sender's.
    import json

    import redis

    from kernel.settings import get_settings
    from tasks.canary.celery_tasks import CANARIES

    assert CANARIES[PRIVATE_QUEUE].soft_time_limit is not None
    enqueue(f"{PRIVATE_QUEUE}.canary", {"message": "limits"})
    members = [
        JobRequest(f"{PRIVATE_QUEUE}.canary", uuid.uuid4(), {"message": "member"}),
    ]
    send_chord(members, JobRequest(f"{PRIVATE_QUEUE}.canary", uuid.uuid4(), {}), enqueued_by="t")
    client = redis.Redis.from_url(get_settings().broker_url)
    try:
        sent = [json.loads(raw) for raw in client.lrange(PRIVATE_QUEUE, 0, -1)]
    finally:
        client.close()
    assert len(sent) == 2
    assert [message["headers"]["timelimit"] for message in sent] == [[None, None]] * 2

"""No message stops a worker: raw items pushed straight into the real Redis list of a queue.

Every item a worker cannot run becomes a dead letter on its first delivery (reason, queue, raw
body capped and redacted, the id it carried); none is retried or lost, and the worker goes on
to run the valid job queued behind them.
"""

from __future__ import annotations

import base64
import json
import os
import pickle
import time
import uuid
from collections.abc import Callable
from typing import Any

import pytest
import redis
from sqlalchemy import select

from tests.conftest import PRIVATE_QUEUE, WorkerProcess, poll, wait_for_job

pytestmark = pytest.mark.fleet

QUEUE = PRIVATE_QUEUE
TASK = f"{QUEUE}.canary"
SMALL_LIMIT = 4096


def envelope(
    body: bytes,
    *,
    headers: dict[str, Any] | None,
    content_type: str = "application/json",
    tag: str | None = None,
) -> bytes:
    """An item as kombu's Redis transport writes it: a JSON envelope, the body in base64."""
    return json.dumps(
        {
            "body": base64.b64encode(body).decode(),
            "content-encoding": "utf-8",
            "content-type": content_type,
            "headers": headers,
            "properties": {
                "delivery_mode": 2,
                "delivery_info": {"exchange": QUEUE, "routing_key": QUEUE},
                "priority": 0,
                "body_encoding": "base64",
                "delivery_tag": tag or str(uuid.uuid4()),
            },
        }
    ).encode()


def task_headers(task: str = TASK, job_id: str | None = None, **more: Any) -> dict[str, Any]:
    return {"lang": "py", "task": task, "id": job_id or str(uuid.uuid4()), **more}


def celery_body(args: Any, kwargs: Any, embed: Any = None) -> bytes:
    return json.dumps([args, kwargs, embed or {}]).encode()


# One item of every malformed kind: (what it is, the raw item, the dead letter's reason, the
# id it carried or None).
def malformed_items() -> list[tuple[str, bytes, str, str | None]]:
    items: list[tuple[str, bytes, str, str | None]] = []

    def add(what: str, raw: bytes, reason: str, carried: str | None = None) -> None:
        items.append((what, raw, reason, carried))

    add("not JSON", b"this is not json {", "unreadable_message")
    add("a JSON string", b'"just a string"', "unreadable_message")
    add("an envelope without properties", b'{"body": "", "headers": {}}', "unreadable_message")
    add("headers that are not an object", envelope(b"[]", headers=None), "unreadable_message")
    ident = str(uuid.uuid4())
    add(
        "a body that is a JSON string (the crash-loop)",
        envelope(b'"not [args, kwargs, embed]"', headers=task_headers(job_id=ident)),
        "unreadable_message",
        ident,
    )
    ident = str(uuid.uuid4())
    add(
        "a body that is not JSON",
        envelope(b"{nope", headers=task_headers(job_id=ident)),
        "unreadable_message",
        ident,
    )
    bad64 = json.loads(envelope(b"[]", headers=task_headers()))
    bad64["body"] = "***not base64***"
    add("a body that is not base64", json.dumps(bad64).encode(), "unreadable_message")
    ident = "producer-chosen-id-1"
    add(
        "an unknown task",
        envelope(celery_body([], {"x": 1}), headers=task_headers("remediation.nope", ident)),
        "unknown_task",
        ident,
    )
    ident = str(uuid.uuid4())
    add(
        "positional args",
        envelope(celery_body(["hello"], {}), headers=task_headers(job_id=ident)),
        "invalid_payload",
        ident,
    )
    ident = str(uuid.uuid4())
    add(
        "kwargs that are not a mapping",
        envelope(celery_body([], ["a", "b"]), headers=task_headers(job_id=ident)),
        "invalid_payload",
        ident,
    )
    ident = str(uuid.uuid4())
    add(
        "a pickle content type",
        envelope(
            pickle.dumps(((), {"message": "x"}, {})),
            headers=task_headers(job_id=ident),
            content_type="application/x-python-serialize",
        ),
        "unreadable_message",
        ident,
    )
    ident = str(uuid.uuid4())
    add(
        "kwargs with a NUL character",
        envelope(celery_body([], {"message": "a\u0000b"}), headers=task_headers(job_id=ident)),
        "invalid_payload",
        ident,
    )
    ident = str(uuid.uuid4())
    add(
        "a payload over the size limit",
        envelope(
            celery_body([], {"message": "x" * (SMALL_LIMIT * 2)}),
            headers=task_headers(job_id=ident),
        ),
        "payload_too_large",
        ident,
    )
    ident = str(uuid.uuid4())
    add(
        "an eta that is not a time",
        envelope(celery_body([], {}), headers=task_headers(job_id=ident, eta=12345)),
        "unreadable_message",
        ident,
    )
    ident = str(uuid.uuid4())
    add(
        "an eta string Celery cannot parse",
        envelope(celery_body([], {}), headers=task_headers(job_id=ident, eta="next tuesday")),
        "unreadable_message",
        ident,
    )
    ident = str(uuid.uuid4())
    add(
        "a payload its model refuses",
        envelope(celery_body([], {"no_such_field": 1}), headers=task_headers(job_id=ident)),
        "invalid_payload",
        ident,
    )
    return items


def push_raw(redis_url: str, *items: bytes) -> None:
    client = redis.Redis.from_url(redis_url)
    for item in items:
        # kombu publishes with LPUSH and consumes with BRPOP: the first pushed is taken first.
        client.lpush(QUEUE, item)
    client.close()


def dead_letters() -> dict[str, Any]:
    from models.db import session_scope
    from models.jobs import DeadLetter

    with session_scope() as session:
        rows = session.execute(select(DeadLetter)).scalars().all()
        for row in rows:
            session.expunge(row)
    return {str(row.job_id): row for row in rows}


def test_every_malformed_kind_is_dead_lettered_and_the_valid_job_behind_them_runs(
    worker_factory: Callable[..., WorkerProcess], redis_server: str
) -> None:
    from dispatch.enqueue import enqueue

    worker = worker_factory(
        "poison", env={"DRYDOCK_MAX_PAYLOAD_BYTES": str(SMALL_LIMIT)}, concurrency=1
    )
    items = malformed_items()
    push_raw(redis_server, *(raw for _, raw, _, _ in items))
    good = enqueue(TASK, {"message": "behind the poison"})

    row = wait_for_job(good.id, timeout=60)
    assert row.status == "succeeded", row.error
    assert row.worker == worker.hostname
    assert worker.proc.poll() is None, worker.log()[-3000:]
    assert "Unrecoverable error" not in worker.log()

    letters = poll(lambda: len(dead_letters()) >= len(items) and dead_letters(), 30, "DLQ")
    assert len(letters) == len(items), sorted(letter.message for letter in letters.values())
    by_reason: dict[str, int] = {}
    for letter in letters.values():
        by_reason[letter.reason] = by_reason.get(letter.reason, 0) + 1
        assert letter.queue == QUEUE
        if letter.attempts == 0:
            # Refused at intake, before any attempt: the raw body is kept.
            assert letter.raw_body is not None
            assert "\x00" not in letter.raw_body
        else:
            # Readable, known, storable: the task itself ran its validation (one attempt).
            assert letter.attempts == 1 and letter.reason == "invalid_payload"
            assert "no_such_field" in letter.message
    expected: dict[str, int] = {}
    for _, _, reason, _ in items:
        expected[reason] = expected.get(reason, 0) + 1
    assert by_reason == expected
    # The id each message carried is its job's id (derived, for an id that is no UUID).
    from workers.base_task import job_uuid

    for what, _, _, ident in items:
        if ident is not None:
            assert str(job_uuid(ident)) in letters, what
    carried = {letter.message_id for letter in letters.values() if letter.attempts == 0}
    assert "producer-chosen-id-1" in carried

    # Nothing waits in the queue or is held unacknowledged: every item was taken and settled.
    client = redis.Redis.from_url(redis_server)
    assert client.llen(QUEUE) == 0
    assert client.hlen("unacked") == 0
    client.close()


def test_a_refused_message_keeps_its_raw_body_redacted_and_capped(
    worker_factory: Callable[..., WorkerProcess], redis_server: str
) -> None:
    from models.db import session_scope
    from models.jobs import Job

    worker_factory("poison-raw", env={"DRYDOCK_MAX_PAYLOAD_BYTES": str(SMALL_LIMIT)})
    secret = "pw-hunter2-very-secret"
    ident = str(uuid.uuid4())
    body = celery_body(["positional"], {"password": secret, "dsn": f"postgresql://u:{secret}@h/db"})
    push_raw(redis_server, envelope(body, headers=task_headers(job_id=ident)))
    not_json = f"garbage password={secret} then {'y' * 40_000}".encode()
    push_raw(redis_server, not_json)

    letters = poll(lambda: len(dead_letters()) == 2 and dead_letters(), 30, "two letters")
    positional = letters[ident]
    assert positional.reason == "invalid_payload"
    assert "positional" in positional.message
    assert positional.message_id == ident
    assert secret not in (positional.raw_body or "")
    assert "[REDACTED]" in (positional.raw_body or "")
    garbage = next(letter for key, letter in letters.items() if key != ident)
    assert garbage.reason == "unreadable_message"
    assert garbage.message_id is None
    assert secret not in (garbage.raw_body or "")
    assert len(garbage.raw_body or "") < 17_000
    assert "capped" in (garbage.raw_body or "")
    # Each has its job row, dead-lettered, recorded as sent by a broker message.
    with session_scope() as session:
        for letter in letters.values():
            job = session.get(Job, letter.job_id)
            assert job is not None
            assert job.status == "dead_lettered"
            assert job.enqueued_by == "broker-message"


def test_an_unknown_task_can_be_replayed_once_its_name_exists(
    worker_factory: Callable[..., WorkerProcess], redis_server: str
) -> None:
    """A refused message with a readable payload keeps it (secrets sealed), so an operator
    who fixes the cause can look at it; the replay refuses an unknown task by name."""
    from dispatch.enqueue import replay_dead_letter
    from kernel.errors import UnknownTaskError

    worker_factory("poison-unknown")
    ident = str(uuid.uuid4())
    push_raw(
        redis_server,
        envelope(
            celery_body([], {"message": "kept", "api_key": "k-123456789"}),
            headers=task_headers("remediation.renamed_later", ident),
        ),
    )
    letters = poll(lambda: dead_letters(), 30, "the dead letter")
    letter = letters[ident]
    assert letter.reason == "unknown_task"
    assert letter.payload == {"message": "kept", "api_key": "[REDACTED]"}
    with pytest.raises(UnknownTaskError):
        replay_dead_letter(uuid.UUID(ident), by="test")


def test_a_redelivered_refused_message_is_dead_lettered_once(
    worker_factory: Callable[..., WorkerProcess], redis_server: str
) -> None:
    ident = str(uuid.uuid4())
    raw = envelope(b'"bad"', headers=task_headers(job_id=ident))
    worker_factory("poison-twice")
    push_raw(redis_server, raw)
    poll(lambda: ident in dead_letters(), 30, "the first dead letter")
    # The same message again (a producer retrying, or a redelivery): no second dead letter.
    push_raw(redis_server, raw)
    client = redis.Redis.from_url(redis_server)
    poll(lambda: client.llen(QUEUE) == 0 and client.hlen("unacked") == 0, 30, "taken")
    client.close()
    time.sleep(0.5)
    assert list(dead_letters()) == [ident]


def test_a_message_without_a_redacted_repr_shows_none_of_its_secrets_in_task_events(
    worker_factory: Callable[..., WorkerProcess], redis_server: str
) -> None:
    """Flower shows what the task events carry; a producer that skipped enqueue sent no
    kwargsrepr, and Celery would put the real arguments there."""
    import threading

    from workers.app import app

    worker_factory("poison-events")
    seen: list[dict[str, Any]] = []
    ident = str(uuid.uuid4())
    stop = threading.Event()

    def listen() -> None:
        with app.connection_for_read() as connection:
            receiver = app.events.Receiver(connection, handlers={"task-received": seen.append})
            for _ in receiver.itercapture(limit=None, timeout=0.5, wakeup=False):
                if stop.is_set():
                    return

    listener = threading.Thread(target=listen, daemon=True)
    listener.start()
    time.sleep(1)
    secret = "sk-live-0123456789abcdef"
    push_raw(
        redis_server,
        envelope(
            celery_body([], {"message": "hello", "api_key": secret}),
            headers=task_headers(job_id=ident),
        ),
    )
    try:
        received = poll(
            lambda: [event for event in seen if event.get("uuid") == ident], 30, "task-received"
        )
    finally:
        stop.set()
    assert secret not in json.dumps(received)
    assert "[REDACTED]" in received[0]["kwargs"]
    wait_for_job(uuid.UUID(ident), timeout=30)


def test_a_poison_message_is_held_while_the_store_is_down_and_dead_lettered_after(
    worker_factory: Callable[..., WorkerProcess], redis_server: str
) -> None:
    """Nothing is lost when the dead letter cannot be recorded: the worker holds the message
    (unacknowledged) and keeps trying; a worker that can reach the store records it."""
    unreachable = "postgresql+psycopg://drydock@127.0.0.1:1/drydock"
    blind = worker_factory("poison-blind", env={"DRYDOCK_DATABASE_URL": unreachable})
    push_raw(redis_server, b"not json at all")
    poll(lambda: blind.log().count("job.refusal_not_recorded") >= 2, 30, "retries")
    client = redis.Redis.from_url(redis_server)
    assert client.llen(QUEUE) == 0 and client.hlen("unacked") == 1  # held, not dropped
    assert not dead_letters()
    blind.stop()  # a warm shutdown gives the held message back to the queue

    worker_factory("poison-sighted")
    letters = poll(lambda: dead_letters(), 30, "the dead letter")
    assert [letter.reason for letter in letters.values()] == ["unreadable_message"]
    assert "not json at all" in (next(iter(letters.values())).raw_body or "")
    poll(lambda: client.hlen("unacked") == 0, 10, "acknowledged")
    client.close()


@pytest.mark.parametrize(
    ("call", "error", "field"),
    [
        (lambda e: e(TASK, {"message": "a\u0000b"}), "PayloadInvalidError", "message"),
        (
            lambda e: e(TASK, {"message": "x"}, "key\u0000"),
            "PayloadInvalidError",
            "idempotency_key",
        ),
        (lambda e: e(TASK, {"message": "x"}, 42), "PayloadInvalidError", "idempotency_key"),
        (lambda e: e(TASK, {"message": "x"}, tenant="t\u0000"), "PayloadInvalidError", "tenant"),
        (lambda e: e(TASK, {"data": {"blob": "x" * (1024 * 1024)}}), "PayloadTooLargeError", None),
        (lambda e: e(["not", "a", "name"], {}), "UnknownTaskError", None),
    ],
)
def test_enqueue_raises_only_its_documented_errors(
    clean_state: None, call: Callable[..., Any], error: str, field: str | None
) -> None:
    """Bad input from Python gets one of enqueue's documented errors, never a database error,
    and nothing is recorded or sent."""
    import drydock
    from dispatch.enqueue import enqueue
    from models.db import session_scope
    from models.jobs import Job

    with pytest.raises(getattr(drydock, error)) as raised:
        call(enqueue)
    if field is not None:
        assert field in [problem.field for problem in raised.value.problems]
    with session_scope() as session:
        assert session.execute(select(Job)).first() is None
    client = redis.Redis.from_url(os.environ["DRYDOCK_BROKER_URL"])
    assert client.llen(QUEUE) == 0
    client.close()


def test_the_api_shows_a_refused_messages_raw_body_and_carried_id(
    worker_factory: Callable[..., WorkerProcess], redis_server: str
) -> None:
    from fastapi.testclient import TestClient

    from drydock.api import app
    from tests.test_api import bearer, make_token

    worker_factory("poison-api")
    ident = "carried-by-the-producer"
    push_raw(redis_server, envelope(b'"a string body"', headers=task_headers(job_id=ident)))
    from workers.base_task import job_uuid

    job_id = job_uuid(ident)
    poll(lambda: str(job_id) in dead_letters(), 30, "the dead letter")
    with TestClient(app) as api:
        shown = api.get(f"/v1/dead-letters/{job_id}", headers=bearer(make_token("ops", "*")))
    assert shown.status_code == 200, shown.text
    body = shown.json()
    assert body["reason"] == "unreadable_message"
    assert body["message_id"] == ident
    assert "a string body" in body["raw_body"]

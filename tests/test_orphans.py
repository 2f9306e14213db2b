"""The orphan sweep's rules, against the real Redis: which held messages it gives back.

(That a dead worker's job really comes back and completes once is tests/test_worker_loss.py.)
"""

from __future__ import annotations

import json
import time
import uuid
from collections.abc import Iterator
from typing import Any

import pytest
import redis

from kernel.settings import get_settings
from workers.heartbeat import WorkerBeat, record_worker
from workers.orphans import sweep_orphans

pytestmark = pytest.mark.fleet

ME = "sweeper@test"


@pytest.fixture
def broker(clean_state: None, redis_server: str) -> Iterator[tuple[redis.Redis[bytes], Any]]:
    from workers.app import app

    client: redis.Redis[bytes] = redis.Redis.from_url(redis_server)
    with app.connection_for_write() as connection:
        channel: Any = connection.default_channel  # kombu's Redis channel, with its QoS
        yield client, channel.qos
    client.delete("unacked", "unacked_index", "remediation", "celery_other")
    client.close()


def hold(client: redis.Redis[bytes], *, age: float, queue: str = "remediation") -> str:
    """A message as kombu records it when a worker takes it, delivered ``age`` seconds ago."""
    tag = str(uuid.uuid4())
    message = {
        "body": "",
        "headers": {"id": str(uuid.uuid4()), "task": f"{queue}.canary"},
        "properties": {
            "delivery_tag": tag,
            "delivery_info": {"exchange": queue, "routing_key": queue},
            "priority": 0,
            "body_encoding": "base64",
        },
    }
    client.hset("unacked", tag, json.dumps([message, queue, queue]))
    client.zadd("unacked_index", {tag: time.time() - age})
    return tag


def beat(client: redis.Redis[bytes], hostname: str, *, age: float, held: Any) -> None:
    now = time.time()
    record_worker(
        client,
        WorkerBeat(
            hostname=hostname,
            pid=1,
            queues=("remediation",),
            concurrency=1,
            active=0,
            started_at=now - 100,
            last_heartbeat=now - age,
            held=held,
        ),
        keep_seconds=60,
    )


def sweep(client: redis.Redis[bytes], qos: Any) -> list[str]:
    return sweep_orphans(client, qos, hostname=ME, own_held=(), settings=get_settings())


def test_a_message_no_live_worker_holds_goes_back_to_the_head_of_its_queue(
    broker: tuple[redis.Redis[bytes], Any],
) -> None:
    client, qos = broker
    old = get_settings().orphan_after + 5
    beat(client, ME, age=0, held=())
    beat(client, "dead@test", age=old, held=())  # silent: its holdings count for nothing
    orphan = hold(client, age=old)
    recent = hold(client, age=0.1)  # maybe not yet in its holder's heartbeat: left alone
    assert sweep(client, qos) == [orphan]
    assert client.hexists("unacked", recent) and not client.hexists("unacked", orphan)
    [requeued] = client.lrange("remediation", 0, -1)
    assert json.loads(requeued)["properties"]["delivery_tag"] == orphan


def test_a_message_a_live_worker_lists_is_left_with_it(
    broker: tuple[redis.Redis[bytes], Any],
) -> None:
    client, qos = broker
    old = get_settings().orphan_after + 5
    tag = hold(client, age=old)
    beat(client, ME, age=0, held=())
    beat(client, "busy@test", age=0, held=(tag,))
    assert sweep(client, qos) == []
    assert client.hexists("unacked", tag) and client.llen("remediation") == 0


def test_the_sweep_stands_down_while_a_live_worker_does_not_say_what_it_holds(
    broker: tuple[redis.Redis[bytes], Any],
) -> None:
    client, qos = broker
    old = get_settings().orphan_after + 5
    tag = hold(client, age=old)
    beat(client, ME, age=0, held=())
    beat(client, "older-version@test", age=0, held=None)
    assert sweep(client, qos) == []
    assert client.hexists("unacked", tag)


def test_a_sweeper_whose_own_heartbeat_is_stale_does_nothing(
    broker: tuple[redis.Redis[bytes], Any],
) -> None:
    client, qos = broker
    old = get_settings().orphan_after + 5
    tag = hold(client, age=old)
    beat(client, ME, age=old, held=())
    assert sweep(client, qos) == []
    assert client.hexists("unacked", tag)


def test_messages_of_queues_that_are_not_drydocks_are_not_touched(
    broker: tuple[redis.Redis[bytes], Any],
) -> None:
    client, qos = broker
    old = get_settings().orphan_after + 5
    beat(client, ME, age=0, held=())
    foreign = hold(client, age=old, queue="celery_other")
    assert sweep(client, qos) == []
    assert client.hexists("unacked", foreign)

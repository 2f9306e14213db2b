"""Announcing what committed: PostgreSQL ``NOTIFY`` from inside a transaction (heard only if it
commits, in commit order), ``LISTEN`` on channels, and best-effort Redis publishing. The trust
registry's transitions and the policy engine's decisions are announced through these.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator, Sequence

import psycopg
import redis
from sqlalchemy import (
    make_url,
    text,
)
from sqlalchemy.orm import Session

from kernel.logs import get_logger
from kernel.settings import get_settings


def pg_notify(session: Session, channel: str, payload: str) -> None:
    """Announce ``payload`` on a PostgreSQL channel from inside the transaction: listeners hear
    it only if the transaction commits, in commit order. Payloads must stay under 8000 bytes."""
    session.execute(
        text("SELECT pg_notify(:channel, :payload)"), {"channel": channel, "payload": payload}
    )


def publish(channel: str, messages: Sequence[str | bytes]) -> None:
    """Publish messages on a Redis channel, best effort: a Redis outage is logged, not raised
    (what is published is always recorded elsewhere first)."""
    if not messages:
        return
    try:
        client = redis.Redis.from_url(get_settings().broker_url, socket_timeout=5)
        try:
            for message in messages:
                client.publish(channel, message)
        finally:
            client.close()
    except redis.RedisError as exc:
        get_logger().warning(
            "trust.publish_failed", channel=channel, error=f"{type(exc).__name__}: {exc}"
        )


def pg_listen(
    channels: Sequence[str], *, on_ready: Callable[[], None] | None = None
) -> Iterator[psycopg.Notify]:
    """Notifications on PostgreSQL ``channels`` as they commit, forever (the caller stops).
    ``on_ready`` is called once every LISTEN is in place: nothing committed after is missed."""
    conninfo = (
        make_url(get_settings().database_url)
        .set(drivername="postgresql")
        .render_as_string(hide_password=False)
    )
    with psycopg.connect(conninfo, autocommit=True) as conn:
        for channel in channels:
            conn.execute(f"LISTEN {channel}")
        if on_ready is not None:
            on_ready()
        yield from conn.notifies()

"""The pooled engine's connections survive their server-side end: a pooled connection whose
backend was terminated (a database restart, an idle timeout, an operator's
``pg_terminate_backend``) is replaced at checkout once it has sat idle, instead of failing the
caller's transaction."""

from __future__ import annotations

import time

from sqlalchemy import text

from models import db
from models.db import session_scope


def _backend_pid() -> int:
    with session_scope() as session:
        return int(session.execute(text("SELECT pg_backend_pid()")).scalar_one())


def test_a_terminated_idle_connection_is_replaced_before_use(migrated_db: str) -> None:
    db.dispose_engines()
    engine = db.get_engine()
    # Two pooled connections: the first is killed by the second once back in the pool.
    with engine.connect() as victim, engine.connect() as killer:
        pid = victim.execute(text("SELECT pg_backend_pid()")).scalar_one()
        victim.rollback()
        victim.close()
        assert killer.execute(text("SELECT pg_terminate_backend(:pid)"), {"pid": pid}).scalar()
        killer.commit()
    time.sleep(db.IDLE_PING_SECONDS + 0.2)

    # Every pooled connection is idle past the ping age: the dead one is pinged and replaced.
    seen = {_backend_pid() for _ in range(4)}
    assert pid not in seen

"""Database connections, per process: a pooled SQLAlchemy engine for everything, and kept driver
connections for the two statements every job runs. Celery's prefork pool forks after import,
and a connection must never cross a fork, so both are made lazily and remade when the pid
changes."""

from __future__ import annotations

import os
import time
from collections.abc import Iterator
from contextlib import contextmanager
from threading import Lock
from typing import Any

import psycopg
from sqlalchemy import Engine, create_engine, event, make_url
from sqlalchemy.exc import DisconnectionError
from sqlalchemy.orm import Session, sessionmaker

from kernel.settings import get_settings

_lock = Lock()
_engines: dict[tuple[int, str], Engine] = {}
# One factory per engine: a sessionmaker defines a Session subclass, and every new subclass
# has the Session event listeners copied onto it, which a short transaction notices.
_factories: dict[Engine, sessionmaker[Session]] = {}


def get_engine(url: str | None = None) -> Engine:
    """The process's pooled engine for ``url``: everything but the per-job statements."""
    url = url or get_settings().database_url
    key = (os.getpid(), url)
    engine = _engines.get(key)
    if engine is None:
        with _lock:
            engine = _engines.get(key)
            if engine is None:
                engine = create_engine(url, pool_size=5, max_overflow=5)
                _ping_idle_connections(engine)
                _engines[key] = engine
    return engine


# A pooled connection back from use this recently is taken to be alive, unpinged.
IDLE_PING_SECONDS = 1.0
_CHECKED_IN = "drydock.checked_in"


def _ping_idle_connections(engine: Engine) -> None:
    """Pre-ping, for connections that sat idle: one that died with a database restart is
    replaced before use instead of failing the caller. One used within the last second is not
    pinged: a transaction that follows another (a launch's, a decision's) pays no extra round
    trip, and a restart in between fails it as it would fail a transaction already begun."""

    @event.listens_for(engine.pool, "checkin")
    def _checked_in(dbapi_connection: Any, record: Any) -> None:
        record.info[_CHECKED_IN] = time.monotonic()

    @event.listens_for(engine.pool, "checkout")
    def _checked_out(dbapi_connection: Any, record: Any, proxy: Any) -> None:
        if time.monotonic() - record.info.get(_CHECKED_IN, 0.0) < IDLE_PING_SECONDS:
            return
        try:
            dbapi_connection.execute("SELECT 1")
            dbapi_connection.rollback()
        except psycopg.Error as exc:
            # The pool discards this connection and checks out a fresh one.
            raise DisconnectionError(str(exc)) from exc


def dispose_engines() -> None:
    """Drop every engine and hot connection (after a fork, or when settings change in tests)."""
    with _lock:
        for (pid, _, _), hot in list(_hot.items()):
            if pid == os.getpid():
                hot.close()
        _hot.clear()
        _factories.clear()
        for (pid, _), engine in list(_engines.items()):
            # A child must not close its parent's sockets: close=False just forgets them.
            engine.dispose(close=pid == os.getpid())
        _engines.clear()


@contextmanager
def session_scope(url: str | None = None) -> Iterator[Session]:
    """A session in a transaction: committed on success, rolled back on error."""
    engine = get_engine(url)
    factory = _factories.get(engine)
    if factory is None:
        factory = _factories.setdefault(engine, sessionmaker(engine, expire_on_commit=False))
    with factory.begin() as session:
        yield session


_hot: dict[tuple[int, str, bool], psycopg.Connection[Any]] = {}


def hot_connection(*, relaxed: bool = False, url: str | None = None) -> psycopg.Connection[Any]:
    """This process's own autocommit driver connection for the per-job statements.

    Kept open (no pool checkout, no isolation-level dance) because these statements run twice
    for every job. A broken connection is replaced on the next call; the statement that found
    it broken raises, and the job is handed back to the broker to try again.

    ``relaxed`` connections commit asynchronously (``synchronous_commit=off``): PostgreSQL
    confirms before its WAL reaches disk. They carry only records that a later synchronous
    commit makes durable anyway (an attempt's ``started`` row is flushed by the same job's
    outcome commit, WAL being sequential); a database crash in between loses only the start of
    an attempt that could not record its outcome either, and is retried.
    """
    url = url or get_settings().database_url
    key = (os.getpid(), url, relaxed)
    conn = _hot.get(key)
    if conn is None or conn.closed or conn.broken:
        conninfo = make_url(url).set(drivername="postgresql").render_as_string(hide_password=False)
        conn = psycopg.connect(
            conninfo,
            autocommit=True,
            options="-c synchronous_commit=off" if relaxed else None,
        )
        _hot[key] = conn
    return conn

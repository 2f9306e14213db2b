"""Database connections, per process: a pooled SQLAlchemy engine for everything, and kept driver
connections for the two statements every job runs. Celery's prefork pool forks after import,
and a connection must never cross a fork, so both are made lazily and remade when the pid
changes."""

from __future__ import annotations

import os
from collections.abc import Iterator
from contextlib import contextmanager
from threading import Lock
from typing import Any

import psycopg
from sqlalchemy import Engine, create_engine, make_url
from sqlalchemy.orm import Session, sessionmaker

from kernel.settings import get_settings

_lock = Lock()
_engines: dict[tuple[int, str], Engine] = {}


def get_engine(url: str | None = None) -> Engine:
    """The process's pooled engine for ``url``: everything but the per-job statements."""
    url = url or get_settings().database_url
    key = (os.getpid(), url)
    engine = _engines.get(key)
    if engine is None:
        with _lock:
            engine = _engines.get(key)
            if engine is None:
                # Pre-ping: a pooled connection that died with a database restart is replaced
                # before use instead of failing the caller. The per-job statements do not come
                # through here, so the extra round trip stays off the hot path.
                engine = create_engine(url, pool_size=5, max_overflow=5, pool_pre_ping=True)
                _engines[key] = engine
    return engine


def dispose_engines() -> None:
    """Drop every engine and hot connection (after a fork, or when settings change in tests)."""
    with _lock:
        for (pid, _, _), hot in list(_hot.items()):
            if pid == os.getpid():
                hot.close()
        _hot.clear()
        for (pid, _), engine in list(_engines.items()):
            # A child must not close its parent's sockets: close=False just forgets them.
            engine.dispose(close=pid == os.getpid())
        _engines.clear()


@contextmanager
def session_scope(url: str | None = None) -> Iterator[Session]:
    """A session in a transaction: committed on success, rolled back on error."""
    factory = sessionmaker(get_engine(url), expire_on_commit=False)
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

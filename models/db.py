"""One engine per process. Celery's prefork pool forks after import, and a pooled connection
must never cross a fork, so the engine is created lazily and re-created when the pid changes."""

from __future__ import annotations

import os
from collections.abc import Iterator
from contextlib import contextmanager
from threading import Lock
from typing import Any

import psycopg
from sqlalchemy import Connection, Engine, create_engine, make_url
from sqlalchemy.orm import Session, sessionmaker

from workers.settings import get_settings

_lock = Lock()
_engines: dict[tuple[int, str, bool], Engine] = {}


def get_engine(url: str | None = None, *, relaxed: bool = False) -> Engine:
    """The process's engine for ``url``.

    ``relaxed`` connections commit asynchronously (``synchronous_commit=off``): PostgreSQL
    confirms before its WAL reaches disk. They carry only records that a later synchronous
    commit makes durable anyway (an attempt's ``started`` row is flushed by the same job's
    outcome commit, WAL being sequential); a database crash in between loses only the start of
    an attempt that could not record its outcome either, and is retried.
    """
    url = url or get_settings().database_url
    key = (os.getpid(), url, relaxed)
    engine = _engines.get(key)
    if engine is None:
        with _lock:
            engine = _engines.get(key)
            if engine is None:
                connect_args = {"options": "-c synchronous_commit=off"} if relaxed else {}
                # No pre-ping: it would cost a round trip per checkout on the hot path. A dead
                # connection fails its statement, is dropped by the pool, and the job is retried.
                engine = create_engine(url, pool_size=5, max_overflow=5, connect_args=connect_args)
                _engines[key] = engine
    return engine


def dispose_engines() -> None:
    """Drop every engine and hot connection (after a fork, or when settings change in tests)."""
    with _lock:
        for (pid, _, _), hot in list(_hot.items()):
            if pid == os.getpid():
                hot.close()
        _hot.clear()
        for (pid, _, _), engine in list(_engines.items()):
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


@contextmanager
def autocommit_connection(url: str | None = None, *, relaxed: bool = False) -> Iterator[Connection]:
    """A connection where each statement commits by itself: for the single-statement writes on
    the job hot path, which are atomic on their own and need no BEGIN/COMMIT round trips."""
    with get_engine(url, relaxed=relaxed).connect() as conn:
        yield conn.execution_options(isolation_level="AUTOCOMMIT")

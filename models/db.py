"""One engine per process. Celery's prefork pool forks after import, and a pooled connection
must never cross a fork, so the engine is created lazily and re-created when the pid changes."""

from __future__ import annotations

import os
from collections.abc import Iterator
from contextlib import contextmanager
from threading import Lock

from sqlalchemy import Engine, create_engine
from sqlalchemy.orm import Session, sessionmaker

from workers.settings import get_settings

_lock = Lock()
_engines: dict[tuple[int, str], Engine] = {}


def get_engine(url: str | None = None) -> Engine:
    url = url or get_settings().database_url
    key = (os.getpid(), url)
    engine = _engines.get(key)
    if engine is None:
        with _lock:
            engine = _engines.get(key)
            if engine is None:
                engine = create_engine(url, pool_pre_ping=True, pool_size=5, max_overflow=5)
                _engines[key] = engine
    return engine


def dispose_engines() -> None:
    """Drop every engine (after a fork, or when settings change in tests)."""
    with _lock:
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

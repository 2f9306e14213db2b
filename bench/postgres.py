"""A benchmark's own PostgreSQL: started in a temporary directory, migrated, made the fleet's
database for this process (``DRYDOCK_DATABASE_URL``), stopped and removed when done."""

from __future__ import annotations

import os
import shutil
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

from drydock import localservers


@contextmanager
def migrated_postgres(name: str) -> Iterator[str]:
    """The server's URL, for the ``with`` block."""
    workdir = Path(tempfile.mkdtemp(prefix=f"drydock-bench-{name}-"))
    server = localservers.start_postgres(workdir / "postgres")
    try:
        os.environ["DRYDOCK_DATABASE_URL"] = server.url
        from kernel.settings import get_settings
        from models.db import dispose_engines
        from models.migrate import upgrade

        get_settings.cache_clear()
        dispose_engines()
        upgrade("head", server.url)
        yield server.url
    finally:
        server.stop()
        shutil.rmtree(workdir, ignore_errors=True)

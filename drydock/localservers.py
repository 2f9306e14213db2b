"""Real Redis and PostgreSQL servers run as child processes on this machine.

Used by the tests and the benchmark (and by a local fleet): each server gets its own directory
and port, is waited for until it answers, and is stopped by ``stop()``.
"""

from __future__ import annotations

import os
import shutil
import socket
import subprocess
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

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


def pg_binary(name: str) -> str | None:
    for directory in PG_BIN_DIRS:
        candidate = Path(directory) / name
        if candidate.exists():
            return str(candidate)
    return shutil.which(name)


def redis_available() -> bool:
    return shutil.which("redis-server") is not None


def postgres_available() -> bool:
    return pg_binary("initdb") is not None and pg_binary("pg_ctl") is not None


def start_redis(workdir: Path, port: int | None = None) -> LocalServer:
    binary = shutil.which("redis-server")
    if binary is None:
        raise ServerUnavailableError("redis-server is not installed (apt-get install redis-server)")
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
            "no",
            "--dir",
            str(workdir),
        ],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
        stdin=subprocess.DEVNULL,
    )

    def stop() -> None:
        proc.terminate()
        try:
            proc.wait(10)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(5)

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
        as_user = ["runuser", "-u", "postgres", "--"]
        shutil.chown(workdir, "postgres")
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
    return server

"""Test hosts on this machine: Linux network namespaces cabled to one switch by veth links.

``Network`` makes a switch (a bridge in a namespace of its own, so the machine's own
firewall never sees the traffic), a link from the test process (the root namespace) to it, and
one namespace per host, each with its own address, loopback and a veth cable whose far end is a
port of the switch. ``cut(host)`` takes that port down, as pulling the cable would: the host's
processes live on, their TCP connections are not reset, packets in both directions are dropped.

Every name starts with ``PREFIX``: whatever an aborted earlier run left behind (namespaces, the
processes in them, the link from the root namespace) is removed before a network is built, and
``teardown()`` removes it all again (so two runs cannot share a machine at the same time).
Needs root and iproute2.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import signal
import subprocess
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import psycopg
import redis

from drydock import localservers

PREFIX = "ddmh-"
SWITCH_NAMESPACE = f"{PREFIX}switch"
BRIDGE = "br0"
# The test process's end of its link to the switch, in the root namespace (at most 15 chars).
CLIENT_LINK = f"{PREFIX}client"
# A /24 no real network here uses (checked before building): .1 is the test process.
SUBNET = "10.231.77"
CLIENT_ADDRESS = f"{SUBNET}.1"


class NetworkUnavailableError(RuntimeError):
    """Network namespaces cannot be made here (not root, no iproute2, no kernel support)."""


def ip(command: str, namespace: str | None = None, check: bool = True) -> str:
    """Run ``ip COMMAND`` (in ``namespace`` when given) and return its output. Names here never
    hold spaces, so the command is written as one string."""
    argv = ["ip", *(["-n", namespace] if namespace else []), *command.split()]
    done = subprocess.run(argv, capture_output=True, text=True, check=False)
    if check and done.returncode != 0:
        raise RuntimeError(f"{' '.join(argv)} failed: {done.stderr.strip()}")
    return done.stdout


def networking_unavailable() -> str | None:
    """Why test hosts cannot be made here, or None when they can."""
    if os.geteuid() != 0:
        return "root (to make network namespaces)"
    if shutil.which("ip") is None:
        return "iproute2 (the ip command)"
    return None


@dataclass(frozen=True)
class Host:
    """One test host: a namespace with one address, cabled to the switch's port ``port``."""

    namespace: str
    port: str
    address: str

    def command(self, argv: list[str]) -> list[str]:
        """``argv`` run on this host (inside its namespace)."""
        return ["ip", "netns", "exec", self.namespace, *argv]


class Network:
    """A switch with hosts cabled to it; see the module's docstring."""

    def __init__(self) -> None:
        self.hosts: dict[str, Host] = {}
        remove_leftovers()
        self._check_subnet_is_free()
        try:
            ip(f"netns add {SWITCH_NAMESPACE}")
        except RuntimeError as exc:
            raise NetworkUnavailableError(str(exc)) from None
        try:
            ip("link set lo up", SWITCH_NAMESPACE)
            ip(f"link add {BRIDGE} type bridge", SWITCH_NAMESPACE)
            ip(f"link set {BRIDGE} up", SWITCH_NAMESPACE)
            # The test process's own cable: its root-namespace end carries CLIENT_ADDRESS.
            ip(f"link add {CLIENT_LINK} type veth peer name client netns {SWITCH_NAMESPACE}")
            ip(f"link set client master {BRIDGE} up", SWITCH_NAMESPACE)
            ip(f"addr add {CLIENT_ADDRESS}/24 dev {CLIENT_LINK}")
            ip(f"link set {CLIENT_LINK} up")
        except BaseException:
            self.teardown()
            raise

    @staticmethod
    def _check_subnet_is_free() -> None:
        routes = ip(f"-4 route show match {SUBNET}.0/24")
        taken = [line for line in routes.splitlines() if line and not line.startswith("default")]
        if taken:
            raise NetworkUnavailableError(f"{SUBNET}.0/24 is already routed here: {taken}")

    def add_host(self, name: str, last_octet: int) -> Host:
        """A new host ``PREFIX + name`` at ``SUBNET.last_octet``, cabled to switch port ``name``."""
        host = Host(f"{PREFIX}{name}", name, f"{SUBNET}.{last_octet}")
        ip(f"netns add {host.namespace}")
        self.hosts[name] = host
        ip("link set lo up", host.namespace)
        ip(
            f"link add {host.port} type veth peer name eth0 netns {host.namespace}",
            SWITCH_NAMESPACE,
        )
        ip(f"link set {host.port} master {BRIDGE} up", SWITCH_NAMESPACE)
        ip(f"addr add {host.address}/24 dev eth0", host.namespace)
        ip("link set eth0 up", host.namespace)
        return host

    def cut(self, host: Host) -> None:
        """Pull the host's cable out of the switch."""
        ip(f"link set {host.port} down", SWITCH_NAMESPACE)

    def restore(self, host: Host) -> None:
        """Plug it back in (no spanning tree: the port forwards at once)."""
        ip(f"link set {host.port} up", SWITCH_NAMESPACE)

    def teardown(self) -> None:
        remove_leftovers()
        self.hosts.clear()


def _namespaces() -> list[str]:
    listed = ip("netns list", check=False)
    return [line.split()[0] for line in listed.splitlines() if line.startswith(PREFIX)]


def kill_processes_in(namespace: str, grace_seconds: float = 3.0) -> None:
    """Stop whatever still runs in ``namespace`` (an aborted run's servers and workers): SIGTERM
    first, which lets PostgreSQL release its shared memory, then SIGKILL after the grace."""
    deadline = time.monotonic() + grace_seconds
    sent: set[int] = set()
    while True:
        pids = {int(pid) for pid in ip(f"netns pids {namespace}", check=False).split()}
        if not pids:
            return
        late = time.monotonic() > deadline
        for pid in pids if late else pids - sent:
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGKILL if late else signal.SIGTERM)
        sent |= pids
        if late and time.monotonic() > deadline + 5:
            raise RuntimeError(f"processes {sorted(pids)} in {namespace} would not die")
        time.sleep(0.1)


def remove_leftovers() -> None:
    """Every namespace and link of ours, with the processes in them: the switch last, which
    takes every cable's switch end (and so the whole cable) with it."""
    names = _namespaces()
    for namespace in sorted(names, key=lambda name: name == SWITCH_NAMESPACE):
        kill_processes_in(namespace)
        ip(f"netns del {namespace}", check=False)
    ip(f"link del {CLIENT_LINK}", check=False)


def chmod_traversable(directory: Path) -> None:
    """Let an unprivileged server user reach ``directory``: x for others on it and its parents."""
    for path in [directory, *directory.parents]:
        if path == Path("/"):
            break
        mode = path.stat().st_mode
        if not mode & 0o001:
            os.chmod(path, mode | 0o011)


# Each server has a host of its own, so both keep their usual ports.
REDIS_PORT = 6379
POSTGRES_PORT = 5432


def start_redis_on(host: Host, workdir: Path) -> tuple[str, Callable[[], None]]:
    """redis-server on ``host``, listening on its address only; its URL and how to stop it."""
    binary = localservers.redis_binary()
    if binary is None:
        raise localservers.ServerUnavailableError("redis-server is not installed")
    workdir.mkdir(parents=True, exist_ok=True)
    listen = ["--port", str(REDIS_PORT), "--bind", host.address, "--protected-mode", "no"]
    in_memory = ["--save", "", "--appendonly", "no", "--dir", str(workdir)]
    proc = subprocess.Popen(
        host.command([binary, *listen, *in_memory]),
        stdin=subprocess.DEVNULL,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
        start_new_session=True,
    )

    def stop() -> None:
        proc.terminate()
        try:
            proc.wait(10)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(5)

    client = redis.Redis(host=host.address, port=REDIS_PORT, socket_connect_timeout=1)
    try:
        localservers.wait_for(lambda: bool(client.ping()), 15, f"redis-server on {host.namespace}")
    except BaseException:
        stop()
        raise
    finally:
        client.close()
    return f"redis://{host.address}:{REDIS_PORT}/0", stop


def start_postgres_on(host: Host, workdir: Path) -> tuple[str, Callable[[], None]]:
    """A PostgreSQL cluster on ``host`` (as the unprivileged user, as ``localservers`` runs it),
    listening on the host's address and letting the whole test subnet in as ``drydock``, with a
    ``drydock`` database; its SQLAlchemy URL and how to stop it. fsync is off: test data."""
    initdb, pg_ctl = localservers.pg_binary("initdb"), localservers.pg_binary("pg_ctl")
    if initdb is None or pg_ctl is None:
        raise localservers.ServerUnavailableError("PostgreSQL server binaries are not installed")
    user = localservers._unprivileged_user()
    as_user = [shutil.which("runuser") or "/usr/sbin/runuser", "-u", user, "--"]
    workdir.mkdir(parents=True, exist_ok=True)
    shutil.chown(workdir, user)
    chmod_traversable(workdir)
    data = workdir / "data"
    subprocess.run(
        [*as_user, initdb, "-D", str(data), "-A", "trust", "-U", "drydock", "-E", "UTF8", "-N"],
        check=True,
        stdout=subprocess.DEVNULL,
    )
    with open(data / "pg_hba.conf", "a") as hba:
        hba.write(f"host all drydock {SUBNET}.0/24 trust\n")
    options = (
        f"-p {POSTGRES_PORT} -k {workdir} -c listen_addresses={host.address} "
        "-c fsync=off -c synchronous_commit=off -c full_page_writes=off"
    )
    log = workdir / "log"
    subprocess.run(
        host.command(
            [*as_user, pg_ctl, "-D", str(data), "-o", options, "-l", str(log), "-w", "start"]
        ),
        check=True,
        stdin=subprocess.DEVNULL,
        stdout=subprocess.DEVNULL,
        start_new_session=True,
    )

    def stop() -> None:
        # pg_ctl signals the postmaster by its pid: no network needed, any namespace will do.
        subprocess.run(
            [*as_user, pg_ctl, "-D", str(data), "-m", "fast", "-w", "stop"],
            check=False,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )

    def create_database() -> bool:
        with psycopg.connect(
            f"host={host.address} port={POSTGRES_PORT} user=drydock dbname=postgres",
            autocommit=True,
            connect_timeout=2,
        ) as conn:
            if not conn.execute("SELECT 1 FROM pg_database WHERE datname = 'drydock'").fetchone():
                conn.execute('CREATE DATABASE "drydock"')
        return True

    try:
        localservers.wait_for(create_database, 30, f"PostgreSQL on {host.namespace}")
    except BaseException:
        stop()
        raise
    return f"postgresql+psycopg://drydock@{host.address}:{POSTGRES_PORT}/drydock", stop

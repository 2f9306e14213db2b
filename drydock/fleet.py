"""`drydock up`: a complete local fleet in the foreground, stopped cleanly by Ctrl-C.

It starts, in order: the broker and the database (embedded Redis and PostgreSQL under the state
directory, unless DRYDOCK_BROKER_URL / DRYDOCK_DATABASE_URL are set), the migrations, a worker
for every queue, Beat, Flower and the HTTP API; waits until each answers; prints where each is;
and records the fleet in ``<state dir>/fleet.json`` so every other `drydock` command run from
the same directory finds it with no settings.

Ctrl-C (or SIGTERM) stops everything in reverse: the API and Flower, Beat, then the workers with
a warm shutdown (running jobs finish; after ``shutdown_timeout`` a cold shutdown hands the
unfinished ones back to Redis, so nothing is lost), and the servers last. A second Ctrl-C skips
the wait. Every child runs in its own process group, so the terminal's Ctrl-C reaches only this
supervisor, which stops them in that order, and nothing outlives it.
"""

from __future__ import annotations

import contextlib
import ctypes
import json
import os
import secrets
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from types import FrameType
from typing import TYPE_CHECKING, Any, TextIO

from drydock import localservers, pidrecord
from kernel.settings import LOCAL_FLEET_FILE, read_local_fleet
from kernel.topology import WORK_QUEUES

if TYPE_CHECKING:
    import redis

LOCAL_TOKEN_NAME = "local-admin"
FLOWER_USER = "admin"
_PR_SET_PDEATHSIG = 1


class FleetError(Exception):
    """The local fleet could not start; the message says why and what to do."""


@dataclass(frozen=True)
class ChildSpec:
    name: str
    argv: list[str]
    # How it is reached, for the summary (a URL, or the queues a worker serves).
    where: str
    # How `drydock up` knows it is up: this URL answers 200, or this worker (its hostname
    # before the "@") heartbeats; with neither, Beat has ticked.
    ready_url: str | None = None
    worker_name: str | None = None


@dataclass
class Child:
    spec: ChildSpec
    process: subprocess.Popen[bytes]
    log_path: Path

    @property
    def running(self) -> bool:
        return self.process.poll() is None


@dataclass
class FleetPlan:
    state_dir: Path
    api_port: int
    flower_port: int
    concurrency: int
    queues: tuple[str, ...] = WORK_QUEUES

    def children(self) -> list[ChildSpec]:
        """What runs besides the servers, in start order (stopped in reverse)."""
        cli = [sys.executable, "-m", "drydock.cli"]
        specs = [
            ChildSpec(
                f"worker {queue}",
                [
                    *cli,
                    "worker",
                    "--queues",
                    queue,
                    "--concurrency",
                    str(self.concurrency),
                    "--hostname",
                    f"drydock-{queue}@%h",
                ],
                f"queue {queue}",
                worker_name=f"drydock-{queue}",
            )
            for queue in self.queues
        ]
        specs.append(
            ChildSpec(
                "beat",
                [*cli, "beat"],
                "schedules",
            )
        )
        specs.append(
            ChildSpec(
                "flower",
                [*cli, "flower", "--address", "127.0.0.1", "--port", str(self.flower_port)],
                f"http://127.0.0.1:{self.flower_port}/",
                ready_url=f"http://127.0.0.1:{self.flower_port}/healthcheck",
            )
        )
        specs.append(
            ChildSpec(
                "api",
                [*cli, "api", "--host", "127.0.0.1", "--port", str(self.api_port)],
                f"http://127.0.0.1:{self.api_port}/docs",
                ready_url=f"http://127.0.0.1:{self.api_port}/health/live",
            )
        )
        return specs


def _die_with_parent() -> None:
    """In the child before exec: get SIGTERM if the supervisor dies, even by SIGKILL."""
    with contextlib.suppress(OSError, AttributeError):
        ctypes.CDLL("libc.so.6", use_errno=True).prctl(_PR_SET_PDEATHSIG, signal.SIGTERM)


def port_is_free(port: int) -> bool:
    with socket.socket() as sock:
        try:
            sock.bind(("127.0.0.1", port))
        except OSError:
            return False
    return True


def _write_private(path: Path, text: str) -> None:
    path.touch(mode=0o600, exist_ok=True)
    path.chmod(0o600)
    path.write_text(text)


class LocalFleet:
    def __init__(
        self,
        plan: FleetPlan,
        *,
        shutdown_timeout: float,
        say: Callable[[str], None],
        environ: dict[str, str] | None = None,
    ) -> None:
        self.plan = plan
        self.shutdown_timeout = shutdown_timeout
        self.say = say
        self.environ = dict(os.environ if environ is None else environ)
        self.children: list[Child] = []
        self.servers: list[localservers.LocalServer] = []
        self.urls: dict[str, str] = {}
        self._stop_requests = 0
        self._fleet_file = plan.state_dir / LOCAL_FLEET_FILE
        self._wrote_fleet_file = False

    # ---- lifecycle -----------------------------------------------------------------------------

    def request_stop(self, signum: int, frame: FrameType | None) -> None:
        self._stop_requests += 1
        if self._stop_requests == 2:
            self.say("second interrupt: not waiting for running jobs (they go back to Redis)")

    def run(self) -> int:
        """Start, wait for an interrupt or a child's death, stop. The exit code."""
        previous = {
            sig: signal.signal(sig, self.request_stop) for sig in (signal.SIGINT, signal.SIGTERM)
        }
        code = 0
        try:
            self.start()
            self.say("drydock up: ready; Ctrl-C stops the fleet")
            while not self._stop_requests:
                dead = [c for c in self.children if not c.running]
                if dead:
                    for child in dead:
                        self.say(
                            f"{child.spec.name} exited with code {child.process.returncode}; "
                            f"see {child.log_path}. Stopping the fleet."
                        )
                    code = 1
                    break
                time.sleep(0.25)
        except FleetError as exc:
            self.say(f"error: {exc}")
            code = 1
        finally:
            self.stop()
            for sig, handler in previous.items():
                signal.signal(sig, handler)
        return code

    def start(self) -> None:
        state = self.plan.state_dir
        running = read_local_fleet(str(state))
        if running is not None:
            raise FleetError(
                f"a fleet is already running from {state} (pid {running['supervisor_pid']}); "
                "stop it with Ctrl-C in its terminal"
            )
        for port, what in (
            (self.plan.api_port, "--api-port"),
            (self.plan.flower_port, "--flower-port"),
        ):
            if not port_is_free(port):
                raise FleetError(f"port {port} is in use; choose another with {what}")
        state.mkdir(parents=True, exist_ok=True)
        (state / "logs").mkdir(exist_ok=True)
        self._start_servers()
        self._write_fleet_file()
        self._migrate()
        token_hint = self._local_token()
        flower_auth = self.environ.get("DRYDOCK_FLOWER_BASIC_AUTH") or self._flower_credentials()
        env = {
            **self.environ,
            "DRYDOCK_BROKER_URL": self.urls["broker_url"],
            "DRYDOCK_DATABASE_URL": self.urls["database_url"],
            "DRYDOCK_SECRET_KEY": self.urls["secret_key"],
            "DRYDOCK_STATE_DIR": str(state),
            "DRYDOCK_FLOWER_BASIC_AUTH": flower_auth,
            "PYTHONUNBUFFERED": "1",
        }
        for spec in self.plan.children():
            self._spawn(spec, env)
        self._wait_until_ready()
        self._print_summary(token_hint)

    def stop(self) -> None:
        api_side = [c for c in self.children if not c.spec.name.startswith("worker")]
        workers = [c for c in self.children if c.spec.name.startswith("worker")]
        # The doors close first, so nothing new arrives while workers drain.
        for child in reversed(api_side):
            self._terminate(child, signal.SIGTERM, grace=10)
        if workers:
            running_jobs = [c for c in workers if c.running]
            if running_jobs:
                self.say(
                    "stopping workers: running jobs may finish for "
                    f"{self.shutdown_timeout:.0f}s (Ctrl-C again to hand them back now)"
                )
            for child in workers:
                if child.running:
                    # To the worker's main process only: Celery's warm shutdown lets its pool
                    # finish the running jobs (a signal to the pool would kill them).
                    with contextlib.suppress(ProcessLookupError):
                        os.kill(child.process.pid, signal.SIGTERM)
            self._wait(workers, self.shutdown_timeout, stop_early=lambda: self._stop_requests > 1)
            for child in workers:
                if child.running:
                    # Celery's cold shutdown: the pool stops, unacknowledged jobs go back to Redis.
                    self._terminate(child, signal.SIGQUIT, grace=15)
        for child in self.children:
            self._reap_group(child)
        for server in reversed(self.servers):
            server.stop()
        self.servers.clear()
        if self._wrote_fleet_file:
            with contextlib.suppress(FileNotFoundError):
                self._fleet_file.unlink()
        if self.children or self.urls:
            self.say("drydock up: stopped")

    # ---- steps ---------------------------------------------------------------------------------

    def _start_servers(self) -> None:
        state = self.plan.state_dir
        broker = self.environ.get("DRYDOCK_BROKER_URL")
        if broker:
            self.urls["broker_url"] = broker
            self.urls["broker_where"] = "DRYDOCK_BROKER_URL"
        else:
            try:
                redis_server = localservers.start_redis(
                    state / "redis", localservers.free_port(), persistent=True
                )
            except localservers.ServerUnavailableError as exc:
                raise FleetError(str(exc)) from None
            self.servers.append(redis_server)
            self.urls["broker_url"] = redis_server.url
            self.urls["broker_where"] = f"embedded, data in {state / 'redis'}"
        database = self.environ.get("DRYDOCK_DATABASE_URL")
        if database:
            self.urls["database_url"] = database
            self.urls["database_where"] = "DRYDOCK_DATABASE_URL"
        else:
            try:
                pg_server = localservers.start_postgres(
                    state / "postgres", localservers.free_port()
                )
            except (localservers.ServerUnavailableError, subprocess.CalledProcessError) as exc:
                raise FleetError(f"PostgreSQL did not start: {exc}") from None
            self.servers.append(pg_server)
            self.urls["database_url"] = pg_server.url
            self.urls["database_where"] = f"embedded, data in {state / 'postgres'}"
        key = self.environ.get("DRYDOCK_SECRET_KEY")
        if not key:
            key_file = state / "secret-key"
            if not key_file.exists():
                from kernel.redaction import new_key

                _write_private(key_file, new_key())
            key = key_file.read_text().strip()
        self.urls["secret_key"] = key

    def _write_fleet_file(self) -> None:
        fleet: dict[str, Any] = {
            "supervisor_pid": os.getpid(),
            "broker_url": self.urls["broker_url"],
            "database_url": self.urls["database_url"],
            "secret_key": self.urls["secret_key"],
            "api_url": f"http://127.0.0.1:{self.plan.api_port}",
            "flower_url": f"http://127.0.0.1:{self.plan.flower_port}",
            "started_at": time.time(),
        }
        _write_private(self._fleet_file, json.dumps(fleet, indent=2))
        self._wrote_fleet_file = True

    def _migrate(self) -> None:
        from models.migrate import current_revision, upgrade

        url = self.urls["database_url"]
        upgrade("head", url=url)
        self.say(f"database at revision {current_revision(url)}")

    def _local_token(self) -> str:
        """An API token for this local fleet (scope *), kept in the state directory."""
        from catalog import CATALOG
        from models import tokens
        from models.db import session_scope

        token_file = self.plan.state_dir / "api-token"
        with session_scope(self.urls["database_url"]) as session:
            if token_file.exists() and tokens.authenticate(session, token_file.read_text().strip()):
                return str(token_file)
            tokens.revoke_token(session, LOCAL_TOKEN_NAME)
            _, plaintext = tokens.create_token(
                session,
                name=LOCAL_TOKEN_NAME,
                scopes=["*"],
                known_tasks=CATALOG,
                created_by="drydock up",
            )
        _write_private(token_file, plaintext)
        return str(token_file)

    def _flower_credentials(self) -> str:
        path = self.plan.state_dir / "flower-credentials"
        if not path.exists():
            _write_private(path, f"{FLOWER_USER}:{secrets.token_urlsafe(18)}")
        return path.read_text().strip()

    def _spawn(self, spec: ChildSpec, env: dict[str, str]) -> None:
        log_path = self.plan.state_dir / "logs" / f"{spec.name.replace(' ', '-')}.log"
        log: TextIO = log_path.open("a")
        try:
            process = subprocess.Popen(
                spec.argv,
                env=env,
                stdin=subprocess.DEVNULL,
                stdout=log,
                stderr=subprocess.STDOUT,
                start_new_session=True,
                preexec_fn=_die_with_parent,
            )
        finally:
            log.close()
        # Under the tests, CI stops whatever of the fleet outlives them by this record (by PID,
        # never by name); nothing is written otherwise.
        pidrecord.record(process.pid, f"drydock up: {spec.name}")
        self.children.append(Child(spec, process, log_path))

    def _wait_until_ready(self, timeout: float = 90.0) -> None:
        import redis

        from workers.heartbeat import read_workers

        deadline = time.monotonic() + timeout
        pending = list(self.children)
        client = redis.Redis.from_url(self.urls["broker_url"])
        try:
            while pending:
                if self._stop_requests:
                    raise FleetError("interrupted while starting")
                for child in self.children:
                    if not child.running:
                        tail = _tail(child.log_path)
                        raise FleetError(
                            f"{child.spec.name} exited with code {child.process.returncode} "
                            f"while starting; last lines of {child.log_path}:\n{tail}"
                        )
                beating = {w.hostname.split("@")[0] for w in read_workers(client)}
                pending = [c for c in pending if not _is_ready(c.spec, client, beating)]
                if pending and time.monotonic() > deadline:
                    raise FleetError(
                        f"not ready after {timeout:.0f}s: "
                        f"{', '.join(c.spec.name for c in pending)}; see "
                        f"{self.plan.state_dir / 'logs'}"
                    )
                time.sleep(0.25)
        finally:
            client.close()

    def _print_summary(self, token_file: str) -> None:
        lines = [
            f"  broker    {_hide_password(self.urls['broker_url'])} ({self.urls['broker_where']})",
            f"  database  {_hide_password(self.urls['database_url'])} "
            f"({self.urls['database_where']})",
        ]
        for child in self.children:
            lines.append(f"  {child.spec.name:<18} {child.spec.where:<34} log {child.log_path}")
        state = self.plan.state_dir
        lines += [
            f"  console   http://127.0.0.1:{self.plan.api_port}/console/ (log in with the token)",
            f"  API token (scope *) in {token_file}",
            "  Flower login from DRYDOCK_FLOWER_BASIC_AUTH"
            if self.environ.get("DRYDOCK_FLOWER_BASIC_AUTH")
            else f"  Flower login in {state / 'flower-credentials'} (user:password)",
            "",
            "  In another terminal, from this directory:",
            '    drydock enqueue builds.canary --json \'{"message": "hello"}\'',
            f'    curl -H "Authorization: Bearer $(cat {token_file})" -X POST '
            f"-d '{{\"message\": \"hi\"}}' -H 'Content-Type: application/json' "
            f"http://127.0.0.1:{self.plan.api_port}/v1/jobs/builds.canary",
            "    drydock jobs; drydock health",
        ]
        self.say("\n".join(lines))

    # ---- stopping ------------------------------------------------------------------------------

    def _wait(
        self, children: list[Child], timeout: float, stop_early: Callable[[], bool] | None = None
    ) -> None:
        deadline = time.monotonic() + timeout
        while any(c.running for c in children) and time.monotonic() < deadline:
            if stop_early is not None and stop_early():
                return
            time.sleep(0.1)

    def _terminate(self, child: Child, sig: signal.Signals, *, grace: float) -> None:
        if not child.running:
            return
        with contextlib.suppress(ProcessLookupError):
            os.kill(child.process.pid, sig)
        self._wait([child], grace)
        if child.running:
            self.say(f"{child.spec.name} did not stop in {grace:.0f}s; killing it")
            with contextlib.suppress(ProcessLookupError):
                os.killpg(child.process.pid, signal.SIGKILL)
            child.process.wait(10)

    def _reap_group(self, child: Child) -> None:
        """Nothing of the child's process group may outlive the fleet (a pool process, say)."""
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.killpg(child.process.pid, 0)
            os.killpg(child.process.pid, signal.SIGKILL)
        with contextlib.suppress(subprocess.TimeoutExpired):
            child.process.wait(10)


def _is_ready(spec: ChildSpec, client: redis.Redis[bytes], beating: set[str]) -> bool:
    import httpx

    from workers.heartbeat import last_beat_tick

    if spec.ready_url is not None:
        try:
            return httpx.get(spec.ready_url, timeout=2).status_code == 200
        except httpx.HTTPError:
            return False
    if spec.worker_name is not None:
        return spec.worker_name in beating
    return last_beat_tick(client) is not None


def _tail(path: Path, lines: int = 15) -> str:
    try:
        return "\n".join(path.read_text(errors="replace").splitlines()[-lines:])
    except OSError:
        return "(no log)"


def _hide_password(url: str) -> str:
    from sqlalchemy.engine import make_url

    try:
        return make_url(url).render_as_string(hide_password=True)
    except Exception:
        return url.split("@")[-1]

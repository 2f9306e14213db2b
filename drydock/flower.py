"""``drydock flower``: Flower against the fleet, with authentication on.

Flower runs in the ``drydock flower`` process itself, as Celery's ``flower`` sub-command of the
Drydock Celery app (``workers.app.app``): the same broker (``DRYDOCK_BROKER_URL``), the same task
routes and queues, and the tasks registered, so Flower shows ``builds.canary`` on ``builds``
rather than anonymous messages. Workers already send the task events Flower reads
(``worker_send_task_events``, ``task_send_sent_event``), and ``enqueue`` sends a redacted
``kwargsrepr``, so secret fields show as ``[REDACTED]`` in Flower too. One process, no children:
SIGTERM or SIGINT stops it with exit status 0 and leaves nothing running.

Flower's worker list (``/api/workers``: each worker's stats, queues and tasks) comes from
inspecting the workers, which Flower 2.2 does once at startup and then only when asked with
``?refresh=1``; Drydock's Flower inspects again until every live worker has answered, then
periodically (see ``WorkerListRefresher``), so the list is whole right after `drydock up`.

Credentials are HTTP basic auth pairs ``user:password``, from ``--basic-auth`` (repeatable or
comma-separated, as Flower takes them) or else ``DRYDOCK_FLOWER_BASIC_AUTH``. Without any, Flower
is refused, unless ``--insecure-local`` asks for no authentication, which binds 127.0.0.1 only.
The secret reaches Flower through its ``FLOWER_BASIC_AUTH`` environment variable, never its
arguments (which ``ps`` shows to every local user) and never a log line: Flower 2.2 logs the
address, the broker URL with its password masked, and the registered task names at startup, and
no option values. Every other ``FLOWER_*`` variable and any ``flowerconfig.py`` in the working
directory are ignored, so what runs is what these options say.

What Flower 2.2 protects, found by running it: with basic auth on, the UI and the whole HTTP API
(``/api/...``) answer 401 without valid credentials, but ``/metrics`` (Prometheus, always on in
Flower 2.x; ``flower_events_total{worker,type,task}``, ``flower_task_runtime_seconds``,
``flower_worker_online``, ...) and ``/healthcheck`` answer anyone who can reach the port: they
carry task names, worker host names and counts, no arguments. Without authentication
(``--insecure-local``) the UI is open but Flower keeps its HTTP API closed (401) unless
``FLOWER_UNAUTHENTICATED_API`` is set, which Drydock does not pass on.
"""

from __future__ import annotations

import logging
import os
import time
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from pydantic import SecretStr

from kernel.settings import Settings, get_settings

if TYPE_CHECKING:
    import redis

ENV_VAR = "DRYDOCK_FLOWER_BASIC_AUTH"
FLOWER_ENV_PREFIX = "FLOWER_"
LOCAL_ADDRESS = "127.0.0.1"
DEFAULT_PORT = 5555
# A worker not heard from for this long leaves Flower's worker list and its metrics (workers that
# come back under a new host name would otherwise pile up as offline forever). Flower counts each
# producer's task-sent events under a worker label of the producer's name (``gen<pid>@host``: a
# new label for every `enqueue` process); with this option set it drops those series at every
# scrape, which keeps the metrics' cardinality bounded at the price of
# flower_events_total{type="task-sent"}. Drydock's job records count enqueues anyway.
OFFLINE_WORKER_PURGE_SECONDS = 3600
# The tasks page: the routing key is the Drydock queue; kwargs are the redacted repr.
TASK_COLUMNS = "name,uuid,state,routing_key,kwargs,received,started,runtime,retries,worker"

HOW_TO_AUTHENTICATE = (
    f"give credentials with --basic-auth USER:PASSWORD or {ENV_VAR}=USER:PASSWORD "
    "(comma-separated for several users), or pass --insecure-local to run without "
    f"authentication on {LOCAL_ADDRESS} only"
)


class FlowerConfigError(ValueError):
    """The options cannot start Flower; the message is one line and never holds a password."""


@dataclass(frozen=True)
class Credentials:
    users: tuple[str, ...]
    # ``user:password[,user:password...]`` as Flower's FLOWER_BASIC_AUTH takes it.
    secret: SecretStr = field(repr=False)


@dataclass(frozen=True)
class FlowerPlan:
    """What to run: the Celery command line, and the environment Flower must see."""

    argv: tuple[str, ...]
    env: Mapping[str, str] = field(repr=False)
    url: str
    users: tuple[str, ...]

    @property
    def authenticated(self) -> bool:
        return bool(self.users)

    def describe(self) -> str:
        """One line for the operator, without any password."""
        access = (
            f"basic auth for {', '.join(self.users)}"
            if self.authenticated
            else "NO authentication (--insecure-local)"
        )
        return f"Flower for the Drydock fleet at {self.url} ({access}; /metrics needs no auth)"


def parse_basic_auth(values: Iterable[str], source: str) -> Credentials:
    """Check ``user:password`` pairs, given repeated and/or comma-separated.

    Errors name the entry by position and the user by name, never the password."""
    pairs: list[str] = []
    users: list[str] = []
    entries = [entry.strip() for value in values for entry in value.split(",")]
    for number, entry in enumerate(entries, start=1):
        where = f"entry {number} of {source}"
        if not entry:
            raise FlowerConfigError(f"{where} is empty; give USER:PASSWORD pairs")
        user, colon, password = entry.partition(":")
        if not colon:
            raise FlowerConfigError(
                f"{where} is not USER:PASSWORD (no colon); pairs are separated by commas, so a "
                "password cannot contain one"
            )
        if not user.strip():
            raise FlowerConfigError(f"{where} has an empty user name")
        if not password:
            raise FlowerConfigError(f"{where} (user {user!r}) has an empty password")
        pairs.append(entry)
        users.append(user)
    if not pairs:
        raise FlowerConfigError(f"{source} holds no USER:PASSWORD pair")
    return Credentials(tuple(users), SecretStr(",".join(pairs)))


def resolve_credentials(basic_auth: Sequence[str], settings: Settings) -> Credentials | None:
    """The ``--basic-auth`` values if any were given, else the setting, else None."""
    if basic_auth:
        return parse_basic_auth(basic_auth, "--basic-auth")
    configured = settings.flower_basic_auth
    if configured is not None and configured.get_secret_value().strip():
        return parse_basic_auth([configured.get_secret_value()], ENV_VAR)
    return None


def plan_flower(
    *,
    basic_auth: Sequence[str] = (),
    insecure_local: bool = False,
    port: int = DEFAULT_PORT,
    address: str = LOCAL_ADDRESS,
    url_prefix: str | None = None,
    read_only: bool = False,
    settings: Settings | None = None,
) -> FlowerPlan:
    settings = settings or get_settings()
    credentials = resolve_credentials(basic_auth, settings)
    if insecure_local:
        if credentials is not None:
            source = "--basic-auth" if basic_auth else ENV_VAR
            raise FlowerConfigError(
                f"--insecure-local turns authentication off, but credentials were given "
                f"({source}); use one or the other"
            )
        if address != LOCAL_ADDRESS:
            raise FlowerConfigError(
                f"--insecure-local binds {LOCAL_ADDRESS} only; it cannot serve on {address!r}"
            )
    elif credentials is None:
        raise FlowerConfigError(
            f"Flower will not run without authentication: {HOW_TO_AUTHENTICATE}"
        )
    if not 1 <= port <= 65535:
        raise FlowerConfigError(f"--port {port} is not a TCP port (1-65535)")
    address = address.strip()
    if not address:
        raise FlowerConfigError(f"--address is empty; give an interface such as {LOCAL_ADDRESS}")
    prefix = (url_prefix or "").strip().strip("/")
    if any(char.isspace() or char in "?#" for char in prefix):
        raise FlowerConfigError(f"--url-prefix {url_prefix!r} is not a URL path")

    argv = [
        "flower",
        # Flower would otherwise read flowerconfig.py from the working directory, as Python.
        f"--conf={os.devnull}",
        f"--address={address}",
        f"--port={port}",
        f"--logging={settings.log_level.lower()}",
        "--persistent=False",
        f"--purge_offline_workers={OFFLINE_WORKER_PURGE_SECONDS}",
        f"--tasks_columns={TASK_COLUMNS}",
    ]
    if prefix:
        argv.append(f"--url_prefix={prefix}")
    if read_only:
        argv.append("--read_only=True")
    env = {"FLOWER_BASIC_AUTH": credentials.secret.get_secret_value()} if credentials else {}
    host = f"[{address}]" if ":" in address else address
    url = f"http://{host}:{port}/{prefix + '/' if prefix else ''}"
    return FlowerPlan(tuple(argv), env, url, credentials.users if credentials else ())


def flower_environment(plan: FlowerPlan, environ: Mapping[str, str]) -> dict[str, str]:
    """``environ`` without Flower's own variables, plus the plan's (the credentials)."""
    kept = {k: v for k, v in environ.items() if not k.upper().startswith(FLOWER_ENV_PREFIX)}
    return {**kept, **plan.env}


# ---- the worker list -------------------------------------------------------------------------
# Flower 2.2 fills the list ``/api/workers`` serves (each worker's stats, active queues and
# registered tasks) by inspecting the workers, a broadcast they answer within its
# ``inspect_timeout``: once when it starts, and then only for a request with ``?refresh=1``. A
# Flower started alongside its workers (`drydock up` starts them together) inspects before they
# consume, and ``/api/workers`` stays ``{}``. Drydock's Flower inspects again until every live
# worker has answered, and then periodically.
#
# A worker is live if Flower's events say so (its heartbeat events) or its Drydock heartbeat in
# Redis is fresh (workers/heartbeat.py; the same rule as `drydock health`). It has answered once
# the inspection holds all of REQUIRED_REPLIES from it, from the process that is beating now: a
# worker restarted under the same name (another pid) may serve other queues.
REQUIRED_REPLIES = ("stats", "active_queues", "registered")
# How often the list is checked against the live workers: a new worker shows within about this
# plus one inspection (a broadcast that waits Flower's inspect_timeout, 1 s by default).
CHECK_SECONDS = 1.0
# A live worker that does not answer (its control channel wedged) is asked again, backing off to
# this, so it does not cost a broadcast a second for as long as it stays so.
RETRY_MAX_SECONDS = 15.0
# With every live worker answered, the list is inspected again this often anyway, for changes no
# heartbeat shows (queues added with add_consumer, a worker's stats).
REFRESH_SECONDS = 60.0

logger = logging.getLogger(__name__)


class WorkerListRefresher:
    """Keeps a Flower application's inspected worker list complete; runs on Flower's IO loop."""

    def __init__(self, flower_app: Any, settings: Settings) -> None:
        # flower.app.Flower: its ``update_workers()`` (an awaitable inspection, shared with any
        # ``?refresh=1`` in flight), ``workers`` (what /api/workers serves) and ``events.state``.
        self.flower_app = flower_app
        self.settings = settings
        self._redis: redis.Redis[bytes] | None = None
        self._redis_failing = False
        self._waiting_for: set[str] = set()
        self._retry_delay = CHECK_SECONDS
        self._next_retry = 0.0
        self._next_refresh = time.monotonic() + REFRESH_SECONDS
        self._timer: Any = None

    def start(self) -> None:
        from tornado.ioloop import PeriodicCallback

        # A PeriodicCallback waits for an awaitable callback before scheduling the next, so
        # checks never overlap; and it leaves no task behind when Flower stops.
        self._timer = PeriodicCallback(self.check, CHECK_SECONDS * 1000)
        self._timer.start()

    async def check(self) -> None:
        live = await self.live_workers()
        waiting = self.unanswered(live)
        now = time.monotonic()
        newcomers = waiting - self._waiting_for
        if newcomers:
            self._retry_delay = CHECK_SECONDS
        due = now >= self._next_refresh or bool(newcomers) or (waiting and now >= self._next_retry)
        if not due:
            return
        try:
            await self.flower_app.update_workers()
        except Exception as exc:
            # Flower logs each failed inspection itself; a broker outage must not stop the timer.
            logger.warning("inspecting the workers failed: %s", exc)
        waiting = self.unanswered(live)
        now = time.monotonic()
        self._next_refresh = now + REFRESH_SECONDS
        if waiting:
            self._next_retry = now + self._retry_delay
            self._retry_delay = min(self._retry_delay * 2, RETRY_MAX_SECONDS)
            logger.debug("workers yet to answer Flower's inspection: %s", sorted(waiting))
        else:
            self._retry_delay = CHECK_SECONDS
            if self._waiting_for or newcomers:
                logger.info("inspected all %d live workers", len(live))
        self._waiting_for = waiting
        self.forget_departed(live)

    async def live_workers(self) -> dict[str, int | None]:
        """The host name of every live worker, with the pid of its main process if known."""
        live: dict[str, int | None] = {
            name: getattr(worker, "pid", None)
            for name, worker in self.flower_app.events.state.workers.items()
            if worker.alive  # a producer (task-sent events only) never is
        }
        for beat in await self.flower_app.io_loop.run_in_executor(None, self._fresh_heartbeats):
            live[beat.hostname] = beat.pid
        return live

    def unanswered(self, live: Mapping[str, int | None]) -> set[str]:
        inspected: Mapping[str, Mapping[str, Any]] = self.flower_app.workers
        return {name for name, pid in live.items() if not _answered(inspected.get(name), pid)}

    def forget_departed(self, live: Mapping[str, int | None]) -> None:
        """Drop workers gone for as long as Flower keeps offline ones elsewhere (the UI's list,
        the metrics): Flower itself never drops an inspected worker."""
        inspected = self.flower_app.workers
        cutoff = time.time() - OFFLINE_WORKER_PURGE_SECONDS
        for name in [name for name, info in inspected.items() if name not in live]:
            if inspected[name].get("timestamp", 0) < cutoff:
                del inspected[name]

    def _fresh_heartbeats(self) -> list[Any]:
        """Workers whose Drydock heartbeat is fresh (in an executor thread: Redis blocks)."""
        import redis

        from workers.heartbeat import read_workers, redis_client

        try:
            if self._redis is None:
                self._redis = redis_client(self.settings)
            beats = read_workers(self._redis)
        except (redis.RedisError, ValueError) as exc:
            if not self._redis_failing:
                logger.warning("reading the workers' heartbeats failed: %s", exc)
            self._redis_failing = True
            return []
        self._redis_failing = False
        now = time.time()
        return [b for b in beats if b.age(now) <= self.settings.heartbeat_stale_seconds]


def _answered(info: Mapping[str, Any] | None, pid: int | None) -> bool:
    if not info or any(reply not in info for reply in REQUIRED_REPLIES):
        return False
    return pid is None or info["stats"].get("pid") == pid


def _refreshing(flower_class: Any, settings: Settings) -> Callable[..., Any]:
    """Stands in for Flower's application class in its command: the application, with a
    refresher of its worker list that starts with its IO loop."""

    def make(*args: Any, **kwargs: Any) -> Any:
        flower_app = flower_class(*args, **kwargs)
        flower_app.io_loop.add_callback(WorkerListRefresher(flower_app, settings).start)
        return flower_app

    return make


def run_flower(plan: FlowerPlan) -> None:
    """Become Flower until SIGTERM or SIGINT."""
    environment = flower_environment(plan, os.environ)
    os.environ.clear()
    os.environ.update(environment)
    import flower.command  # type: ignore[import-untyped]  # Flower ships no type information

    from workers.app import app

    # Flower's command builds its application from this module global, and offers no other
    # hook: the command itself (options, authentication, signals, the HTTP server) runs as is.
    flower.command.Flower = _refreshing(flower.command.Flower, get_settings())
    app.start(list(plan.argv))

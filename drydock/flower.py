"""``drydock flower``: Flower against the fleet, with authentication on.

Flower runs in the ``drydock flower`` process itself, as Celery's ``flower`` sub-command of the
Drydock Celery app (``workers.app.app``): the same broker (``DRYDOCK_BROKER_URL``), the same task
routes and queues, and the tasks registered, so Flower shows ``builds.canary`` on ``builds``
rather than anonymous messages. Workers already send the task events Flower reads
(``worker_send_task_events``, ``task_send_sent_event``), and ``enqueue`` sends a redacted
``kwargsrepr``, so secret fields show as ``[REDACTED]`` in Flower too. One process, no children:
SIGTERM or SIGINT stops it with exit status 0 and leaves nothing running.

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

import os
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field

from pydantic import SecretStr

from workers.settings import Settings, get_settings

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


def run_flower(plan: FlowerPlan) -> None:
    """Become Flower until SIGTERM or SIGINT."""
    environment = flower_environment(plan, os.environ)
    os.environ.clear()
    os.environ.update(environment)
    from workers.app import app

    app.start(list(plan.argv))

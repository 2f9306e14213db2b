"""``drydock probe`` and ``drydock drain``: what a container platform asks of a worker or Beat.

Both read the heartbeat file the process in the same container writes on every heartbeat
(``DRYDOCK_HEARTBEAT_FILE``), so a probe costs no network round trip and a broker outage makes
workers unready instead of getting every one of them restarted.

- ``probe live``: the event loop still beats (a wedged worker fails it and is restarted).
- ``probe ready``: it beats and its last beat reached the broker.
- ``drain``: the preStop hook. The worker stops taking jobs from every queue, then the hook
  waits for its running jobs to finish, so the SIGTERM that follows finds nothing to cut short.
"""

from __future__ import annotations

import time

import typer
from rich.console import Console

from kernel.settings import Settings, get_settings
from workers.heartbeat_file import LocalHeartbeat, probe_problem, read_local_heartbeat

probe_app = typer.Typer(
    help="Container probes reading the heartbeat file (exit 1 with the reason when failing).",
    no_args_is_help=True,
)

err = Console(stderr=True)

# How often drain rereads the heartbeat file; the worker rewrites it every heartbeat.
DRAIN_POLL_SECONDS = 0.5


def _say(text: str) -> None:
    # One unwrapped line: the platform records it in the pod's events or the container log.
    err.print(text, markup=False, highlight=False, soft_wrap=True)


class ProbeError(Exception):
    """The probe or drain cannot do its job; the message says why."""


def _heartbeat_file(settings: Settings) -> str:
    if not settings.heartbeat_file:
        raise ProbeError(
            "DRYDOCK_HEARTBEAT_FILE is not set: probes and drain read the heartbeat file the "
            "worker or Beat in this container writes (the image sets it)"
        )
    return settings.heartbeat_file


def _probe(*, need_broker: bool) -> None:
    settings = get_settings()
    try:
        beat = read_local_heartbeat(_heartbeat_file(settings))
    except (ProbeError, ValueError) as exc:
        _say(f"not {'ready' if need_broker else 'live'}: {exc}")
        raise typer.Exit(1) from None
    problem = probe_problem(
        beat,
        now=time.time(),
        stale_after=settings.heartbeat_stale_seconds,
        need_broker=need_broker,
    )
    if problem is not None:
        _say(f"not {'ready' if need_broker else 'live'}: {problem}")
        raise typer.Exit(1)


@probe_app.command("live")
def probe_live() -> None:
    """Liveness: the worker or Beat here wrote a heartbeat within three heartbeats."""
    _probe(need_broker=False)


@probe_app.command("ready")
def probe_ready() -> None:
    """Readiness: live, and its last heartbeat reached the broker."""
    _probe(need_broker=True)


def drain(
    timeout: float | None = typer.Option(
        None,
        "--timeout",
        min=0,
        help="Give up after this many seconds (default: the longest hard time limit of the "
        "worker's queues).",
    ),
) -> None:
    """preStop hook: stop this container's worker taking jobs, then wait for its running ones.

    Exits 1 if jobs are still running at the timeout (the warm shutdown that follows keeps
    waiting for them until the platform's grace period ends; a job cut short then comes back
    on another worker at the orphan sweep, or at worst after the visibility timeout).
    """
    settings = get_settings()
    try:
        path = _heartbeat_file(settings)
        beat = read_local_heartbeat(path)
    except (ProbeError, ValueError) as exc:
        _say(f"drain: {exc}")
        raise typer.Exit(1) from None
    if beat.role != "worker":
        _say(f"drain: the heartbeat file belongs to {beat.role}, not a worker")
        raise typer.Exit(1)
    budget = timeout
    if budget is None:
        budget = max(
            (settings.time_limits_for(q)[1] for q in beat.queues if q in settings.time_limits),
            default=0,
        )
    deadline = time.monotonic() + budget

    stopped_at = time.time()
    _stop_consuming(beat)
    while True:
        try:
            current = read_local_heartbeat(path)
        except ValueError as exc:
            _say(f"drain: {exc}; nothing left to wait for")
            return
        if current.pid != beat.pid:
            _say("drain: the worker restarted; nothing left to wait for")
            return
        stale = time.time() - current.written_at > settings.heartbeat_stale_seconds
        if stale:
            _say("drain: the worker stopped beating; nothing left to wait for")
            return
        # Only a beat written after the consumers were cancelled counts every job it will run.
        if current.written_at > stopped_at and current.held == 0:
            _say(f"drain: {beat.hostname} holds no job")
            return
        if time.monotonic() >= deadline:
            _say(
                f"drain: {current.held} job(s) still held by {beat.hostname} after {budget:g}s",
            )
            raise typer.Exit(1)
        time.sleep(DRAIN_POLL_SECONDS)


def _stop_consuming(beat: LocalHeartbeat) -> None:
    """Cancel the worker's consumers through Celery's remote control (the broker)."""
    from kombu.exceptions import OperationalError

    from workers.app import app as celery_app

    try:
        for queue in beat.queues:
            replies = celery_app.control.cancel_consumer(
                queue, destination=[beat.hostname], reply=True, timeout=5
            )
            answered = any(beat.hostname in reply for reply in replies or [])
            if answered:
                _say(f"drain: {beat.hostname} stopped taking jobs from {queue}")
            else:
                _say(
                    f"drain: {beat.hostname} did not answer for {queue}; waiting anyway",
                )
    except (OperationalError, OSError) as exc:
        # The broker is down: the worker cannot take jobs anyway. Still wait for running ones.
        _say(f"drain: cannot reach the broker ({exc}); waiting anyway")

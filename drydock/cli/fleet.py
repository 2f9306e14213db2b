"""Running the fleet: ``drydock worker``, ``beat``, ``flower``, ``api``, ``up`` (a whole local
fleet) and ``health``."""

from __future__ import annotations

import sys
from typing import TYPE_CHECKING

import typer
from rich.console import Console
from rich.table import Table

from drydock.cli.text import CliError

if TYPE_CHECKING:
    from drydock.health import FleetHealth

out = Console()
err = Console(stderr=True)


def worker(
    queues: str = typer.Option(..., "--queues", "-Q", help="Comma-separated queues to serve."),
    concurrency: int | None = typer.Option(None, "--concurrency", "-c", min=1),
    hostname: str | None = typer.Option(None, "--hostname", "-n"),
    loglevel: str | None = typer.Option(None, "--loglevel", "-l"),
    pool: str = typer.Option("prefork", help="Celery pool: prefork, threads or solo."),
) -> None:
    """Run a Celery worker with Drydock's per-queue defaults."""
    from kernel.settings import get_settings
    from kernel.topology import parse_queue_list, prefetch_for

    try:
        names = parse_queue_list(queues)
    except ValueError as exc:
        raise CliError(str(exc)) from None
    settings = get_settings()
    # A workflows worker that cannot run an agent step's provider refuses to start, in one
    # line, instead of failing every such step later.
    from tasks.workflows.providers import ProviderConfigError, check_worker_providers

    try:
        check_worker_providers(names, settings)
    except ProviderConfigError as exc:
        raise CliError(str(exc)) from None
    argv = [
        "worker",
        f"--queues={','.join(names)}",
        f"--prefetch-multiplier={prefetch_for(names)}",
        f"--loglevel={loglevel or settings.log_level}",
        f"--pool={pool}",
        f"--hostname={hostname or 'drydock-' + '-'.join(names) + '@%h'}",
        "--task-events",
        # Hand each job to a process that is free, not queue it behind a long one.
        "-O",
        "fair",
    ]
    workers_count = concurrency or settings.worker_concurrency
    if workers_count:
        argv.append(f"--concurrency={workers_count}")
    from workers.app import app as celery_app

    celery_app.worker_main(argv)


def beat(loglevel: str | None = typer.Option(None, "--loglevel", "-l")) -> None:
    """Run Celery Beat with Drydock's schedules. One fires at a time: run a second to take over."""
    from kernel.settings import get_settings
    from workers.app import app as celery_app

    # The schedule and when each entry last ran live in Redis (RedBeat), not in a local file.
    celery_app.start(["beat", f"--loglevel={loglevel or get_settings().log_level}"])


def flower(
    basic_auth: list[str] = typer.Option(
        None,
        "--basic-auth",
        metavar="USER:PASSWORD",
        help="Credentials, repeatable or comma-separated (else DRYDOCK_FLOWER_BASIC_AUTH). "
        "Visible in `ps`: prefer the environment variable.",
    ),
    insecure_local: bool = typer.Option(
        False, "--insecure-local", help="No authentication; serve on 127.0.0.1 only."
    ),
    port: int = typer.Option(5555, "--port", min=1, max=65535),
    address: str = typer.Option("127.0.0.1", "--address", help="Interface to serve on."),
    url_prefix: str | None = typer.Option(None, "--url-prefix", help="Serve under /PREFIX/."),
    read_only: bool = typer.Option(
        False, "--read-only", help="Disable Flower's controls (revoke, shutdown, send tasks)."
    ),
) -> None:
    """Run Flower against the fleet, with basic auth and Prometheus metrics at /metrics."""
    from drydock.flower import FlowerConfigError, plan_flower, run_flower

    try:
        plan = plan_flower(
            basic_auth=basic_auth or [],
            insecure_local=insecure_local,
            port=port,
            address=address,
            url_prefix=url_prefix,
            read_only=read_only,
        )
    except FlowerConfigError as exc:
        raise CliError(str(exc)) from None
    err.print(plan.describe(), markup=False, highlight=False, soft_wrap=True)
    run_flower(plan)


def up(
    api_port: int = typer.Option(8000, min=1, max=65535, help="Port of the HTTP API."),
    flower_port: int = typer.Option(5555, min=1, max=65535, help="Port of Flower."),
    concurrency: int = typer.Option(2, min=1, help="Worker processes per queue."),
    shutdown_timeout: float = typer.Option(
        60.0, min=0, help="Seconds running jobs may finish on Ctrl-C before they are requeued."
    ),
    state_dir: str | None = typer.Option(
        None, help="Data, logs and local credentials (default: DRYDOCK_STATE_DIR or .drydock)."
    ),
) -> None:
    """Run a complete local fleet in the foreground until Ctrl-C.

    Starts Redis and PostgreSQL under the state directory (unless DRYDOCK_BROKER_URL and
    DRYDOCK_DATABASE_URL are set), migrates, then a worker per queue, Beat, Flower and the API.
    """
    from pathlib import Path

    from drydock.fleet import FleetPlan, LocalFleet
    from kernel.settings import get_settings

    directory = Path(state_dir or get_settings().state_dir).absolute()
    plan = FleetPlan(
        state_dir=directory, api_port=api_port, flower_port=flower_port, concurrency=concurrency
    )

    def say(message: str) -> None:
        sys.stdout.write(message + "\n")
        sys.stdout.flush()

    code = LocalFleet(plan, shutdown_timeout=shutdown_timeout, say=say).run()
    raise typer.Exit(code)


def api(
    host: str = typer.Option("127.0.0.1", help="Address to listen on (0.0.0.0 for all)."),
    port: int = typer.Option(8000, min=1, max=65535),
    workers: int = typer.Option(1, min=1, help="uvicorn worker processes."),
) -> None:
    """Serve the HTTP API with uvicorn (OpenAPI at /openapi.json, docs at /docs)."""
    import uvicorn

    from kernel.logs import configure_logging

    configure_logging()
    uvicorn.run(
        "drydock.api:app",
        host=host,
        port=port,
        workers=workers,
        proxy_headers=True,
        # Access logs carry paths and status, never bodies or the Authorization header.
        access_log=True,
        log_level="info",
    )


def health(
    as_json: bool = typer.Option(False, "--json", help="Print the report as JSON."),
) -> None:
    """Check the fleet (queues, workers, stuck jobs, Beat, peers); exit 1 when unhealthy."""
    from drydock.health import check_fleet

    report = check_fleet()
    if as_json:
        sys.stdout.write(report.model_dump_json(indent=2) + "\n")
    else:
        _print_health(report)
    if not report.healthy:
        raise typer.Exit(1)


def _print_health(report: FleetHealth) -> None:
    colour = "green" if report.healthy else "red"
    out.print(f"fleet [bold {colour}]{report.status}[/]")
    for reason in report.reasons:
        out.print(f"  [red]✗[/] {reason}", highlight=False)
    for warning in report.warnings:
        out.print(f"  [yellow]![/] {warning}", highlight=False)
    queues = Table("queue", "waiting", "workers")
    for queue in report.queues:
        queues.add_row(queue.name, str(queue.depth), ", ".join(queue.workers) or "[red]none[/]")
    if report.dead_letter_depth is not None:
        queues.add_row("dead_letter", str(report.dead_letter_depth), "(operators: drydock dlq)")
    out.print(queues)
    workers_table = Table("worker", "pid", "queues", "active", "last heartbeat", "state")
    for w in report.workers:
        workers_table.add_row(
            w.hostname,
            str(w.pid),
            ",".join(w.queues),
            str(w.active),
            f"{w.seconds_since_heartbeat:.0f}s ago",
            "alive" if w.alive else "[red]lost[/]",
        )
    out.print(workers_table)
    if report.stuck_jobs:
        stuck = Table("stuck job", "task", "worker", "why")
        for job in report.stuck_jobs:
            stuck.add_row(job.id, job.task_name, job.worker or "", job.reason)
        out.print(stuck)
    beat_line = (
        "never ticked"
        if report.beat.last_tick is None
        else f"last tick {report.beat.seconds_since_tick:.0f}s ago"
    )
    out.print(f"beat: {beat_line}")
    if report.peers:
        peers_table = Table("peer", "name", "state", "latency", "credential", "detail")
        for peer in report.peers:
            state = {"reachable": "reachable", "unreachable": "[red]unreachable[/]"}.get(
                peer.status, "[dim]not configured[/]"
            )
            credential = {True: "accepted", False: "[red]refused[/]", None: ""}[
                peer.credential_accepted
            ]
            latency = "" if peer.latency_ms is None else f"{peer.latency_ms:.0f} ms"
            peers_table.add_row(
                peer.kind, peer.name, state, latency, credential, peer.error or peer.detail or ""
            )
        out.print(peers_table)

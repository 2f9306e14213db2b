"""``drydock``: the operator's command line.

Every error is one line on stderr and a non-zero exit, never a traceback.
"""

from __future__ import annotations

import json
import sys
import uuid
from datetime import UTC, datetime
from typing import TYPE_CHECKING, Any

import typer
from rich.console import Console
from rich.table import Table

from drydock.cli_builds import builds_app, registry_app, retention_app
from drydock.cli_evaluation import admission_app, evaluation_app, policy_app
from drydock.cli_probes import drain, probe_app
from drydock.cli_remediation import playbooks_app, remediation_app
from drydock.cli_text import current_operator, parse_duration, when
from drydock.cli_trust import attest_app, trust_app

if TYPE_CHECKING:
    from drydock.health import FleetHealth

app = typer.Typer(
    name="drydock",
    help="Drydock: the job fleet behind an MCP-server hosting platform.",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
)
dlq_app = typer.Typer(help="Dead letters: list, show, replay and purge.", no_args_is_help=True)
app.add_typer(dlq_app, name="dlq")
tokens_app = typer.Typer(help="HTTP API tokens: create, list, revoke.", no_args_is_help=True)
app.add_typer(tokens_app, name="tokens")
app.add_typer(registry_app, name="registry")
app.add_typer(retention_app, name="retention")
app.add_typer(builds_app, name="builds")
app.add_typer(attest_app, name="attest")
app.add_typer(trust_app, name="trust")
app.add_typer(playbooks_app, name="playbooks")
app.add_typer(evaluation_app, name="evaluation")
app.add_typer(policy_app, name="policy")
app.add_typer(admission_app, name="admission")
app.add_typer(remediation_app, name="remediation")
app.add_typer(probe_app, name="probe")
app.command()(drain)

out = Console()
err = Console(stderr=True)


class CliError(Exception):
    """An error the CLI reports as one line."""


# ---- schema and migrations ---------------------------------------------------------------------


@app.command()
def migrate(
    downgrade: str | None = typer.Option(
        None, "--downgrade", metavar="REVISION", help="Downgrade to REVISION (e.g. base)."
    ),
    revision: str = typer.Option("head", help="Upgrade to this revision."),
) -> None:
    """Upgrade the outcome store to the latest schema (or downgrade it)."""
    from models import migrate as migrations

    if downgrade is not None:
        migrations.downgrade(downgrade)
    else:
        migrations.upgrade(revision)
    out.print(f"database at revision {migrations.current_revision() or 'base'}")


@app.command()
def schema(
    task: str | None = typer.Argument(None, help="One task; all tasks if omitted."),
    registry_events: bool = typer.Option(
        False, "--registry-events", help="The versioned schemas of registry telemetry instead."
    ),
) -> None:
    """Print the JSON Schema of task payloads, for producers in other languages."""
    from catalog import CATALOG, spec_for

    if registry_events:
        from tasks.pushes.telemetry import json_schemas

        document: dict[str, Any] = json_schemas()
    elif task is not None:
        document = spec_for(task).json_schema()
    else:
        document = {name: spec.json_schema() for name, spec in sorted(CATALOG.items())}
    sys.stdout.write(json.dumps(document, indent=2) + "\n")


@app.command()
def keygen() -> None:
    """Print a new key for DRYDOCK_SECRET_KEY."""
    from kernel.redaction import new_key

    sys.stdout.write(new_key() + "\n")


# ---- running the fleet -------------------------------------------------------------------------


@app.command()
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


@app.command()
def beat(loglevel: str | None = typer.Option(None, "--loglevel", "-l")) -> None:
    """Run Celery Beat with Drydock's schedules. One fires at a time: run a second to take over."""
    from kernel.settings import get_settings
    from workers.app import app as celery_app

    # The schedule and when each entry last ran live in Redis (RedBeat), not in a local file.
    celery_app.start(["beat", f"--loglevel={loglevel or get_settings().log_level}"])


@app.command()
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


# ---- jobs --------------------------------------------------------------------------------------


@app.command()
def enqueue(
    task: str = typer.Argument(..., help="Task name, e.g. builds.canary."),
    payload_json: str = typer.Option("{}", "--json", help="The payload as a JSON object."),
    idempotency_key: str | None = typer.Option(None, "--idempotency-key", "-k"),
    tenant: str | None = typer.Option(
        None, "--tenant", help="The tenant the job acts for (its admission rules apply)."
    ),
    target: str | None = typer.Option(
        None,
        "--target",
        help="Bind the job to an asset (id or tenant/name): its quarantine preempts the job.",
    ),
    approval: str | None = typer.Option(
        None,
        "--approval",
        envvar="DRYDOCK_APPROVAL_TOKEN",
        help="Approval token for a protected target (`drydock admission approve`).",
    ),
) -> None:
    """Validate, admit and enqueue a job; prints its id."""
    from dispatch.enqueue import enqueue as enqueue_job

    try:
        payload = json.loads(payload_json)
    except json.JSONDecodeError as exc:
        raise CliError(f"--json is not valid JSON: {exc}") from None
    if not isinstance(payload, dict):
        raise CliError("--json must be a JSON object")
    job = enqueue_job(
        task,
        payload,
        idempotency_key,
        enqueued_by=f"cli:{current_operator()}",
        tenant=tenant,
        target_asset=target,
        approval_token=approval,
    )
    note = "" if job.created else " (idempotency key already used: existing job, nothing sent)"
    out.print(f"{job.id} {job.task_name} on {job.queue} {job.status}{note}")


@app.command()
def jobs(
    status: str | None = typer.Option(None, "--status", "-s"),
    queue: str | None = typer.Option(None, "--queue", "-q"),
    task: str | None = typer.Option(None, "--task", "-t"),
    limit: int = typer.Option(50, min=1, max=1000),
    offset: int = typer.Option(0, min=0),
) -> None:
    """List jobs, newest first."""
    from kernel.topology import WORK_QUEUES
    from models import jobs as job_store
    from models.db import session_scope
    from models.tables import JobStatus

    if status and status not in {s.value for s in JobStatus}:
        raise CliError(f"unknown status {status!r}; one of {', '.join(s.value for s in JobStatus)}")
    if queue and queue not in WORK_QUEUES:
        raise CliError(f"unknown queue {queue!r}; one of {', '.join(WORK_QUEUES)}")
    with session_scope() as session:
        rows = job_store.list_jobs(
            session, status=status, queue=queue, task_name=task, limit=limit, offset=offset
        )
        table = Table("task", "status", "attempts", "enqueued", "finished", "error")
        # Ids are what operators copy into the next command: never wrapped or cut.
        table.add_column("id", no_wrap=True, min_width=36)
        for job in rows:
            table.add_row(
                job.task_name,
                job.status,
                str(job.attempts),
                when(job.enqueued_at),
                when(job.finished_at),
                _short(job.error, 40),
                str(job.id),
            )
    out.print(table)


# `drydock job ID --follow` exit codes: the job's outcome, or why following stopped first.
FOLLOW_EXIT_SUCCEEDED = 0
FOLLOW_EXIT_DEAD_LETTERED = 1
FOLLOW_EXIT_PREEMPTED = 3  # cancelled before it ran (its target asset was quarantined)
FOLLOW_EXIT_TIMEOUT = 124  # like timeout(1)
FOLLOW_EXIT_INTERRUPTED = 130  # 128 + SIGINT, like a shell
FOLLOW_POLL_SECONDS = 0.5
# Events read per poll; a job with more new events than this is caught up on the next polls.
FOLLOW_BATCH = 1000


@app.command("job")
def job_detail(
    job_id: str = typer.Argument(..., help="The job's id."),
    follow: bool = typer.Option(
        False,
        "--follow",
        "-f",
        help="Print each event as it happens, with a live progress bar, until the job ends; "
        "exit with its outcome.",
    ),
    timeout: float | None = typer.Option(
        None,
        "--timeout",
        min=0,
        metavar="SECONDS",
        help="With --follow: stop following after this long (exit 124; the job carries on).",
    ),
) -> None:
    """Show one job and its event timeline, or follow it live until it ends (--follow).

    Exit codes with --follow: 0 succeeded, 1 dead-lettered or error, 124 timed out, 130 Ctrl-C.
    """
    from models import jobs as job_store
    from models.db import session_scope

    ident = _uuid(job_id)
    if timeout is not None and not follow:
        raise CliError("--timeout only applies with --follow")
    if follow:
        raise typer.Exit(_follow_job(ident, timeout))
    with session_scope() as session:
        job = job_store.get_job(session, ident)
        if job is None:
            raise CliError(f"no job {ident}")
        _print_job_header(job)
        table = Table("at", "event", "attempt", "wait ms", "took ms", "worker", "detail")
        for event in job_store.job_events(session, ident):
            table.add_row(
                when(event.at),
                event.kind,
                str(event.attempt),
                _ms(event.queue_wait_ms),
                _ms(event.latency_ms),
                _event_worker(event),
                json.dumps(event.detail) if event.detail else "",
            )
    out.print(table)


def _print_job_header(job: Any, *, outcome: bool = True) -> None:
    out.print(f"[bold]{job.task_name}[/bold] {job.id}")
    out.print(f"status {job.status}, attempts {job.attempts}, queue {job.queue}")
    out.print(f"enqueued {when(job.enqueued_at)} by {job.enqueued_by or '?'}")
    if job.replay_of:
        out.print(f"replay of {job.replay_of}")
    if job.worker:
        out.print(f"last worker {job.worker} (pid {job.worker_pid})")
    out.print(f"payload {json.dumps(job.payload)}", markup=False)
    if outcome and job.result is not None:
        out.print(f"result {json.dumps(job.result)}", markup=False)
    if outcome and job.error:
        out.print(f"error {job.error_class}: {job.error}", markup=False)


def _event_worker(event: Any) -> str:
    return f"{event.worker or ''}{f' pid {event.worker_pid}' if event.worker_pid else ''}"


def _event_line(event: Any) -> str:
    """One event as one line: time, kind, attempt, worker, timings and detail."""
    parts = [when(event.at), f"{event.kind:<13}", f"attempt {event.attempt}"]
    if event.worker:
        parts.append(_event_worker(event))
    if event.queue_wait_ms is not None:
        parts.append(f"waited {_ms(event.queue_wait_ms)} ms")
    if event.latency_ms is not None:
        parts.append(f"took {_ms(event.latency_ms)} ms")
    detail = dict(event.detail or {})
    if event.kind == "progress":
        percent = detail.pop("percent", None)
        message = detail.pop("message", "")
        parts.append(f"{'?' if percent is None else f'{percent:g}'}% {message}".rstrip())
    if detail:
        parts.append(json.dumps(detail))
    return "  ".join(parts)


def _follow_job(ident: uuid.UUID, timeout: float | None) -> int:
    """Print the job's events as they are recorded, with a live progress bar, until it ends;
    return the exit code (see ``job_detail``)."""
    try:
        return _follow_until_done(ident, timeout)
    except KeyboardInterrupt:
        err.print(
            f"interrupted: job {ident} carries on; follow it again with "
            f"`drydock job {ident} --follow`",
            markup=False,
            highlight=False,
        )
        return FOLLOW_EXIT_INTERRUPTED


def _follow_until_done(ident: uuid.UUID, timeout: float | None) -> int:
    import time

    from rich.progress import (
        BarColumn,
        Progress,
        SpinnerColumn,
        TaskProgressColumn,
        TextColumn,
        TimeElapsedColumn,
    )

    from models import jobs as job_store
    from models.db import session_scope
    from models.tables import TERMINAL_STATUSES, JobStatus

    terminal = {status.value for status in TERMINAL_STATUSES}
    deadline = None if timeout is None else time.monotonic() + timeout
    with session_scope() as session:
        job = job_store.get_job(session, ident)
        if job is None:
            raise CliError(f"no job {ident}")
        _print_job_header(job, outcome=False)
    # Transient: the bar is a live view; the event lines and the outcome are what stays.
    progress = Progress(
        SpinnerColumn(),
        TextColumn("{task.description}", markup=False),
        BarColumn(),
        TaskProgressColumn(),
        TimeElapsedColumn(),
        console=out,
        transient=True,
    )
    bar = _FollowBar(progress, job.status)
    seen = 0
    with progress:
        while True:
            # One short transaction per poll, so that each sees the rows committed since.
            with session_scope() as session:
                # The job before its events: an outcome committed by then has its events
                # committed too (same transaction), so the last poll misses none of them.
                job = job_store.get_job(session, ident)
                if job is None:
                    raise CliError(f"job {ident} was deleted while being followed")
                events = job_store.job_events_after(session, ident, seen, limit=FOLLOW_BATCH)
            for event in events:
                progress.console.print(
                    _event_line(event), markup=False, highlight=False, soft_wrap=True
                )
                bar.show(event)
                seen = event.id
            if len(events) == FOLLOW_BATCH:
                continue  # more to catch up on before anything else
            if job.status in terminal:
                break
            if deadline is not None and time.monotonic() >= deadline:
                progress.stop()
                err.print(
                    f"timed out after {timeout:g}s: job {ident} is still {job.status} and "
                    f"carries on; follow it again with `drydock job {ident} --follow`",
                    markup=False,
                    highlight=False,
                )
                return FOLLOW_EXIT_TIMEOUT
            wait = FOLLOW_POLL_SECONDS
            if deadline is not None:
                wait = max(0.0, min(wait, deadline - time.monotonic()))
            time.sleep(wait)
    attempts = f"after {job.attempts} attempt{'s' if job.attempts != 1 else ''}"
    if job.status == JobStatus.SUCCEEDED.value:
        out.print(f"succeeded {attempts}: result {json.dumps(job.result)}", markup=False)
        return FOLLOW_EXIT_SUCCEEDED
    if job.status == JobStatus.PREEMPTED.value:
        out.print(f"preempted before it ran: {job.error}", markup=False)
        return FOLLOW_EXIT_PREEMPTED
    out.print(f"dead-lettered {attempts}: {job.error_class}: {job.error}", markup=False)
    return FOLLOW_EXIT_DEAD_LETTERED


class _FollowBar:
    """The live bar of ``--follow``: driven by the latest ``progress`` event, indeterminate
    while its percent is unknown, and started over by each new attempt."""

    def __init__(self, progress: Any, status: str) -> None:
        self.progress = progress
        self.task = progress.add_task(status, total=None)
        self.determinate = False

    def show(self, event: Any) -> None:
        detail = event.detail or {}
        if event.kind == "started":
            self._set(None, f"attempt {event.attempt} running", restart=True)
        elif event.kind == "progress":
            self._set(detail.get("percent"), str(detail.get("message") or "working"))
        elif event.kind == "retry":
            delay = detail.get("delay_seconds")
            self._set(None, f"attempt {event.attempt} failed; retrying in {delay}s", restart=True)

    def _set(self, percent: float | None, description: str, *, restart: bool = False) -> None:
        # Rich cannot turn a bar back to indeterminate: a new bar replaces it then.
        if restart or (percent is None and self.determinate):
            self.progress.remove_task(self.task)
            self.task = self.progress.add_task(description, total=None)
            self.determinate = False
        if percent is None:
            self.progress.update(self.task, description=description)
            return
        if not self.determinate:
            self.progress.update(self.task, total=100)
            self.determinate = True
        self.progress.update(self.task, description=description, completed=percent)


# ---- dead letters ------------------------------------------------------------------------------


@dlq_app.command("list")
def dlq_list(
    all_: bool = typer.Option(False, "--all", help="Include dead letters already replayed."),
    limit: int = typer.Option(50, min=1, max=1000),
) -> None:
    """Dead letters, newest first."""
    from models import jobs as job_store
    from models.db import session_scope

    with session_scope() as session:
        table = Table("task", "reason", "error", "attempts", "when", "replayed")
        table.add_column("job", no_wrap=True, min_width=36)
        for letter in job_store.list_dead_letters(session, include_replayed=all_, limit=limit):
            table.add_row(
                letter.task_name,
                letter.reason,
                _short(f"{letter.error_class}: {letter.message}"),
                str(letter.attempts),
                when(letter.dead_lettered_at),
                f"by {letter.replayed_by}" if letter.replayed_at else "",
                str(letter.job_id),
            )
    out.print(table)


@dlq_app.command("show")
def dlq_show(job_id: str = typer.Argument(..., help="The dead job's id.")) -> None:
    """One dead letter in full: error, traceback, payload (redacted), and for a message refused
    before it could run, the raw body and the id it carried."""
    from models import jobs as job_store
    from models.db import session_scope

    ident = _uuid(job_id)
    with session_scope() as session:
        letter = job_store.get_dead_letter(session, ident)
        if letter is None:
            raise CliError(f"no dead letter for job {ident}")
        out.print(f"[bold]{letter.task_name}[/bold] job {letter.job_id} on {letter.queue}")
        out.print(f"reason {letter.reason} after {letter.attempts} attempt(s)")
        out.print(f"dead-lettered {when(letter.dead_lettered_at)}")
        out.print(f"error {letter.error_class}: {letter.message}", markup=False)
        out.print(f"payload {json.dumps(letter.payload)}", markup=False)
        if letter.message_id is not None:
            out.print(f"message id {letter.message_id}", markup=False, highlight=False)
        if letter.raw_body is not None:
            # A message refused before it could run: its body as it came (capped, redacted).
            out.print(f"raw body {letter.raw_body}", markup=False, highlight=False)
        if letter.replayed_at:
            out.print(
                f"replayed {when(letter.replayed_at)} by {letter.replayed_by} "
                f"as job {letter.replay_job_id}"
            )
        if letter.traceback:
            out.print(letter.traceback, markup=False, highlight=False)


@dlq_app.command("replay")
def dlq_replay(
    job_id: str = typer.Argument(..., help="The dead job's id."),
    by: str | None = typer.Option(None, "--by", help="Who is replaying (default: $USER)."),
) -> None:
    """Enqueue the job again with its original payload; records who replayed it."""
    from dispatch.enqueue import replay_dead_letter

    job = replay_dead_letter(_uuid(job_id), by=by or current_operator())
    out.print(f"replayed as {job.id} ({job.task_name} on {job.queue})")


@dlq_app.command("purge")
def dlq_purge(
    job_ids: list[str] = typer.Argument(None, help="Dead jobs to purge."),
    all_: bool = typer.Option(False, "--all", help="Purge every dead letter."),
    older_than: str | None = typer.Option(None, help="Purge those older than e.g. 7d, 12h."),
    yes: bool = typer.Option(False, "--yes", "-y", help="Do not ask for confirmation."),
) -> None:
    """Delete dead letters and their parked messages (the jobs' records stay)."""
    from dispatch.enqueue import purge_dead_letters

    chosen = [bool(job_ids), all_, older_than is not None]
    if sum(chosen) != 1:
        raise CliError("say what to purge: job ids, --all, or --older-than")
    cutoff = datetime.now(UTC) - parse_duration(older_than) if older_than else None
    if not yes and not typer.confirm("Purge these dead letters for good?"):
        raise CliError("nothing purged")
    count = purge_dead_letters(
        job_ids=[_uuid(j) for j in job_ids] if job_ids else None, older_than=cutoff
    )
    out.print(f"purged {count} dead letter(s)")


# ---- the local fleet ---------------------------------------------------------------------------


@app.command()
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


# ---- API tokens --------------------------------------------------------------------------------


@tokens_app.command("create")
def tokens_create(
    name: str = typer.Option(..., "--name", "-n", help="Who or what the token is for."),
    scope: list[str] = typer.Option(
        ...,
        "--scope",
        "-s",
        help=(
            "Task-name pattern the token may enqueue and read, e.g. 'builds.*', or a "
            "permission (remediation.approve, remediation.playbooks); repeatable."
        ),
    ),
    tenant: str | None = typer.Option(
        None,
        "--tenant",
        help="Bind the token to a tenant: it sees and acts on that tenant's remediation only.",
    ),
) -> None:
    """Create an API token. It is printed once: only its hash is stored."""
    from catalog import CATALOG
    from models import tokens
    from models.db import session_scope

    try:
        with session_scope() as session:
            token, plaintext = tokens.create_token(
                session,
                name=name,
                scopes=scope,
                known_tasks=CATALOG,
                created_by=current_operator(),
                tenant=tenant,
            )
            scopes = ", ".join(token.scopes)
    except tokens.TokenError as exc:
        raise CliError(str(exc)) from None
    bound = f" for tenant {tenant}" if tenant else ""
    err.print(
        f"token {name!r}{bound} with scopes {scopes}; shown once, store it now:", highlight=False
    )
    sys.stdout.write(plaintext + "\n")


@tokens_app.command("revoke")
def tokens_revoke(name: str = typer.Argument(..., help="The token's name.")) -> None:
    """Revoke a token: requests with it get 401 from now on."""
    from models import tokens
    from models.db import session_scope

    with session_scope() as session:
        if not tokens.revoke_token(session, name):
            raise CliError(f"no active token named {name!r}")
    out.print(f"revoked token {name!r}")


@tokens_app.command("list")
def tokens_list(
    all_: bool = typer.Option(False, "--all", help="Include revoked tokens."),
) -> None:
    """API tokens: names, scopes, when created and last used (never the tokens)."""
    from models import tokens
    from models.db import session_scope

    table = Table("name", "tenant", "scopes", "created", "by", "last used", "revoked")
    with session_scope() as session:
        for token in tokens.list_tokens(session, include_revoked=all_):
            table.add_row(
                token.name,
                token.tenant or "(all)",
                ", ".join(token.scopes),
                when(token.created_at),
                token.created_by or "",
                when(token.last_used_at),
                when(token.revoked_at),
            )
    out.print(table)


# ---- HTTP API and health -----------------------------------------------------------------------


@app.command()
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


@app.command()
def health(
    as_json: bool = typer.Option(False, "--json", help="Print the report as JSON."),
) -> None:
    """Check the fleet (queues, workers, stuck jobs, Beat); exit 1 when unhealthy."""
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


# ---- helpers -----------------------------------------------------------------------------------


def _uuid(text: str) -> uuid.UUID:
    try:
        return uuid.UUID(text)
    except ValueError:
        raise CliError(f"{text!r} is not a job id (a UUID)") from None


def _ms(value: float | None) -> str:
    return "" if value is None else f"{value:.1f}"


def _short(text: str | None, width: int = 60) -> str:
    if not text:
        return ""
    return text if len(text) <= width else text[: width - 1] + "…"


def _explain(exc: BaseException) -> str | None:
    """One line for an error an operator can act on; None for a bug (shown with traceback)."""
    from kombu.exceptions import OperationalError as KombuOperationalError
    from pydantic import ValidationError
    from sqlalchemy.exc import OperationalError, ProgrammingError

    from kernel.errors import DrydockError

    if isinstance(exc, CliError | DrydockError):
        return str(exc)
    if isinstance(exc, ValidationError):
        problems = "; ".join(
            f"DRYDOCK_{'_'.join(str(p) for p in e['loc']).upper() or 'SETTINGS'}: {e['msg']}"
            for e in exc.errors(include_input=False, include_url=False)
        )
        return f"invalid settings: {problems}"
    if isinstance(exc, OperationalError):
        return f"cannot reach the database (DRYDOCK_DATABASE_URL): {str(exc.orig).strip()}"
    if isinstance(exc, ProgrammingError):
        return f"database error (has `drydock migrate` been run?): {str(exc.orig).strip()}"
    if isinstance(exc, KombuOperationalError):
        return f"cannot reach the broker (DRYDOCK_BROKER_URL): {exc}"
    return None


def main() -> None:
    try:
        # Without standalone mode click does not exit: it returns the code of a `typer.Exit`
        # raised by a command (and 130 for Ctrl-C), which is passed on below.
        code = app(standalone_mode=False)
    except typer.Exit as exc:
        sys.exit(exc.exit_code)
    except typer.Abort:
        err.print("aborted")
        sys.exit(1)
    except Exception as exc:
        import click

        # Typer carries its own copy of click, whose usage errors are TyperExceptions.
        if isinstance(exc, click.ClickException | typer.TyperException) and hasattr(exc, "show"):
            exc.show()
            sys.exit(exc.exit_code)
        message = _explain(exc)
        if message is None:
            message = f"unexpected {type(exc).__name__}: {exc}"
        one_line = " ".join(message.split())
        err.print(f"error: {one_line}", markup=False, highlight=False, soft_wrap=True)
        sys.exit(1)
    if isinstance(code, int) and code:
        sys.exit(code)


if __name__ == "__main__":
    main()

"""``drydock``: the operator's command line.

Every error is one line on stderr and a non-zero exit, never a traceback.
"""

from __future__ import annotations

import json
import re
import sys
import uuid
from datetime import UTC, datetime, timedelta
from typing import Any

import typer
from rich.console import Console
from rich.table import Table

app = typer.Typer(
    name="drydock",
    help="Drydock: the job fleet behind an MCP-server hosting platform.",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
)
dlq_app = typer.Typer(help="Dead letters: list, show, replay and purge.", no_args_is_help=True)
app.add_typer(dlq_app, name="dlq")

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
def schema(task: str | None = typer.Argument(None, help="One task; all tasks if omitted.")) -> None:
    """Print the JSON Schema of task payloads, for producers in other languages."""
    from tasks.catalog import CATALOG, spec_for

    if task is not None:
        document: dict[str, Any] = spec_for(task).json_schema()
    else:
        document = {name: spec.json_schema() for name, spec in sorted(CATALOG.items())}
    sys.stdout.write(json.dumps(document, indent=2) + "\n")


@app.command()
def keygen() -> None:
    """Print a new key for DRYDOCK_SECRET_KEY."""
    from workers.redaction import new_key

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
    from workers.queues import parse_queue_list, prefetch_for
    from workers.settings import get_settings

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
    """Run Celery Beat with Drydock's schedules. Run exactly one per fleet."""
    from workers.app import app as celery_app
    from workers.settings import get_settings

    celery_app.start(["beat", f"--loglevel={loglevel or get_settings().log_level}"])


# ---- jobs --------------------------------------------------------------------------------------


@app.command()
def enqueue(
    task: str = typer.Argument(..., help="Task name, e.g. builds.canary."),
    payload_json: str = typer.Option("{}", "--json", help="The payload as a JSON object."),
    idempotency_key: str | None = typer.Option(None, "--idempotency-key", "-k"),
) -> None:
    """Validate and enqueue a job; prints its id."""
    from drydock.client import enqueue as enqueue_job

    try:
        payload = json.loads(payload_json)
    except json.JSONDecodeError as exc:
        raise CliError(f"--json is not valid JSON: {exc}") from None
    if not isinstance(payload, dict):
        raise CliError("--json must be a JSON object")
    job = enqueue_job(task, payload, idempotency_key, enqueued_by=f"cli:{_operator()}")
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
    from models import jobs as job_store
    from models.db import session_scope
    from models.tables import JobStatus
    from workers.queues import WORK_QUEUES

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
                _when(job.enqueued_at),
                _when(job.finished_at),
                _short(job.error, 40),
                str(job.id),
            )
    out.print(table)


@app.command("job")
def job_detail(job_id: str = typer.Argument(..., help="The job's id.")) -> None:
    """Show one job and its event timeline."""
    from models import jobs as job_store
    from models.db import session_scope

    ident = _uuid(job_id)
    with session_scope() as session:
        job = job_store.get_job(session, ident)
        if job is None:
            raise CliError(f"no job {ident}")
        out.print(f"[bold]{job.task_name}[/bold] {job.id}")
        out.print(f"status {job.status}, attempts {job.attempts}, queue {job.queue}")
        out.print(f"enqueued {_when(job.enqueued_at)} by {job.enqueued_by or '?'}")
        if job.replay_of:
            out.print(f"replay of {job.replay_of}")
        if job.worker:
            out.print(f"last worker {job.worker} (pid {job.worker_pid})")
        out.print(f"payload {json.dumps(job.payload)}")
        if job.result is not None:
            out.print(f"result {json.dumps(job.result)}")
        if job.error:
            out.print(f"error {job.error_class}: {job.error}")
        table = Table("at", "event", "attempt", "wait ms", "took ms", "worker", "detail")
        for event in job_store.job_events(session, ident):
            table.add_row(
                _when(event.at),
                event.kind,
                str(event.attempt),
                _ms(event.queue_wait_ms),
                _ms(event.latency_ms),
                f"{event.worker or ''}{f' pid {event.worker_pid}' if event.worker_pid else ''}",
                json.dumps(event.detail) if event.detail else "",
            )
    out.print(table)


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
                _when(letter.dead_lettered_at),
                f"by {letter.replayed_by}" if letter.replayed_at else "",
                str(letter.job_id),
            )
    out.print(table)


@dlq_app.command("show")
def dlq_show(job_id: str = typer.Argument(..., help="The dead job's id.")) -> None:
    """One dead letter in full: error, traceback, payload (redacted)."""
    from models import jobs as job_store
    from models.db import session_scope

    ident = _uuid(job_id)
    with session_scope() as session:
        letter = job_store.get_dead_letter(session, ident)
        if letter is None:
            raise CliError(f"no dead letter for job {ident}")
        out.print(f"[bold]{letter.task_name}[/bold] job {letter.job_id} on {letter.queue}")
        out.print(f"reason {letter.reason} after {letter.attempts} attempt(s)")
        out.print(f"dead-lettered {_when(letter.dead_lettered_at)}")
        out.print(f"error {letter.error_class}: {letter.message}", markup=False)
        out.print(f"payload {json.dumps(letter.payload)}", markup=False)
        if letter.replayed_at:
            out.print(
                f"replayed {_when(letter.replayed_at)} by {letter.replayed_by} "
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
    from drydock.client import replay_dead_letter

    job = replay_dead_letter(_uuid(job_id), by=by or _operator())
    out.print(f"replayed as {job.id} ({job.task_name} on {job.queue})")


@dlq_app.command("purge")
def dlq_purge(
    job_ids: list[str] = typer.Argument(None, help="Dead jobs to purge."),
    all_: bool = typer.Option(False, "--all", help="Purge every dead letter."),
    older_than: str | None = typer.Option(None, help="Purge those older than e.g. 7d, 12h."),
    yes: bool = typer.Option(False, "--yes", "-y", help="Do not ask for confirmation."),
) -> None:
    """Delete dead letters and their parked messages (the jobs' records stay)."""
    from drydock.client import purge_dead_letters

    chosen = [bool(job_ids), all_, older_than is not None]
    if sum(chosen) != 1:
        raise CliError("say what to purge: job ids, --all, or --older-than")
    cutoff = datetime.now(UTC) - _duration(older_than) if older_than else None
    if not yes and not typer.confirm("Purge these dead letters for good?"):
        raise CliError("nothing purged")
    count = purge_dead_letters(
        job_ids=[_uuid(j) for j in job_ids] if job_ids else None, older_than=cutoff
    )
    out.print(f"purged {count} dead letter(s)")


# ---- helpers -----------------------------------------------------------------------------------


def _uuid(text: str) -> uuid.UUID:
    try:
        return uuid.UUID(text)
    except ValueError:
        raise CliError(f"{text!r} is not a job id (a UUID)") from None


def _duration(text: str) -> timedelta:
    match = re.fullmatch(r"(\d+)([smhd])", text.strip())
    if not match:
        raise CliError(f"{text!r} is not a duration like 30m, 12h or 7d")
    unit = {"s": "seconds", "m": "minutes", "h": "hours", "d": "days"}[match.group(2)]
    return timedelta(**{unit: int(match.group(1))})


def _operator() -> str:
    import getpass

    try:
        return getpass.getuser()
    except (KeyError, OSError):
        return "unknown"


def _when(moment: datetime | None) -> str:
    return "" if moment is None else moment.astimezone(UTC).strftime("%Y-%m-%d %H:%M:%S")


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

    from workers.errors import DrydockError

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
        app(standalone_mode=False)
    except typer.Exit as exc:
        sys.exit(exc.exit_code)
    except typer.Abort:
        err.print("aborted")
        sys.exit(1)
    except Exception as exc:
        import click

        if isinstance(exc, click.ClickException):
            exc.show()
            sys.exit(exc.exit_code)
        message = _explain(exc)
        if message is None:
            message = f"unexpected {type(exc).__name__}: {exc}"
        one_line = " ".join(message.split())
        err.print(f"error: {one_line}", markup=False, highlight=False, soft_wrap=True)
        sys.exit(1)


if __name__ == "__main__":
    main()

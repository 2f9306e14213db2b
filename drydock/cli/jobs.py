"""``drydock enqueue``, ``drydock jobs`` and ``drydock job``: send a job, list jobs, show one
or follow it live until it ends."""

from __future__ import annotations

import json
import uuid
from typing import Any

import typer
from rich.console import Console
from rich.table import Table

from drydock.cli.text import CliError, current_operator, parse_job_id, shorten, when

out = Console()
err = Console(stderr=True)


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


def jobs(
    status: str | None = typer.Option(None, "--status", "-s"),
    queue: str | None = typer.Option(None, "--queue", "-q"),
    task: str | None = typer.Option(None, "--task", "-t"),
    limit: int = typer.Option(50, min=1, max=1000),
    offset: int = typer.Option(0, min=0),
) -> None:
    """List jobs, newest first."""
    from kernel.topology import WORK_QUEUES
    from models import job_reads
    from models.db import session_scope
    from models.jobs import JobStatus

    if status and status not in {s.value for s in JobStatus}:
        raise CliError(f"unknown status {status!r}; one of {', '.join(s.value for s in JobStatus)}")
    if queue and queue not in WORK_QUEUES:
        raise CliError(f"unknown queue {queue!r}; one of {', '.join(WORK_QUEUES)}")
    with session_scope() as session:
        rows = job_reads.list_jobs(
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
                shorten(job.error, 40),
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
    from models import job_reads
    from models.db import session_scope

    ident = parse_job_id(job_id)
    if timeout is not None and not follow:
        raise CliError("--timeout only applies with --follow")
    if follow:
        raise typer.Exit(_follow_job(ident, timeout))
    with session_scope() as session:
        job = job_reads.get_job(session, ident)
        if job is None:
            raise CliError(f"no job {ident}")
        _print_job_header(job)
        table = Table("at", "event", "attempt", "wait ms", "took ms", "worker", "detail")
        for event in job_reads.job_events(session, ident):
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

    from models import job_reads
    from models.db import session_scope
    from models.jobs import TERMINAL_STATUSES, JobStatus

    terminal = {status.value for status in TERMINAL_STATUSES}
    deadline = None if timeout is None else time.monotonic() + timeout
    with session_scope() as session:
        job = job_reads.get_job(session, ident)
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
                job = job_reads.get_job(session, ident)
                if job is None:
                    raise CliError(f"job {ident} was deleted while being followed")
                events = job_reads.job_events_after(session, ident, seen, limit=FOLLOW_BATCH)
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


def _ms(value: float | None) -> str:
    return "" if value is None else f"{value:.1f}"

"""``drydock dlq``: dead letters: list, show, replay and purge."""

from __future__ import annotations

import json
from datetime import UTC, datetime

import typer
from rich.console import Console
from rich.table import Table

from drydock.cli.text import CliError, current_operator, parse_duration, parse_job_id, shorten, when

dlq_app = typer.Typer(help="Dead letters: list, show, replay and purge.", no_args_is_help=True)

out = Console()


@dlq_app.command("list")
def dlq_list(
    all_: bool = typer.Option(False, "--all", help="Include dead letters already replayed."),
    limit: int = typer.Option(50, min=1, max=1000),
) -> None:
    """Dead letters, newest first."""
    from models import job_reads
    from models.db import session_scope

    with session_scope() as session:
        table = Table("task", "reason", "error", "attempts", "when", "replayed")
        table.add_column("job", no_wrap=True, min_width=36)
        for letter in job_reads.list_dead_letters(session, include_replayed=all_, limit=limit):
            table.add_row(
                letter.task_name,
                letter.reason,
                shorten(f"{letter.error_class}: {letter.message}"),
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
    from models import job_reads
    from models.db import session_scope

    ident = parse_job_id(job_id)
    with session_scope() as session:
        letter = job_reads.get_dead_letter(session, ident)
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

    job = replay_dead_letter(parse_job_id(job_id), by=by or current_operator())
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
        job_ids=[parse_job_id(j) for j in job_ids] if job_ids else None, older_than=cutoff
    )
    out.print(f"purged {count} dead letter(s)")

"""What every ``drydock`` command does the same way: times, who is running it, job ids, and the
error it reports as one line."""

from __future__ import annotations

import re
import uuid
from datetime import UTC, datetime, timedelta

from kernel.errors import DrydockError


class CliError(Exception):
    """An error the CLI reports as one line."""


def when(moment: datetime | str | None) -> str:
    """A moment (or its ISO text, as the views give it) in UTC, to the second."""
    if isinstance(moment, str):
        moment = datetime.fromisoformat(moment)
    return "" if moment is None else moment.astimezone(UTC).strftime("%Y-%m-%d %H:%M:%S")


def current_operator() -> str:
    """The OS user running the command, recorded as who created, replayed or changed things."""
    import getpass

    try:
        return getpass.getuser()
    except (KeyError, OSError):
        return "unknown"


def parse_duration(text: str) -> timedelta:
    """``30m``, ``12h``, ``7d`` (or seconds: ``90s``) as a timedelta."""
    match = re.fullmatch(r"(\d+)([smhd])", text.strip())
    if not match:
        raise DrydockError(f"{text!r} is not a duration like 30m, 12h or 7d")
    unit = {"s": "seconds", "m": "minutes", "h": "hours", "d": "days"}[match.group(2)]
    return timedelta(**{unit: int(match.group(1))})


def parse_job_id(text: str) -> uuid.UUID:
    """A job id given on the command line."""
    try:
        return uuid.UUID(text)
    except ValueError:
        raise CliError(f"{text!r} is not a job id (a UUID)") from None


def shorten(text: str | None, width: int = 60) -> str:
    """``text`` cut to ``width`` characters for a table cell, with an ellipsis when cut."""
    if not text:
        return ""
    return text if len(text) <= width else text[: width - 1] + "…"

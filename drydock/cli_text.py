"""What every ``drydock`` command prints the same way: times, and who is running it."""

from __future__ import annotations

import re
from datetime import UTC, datetime, timedelta

from kernel.errors import DrydockError


def when(moment: datetime | None) -> str:
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

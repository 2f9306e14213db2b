"""What every ``drydock`` command prints the same way: times, and who is running it."""

from __future__ import annotations

from datetime import UTC, datetime


def when(moment: datetime | None) -> str:
    return "" if moment is None else moment.astimezone(UTC).strftime("%Y-%m-%d %H:%M:%S")


def current_operator() -> str:
    """The OS user running the command, recorded as who created, replayed or changed things."""
    import getpass

    try:
        return getpass.getuser()
    except (KeyError, OSError):
        return "unknown"

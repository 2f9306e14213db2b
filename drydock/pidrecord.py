"""Processes started for the tests, recorded so that CI stops exactly those and nothing else.

CI (``.ci/run``) gives the tests a file in a directory of its own through ``DRYDOCK_TEST_PIDFILE``.
Every process the tests start is appended to it as one line ``PID STARTTIME LABEL``: the children
of the pytest process (``tests/conftest.py`` records each one it spawns), and, in whichever
process starts them, the Redis and PostgreSQL servers of ``localservers`` and the children of
``drydock up``, which do not descend from pytest's own children in a way a process group would
catch (they run in sessions of their own). When the run ends, ``.ci/stop-recorded`` stops the
processes in that file, by PID or process group, never by a name pattern: a developer's own
fleet on the same machine has the same command lines as the tests' and must survive CI.

STARTTIME is field 22 of ``/proc/PID/stat`` (clock ticks after boot). With the PID it names one
process for good: once that process is gone the kernel may hand its PID to another, whose start
time differs, and which is then left alone.

Without the variable (a developer running the tests) nothing is written.
"""

from __future__ import annotations

import os
from pathlib import Path

ENV_VAR = "DRYDOCK_TEST_PIDFILE"
# Labels are for a person reading the file or the cleanup's report; keep lines short.
MAX_LABEL = 160


def start_time(pid: int) -> int | None:
    """Field 22 of ``/proc/PID/stat``, or None if there is no such process."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return None
    # Field 2, the command name in parentheses, may itself hold spaces and parentheses: count
    # the fields after the last ")" (the first of them is field 3).
    return int(stat.rpartition(")")[2].split()[19])


def recording_to() -> str | None:
    """The file processes are recorded in, if CI asked for one."""
    return os.environ.get(ENV_VAR) or None


def record(pid: int, label: str, *, path: str | None = None) -> None:
    """Append ``pid`` to ``path`` (default: ``$DRYDOCK_TEST_PIDFILE``; neither: do nothing)."""
    path = path or recording_to()
    if path is None:
        return
    started = start_time(pid)
    if started is None:
        return  # already gone and reaped: there is nothing left to stop
    text = " ".join(label.split())[:MAX_LABEL] or "?"
    line = f"{pid} {started} {text}\n".encode(errors="replace")
    # One write() with O_APPEND: the pytest process, `drydock up` and the servers' starters
    # append to the same file, and lines this short are never interleaved.
    fd = os.open(path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o600)
    try:
        os.write(fd, line)
    finally:
        os.close(fd)

"""CI stops what the tests started, by PID or process group, and nothing else.

``.ci/run`` gives the tests a pidfile (``DRYDOCK_TEST_PIDFILE``); every process they start is
recorded there (drydock/pidrecord.py), and its EXIT trap runs ``.ci/stop-recorded`` on it. These
tests run that very script against processes they start themselves: the recorded ones must go,
an unrecorded one (a developer's fleet, say, with the same command line) and a recorded PID that
now names another process (a reused PID) must be left alone.
"""

from __future__ import annotations

import contextlib
import os
import re
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from drydock import pidrecord

ROOT = Path(__file__).resolve().parent.parent
STOP_RECORDED = ROOT / ".ci" / "stop-recorded"


def alive(pid: int) -> bool:
    """The process exists and has not died (a zombie has: it only waits to be reaped)."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return False
    return stat.rpartition(")")[2].split()[0] not in ("Z", "X")


def wait_gone(pid: int, timeout: float = 10) -> bool:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if not alive(pid):
            return True
        time.sleep(0.05)
    return False


def stop_recorded(pidfile: Path, grace: int = 10) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [str(STOP_RECORDED), str(pidfile), str(grace)],
        capture_output=True,
        text=True,
        timeout=grace + 30,
        check=False,
    )


@pytest.fixture
def started() -> Iterator[list[subprocess.Popen[str]]]:
    """Processes a test starts; whatever of them is left is killed, by PID, at the end."""
    processes: list[subprocess.Popen[str]] = []
    yield processes
    for proc in processes:
        if proc.poll() is None:
            with contextlib.suppress(ProcessLookupError):
                if os.getpgid(proc.pid) == proc.pid:
                    os.killpg(proc.pid, signal.SIGKILL)  # its own group: its children too
                else:
                    proc.kill()
        proc.wait(10)


def spawn(
    started: list[subprocess.Popen[str]], script: str, *, own_group: bool = True
) -> subprocess.Popen[str]:
    """``sh -c script``, in a session of its own unless ``own_group`` is false (then it shares
    pytest's process group, so only it may be signalled, never its group)."""
    proc = subprocess.Popen(
        ["sh", "-c", script],
        stdin=subprocess.DEVNULL,
        stdout=subprocess.PIPE,
        text=True,
        start_new_session=own_group,
    )
    started.append(proc)
    return proc


def test_only_the_recorded_processes_are_stopped_and_a_reused_pid_is_spared(
    tmp_path: Path, started: list[subprocess.Popen[str]]
) -> None:
    pidfile = tmp_path / "test-pids"
    # A server in its own session, with a child in its group (a worker and its pool, say).
    server = spawn(started, "sleep 600 & echo $!; wait")
    assert server.stdout is not None
    server_child = int(server.stdout.readline())
    # One that ignores SIGTERM (so do its children): SIGKILL after the grace.
    stubborn = spawn(started, "trap '' TERM; sleep 601 & echo $!; wait")
    assert stubborn.stdout is not None
    stubborn_child = int(stubborn.stdout.readline())
    # One in pytest's own process group: signalled alone, or pytest would go too.
    in_our_group = spawn(started, "exec sleep 602", own_group=False)
    # A process with the command line of a recorded one that the tests did not record: a
    # developer's own fleet on the same machine.
    unrecorded = spawn(started, "exec sleep 600")
    # A PID whose recorded process is gone and that now names another: modelled by recording a
    # live process with a start time other than its own.
    reused = spawn(started, "exec sleep 603")

    for proc, what in ((server, "server"), (stubborn, "stubborn"), (in_our_group, "ours")):
        pidrecord.record(proc.pid, what, path=str(pidfile))
    pidrecord.record(server.pid, "recorded twice", path=str(pidfile))
    reused_start = pidrecord.start_time(reused.pid)
    assert reused_start is not None
    with pidfile.open("a") as lines:
        lines.write(f"{reused.pid} {reused_start - 1} sleep 603, before its PID was reused\n")
        lines.write("not a record at all\n")
    for proc in started:
        assert alive(proc.pid)

    began = time.monotonic()
    result = stop_recorded(pidfile, grace=2)
    assert result.returncode == 0, result.stderr

    assert server.wait(10) == -signal.SIGTERM
    assert wait_gone(server_child)
    assert in_our_group.wait(10) == -signal.SIGTERM
    assert stubborn.wait(10) == -signal.SIGKILL
    assert wait_gone(stubborn_child)
    assert time.monotonic() - began >= 2  # the stubborn one had its grace
    assert "SIGKILL" in result.stderr
    # Left alone: never recorded, or recorded as a process that no longer exists.
    assert alive(unrecorded.pid) and unrecorded.poll() is None
    assert alive(reused.pid) and reused.poll() is None
    assert str(unrecorded.pid) not in result.stderr and str(reused.pid) not in result.stderr
    assert alive(os.getpid())


def test_nothing_recorded_or_nothing_left_is_no_error(tmp_path: Path) -> None:
    assert stop_recorded(tmp_path / "never-written").returncode == 0
    gone = subprocess.Popen(["true"])
    gone.wait()
    pidfile = tmp_path / "test-pids"
    pidfile.write_text(f"{gone.pid} 1 true\n")
    result = stop_recorded(pidfile)
    assert result.returncode == 0 and result.stderr == ""


LEAKING_TEST = """
import subprocess
from pathlib import Path

from drydock import localservers


def test_that_leaks(tmp_path_factory):
    # Started like the tests' servers and workers, and never stopped: only CI can.
    proc = subprocess.Popen(["sleep", "600"], start_new_session=True)
    Path("{leaked}").write_text(str(proc.pid))
    if localservers.redis_available():
        server = localservers.start_redis(Path("{redis_dir}"))
        Path("{leaked_redis}").write_text(str(server.pid))
"""


def test_a_process_a_test_leaks_is_recorded_and_stopped_by_ci(
    tmp_path: Path, started: list[subprocess.Popen[str]]
) -> None:
    """The whole path: pytest under DRYDOCK_TEST_PIDFILE (tests/conftest.py records every child
    it starts; localservers records its servers), then CI's cleanup on that file."""
    pidfile = tmp_path / "test-pids"
    leaked, leaked_redis = tmp_path / "leaked", tmp_path / "leaked-redis"
    test_file = tmp_path / "test_leak.py"
    test_file.write_text(
        LEAKING_TEST.format(leaked=leaked, leaked_redis=leaked_redis, redis_dir=tmp_path / "redis")
    )
    # The same command line as the leaked process, not started by that run: it must survive.
    bystander = spawn(started, "exec sleep 600")
    run = subprocess.run(
        [
            sys.executable,
            "-m",
            "pytest",
            "-q",
            "-p",
            "no:cacheprovider",
            "-p",
            "no:cloudcoil",  # as pyproject.toml's addopts, which -c os.devnull leaves out
            "-p",
            "tests.conftest",
            f"--rootdir={tmp_path}",
            "-c",
            os.devnull,
            str(test_file),
        ],
        cwd=ROOT,
        env={**os.environ, pidrecord.ENV_VAR: str(pidfile)},
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    assert run.returncode == 0, run.stdout + run.stderr
    leaked_pids = [int(leaked.read_text())]
    if leaked_redis.exists():
        leaked_pids.append(int(leaked_redis.read_text()))
    for pid in leaked_pids:
        assert alive(pid), "the leak outlived its pytest run, as it should before CI's cleanup"
    recorded = {int(line.split()[0]) for line in pidfile.read_text().splitlines()}
    assert set(leaked_pids) <= recorded

    result = stop_recorded(pidfile)
    assert result.returncode == 0, result.stderr
    for pid in leaked_pids:
        assert wait_gone(pid), f"leaked process {pid} is still running"
    assert alive(bystander.pid) and bystander.poll() is None


def test_ci_stops_test_processes_by_record_only() -> None:
    """Alongside the behaviour above: no script of the repository stops processes by a name
    pattern, and CI's EXIT trap runs the cleanup on the file it gives the tests."""
    by_name = re.compile(r"\b(pkill|killall)\b|\bpgrep\b[^\n]*\s-[a-zA-Z]*f")
    places = [ROOT / ".ci", ROOT / "scripts", ROOT / "tests", ROOT / "bench", ROOT / "deploy"]
    files = [ROOT / "Makefile"] + [
        path
        for place in places
        for path in place.rglob("*")
        if path.is_file() and "__pycache__" not in path.parts and path != Path(__file__)
    ]
    offending = [
        f"{path.relative_to(ROOT)}:{number}: {line.strip()}"
        for path in files
        for number, line in enumerate(path.read_text(errors="replace").splitlines(), start=1)
        if by_name.search(line)
    ]
    assert offending == []
    ci = (ROOT / ".ci" / "run").read_text()
    assert f"export {pidrecord.ENV_VAR}=" in ci
    assert f'.ci/stop-recorded "${pidrecord.ENV_VAR}"' in ci
    assert "trap cleanup EXIT" in ci

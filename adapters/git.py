"""Fetching one revision of a git repository to build from, bounded and refusing injection.

A build names a repository URL and a revision (branch, tag or commit). Both come from whoever
sends the job, so both are checked before git sees them: git reads a URL beginning with ``-`` as
an option (``--upload-pack=<command>`` runs a command), ``ext::<command>`` runs a command by
design, and a revision beginning with ``-`` is an option too. Beyond the checks, git itself is
told which transports it may use (``protocol.allow``), runs without system or global config,
never prompts, fetches no submodules, and is killed (its whole process group) when it runs past
the time limit or the checkout grows past the size limit.

The checkout holds the commit's files and nothing else (``.git`` is removed once the commit is
recorded): it is the build context as the commit has it.
"""

from __future__ import annotations

import contextlib
import os
import re
import shutil
import signal
import subprocess
import threading
import time
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import IO, Literal

from adapters.git_inputs import (
    FULL_SHA_LENGTHS,
    HEX_DIGITS,
    MIN_ABBREVIATED_SHA,
    SourceRefusedError,
    allowed_transports,
    check_repository_url,
    check_revision,
    redact_url,
)
from kernel.errors import DrydockError, TransientError


class RevisionNotFoundError(DrydockError):
    """The repository has no branch, tag or commit by that name."""


class SourceTooLargeError(DrydockError):
    """The fetched source grew past the configured limit."""


class SourceFetchError(TransientError):
    """Fetching failed in a way a later attempt may not: the network, the remote hanging up, a
    timeout."""


# How much of git's output a failure message quotes.
ERROR_TAIL_LINES = 8


@dataclass(frozen=True)
class FetchedSource:
    path: Path
    commit: str
    revision: str
    ref_kind: Literal["branch", "tag", "commit"]
    size_bytes: int


def fetch_revision(
    url: str,
    revision: str,
    dest: Path,
    *,
    allowed_schemes: Sequence[str],
    timeout_seconds: float,
    max_bytes: int,
    on_line: Callable[[str], None] = lambda _: None,
) -> FetchedSource:
    """Fetch exactly ``revision`` of ``url`` into ``dest`` (created if missing, else empty) and
    check it out detached.

    A branch or tag is looked up first (``git ls-remote``; a name that is both is refused as
    ambiguous, ``refs/heads/X`` or ``refs/tags/X`` settles it) and fetched with depth 1. A
    full commit id is fetched with depth 1 too, falling back to fetching every branch and tag
    when the server refuses an unadvertised commit; an abbreviated one always needs that full
    fetch, then must name exactly one commit. ``on_line`` receives git's progress lines.

    The whole fetch takes at most ``timeout_seconds`` and ``dest`` at most ``max_bytes``.
    """
    check_repository_url(url, allowed_schemes)
    check_revision(revision)
    dest.mkdir(parents=True, exist_ok=True)
    if any(dest.iterdir()):
        raise ValueError(f"{dest} must be an empty directory to fetch into")
    git = _Git(
        url=url,
        dest=dest,
        transports=allowed_transports(allowed_schemes),
        deadline=time.monotonic() + timeout_seconds,
        timeout_seconds=timeout_seconds,
        max_bytes=max_bytes,
        on_line=on_line,
    )
    git.run(["init", "--quiet", "--template=", str(dest)])
    ref_kind, target = _locate(git, revision)
    commit = _fetch_commit(git, revision, ref_kind, target)
    git.run(["-c", "advice.detachedHead=false", "checkout", "--quiet", "--detach", commit])
    head = git.output(["rev-parse", "--verify", "HEAD"])
    shutil.rmtree(dest / ".git")
    size = _tree_size(dest)
    if size > max_bytes:
        raise SourceTooLargeError(_too_large(url, size, max_bytes))
    return FetchedSource(
        path=dest, commit=head, revision=revision, ref_kind=ref_kind, size_bytes=size
    )


def _locate(git: _Git, revision: str) -> tuple[Literal["branch", "tag", "commit"], str | None]:
    """What ``revision`` names on the remote: (kind, what to fetch), the latter None for an
    abbreviated commit id (found only after fetching everything)."""
    refs = git.ls_remote()
    shown = redact_url(git.url)
    if revision.startswith("refs/heads/") or revision.startswith("refs/tags/"):
        if revision not in refs:
            raise RevisionNotFoundError(f"{shown} has no {revision}")
        return ("branch" if revision.startswith("refs/heads/") else "tag"), revision
    branch, tag = f"refs/heads/{revision}", f"refs/tags/{revision}"
    if branch in refs and tag in refs:
        raise SourceRefusedError(
            f"{shown} has both a branch and a tag named {revision!r}; say {branch} or {tag}"
        )
    if branch in refs:
        return "branch", branch
    if tag in refs:
        return "tag", tag
    lowered = revision.lower()
    if HEX_DIGITS.match(lowered) and len(lowered) in FULL_SHA_LENGTHS:
        return "commit", lowered
    if HEX_DIGITS.match(lowered) and len(lowered) >= MIN_ABBREVIATED_SHA:
        return "commit", None
    raise RevisionNotFoundError(
        f"{shown} has no branch or tag named {revision!r}, and it is not a commit id "
        f"(at least {MIN_ABBREVIATED_SHA} hexadecimal digits)"
    )


def _fetch_commit(
    git: _Git, revision: str, ref_kind: Literal["branch", "tag", "commit"], target: str | None
) -> str:
    """Fetch what ``_locate`` found; the commit id it resolves to."""
    if target is None:
        # An abbreviated commit id: only the full history can say which commit it is.
        return _fetch_everything_and_find(git, revision)
    try:
        git.fetch([target])
    except _UnadvertisedCommitError:
        if ref_kind != "commit":
            raise
        return _fetch_everything_and_find(git, revision)
    return git.output(["rev-parse", "--verify", "FETCH_HEAD^{commit}"])


def _fetch_everything_and_find(git: _Git, revision: str) -> str:
    git.fetch(["+refs/heads/*:refs/remotes/origin/*", "+refs/tags/*:refs/tags/*"])
    found = git.output(
        ["rev-parse", "--verify", "--quiet", f"{revision.lower()}^{{commit}}"], check=False
    )
    if not found:
        raise RevisionNotFoundError(
            f"{redact_url(git.url)} has no commit {revision!r} reachable from its branches or "
            "tags (or the abbreviation names more than one object)"
        )
    return found


class _UnadvertisedCommitError(SourceFetchError):
    """The server would not hand out a commit by id alone (it only serves what its branches and
    tags advertise): fetch those instead."""


# git's words for failures no retry will fix: the repository is not there, or not ours to read.
_PERMANENT_GIT_FAILURES = re.compile(
    r"repository .* not found|does not appear to be a git repository|not a git repository|"
    r"authentication failed|could not read (username|password)|permission denied|"
    r"transport '.*' not allowed|unsupported protocol|terminal prompts disabled|"
    r"host key verification failed",
    re.IGNORECASE,
)


@dataclass
class _Git:
    """git commands in one checkout, sharing a deadline and a size limit."""

    url: str
    dest: Path
    transports: frozenset[str]
    deadline: float
    timeout_seconds: float
    max_bytes: int
    on_line: Callable[[str], None]

    def _config(self) -> list[str]:
        options = ["-c", "protocol.allow=never"]
        for transport in sorted(self.transports):
            options += ["-c", f"protocol.{transport}.allow=always"]
        return [
            *options,
            "-c",
            "submodule.recurse=false",
            "-c",
            "fetch.recurseSubmodules=false",
            "-c",
            "core.hooksPath=/dev/null",
            "-c",
            "credential.helper=",
            "-c",
            "core.fsmonitor=false",
            # No background gc or maintenance: nothing may outlive the command (the checkout's
            # .git is removed right after).
            "-c",
            "gc.auto=0",
            "-c",
            "maintenance.auto=false",
        ]

    def _env(self) -> dict[str, str]:
        # Nothing from the worker's own git setup: no GIT_DIR or the like, no system or global
        # config (which could name helpers, hooks or URL rewrites). ssh keys and known hosts
        # still come from the worker's home; ssh never prompts.
        env = {
            name: value
            for name, value in os.environ.items()
            if not name.startswith("GIT_") or name in ("GIT_SSH", "GIT_SSH_COMMAND")
        }
        env.update(
            GIT_TERMINAL_PROMPT="0",
            GIT_CONFIG_NOSYSTEM="1",
            GIT_CONFIG_GLOBAL=os.devnull,
            GIT_ASKPASS="/bin/false",
            SSH_ASKPASS="/bin/false",
            GIT_PROTOCOL_FROM_USER="0",
            LC_ALL="C",
        )
        env.setdefault("GIT_SSH_COMMAND", "ssh -o BatchMode=yes")
        return env

    def ls_remote(self) -> set[str]:
        output = self.output(["ls-remote", "--", self.url], network=True)
        refs = set()
        for line in output.splitlines():
            _, _, name = line.partition("\t")
            if name:
                refs.add(name.removesuffix("^{}"))
        return refs

    def fetch(self, refspecs: Sequence[str]) -> None:
        depth = ["--depth", "1"] if len(refspecs) == 1 else []
        self.run(
            [
                "fetch",
                "--progress",
                "--no-tags",
                "--no-recurse-submodules",
                *depth,
                "--",
                self.url,
                *refspecs,
            ],
            network=True,
        )

    def output(self, args: list[str], *, network: bool = False, check: bool = True) -> str:
        return "\n".join(self.run(args, network=network, check=check, forward=False)).strip()

    def run(
        self,
        args: list[str],
        *,
        network: bool = False,
        check: bool = True,
        forward: bool = True,
    ) -> list[str]:
        """Run ``git <args>`` in the checkout; its output lines (stdout, then stderr when not
        forwarding). Raises the module's errors for timeouts, size and failed network steps."""
        command = ["git", *self._config(), *args]
        proc = subprocess.Popen(
            command,
            cwd=self.dest,
            env=self._env(),
            stdin=subprocess.DEVNULL,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            # Its own process group: a timeout kills git and everything it started (ssh,
            # remote helpers, upload-pack), not just git.
            start_new_session=True,
        )
        stdout: list[str] = []
        stderr: list[str] = []
        readers = [
            threading.Thread(target=_read_lines, args=(proc.stdout, stdout.append), daemon=True),
            threading.Thread(
                target=_read_lines,
                args=(proc.stderr, self._stderr_sink(stderr, forward)),
                daemon=True,
            ),
        ]
        for reader in readers:
            reader.start()
        try:
            self._watch(proc)
        finally:
            _kill_group(proc)
            for reader in readers:
                reader.join(5)
        if proc.returncode != 0:
            lines = [*stderr, *([] if forward else stdout)]
            if not check:
                return []
            if args[0] == "fetch" and any(
                "not our ref" in line or "unadvertised object" in line for line in lines
            ):
                raise _UnadvertisedCommitError("\n".join(lines[-ERROR_TAIL_LINES:]))
            raise self._failure(args, lines, network)
        return stdout

    def _stderr_sink(self, lines: list[str], forward: bool) -> Callable[[str], None]:
        shown = redact_url(self.url)

        def sink(line: str) -> None:
            line = line.replace(self.url, shown)
            lines.append(line)
            if forward and line.strip():
                self.on_line(line)

        return sink

    def _watch(self, proc: subprocess.Popen[bytes]) -> None:
        """Wait for ``proc``, killing it past the deadline or the size limit."""
        interval = 0.05
        while True:
            remaining = self.deadline - time.monotonic()
            if remaining <= 0:
                raise SourceFetchError(
                    f"fetching {redact_url(self.url)} took longer than "
                    f"{self.timeout_seconds:g}s; stopped"
                )
            with contextlib.suppress(subprocess.TimeoutExpired):
                proc.wait(min(interval, remaining))
            started = time.monotonic()
            size = _tree_size(self.dest)
            if size > self.max_bytes:
                raise SourceTooLargeError(_too_large(self.url, size, self.max_bytes))
            if proc.returncode is not None:
                return
            # Walking a big checkout is not free: look less often the longer a walk takes.
            interval = min(1.0, max(0.05, 10 * (time.monotonic() - started)))

    def _failure(self, args: list[str], lines: list[str], network: bool) -> DrydockError:
        said = "\n".join(line for line in lines if line.strip())
        said = said.replace(self.url, redact_url(self.url))
        tail = "\n".join(said.splitlines()[-ERROR_TAIL_LINES:])
        what = f"git {args[0]} of {redact_url(self.url)} failed"
        if not network:
            return SourceRefusedError(f"{what}: {tail}")
        if _PERMANENT_GIT_FAILURES.search(said):
            return SourceRefusedError(f"{what}: {tail}")
        return SourceFetchError(f"{what}: {tail}")


def _read_lines(stream: IO[bytes] | None, sink: Callable[[str], None]) -> None:
    """Feed ``sink`` each line of ``stream``; git's progress ends lines with ``\\r``."""
    if stream is None:
        return
    pending = b""
    with contextlib.closing(stream):
        while chunk := os.read(stream.fileno(), 65536):
            pending += chunk
            *complete, pending = re.split(rb"\r\n|\r|\n", pending)
            for raw in complete:
                sink(raw.decode(errors="replace"))
    if pending:
        sink(pending.decode(errors="replace"))


def _kill_group(proc: subprocess.Popen[bytes]) -> None:
    """Kill ``proc``'s process group (git and whatever it started) and reap ``proc``."""
    with contextlib.suppress(ProcessLookupError, PermissionError):
        os.killpg(proc.pid, signal.SIGKILL)
    proc.wait()


def _tree_size(root: Path) -> int:
    """Bytes of every regular file under ``root`` (symbolic links not followed)."""
    total = 0
    for entry in _walk(root):
        with contextlib.suppress(FileNotFoundError):
            if entry.is_file(follow_symlinks=False):
                total += entry.stat(follow_symlinks=False).st_size
    return total


def _walk(root: Path) -> Iterator[os.DirEntry[str]]:
    stack = [str(root)]
    while stack:
        try:
            with os.scandir(stack.pop()) as entries:
                for entry in entries:
                    if entry.is_dir(follow_symlinks=False):
                        stack.append(entry.path)
                    else:
                        yield entry
        except (FileNotFoundError, NotADirectoryError):
            continue


def _too_large(url: str, size: int, max_bytes: int) -> str:
    return (
        f"the source of {redact_url(url)} grew past the limit of {max_bytes} bytes "
        f"({size} bytes on disk); stopped"
    )

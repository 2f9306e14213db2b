"""The git operations of a workflow run: a workspace cloned from the project's repository on
the run's branch, a commit after each step that changed files, a push of it to every remote,
and ``ls-remote`` probes of those remotes.

git runs as ``adapters.git`` runs it: no system or global config, no credential helpers, no
hooks, never a prompt, only the allowed transports, each command in its own process group and
killed (group and all) past its timeout. A credential reaches git only through the
environment of the one command that needs it (an ``GIT_ASKPASS`` script reading two variables),
never on a command line or in a URL, and is scrubbed from every message.

A commit carries ``Drydock-Run`` and ``Drydock-Step`` trailers, so a step that runs again (a
redelivered task) finds its own commit (``find_step_commit``) instead of making another.
"""

from __future__ import annotations

import contextlib
import os
import re
import shutil
import signal
import subprocess
import tempfile
import time
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass
from enum import StrEnum
from pathlib import Path
from urllib.parse import urlsplit

from tenacity import (
    RetryCallState,
    Retrying,
    retry_if_result,
    stop_after_attempt,
    wait_random_exponential,
)

from adapters.git_inputs import (
    allowed_transports,
    check_repository_url,
    check_revision,
    redact_url,
    url_scheme,
)
from kernel.errors import DrydockError
from kernel.redaction import scrub_text

# How much of git's output a failure message quotes.
ERROR_TAIL_LINES = 8

RUN_TRAILER = "Drydock-Run"
STEP_TRAILER = "Drydock-Step"

CREDENTIAL_ENV_PREFIX = "DRYDOCK_GIT_CREDENTIAL_"


class GitWorkspaceError(DrydockError):
    """A git operation on a workspace failed; the message quotes git (credentials removed)."""


@dataclass(frozen=True)
class GitCredential:
    """What git answers when a remote asks (HTTP Basic: a user and a password or token)."""

    username: str
    password: str

    def __repr__(self) -> str:
        return f"GitCredential(username={self.username!r}, password='***')"


def resolve_credential(
    reference: str | None, environ: Mapping[str, str] | None = None
) -> GitCredential | None:
    """The credential a remote's reference names: ``DRYDOCK_GIT_CREDENTIAL_<REFERENCE>`` of the
    worker's environment, ``user:password`` (a bare token is sent as the password of user
    ``x-access-token``). None for no reference; GitWorkspaceError when it names nothing."""
    if reference is None:
        return None
    name = CREDENTIAL_ENV_PREFIX + reference.upper()
    value = (os.environ if environ is None else environ).get(name)
    if not value:
        raise GitWorkspaceError(f"credential reference {reference!r}: {name} is not set here")
    user, sep, password = value.partition(":")
    return GitCredential(user, password) if sep else GitCredential("x-access-token", value)


def check_remote_url(url: str, allowed_schemes: Sequence[str]) -> str:
    """``url`` when git may use it as a project's repository or remote: an allowed scheme, no
    option or transport helper, and no credential in it (name one by reference instead)."""
    check_repository_url(url, allowed_schemes)
    # Over HTTP a user name alone can be the token (https://<token>@host/...); over ssh
    # (git@host) it is only the account.
    if redact_url(url) != url or (
        url_scheme(url) in ("http", "https") and urlsplit(url).username is not None
    ):
        raise GitWorkspaceError(
            f"URL {redact_url(url)!r} carries a credential; give the remote a credential "
            "reference instead"
        )
    return url


# ---- the runner ----------------------------------------------------------------------------


@dataclass(frozen=True)
class _Result:
    returncode: int
    stdout: str
    stderr: str


_ASKPASS = """#!/bin/sh
case "$1" in
  Username*) printf '%s\\n' "$DRYDOCK_ASKPASS_USERNAME" ;;
  *) printf '%s\\n' "$DRYDOCK_ASKPASS_PASSWORD" ;;
esac
"""


@contextlib.contextmanager
def _askpass(credential: GitCredential | None) -> Iterator[dict[str, str]]:
    """Environment variables answering git's prompts with ``credential``: the script reads
    them, so the secret is in no file and on no command line."""
    if credential is None:
        yield {"GIT_ASKPASS": "/bin/false"}
        return
    with tempfile.TemporaryDirectory(prefix="drydock-askpass-") as directory:
        script = Path(directory) / "askpass"
        script.write_text(_ASKPASS)
        script.chmod(0o700)
        yield {
            "GIT_ASKPASS": str(script),
            "DRYDOCK_ASKPASS_USERNAME": credential.username,
            "DRYDOCK_ASKPASS_PASSWORD": credential.password,
        }


def _config(allowed_schemes: Sequence[str]) -> list[str]:
    options = ["-c", "protocol.allow=never"]
    for transport in sorted(allowed_transports(allowed_schemes)):
        options += ["-c", f"protocol.{transport}.allow=always"]
    for setting in (
        "credential.helper=",
        "core.hooksPath=/dev/null",
        "core.fsmonitor=false",
        "submodule.recurse=false",
        "fetch.recurseSubmodules=false",
        "commit.gpgsign=false",
        "gc.auto=0",
        "maintenance.auto=false",
        "init.defaultBranch=main",
    ):
        options += ["-c", setting]
    return options


def _env(extra: Mapping[str, str]) -> dict[str, str]:
    # Nothing of the worker's own git setup (GIT_DIR, config, helpers); ssh never prompts.
    env = {
        name: value
        for name, value in os.environ.items()
        if not name.startswith(("GIT_", CREDENTIAL_ENV_PREFIX))
        or name in ("GIT_SSH", "GIT_SSH_COMMAND")
    }
    env.update(
        GIT_TERMINAL_PROMPT="0",
        GIT_CONFIG_NOSYSTEM="1",
        GIT_CONFIG_GLOBAL=os.devnull,
        SSH_ASKPASS="/bin/false",
        GIT_PROTOCOL_FROM_USER="0",
        LC_ALL="C",
    )
    env.setdefault("GIT_SSH_COMMAND", "ssh -o BatchMode=yes")
    env.update(extra)
    return env


def _git(
    args: Sequence[str],
    *,
    cwd: Path | None,
    allowed_schemes: Sequence[str],
    timeout_seconds: float,
    credential: GitCredential | None = None,
    extra_env: Mapping[str, str] | None = None,
    stdin: str | None = None,
) -> _Result:
    """Run ``git <args>``; a timeout kills git's whole process group (ssh, remote helpers)."""
    with _askpass(credential) as askpass:
        proc = subprocess.Popen(
            ["git", *_config(allowed_schemes), *args],
            cwd=cwd,
            env=_env({**askpass, **(extra_env or {})}),
            stdin=subprocess.PIPE if stdin is not None else subprocess.DEVNULL,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            start_new_session=True,
        )
        try:
            out, err = proc.communicate(
                stdin.encode() if stdin is not None else None, timeout=timeout_seconds
            )
        except subprocess.TimeoutExpired:
            _kill_group(proc)
            return _Result(124, "", f"timed out after {timeout_seconds:g}s")
        finally:
            _kill_group(proc)
    return _Result(proc.returncode, out.decode(errors="replace"), err.decode(errors="replace"))


def _kill_group(proc: subprocess.Popen[bytes]) -> None:
    with contextlib.suppress(ProcessLookupError, PermissionError):
        os.killpg(proc.pid, signal.SIGKILL)
    proc.wait()


def _said(result: _Result, url: str | None, credential: GitCredential | None) -> str:
    """git's last lines, the URL redacted and the credential scrubbed."""
    text = "\n".join(line for line in (result.stderr + result.stdout).splitlines() if line.strip())
    if url:
        text = text.replace(url, redact_url(url))
    secrets = [credential.password] if credential and credential.password else []
    return scrub_text("\n".join(text.splitlines()[-ERROR_TAIL_LINES:]), secrets)


def _check(
    result: _Result, what: str, url: str | None = None, credential: GitCredential | None = None
) -> str:
    if result.returncode != 0:
        raise GitWorkspaceError(f"{what} failed: {_said(result, url, credential)}")
    return result.stdout.strip()


# ---- workspace -----------------------------------------------------------------------------


@dataclass(frozen=True)
class Workspace:
    path: Path
    branch: str
    # The commit the run started from.
    base_commit: str


def clone_workspace(
    url: str,
    revision: str,
    dest: Path,
    branch: str,
    *,
    allowed_schemes: Sequence[str],
    credential: GitCredential | None = None,
    timeout_seconds: float = 300.0,
) -> Workspace:
    """Clone ``url`` into ``dest`` (missing or empty) and check out ``branch``, created at
    ``revision`` (a branch, tag or commit of the repository)."""
    check_remote_url(url, allowed_schemes)
    check_revision(revision)
    check_revision(branch)
    dest.mkdir(parents=True, exist_ok=True)
    if any(dest.iterdir()):
        raise GitWorkspaceError(f"{dest} must be an empty directory to clone into")
    run = _runner(dest, allowed_schemes, timeout_seconds)
    _check(
        _git(
            ["clone", "--quiet", "--no-checkout", "--template=", "--", url, str(dest)],
            cwd=None,
            allowed_schemes=allowed_schemes,
            timeout_seconds=timeout_seconds,
            credential=credential,
        ),
        f"cloning {redact_url(url)}",
        url,
        credential,
    )
    commit = ""
    for candidate in (f"refs/remotes/origin/{revision}", f"refs/tags/{revision}", revision):
        found = run(
            ["rev-parse", "--verify", "--quiet", "--end-of-options", f"{candidate}^{{commit}}"]
        )
        if found.returncode == 0:
            commit = found.stdout.strip()
            break
    if not commit:
        shutil.rmtree(dest / ".git", ignore_errors=True)
        raise GitWorkspaceError(f"{redact_url(url)} has no branch, tag or commit {revision!r}")
    _check(run(["checkout", "--quiet", "-B", branch, commit]), f"checking out {branch}")
    return Workspace(path=dest, branch=branch, base_commit=commit)


def _runner(cwd: Path, allowed_schemes: Sequence[str], timeout_seconds: float) -> _Runner:
    return _Runner(cwd, tuple(allowed_schemes), timeout_seconds)


@dataclass(frozen=True)
class _Runner:
    cwd: Path
    allowed_schemes: tuple[str, ...]
    timeout_seconds: float

    def __call__(self, args: Sequence[str], **kwargs: object) -> _Result:
        return _git(
            args,
            cwd=self.cwd,
            allowed_schemes=self.allowed_schemes,
            timeout_seconds=self.timeout_seconds,
            **kwargs,  # type: ignore[arg-type]
        )


def commit_all(
    workspace: Path,
    author_name: str,
    author_email: str,
    message: str,
    trailers: Mapping[str, str],
    *,
    timeout_seconds: float = 60.0,
) -> str | None:
    """Commit every change in ``workspace`` (added, changed, removed files) as the runner;
    the new commit's id, or None when nothing changed (no commit made)."""
    run = _Runner(workspace, (), timeout_seconds)
    _check(run(["add", "--all"]), "staging the step's changes")
    if not _check(run(["status", "--porcelain"]), "reading the workspace's status"):
        return None
    body = message.rstrip() + "\n\n" + "".join(f"{k}: {v}\n" for k, v in trailers.items())
    identity = {
        "GIT_AUTHOR_NAME": author_name,
        "GIT_AUTHOR_EMAIL": author_email,
        "GIT_COMMITTER_NAME": author_name,
        "GIT_COMMITTER_EMAIL": author_email,
    }
    _check(
        run(
            ["commit", "--quiet", "--no-verify", "--cleanup=verbatim", "-F", "-"],
            extra_env=identity,
            stdin=body,
        ),
        "committing the step's changes",
    )
    return _check(run(["rev-parse", "--verify", "HEAD"]), "reading the new commit")


def step_trailers(run_id: str, step: str) -> dict[str, str]:
    return {RUN_TRAILER: run_id, STEP_TRAILER: step}


def find_step_commit(
    source: Path | str,
    run_id: str,
    step: str,
    *,
    branch: str,
    allowed_schemes: Sequence[str] = (),
    credential: GitCredential | None = None,
    timeout_seconds: float = 60.0,
) -> str | None:
    """The commit of ``branch`` (in a workspace, or on a remote URL) whose trailers name this
    run and step; None when there is none."""
    if isinstance(source, Path):
        return _find_in(source, f"refs/heads/{branch}", run_id, step, timeout_seconds)
    check_remote_url(source, allowed_schemes)
    with tempfile.TemporaryDirectory(prefix="drydock-find-") as directory:
        bare = Path(directory)
        run = _Runner(bare, tuple(allowed_schemes), timeout_seconds)
        _check(run(["init", "--quiet", "--bare", "--template=", str(bare)]), "preparing a fetch")
        fetched = run(
            ["fetch", "--quiet", "--no-tags", "--", source, f"+refs/heads/{branch}:refs/found"],
            credential=credential,
        )
        if fetched.returncode != 0:
            if "couldn't find remote ref" in fetched.stderr:
                return None
            _check(fetched, f"fetching {branch} of {redact_url(source)}", source, credential)
        return _find_in(bare, "refs/found", run_id, step, timeout_seconds)


def _find_in(repo: Path, ref: str, run_id: str, step: str, timeout_seconds: float) -> str | None:
    run = _Runner(repo, (), timeout_seconds)
    log = run(
        [
            "log",
            "--format=%H%x00%(trailers:key=Drydock-Run,valueonly,separator=%x01)"
            "%x00%(trailers:key=Drydock-Step,valueonly,separator=%x01)%x00",
            ref,
            "--",
        ]
    )
    if log.returncode != 0:
        return None
    fields = log.stdout.split("\x00")
    for index in range(0, len(fields) - 3, 3):
        sha, runs, steps = fields[index].strip(), fields[index + 1], fields[index + 2]
        if run_id in runs.strip().split("\x01") and step in steps.strip().split("\x01"):
            return sha
    return None


class RebaseConflictError(GitWorkspaceError):
    """The workspace's commits do not apply on the branch as it is now."""

    def __init__(self, upstream: str, files: Sequence[str]) -> None:
        shown = ", ".join(files[:20]) + (f", and {len(files) - 20} more" if len(files) > 20 else "")
        super().__init__(
            f"the step's commit conflicts with commits made on the branch since it started "
            f"(now at {upstream[:12]}): {shown or 'no file named'}"
        )
        self.files = list(files)


_FULL_COMMIT_ID = re.compile(r"[0-9a-f]{40}|[0-9a-f]{64}")


def resolve_revision(
    url: str,
    revision: str,
    *,
    allowed_schemes: Sequence[str],
    credential: GitCredential | None = None,
    timeout_seconds: float = 60.0,
) -> str | None:
    """The commit ``revision`` names on ``url``: a branch's tip or a tag's commit, asked with
    ``ls-remote`` (nothing is fetched); a full commit id is taken as it is (cloning checks it).
    None when the remote has no such branch or tag."""
    check_remote_url(url, allowed_schemes)
    check_revision(revision)
    if _FULL_COMMIT_ID.fullmatch(revision):
        return revision
    with tempfile.TemporaryDirectory(prefix="drydock-resolve-") as directory:
        listed = _check(
            _git(
                [
                    "ls-remote",
                    "--",
                    url,
                    f"refs/heads/{revision}",
                    f"refs/tags/{revision}",
                    f"refs/tags/{revision}^{{}}",
                ],
                cwd=Path(directory),
                allowed_schemes=allowed_schemes,
                timeout_seconds=timeout_seconds,
                credential=credential,
            ),
            f"asking {redact_url(url)} for {revision}",
            url,
            credential,
        )
    refs: dict[str, str] = {}
    for line in listed.splitlines():
        sha, _, ref = line.partition("\t")
        if ref:
            refs[ref] = sha
    # A branch before a tag of the same name (as clone_workspace reads them); a tag's peeled
    # commit before the tag object.
    for ref in (f"refs/heads/{revision}", f"refs/tags/{revision}^{{}}", f"refs/tags/{revision}"):
        if ref in refs:
            return refs[ref]
    return None


def fetch_branch(
    workspace: Path,
    url: str,
    branch: str,
    *,
    allowed_schemes: Sequence[str],
    credential: GitCredential | None = None,
    timeout_seconds: float = 120.0,
) -> str | None:
    """Fetch ``branch`` of ``url`` into the workspace; its tip, or None when the remote has no
    such branch (yet)."""
    check_remote_url(url, allowed_schemes)
    check_revision(branch)
    run = _Runner(workspace, tuple(allowed_schemes), timeout_seconds)
    fetched = run(
        ["fetch", "--quiet", "--no-tags", "--", url, f"+refs/heads/{branch}:refs/drydock/upstream"],
        credential=credential,
    )
    if fetched.returncode != 0:
        if "couldn't find remote ref" in fetched.stderr:
            return None
        _check(fetched, f"fetching {branch} of {redact_url(url)}", url, credential)
    return _check(run(["rev-parse", "--verify", "refs/drydock/upstream"]), "reading the fetch")


def check_out(workspace: Path, branch: str, commit: str, *, timeout_seconds: float = 120.0) -> None:
    """Put ``branch`` at ``commit`` and check it out (the workspace's files follow)."""
    run = _Runner(workspace, (), timeout_seconds)
    _check(run(["checkout", "--quiet", "--force", "-B", branch, commit]), f"checking out {branch}")


def reset_workspace(workspace: Path, *, timeout_seconds: float = 120.0) -> None:
    """Put the workspace's files back as HEAD has them: changes undone, new files removed."""
    run = _Runner(workspace, (), timeout_seconds)
    _check(run(["reset", "--quiet", "--hard", "HEAD"]), "resetting the workspace")
    _check(run(["clean", "-ffdxq"]), "cleaning the workspace")


def head_commit(workspace: Path, *, timeout_seconds: float = 60.0) -> str:
    return _check(
        _Runner(workspace, (), timeout_seconds)(["rev-parse", "--verify", "HEAD"]), "HEAD"
    )


def is_ancestor(
    workspace: Path, ancestor: str, commit: str, *, timeout_seconds: float = 60.0
) -> bool:
    run = _Runner(workspace, (), timeout_seconds)
    return run(["merge-base", "--is-ancestor", ancestor, commit]).returncode == 0


def rebase_onto(
    workspace: Path,
    upstream: str,
    author_name: str,
    author_email: str,
    *,
    timeout_seconds: float = 120.0,
) -> str:
    """Replay the workspace's commits that ``upstream`` lacks onto it (parallel steps' commits
    made one line); the new HEAD. RebaseConflictError, the workspace as it was, when they do
    not apply."""
    run = _Runner(workspace, (), timeout_seconds)
    identity = {"GIT_COMMITTER_NAME": author_name, "GIT_COMMITTER_EMAIL": author_email}
    rebased = run(["rebase", "--quiet", "--no-autostash", upstream], extra_env=identity)
    if rebased.returncode != 0:
        conflicted = run(["diff", "--name-only", "--diff-filter=U"]).stdout.split()
        run(["rebase", "--abort"])
        raise RebaseConflictError(upstream, conflicted)
    return head_commit(workspace, timeout_seconds=timeout_seconds)


# ---- push and ls-remote --------------------------------------------------------------------


class PushFailure(StrEnum):
    UNREACHABLE = "unreachable"
    AUTH = "auth"
    REJECTED_NON_FAST_FORWARD = "rejected_non_fast_forward"
    OTHER = "other"


class PushStatus(StrEnum):
    PUSHED = "pushed"
    UP_TO_DATE = "up_to_date"
    FAILED = "failed"


@dataclass(frozen=True)
class PushOutcome:
    remote: str  # redacted
    branch: str
    status: PushStatus
    failure: PushFailure | None
    error: str | None
    attempts: int

    @property
    def ok(self) -> bool:
        return self.status is not PushStatus.FAILED


_UNREACHABLE = re.compile(
    r"connection refused|could not resolve host|unable to connect|failed to connect|"
    r"connection timed out|timed out after|network is unreachable|no route to host|"
    r"unable to look up|connection reset|could not read from remote repository|"
    r"the remote end hung up unexpectedly|couldn't connect",
    re.IGNORECASE,
)
_AUTH = re.compile(
    r"authentication failed|could not read username|could not read password|"
    r"terminal prompts disabled|permission denied|\b401\b|\b403\b|invalid username or password|"
    r"access denied|not authorized",
    re.IGNORECASE,
)
_NON_FAST_FORWARD = re.compile(r"non-fast-forward|\(fetch first\)|\[rejected\]", re.IGNORECASE)


def classify_push_failure(stderr: str) -> PushFailure:
    """What kind of failure git's words describe (auth is read before unreachable: a refused
    credential often ends with the remote hanging up too)."""
    if _NON_FAST_FORWARD.search(stderr):
        return PushFailure.REJECTED_NON_FAST_FORWARD
    if _AUTH.search(stderr):
        return PushFailure.AUTH
    if _UNREACHABLE.search(stderr):
        return PushFailure.UNREACHABLE
    return PushFailure.OTHER


def push(
    workspace: Path,
    remote_url: str,
    branch: str,
    credential: GitCredential | None,
    *,
    allowed_schemes: Sequence[str],
    timeout_seconds: float = 120.0,
    attempts: int = 3,
    max_wait_seconds: float = 2.0,
) -> PushOutcome:
    """Push the workspace's HEAD to ``branch`` of ``remote_url``. Only an unreachable remote is
    tried again (up to ``attempts`` times, random exponential waits up to
    ``max_wait_seconds``): a refused credential or a diverged branch stays so. Pushing what
    the remote already has is ``up_to_date``."""
    check_remote_url(remote_url, allowed_schemes)
    check_revision(branch)
    shown = redact_url(remote_url)
    run = _Runner(workspace, tuple(allowed_schemes), timeout_seconds)

    def attempt() -> PushOutcome:
        result = run(
            ["push", "--porcelain", "--no-verify", "--", remote_url, f"HEAD:refs/heads/{branch}"],
            credential=credential,
        )
        if result.returncode == 0:
            up_to_date = all(
                line.startswith("=")
                for line in result.stdout.splitlines()
                if line.startswith(("=", " ", "*", "+", "-", "!"))
            )
            status = PushStatus.UP_TO_DATE if up_to_date else PushStatus.PUSHED
            return PushOutcome(shown, branch, status, None, None, 0)
        said = _said(result, remote_url, credential)
        return PushOutcome(
            shown,
            branch,
            PushStatus.FAILED,
            classify_push_failure(result.stderr + "\n" + result.stdout),
            f"pushing {branch} to {shown} failed: {said}",
            0,
        )

    def unreachable(outcome: PushOutcome) -> bool:
        return outcome.failure is PushFailure.UNREACHABLE

    def last(state: RetryCallState) -> PushOutcome:
        assert state.outcome is not None
        result: PushOutcome = state.outcome.result()
        return result

    tries = 0

    def counted() -> PushOutcome:
        nonlocal tries
        tries += 1
        return attempt()

    retrying = Retrying(
        retry=retry_if_result(unreachable),
        stop=stop_after_attempt(max(1, attempts)),
        # Full jitter: workers retrying one remote that came back do not push in step.
        wait=wait_random_exponential(multiplier=0.2, max=max_wait_seconds),
        retry_error_callback=last,
    )
    outcome: PushOutcome = retrying(counted)
    return PushOutcome(
        outcome.remote, outcome.branch, outcome.status, outcome.failure, outcome.error, tries
    )


@dataclass(frozen=True)
class RemoteCheck:
    reachable: bool
    latency_ms: float | None
    error: str | None


def ls_remote(
    url: str,
    credential: GitCredential | None,
    timeout: float,
    *,
    allowed_schemes: Sequence[str],
) -> RemoteCheck:
    """Whether ``url`` answers ``git ls-remote`` within ``timeout`` seconds, and how fast."""
    try:
        check_remote_url(url, allowed_schemes)
    except DrydockError as exc:
        return RemoteCheck(False, None, str(exc))
    started = time.monotonic()
    with tempfile.TemporaryDirectory(prefix="drydock-ls-remote-") as directory:
        result = _git(
            ["ls-remote", "--heads", "--", url],
            cwd=Path(directory),
            allowed_schemes=allowed_schemes,
            timeout_seconds=timeout,
            credential=credential,
        )
    latency = round((time.monotonic() - started) * 1000, 1)
    if result.returncode == 0:
        return RemoteCheck(True, latency, None)
    return RemoteCheck(False, None, f"{redact_url(url)}: {_said(result, url, credential)}")


@dataclass(frozen=True)
class RemoteTarget:
    """One remote to probe: its name (for messages), URL and credential."""

    name: str
    url: str
    credential: GitCredential | None = None


class RemoteUnreachableError(GitWorkspaceError):
    """A remote a run needs did not answer: the run fails before any step."""


def check_remotes(
    targets: Sequence[RemoteTarget], *, timeout: float, allowed_schemes: Sequence[str]
) -> list[RemoteCheck]:
    """``ls_remote`` of every target at once (each bounded by ``timeout``), in their order."""
    if not targets:
        return []
    from concurrent.futures import ThreadPoolExecutor

    with ThreadPoolExecutor(max_workers=min(16, len(targets))) as pool:
        return list(
            pool.map(
                lambda t: ls_remote(t.url, t.credential, timeout, allowed_schemes=allowed_schemes),
                targets,
            )
        )


def require_reachable(
    targets: Sequence[RemoteTarget], *, timeout: float, allowed_schemes: Sequence[str]
) -> list[RemoteCheck]:
    """Probe every remote a run needs; RemoteUnreachableError naming each that did not answer."""
    checks = check_remotes(targets, timeout=timeout, allowed_schemes=allowed_schemes)
    failed = [
        f"{target.name} ({check.error})"
        for target, check in zip(targets, checks, strict=True)
        if not check.reachable
    ]
    if failed:
        raise RemoteUnreachableError("unreachable remotes: " + "; ".join(failed))
    return checks

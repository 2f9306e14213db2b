"""The git operations of a workflow run against real remotes on loopback: a ``git daemon``
(receive-pack enabled), a second bare repository over file://, and ``git http-backend``
behind a small HTTP server that demands Basic auth."""

from __future__ import annotations

import base64
import contextlib
import os
import shutil
import signal
import socket
import subprocess
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import pytest
import typer
from fastapi import FastAPI
from fastapi.testclient import TestClient
from sqlalchemy import select
from typer.testing import CliRunner

from adapters.git_workspace import (
    GitCredential,
    GitWorkspaceError,
    PushFailure,
    PushStatus,
    RemoteTarget,
    RemoteUnreachableError,
    check_remote_url,
    clone_workspace,
    commit_all,
    find_step_commit,
    ls_remote,
    push,
    require_reachable,
    resolve_credential,
    step_trailers,
)
from models import projects
from models.db import session_scope
from models.policy import PolicyDecision
from models.projects import ProjectRefusedError
from tests.conftest import _missing, _register_stop

SCHEMES = ["git", "file", "http"]
AUTHOR = ("Drydock runner", "runner@drydock.invalid")
USER, PASSWORD = "robot", "s3cret-push-token-9f2c"


def git(*args: str, cwd: Path | None = None) -> str:
    env = {
        **{k: v for k, v in os.environ.items() if not k.startswith("GIT_")},
        "GIT_CONFIG_NOSYSTEM": "1",
        "GIT_CONFIG_GLOBAL": os.devnull,
        "GIT_AUTHOR_NAME": "seed",
        "GIT_AUTHOR_EMAIL": "seed@example.invalid",
        "GIT_COMMITTER_NAME": "seed",
        "GIT_COMMITTER_EMAIL": "seed@example.invalid",
    }
    return subprocess.run(
        ["git", "-c", "init.defaultBranch=main", "-c", "protocol.file.allow=always", *args],
        cwd=cwd,
        env=env,
        check=True,
        capture_output=True,
        text=True,
        timeout=60,
    ).stdout.strip()


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def wait_for_port(port: int, timeout: float = 10.0) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        with socket.socket() as s:
            if s.connect_ex(("127.0.0.1", port)) == 0:
                return
        time.sleep(0.05)
    raise AssertionError(f"nothing listens on 127.0.0.1:{port}")


def bare_repo(path: Path, seed: Path | None = None) -> Path:
    """A bare repository (its main branch the seed's, when given)."""
    git("init", "--quiet", "--bare", str(path))
    # The daemon and http-backend accept pushes only to repositories that allow them.
    git("config", "http.receivepack", "true", cwd=path)
    if seed is not None:
        git("push", "--quiet", f"file://{path}", "main:main", cwd=seed)
    return path


@dataclass
class Remotes:
    seed: Path
    first_commit: str
    base: Path
    daemon_url: str
    mirror_url: str
    http_url: str
    daemon_pid: int


def _start_daemon(base: Path, port: int) -> subprocess.Popen[bytes]:
    if shutil.which("git") is None:
        _missing("git")
    proc = subprocess.Popen(
        [
            "git",
            "daemon",
            "--reuseaddr",
            "--enable=receive-pack",
            f"--base-path={base}",
            "--export-all",
            "--listen=127.0.0.1",
            f"--port={port}",
            str(base),
        ],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
        # Its own group: stopping it stops the per-connection children too.
        start_new_session=True,
    )
    wait_for_port(port)
    return proc


def _stop_group(pid: int) -> None:
    try:
        os.killpg(pid, signal.SIGTERM)
    except ProcessLookupError:
        return
    deadline = time.monotonic() + 5
    while time.monotonic() < deadline:
        try:
            os.waitpid(pid, os.WNOHANG)
            os.kill(pid, 0)
        except (ProcessLookupError, ChildProcessError):
            return
        time.sleep(0.05)
    with contextlib.suppress(ProcessLookupError):
        os.killpg(pid, signal.SIGKILL)


class _BasicAuthGit(BaseHTTPRequestHandler):
    """git's smart HTTP through ``git http-backend`` (CGI), for one user and password."""

    root: Path

    def log_message(self, format: str, *args: object) -> None:
        return

    def do_GET(self) -> None:
        self._serve()

    def do_POST(self) -> None:
        self._serve()

    def _serve(self) -> None:
        expected = "Basic " + base64.b64encode(f"{USER}:{PASSWORD}".encode()).decode()
        if self.headers.get("Authorization") != expected:
            self.send_response(401)
            self.send_header("WWW-Authenticate", 'Basic realm="git"')
            self.send_header("Content-Length", "0")
            self.end_headers()
            return
        path, _, query = self.path.partition("?")
        length = int(self.headers.get("Content-Length") or 0)
        body = self.rfile.read(length) if length else b""
        env = {
            "PATH": os.environ.get("PATH", "/usr/bin:/bin"),
            "GIT_PROJECT_ROOT": str(self.root),
            "GIT_HTTP_EXPORT_ALL": "1",
            "GIT_CONFIG_NOSYSTEM": "1",
            "GIT_CONFIG_GLOBAL": os.devnull,
            "REMOTE_USER": USER,
            "REQUEST_METHOD": self.command,
            "PATH_INFO": path.removeprefix("/git"),
            "QUERY_STRING": query,
            "CONTENT_TYPE": self.headers.get("Content-Type", ""),
            "CONTENT_LENGTH": str(len(body)),
            "HTTP_CONTENT_ENCODING": self.headers.get("Content-Encoding", ""),
            "GIT_PROTOCOL": self.headers.get("Git-Protocol", ""),
        }
        done = subprocess.run(
            ["git", "http-backend"], input=body, env=env, capture_output=True, timeout=60
        )
        head, _, payload = done.stdout.partition(b"\r\n\r\n")
        status = 200
        headers: list[tuple[str, str]] = []
        for line in head.decode().split("\r\n"):
            name, _, value = line.partition(":")
            if name.lower() == "status":
                status = int(value.strip().split()[0])
            elif name:
                headers.append((name, value.strip()))
        self.send_response(status)
        for name, value in headers:
            self.send_header(name, value)
        self.send_header("Content-Length", str(len(payload)))
        self.end_headers()
        self.wfile.write(payload)


@pytest.fixture(scope="module")
def remotes(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Remotes]:
    root = tmp_path_factory.mktemp("remotes")
    seed = root / "seed"
    git("init", "--quiet", str(seed))
    (seed / "README").write_text("hello\n")
    git("add", "README", cwd=seed)
    git("commit", "--quiet", "-m", "first", cwd=seed)
    first = git("rev-parse", "HEAD", cwd=seed)
    (seed / "README").write_text("hello again\n")
    git("commit", "--quiet", "-am", "second", cwd=seed)

    base = root / "daemon"
    base.mkdir()
    bare_repo(base / "project.git", seed)
    mirror = bare_repo(root / "mirror.git")
    http_root = root / "http"
    http_root.mkdir()
    bare_repo(http_root / "project.git", seed)

    port = free_port()
    daemon = _start_daemon(base, port)
    _register_stop(lambda: _stop_group(daemon.pid))

    handler = type("Handler", (_BasicAuthGit,), {"root": http_root})
    server = ThreadingHTTPServer(("127.0.0.1", 0), handler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield Remotes(
            seed=seed,
            first_commit=first,
            base=base,
            daemon_url=f"git://127.0.0.1:{port}/project.git",
            mirror_url=f"file://{mirror}",
            http_url=f"http://127.0.0.1:{server.server_address[1]}/git/project.git",
            daemon_pid=daemon.pid,
        )
    finally:
        server.shutdown()
        server.server_close()
        _stop_group(daemon.pid)


def closed_port_url() -> str:
    return f"git://127.0.0.1:{free_port()}/project.git"


def head_of(url: str, branch: str, tmp: Path) -> str:
    """The commit ``branch`` of ``url`` has, read by cloning it back."""
    dest = tmp / f"back-{time.monotonic_ns()}"
    git("clone", "--quiet", "--branch", branch, url, str(dest))
    return git("rev-parse", "HEAD", cwd=dest)


def workspace(remotes: Remotes, tmp: Path, branch: str, revision: str = "main") -> Path:
    return clone_workspace(
        remotes.daemon_url, revision, tmp / f"ws-{branch}", branch, allowed_schemes=SCHEMES
    ).path


def step_commit(path: Path, run_id: str, step: str, content: str) -> str | None:
    (path / f"{step}.txt").write_text(content)
    return commit_all(
        path, *AUTHOR, f"workflow run {run_id}: step {step}", step_trailers(run_id, step)
    )


# ---- workspace and commits -----------------------------------------------------------------


def test_a_workspace_is_cloned_at_a_revision_on_the_runs_branch(
    remotes: Remotes, tmp_path: Path
) -> None:
    ws = clone_workspace(
        remotes.daemon_url,
        remotes.first_commit,
        tmp_path / "ws",
        "run-1",
        allowed_schemes=SCHEMES,
    )
    assert ws.base_commit == remotes.first_commit
    assert git("rev-parse", "HEAD", cwd=ws.path) == remotes.first_commit
    assert git("rev-parse", "--abbrev-ref", "HEAD", cwd=ws.path) == "run-1"
    assert (ws.path / "README").read_text() == "hello\n"

    with pytest.raises(GitWorkspaceError, match="no branch, tag or commit 'nope'"):
        clone_workspace(
            remotes.daemon_url, "nope", tmp_path / "ws2", "run-1", allowed_schemes=SCHEMES
        )
    # git:// is not allowed by default, and a URL carrying a credential never is.
    with pytest.raises(Exception, match="not allowed"):
        clone_workspace(
            remotes.daemon_url, "main", tmp_path / "ws3", "r", allowed_schemes=["https"]
        )
    with pytest.raises(GitWorkspaceError, match="carries a credential"):
        check_remote_url("https://ghp_token123@example.com/x.git", ["https"])
    assert check_remote_url("ssh://git@example.com/x.git", ["ssh"])
    with pytest.raises(GitWorkspaceError, match="carries a credential"):
        clone_workspace(
            f"http://u:{PASSWORD}@127.0.0.1/x.git", "main", tmp_path / "ws4", "r",
            allowed_schemes=SCHEMES,
        )  # fmt: skip


def test_commit_all_commits_only_changes_with_the_runners_identity_and_trailers(
    remotes: Remotes, tmp_path: Path
) -> None:
    path = workspace(remotes, tmp_path, "run-2")
    assert commit_all(path, *AUTHOR, "nothing", step_trailers("run-2", "lint")) is None
    assert git("rev-list", "--count", "HEAD", cwd=path) == "2"

    sha = step_commit(path, "run-2", "lint", "linted\n")
    assert sha is not None
    shown = git("log", "-1", "--format=%an <%ae>|%cn <%ce>|%B", cwd=path)
    assert shown.startswith(
        "Drydock runner <runner@drydock.invalid>|Drydock runner <runner@drydock.invalid>|"
        "workflow run run-2: step lint"
    )
    assert "Drydock-Run: run-2\nDrydock-Step: lint" in shown
    # A redelivered step recognises its commit; another step or run has none.
    assert find_step_commit(path, "run-2", "lint", branch="run-2") == sha
    assert find_step_commit(path, "run-2", "build", branch="run-2") is None
    assert find_step_commit(path, "run-3", "lint", branch="run-2") is None


# ---- pushes --------------------------------------------------------------------------------


def test_a_commit_is_pushed_to_every_remote_and_pushing_again_is_a_no_op(
    remotes: Remotes, tmp_path: Path
) -> None:
    path = workspace(remotes, tmp_path, "run-push")
    sha = step_commit(path, "run-push", "lint", "pushed\n")
    assert sha is not None
    for url in (remotes.daemon_url, remotes.mirror_url):
        outcome = push(path, url, "run-push", None, allowed_schemes=SCHEMES)
        assert (outcome.status, outcome.failure, outcome.attempts) == (PushStatus.PUSHED, None, 1)
        assert head_of(url, "run-push", tmp_path) == sha
        again = push(path, url, "run-push", None, allowed_schemes=SCHEMES)
        assert again.status is PushStatus.UP_TO_DATE and again.ok
        assert (
            find_step_commit(url, "run-push", "lint", branch="run-push", allowed_schemes=SCHEMES)
            == sha
        )
    assert (
        find_step_commit(remotes.mirror_url, "x", "y", branch="absent", allowed_schemes=SCHEMES)
        is None
    )


def test_a_diverged_branch_is_rejected_non_fast_forward(remotes: Remotes, tmp_path: Path) -> None:
    # Someone else pushed to the run's branch first.
    other = workspace(remotes, tmp_path, "run-diverge")
    assert step_commit(other, "other", "edit", "theirs\n")
    assert push(other, remotes.daemon_url, "run-diverge", None, allowed_schemes=SCHEMES).ok

    mine = clone_workspace(
        remotes.daemon_url, remotes.first_commit, tmp_path / "mine", "run-diverge",
        allowed_schemes=SCHEMES,
    ).path  # fmt: skip
    assert step_commit(mine, "run-diverge", "lint", "mine\n")
    outcome = push(mine, remotes.daemon_url, "run-diverge", None, allowed_schemes=SCHEMES)
    assert outcome.status is PushStatus.FAILED
    assert outcome.failure is PushFailure.REJECTED_NON_FAST_FORWARD
    assert outcome.attempts == 1  # retrying cannot help


def test_an_unreachable_remote_is_classified_and_fails_fast(
    remotes: Remotes, tmp_path: Path
) -> None:
    path = workspace(remotes, tmp_path, "run-down")
    assert step_commit(path, "run-down", "lint", "x\n")
    url = closed_port_url()
    started = time.monotonic()
    outcome = push(
        path, url, "run-down", None, allowed_schemes=SCHEMES, attempts=3, max_wait_seconds=0.2
    )
    assert outcome.failure is PushFailure.UNREACHABLE
    assert outcome.attempts == 3  # the only kind retried
    assert time.monotonic() - started < 10

    check = ls_remote(url, None, 2.0, allowed_schemes=SCHEMES)
    assert not check.reachable and check.error and "refused" in check.error.lower()
    reachable = ls_remote(remotes.daemon_url, None, 2.0, allowed_schemes=SCHEMES)
    assert reachable.reachable and reachable.latency_ms is not None

    # A run needing it fails before any step, naming it.
    with pytest.raises(RemoteUnreachableError, match="mirror"):
        require_reachable(
            [RemoteTarget("origin", remotes.daemon_url), RemoteTarget("mirror", url)],
            timeout=2.0,
            allowed_schemes=SCHEMES,
        )


def test_a_refused_credential_is_classified_and_never_shown(
    remotes: Remotes, tmp_path: Path
) -> None:
    path = workspace(remotes, tmp_path, "run-auth")
    sha = step_commit(path, "run-auth", "lint", "auth\n")
    wrong = GitCredential(USER, "wrong-password-7e1d")
    outcome = push(path, remotes.http_url, "run-auth", wrong, allowed_schemes=SCHEMES)
    assert outcome.failure is PushFailure.AUTH and outcome.attempts == 1
    assert outcome.error and "wrong-password-7e1d" not in outcome.error
    anonymous = push(path, remotes.http_url, "run-auth", None, allowed_schemes=SCHEMES)
    assert anonymous.failure is PushFailure.AUTH

    right = GitCredential(USER, PASSWORD)
    assert push(path, remotes.http_url, "run-auth", right, allowed_schemes=SCHEMES).ok
    assert ls_remote(remotes.http_url, right, 5.0, allowed_schemes=SCHEMES).reachable
    refused = ls_remote(remotes.http_url, wrong, 5.0, allowed_schemes=SCHEMES)
    assert not refused.reachable and "wrong-password-7e1d" not in (refused.error or "")
    assert (
        find_step_commit(
            remotes.http_url, "run-auth", "lint", branch="run-auth", allowed_schemes=SCHEMES,
            credential=right,
        )
        == sha
    )  # fmt: skip

    # The credential reaches git through the environment only: a process listing shows none.
    assert (
        resolve_credential("push", {"DRYDOCK_GIT_CREDENTIAL_PUSH": f"{USER}:{PASSWORD}"}) == right
    )
    with pytest.raises(GitWorkspaceError, match="DRYDOCK_GIT_CREDENTIAL_NOPE is not set"):
        resolve_credential("nope", {})
    assert PASSWORD not in repr(right)


# ---- projects, protected branches, health --------------------------------------------------


@pytest.fixture
def project(clean_state: None, remotes: Remotes) -> str:
    with session_scope() as session:
        row = projects.create_project(
            session,
            tenant="acme",
            name="web",
            repository_url=remotes.daemon_url,
            default_branch="main",
            created_by="test",
        )
        projects.add_remote(
            session, row, name="origin", url=remotes.daemon_url, credential_ref=None,
            protected_branches=None,
        )  # fmt: skip
        projects.add_remote(
            session, row, name="mirror", url=remotes.mirror_url, credential_ref=None,
            protected_branches=["release/*"],
        )  # fmt: skip
    return "web"


def test_projects_refuse_credentials_in_urls_and_as_references(project: str) -> None:
    with session_scope() as session:
        row = projects.get_project(session, "acme", project)
        assert [(r.name, r.protected_branches) for r in row.remotes] == [
            ("mirror", ["release/*"]),
            ("origin", ["main"]),
        ]
        with pytest.raises(ProjectRefusedError, match="carries a credential"):
            projects.add_remote(
                session, row, name="leaky", url=f"https://u:{PASSWORD}@example.com/x.git",
                credential_ref=None, protected_branches=None,
            )  # fmt: skip
        with pytest.raises(ProjectRefusedError, match="carries a credential"):
            projects.add_remote(
                session, row, name="leaky", url="https://ghp_token123@example.com/x.git",
                credential_ref=None, protected_branches=None,
            )  # fmt: skip
        with pytest.raises(ProjectRefusedError, match="must be a name"):
            projects.add_remote(
                session, row, name="leaky", url="https://example.com/x.git",
                credential_ref=f"{USER}:{PASSWORD}", protected_branches=None,
            )  # fmt: skip
        with pytest.raises(ProjectRefusedError, match="already has a project web"):
            projects.create_project(
                session, tenant="acme", name="web", repository_url="https://example.com/x.git",
                default_branch="main", created_by="test",
            )  # fmt: skip


def test_a_protected_branch_needs_an_approval_token(project: str) -> None:
    from models.trust import TrustState
    from policy.admission import issue_token
    from policy.pushes import protected_push_decision
    from tests.test_evaluation import asset_in

    with session_scope() as session:
        row = projects.get_project(session, "acme", project)
        origin = next(r for r in row.remotes if r.name == "origin")
        free = protected_push_decision(session, "acme", row, [origin], "run-1", None, "runner")
        assert free.allowed and free.decision_id is None
        refused = protected_push_decision(session, "acme", row, [origin], "main", None, "runner")
        assert not refused.allowed and "needs an approval token for git.push:web/origin/main" in (
            refused.reason
        )

    asset = asset_in(TrustState.TRUSTED, "acme", "node-1")
    token = issue_token(
        asset_id=asset, task_pattern="git.push:web/origin/*", tenant="acme", approver="lead",
        ttl_seconds=60,
    )  # fmt: skip
    with session_scope() as session:
        row = projects.get_project(session, "acme", project)
        origin = next(r for r in row.remotes if r.name == "origin")
        mirror = next(r for r in row.remotes if r.name == "mirror")
        wrong_remote = protected_push_decision(
            session, "acme", row, [mirror], "release/1", token.token, "runner"
        )
        assert not wrong_remote.allowed and "approves git.push:web/origin/*" in wrong_remote.reason
        allowed = protected_push_decision(session, "acme", row, [origin], "main", token.token, "r")
        assert allowed.allowed and allowed.token_id == token.id
        again = protected_push_decision(session, "acme", row, [origin], "main", token.token, "r")
        assert not again.allowed and "already used" in again.reason

    with session_scope() as session:
        decisions = session.scalars(
            select(PolicyDecision).where(PolicyDecision.kind == "push").order_by(PolicyDecision.id)
        ).all()
        assert [d.allowed for d in decisions] == [False, False, True, False]
        assert decisions[2].request["approval_token"] == {"id": token.id}
        assert decisions[2].request["branch"] == "main"


def cli() -> typer.Typer:
    """The two apps as ``drydock.cli`` registers them."""
    from drydock.cli.projects import projects_app, remotes_app

    app = typer.Typer()
    app.add_typer(projects_app, name="projects")
    app.add_typer(remotes_app, name="remotes")
    return app


def test_projects_from_the_cli(clean_state: None, git_schemes: None, remotes: Remotes) -> None:
    runner = CliRunner()
    created = runner.invoke(
        cli(), ["projects", "create", "api", "--repository", remotes.daemon_url, "--tenant", "acme"]
    )
    assert created.exit_code == 0, created.output
    assert "project acme/api (default branch main)" in created.output
    added = runner.invoke(
        cli(),
        ["projects", "remote", "add", "api", "mirror", remotes.mirror_url, "--tenant", "acme",
         "--credential", "mirror", "--protected", "main", "--protected", "release/*"],
    )  # fmt: skip
    assert added.exit_code == 0, added.output
    assert "protected: main, release/*" in added.output
    leaky = runner.invoke(
        cli(),
        ["projects", "remote", "add", "api", "leak", f"http://u:{PASSWORD}@127.0.0.1/x.git",
         "--tenant", "acme"],
    )  # fmt: skip
    assert leaky.exit_code != 0
    assert isinstance(leaky.exception, GitWorkspaceError)
    assert PASSWORD not in str(leaky.exception)
    shown = runner.invoke(cli(), ["projects", "show", "api", "--tenant", "acme", "--json"])
    assert shown.exit_code == 0, shown.output
    assert '"credential_ref": "mirror"' in shown.output
    listed = runner.invoke(cli(), ["projects", "list", "--tenant", "acme"])
    assert "mirror" in listed.output
    removed = runner.invoke(
        cli(), ["projects", "remote", "remove", "api", "mirror", "--tenant", "acme"]
    )
    assert removed.exit_code == 0, removed.output


@pytest.fixture
def git_schemes(monkeypatch: pytest.MonkeyPatch) -> Iterator[None]:
    from kernel.settings import get_settings

    monkeypatch.setenv("DRYDOCK_GIT_ALLOWED_SCHEMES", '["git", "file", "http"]')
    get_settings.cache_clear()
    try:
        yield
    finally:
        monkeypatch.undo()
        get_settings.cache_clear()


def test_remotes_check_and_health_report_reachable_and_unreachable(
    project: str, git_schemes: None
) -> None:
    from drydock.api.remotes import router

    runner = CliRunner()
    healthy = runner.invoke(cli(), ["remotes", "check", "--tenant", "acme"])
    assert healthy.exit_code == 0, healthy.output
    assert "acme/web origin git://127.0.0.1" in healthy.output and "reachable" in healthy.output

    down = closed_port_url()
    with session_scope() as session:
        row = projects.get_project(session, "acme", project)
        projects.add_remote(
            session, row, name="backup", url=down, credential_ref="backup",
            protected_branches=None,
        )  # fmt: skip

    app = FastAPI()
    app.include_router(router)
    response = TestClient(app).get("/health/remotes", params={"tenant": "acme"})
    assert response.status_code == 503
    body = response.json()
    by_name = {r["remote"]: r for r in body["remotes"]}
    assert body["status"] == "unhealthy"
    assert by_name["origin"]["status"] == "reachable" and by_name["origin"]["latency_ms"] >= 0
    assert by_name["mirror"]["status"] == "reachable"
    assert by_name["backup"]["status"] == "unreachable"
    assert "DRYDOCK_GIT_CREDENTIAL_BACKUP is not set" in by_name["backup"]["error"]

    os.environ["DRYDOCK_GIT_CREDENTIAL_BACKUP"] = f"{USER}:{PASSWORD}"
    try:
        unhealthy = runner.invoke(
            cli(), ["remotes", "check", "--tenant", "acme", "--project", "web"]
        )
    finally:
        del os.environ["DRYDOCK_GIT_CREDENTIAL_BACKUP"]
    assert unhealthy.exit_code == 1
    assert "backup" in unhealthy.output and "unreachable" in unhealthy.output
    assert "refused" in unhealthy.output.lower()
    assert PASSWORD not in unhealthy.output

    with session_scope() as session:
        row = projects.get_project(session, "acme", project)
        checked = {r.name: (r.last_check_ok, r.last_checked_at is not None) for r in row.remotes}
    assert checked == {"origin": (True, True), "mirror": (True, True), "backup": (False, True)}

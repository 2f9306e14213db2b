"""Fetching a build's source: refusals before git runs, exact revisions, time and size bounds.

Every fetch is real git against repositories on disk (``git_repo_factory``); the hanging remote
is a real process that never answers.
"""

from __future__ import annotations

import os
import stat
import time
from collections.abc import Callable
from pathlib import Path

import pytest

from adapters.git import (
    FetchedSource,
    RevisionNotFoundError,
    SourceFetchError,
    SourceTooLargeError,
    fetch_revision,
)
from adapters.git_inputs import (
    SourceRefusedError,
    check_repository_url,
    check_revision,
    redact_url,
    resolve_inside,
)
from tests.image_builders import GitRepo

ALLOWED = ["https", "ssh", "file"]


def fetch(repo: GitRepo, revision: str, dest: Path, **overrides: object) -> FetchedSource:
    options: dict[str, object] = {
        "allowed_schemes": ALLOWED,
        "timeout_seconds": 30,
        "max_bytes": 50_000_000,
    }
    options.update(overrides)
    return fetch_revision(repo.url, revision, dest, **options)  # type: ignore[arg-type]


# --- refusals -------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("url", "why"),
    [
        ("--upload-pack=touch /tmp/drydock-pwned", "begins with '-'"),
        ("-oProxyCommand=touch /tmp/x", "begins with '-'"),
        ("ext::sh -c touch% /tmp/drydock-pwned", "whitespace"),
        ("ext::sh", "transport helper"),
        ("fd::3", "transport helper"),
        ("https::example.com/repo.git", "transport helper"),
        ("ftp://example.com/repo.git", "ftp, which is not allowed"),
        ("http://example.com/repo.git", "http, which is not allowed"),
        ("/srv/repos/app.git", "local path"),
        ("../app.git", "local path"),
        ("ssh://-oProxyCommand=touch/repo.git", "host beginning with '-'"),
        ("https://example.com/repo.git\nfoo", "whitespace or control"),
        ("file://relative/path", "absolute path"),
        ("", "empty"),
    ],
)
def test_repository_urls_git_would_misuse_are_refused(url: str, why: str) -> None:
    with pytest.raises(SourceRefusedError, match=why):
        check_repository_url(url, ALLOWED)


@pytest.mark.parametrize(
    "url",
    [
        "https://github.com/example/app.git",
        "ssh://git@example.com:2222/app.git",
        "git+ssh://git@example.com/app.git",
        "git@github.com:example/app.git",
        "file:///srv/repos/app.git",
    ],
)
def test_ordinary_repository_urls_pass(url: str) -> None:
    assert check_repository_url(url, ALLOWED) == url


def test_scp_like_urls_count_as_ssh() -> None:
    with pytest.raises(SourceRefusedError, match="uses ssh, which is not allowed"):
        check_repository_url("git@github.com:example/app.git", ["https"])


def test_schemes_that_run_commands_stay_refused_even_when_configured() -> None:
    with pytest.raises(SourceRefusedError, match="transport helper"):
        check_repository_url("ext::sh", ["ext", "https"])
    with pytest.raises(SourceRefusedError, match="not allowed"):
        check_repository_url("ext://example.com/x", ["ext", "https"])


def test_passwords_in_urls_never_show_in_refusals() -> None:
    url = "ftp://deploy:s3cret-token@example.com/app.git"
    with pytest.raises(SourceRefusedError) as raised:
        check_repository_url(url, ALLOWED)
    assert "s3cret-token" not in str(raised.value)
    assert redact_url(url) == "ftp://deploy:***@example.com/app.git"


@pytest.mark.parametrize(
    ("revision", "why"),
    [
        ("--upload-pack=touch /tmp/x", "begins with '-'"),
        ("-b", "begins with '-'"),
        ("main..evil", "'..'"),
        ("main@{1}", "'@{'"),
        ("feature branch", "contains ' '"),
        ("main\n", "contains '\\\\n'"),
        ("v1~1", "contains '~'"),
        ("HEAD^", "contains '\\^'"),
        ("a:b", "contains ':'"),
        ("release/", "not a valid"),
        ("x.lock", "not a valid"),
        ("refs/heads/.hidden", "beginning with '.'"),
        ("", "empty"),
    ],
)
def test_revisions_git_would_misread_are_refused(revision: str, why: str) -> None:
    with pytest.raises(SourceRefusedError, match=why):
        check_revision(revision)


@pytest.mark.parametrize(
    "revision", ["main", "release/2.1", "v1.0.0", "refs/tags/v1", "a1b2c3d", "feature_x-9"]
)
def test_ordinary_revisions_pass(revision: str) -> None:
    assert check_revision(revision) == revision


def test_option_injection_in_a_fetch_runs_nothing(tmp_path: Path) -> None:
    witness = tmp_path / "pwned"
    for url, revision in [
        (f"--upload-pack=touch {witness}", "main"),
        (f"ext::sh -c touch% {witness}", "main"),
        ("ext::sh", "main"),
        (tmp_path.as_uri(), f"--upload-pack=touch {witness}"),
    ]:
        with pytest.raises(SourceRefusedError):
            fetch_revision(
                url,
                revision,
                tmp_path / "dest",
                allowed_schemes=ALLOWED,
                timeout_seconds=10,
                max_bytes=1_000_000,
            )
    assert not witness.exists()
    # Nothing was even started: the destination was never created.
    assert not (tmp_path / "dest").exists()


def test_a_scheme_not_allowed_is_refused_before_fetching(
    git_repo_factory: Callable[..., GitRepo], tmp_path: Path
) -> None:
    repo = git_repo_factory()
    with pytest.raises(SourceRefusedError, match="uses file, which is not allowed"):
        fetch(repo, "main", tmp_path / "src", allowed_schemes=["https", "ssh"])


# --- exact revisions ------------------------------------------------------------------------


def test_fetches_a_branch(git_repo_factory: Callable[..., GitRepo], tmp_path: Path) -> None:
    repo = git_repo_factory()
    lines: list[str] = []
    source = fetch(repo, "feature", tmp_path / "src", on_line=lines.append)
    assert source.commit == repo.commits["feature"]
    assert source.ref_kind == "branch"
    assert source.revision == "feature"
    assert (source.path / "feature.txt").read_text() == "on the feature branch\n"
    assert not (source.path / "notes.txt").exists()
    # The checkout is the commit's tree and nothing more.
    assert not (source.path / ".git").exists()
    assert source.size_bytes >= Path("/bin/busybox").stat().st_size
    assert any("feature" in line for line in lines)


def test_fetches_an_annotated_tag_as_its_commit(
    git_repo_factory: Callable[..., GitRepo], tmp_path: Path
) -> None:
    repo = git_repo_factory()
    source = fetch(repo, repo.tag, tmp_path / "src")
    assert (source.commit, source.ref_kind) == (repo.tag_commit, "tag")
    assert sorted(p.name for p in source.path.iterdir()) == ["Dockerfile", "busybox", "marker"]


def test_a_new_tag_on_main_is_fetched_at_its_commit(
    git_repo_factory: Callable[..., GitRepo], tmp_path: Path
) -> None:
    repo = git_repo_factory()
    assert repo.tag_new_commit("v2") == "v2"
    source = fetch(repo, "v2", tmp_path / "src")
    assert (source.commit, source.ref_kind) == (repo.head_commit, "tag")
    assert (source.path / "VERSION").read_text() == "v2\n"


def test_fetches_a_full_commit_id(git_repo_factory: Callable[..., GitRepo], tmp_path: Path) -> None:
    repo = git_repo_factory()
    # The first commit is no branch's tip: the server hands it out by id.
    source = fetch(repo, repo.tag_commit, tmp_path / "src")
    assert (source.commit, source.ref_kind) == (repo.tag_commit, "commit")


def test_an_abbreviated_commit_id_records_the_full_commit(
    git_repo_factory: Callable[..., GitRepo], tmp_path: Path
) -> None:
    repo = git_repo_factory()
    short = repo.commits["feature"][:8]
    source = fetch(repo, short, tmp_path / "src")
    assert source.commit == repo.commits["feature"]
    assert (source.revision, source.ref_kind) == (short, "commit")
    assert (source.path / "feature.txt").exists()


def test_a_revision_that_is_nowhere_is_not_found(
    git_repo_factory: Callable[..., GitRepo], tmp_path: Path
) -> None:
    repo = git_repo_factory()
    with pytest.raises(RevisionNotFoundError, match="no branch or tag named 'nope'"):
        fetch(repo, "nope", tmp_path / "a")
    with pytest.raises(RevisionNotFoundError, match="no commit 'deadbeef0'"):
        fetch(repo, "deadbeef0", tmp_path / "b")


def test_a_name_both_branch_and_tag_must_be_spelled_out(
    git_repo_factory: Callable[..., GitRepo], tmp_path: Path
) -> None:
    repo = git_repo_factory()
    repo.git("branch", repo.tag, repo.commits["feature"])
    with pytest.raises(SourceRefusedError, match=r"say refs/heads/v1\.0 or refs/tags/v1\.0"):
        fetch(repo, repo.tag, tmp_path / "a")
    branch = fetch(repo, f"refs/heads/{repo.tag}", tmp_path / "b")
    tag = fetch(repo, f"refs/tags/{repo.tag}", tmp_path / "c")
    assert (branch.commit, branch.ref_kind) == (repo.commits["feature"], "branch")
    assert (tag.commit, tag.ref_kind) == (repo.tag_commit, "tag")


def test_a_missing_repository_is_a_permanent_refusal(tmp_path: Path) -> None:
    with pytest.raises(SourceRefusedError, match="does not appear to be a git repository"):
        fetch_revision(
            (tmp_path / "nothing-here").as_uri(),
            "main",
            tmp_path / "src",
            allowed_schemes=ALLOWED,
            timeout_seconds=10,
            max_bytes=1_000_000,
        )


# --- bounds ---------------------------------------------------------------------------------


def test_a_source_past_the_size_limit_is_stopped(
    git_repo_factory: Callable[..., GitRepo], tmp_path: Path
) -> None:
    repo = git_repo_factory()
    with pytest.raises(SourceTooLargeError, match="limit of 300000 bytes"):
        fetch(repo, "main", tmp_path / "src", max_bytes=300_000)


def test_a_remote_that_never_answers_is_killed_at_the_timeout(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # A real ssh stand-in that hangs: git waits on it forever unless the fetch kills it.
    pid_file = tmp_path / "ssh.pid"
    hang = tmp_path / "hanging-ssh"
    hang.write_text(f"#!/bin/sh\necho $$ > {pid_file}\nexec sleep 60\n")
    hang.chmod(hang.stat().st_mode | stat.S_IEXEC)
    monkeypatch.setenv("GIT_SSH_COMMAND", str(hang))
    started = time.monotonic()
    with pytest.raises(SourceFetchError, match="took longer than 1s"):
        fetch_revision(
            "ssh://git@example.invalid/app.git",
            "main",
            tmp_path / "src",
            allowed_schemes=ALLOWED,
            timeout_seconds=1,
            max_bytes=1_000_000,
        )
    assert time.monotonic() - started < 5
    assert not _running(int(pid_file.read_text()))


def _running(pid: int) -> bool:
    deadline = time.monotonic() + 5
    while time.monotonic() < deadline:
        try:
            state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
        except (FileNotFoundError, ProcessLookupError):
            return False
        if state in ("Z", "X"):
            return False
        time.sleep(0.05)
    return True


def test_fetching_into_a_non_empty_directory_is_refused(
    git_repo_factory: Callable[..., GitRepo], tmp_path: Path
) -> None:
    repo = git_repo_factory()
    (tmp_path / "src").mkdir()
    (tmp_path / "src" / "left-over").write_text("x")
    with pytest.raises(ValueError, match="empty directory"):
        fetch(repo, "main", tmp_path / "src")


# --- paths inside the checkout --------------------------------------------------------------


def test_paths_resolve_inside_the_checkout(
    git_repo_factory: Callable[..., GitRepo], tmp_path: Path
) -> None:
    repo = git_repo_factory()
    repo.commit({"services/api/Dockerfile": "FROM scratch\n"}, "a service")
    source = fetch(repo, "main", tmp_path / "src")
    context = resolve_inside(source.path, "services/api", "context_dir")
    assert context == (source.path / "services" / "api").resolve()
    assert resolve_inside(context, "Dockerfile", "dockerfile") == context / "Dockerfile"
    assert resolve_inside(source.path, ".", "context_dir") == source.path.resolve()
    assert resolve_inside(source.path, "", "context_dir") == source.path.resolve()


@pytest.mark.parametrize(
    ("relative", "why"),
    [
        ("/etc", "must be relative"),
        ("../outside", "must not contain '..'"),
        ("services/../../outside", "must not contain '..'"),
        ("missing/Dockerfile", "does not exist"),
        ("escape", "leads outside the repository"),
        ("escape-absolute/passwd", "leads outside the repository"),
        ("bad\x00name", "control characters"),
    ],
)
def test_paths_leaving_the_checkout_are_refused(
    git_repo_factory: Callable[..., GitRepo], tmp_path: Path, relative: str, why: str
) -> None:
    repo = git_repo_factory()
    # A malicious repository carries symbolic links out of itself.
    os.symlink("../../..", repo.path / "escape")
    os.symlink("/etc", repo.path / "escape-absolute")
    repo.commit({}, "links out")
    source = fetch(repo, "main", tmp_path / "src")
    assert (source.path / "escape").is_symlink()
    with pytest.raises(SourceRefusedError, match=why):
        resolve_inside(source.path, relative, "context_dir")

"""Image builders for the tests: a real Docker engine, buildah storage, git repositories.

The engine (fixture ``docker_engine``) is a ``dockerd`` of the session's own
(:func:`testkit.docker_engine.start_dockerd`: vfs storage, no bridge, no iptables) on the socket
``DRYDOCK_DOCKER_HOST`` names, with its data and exec roots under ``<base>/docker``; it is
stopped at the end of the session. No image can be pulled here, so every test image is
``FROM scratch`` plus the static busybox of this machine.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import uuid
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path

import pytest

from testkit.docker_engine import DOCKERD, DockerEngine, start_dockerd, unmount_under
from tests.conftest import _missing, _register_stop, _state

BUSYBOX = Path("/bin/busybox")

# What every test repository builds: busybox, a label, and a marker file unique to the
# repository, so one test's layers are never another's cache.
DEFAULT_DOCKERFILE = """\
FROM scratch
COPY marker /marker
COPY busybox /bin/busybox
LABEL org.example.test="drydock"
CMD ["/bin/busybox", "true"]
"""
# A Dockerfile whose RUN step fails (``false``, exit status 1), with output on both streams
# before it does. RUN needs an explicit shell: scratch has no /bin/sh.
BROKEN_DOCKERFILE = """\
FROM scratch
COPY marker /marker
COPY busybox /bin/busybox
RUN ["/bin/busybox", "sh", "-c", "echo about to fail; echo something went wrong >&2; busybox false"]
LABEL never="reached"
"""


@pytest.fixture(scope="session")
def docker_engine() -> DockerEngine:
    """The session's Docker engine, on the socket DRYDOCK_DOCKER_HOST names."""
    if not Path(DOCKERD).exists():
        _missing("dockerd")
    if os.geteuid() != 0:
        _missing("root (dockerd runs as root)")
    url = os.environ["DRYDOCK_DOCKER_HOST"]
    directory = _state["base"] / "docker"
    assert url == f"unix://{directory}/docker.sock"
    engine = start_dockerd(url, directory)
    _register_stop(engine.stop)
    return engine


@dataclass(frozen=True)
class BuildahStorage:
    root: Path
    runroot: Path

    def command(self, *args: str) -> list[str]:
        return [
            "buildah",
            "--root",
            str(self.root),
            "--runroot",
            str(self.runroot),
            "--storage-driver",
            "vfs",
            *args,
        ]


@pytest.fixture(scope="session")
def buildah_ready() -> BuildahStorage:
    """buildah, with the session's own storage (DRYDOCK_BUILDAH_ROOT / _RUNROOT)."""
    if shutil.which("buildah") is None:
        _missing("buildah")
    storage = BuildahStorage(
        Path(os.environ["DRYDOCK_BUILDAH_ROOT"]), Path(os.environ["DRYDOCK_BUILDAH_RUNROOT"])
    )
    storage.root.mkdir(parents=True, exist_ok=True)
    storage.runroot.mkdir(parents=True, exist_ok=True)

    def clean() -> None:
        # Working containers a failed build may have left, then any mount under the storage.
        subprocess.run(storage.command("rm", "--all"), check=False, capture_output=True)
        unmount_under(storage.root.parent)

    _register_stop(clean)
    return storage


_GIT_ENV = {
    "GIT_CONFIG_NOSYSTEM": "1",
    "GIT_CONFIG_GLOBAL": os.devnull,
    "GIT_AUTHOR_NAME": "Drydock Tests",
    "GIT_AUTHOR_EMAIL": "tests@drydock.invalid",
    "GIT_COMMITTER_NAME": "Drydock Tests",
    "GIT_COMMITTER_EMAIL": "tests@drydock.invalid",
}


@dataclass
class GitRepo:
    """A repository on disk: ``main`` (two commits), an annotated tag (``tag``) on the first,
    a branch ``feature`` off the first with a commit of its own. ``commits`` maps each branch
    and tag to its commit."""

    path: Path
    commits: dict[str, str] = field(default_factory=dict)
    tag: str = "v1.0"
    branch: str = "main"

    @property
    def url(self) -> str:
        return self.path.as_uri()

    @property
    def head_commit(self) -> str:
        """The tip of ``branch``."""
        return self.commits[self.branch]

    @property
    def tag_commit(self) -> str:
        return self.commits[self.tag]

    def git(self, *args: str) -> str:
        result = subprocess.run(
            ["git", "-C", str(self.path), *args],
            capture_output=True,
            text=True,
            check=True,
            env={**os.environ, **_GIT_ENV},
        )
        return result.stdout.strip()

    def commit(self, files: Mapping[str, str | bytes], message: str) -> str:
        """Write ``files`` (path -> content) on the current branch and commit; the new sha."""
        for name, content in files.items():
            target = self.path / name
            target.parent.mkdir(parents=True, exist_ok=True)
            if isinstance(content, bytes):
                target.write_bytes(content)
            else:
                target.write_text(content)
        self.git("add", "--all")
        self.git("commit", "--quiet", "--allow-empty", "-m", message)
        sha = self.git("rev-parse", "HEAD")
        self.commits[self.git("branch", "--show-current")] = sha
        return sha

    def commit_broken_dockerfile(self) -> str:
        """Commit, on ``main``, a Dockerfile whose RUN step (``busybox false``) fails; the sha."""
        return self.commit({"Dockerfile": BROKEN_DOCKERFILE}, "a failing RUN step")

    def tag_new_commit(self, name: str) -> str:
        """Commit something new on ``main`` and tag it ``name`` (annotated); the tag's name."""
        self.commit({"VERSION": f"{name}\n"}, f"version {name}")
        self.git("tag", "--annotate", name, "--message", f"release {name}")
        self.commits[name] = self.head_commit
        return name


@pytest.fixture
def git_repo_factory(tmp_path: Path) -> Callable[..., GitRepo]:
    """Make git repositories holding a buildable Dockerfile and busybox."""
    if shutil.which("git") is None:
        _missing("git")
    if not BUSYBOX.exists():
        _missing("a static busybox at /bin/busybox")

    def make(name: str = "app", dockerfile: str = DEFAULT_DOCKERFILE) -> GitRepo:
        repo = GitRepo(tmp_path / f"{name}-{uuid.uuid4().hex[:8]}")
        repo.path.mkdir()
        repo.git("init", "--quiet", f"--initial-branch={repo.branch}")
        shutil.copy2(BUSYBOX, repo.path / "busybox")
        first = repo.commit(
            {"Dockerfile": dockerfile, "marker": f"{uuid.uuid4()}\n"}, "a busybox image"
        )
        repo.git("tag", "--annotate", repo.tag, "--message", "the first release")
        repo.commits[repo.tag] = first
        repo.git("switch", "--quiet", "--create", "feature")
        repo.commit({"feature.txt": "on the feature branch\n"}, "a feature")
        repo.git("switch", "--quiet", repo.branch)
        repo.commit({"notes.txt": "more on main\n"}, "notes")
        return repo

    return make

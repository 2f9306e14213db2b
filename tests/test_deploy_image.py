"""The deployment image (deploy/Dockerfile), built on a real Docker engine and run.

No registry is reachable here, so the test builds the way an air-gapped site would:

- the base is a Debian bookworm root filesystem made with mmdebstrap (minbase, without docs and
  man pages as in the official slim image) and ``docker import``ed, passed as the
  ``BASE_IMAGE`` build argument;
- pip in the build stage reads a wheelhouse this test serves on 127.0.0.1 (``PIP_FIND_LINKS``,
  ``PIP_NO_INDEX``). It holds the versions of the test virtualenv, resolved for Debian's Python
  (the image's interpreter), as wheels where PyPI has them and as sdists where it has none
  (tpm2-pytss, libvirt-python): the build stage compiles those, as it does in production.

The image is built on an engine of the test's own with overlay2 storage: on the session
engine's vfs every Dockerfile instruction copies the whole root filesystem, which triples the
build time. Containers join the host's network, so they reach the session's Redis and
PostgreSQL on 127.0.0.1.
"""

from __future__ import annotations

import functools
import http.server
import os
import shutil
import subprocess
import sys
import tarfile
import threading
import time
import tomllib
import uuid
import zipfile
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

from testkit.docker_engine import DOCKERD, DockerEngine, start_dockerd
from tests.conftest import PRIVATE_QUEUE, _missing, _register_stop, _state, wait_for_job

REPO = Path(__file__).resolve().parent.parent
# The image's interpreter: Debian bookworm's python3 (3.11.2). The wheelhouse is resolved with
# it, so environment markers (``python_full_version < "3.11.3"``) match what the image runs.
DEBIAN_PYTHON = Path("/usr/bin/python3.11")
DEBIAN_MIRROR = "http://deb.debian.org/debian"
BASE_TAG = "drydock-test/debian:bookworm-slim"
IMAGE_TAG = "drydock-test/drydock:test"
IMAGE_UID = "10001"
# The roles the one image runs, each a `drydock` subcommand (deploy/Dockerfile's header).
ROLE_COMMANDS = ("migrate", "worker", "beat", "flower", "api")
# dpkg settings mmdebstrap writes into the base's /etc/dpkg/dpkg.cfg.d, so the Dockerfile's apt
# steps leave out what the official slim image leaves out; unsafe-io skips fsync, which is
# seconds per apt step and worthless in a build that is thrown away on failure anyway.
SLIM_DPKG_OPTIONS = (
    "force-unsafe-io",
    "path-exclude=/usr/share/man/*",
    "path-exclude=/usr/share/doc/*",
    "path-include=/usr/share/doc/*/copyright",
    "path-exclude=/usr/share/locale/*",
    "path-exclude=/usr/share/info/*",
)
# The first test to ask for the image waits for its build (two apt installs, two packages
# compiled): minutes, not seconds.
pytestmark = pytest.mark.timeout(600)


# ---- the engine, the base, the wheelhouse and the image ----


def _poll(check: Callable[[], bool], timeout: float, stop_if: Callable[[], bool]) -> bool:
    """Whether ``check`` passed within ``timeout`` seconds; gives up early once ``stop_if``."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if check():
            return True
        if stop_if():
            return check()
        time.sleep(0.2)
    return False


def _start_overlay_engine(directory: Path) -> DockerEngine:
    """A dockerd like the session's (no bridge, no iptables, its own roots) but on overlay2."""
    directory.mkdir(parents=True)
    try:
        return start_dockerd(
            f"unix://{directory}/docker.sock", directory, storage_driver="overlay2"
        )
    except RuntimeError as exc:
        if "overlay" in (directory / "dockerd.log").read_text(errors="replace"):
            _missing(f"a Docker engine on overlay2 storage:\n{str(exc)[-1500:]}")
        raise


@pytest.fixture(scope="module")
def image_engine() -> Iterator[DockerEngine]:
    if not Path(DOCKERD).exists():
        _missing("dockerd")
    if os.geteuid() != 0:
        _missing("root (dockerd and mmdebstrap run as root)")
    directory = _state["base"] / f"image-engine-{uuid.uuid4().hex[:8]}"
    engine = _start_overlay_engine(directory)
    # Also at the session's end, should this module's teardown never run (stop is idempotent).
    _register_stop(engine.stop)
    yield engine
    engine.stop()
    # Gigabytes of layers: gone now, not at the end of the session.
    shutil.rmtree(directory, ignore_errors=True)


@pytest.fixture(scope="module")
def docker_client(image_engine: DockerEngine) -> Iterator[Any]:
    import docker

    # Long reads: a build step can print nothing for a minute.
    client = docker.DockerClient(base_url=image_engine.url, version="1.41", timeout=600)
    yield client
    client.close()


def _run_checked(command: list[str], what: str) -> str:
    result = subprocess.run(command, capture_output=True, text=True, check=False)
    if result.returncode != 0:
        raise RuntimeError(f"{what} failed ({result.returncode}):\n{result.stderr[-3000:]}")
    return result.stdout


def _sdist_build_requires(sdist: Path) -> list[str]:
    """The [build-system] requires of an sdist (PEP 518; setuptools and wheel without one)."""
    default = ["setuptools>=40.8.0", "wheel"]
    if sdist.name.endswith(".zip"):
        with zipfile.ZipFile(sdist) as archive:
            names = [n for n in archive.namelist() if n.count("/") == 1]
            found = [n for n in names if n.endswith("/pyproject.toml")]
            text = archive.read(found[0]).decode() if found else None
    else:
        with tarfile.open(sdist) as archive:
            members = [m for m in archive.getmembers() if m.name.count("/") == 1 and m.isfile()]
            found_member = [m for m in members if m.name.endswith("/pyproject.toml")]
            extracted = archive.extractfile(found_member[0]) if found_member else None
            text = extracted.read().decode() if extracted else None
    if text is None:
        return default
    requires: list[str] = tomllib.loads(text).get("build-system", {}).get("requires", default)
    return requires


def _make_wheelhouse(directory: Path) -> None:
    """Wheels (and sdists where PyPI has no wheel) of the project's dependencies at the test
    virtualenv's versions, plus what building the project and those sdists needs."""
    pip = [sys.executable, "-m", "pip", "--python", str(DEBIAN_PYTHON)]
    # Pins only: pip refuses a constraint that is a direct reference (``name @ url``).
    frozen = _run_checked([sys.executable, "-m", "pip", "freeze", "--exclude-editable"], "freeze")
    constraints = directory.parent / "constraints.txt"
    constraints.write_text("".join(f"{pin}\n" for pin in frozen.splitlines() if "==" in pin))
    project = tomllib.loads((REPO / "pyproject.toml").read_text())
    build_requires: list[str] = project["build-system"]["requires"]
    download = [*pip, "download", "--quiet", "--dest", str(directory), "-c", str(constraints)]
    _run_checked(
        [*download, *project["project"]["dependencies"], *build_requires],
        "pip download (dependencies)",
    )
    sdists = [p for p in directory.iterdir() if p.name.endswith((".tar.gz", ".zip"))]
    sdist_requires = sorted({r for s in sdists for r in _sdist_build_requires(s)})
    if sdist_requires:
        _run_checked(
            [*download, "--only-binary", ":all:", *sdist_requires],
            "pip download (what the sdists build with)",
        )


class _QuietHandler(http.server.SimpleHTTPRequestHandler):
    def log_message(self, format: str, *args: Any) -> None:
        pass


@pytest.fixture(scope="module")
def drydock_image(docker_client: Any, tmp_path_factory: pytest.TempPathFactory) -> str:
    """The image's tag, built from deploy/Dockerfile on a base made here."""
    if shutil.which("mmdebstrap") is None:
        _missing("mmdebstrap")
    if not DEBIAN_PYTHON.exists():
        _missing(f"Debian's Python at {DEBIAN_PYTHON} (the image's interpreter)")
    work = tmp_path_factory.mktemp("deploy-image")
    base_tar = work / "base.tar"
    # The base and the wheelhouse both mostly wait on the network: side by side.
    with open(work / "mmdebstrap.log", "wb") as mmdebstrap_log:
        mmdebstrap = subprocess.Popen(
            [
                "mmdebstrap",
                "--quiet",
                "--variant=minbase",
                *(f"--dpkgopt={option}" for option in SLIM_DPKG_OPTIONS),
                "bookworm",
                str(base_tar),
                DEBIAN_MIRROR,
            ],
            stdin=subprocess.DEVNULL,
            stdout=mmdebstrap_log,
            stderr=subprocess.STDOUT,
        )
    try:
        wheelhouse = work / "wheelhouse"
        wheelhouse.mkdir()
        _make_wheelhouse(wheelhouse)
        mmdebstrap.wait(300)
    finally:
        if mmdebstrap.poll() is None:
            mmdebstrap.kill()
            mmdebstrap.wait()
    if mmdebstrap.returncode != 0:
        log_text = (work / "mmdebstrap.log").read_text(errors="replace")
        raise RuntimeError(f"mmdebstrap failed ({mmdebstrap.returncode}):\n{log_text[-3000:]}")
    repository, tag = BASE_TAG.split(":")
    docker_client.api.import_image_from_file(str(base_tar), repository=repository, tag=tag)
    base_tar.unlink()

    server = http.server.ThreadingHTTPServer(
        ("127.0.0.1", 0), functools.partial(_QuietHandler, directory=str(wheelhouse))
    )
    threading.Thread(target=server.serve_forever, daemon=True).start()
    output: list[str] = []
    try:
        for chunk in docker_client.api.build(
            path=str(REPO),
            dockerfile="deploy/Dockerfile",
            tag=IMAGE_TAG,
            buildargs={
                "BASE_IMAGE": BASE_TAG,
                "PIP_FIND_LINKS": f"http://127.0.0.1:{server.server_address[1]}/",
                "PIP_NO_INDEX": "1",
            },
            # The build's RUN steps reach the wheelhouse on 127.0.0.1 and the Debian mirror.
            network_mode="host",
            rm=True,
            forcerm=True,
            decode=True,
        ):
            output.append(chunk.get("stream", ""))
            if "error" in chunk:
                raise AssertionError(
                    f"the image did not build: {chunk['error']}\n{''.join(output)[-5000:]}"
                )
    finally:
        server.shutdown()
        server.server_close()
    return IMAGE_TAG


def _run(client: Any, image: str, command: list[str] | None, **options: Any) -> str:
    """Run a container to its end; its output (both streams), failing on a non-zero exit."""
    container = client.containers.run(image, command, detach=True, **options)
    try:
        status = container.wait(timeout=120)
        logs: str = container.logs(stdout=True, stderr=True).decode(errors="replace")
        assert status["StatusCode"] == 0, f"{command} exited {status['StatusCode']}:\n{logs}"
        return logs
    finally:
        container.remove(force=True)


def _fleet_env() -> dict[str, str]:
    """The settings the test session's workers run with, as a container's environment. The
    heartbeat file stays the image's own (DRYDOCK_HEARTBEAT_FILE), which the probes read."""
    return {
        key: value
        for key, value in os.environ.items()
        if key.startswith("DRYDOCK_") and key != "DRYDOCK_HEARTBEAT_FILE"
    }


# ---- the tests ----


def test_build_context_is_the_package_sources_only() -> None:
    """.dockerignore lets through what the wheel is built from, never a virtualenv, .git, local
    fleet state with its credentials (.drydock), caches or test data."""
    from docker.utils.build import exclude_paths

    patterns = [
        line.strip()
        for line in (REPO / ".dockerignore").read_text().splitlines()
        if line.strip() and not line.startswith("#")
    ]
    sent = exclude_paths(str(REPO), patterns, dockerfile="deploy/Dockerfile")
    top_level = {path.split("/")[0] for path in sent}
    assert top_level <= {
        ".dockerignore",
        "README.md",
        "pyproject.toml",
        "deploy",
        "drydock",
        "dispatch",
        "workers",
        "tasks",
        "catalog",
        "policy",
        "adapters",
        "evidence",
        "models",
        "kernel",
        "migrations",
        "beat_schedules",
    }
    assert {"pyproject.toml", "README.md", "drydock", "migrations"} <= top_level
    assert "drydock/cli/__init__.py" in sent
    assert "deploy/Dockerfile" in sent
    assert not [path for path in sent if "__pycache__" in path or path.endswith(".pyc")]


def test_image_runs_every_role_as_a_non_root_user(docker_client: Any, drydock_image: str) -> None:
    config = docker_client.images.get(drydock_image).attrs["Config"]
    assert config["User"].split(":")[0] == IMAGE_UID
    assert config["Entrypoint"][-1] == "drydock"
    assert config["Env"].count("DRYDOCK_HEARTBEAT_FILE=/tmp/drydock-heartbeat.json") == 1

    # The default command is the CLI's help: every role is a command of it.
    usage = _run(docker_client, drydock_image, None)
    for role in ROLE_COMMANDS:
        assert f" {role} " in usage, f"`drydock {role}` missing from:\n{usage}"
    assert _run(docker_client, drydock_image, None, entrypoint=["id", "-u"]).strip() == IMAGE_UID


def test_image_has_what_the_roles_need_and_no_build_tools(
    docker_client: Any, drydock_image: str
) -> None:
    """Attestation and remediation workers import tpm2-pytss and libvirt (compiled in the build
    stage against libraries the runtime must have), remediation runs ansible-playbook, builds
    run git; the compiler, headers and pip stayed in the build stage."""
    script = """
set -e
python -c 'import drydock, libvirt, tpm2_pytss; print("package", drydock.__file__)'
ansible-playbook --version | head -n 1
git --version
for tool in gcc cc pip pkg-config; do
  if command -v "$tool"; then echo "unexpected $tool"; fi
done
test ! -e /src && test ! -e /usr/include/python3.11 && echo "no build leftovers"
touch "$HOME/written" && echo "home writable"
"""
    output = _run(docker_client, drydock_image, ["-c", script], entrypoint=["sh"])
    assert "package /opt/drydock/lib/python3.11/site-packages/drydock/__init__.py" in output
    assert "ansible-playbook [core " in output
    assert "git version" in output
    assert "unexpected" not in output, output
    assert "no build leftovers" in output
    assert "home writable" in output


def _wait_for_log(container: Any, text: str, timeout: float) -> None:
    def logs() -> str:
        return str(container.logs().decode(errors="replace"))

    def exited() -> bool:
        container.reload()
        return bool(container.status == "exited")

    if not _poll(lambda: text in logs(), timeout, stop_if=exited):
        raise AssertionError(f"{text!r} not in the container's log:\n{logs()[-3000:]}")


def _exec(container: Any, command: list[str]) -> tuple[int, str]:
    result = container.exec_run(command)
    return int(result.exit_code), result.output.decode(errors="replace")


@pytest.mark.fleet
def test_image_migrates_and_its_worker_serves_a_queue(
    docker_client: Any, drydock_image: str, clean_state: None
) -> None:
    """The one-shot migrate role against the fleet's database (already at head: a no-op), then
    a worker role on the queue no test worker serves: a canary enqueued here runs in the
    container, as the image's user, the probes pass, and drain then SIGTERM stop it cleanly."""
    from dispatch.enqueue import enqueue

    env = _fleet_env()
    _run(docker_client, drydock_image, ["migrate"], environment=env, network_mode="host")

    hostname = f"image-{uuid.uuid4().hex[:8]}@test"
    worker = docker_client.containers.run(
        drydock_image,
        ["worker", "--queues", PRIVATE_QUEUE, "--concurrency", "1", f"--hostname={hostname}"],
        environment=env,
        network_mode="host",
        detach=True,
    )
    try:
        _wait_for_log(worker, "ready.", 90)
        # Every process in the container (tini, the Celery parent, its pool) runs as the
        # image's user.
        top = worker.top(ps_args="-o uid,pid,args")
        uid_column = top["Titles"].index("UID")
        assert {process[uid_column] for process in top["Processes"]} == {IMAGE_UID}, top

        job = enqueue("remediation.canary", {"message": "from the image"})
        row = wait_for_job(job.id, timeout=60)
        assert row.status == "succeeded", row.error
        assert row.worker == hostname
        assert row.result["message"] == "from the image"

        # The probes a platform runs in this container read the heartbeat file it writes.
        for probe in (["drydock", "probe", "live"], ["drydock", "probe", "ready"]):
            code, output = _exec(worker, probe)
            assert code == 0, f"{probe}: {output}"
        code, output = _exec(worker, ["drydock", "drain", "--timeout", "20"])
        assert code == 0, output

        # SIGTERM reaches Celery through tini: a warm shutdown, well inside the grace period.
        started = time.monotonic()
        worker.stop(timeout=30)
        assert time.monotonic() - started < 25
        assert worker.wait(timeout=10)["StatusCode"] == 0, worker.logs().decode()[-3000:]
    finally:
        worker.remove(force=True)

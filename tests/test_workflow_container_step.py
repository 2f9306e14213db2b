"""Workflow ``container`` steps against the session's real Docker engine, in-process.

Each test runs one step through ``run_container_step`` with a git checkout as its workspace and
checks what the run engine relies on: files the step writes are the workspace owner's (the host
can commit them), exit codes, output capped with its sizes as produced and secrets scrubbed, no
network unless granted, timeouts and cancels kill it, no container outlives its step, a dead
worker's containers can be removed by run, and a missing image is a clear error.

The image is the remediation sandbox image (a static busybox FROM scratch, built by the
session), tagged under a registry host as workflow definitions require.
"""

from __future__ import annotations

import os
import shutil
import socket
import subprocess
import tempfile
import threading
import time
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import docker
import pytest

from adapters.container_run import CapturedOutput, kept_text
from tasks.workflows.container_step import (
    RUN_ID_LABEL,
    ContainerStepError,
    StepImageMissingError,
    StepOutcome,
    remove_orphaned_step_containers,
    run_container_step,
    step_labels,
)
from tasks.workflows.definitions import WorkflowContainerStep
from testkit.docker_engine import DockerEngine

STEP_IMAGE = "registry.example.com/tools/busybox:1"
# Not root: the test proves ownership follows the workspace, not the worker or the image.
OWNER_UID = OWNER_GID = 4321


@pytest.fixture(scope="module")
def engine(docker_engine: DockerEngine) -> Iterator[Any]:
    client = docker.DockerClient(base_url=docker_engine.url)
    yield client
    client.close()


@pytest.fixture(scope="module")
def step_image(sandbox_image: str, engine: Any) -> Iterator[str]:
    engine.images.get(sandbox_image).tag(STEP_IMAGE)
    yield STEP_IMAGE
    engine.images.remove(STEP_IMAGE, noprune=True)


@pytest.fixture
def workspace() -> Iterator[Path]:
    """A git checkout owned by OWNER_UID, under a directory that user can reach (pytest's own
    tmp directories are root's alone)."""
    parent = Path(tempfile.mkdtemp(prefix="drydock-wf-step-"))
    parent.chmod(0o755)
    path = parent / "checkout"
    path.mkdir()
    subprocess.run(["git", "init", "-q", str(path)], check=True)
    for entry in [path, *path.rglob("*")]:
        os.lchown(entry, OWNER_UID, OWNER_GID)
    yield path
    shutil.rmtree(parent)


def container_step(command: list[str], **fields: Any) -> WorkflowContainerStep:
    return WorkflowContainerStep(
        kind="container", name="step", image=STEP_IMAGE, command=command, **fields
    )


def run(
    step: WorkflowContainerStep,
    workspace: Path,
    run_id: uuid.UUID | None = None,
    **options: Any,
) -> StepOutcome:
    return run_container_step(
        step,
        workspace=workspace,
        env_secrets=options.pop("env_secrets", {}),
        run_id=run_id or uuid.uuid4(),
        step_name=options.pop("step_name", step.name),
        **options,
    )


def containers_of(engine: Any, run_id: uuid.UUID) -> list[Any]:
    found: list[Any] = engine.containers.list(
        all=True, filters={"label": f"{RUN_ID_LABEL}={run_id}"}
    )
    return found


def sh(script: str, **fields: Any) -> WorkflowContainerStep:
    return container_step(["/bin/sh", "-c", script], **fields)


def test_a_file_the_step_writes_is_the_workspace_owners_and_can_be_committed(
    step_image: str, workspace: Path, engine: Any
) -> None:
    run_id = uuid.uuid4()
    outcome = run(sh("pwd; id -u; id -g; echo linted > report.txt"), workspace, run_id)
    assert outcome.ok, outcome
    assert outcome.stdout.split() == ["/workspace", str(OWNER_UID), str(OWNER_GID)]
    written = workspace / "report.txt"
    assert written.read_text() == "linted\n"
    assert (written.stat().st_uid, written.stat().st_gid) == (OWNER_UID, OWNER_GID)
    # As the owner, not root: what the host side of a run does with the checkout.
    subprocess.run(
        ["git", "add", "report.txt"],
        cwd=workspace,
        user=OWNER_UID,
        group=OWNER_GID,
        env={"HOME": str(workspace), "PATH": os.environ["PATH"]},
        check=True,
        capture_output=True,
    )
    staged = subprocess.run(
        ["git", "-c", f"safe.directory={workspace}", "diff", "--cached", "--name-only"],
        cwd=workspace,
        check=True,
        capture_output=True,
        text=True,
    )
    assert staged.stdout.split() == ["report.txt"]
    assert containers_of(engine, run_id) == []


def test_exit_codes_and_streams_are_reported(step_image: str, workspace: Path) -> None:
    failed = run(sh("echo out; echo err >&2; exit 3"), workspace)
    assert (failed.exit_code, failed.ok, failed.error) == (3, False, "exit code 3")
    assert (failed.stdout, failed.stderr) == ("out\n", "err\n")
    assert (failed.stdout_bytes, failed.stderr_bytes) == (4, 4)
    assert not (failed.timed_out or failed.cancelled)
    ok = run(container_step(["true"]), workspace)
    assert (ok.exit_code, ok.ok, ok.error) == (0, True, None)
    assert ok.duration_seconds >= 0


def test_output_is_capped_head_and_tail_with_the_size_as_produced(
    step_image: str, workspace: Path
) -> None:
    script = "echo first; head -c 300000 /dev/zero | tr '\\0' a; echo; echo last"
    outcome = run(sh(script), workspace, max_output_bytes=4096)
    assert outcome.ok
    produced = len("first\n") + 300000 + len("\nlast\n")
    assert outcome.stdout_bytes == produced
    assert outcome.stdout_truncated and not outcome.stderr_truncated
    assert len(outcome.stdout.encode()) <= 4096
    assert outcome.stdout.startswith("first\naaa")
    assert outcome.stdout.endswith("aaa\nlast\n")
    assert f"the step wrote {produced} bytes" in outcome.stdout


def test_secret_values_are_in_the_env_and_scrubbed_from_the_output(
    step_image: str, workspace: Path
) -> None:
    secret = "s3cr3t-Value-8f2e91"
    step = sh(
        'echo "token=$API_TOKEN plain=$LEVEL"; echo "$API_TOKEN" >&2',
        env={"API_TOKEN": {"secret": "ci-token"}, "LEVEL": "strict"},
    )
    outcome = run(step, workspace, env_secrets={"ci-token": secret})
    assert outcome.ok
    assert secret not in outcome.stdout and secret not in outcome.stderr
    assert "[REDACTED]" in outcome.stdout and "plain=strict" in outcome.stdout
    assert outcome.stderr == "[REDACTED]\n"
    # Sizes are the step's: the secret's length, not the marker's.
    assert outcome.stderr_bytes == len(secret) + 1
    with pytest.raises(ContainerStepError, match="'ci-token' of API_TOKEN was not resolved"):
        run(step, workspace, env_secrets={})


def test_a_secret_cut_at_the_edge_of_a_partial_capture_leaves_nothing_of_itself() -> None:
    secret = "TOPSECRET-123456"
    # The capture's head ends in the secret's first half, its tail starts with the second.
    head = b"x" * 100 + secret[:7].encode()
    tail = secret[7:].encode() + b"y" * 100
    kept = kept_text(CapturedOutput(head, tail, size=10_000), 150, [secret])
    assert kept.truncated and kept.size == 10_000
    for length in range(3, len(secret)):
        for start in range(len(secret) - length + 1):
            assert secret[start : start + length] not in kept.text
    assert kept.text.startswith("x") and kept.text.endswith("y")


@pytest.fixture
def loopback_port() -> Iterator[int]:
    """A TCP port on the host's loopback that answers "pong" to whoever connects."""
    server = socket.socket()
    server.bind(("127.0.0.1", 0))
    server.listen()
    server.settimeout(0.2)
    stop = threading.Event()

    def serve() -> None:
        while not stop.is_set():
            try:
                conn, _ = server.accept()
            except TimeoutError:
                continue
            with conn:
                conn.sendall(b"pong\n")

    thread = threading.Thread(target=serve, daemon=True)
    thread.start()
    yield server.getsockname()[1]
    stop.set()
    thread.join()
    server.close()


def test_no_network_by_default_and_network_true_needs_the_runners_grant(
    step_image: str, workspace: Path, loopback_port: int
) -> None:
    dial = f"nc -w 2 127.0.0.1 {loopback_port} </dev/null"
    # The container's own loopback only: the host's port is not there.
    isolated = run(sh(dial), workspace)
    assert not isolated.ok
    assert "pong" not in isolated.stdout
    with pytest.raises(ContainerStepError, match="asks for network access"):
        run(sh(dial, network=True), workspace)
    # This engine runs with --bridge=none: the host network is the one it has.
    granted = run(sh(dial, network=True), workspace, network="host")
    assert granted.ok, granted
    assert granted.stdout == "pong\n"


def test_a_step_past_its_timeout_is_killed_reported_and_removed(
    step_image: str, workspace: Path, engine: Any
) -> None:
    run_id = uuid.uuid4()
    began = time.monotonic()
    outcome = run(sh("echo started; sleep 60", timeout_seconds=1), workspace, run_id)
    assert time.monotonic() - began < 15
    assert outcome.timed_out and not outcome.cancelled
    assert (outcome.exit_code, outcome.ok, outcome.error) == (None, False, "timed out")
    assert outcome.stdout == "started\n"
    assert containers_of(engine, run_id) == []


def test_a_cancel_mid_step_kills_it_within_seconds_and_removes_it(
    step_image: str, workspace: Path, engine: Any
) -> None:
    run_id = uuid.uuid4()
    cancel = threading.Event()
    timer = threading.Timer(1.0, cancel.set)
    timer.start()
    began = time.monotonic()
    try:
        outcome = run(sh("sleep 60", timeout_seconds=120), workspace, run_id, cancel=cancel)
    finally:
        timer.cancel()
    assert time.monotonic() - began < 1.0 + 3.0
    assert outcome.cancelled and not outcome.timed_out
    assert (outcome.exit_code, outcome.error) == (None, "cancelled")
    assert containers_of(engine, run_id) == []


def test_orphaned_containers_of_a_run_are_removed_by_its_label(
    step_image: str, engine: Any, docker_engine: DockerEngine
) -> None:
    dead_run, live_run = uuid.uuid4(), uuid.uuid4()
    # What a worker that died mid-step leaves: a running container of the run's labels.
    for run_id in (dead_run, dead_run, live_run):
        engine.containers.run(
            step_image,
            ["sleep", "60"],
            labels=step_labels(run_id, "lint"),
            network_mode="none",
            detach=True,
        )
    try:
        assert remove_orphaned_step_containers(dead_run, engine_address=docker_engine.url) == 2
        assert containers_of(engine, dead_run) == []
        assert len(containers_of(engine, live_run)) == 1
    finally:
        remove_orphaned_step_containers(live_run, engine_address=docker_engine.url)
    assert containers_of(engine, live_run) == []


def test_a_missing_image_is_a_clear_error_naming_it_and_is_not_pulled(
    step_image: str, workspace: Path, engine: Any
) -> None:
    missing = "registry.example.com/tools/absent:9"
    step = WorkflowContainerStep(kind="container", name="lint", image=missing, command=["true"])
    with pytest.raises(StepImageMissingError, match=r"'registry\.example\.com/tools/absent:9'"):
        run(step, workspace)
    assert not engine.images.list(name="registry.example.com/tools/absent")


def test_a_workspace_that_is_not_a_directory_is_refused(tmp_path: Path) -> None:
    with pytest.raises(ContainerStepError, match="cannot be read"):
        run(container_step(["true"]), tmp_path / "absent")

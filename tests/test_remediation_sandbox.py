"""The `shell` and `container` executors against the session's real Docker engine, in-process.

Each test runs a playbook's steps through the executor and checks what a person relies on: the
output and exit code of each step, the environment it gets, that its sandbox has no network and
no writable file system but its per-step /scratch, that limits and the run's time budget hold,
and that no container outlives its step.
"""

from __future__ import annotations

import os
import re
import shutil
import sys
import threading
import time
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import docker
import pytest
from pydantic import ValidationError

from tasks.remediation.executors.base import (
    ExecutorUnavailableError,
    RunContext,
    StepResult,
    Target,
)
from tasks.remediation.executors.sandbox import (
    RUN_ID_LABEL,
    SANDBOX_LABEL,
    STEP_LABEL,
    ContainerExecutor,
    SandboxImageError,
    ShellExecutor,
    build_sandbox_image,
)
from tasks.remediation.executors.sandbox_spec import ContainerSpec, ShellSpec
from testkit.docker_engine import DockerEngine
from tests.conftest import _missing
from tests.image_builders import BUSYBOX

TARGET = Target(
    asset_id=uuid.UUID("6f2c43e4-0d1c-4a43-9d3c-7f1f2b8e9a01"),
    tenant="acme",
    name="vm-7",
    kind="vm",
)


def new_run(timeout_seconds: float = 60, secret_env: dict[str, str] | None = None) -> RunContext:
    return RunContext.starting_now(uuid.uuid4(), 1, timeout_seconds, secret_env)


def shell(steps: list[dict[str, str]], run: RunContext, **fields: Any) -> list[StepResult]:
    return list(ShellExecutor().execute(ShellSpec(steps=steps, **fields), TARGET, run))


@pytest.fixture
def engine(docker_engine: DockerEngine) -> Iterator[Any]:
    client = docker.DockerClient(base_url=docker_engine.url)
    yield client
    client.close()


def containers_of(engine: Any, run: RunContext) -> list[Any]:
    """Every container of ``run`` on the engine, running or not."""
    found: list[Any] = engine.containers.list(
        all=True, filters={"label": f"{RUN_ID_LABEL}={run.run_id}"}
    )
    return found


@pytest.fixture(scope="module")
def busybox_only_image(
    docker_engine: DockerEngine, tmp_path_factory: pytest.TempPathFactory
) -> str:
    """An image with nothing but /bin/busybox: no /bin/sh, no /scratch, running as root."""
    if not BUSYBOX.exists():
        _missing(f"a static busybox at {BUSYBOX}")
    context = tmp_path_factory.mktemp("busybox-only")
    shutil.copy2(BUSYBOX, context / "busybox")
    (context / "Dockerfile").write_text("FROM scratch\nCOPY busybox /bin/busybox\n")
    tag = f"drydock-tests/busybox-only-{uuid.uuid4().hex[:8]}:latest"
    client = docker.DockerClient(base_url=docker_engine.url)
    try:
        client.images.build(path=str(context), tag=tag, rm=True, network_mode="none")
    finally:
        client.close()
    return tag


# --- shell steps ------------------------------------------------------------------------------


def test_a_step_reports_its_streams_exit_code_and_outputs_and_a_failure_stops_the_run(
    sandbox_image: str, engine: Any
) -> None:
    run = new_run()
    steps = shell(
        [
            {
                "name": "inspect",
                "run": (
                    "echo checking; echo 'a warning' >&2; "
                    'echo \'drydock-output {"agent": "stopped", "pids": [1, 2]}\'; '
                    'echo \'drydock-output {"agent": "restarted"}\''
                ),
            },
            {"name": "fix", "run": "echo partial; echo 'could not fix' >&2; exit 3"},
            {"name": "never", "run": "echo should not run"},
        ],
        run,
    )
    assert [step.name for step in steps] == ["inspect", "fix"]
    inspect, fix = steps
    assert inspect.ok and inspect.exit_code == 0 and inspect.error is None
    assert inspect.stdout.startswith("checking\n")
    assert inspect.stderr == "a warning\n"
    # Later lines win, keys merge.
    assert inspect.outputs == {"agent": "restarted", "pids": [1, 2]}
    assert not fix.ok
    assert fix.exit_code == 3
    assert fix.error == "exit code 3"
    assert (fix.stdout, fix.stderr) == ("partial\n", "could not fix\n")
    assert not fix.timed_out
    assert inspect.started_at <= inspect.finished_at <= fix.started_at <= fix.finished_at
    assert containers_of(engine, run) == []


def test_a_step_gets_the_target_run_env_and_secrets_as_nobody_in_scratch(
    sandbox_image: str,
) -> None:
    run = new_run(secret_env={"API_TOKEN": "tok-7f3a-secret"})
    [step] = shell(
        [{"name": "env", "run": "env; echo uid=$(id -u):$(id -g) cwd=$(pwd)"}],
        run,
        env={"MODE": "repair", "SPACED": "a b; c"},
        secret_env={"API_TOKEN": "DRYDOCK_REMEDIATION_SECRET_API_TOKEN"},
    )
    assert step.ok, step.stderr
    lines = set(step.stdout.splitlines())
    assert {
        f"DRYDOCK_ASSET_ID={TARGET.asset_id}",
        "DRYDOCK_ASSET_NAME=vm-7",
        "DRYDOCK_ASSET_KIND=vm",
        "DRYDOCK_TENANT=acme",
        f"DRYDOCK_RUN_ID={run.run_id}",
        "MODE=repair",
        "SPACED=a b; c",
        "API_TOKEN=tok-7f3a-secret",
        "uid=65534:65534 cwd=/scratch",
    } <= lines


def test_the_network_is_unreachable_and_the_steps_after_do_not_run(sandbox_image: str) -> None:
    run = new_run()
    steps = shell(
        [
            {"name": "phone home", "run": "nc -w 2 10.255.255.1 80 </dev/null"},
            {"name": "after", "run": "echo after"},
        ],
        run,
    )
    [step] = steps
    assert not step.ok
    assert step.exit_code not in (None, 0)
    assert "Network is unreachable" in step.stderr
    assert step.error == f"exit code {step.exit_code}"


def test_only_scratch_and_tmp_are_writable_scratch_is_per_step_and_nothing_reaches_a_disk(
    sandbox_image: str, docker_engine: DockerEngine
) -> None:
    marker = f"drydock-marker-{uuid.uuid4().hex}"
    run = new_run()
    steps = shell(
        [
            {
                "name": "write scratch",
                "run": f"echo kept > {marker} && cat /scratch/{marker} && echo t > /tmp/{marker}",
            },
            {
                "name": "scratch is fresh",
                # Nothing but scratch and tmp takes a file, /dev/shm included.
                "run": (
                    f"test ! -e /scratch/{marker} || exit 9; "
                    "for dir in / /bin /etc /dev/shm /sys /proc; do "
                    f'  touch "$dir/{marker}" 2>/dev/null && echo "wrote $dir"; '
                    "done; exit 0"
                ),
            },
            {"name": "write root", "run": f"echo escaped > /{marker}"},
            {"name": "never", "run": "echo never"},
        ],
        run,
    )
    assert [step.name for step in steps] == ["write scratch", "scratch is fresh", "write root"]
    written, fresh, root = steps
    assert written.ok and written.stdout == "kept\n"
    assert fresh.ok, f"{marker} survived into the next step's /scratch"
    assert "wrote" not in fresh.stdout
    assert not root.ok
    assert "Read-only file system" in root.stderr
    assert not Path(f"/{marker}").exists()
    # tmpfs only: the engine's storage (image layers, container layers) never held the file.
    assert not [path for path in docker_engine.directory.rglob(f"*{marker}*")]


def test_a_step_running_past_the_time_limit_is_killed_and_its_container_removed(
    sandbox_image: str, engine: Any
) -> None:
    run = new_run(timeout_seconds=3)
    steps = shell(
        [
            {"name": "hang", "run": "echo started; sleep 60"},
            {"name": "never", "run": "echo never"},
        ],
        run,
    )
    [step] = steps
    assert step.timed_out
    assert not step.ok
    assert step.error == run.timeout_message()
    assert step.exit_code is None
    assert step.stdout == "started\n"
    assert containers_of(engine, run) == []


def test_a_run_whose_time_is_already_up_starts_no_container(
    sandbox_image: str, engine: Any
) -> None:
    run = new_run(timeout_seconds=0)
    [step] = shell([{"name": "late", "run": "echo late"}], run)
    assert step.timed_out and not step.ok
    assert step.error == run.timeout_message()
    assert step.stdout == ""


def test_the_container_carries_the_limits_lockdown_and_labels(
    sandbox_image: str, engine: Any
) -> None:
    """Inspected on the engine while the step runs; then killed from outside, which fails it."""
    run = new_run()
    spec = ShellSpec(
        steps=[{"name": "wait here", "run": "sleep 60"}],
        limits={"memory_mb": 64, "cpus": 0.5, "pids": 32, "scratch_mb": 8},
    )
    results: list[StepResult] = []
    errors: list[BaseException] = []

    def execute() -> None:
        try:
            results.extend(ShellExecutor().execute(spec, TARGET, run))
        except BaseException as exc:
            errors.append(exc)

    worker = threading.Thread(target=execute)
    worker.start()
    try:
        deadline = time.monotonic() + 30
        running: list[Any] = []
        while not running and time.monotonic() < deadline:
            running = [c for c in containers_of(engine, run) if c.status == "running"]
            time.sleep(0.1)
        assert running, "the step's container never showed up on the engine"
        [container] = running
        attrs = container.attrs
        host = attrs["HostConfig"]
        assert host["Memory"] == 64 * 1024 * 1024
        assert host["MemorySwap"] == 64 * 1024 * 1024
        assert host["NanoCpus"] == 500_000_000
        assert host["PidsLimit"] == 32
        assert host["ReadonlyRootfs"] is True
        assert host["NetworkMode"] == "none"
        assert host["IpcMode"] == "none"
        assert host["CapDrop"] == ["ALL"]
        assert host["SecurityOpt"] == ["no-new-privileges"]
        assert host["Tmpfs"]["/scratch"].startswith("size=8m")
        assert attrs["Config"]["User"] == "65534:65534"
        assert attrs["Config"]["WorkingDir"] == "/scratch"
        assert attrs["Config"]["Image"] == sandbox_image
        labels = attrs["Config"]["Labels"]
        assert labels[SANDBOX_LABEL] == "true"
        assert labels[STEP_LABEL] == "wait here"
        assert labels["io.drydock.remediation.asset-id"] == str(TARGET.asset_id)
        assert f"DRYDOCK_RUN_ID={run.run_id}" in attrs["Config"]["Env"]
        container.kill()
    finally:
        worker.join(60)
    assert not errors
    [step] = results
    assert not step.ok and not step.timed_out
    assert step.error == "exit code 137 (killed by signal 9)"
    assert containers_of(engine, run) == []


def test_the_pids_limit_bounds_a_fork_bomb(sandbox_image: str, engine: Any) -> None:
    run = new_run()
    [step] = shell(
        [
            {
                "name": "fork bomb",
                "run": "i=0; while [ $i -lt 200 ]; do sleep 60 & i=$((i+1)); done; echo all $i",
            }
        ],
        run,
        limits={"pids": 16},
    )
    assert not step.ok
    assert "can't fork" in step.stderr
    assert "all 200" not in step.stdout
    # Its sleeping children went with its container.
    assert containers_of(engine, run) == []


def test_a_step_over_its_memory_limit_is_killed_and_says_so(sandbox_image: str) -> None:
    run = new_run()
    [step] = shell(
        [{"name": "hog", "run": "x=$(head -c 200000000 /dev/zero | tr '\\0' a); echo ${#x}"}],
        run,
        limits={"memory_mb": 32},
    )
    assert not step.ok
    assert step.exit_code == 137
    assert step.error == "exit code 137: killed for going over its memory limit of 32 MiB"


# --- container steps --------------------------------------------------------------------------


def test_the_container_executor_runs_argvs_in_the_named_image(
    busybox_only_image: str, engine: Any
) -> None:
    run = new_run()
    spec = ContainerSpec(
        image=busybox_only_image,
        user="1234:1234",
        env={"MODE": "argv"},
        steps=[
            # No shell: metacharacters and variables reach the program as written.
            {"name": "literal", "command": ["/bin/busybox", "echo", "$MODE; rm -rf /"]},
            {
                "name": "who",
                "command": ["/bin/busybox", "sh", "-c", 'echo $(id -u) $(pwd) "$MODE"'],
            },
            {"name": "missing program", "command": ["/bin/no-such-tool", "--fix"]},
            {"name": "never", "command": ["/bin/busybox", "true"]},
        ],
    )
    steps = list(ContainerExecutor().execute(spec, TARGET, run))
    assert [step.name for step in steps] == ["literal", "who", "missing program"]
    literal, who, missing = steps
    assert literal.ok and literal.stdout == "$MODE; rm -rf /\n"
    assert who.ok and who.stdout == "1234 /scratch argv\n"
    assert not missing.ok and missing.exit_code is None
    assert missing.error is not None
    assert missing.error.startswith("the step's container did not start:")
    assert "/bin/no-such-tool" in missing.error
    assert containers_of(engine, run) == []


def test_the_container_executor_runs_as_the_images_user_when_none_is_named(
    busybox_only_image: str,
) -> None:
    spec = ContainerSpec(
        image=busybox_only_image,
        steps=[{"name": "who", "command": ["/bin/busybox", "id", "-u"]}],
    )
    [step] = ContainerExecutor().execute(spec, TARGET, new_run())
    assert step.ok and step.stdout == "0\n"


# --- images and the engine --------------------------------------------------------------------


def test_a_missing_image_fails_the_step_saying_how_to_get_it_and_is_not_pulled(
    docker_engine: DockerEngine, engine: Any
) -> None:
    absent = f"drydock-tests/absent-{uuid.uuid4().hex[:8]}:1"
    [default] = ShellExecutor(default_image=absent).execute(
        ShellSpec(steps=[{"name": "s", "run": "true"}]), TARGET, new_run()
    )
    assert not default.ok and default.exit_code is None
    assert default.error == (
        f"the sandbox image '{absent}' is not on the Docker engine at {docker_engine.url}: "
        "build it there with `drydock remediation sandbox build` (steps never pull images)"
    )
    [named] = ContainerExecutor().execute(
        ContainerSpec(image=absent, steps=[{"name": "c", "command": ["true"]}]),
        TARGET,
        new_run(),
    )
    assert not named.ok
    assert named.error == (
        f"image '{absent}' is not on the Docker engine at {docker_engine.url}: load or build "
        "it there first (steps never pull images)"
    )
    assert engine.images.list(name=absent.split(":")[0]) == []


def test_an_unreachable_engine_is_executor_unavailable(tmp_path: Path) -> None:
    nowhere = f"unix://{tmp_path}/no-docker.sock"
    steps = ShellExecutor(base_url=nowhere).execute(
        ShellSpec(steps=[{"name": "s", "run": "true"}]), TARGET, new_run()
    )
    with pytest.raises(ExecutorUnavailableError, match="cannot be reached"):
        next(iter(steps))
    with pytest.raises(ExecutorUnavailableError, match=re.escape(f"{tmp_path}/no-docker.sock")):
        build_sandbox_image("drydock-tests/unbuilt:1", busybox=BUSYBOX, base_url=nowhere)


def test_the_sandbox_image_is_busybox_as_nobody(sandbox_image: str, engine: Any) -> None:
    config = engine.images.get(sandbox_image).attrs["Config"]
    assert config["User"] == "65534:65534"
    assert config["WorkingDir"] == "/scratch"
    assert config["Labels"][SANDBOX_LABEL] == "image"
    run = new_run()
    [step] = shell(
        [
            {
                "name": "tools",
                "run": "whoami; for tool in sh ls sed awk grep nc; do which $tool; done",
            }
        ],
        run,
    )
    assert step.ok, step.stderr
    assert step.stdout.splitlines() == [
        "nobody",
        "/bin/sh",
        "/bin/ls",
        "/bin/sed",
        "/bin/awk",
        "/bin/grep",
        "/bin/nc",
    ]


def test_building_the_sandbox_image_needs_a_static_busybox(tmp_path: Path) -> None:
    with pytest.raises(SandboxImageError, match=r"does not exist.*busybox-static"):
        build_sandbox_image("drydock-tests/x:1", busybox=tmp_path / "busybox")
    script = tmp_path / "script"
    script.write_text("#!/bin/sh\necho not busybox\n")
    with pytest.raises(SandboxImageError, match="is not an ELF executable"):
        build_sandbox_image("drydock-tests/x:1", busybox=script)
    # The interpreter running this test is an ELF that needs its loader.
    dynamic = Path(os.path.realpath(sys.executable))
    with pytest.raises(SandboxImageError, match="is dynamically linked"):
        build_sandbox_image("drydock-tests/x:1", busybox=dynamic)
    with pytest.raises(SandboxImageError, match="is not an image tag"):
        build_sandbox_image("Not A Tag", busybox=BUSYBOX)


# --- spec validation --------------------------------------------------------------------------


def shell_step(name: str = "s") -> dict[str, str]:
    return {"name": name, "run": "true"}


@pytest.mark.parametrize(
    ("fields", "problem"),
    [
        ({"steps": []}, "at least one step"),
        ({"steps": [shell_step(f"s{i}") for i in range(51)]}, "at most 50 steps, not 51"),
        ({"steps": [shell_step("a"), shell_step("b"), shell_step("a")]}, "repeated: a"),
        ({"steps": [shell_step("-dash")]}, "a step name is letters"),
        ({"steps": [{"name": "s", "run": "   "}]}, "the script is empty"),
        ({"steps": [shell_step()], "timeout": 5}, "Extra inputs are not permitted"),
        ({"steps": [{"name": "s", "run": "true", "shell": "bash"}]}, "Extra inputs"),
        ({"steps": [shell_step()], "limits": {"memory_mb": 8}}, "greater than or equal to 16"),
        ({"steps": [shell_step()], "limits": {"pids": 100000}}, "less than or equal to 4096"),
        ({"steps": [shell_step()], "limits": {"cpus": 0}}, "greater than or equal to 0.1"),
        ({"steps": [shell_step()], "image": "has space:1"}, "without spaces"),
        ({"steps": [shell_step()], "env": {"1BAD": "x"}}, "not an environment variable name"),
        ({"steps": [shell_step()], "env": {"DRYDOCK_RUN_ID": "x"}}, "is reserved"),
        (
            {"steps": [shell_step()], "env": {"A": "1"}, "secret_env": {"A": "DRYDOCK_X"}},
            "env and secret_env both set A",
        ),
    ],
)
def test_shell_specs_are_validated_with_clear_messages(
    fields: dict[str, Any], problem: str
) -> None:
    with pytest.raises(ValidationError, match=problem):
        ShellSpec.model_validate(fields)


@pytest.mark.parametrize(
    ("fields", "problem"),
    [
        ({"steps": [{"name": "c", "command": ["true"]}]}, "image\n  Field required"),
        ({"image": "app:1", "steps": [{"name": "c", "command": []}]}, "at least a program"),
        ({"image": "app:1", "steps": [{"name": "c", "command": [""]}]}, "at least a program"),
        ({"image": "app:1", "steps": [{"name": "c", "command": "true"}]}, "valid list"),
        (
            {"image": "app:1", "user": "root; rm", "steps": [{"name": "c", "command": ["true"]}]},
            "user is `uid`",
        ),
        ({"image": "", "steps": [{"name": "c", "command": ["true"]}]}, "non-empty name"),
    ],
)
def test_container_specs_are_validated_with_clear_messages(
    fields: dict[str, Any], problem: str
) -> None:
    with pytest.raises(ValidationError, match=problem):
        ContainerSpec.model_validate(fields)


def test_spec_defaults() -> None:
    spec = ShellSpec(steps=[shell_step()])
    assert spec.image is None
    assert spec.limits.model_dump() == {
        "memory_mb": 256,
        "cpus": 1.0,
        "pids": 128,
        "scratch_mb": 64,
    }

"""The sandbox executors: ``shell`` and ``container`` playbook steps, each step one container on
the Docker engine.

Every step runs in a fresh container, locked down the same way whatever the image:

- no network (``network_mode=none``) and no IPC namespace shared or ``/dev/shm`` (``ipc=none``);
- a read-only root file system; ``/scratch`` (the working directory) and a small ``/tmp`` are
  tmpfs, the only writable places. They are memory-backed and **per step**: a file one step
  writes is gone when the next step starts, and nothing a step writes ever reaches a disk;
- every capability dropped, ``no-new-privileges``, memory (no swap beyond it), CPU and process
  limits from the spec's ``limits``;
- ``shell`` steps run as nobody (65534:65534) in the sandbox image (a static busybox, built by
  :func:`build_sandbox_image`); ``container`` steps run an argv in the image the playbook
  names, as its ``user`` or the image's own user;
- the environment is the target's (``DRYDOCK_ASSET_*``, ``DRYDOCK_TENANT``), ``DRYDOCK_RUN_ID``,
  the spec's ``env`` and the run's resolved secrets;
- labels (``io.drydock.remediation.*``) name the run, attempt and step, so an operator can find
  a sandbox container with ``docker ps --filter label=io.drydock.remediation.sandbox``.

A step waits at most for what is left of the run's time budget, then is killed. Its container
is removed however the step ends (exit, timeout, error, the task being cancelled), before its
result is yielded. Images are never pulled: a missing image is a failed step saying how to get
it. An engine that cannot be reached raises ExecutorUnavailableError (the task retries); the
engine client, its errors and running a container to a deadline are
``adapters.docker_engine``'s, shared with evaluation's suites.

The docker SDK is imported inside functions: the spec models here are imported by every
producer that validates a playbook, which must not need the SDK loaded.
"""

from __future__ import annotations

import shutil
import struct
import tempfile
from collections.abc import Iterator, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any, ClassVar

from adapters import container_run, docker_engine
from adapters.container_run import ContainerLimits, ContainerRequest
from adapters.docker_engine import DockerEngineUnavailableError
from kernel.errors import DrydockError
from kernel.settings import get_settings
from tasks.remediation.executors.base import (
    ExecutorKind,
    ExecutorSpec,
    RunContext,
    StepResult,
    Target,
    parse_outputs,
    unavailable_as_executor_error,
    utcnow,
)
from tasks.remediation.executors.sandbox_spec import (
    ContainerSpec,
    SandboxLimits,
    SandboxSpec,
    ShellSpec,
)

SANDBOX_USER = "65534:65534"
SCRATCH_DIR = "/scratch"
TMP_SIZE_MB = 16

LABEL_PREFIX = "io.drydock.remediation."
SANDBOX_LABEL = LABEL_PREFIX + "sandbox"
RUN_ID_LABEL = LABEL_PREFIX + "run-id"
ATTEMPT_LABEL = LABEL_PREFIX + "attempt"
STEP_LABEL = LABEL_PREFIX + "step"
STEP_INDEX_LABEL = LABEL_PREFIX + "step-index"
ASSET_ID_LABEL = LABEL_PREFIX + "asset-id"
EXECUTOR_LABEL = LABEL_PREFIX + "executor"


# --- spec models ------------------------------------------------------------------------------


# --- the executors ----------------------------------------------------------------------------


@dataclass(frozen=True)
class _Step:
    index: int
    name: str
    command: list[str]


@dataclass(frozen=True)
class _Sandbox:
    """Everything about a step's container but its command."""

    image: str
    user: str | None
    limits: SandboxLimits
    environment: dict[str, str]
    labels: dict[str, str]
    # Said when the image is not on the engine: how to get it there.
    missing_image_hint: str


class _DockerSandboxExecutor:
    kind: ClassVar[ExecutorKind]

    def __init__(self, base_url: str | None = None) -> None:
        """``base_url`` (e.g. ``unix:///run/docker.sock``) unset: DRYDOCK_DOCKER_HOST, else
        DOCKER_HOST, else the engine's default socket."""
        self._address = docker_engine.engine_address(base_url)

    @property
    def engine_address(self) -> str:
        return self._address or "the default socket"

    def _run_steps(
        self, sandbox: _Sandbox, steps: list[_Step], run: RunContext
    ) -> Iterator[StepResult]:
        with unavailable_as_executor_error(DockerEngineUnavailableError):
            client = docker_engine.connect(self._address)
        try:
            for step in steps:
                with (
                    unavailable_as_executor_error(DockerEngineUnavailableError),
                    docker_engine.engine_errors(self._address),
                ):
                    result = self._run_step(client, sandbox, step, run)
                yield result
                if not result.ok:
                    return
        finally:
            client.close()

    def _run_step(self, client: Any, sandbox: _Sandbox, step: _Step, run: RunContext) -> StepResult:
        started_at = utcnow()

        def failed(error: str, **fields: Any) -> StepResult:
            return StepResult(
                name=step.name,
                ok=False,
                started_at=started_at,
                finished_at=utcnow(),
                error=error,
                **fields,
            )

        if run.remaining() <= 0:
            return failed(run.timeout_message(), timed_out=True)
        limits = sandbox.limits
        request = ContainerRequest(
            image=sandbox.image,
            command=step.command,
            limits=ContainerLimits(memory_mb=limits.memory_mb, cpus=limits.cpus, pids=limits.pids),
            deadline=run.deadline,
            user=sandbox.user,
            environment=sandbox.environment,
            labels={
                **sandbox.labels,
                STEP_LABEL: step.name,
                STEP_INDEX_LABEL: str(step.index),
            },
            working_dir=SCRATCH_DIR,
            network_mode="none",
            read_only_root=True,
            tmpfs={
                SCRATCH_DIR: f"size={limits.scratch_mb}m,mode=1777",
                "/tmp": f"size={TMP_SIZE_MB}m,mode=1777",
            },
            # All of the output: the run's artifacts scrub and cap it (artifacts.kept_step).
            capture_bytes=None,
            removal_log_action="remediation.sandbox.remove_failed",
            removal_message="a remediation sandbox container could not be removed",
        )
        try:
            result = container_run.run_container(client, request, engine=self.engine_address)
        except container_run.ImageMissingError:
            return failed(sandbox.missing_image_hint)
        except container_run.ContainerRefusedError as exc:
            return failed(f"the Docker engine refused the step's container: {exc.explanation}")
        except container_run.ContainerStartError as exc:
            # E.g. the program is not in the image ("executable file not found").
            return failed(f"the step's container did not start: {exc.explanation}")
        stdout = result.stdout.text()
        stderr = result.stderr.text()
        if result.exit_code is None:
            return failed(run.timeout_message(), timed_out=True, stdout=stdout, stderr=stderr)
        error = None
        if result.exit_code != 0:
            error = _exit_error(result.exit_code, result.oom_killed, limits)
        return StepResult(
            name=step.name,
            ok=result.exit_code == 0,
            started_at=started_at,
            finished_at=utcnow(),
            exit_code=result.exit_code,
            stdout=stdout,
            stderr=stderr,
            outputs=parse_outputs(stdout),
            error=error,
        )

    def _labels(self, target: Target, run: RunContext) -> dict[str, str]:
        return {
            SANDBOX_LABEL: "true",
            EXECUTOR_LABEL: str(self.kind),
            RUN_ID_LABEL: str(run.run_id),
            ATTEMPT_LABEL: str(run.attempt),
            ASSET_ID_LABEL: str(target.asset_id),
        }

    def _environment(self, spec: SandboxSpec, target: Target, run: RunContext) -> dict[str, str]:
        return {
            **target.environment(),
            "DRYDOCK_RUN_ID": str(run.run_id),
            **spec.env,
            **run.secret_env,
            # Last, so that no spec can hide from its steps that this is a simulation.
            "DRYDOCK_SIMULATION": "1" if run.simulation else "0",
        }


class ShellExecutor(_DockerSandboxExecutor):
    """`shell` steps: each a ``/bin/sh -c`` script in its own locked-down container of the
    sandbox image, as nobody, with a per-step tmpfs /scratch as working directory."""

    kind: ClassVar[ExecutorKind] = ExecutorKind.SHELL
    spec_model: ClassVar[type[ExecutorSpec]] = ShellSpec

    def __init__(self, base_url: str | None = None, default_image: str | None = None) -> None:
        """``default_image`` unset: DRYDOCK_REMEDIATION_SANDBOX_IMAGE."""
        super().__init__(base_url)
        self.default_image = default_image or get_settings().remediation_sandbox_image

    def execute(
        self, spec: ShellSpec | Mapping[str, Any], target: Target, run: RunContext
    ) -> Iterator[StepResult]:
        spec = spec if isinstance(spec, ShellSpec) else ShellSpec.model_validate(spec)
        image = spec.image or self.default_image
        if image == self.default_image:
            hint = (
                f"the sandbox image {image!r} is not on the Docker engine at "
                f"{self.engine_address}: build it there with `drydock remediation sandbox "
                "build` (steps never pull images)"
            )
        else:
            hint = _missing_image_hint(image, self.engine_address)
        sandbox = _Sandbox(
            image=image,
            user=SANDBOX_USER,
            limits=spec.limits,
            environment=self._environment(spec, target, run),
            labels=self._labels(target, run),
            missing_image_hint=hint,
        )
        steps = [
            _Step(index, step.name, ["/bin/sh", "-c", step.run])
            for index, step in enumerate(spec.steps)
        ]
        yield from self._run_steps(sandbox, steps, run)


class ContainerExecutor(_DockerSandboxExecutor):
    """`container` steps: each an argv run directly in its own locked-down container of the
    playbook's image, with a per-step tmpfs /scratch as working directory."""

    kind: ClassVar[ExecutorKind] = ExecutorKind.CONTAINER
    spec_model: ClassVar[type[ExecutorSpec]] = ContainerSpec

    def execute(
        self, spec: ContainerSpec | Mapping[str, Any], target: Target, run: RunContext
    ) -> Iterator[StepResult]:
        spec = spec if isinstance(spec, ContainerSpec) else ContainerSpec.model_validate(spec)
        sandbox = _Sandbox(
            image=spec.image,
            user=spec.user,
            limits=spec.limits,
            environment=self._environment(spec, target, run),
            labels=self._labels(target, run),
            missing_image_hint=_missing_image_hint(spec.image, self.engine_address),
        )
        steps = [
            _Step(index, step.name, list(step.command)) for index, step in enumerate(spec.steps)
        ]
        yield from self._run_steps(sandbox, steps, run)


def _missing_image_hint(image: str, engine: str) -> str:
    return (
        f"image {image!r} is not on the Docker engine at {engine}: load or build it there "
        "first (steps never pull images)"
    )


def _exit_error(exit_code: int, oom_killed: bool, limits: SandboxLimits) -> str:
    if oom_killed:
        return (
            f"exit code {exit_code}: killed for going over its memory limit of "
            f"{limits.memory_mb} MiB"
        )
    # The engine reports a process killed by signal N as 128 + N.
    if exit_code > 128:
        return f"exit code {exit_code} (killed by signal {exit_code - 128})"
    return f"exit code {exit_code}"


# --- the sandbox image ------------------------------------------------------------------------


class SandboxImageError(DrydockError):
    """The sandbox image cannot be built: no usable busybox, or the build failed."""


SANDBOX_DOCKERFILE = f"""\
FROM scratch
COPY busybox /bin/busybox
RUN ["/bin/busybox", "--install", "-s", "/bin"]
RUN ["/bin/mkdir", "-m", "1777", "{SCRATCH_DIR}", "/tmp"]
# Names for root and nobody, so `id`, `ls -l` and `whoami` have something to say.
COPY passwd group /etc/
ENV PATH=/bin HOME={SCRATCH_DIR}
WORKDIR {SCRATCH_DIR}
LABEL {SANDBOX_LABEL}="image" org.opencontainers.image.title="drydock remediation sandbox"
USER {SANDBOX_USER}
"""
_SANDBOX_PASSWD = (
    f"root:x:0:0:root:/root:/bin/sh\nnobody:x:65534:65534:nobody:{SCRATCH_DIR}:/bin/sh\n"
)
_SANDBOX_GROUP = "root:x:0:\nnogroup:x:65534:\n"

_PT_INTERP = 3


def _check_static_executable(path: Path) -> None:
    """Refuse anything but a statically linked ELF executable: the image is FROM scratch, with
    no dynamic loader and no libraries."""
    try:
        data = path.read_bytes()
    except FileNotFoundError:
        raise SandboxImageError(
            f"{path} does not exist: the sandbox image needs a static busybox "
            "(Debian and Ubuntu: the busybox-static package)"
        ) from None
    except OSError as exc:
        raise SandboxImageError(f"{path} cannot be read: {exc.strerror}") from None
    if data[:4] != b"\x7fELF" or len(data) < 64 or data[4] not in (1, 2) or data[5] not in (1, 2):
        raise SandboxImageError(f"{path} is not an ELF executable; a static busybox is needed")
    is_64 = data[4] == 2
    order = "<" if data[5] == 1 else ">"
    if is_64:
        phoff, phentsize, phnum = (
            struct.unpack_from(order + "Q", data, 32)[0],
            *struct.unpack_from(order + "HH", data, 54),
        )
    else:
        phoff, phentsize, phnum = (
            struct.unpack_from(order + "I", data, 28)[0],
            *struct.unpack_from(order + "HH", data, 42),
        )
    for index in range(phnum):
        offset = phoff + index * phentsize
        if offset + 4 > len(data):
            raise SandboxImageError(f"{path} is a truncated ELF file")
        (p_type,) = struct.unpack_from(order + "I", data, offset)
        if p_type == _PT_INTERP:
            raise SandboxImageError(
                f"{path} is dynamically linked: the sandbox image has no libraries, so it needs "
                "a static busybox (Debian and Ubuntu: the busybox-static package)"
            )


def build_sandbox_image(
    tag: str | None = None, busybox: Path = Path("/bin/busybox"), base_url: str | None = None
) -> str:
    """Build the `shell` executor's sandbox image on the Docker engine: ``FROM scratch``, a
    static ``busybox`` with its applets in /bin, /scratch, running as nobody (65534:65534).

    ``tag`` unset: DRYDOCK_REMEDIATION_SANDBOX_IMAGE; ``base_url`` unset: DRYDOCK_DOCKER_HOST,
    else DOCKER_HOST. Returns the image id. Nothing is pulled; the build runs with no network.
    """
    import docker.errors
    import docker.utils

    _check_static_executable(busybox)
    tag = tag or get_settings().remediation_sandbox_image
    if not docker.utils.match_tag(tag):
        raise SandboxImageError(
            f"{tag!r} is not an image tag (lowercase repository, optional :tag), e.g. "
            "drydock/remediation-sandbox:latest"
        )
    address = docker_engine.engine_address(base_url)
    with tempfile.TemporaryDirectory(prefix="drydock-sandbox-image-") as directory:
        context = Path(directory)
        shutil.copyfile(busybox, context / "busybox")
        (context / "busybox").chmod(0o755)
        (context / "Dockerfile").write_text(SANDBOX_DOCKERFILE)
        (context / "passwd").write_text(_SANDBOX_PASSWD)
        (context / "group").write_text(_SANDBOX_GROUP)
        with unavailable_as_executor_error(DockerEngineUnavailableError):
            client = docker_engine.connect(address)
        try:
            with (
                unavailable_as_executor_error(DockerEngineUnavailableError),
                docker_engine.engine_errors(address),
            ):
                image, _ = client.images.build(
                    path=str(context),
                    tag=tag,
                    rm=True,
                    forcerm=True,
                    pull=False,
                    # RUN steps need no network, and an engine without a bridge has no other.
                    network_mode="none",
                )
        except docker.errors.BuildError as exc:
            lines = [
                str(entry.get("stream") or entry.get("error") or "").rstrip()
                for entry in exc.build_log
                if isinstance(entry, dict)
            ]
            tail = "\n".join(line for line in lines if line)[-2000:]
            raise SandboxImageError(f"building {tag} failed: {exc.msg}\n{tail}") from None
        except docker.errors.APIError as exc:
            raise SandboxImageError(
                f"building {tag} failed: {docker_engine.explain(exc)}"
            ) from None
        finally:
            client.close()
    return str(image.id)

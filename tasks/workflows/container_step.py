"""A workflow's ``container`` step run on the Docker engine: one container of the step's image,
the run's workspace mounted read-write at ``/workspace`` (its working directory).

The container, through ``adapters.container_run`` (the lockdown remediation's sandbox uses):

- runs as the **workspace owner's uid:gid** (the directory's, read when the step starts), so
  every file a step writes in the workspace is the owner's as it is written and the host side
  can commit it without a chown pass (which would need root on the worker and walk the whole
  tree after every step). The image's own user is not used: a step needing root in its image
  does not work here;
- has no network (``network_mode=none``) unless the step asks (``network: true``) *and* the
  caller's policy grants one: ``network`` names the engine network to join (``"host"`` on an
  engine started with ``--bridge=none``, which has no other). Asking without a grant is a
  :class:`ContainerStepError`, not a silently network-less step;
- a read-only root, a writable in-memory ``/tmp`` (``HOME`` unless the step sets it), every
  capability dropped, ``no-new-privileges``, memory, CPU and process limits;
- the step's plain env values and its secret references' values (``env_secrets``, resolved by
  the caller and keyed by secret name);
- labels naming the run and the step (:func:`step_labels`), so a dead worker's leftover
  containers can be removed with :func:`remove_orphaned_step_containers`.

It is killed at the step's ``timeout_seconds`` or when ``cancel`` is set (within about a
quarter of a second, plus the engine's kill), and removed however it ends. Its output is read
back as a bounded head and tail of each stream, scrubbed of the secret values (and embedded
credentials), then capped to ``max_output_bytes``; the sizes reported are as produced. The image
is never pulled: a missing one is :class:`StepImageMissingError`.

The engine resolves the workspace path on its own host: it must run on the worker's host.
"""

from __future__ import annotations

import os
import threading
import time
import uuid
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path

from adapters import container_run, docker_engine
from adapters.container_run import BindMount, ContainerLimits, ContainerRequest
from kernel.errors import DrydockError
from tasks.workflows.definitions import WorkflowContainerStep, WorkflowSecretRef

WORKSPACE_DIR = "/workspace"
TMP_SIZE_MB = 256
DEFAULT_LIMITS = ContainerLimits(memory_mb=2048, cpus=2.0, pids=1024)
# Per stream: enough for a linter's or a test runner's report; the rest is cut from the middle.
DEFAULT_MAX_OUTPUT_BYTES = 256 * 1024

LABEL_PREFIX = "io.drydock.workflow."
STEP_CONTAINER_LABEL = LABEL_PREFIX + "step-container"
RUN_ID_LABEL = LABEL_PREFIX + "run-id"
STEP_LABEL = LABEL_PREFIX + "step"


class ContainerStepError(DrydockError):
    """The step cannot run as defined (an unresolved secret, network without a grant, a bad
    workspace, the engine refusing the container): running it again fails the same way."""


class StepImageMissingError(ContainerStepError):
    def __init__(self, step_name: str, image: str, engine: str) -> None:
        super().__init__(
            f"step {step_name!r}: image {image!r} is not on the Docker engine at {engine}: "
            "load or build it there first (workflow steps never pull images)"
        )
        self.image = image


@dataclass(frozen=True)
class StepOutcome:
    step_name: str
    # None: killed (timed out or cancelled) before it exited.
    exit_code: int | None
    stdout: str
    stderr: str
    # As produced by the step, before scrubbing and the cap.
    stdout_bytes: int
    stderr_bytes: int
    stdout_truncated: bool
    stderr_truncated: bool
    timed_out: bool
    cancelled: bool
    oom_killed: bool
    started_at: datetime
    finished_at: datetime
    # sha256:… of the image the step ran (the tag as resolved then); None: not reported.
    image_digest: str | None = None

    @property
    def ok(self) -> bool:
        return self.exit_code == 0

    @property
    def duration_seconds(self) -> float:
        return (self.finished_at - self.started_at).total_seconds()

    @property
    def error(self) -> str | None:
        """Why the step failed, in one line; None when it succeeded."""
        if self.cancelled:
            return "cancelled"
        if self.timed_out:
            return "timed out"
        if self.exit_code == 0:
            return None
        if self.oom_killed:
            return f"exit code {self.exit_code}: killed for going over its memory limit"
        # The engine reports a process killed by signal N as 128 + N.
        if self.exit_code is not None and self.exit_code > 128:
            return f"exit code {self.exit_code} (killed by signal {self.exit_code - 128})"
        return f"exit code {self.exit_code}"


def step_labels(run_id: uuid.UUID | str, step_name: str) -> dict[str, str]:
    return {
        STEP_CONTAINER_LABEL: "true",
        RUN_ID_LABEL: str(run_id),
        STEP_LABEL: step_name,
    }


def run_container_step(
    step: WorkflowContainerStep,
    *,
    workspace: Path,
    env_secrets: Mapping[str, str],
    run_id: uuid.UUID | str,
    step_name: str,
    cancel: threading.Event | None = None,
    engine_address: str | None = None,
    network: str | None = None,
    limits: ContainerLimits = DEFAULT_LIMITS,
    max_output_bytes: int = DEFAULT_MAX_OUTPUT_BYTES,
    extra_binds: Sequence[BindMount] = (),
) -> StepOutcome:
    """Run ``step`` with ``workspace`` at /workspace; see the module's docstring.

    ``env_secrets``: the values of the step's secret references, by secret name.
    ``engine_address`` unset: DRYDOCK_DOCKER_HOST, else DOCKER_HOST, else the default socket.
    ``network``: the engine network a step asking for one joins (the runner's policy); None:
    none is granted. Raises ContainerStepError (StepImageMissingError) when the step cannot
    run, DockerEngineUnavailableError when the engine cannot be reached (retry later)."""
    deadline = time.monotonic() + step.timeout_seconds
    address = docker_engine.engine_address(engine_address)
    engine = address or "the default socket"
    owner = _workspace_owner(workspace, step_name)
    environment, secret_values = _environment(step, env_secrets, step_name)
    if step.network and network is None:
        raise ContainerStepError(
            f"step {step_name!r} asks for network access, which this runner does not grant"
        )
    request = ContainerRequest(
        image=step.image,
        command=step.command,
        limits=limits,
        deadline=deadline,
        user=owner,
        environment=environment,
        labels=step_labels(run_id, step_name),
        working_dir=WORKSPACE_DIR,
        network_mode=network if step.network and network is not None else "none",
        read_only_root=True,
        tmpfs={"/tmp": f"size={TMP_SIZE_MB}m,mode=1777"},
        binds=[BindMount(workspace.resolve(), WORKSPACE_DIR), *extra_binds],
        cancel=cancel,
        # The head and the tail of the cap, and room for a secret cut at either edge.
        capture_bytes=max_output_bytes + max((len(v.encode()) for v in secret_values), default=0),
        removal_log_action="workflows.container_step.remove_failed",
        removal_message="a workflow step container could not be removed",
    )
    try:
        result = container_run.run_container_at(address, request)
    except container_run.ImageMissingError:
        raise StepImageMissingError(step_name, step.image, engine) from None
    except container_run.ContainerRunError as exc:
        raise ContainerStepError(f"step {step_name!r}: {exc}") from None
    stdout = container_run.kept_text(result.stdout, max_output_bytes, secret_values)
    stderr = container_run.kept_text(result.stderr, max_output_bytes, secret_values)
    return StepOutcome(
        step_name=step_name,
        exit_code=result.exit_code,
        stdout=stdout.text,
        stderr=stderr.text,
        stdout_bytes=stdout.size,
        stderr_bytes=stderr.size,
        stdout_truncated=stdout.truncated,
        stderr_truncated=stderr.truncated,
        timed_out=result.timed_out,
        cancelled=result.cancelled,
        oom_killed=result.oom_killed,
        started_at=result.started_at,
        finished_at=result.finished_at,
        image_digest=result.image_id,
    )


def remove_orphaned_step_containers(
    run_id: uuid.UUID | str, *, step_name: str | None = None, engine_address: str | None = None
) -> int:
    """Remove every step container of ``run_id`` (of its step ``step_name`` only, when given;
    running ones are killed): what a dead worker left behind. How many were removed."""
    address = docker_engine.engine_address(engine_address)
    client = docker_engine.connect(address)
    labels = {STEP_CONTAINER_LABEL: "true", RUN_ID_LABEL: str(run_id)}
    if step_name is not None:
        labels[STEP_LABEL] = step_name
    try:
        return container_run.remove_labelled_containers(
            client, labels, engine=address or "the default socket"
        )
    finally:
        client.close()


def _workspace_owner(workspace: Path, step_name: str) -> str:
    if not workspace.is_absolute():
        raise ContainerStepError(f"step {step_name!r}: the workspace {workspace} is not absolute")
    try:
        info = workspace.stat()
    except OSError as exc:
        raise ContainerStepError(
            f"step {step_name!r}: the workspace {workspace} cannot be read: {exc.strerror}"
        ) from None
    if not os.path.isdir(workspace):
        raise ContainerStepError(f"step {step_name!r}: the workspace {workspace} is no directory")
    return f"{info.st_uid}:{info.st_gid}"


def _environment(
    step: WorkflowContainerStep, env_secrets: Mapping[str, str], step_name: str
) -> tuple[dict[str, str], list[str]]:
    """The container's environment, and the secret values in it (to scrub from its output)."""
    # A uid the image does not know has no home: /tmp is the one writable place besides the
    # workspace, where a tool's caches must not land unasked.
    environment: dict[str, str] = {"HOME": "/tmp"}
    secret_values: list[str] = []
    for name, value in step.env.items():
        if isinstance(value, WorkflowSecretRef):
            if value.secret not in env_secrets:
                raise ContainerStepError(
                    f"step {step_name!r}: the secret {value.secret!r} of {name} was not resolved"
                )
            resolved = env_secrets[value.secret]
            environment[name] = resolved
            secret_values.append(resolved)
        else:
            environment[name] = value
    return environment, secret_values

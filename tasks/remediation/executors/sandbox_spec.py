"""What the shell and container executors accept, checked when a playbook is stored: steps
(named, bounded scripts or argv), the sandbox image and user, its environment (no ``DRYDOCK_``
names, which Drydock sets) and its limits."""

from __future__ import annotations

import re
from collections.abc import Sequence
from typing import Annotated, Any

from pydantic import AfterValidator, Field, field_validator, model_validator

from tasks.remediation.executors.base import (
    ExecutorSpec,
    SecretEnvSpec,
)

MAX_STEPS = 50

MAX_STEP_NAME_LENGTH = 64

# A script or argv is code a person wrote into a playbook, not data: 64 KiB is plenty.
MAX_SCRIPT_BYTES = 64 * 1024

MAX_ARGS = 256

MAX_IMAGE_REFERENCE_LENGTH = 255

_STEP_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9 ._-]*")

_ENV_NAME = re.compile(r"[A-Za-z_][A-Za-z0-9_]*")

_USER = re.compile(r"[A-Za-z0-9_][A-Za-z0-9_.-]*(:[A-Za-z0-9_][A-Za-z0-9_.-]*)?")

# Drydock sets these itself (the target, the run id); a playbook may not pass off its own.
_RESERVED_ENV_PREFIX = "DRYDOCK_"


class SandboxLimits(ExecutorSpec):
    """What each step's container may use. The defaults suit a script of coreutils."""

    memory_mb: Annotated[int, Field(ge=16, le=16384)] = Field(
        256, description="Memory limit of each step's container in MiB (no swap beyond it)."
    )
    cpus: Annotated[float, Field(ge=0.1, le=64)] = Field(
        1.0, description="CPU limit of each step's container, in CPUs (0.5 = half of one)."
    )
    pids: Annotated[int, Field(ge=8, le=4096)] = Field(
        128, description="Most processes and threads a step's container may have at once."
    )
    scratch_mb: Annotated[int, Field(ge=1, le=4096)] = Field(
        64,
        description=(
            "Size of the step's /scratch tmpfs in MiB (its working directory; counts against "
            "memory_mb when filled)."
        ),
    )


def _check_step_name(name: str) -> str:
    if not _STEP_NAME.fullmatch(name):
        raise ValueError(
            "a step name is letters, digits, spaces, '.', '_' and '-', starting with a letter "
            "or digit"
        )
    return name


StepName = Annotated[
    str,
    Field(min_length=1, max_length=MAX_STEP_NAME_LENGTH),
    AfterValidator(_check_step_name),
]


def _check_steps(steps: Sequence[Any]) -> None:
    if not steps:
        raise ValueError("a playbook needs at least one step")
    if len(steps) > MAX_STEPS:
        raise ValueError(f"at most {MAX_STEPS} steps, not {len(steps)}")
    names = [step.name for step in steps]
    duplicates = sorted({name for name in names if names.count(name) > 1})
    if duplicates:
        raise ValueError(f"step names must be unique; repeated: {', '.join(duplicates)}")


def _check_image(image: str) -> str:
    if not image or any(char.isspace() for char in image):
        raise ValueError("an image reference is a non-empty name without spaces, e.g. app:1.2")
    return image


class SandboxSpec(SecretEnvSpec):
    """What shell and container specs share: limits, and env names a step can receive."""

    limits: SandboxLimits = Field(
        default_factory=SandboxLimits, description="Resource limits of each step's container."
    )

    @model_validator(mode="after")
    def _check_env_names(self) -> SandboxSpec:
        for field_name, names in (("env", self.env), ("secret_env", self.secret_env)):
            for name in names:
                if not _ENV_NAME.fullmatch(name):
                    raise ValueError(
                        f"{field_name}: {name!r} is not an environment variable name "
                        "(letters, digits and '_', not starting with a digit)"
                    )
                if name.upper().startswith(_RESERVED_ENV_PREFIX):
                    raise ValueError(
                        f"{field_name}: {name!r} is reserved: Drydock sets the DRYDOCK_* "
                        "variables a step sees (its target and run)"
                    )
        both = sorted(set(self.env) & set(self.secret_env))
        if both:
            raise ValueError(f"env and secret_env both set {', '.join(both)}")
        for name, value in self.env.items():
            if "\0" in value:
                raise ValueError(f"env: the value of {name} contains a NUL character")
        return self


class ShellStep(ExecutorSpec):
    name: StepName = Field(
        description="The step's name, unique in the playbook; shown in its run record."
    )
    run: Annotated[str, Field(min_length=1)] = Field(
        description=(
            "A script for `/bin/sh -c` (busybox ash in the default image), run in /scratch as "
            "nobody; a non-zero exit fails the step."
        )
    )

    @field_validator("run")
    @classmethod
    def _check_script(cls, script: str) -> str:
        if not script.strip():
            raise ValueError("the script is empty")
        if len(script.encode()) > MAX_SCRIPT_BYTES:
            raise ValueError(f"the script is longer than {MAX_SCRIPT_BYTES} bytes")
        if "\0" in script:
            raise ValueError("the script contains a NUL character")
        return script


class ShellSpec(SandboxSpec):
    """`shell` playbooks: scripts run one per step in the busybox sandbox image."""

    steps: list[ShellStep] = Field(
        description=f"The steps, run in order (1 to {MAX_STEPS}); the first failure stops the run."
    )
    image: str | None = Field(
        None,
        max_length=MAX_IMAGE_REFERENCE_LENGTH,
        description=(
            "Image the steps run in, which must have /bin/sh and already be on the Docker "
            "engine (never pulled); unset: the worker's DRYDOCK_REMEDIATION_SANDBOX_IMAGE."
        ),
    )

    @field_validator("steps")
    @classmethod
    def _check_step_list(cls, steps: list[ShellStep]) -> list[ShellStep]:
        _check_steps(steps)
        return steps

    @field_validator("image")
    @classmethod
    def _check_image_reference(cls, image: str | None) -> str | None:
        return None if image is None else _check_image(image)


class ContainerStep(ExecutorSpec):
    name: StepName = Field(
        description="The step's name, unique in the playbook; shown in its run record."
    )
    command: list[str] = Field(
        description=(
            "The argv to run, executed directly (no shell: `$VAR` and `;` are literal); the "
            "first item is the program. A non-zero exit fails the step."
        )
    )

    @field_validator("command")
    @classmethod
    def _check_command(cls, command: list[str]) -> list[str]:
        if not command or not command[0]:
            raise ValueError("the command needs at least a program to run")
        if len(command) > MAX_ARGS:
            raise ValueError(f"at most {MAX_ARGS} arguments, not {len(command)}")
        if sum(len(arg.encode()) for arg in command) > MAX_SCRIPT_BYTES:
            raise ValueError(f"the command is longer than {MAX_SCRIPT_BYTES} bytes")
        if any("\0" in arg for arg in command):
            raise ValueError("an argument contains a NUL character")
        return command


class ContainerSpec(SandboxSpec):
    """`container` playbooks: an argv per step in an image of the playbook's choosing."""

    image: str = Field(
        max_length=MAX_IMAGE_REFERENCE_LENGTH,
        description="Image every step runs in; it must already be on the Docker engine (never "
        "pulled).",
    )
    steps: list[ContainerStep] = Field(
        description=f"The steps, run in order (1 to {MAX_STEPS}); the first failure stops the run."
    )
    user: str | None = Field(
        None,
        max_length=64,
        description="User the steps run as (`uid`, `uid:gid` or names the image knows); unset: "
        "the image's own user.",
    )

    @field_validator("image")
    @classmethod
    def _check_image_reference(cls, image: str) -> str:
        return _check_image(image)

    @field_validator("steps")
    @classmethod
    def _check_step_list(cls, steps: list[ContainerStep]) -> list[ContainerStep]:
        _check_steps(steps)
        return steps

    @field_validator("user")
    @classmethod
    def _check_user(cls, user: str | None) -> str | None:
        if user is not None and not _USER.fullmatch(user):
            raise ValueError("user is `uid`, `uid:gid`, `name` or `name:group`")
        return user

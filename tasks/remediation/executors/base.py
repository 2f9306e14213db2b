"""What every remediation executor shares: the target, the run's limits, one step's result,
and the interface each executor kind implements.

An executor runs a validated playbook spec against one target and yields one StepResult per
step, in order, stopping after the first step that fails (or times out). It never stores,
logs or scrubs anything itself: the remediation domain keeps each step as an artifact (capped,
secrets redacted) the moment it is yielded, so a step already run is on record even when a
later one raises.

Errors:
- the step's own failure (a non-zero exit, a domain that does not exist, a refused eviction)
  is a StepResult with ``ok=False`` and an ``error`` a person can act on;
- the engine, daemon or API being unreachable raises ExecutorUnavailableError, which the task
  retries with backoff (the run has not failed; the fleet could not reach its tools);
- running past ``RunContext.deadline`` ends the step with ``timed_out=True`` (and whatever it
  started is stopped: container killed, ansible-runner cancelled).
"""

from __future__ import annotations

import contextlib
import json
import time
import uuid
from collections.abc import Iterator, Mapping
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any, ClassVar, Protocol

from pydantic import BaseModel, ConfigDict, Field

from kernel.errors import TransientError
from models.remediation import ExecutorKind

__all__ = [
    "OUTPUT_PREFIX",
    "Executor",
    "ExecutorKind",
    "ExecutorSpec",
    "ExecutorUnavailableError",
    "RunContext",
    "SecretEnvSpec",
    "StepResult",
    "Target",
    "parse_outputs",
    "unavailable_as_executor_error",
    "utcnow",
]

# Lines a step prints on stdout as ``drydock-output {"key": "value"}`` become its structured
# outputs (merged in order), whatever the executor.
OUTPUT_PREFIX = "drydock-output "


class ExecutorUnavailableError(TransientError):
    """The Docker engine, libvirt, the Kubernetes API or ansible could not be reached or
    started: retried with backoff, never counted as the playbook failing."""


@contextlib.contextmanager
def unavailable_as_executor_error(*unavailable: type[Exception]) -> Iterator[None]:
    """An adapter's own "cannot be reached" errors (``adapters.docker_engine``,
    ``adapters.kubernetes``) raised as ExecutorUnavailableError, with the same message: the
    remediation task retries that one error, whichever tool it was."""
    try:
        yield
    except unavailable as exc:
        raise ExecutorUnavailableError(str(exc)) from exc


class ExecutorSpec(BaseModel):
    """Base of every executor's spec model: unknown fields are errors, not ignored."""

    model_config = ConfigDict(extra="forbid", frozen=True)


class SecretEnvSpec(ExecutorSpec):
    """Specs whose steps get environment variables, some of them secret.

    Secret values never sit in the playbook: ``secret_env`` maps the variable a step sees to
    the name of a variable in the *worker's* environment holding the value. The domain resolves
    them at run time into ``RunContext.secret_env`` and redacts their values from artifacts."""

    env: dict[str, str] = Field(
        default_factory=dict, description="Plain environment variables every step gets."
    )
    secret_env: dict[str, str] = Field(
        default_factory=dict,
        description=(
            "Secret variables: {NAME_IN_STEP: WORKER_ENV_VAR}. The worker's variable must start "
            "with DRYDOCK_REMEDIATION_SECRET_; its value is redacted from every artifact."
        ),
    )


@dataclass(frozen=True)
class Target:
    """The asset a playbook runs against, as the executors need it."""

    asset_id: uuid.UUID
    tenant: str
    name: str
    kind: str
    libvirt_uuid: uuid.UUID | None = None
    # The asset's connection variables (trust_assets.connection): ansible host vars such as
    # ansible_host/ansible_user, `kubernetes_node`, `libvirt_domain`; {} when none are set.
    connection: Mapping[str, Any] = field(default_factory=dict)

    def environment(self) -> dict[str, str]:
        """What a sandboxed step is told about its target."""
        return {
            "DRYDOCK_ASSET_ID": str(self.asset_id),
            "DRYDOCK_ASSET_NAME": self.name,
            "DRYDOCK_ASSET_KIND": self.kind,
            "DRYDOCK_TENANT": self.tenant,
        }


@dataclass(frozen=True)
class RunContext:
    """One attempt at one run: its identity and its time budget."""

    run_id: uuid.UUID
    attempt: int
    timeout_seconds: float
    # time.monotonic() by which every step must have ended.
    deadline: float
    # Resolved secret environment (SecretEnvSpec.secret_env), name in step -> value.
    secret_env: Mapping[str, str] = field(default_factory=dict)
    # A workspace's simulation against a sandbox replica: nothing real may change. Sandboxed
    # steps are told so; ansible runs in check mode with diff on the replica; Kubernetes calls
    # are server-side dry runs; libvirt acts on a replica domain in a private test driver.
    simulation: bool = False

    @classmethod
    def starting_now(
        cls,
        run_id: uuid.UUID,
        attempt: int,
        timeout_seconds: float,
        secret_env: Mapping[str, str] | None = None,
        *,
        simulation: bool = False,
    ) -> RunContext:
        return cls(
            run_id=run_id,
            attempt=attempt,
            timeout_seconds=timeout_seconds,
            deadline=time.monotonic() + timeout_seconds,
            secret_env=dict(secret_env or {}),
            simulation=simulation,
        )

    def remaining(self) -> float:
        """Seconds left before the deadline (0 when it has passed)."""
        return max(0.0, self.deadline - time.monotonic())

    def timeout_message(self) -> str:
        return f"timed out: the playbook's time limit of {self.timeout_seconds:g}s ran out"


@dataclass
class StepResult:
    name: str
    ok: bool
    started_at: datetime
    finished_at: datetime
    exit_code: int | None = None
    stdout: str = ""
    stderr: str = ""
    outputs: dict[str, Any] = field(default_factory=dict)
    # Why the step failed, for people: "exit code 3", "domain vm-7 not found", a timeout.
    error: str | None = None
    timed_out: bool = False

    @property
    def duration_ms(self) -> float:
        return (self.finished_at - self.started_at).total_seconds() * 1000


class Executor(Protocol):
    kind: ClassVar[ExecutorKind]
    spec_model: ClassVar[type[ExecutorSpec]]

    def execute(self, spec: Any, target: Target, run: RunContext) -> Iterator[StepResult]:
        """Run ``spec`` (an instance of ``spec_model``) against ``target``; yield each step."""
        ...


def utcnow() -> datetime:
    return datetime.now(UTC)


def parse_outputs(stdout: str) -> dict[str, Any]:
    """The structured outputs a step printed: every ``drydock-output {...}`` line's JSON object,
    merged in order. A line that is not a JSON object is left as ordinary output."""
    outputs: dict[str, Any] = {}
    for line in stdout.splitlines():
        if not line.startswith(OUTPUT_PREFIX):
            continue
        try:
            value = json.loads(line[len(OUTPUT_PREFIX) :])
        except ValueError:
            continue
        if isinstance(value, dict):
            outputs.update(value)
    return outputs

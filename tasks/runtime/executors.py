"""The one interface every runtime backend's executor offers, and the choice among them.

A launch goes: ``prepare`` (names and a port, saved on the instance before anything is made, so
a redelivered launch finds what the first attempt made instead of making another), ``start``
(pull, create, run: returns the endpoint the probe calls), then ``probe`` until it serves, with
``exited`` between probes (a server that died is failed at once, not waited for), and in the end
``stop`` (drain and remove, returning the end of its output, capped and redacted). Every method
may be called again with the same handle: each does what is left to do.
"""

from __future__ import annotations

import uuid
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any, Protocol

from adapters.credentials import RegistryCredential
from kernel.errors import DrydockError
from models.runtime import Backend, ProbeKind
from tasks.runtime.probes import ProbeResult

# The end of a server's output kept with its instance.
LOG_TAIL_BYTES = 16 * 1024
LOG_TAIL_LINES = 400


class LaunchFailedError(DrydockError):
    """The backend answered, but the server cannot run as asked (no such image, refused
    container, exited): the same launch fails the same way."""


@dataclass(frozen=True)
class LaunchSpec:
    instance_id: uuid.UUID
    tenant: str
    server: str
    # host/repository@sha256:...
    image: str
    credential: RegistryCredential | None
    # The target's connection (docker_host, namespace, libvirt_uri...).
    connection: Mapping[str, Any]
    memory_mb: int
    cpus: float
    pids: int
    # How its server is asked whether it serves (the path on its port).
    probe_kind: ProbeKind = ProbeKind.MCP
    probe_path: str = "/mcp"
    labels: Mapping[str, str] = field(default_factory=dict)


class Executor(Protocol):
    backend: Backend

    def prepare(self, spec: LaunchSpec, handle: Mapping[str, Any]) -> dict[str, Any]:
        """The handle to save before starting: ``handle`` (an earlier attempt's) kept as is."""
        ...

    def start(self, spec: LaunchSpec, handle: Mapping[str, Any]) -> str:
        """Make it run (or find it running); the endpoint base URL the probe calls."""
        ...

    def probe_seconds(self) -> float:
        """How long a launch waits for a passing probe."""
        ...

    def probe(self, spec: LaunchSpec, handle: Mapping[str, Any], endpoint: str) -> ProbeResult:
        """Is it serving? One probe of its server at ``endpoint`` (failed: try again later)."""
        ...

    def exited(self, spec: LaunchSpec, handle: Mapping[str, Any]) -> str | None:
        """None while it runs; else what became of it (``exited with code 1``)."""
        ...

    def stop(self, spec: LaunchSpec, handle: Mapping[str, Any]) -> str:
        """Stop and remove it (nothing there is fine); the end of its output, redacted."""
        ...


def executor_for(backend: Backend) -> Executor:
    # Imported here: each executor brings its own client library.
    if backend is Backend.DOCKER:
        from tasks.runtime.docker_executor import DockerExecutor

        return DockerExecutor()
    if backend is Backend.KUBERNETES:
        from tasks.runtime.kubernetes_executor import KubernetesExecutor

        return KubernetesExecutor()
    if backend is Backend.LIBVIRT:
        from tasks.runtime.vm_executor import VmExecutor

        return VmExecutor()
    raise LaunchFailedError(f"the {backend.value} backend has no executor on this worker yet")

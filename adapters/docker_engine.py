"""The Docker engine as the sandboxes use it: connect, tell an unreachable engine from the
engine's own answers, and run a container to a deadline, then remove it.

Remediation's sandbox executors (``tasks.remediation.executors.sandbox``) and evaluation's
suites (``tasks.evaluation.suite``) both run locked-down containers through the docker SDK's
high-level ``DockerClient``; what they share is here. An engine that cannot be reached (or goes
away mid-call) raises ``DockerEngineUnavailableError``, which each room turns into its own
"retry later" error.

The docker SDK is imported inside functions: the rooms' spec models are imported by producers
that must not need the SDK loaded.
"""

from __future__ import annotations

import contextlib
import os
import time
from collections.abc import Iterator
from typing import Any

from kernel.errors import TransientError
from kernel.logs import get_logger
from kernel.settings import get_settings

# Seconds a killed container gets to be reported dead before its logs are read anyway.
KILL_WAIT_SECONDS = 10.0


class DockerEngineUnavailableError(TransientError):
    """The Docker engine cannot be reached, or went away mid-call: another attempt may have
    it."""


def engine_address(base_url: str | None) -> str | None:
    """``base_url`` (e.g. ``unix:///run/docker.sock``), else DRYDOCK_DOCKER_HOST, else
    DOCKER_HOST; None: the engine's default socket."""
    return base_url or get_settings().docker_host or os.environ.get("DOCKER_HOST") or None


@contextlib.contextmanager
def engine_errors(address: str | None) -> Iterator[None]:
    """The engine unreachable (or gone mid-call) -> DockerEngineUnavailableError. The engine's
    own answers (APIError: no such image, a refused container; BuildError) pass through for the
    caller."""
    import docker.errors
    import requests.exceptions

    try:
        yield
    except (
        requests.exceptions.ConnectionError,
        requests.exceptions.ChunkedEncodingError,
        requests.exceptions.Timeout,
        docker.errors.DockerException,
    ) as exc:
        if isinstance(exc, docker.errors.APIError | docker.errors.BuildError):
            raise
        raise DockerEngineUnavailableError(
            f"the Docker engine at {address or 'the default socket'} cannot be reached: {exc}"
        ) from None


def connect(address: str | None) -> Any:
    """A docker.DockerClient for ``address``; the engine is asked its API version, so an
    unreachable one fails here."""
    import docker

    with engine_errors(address):
        return docker.DockerClient(base_url=address) if address else docker.from_env()


def decode(data: bytes | str) -> str:
    """Container output as text (what is not UTF-8 replaced, never an error)."""
    return data if isinstance(data, str) else data.decode("utf-8", errors="replace")


def explain(exc: Any) -> str:
    """What the engine said in an APIError (its ``explanation``), else the error itself."""
    return str(getattr(exc, "explanation", None) or exc)


def wait_for_exit(container: Any, deadline: float) -> int | None:
    """The container's exit code, or None when ``deadline`` (time.monotonic()) passed first."""
    import requests.exceptions

    while True:
        remaining = deadline - time.monotonic()
        if remaining <= 0:
            return None
        try:
            status = container.wait(timeout=remaining)
        except (requests.exceptions.Timeout, requests.exceptions.ConnectionError):
            # Over a unix socket a read timeout arrives as a ConnectionError: ask the engine
            # again (an engine that went away fails that as unreachable).
            container.reload()
            continue
        return int(status["StatusCode"])


def kill_container(container: Any) -> None:
    """Kill the container and wait (briefly) for the engine to report it dead."""
    import docker.errors
    import requests.exceptions

    # 409: it ended on its own between the deadline and the kill.
    with contextlib.suppress(docker.errors.APIError):
        container.kill()
    with contextlib.suppress(requests.exceptions.Timeout, requests.exceptions.ConnectionError):
        container.wait(timeout=KILL_WAIT_SECONDS)


def remove_container(container: Any, *, log_action: str, message: str, **context: Any) -> None:
    """Remove the container (and its anonymous volumes), never raising: this runs while another
    error (the engine gone, the task cancelled) may be on its way up, which must not be masked.
    A failure is logged as ``message`` under ``log_action``, with ``context``."""
    import docker.errors

    try:
        container.remove(force=True, v=True)
    except docker.errors.NotFound:
        pass
    except Exception as exc:
        get_logger(action=log_action).warning(
            message, container=container.id, error=str(exc), **context
        )

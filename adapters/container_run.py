"""Run one container on the Docker engine to a deadline, and always remove it.

What remediation's sandbox steps (``tasks.remediation.executors.sandbox``) and workflow container
steps (``tasks.workflows.container_step``) share; the rooms may not import each other, so it is
here. One call creates the container (never pulling: a missing image is
:class:`ImageMissingError`), starts it, waits for its exit until a deadline or a cancel event,
kills it when either comes first, reads its output back (all of it, or a bounded head and tail
of each stream), and removes it however the call ends: exit, timeout, cancel, an error, the
caller's thread being interrupted.

The lockdown is the same for every caller: no IPC namespace shared, every capability dropped,
``no-new-privileges``, memory (no swap beyond it), CPU and process limits, and no network
unless the request names one. What differs (the image, the user, the mounts, the writable
places, the labels) is the request's.

:func:`kept_text` turns captured output into what is kept: secrets scrubbed first (so a cut can
never leave part of one), then capped to a head and a tail with the cut marked.

The docker SDK is imported inside functions, as in ``adapters.docker_engine``.
"""

from __future__ import annotations

import codecs
import contextlib
import threading
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from adapters import docker_engine
from kernel.errors import DrydockError
from kernel.redaction import scrub_text

# How often a wait with a cancel event looks at the event: a cancel kills within about this.
CANCEL_POLL_SECONDS = 0.25


class ContainerRunError(DrydockError):
    """The engine answered, but the container could not run: the same request fails again."""


class ImageMissingError(ContainerRunError):
    def __init__(self, image: str, engine: str) -> None:
        super().__init__(
            f"image {image!r} is not on the Docker engine at {engine}: load or build it there "
            "first (images are never pulled)"
        )
        self.image = image
        self.engine = engine


class ContainerRefusedError(ContainerRunError):
    """The engine refused to create the container (a bad mount, user, limit...)."""

    def __init__(self, explanation: str) -> None:
        super().__init__(f"the Docker engine refused the container: {explanation}")
        self.explanation = explanation


class ContainerStartError(ContainerRunError):
    """Created, but it did not start (e.g. the program is not in the image)."""

    def __init__(self, explanation: str) -> None:
        super().__init__(f"the container did not start: {explanation}")
        self.explanation = explanation


@dataclass(frozen=True)
class ContainerLimits:
    memory_mb: int
    cpus: float
    pids: int


@dataclass(frozen=True)
class BindMount:
    """A host directory in the container. The engine resolves ``source`` on its own host, so
    the engine must run where the directory is."""

    source: Path
    target: str
    read_only: bool = False


@dataclass(frozen=True)
class ContainerRequest:
    image: str
    command: Sequence[str]
    limits: ContainerLimits
    # time.monotonic() after which the container is killed.
    deadline: float
    # None: the image's own user.
    user: str | None = None
    environment: Mapping[str, str] = field(default_factory=dict)
    labels: Mapping[str, str] = field(default_factory=dict)
    working_dir: str | None = None
    # "none" unless the caller's policy grants a network (an engine network's name, or "host").
    network_mode: str = "none"
    read_only_root: bool = True
    # Path -> tmpfs options ("size=64m,mode=1777").
    tmpfs: Mapping[str, str] = field(default_factory=dict)
    binds: Sequence[BindMount] = ()
    # Set by another thread: the container is killed within about CANCEL_POLL_SECONDS.
    cancel: threading.Event | None = None
    # Per stream, the head and the tail of this many bytes each are read back (the rest is
    # only counted), so a step that writes gigabytes cannot fill the worker's memory. None:
    # all of it.
    capture_bytes: int | None = None
    # Logged when the container cannot be removed (never raised: see remove_container).
    removal_log_action: str = "container_run.remove_failed"
    removal_message: str = "a container could not be removed"


@dataclass(frozen=True)
class CapturedOutput:
    """One stream as read back: ``head`` then ``tail``, of ``size`` bytes produced in all. When
    ``complete``, head + tail is all of it."""

    head: bytes
    tail: bytes
    size: int

    @property
    def complete(self) -> bool:
        return len(self.head) + len(self.tail) == self.size

    def text(self) -> str:
        """All of the stream as text; only for a complete capture."""
        if not self.complete:
            raise ValueError("the stream was captured in part: use kept_text")
        return docker_engine.decode(self.head + self.tail)


@dataclass(frozen=True)
class ContainerResult:
    # None: killed at the deadline or on cancel before it exited.
    exit_code: int | None
    stdout: CapturedOutput
    stderr: CapturedOutput
    timed_out: bool
    cancelled: bool
    oom_killed: bool
    started_at: datetime
    finished_at: datetime
    # The id (sha256:…) of the image the container ran: what the reference resolved to.
    image_id: str | None = None

    @property
    def duration_seconds(self) -> float:
        return (self.finished_at - self.started_at).total_seconds()


class _HeadTail:
    """The first and the last ``limit`` bytes of a stream, and its size."""

    def __init__(self, limit: int | None) -> None:
        self.limit = limit
        self.head = bytearray()
        self.tail = bytearray()
        self.size = 0

    def add(self, chunk: bytes) -> None:
        self.size += len(chunk)
        if self.limit is None:
            self.head += chunk
            return
        room = self.limit - len(self.head)
        if room > 0:
            self.head += chunk[:room]
            chunk = chunk[room:]
        if chunk:
            self.tail += chunk
            if len(self.tail) > self.limit:
                del self.tail[: len(self.tail) - self.limit]

    def captured(self) -> CapturedOutput:
        return CapturedOutput(bytes(self.head), bytes(self.tail), self.size)


def run_container(client: Any, request: ContainerRequest, *, engine: str) -> ContainerResult:
    """Run ``request`` on ``client`` (a docker.DockerClient) and remove the container.

    ``engine`` names the engine in messages. Raises ImageMissingError, ContainerRefusedError,
    ContainerStartError, or DockerEngineUnavailableError when the engine cannot be reached."""
    with docker_engine.engine_errors(engine):
        return _run(client, request, engine)


def run_container_at(address: str | None, request: ContainerRequest) -> ContainerResult:
    """:func:`run_container` on a client of its own for ``address`` (None: the default)."""
    engine = address or "the default socket"
    client = docker_engine.connect(address)
    try:
        return run_container(client, request, engine=engine)
    finally:
        client.close()


def _run(client: Any, request: ContainerRequest, engine: str) -> ContainerResult:
    import docker.errors

    started_at = datetime.now(UTC)
    limits = request.limits
    try:
        container = client.containers.create(
            request.image,
            command=list(request.command),
            user=request.user,
            environment=dict(request.environment),
            labels=dict(request.labels),
            working_dir=request.working_dir,
            network_mode=request.network_mode,
            ipc_mode="none",
            read_only=request.read_only_root,
            tmpfs=dict(request.tmpfs),
            volumes={
                str(bind.source): {"bind": bind.target, "mode": "ro" if bind.read_only else "rw"}
                for bind in request.binds
            },
            mem_limit=f"{limits.memory_mb}m",
            # Equal to mem_limit: no swap on top of the memory limit.
            memswap_limit=f"{limits.memory_mb}m",
            nano_cpus=round(limits.cpus * 1e9),
            pids_limit=limits.pids,
            cap_drop=["ALL"],
            security_opt=["no-new-privileges"],
            # The output is read back from the logs: json-file, whatever the engine's default
            # driver (syslog, none) is, as those cannot be read back.
            log_config={"type": "json-file", "config": {}},
        )
    except docker.errors.ImageNotFound:
        raise ImageMissingError(request.image, engine) from None
    except docker.errors.APIError as exc:
        raise ContainerRefusedError(docker_engine.explain(exc)) from None
    try:
        try:
            container.start()
        except docker.errors.APIError as exc:
            raise ContainerStartError(docker_engine.explain(exc)) from None
        exit_code, cancelled = _wait(container, request.deadline, request.cancel)
        if exit_code is None:
            docker_engine.kill_container(container)
        stdout = _read_stream(container, request.capture_bytes, stdout=True)
        stderr = _read_stream(container, request.capture_bytes, stdout=False)
        oom_killed = False
        if exit_code is not None and exit_code != 0:
            container.reload()
            oom_killed = bool(container.attrs.get("State", {}).get("OOMKilled"))
        return ContainerResult(
            exit_code=exit_code,
            stdout=stdout,
            stderr=stderr,
            timed_out=exit_code is None and not cancelled,
            cancelled=cancelled,
            oom_killed=oom_killed,
            started_at=started_at,
            finished_at=datetime.now(UTC),
            image_id=str(container.attrs.get("Image") or "") or None,
        )
    finally:
        docker_engine.remove_container(
            container,
            log_action=request.removal_log_action,
            message=request.removal_message,
            engine=engine,
        )


def _wait(
    container: Any, deadline: float, cancel: threading.Event | None
) -> tuple[int | None, bool]:
    """(exit code or None, cancelled). Without a cancel event, one wait to the deadline; with
    one, short waits in turn, so a cancel is seen within CANCEL_POLL_SECONDS."""
    if cancel is None:
        return docker_engine.wait_for_exit(container, deadline), False
    while True:
        if cancel.is_set():
            return None, True
        if time.monotonic() >= deadline:
            return None, False
        exit_code = docker_engine.wait_for_exit(
            container, min(deadline, time.monotonic() + CANCEL_POLL_SECONDS)
        )
        if exit_code is not None:
            return exit_code, False


def _read_stream(container: Any, limit: int | None, *, stdout: bool) -> CapturedOutput:
    kept = _HeadTail(limit)
    if limit is None:
        kept.add(container.logs(stdout=stdout, stderr=not stdout))
    else:
        # Streamed in chunks: only the head and the tail are ever held.
        for chunk in container.logs(stdout=stdout, stderr=not stdout, stream=True, follow=False):
            kept.add(chunk)
    return kept.captured()


def remove_labelled_containers(client: Any, labels: Mapping[str, str], *, engine: str) -> int:
    """Remove (forcibly: running ones are killed) every container carrying all of ``labels``;
    how many were removed."""
    import docker.errors

    with docker_engine.engine_errors(engine):
        found = client.containers.list(
            all=True, filters={"label": [f"{name}={value}" for name, value in labels.items()]}
        )
        removed = 0
        for container in found:
            # NotFound: removed meanwhile (its own run ended), gone all the same.
            with contextlib.suppress(docker.errors.NotFound):
                container.remove(force=True, v=True)
            removed += 1
        return removed


# --- what is kept of the output -----------------------------------------------------------------


@dataclass(frozen=True)
class KeptText:
    text: str
    # Bytes as the container produced them, before scrubbing and the cap.
    size: int
    truncated: bool


def cut_marker(cut: int, size: int) -> str:
    return f"\n[... {cut} bytes cut: the step wrote {size} bytes ...]\n"


def cap_text(text: str, max_bytes: int) -> KeptText:
    """At most ``max_bytes`` of UTF-8: the head and the tail, the middle replaced by a marker
    saying how much was cut (the end of a log is where the error usually is). ``size`` is the
    text's own."""
    raw = text.encode()
    if len(raw) <= max_bytes:
        return KeptText(text, len(raw), False)
    return KeptText(_joined(raw, raw, len(raw), max_bytes), len(raw), True)


def _joined(head: bytes, tail: bytes, size: int, max_bytes: int) -> str:
    marker = cut_marker(size - max_bytes, size).encode()
    keep = max(0, max_bytes - len(marker))
    head_part = head[: keep // 2].decode(errors="ignore")
    tail_keep = keep - keep // 2
    tail_part = tail[len(tail) - tail_keep :].decode(errors="ignore") if tail_keep else ""
    return head_part + marker.decode() + tail_part


def kept_text(output: CapturedOutput, max_bytes: int, secrets: Sequence[str]) -> KeptText:
    """``output`` as kept: ``secrets`` (and embedded credentials) scrubbed, then capped to
    ``max_bytes`` of UTF-8; ``size`` is the bytes produced.

    Capture ``output`` with ``capture_bytes`` of at least ``max_bytes`` for the head and the
    tail to fill the cap. A capture cut in part may have split a secret at either edge of the
    cut: what is left of it there is dropped, so no part of a secret survives."""
    values = [secret for secret in secrets if secret]
    if output.complete:
        capped = cap_text(scrub_text(output.text(), values), max_bytes)
        return KeptText(capped.text, output.size, capped.truncated)
    head = scrub_text(_decode_head(output.head), values)
    tail = scrub_text(_decode_tail(output.tail), values)
    head = head[: len(head) - _partial_secret_at_end(head, values)]
    tail = tail[_partial_secret_at_start(tail, values) :]
    return KeptText(
        _joined(head.encode(), tail.encode(), output.size, max_bytes), output.size, True
    )


def _decode_head(data: bytes) -> str:
    # An incremental decoder not told the end drops a character cut in two at the end.
    return codecs.getincrementaldecoder("utf-8")("replace").decode(data, final=False)


def _decode_tail(data: bytes) -> str:
    # A character cut in two at the start: its continuation bytes (10xxxxxx) are dropped.
    start = 0
    while start < min(len(data), 3) and data[start] & 0xC0 == 0x80:
        start += 1
    return docker_engine.decode(data[start:])


def _partial_secret_at_end(text: str, secrets: Sequence[str]) -> int:
    """How many characters at the end of ``text`` are the start of a secret (the longest)."""
    longest = 0
    for secret in secrets:
        for length in range(min(len(secret) - 1, len(text)), longest, -1):
            if text.endswith(secret[:length]):
                longest = length
                break
    return longest


def _partial_secret_at_start(text: str, secrets: Sequence[str]) -> int:
    """How many characters at the start of ``text`` are the end of a secret (the longest)."""
    longest = 0
    for secret in secrets:
        for length in range(min(len(secret) - 1, len(text)), longest, -1):
            if text.startswith(secret[len(secret) - length :]):
                longest = length
                break
    return longest

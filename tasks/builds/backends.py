"""Builder backends: a Docker engine (through its API) or buildah (daemonless), behind one protocol.

Both build one platform of a Dockerfile at a time and stream the build's lines and steps as they
come. Each backend is also the image store its builds leave their images in
(``adapters.image_store``, where the pushes queue tags and pushes them from). What a backend
reports is checked rather than trusted: ``verify_platform`` reads the built image's os/arch,
because builders do not always honour the platform asked for (the classic Docker builder's layer
cache, like buildah 1.28's, ignores platforms and can hand back the image of another one).

Failures are sorted the way the tasks need them: the engine or buildah missing is transient
(``BackendUnavailableError``, the image store's), a failing Dockerfile step or a wrong platform
is permanent.
"""

from __future__ import annotations

import os
import platform as host
import re
import tempfile
from collections import deque
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Protocol

import docker.errors

from adapters.docker_engine import explain
from adapters.image_store import (
    BuildahImageStore,
    DockerImageStore,
    ImageStore,
    LineCallback,
    clean_line,
    docker_error_message,
    docker_platform,
    image_layers,
    oci_platform,
    run_streaming,
)
from kernel.errors import DrydockError
from kernel.platforms import Platform
from kernel.settings import Settings

# Lines of output a failed step's error shows.
LAST_LINES_KEPT = 20
# buildah's layer cache (1.28) does not tell platforms apart: a FROM scratch image built for
# linux/arm64 is reused, architecture and all, for linux/amd64. This label, set on every image
# buildah builds, makes the last step differ per platform, so each platform gets its own image.
PLATFORM_LABEL = "io.drydock.build.platform"
# Said when a step is not known (the build failed before its first step).
BEFORE_FIRST_STEP = "(before the first step)"


class BuildStepFailedError(DrydockError):
    """A step of the Dockerfile failed. Permanent: the same source fails the same way."""

    def __init__(self, step: str, last_lines: Sequence[str], reason: str = "") -> None:
        self.step = step
        self.last_lines = list(last_lines)[-LAST_LINES_KEPT:]
        shown = "\n".join(f"  | {line}" for line in self.last_lines)
        super().__init__(
            f"build failed at {step}" + (f": {reason}" if reason else "") + f"\n{shown}"
        )


class PlatformMismatchError(DrydockError):
    """The image built is not of the platform asked for (permanent: rebuilding changes
    nothing)."""


@dataclass(frozen=True)
class BuildSpec:
    context: Path
    # Absolute, inside the context or at least inside the checkout.
    dockerfile: Path
    tag: str
    platform: Platform
    build_args: Mapping[str, str] = field(default_factory=dict)
    labels: Mapping[str, str] = field(default_factory=dict)
    no_cache: bool = False
    cache_from: Sequence[str] = ()


@dataclass(frozen=True)
class BuiltImage:
    tag: str
    image_id: str
    # As inspected: the image's real os/arch, whatever was asked for.
    platform: Platform
    # Uncompressed size of the image's layers.
    size_bytes: int
    steps_total: int
    # Steps that reused the layer cache. FROM steps only name a base, so they are never counted:
    # a fully cached rebuild of a Dockerfile with one FROM has steps_cached == steps_total - 1.
    steps_cached: int


StepCallback = Callable[[int, int, str], None]


class BuilderBackend(ImageStore, Protocol):
    """A builder: builds a platform's image into its own image store."""

    name: str

    def unsupported_reason(
        self, platform: Platform, dockerfile_text: str | None = None
    ) -> str | None:
        """None when this backend can build ``platform``, else why not (for the job's error).
        With ``dockerfile_text`` the steps are considered too (buildah needs emulation for RUN
        steps of a foreign architecture); without it only the platform is."""
        ...

    def build(
        self, spec: BuildSpec, on_line: LineCallback, on_step: StepCallback
    ) -> BuiltImage: ...


def backend_for(name: str, settings: Settings) -> BuilderBackend:
    """The backend called ``name`` ("docker" or "buildah"), configured from ``settings``."""
    if name == "docker":
        return DockerBackend(settings.docker_host)
    if name == "buildah":
        return BuildahBackend(
            root=settings.buildah_root,
            runroot=settings.buildah_runroot,
            storage_driver=settings.buildah_storage_driver,
        )
    raise ValueError(f"unknown builder backend {name!r}; known: docker, buildah")


def verify_platform(backend: BuilderBackend, built_tag: str, requested: Platform) -> Platform:
    """The platform ``built_tag`` really is; PlatformMismatchError when it is not
    ``requested``. Variants are compared only when both are known."""
    actual = backend.image_platform(built_tag)
    if not platform_matches(actual, requested):
        raise PlatformMismatchError(
            f"{built_tag} was built as {actual}, not the requested {requested}: the "
            f"{backend.name} backend did not honour the platform"
            + (
                " (the classic Docker builder builds only its native platform; use the "
                "buildah backend)"
                if backend.name == "docker"
                else ""
            )
        )
    return actual


def platform_matches(actual: Platform, requested: Platform) -> bool:
    if (actual.os, actual.arch) != (requested.os, requested.arch):
        return False
    return (
        actual.variant is None or requested.variant is None or (actual.variant == requested.variant)
    )


def host_platform() -> Platform:
    """This machine's platform, in OCI (GOARCH) names."""
    machine = host.machine().lower()
    arch = {
        "x86_64": "amd64",
        "amd64": "amd64",
        "aarch64": "arm64",
        "arm64": "arm64",
        "i386": "386",
        "i686": "386",
        "ppc64le": "ppc64le",
        "s390x": "s390x",
        "riscv64": "riscv64",
    }.get(machine)
    if arch is None and machine.startswith("armv"):
        return Platform("linux", "arm", f"v{machine[4]}")
    return Platform("linux", arch or machine)


@dataclass
class _StepTracker:
    """Steps seen in a build's output: the current one, how many, how many cached."""

    on_step: StepCallback
    current: str = BEFORE_FIRST_STEP
    total: int = 0
    cached: int = 0
    # Steps of earlier stages (buildah numbers the steps of each stage from 1).
    offset: int = 0
    stage: str | None = None
    last_lines: deque[str] = field(default_factory=lambda: deque(maxlen=LAST_LINES_KEPT))

    def step(self, index: int, total: int, instruction: str, shown: str, stage: str | None) -> None:
        if stage != self.stage:
            self.offset, self.stage = self.total, stage
        self.current = shown
        self.total = max(self.total, self.offset + total)
        self.on_step(self.offset + index, self.total, instruction)


# --- Docker ---------------------------------------------------------------------------------

_DOCKER_STEP = re.compile(r"^Step (\d+)/(\d+) : (.*)$")


class DockerBackend(DockerImageStore):
    """The Docker Engine API through the docker SDK's low-level ``APIClient``.

    The SDK speaks the classic builder only (BuildKit needs a session the SDK has no part of),
    and the classic builder builds the engine's native platform: other platforms are refused by
    ``unsupported_reason``. The platform is still passed along, and checked afterwards.
    """

    def __init__(self, base_url: str | None = None, *, network_mode: str | None = None) -> None:
        """``base_url`` unset: DOCKER_HOST, else the default socket. ``network_mode`` of RUN
        steps unset: the engine's default, or ``none`` when the engine has no default bridge
        (``dockerd --bridge=none``), where the default would fail every RUN step."""
        super().__init__(base_url)
        self._network_mode = network_mode
        self._native: Platform | None = None

    # The engine

    def native_platform(self) -> Platform:
        if self._native is None:
            with self._engine_errors():
                version = self._client().version()
            self._native = Platform(str(version["Os"]).lower(), str(version["Arch"]).lower())
        return self._native

    def _run_network(self) -> str | None:
        if self._network_mode is None:
            with self._engine_errors():
                bridges = self._client().networks(names=["bridge"])
            has_bridge = any(network.get("Name") == "bridge" for network in bridges)
            self._network_mode = "default" if has_bridge else "none"
        return None if self._network_mode == "default" else self._network_mode

    # The protocol

    def unsupported_reason(
        self, platform: Platform, dockerfile_text: str | None = None
    ) -> str | None:
        native = self.native_platform()
        if (platform.os, platform.arch) == (native.os, native.arch):
            return None
        return (
            f"the Docker engine's classic builder builds only its native platform {native} "
            f"(no BuildKit through the Engine API), not {platform}; use the buildah backend "
            "for other platforms"
        )

    def build(self, spec: BuildSpec, on_line: LineCallback, on_step: StepCallback) -> BuiltImage:
        client = self._client()
        steps = _StepTracker(on_step)
        image_id: str | None = None
        with self._engine_errors():
            network = self._run_network()
            try:
                stream = client.build(
                    path=str(spec.context),
                    dockerfile=str(spec.dockerfile),
                    tag=spec.tag,
                    buildargs=dict(spec.build_args) or None,
                    labels=dict(spec.labels) or None,
                    nocache=spec.no_cache,
                    cache_from=list(spec.cache_from) or None,
                    platform=str(spec.platform),
                    network_mode=network,
                    rm=True,
                    # Intermediate containers of a failed step go too.
                    forcerm=True,
                    decode=True,
                )
            except docker.errors.APIError as exc:
                raise BuildStepFailedError(BEFORE_FIRST_STEP, [], explain(exc)) from None
            pending = ""
            try:
                for chunk in stream:
                    if "error" in chunk or "errorDetail" in chunk:
                        if pending:
                            self._line(pending, steps, on_line)
                        message = docker_error_message(chunk)
                        steps.last_lines.append(message)
                        raise BuildStepFailedError(steps.current, steps.last_lines, message)
                    aux = chunk.get("aux")
                    if isinstance(aux, dict) and "ID" in aux:
                        image_id = str(aux["ID"])
                    text = chunk.get("stream")
                    if text is None and "status" in chunk:
                        text = f"{chunk.get('id', '')} {chunk['status']}".strip() + "\n"
                    if text:
                        pending += text
                        *complete, pending = pending.split("\n")
                        for line in complete:
                            self._line(line, steps, on_line)
                if pending:
                    self._line(pending, steps, on_line)
            finally:
                # A build abandoned half-way (a time limit) closes the connection, which makes
                # the engine cancel it.
                close = getattr(stream, "close", None)
                if close is not None:
                    close()
            if image_id is None:
                raise BuildStepFailedError(
                    steps.current, steps.last_lines, "the engine reported no image"
                )
            details = self._inspect(spec.tag)
        return BuiltImage(
            tag=spec.tag,
            image_id=image_id,
            platform=docker_platform(details),
            size_bytes=int(details.get("Size") or 0),
            steps_total=steps.total,
            steps_cached=steps.cached,
        )

    @staticmethod
    def _line(raw: str, steps: _StepTracker, on_line: LineCallback) -> None:
        line = clean_line(raw)
        if not line:
            return
        steps.last_lines.append(line)
        on_line(line)
        match = _DOCKER_STEP.match(line)
        if match is not None:
            steps.step(int(match[1]), int(match[2]), match[3], line, None)
        elif line.strip() == "---> Using cache":
            steps.cached += 1


# --- buildah --------------------------------------------------------------------------------

_BUILDAH_STEP = re.compile(r"^(?:\[(\d+)/(\d+)\] )?STEP (\d+)/(\d+): (.*)$")
# buildah's own variables, and the ones any program needs: never replaced by a build argument.
_ENV_RESERVED = re.compile(
    r"^(PATH|HOME|TMPDIR|USER|LANG|LC_.*|BUILDAH_.*|CONTAINERS_.*|"
    r"REGISTRY_AUTH_FILE|STORAGE_.*|XDG_.*|DOCKER_.*)$"
)
_ENV_NAME = re.compile(r"^[A-Za-z_][A-Za-z0-9_]*$")

# binfmt_misc names of qemu's user-mode emulators, by OCI architecture.
QEMU_ARCH = {
    "amd64": "x86_64",
    "arm64": "aarch64",
    "arm": "arm",
    "386": "i386",
    "ppc64le": "ppc64le",
    "s390x": "s390x",
    "riscv64": "riscv64",
    "mips64le": "mips64el",
    "loong64": "loongarch64",
}
BINFMT_DIR = Path("/proc/sys/fs/binfmt_misc")


class BuildahBackend(BuildahImageStore):
    """buildah as a subprocess, with its own storage (``--root``, ``--runroot``, the driver).

    buildah builds any platform: FROM and COPY need no emulation. A RUN step executes the
    image's binaries, so for a foreign architecture it needs qemu registered with binfmt_misc;
    ``unsupported_reason`` with the Dockerfile's text refuses exactly that case.
    """

    # The protocol

    def unsupported_reason(
        self, platform: Platform, dockerfile_text: str | None = None
    ) -> str | None:
        if platform.os != "linux":
            return f"buildah builds Linux images only, not {platform}"
        native = host_platform()
        if platform.arch == native.arch or dockerfile_text is None:
            return None
        if not dockerfile_runs_on_target(dockerfile_text):
            return None
        if emulation_available(platform.arch):
            return None
        emulator = f"qemu-{QEMU_ARCH.get(platform.arch, platform.arch)}"
        return (
            f"the Dockerfile has RUN steps, which for {platform} must execute {platform.arch} "
            f"programs on this {native.arch} host, and no emulator is registered "
            f"({BINFMT_DIR}/{emulator} is missing): install qemu-user-static with binfmt "
            f"support, build on a {platform.arch} worker, or keep the {platform} stages to "
            "FROM/COPY steps"
        )

    def build(self, spec: BuildSpec, on_line: LineCallback, on_step: StepCallback) -> BuiltImage:
        steps = _StepTracker(on_step)
        env = dict(os.environ)
        argument_flags: list[str] = []
        for key, value in spec.build_args.items():
            if _ENV_NAME.match(key) and not _ENV_RESERVED.match(key) and key not in os.environ:
                # Passed in buildah's environment (``--build-arg NAME`` reads it from there):
                # a value on the command line would show in ``ps`` to every user.
                env[key] = value
                argument_flags += ["--build-arg", key]
            else:
                argument_flags += ["--build-arg", f"{key}={value}"]
        labels = {**spec.labels, PLATFORM_LABEL: str(spec.platform)}
        for key, value in labels.items():
            argument_flags += ["--label", f"{key}={value}"]
        if spec.no_cache:
            argument_flags.append("--no-cache")
        if spec.cache_from:
            # buildah 1.28 takes one cache source; the first is the one asked for most.
            argument_flags += ["--cache-from", spec.cache_from[0]]
        with tempfile.TemporaryDirectory(prefix="drydock-buildah-") as scratch:
            iidfile = Path(scratch) / "iid"
            command = self._command(
                "build",
                "--isolation",
                "chroot",
                "--platform",
                str(spec.platform),
                "--layers",
                # Intermediate containers go even when a step fails: storage does not fill up
                # with the remains of broken builds.
                "--force-rm",
                "--iidfile",
                str(iidfile),
                "--tag",
                spec.tag,
                "--file",
                str(spec.dockerfile),
                *argument_flags,
                str(spec.context),
            )

            def line(raw: str) -> None:
                text = clean_line(raw)
                if not text:
                    return
                steps.last_lines.append(text)
                on_line(text)
                match = _BUILDAH_STEP.match(text)
                if match is not None:
                    stage = match[1]
                    steps.step(int(match[3]), int(match[4]), match[5], text, stage)
                elif text.startswith("--> Using cache "):
                    steps.cached += 1

            code = run_streaming(command, line, env=env)
            if code != 0:
                errors = [text for text in steps.last_lines if text.startswith("Error: ")]
                reason = errors[-1].removeprefix("Error: ") if errors else f"buildah exit {code}"
                raise BuildStepFailedError(steps.current, steps.last_lines, reason)
            image_id = iidfile.read_text().strip()
        details = self._inspect(spec.tag)
        if not image_id.startswith("sha256:"):
            image_id = f"sha256:{image_id}"
        return BuiltImage(
            tag=spec.tag,
            image_id=image_id,
            platform=oci_platform(details),
            size_bytes=sum(size for _, size in image_layers(details)),
            steps_total=steps.total,
            steps_cached=steps.cached,
        )


# --- Dockerfiles ----------------------------------------------------------------------------

_DIRECTIVE = re.compile(r"^#\s*([A-Za-z]+)\s*=\s*(\S+)\s*$")
_BUILD_PLATFORM = re.compile(r"--platform=\s*\$\{?BUILDPLATFORM\}?", re.IGNORECASE)


def dockerfile_runs_on_target(text: str) -> bool:
    """True when the Dockerfile has a RUN step in a stage built for the target platform (a
    stage ``FROM --platform=$BUILDPLATFORM`` runs on the build host and needs no emulation).
    Conservative: when unsure, a RUN counts."""
    on_build_host = False
    for words in _instructions(text):
        keyword = words[0].upper()
        if keyword == "FROM":
            on_build_host = bool(_BUILD_PLATFORM.search(" ".join(words[1:])))
        elif keyword == "RUN" and not on_build_host:
            return True
    return False


def _instructions(text: str) -> Iterator[list[str]]:
    """The Dockerfile's instructions as words, continuation lines joined, comments dropped."""
    lines = text.splitlines()
    escape = "\\"
    for raw in lines:
        directive = _DIRECTIVE.match(raw.strip())
        if directive is None:
            break
        if directive[1].lower() == "escape":
            escape = directive[2]
    pending: list[str] = []
    for raw in lines:
        stripped = raw.strip()
        # Comment lines go, even inside a continued instruction; so do blank lines inside one.
        if stripped.startswith("#") or (not stripped and pending):
            continue
        if stripped.endswith(escape):
            pending.append(stripped.removesuffix(escape))
            continue
        words = " ".join([*pending, stripped]).split()
        pending = []
        if words:
            yield words
    if pending and (words := " ".join(pending).split()):
        yield words


def emulation_available(arch: str) -> bool:
    """Whether binfmt_misc has an enabled qemu emulator for ``arch`` (an OCI architecture)."""
    name = f"qemu-{QEMU_ARCH.get(arch, arch)}"
    try:
        if (BINFMT_DIR / "status").read_text().strip() != "enabled":
            return False
        entries = [entry for entry in BINFMT_DIR.iterdir() if entry.name.startswith(name)]
        return any(entry.read_text().splitlines()[:1] == ["enabled"] for entry in entries)
    except OSError:
        return False

"""Where built images wait to be pushed: the Docker engine's image store, or buildah's storage.

A build (``tasks.builds.backends``) leaves each platform's image in the store of the backend it
ran on; the pushes queue then tags it and pushes it to a registry from there, through the same
store: ``image_store_for(run.backend, settings)``. Both stores can say which platform an image
really is (as inspected), tag it, push it and remove it.

Failures: the engine unreachable or buildah not installed is transient
(``BackendUnavailableError``); every push failure is a ``RegistryPushError`` classified by
``adapters.registry_errors`` from what the engine or buildah said. A push uses exactly the
credential given (``adapters.credentials``), never a login the engine or buildah has stored.
"""

from __future__ import annotations

import base64
import contextlib
import json
import os
import re
import shutil
import signal
import subprocess
import tempfile
import threading
from collections import deque
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Protocol

import docker
import docker.errors
import requests.exceptions
from docker.utils import parse_repository_tag

from adapters.credentials import RegistryCredential, engine_auth_config
from adapters.docker_engine import explain
from adapters.registry_errors import classify_push_failure
from kernel.errors import DrydockError, TransientError
from kernel.platforms import Platform
from kernel.settings import Settings

# Lines of a failed push's output its error quotes when the tool said no "Error:" line.
PUSH_LINES_KEPT = 20

_ANSI = re.compile(r"\x1b\[[0-9;?]*[A-Za-z]")

LineCallback = Callable[[str], None]


class BackendUnavailableError(TransientError):
    """The backend cannot be reached: the Docker engine is down or its socket missing, or the
    buildah binary is not installed. Another attempt (or worker) may have it."""


class ImageNotFoundError(DrydockError):
    """The backend has no image by that name."""


@dataclass(frozen=True)
class PushResult:
    digest: str
    # Uncompressed bytes of the layers actually uploaded (both backends count the layer stream
    # they read, before compression); layers the registry already had count nothing.
    bytes_sent: int
    layers_pushed: int
    layers_reused: int


class ImageStore(Protocol):
    """A backend's local images: what the pushes queue needs of the backend a build ran on."""

    name: str

    def image_platform(self, image: str) -> Platform: ...

    def tag(self, image: str, target: str) -> None: ...

    def push(
        self,
        image: str,
        target: str,
        credential: RegistryCredential | None,
        *,
        insecure: bool,
        on_line: LineCallback,
    ) -> PushResult: ...

    def remove_image(self, image: str) -> None: ...


def image_store_for(name: str, settings: Settings) -> ImageStore:
    """The image store of the backend called ``name`` ("docker" or "buildah"), configured from
    ``settings`` as the builds that left their images there were."""
    if name == "docker":
        return DockerImageStore(settings.docker_host)
    if name == "buildah":
        return BuildahImageStore(
            root=settings.buildah_root,
            runroot=settings.buildah_runroot,
            storage_driver=settings.buildah_storage_driver,
        )
    raise ValueError(f"unknown builder backend {name!r}; known: docker, buildah")


def clean_line(line: str) -> str:
    """A line of a tool's output without its terminal colours and trailing space."""
    return _ANSI.sub("", line).rstrip()


# --- Docker ---------------------------------------------------------------------------------


class DockerImageStore:
    """The Docker engine's images, through the docker SDK's low-level ``APIClient``."""

    name = "docker"

    def __init__(self, base_url: str | None = None) -> None:
        """``base_url`` unset: DOCKER_HOST, else the default socket."""
        self._base_url = base_url or os.environ.get("DOCKER_HOST")
        self._local = threading.local()
        self._api_version: str | None = None

    # The engine

    def _client(self) -> Any:
        """This thread's API client (requests sessions are not shared between threads)."""
        client = getattr(self._local, "client", None)
        if client is None:
            with self._engine_errors():
                client = docker.APIClient(
                    base_url=self._base_url, version=self._api_version or "auto"
                )
            self._api_version = client.api_version
            self._local.client = client
        return client

    @contextlib.contextmanager
    def _engine_errors(self) -> Iterator[None]:
        """Unreachable engine (or one that went away mid-stream) -> BackendUnavailableError."""
        try:
            yield
        except (
            requests.exceptions.ConnectionError,
            requests.exceptions.ChunkedEncodingError,
            docker.errors.DockerException,
        ) as exc:
            if isinstance(exc, docker.errors.APIError):
                raise
            raise BackendUnavailableError(
                f"the Docker engine at {self._base_url or 'the default socket'} cannot be "
                f"reached: {exc}"
            ) from None

    # The store

    def _inspect(self, image: str) -> dict[str, Any]:
        with self._engine_errors():
            try:
                details: dict[str, Any] = self._client().inspect_image(image)
            except docker.errors.ImageNotFound:
                raise ImageNotFoundError(f"the Docker engine has no image {image}") from None
        return details

    def image_platform(self, image: str) -> Platform:
        return docker_platform(self._inspect(image))

    def tag(self, image: str, target: str) -> None:
        repository, tag = parse_repository_tag(target)
        with self._engine_errors():
            try:
                self._client().tag(image, repository, tag or "latest", force=True)
            except docker.errors.ImageNotFound:
                raise ImageNotFoundError(f"the Docker engine has no image {image}") from None

    def push(
        self,
        image: str,
        target: str,
        credential: RegistryCredential | None,
        *,
        insecure: bool,
        on_line: LineCallback,
    ) -> PushResult:
        """Push ``image`` as ``target`` (tagging it first when the names differ).

        ``insecure`` is the engine's business: it speaks plain HTTP to loopback registries and
        to those in its ``insecure-registries``, and to nothing else whatever is asked here.
        """
        if image != target:
            self.tag(image, target)
        repository, tag = parse_repository_tag(target)
        registry = _registry_host(repository)
        auth = engine_auth_config(credential, registry)
        had_credentials = credential is not None
        progress: dict[str, int] = {}
        pushed: set[str] = set()
        reused: set[str] = set()
        digest: str | None = None
        with self._engine_errors():
            try:
                stream = self._client().push(
                    repository, tag or "latest", stream=True, decode=True, auth_config=auth
                )
                for chunk in stream:
                    if "error" in chunk or "errorDetail" in chunk:
                        raise classify_push_failure(
                            docker_error_message(chunk), had_credentials=had_credentials
                        )
                    layer = str(chunk.get("id") or "")
                    status = str(chunk.get("status") or "")
                    detail = chunk.get("progressDetail") or {}
                    if status == "Pushing" and "current" in detail:
                        progress[layer] = max(progress.get(layer, 0), int(detail["current"]))
                    elif status == "Pushed":
                        pushed.add(layer)
                    elif status == "Layer already exists" or status.startswith("Mounted from"):
                        reused.add(layer)
                    aux = chunk.get("aux")
                    if isinstance(aux, dict) and aux.get("Digest"):
                        digest = str(aux["Digest"])
                    if status:
                        shown = f"{layer}: {status}" if layer else status
                        progress_bar = chunk.get("progress")
                        on_line(f"{shown} {progress_bar}" if progress_bar else shown)
            except docker.errors.APIError as exc:
                raise classify_push_failure(
                    explain(exc), had_credentials=had_credentials, status=_status(exc)
                ) from None
            except requests.exceptions.ReadTimeout as exc:
                raise classify_push_failure(
                    f"timed out waiting for the engine's push to {registry}: {exc}",
                    had_credentials=had_credentials,
                ) from None
        if digest is None:
            raise classify_push_failure(
                f"the engine finished pushing {target} without reporting a digest",
                had_credentials=had_credentials,
            )
        return PushResult(
            digest=digest,
            bytes_sent=sum(progress.get(layer, 0) for layer in pushed),
            layers_pushed=len(pushed),
            layers_reused=len(reused - pushed),
        )

    def remove_image(self, image: str) -> None:
        with contextlib.suppress(Exception):
            self._client().remove_image(image, force=True)


def _status(exc: Exception) -> int | None:
    status = getattr(exc, "status_code", None)
    return status if isinstance(status, int) else None


def docker_error_message(chunk: Mapping[str, Any]) -> str:
    """The message of an error chunk in the engine's build or push stream."""
    detail = chunk.get("errorDetail")
    if isinstance(detail, dict) and detail.get("message"):
        return clean_line(str(detail["message"]))
    return clean_line(str(chunk.get("error") or "unknown error"))


def docker_platform(details: Mapping[str, Any]) -> Platform:
    """An image's platform as the engine's inspect says it."""
    return Platform(
        str(details.get("Os") or "").lower(),
        str(details.get("Architecture") or "").lower(),
        str(details["Variant"]).lower() if details.get("Variant") else None,
    )


def _registry_host(repository: str) -> str:
    """The registry a repository name points at: its first component when that looks like a
    host (a dot, a port, or localhost), else Docker Hub."""
    first, _, rest = repository.partition("/")
    if rest and ("." in first or ":" in first or first == "localhost"):
        return first
    return "docker.io"


# --- buildah --------------------------------------------------------------------------------

_BUILDAH_LOG = re.compile(r'^time="[^"]*" level=(\w+) msg="(.*)"$')
_COPYING_BLOB = re.compile(r"^Copying blob (sha256:[0-9a-f]{64})")
_SKIPPING_BLOB = re.compile(r"^Skipping blob (sha256:[0-9a-f]{64}) \(already present\)")


class BuildahImageStore:
    """buildah's images, with its own storage (``--root``, ``--runroot``, the driver)."""

    name = "buildah"

    def __init__(
        self,
        *,
        root: str | None = None,
        runroot: str | None = None,
        storage_driver: str = "vfs",
        binary: str = "buildah",
    ) -> None:
        self._root = root
        self._runroot = runroot
        self._storage_driver = storage_driver
        self._binary = binary

    def _command(self, *args: str) -> list[str]:
        found = shutil.which(self._binary)
        if found is None:
            raise BackendUnavailableError(f"buildah ({self._binary}) is not installed here")
        storage = ["--storage-driver", self._storage_driver]
        if self._root:
            storage += ["--root", self._root]
        if self._runroot:
            storage += ["--runroot", self._runroot]
        return [found, *storage, *args]

    # The store

    def _inspect(self, image: str) -> dict[str, Any]:
        result = subprocess.run(
            self._command("inspect", "--type", "image", image),
            capture_output=True,
            text=True,
            check=False,
        )
        if result.returncode != 0:
            raise ImageNotFoundError(
                f"buildah has no image {image}: {result.stderr.strip()[-500:]}"
            )
        details: dict[str, Any] = json.loads(result.stdout)
        return details

    def image_platform(self, image: str) -> Platform:
        return oci_platform(self._inspect(image))

    def tag(self, image: str, target: str) -> None:
        result = subprocess.run(
            self._command("tag", image, target), capture_output=True, text=True, check=False
        )
        if result.returncode != 0:
            raise ImageNotFoundError(
                f"buildah could not tag {image} as {target}: {result.stderr.strip()[-500:]}"
            )

    def push(
        self,
        image: str,
        target: str,
        credential: RegistryCredential | None,
        *,
        insecure: bool,
        on_line: LineCallback,
    ) -> PushResult:
        """Push ``image`` to ``docker://<target>``.

        The credential goes in a 0600 auth file for this push only (never on the command line,
        which ``ps`` shows); without one the push is anonymous (no stored logins). Retrying is the
        push task's decision, made on the classified error, so buildah's own retries are kept
        short. Which blobs it uploaded and which the registry had comes from its debug log.
        """
        had_credentials = credential is not None
        registry = _registry_host(target)
        copied: list[str] = []
        skipped: set[str] = set()
        errors: list[str] = []
        tail: deque[str] = deque(maxlen=PUSH_LINES_KEPT)

        def line(raw: str) -> None:
            text = clean_line(raw)
            if not text:
                return
            logged = _BUILDAH_LOG.match(text)
            if logged is not None:
                level, message = logged[1], logged[2].replace('\\"', '"')
                if skip := _SKIPPING_BLOB.match(message):
                    skipped.add(skip[1])
                if level == "debug":
                    return
                text = f"{level}: {message}"
            tail.append(text)
            on_line(text)
            if copy := _COPYING_BLOB.match(text):
                copied.append(copy[1])
            elif text.startswith("Error: "):
                errors.append(text.removeprefix("Error: "))

        with tempfile.TemporaryDirectory(prefix="drydock-push-") as scratch:
            authfile = Path(scratch) / "auth.json"
            auths: dict[str, Any] = {}
            if credential is not None:
                token = f"{credential.username}:{credential.password}".encode()
                auths[registry] = {"auth": base64.b64encode(token).decode()}
            descriptor = os.open(authfile, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
            with os.fdopen(descriptor, "w") as handle:
                json.dump({"auths": auths}, handle)
            digestfile = Path(scratch) / "digest"
            command = self._command(
                "--log-level",
                "debug",
                "push",
                "--retry",
                "0",
                # buildah 1.28 ignores --retry (it always retries network failures 3 times);
                # a short delay keeps a dead registry's failure quick. Retrying with backoff
                # is the push task's job.
                "--retry-delay",
                "200ms",
                "--authfile",
                str(authfile),
                "--digestfile",
                str(digestfile),
                f"--tls-verify={'false' if insecure else 'true'}",
                image,
                f"docker://{target}",
            )
            code = run_streaming(command, line)
            if code != 0:
                message = errors[-1] if errors else "\n".join(tail) or f"buildah exit {code}"
                raise classify_push_failure(message, had_credentials=had_credentials)
            digest = digestfile.read_text().strip() if digestfile.exists() else ""
        if not digest:
            raise classify_push_failure(
                f"buildah finished pushing {target} without writing a digest",
                had_credentials=had_credentials,
            )
        sizes = dict(image_layers(self._inspect(image)))
        uploaded = [blob for blob in dict.fromkeys(copied) if blob not in skipped]
        return PushResult(
            digest=digest,
            bytes_sent=sum(sizes.get(blob, 0) for blob in uploaded),
            layers_pushed=len(uploaded),
            layers_reused=len(set(copied) & skipped),
        )

    def remove_image(self, image: str) -> None:
        with contextlib.suppress(Exception):
            subprocess.run(
                self._command("rmi", "--force", image),
                capture_output=True,
                check=False,
                timeout=60,
            )


def run_streaming(
    command: list[str], on_line: LineCallback, env: Mapping[str, str] | None = None
) -> int:
    """Run ``command`` with stdout and stderr merged, feeding ``on_line`` each line; its exit
    code. Started in its own process group, which is killed if this returns early (an error in
    ``on_line``, a time limit): no buildah is left running behind a failed job."""
    proc = subprocess.Popen(
        command,
        stdin=subprocess.DEVNULL,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        env=dict(env) if env is not None else None,
        start_new_session=True,
    )
    assert proc.stdout is not None
    try:
        with proc.stdout:
            for raw in proc.stdout:
                on_line(raw.decode(errors="replace"))
        return proc.wait()
    finally:
        if proc.poll() is None:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(proc.pid, signal.SIGKILL)
            proc.wait()


def oci_platform(details: Mapping[str, Any]) -> Platform:
    """An image's platform as buildah's inspect (its OCI config) says it."""
    config = details.get("OCIv1") or {}
    return Platform(
        str(config.get("os") or "").lower(),
        str(config.get("architecture") or "").lower(),
        str(config["variant"]).lower() if config.get("variant") else None,
    )


def image_layers(details: Mapping[str, Any]) -> list[tuple[str, int]]:
    """(digest, size) of an image's layers, from buildah's record of its manifest."""
    try:
        manifest = json.loads(details.get("Manifest") or "{}")
    except json.JSONDecodeError:
        return []
    return [
        (str(layer.get("digest")), int(layer.get("size") or 0))
        for layer in manifest.get("layers") or []
    ]

"""A real OCI registry for the tests: Debian's docker-registry with htpasswd auth.

Session fixture ``registry_server``: distribution 2.8 on 127.0.0.1:``_state["registry_port"]``,
storage under ``<base>/registry``, deletes enabled, one htpasswd user (bcrypt). The registry
rereads the htpasswd file when it changes, so ``set_password`` takes effect at the next request.
``stop()``/``start()`` (or ``with server.stopped():``) make an unreachable registry for a test.

``put_image`` uploads a tiny image (config blob, one layer blob, manifest) over plain HTTP, so
registry tests need no Docker engine or buildah.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import secrets
import shutil
import signal
import subprocess
from collections.abc import Iterator
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path

import bcrypt
import httpx
import pytest

from drydock import localservers
from tasks.pushes.credentials import RegistryCredential
from tests.conftest import _missing, _register_stop, _state

REGISTRY_BINARY = "/usr/bin/docker-registry"
USERNAME = "drydock"
# The registry checks the bcrypt hash on every request: a low cost keeps the tests fast.
BCRYPT_ROUNDS = 5

OCI_MANIFEST = "application/vnd.oci.image.manifest.v1+json"
DOCKER_MANIFEST = "application/vnd.docker.distribution.manifest.v2+json"
_CONFIG_MEDIA_TYPES = {
    OCI_MANIFEST: "application/vnd.oci.image.config.v1+json",
    DOCKER_MANIFEST: "application/vnd.docker.container.image.v1+json",
}
_LAYER_MEDIA_TYPES = {
    OCI_MANIFEST: "application/vnd.oci.image.layer.v1.tar",
    DOCKER_MANIFEST: "application/vnd.docker.image.rootfs.diff.tar",
}


@dataclass(frozen=True)
class UploadedImage:
    digest: str
    media_type: str
    size: int
    raw: bytes = field(repr=False)
    config_digest: str


def registry_config(workdir: Path, port: int, htpasswd: Path) -> str:
    return json.dumps(
        {
            "version": 0.1,
            "log": {"level": "info", "formatter": "text"},
            "storage": {
                "filesystem": {"rootdirectory": str(workdir / "data")},
                "delete": {"enabled": True},
                "maintenance": {"uploadpurging": {"enabled": False}},
            },
            "http": {"addr": f"127.0.0.1:{port}", "secret": secrets.token_hex(16)},
            "auth": {"htpasswd": {"realm": "drydock-tests", "path": str(htpasswd)}},
        },
        indent=2,
    )


@dataclass
class RegistryServer:
    workdir: Path
    port: int
    username: str
    password: str = field(repr=False)
    _proc: subprocess.Popen[bytes] | None = field(default=None, repr=False)

    @property
    def host(self) -> str:
        return f"127.0.0.1:{self.port}"

    @property
    def htpasswd_path(self) -> Path:
        return self.workdir / "htpasswd"

    @property
    def config_path(self) -> Path:
        return self.workdir / "config.yml"

    @property
    def log_path(self) -> Path:
        return self.workdir / "registry.log"

    def credential(self) -> RegistryCredential:
        return RegistryCredential(self.username, self.password)

    def set_password(self, new: str) -> None:
        """Set this user's line of the htpasswd file, keeping other users' lines (tests add
        their own), atomically: the registry may read the file at any moment."""
        hashed = bcrypt.hashpw(new.encode(), bcrypt.gensalt(rounds=BCRYPT_ROUNDS)).decode()
        try:
            lines = self.htpasswd_path.read_text().splitlines()
        except FileNotFoundError:
            lines = []
        kept = [line for line in lines if line and line.split(":", 1)[0] != self.username]
        staging = self.htpasswd_path.with_suffix(".new")
        staging.write_text("\n".join([*kept, f"{self.username}:{hashed}"]) + "\n")
        os.replace(staging, self.htpasswd_path)
        self.password = new

    def start(self) -> None:
        if self._proc is not None and self._proc.poll() is None:
            return
        with open(self.log_path, "ab") as log:
            self._proc = subprocess.Popen(
                [REGISTRY_BINARY, "serve", str(self.config_path)],
                stdout=log,
                stderr=subprocess.STDOUT,
                stdin=subprocess.DEVNULL,
                start_new_session=True,
            )

        def answers() -> bool:
            assert self._proc is not None
            if self._proc.poll() is not None:
                raise RuntimeError(f"docker-registry exited with {self._proc.returncode}")
            return httpx.get(f"http://{self.host}/v2/", timeout=1).status_code == 401

        try:
            localservers.wait_for(answers, 15, "docker-registry")
        except localservers.ServerUnavailableError:
            self.stop()
            log_tail = self.log_path.read_text(errors="replace")[-3000:]
            raise RuntimeError(f"docker-registry did not start:\n{log_tail}") from None

    def stop(self) -> None:
        proc, self._proc = self._proc, None
        if proc is None or proc.poll() is not None:
            return
        with contextlib.suppress(ProcessLookupError):
            os.killpg(proc.pid, signal.SIGTERM)
        try:
            proc.wait(10)
        except subprocess.TimeoutExpired:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(proc.pid, signal.SIGKILL)
            proc.wait(5)

    @contextlib.contextmanager
    def stopped(self) -> Iterator[None]:
        """The registry is down inside the block and up again after it, whatever happens."""
        self.stop()
        try:
            yield
        finally:
            self.start()

    def client(self) -> httpx.Client:
        """Plain HTTP with the current password: the tests' own view, not RegistryClient's."""
        return httpx.Client(
            base_url=f"http://{self.host}",
            auth=(self.username, self.password),
            timeout=10,
            trust_env=False,
        )

    def put_blob(self, repository: str, data: bytes) -> str:
        digest = sha256_digest(data)
        with self.client() as http:
            started = http.post(f"/v2/{repository}/blobs/uploads/")
            started.raise_for_status()
            location = started.headers["Location"]
            separator = "&" if "?" in location else "?"
            finished = http.put(
                f"{location}{separator}digest={digest}",
                content=data,
                headers={"Content-Type": "application/octet-stream"},
            )
            finished.raise_for_status()
        return digest

    def put_image(
        self,
        repository: str,
        tag: str,
        *,
        platform: str = "linux/amd64",
        created: datetime | None = None,
        media_type: str = OCI_MANIFEST,
        layer: bytes | None = None,
    ) -> UploadedImage:
        """A tiny image of ``platform`` tagged ``tag``: its config says ``created`` (omitted
        when None) and its one layer is ``layer`` (distinct per platform and tag by default)."""
        os_name, arch, *variant = platform.split("/")
        config: dict[str, object] = {
            "architecture": arch,
            "os": os_name,
            "rootfs": {"type": "layers", "diff_ids": []},
        }
        if variant:
            config["variant"] = variant[0]
        if created is not None:
            config["created"] = created.astimezone(UTC).isoformat().replace("+00:00", "Z")
        config_raw = json.dumps(config).encode()
        layer_raw = layer if layer is not None else f"layer {platform} {tag}".encode()
        config_digest = self.put_blob(repository, config_raw)
        layer_digest = self.put_blob(repository, layer_raw)
        manifest = {
            "schemaVersion": 2,
            "mediaType": media_type,
            "config": {
                "mediaType": _CONFIG_MEDIA_TYPES[media_type],
                "digest": config_digest,
                "size": len(config_raw),
            },
            "layers": [
                {
                    "mediaType": _LAYER_MEDIA_TYPES[media_type],
                    "digest": layer_digest,
                    "size": len(layer_raw),
                }
            ],
        }
        raw = json.dumps(manifest).encode()
        with self.client() as http:
            response = http.put(
                f"/v2/{repository}/manifests/{tag}",
                content=raw,
                headers={"Content-Type": media_type},
            )
            response.raise_for_status()
        return UploadedImage(sha256_digest(raw), media_type, len(raw), raw, config_digest)

    def put_manifest(self, repository: str, tag: str, raw: bytes, media_type: str) -> str:
        with self.client() as http:
            response = http.put(
                f"/v2/{repository}/manifests/{tag}",
                content=raw,
                headers={"Content-Type": media_type},
            )
            response.raise_for_status()
        return sha256_digest(raw)


def sha256_digest(data: bytes) -> str:
    return f"sha256:{hashlib.sha256(data).hexdigest()}"


@pytest.fixture(scope="session")
def registry_server() -> RegistryServer:
    if shutil.which(REGISTRY_BINARY) is None:
        _missing(f"docker-registry ({REGISTRY_BINARY}, Debian package docker-registry)")
    workdir: Path = _state["base"] / "registry"
    workdir.mkdir(parents=True, exist_ok=True)
    server = RegistryServer(workdir, _state["registry_port"], USERNAME, "")
    server.set_password(secrets.token_urlsafe(16))
    server.config_path.write_text(
        registry_config(workdir, server.port, server.htpasswd_path), encoding="utf-8"
    )
    _register_stop(server.stop)
    server.start()
    return server

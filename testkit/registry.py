"""A real OCI registry: Debian's docker-registry (distribution 2.8) as a process of the caller's
own, with htpasswd (Basic) authentication or token (Bearer) authentication through a small token
service (:class:`TokenIssuer`), for clients of registries like Docker Hub or GHCR.

:class:`RegistryServer` serves 127.0.0.1:``port`` with its storage, htpasswd file, config and
log in ``workdir`` (:func:`registry_config` writes the config, :func:`new_registry_server` makes
the directory and the user). The registry rereads the htpasswd file when it changes, so
``set_password`` takes effect at the next request. ``stop()``/``start()`` (or
``with server.stopped():``) make an unreachable registry. ``put_image`` uploads a tiny image
(config blob, one layer blob, manifest) over plain HTTP, so a caller needs no Docker engine or
buildah.
"""

from __future__ import annotations

import base64
import contextlib
import hashlib
import http.server
import json
import re
import secrets
import subprocess
import threading
import time
import urllib.parse
from collections.abc import Generator, Iterator, Mapping
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from pathlib import Path

import bcrypt
import httpx
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.hazmat.primitives.asymmetric.utils import decode_dss_signature
from cryptography.x509.oid import NameOID

from adapters.credentials import RegistryCredential, set_htpasswd_password
from drydock import localservers
from testkit.processes import stop_process_group

REGISTRY_BINARY = "/usr/bin/docker-registry"
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


def registry_config(
    workdir: Path,
    port: int,
    htpasswd: Path | None = None,
    *,
    auth: Mapping[str, object] | None = None,
) -> str:
    """distribution's configuration (YAML, written as JSON, which YAML reads): htpasswd (Basic)
    authentication with the ``htpasswd`` file, or the ``auth`` section given."""
    if auth is None:
        if htpasswd is None:
            raise ValueError("registry_config needs an htpasswd file or an auth section")
        auth = {"htpasswd": {"realm": "drydock-tests", "path": str(htpasswd)}}
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
            "auth": auth,
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
        set_htpasswd_password(self.htpasswd_path, self.username, new, rounds=BCRYPT_ROUNDS)
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
            response = httpx.get(f"http://{self.host}/v2/", timeout=1, trust_env=False)
            return response.status_code == 401

        try:
            localservers.wait_for(answers, 15, "docker-registry")
        except localservers.ServerUnavailableError:
            self.stop()
            log_tail = self.log_path.read_text(errors="replace")[-3000:]
            raise RuntimeError(f"docker-registry did not start:\n{log_tail}") from None

    def stop(self) -> None:
        proc, self._proc = self._proc, None
        stop_process_group(proc)

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
            auth=_BasicOrToken(self.username, self.password),
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


class _BasicOrToken(httpx.Auth):
    """Basic auth, and for a Bearer challenge a token fetched from its realm with it."""

    def __init__(self, username: str, password: str) -> None:
        self._basic = httpx.BasicAuth(username, password)

    def auth_flow(self, request: httpx.Request) -> Generator[httpx.Request, httpx.Response, None]:
        request = next(self._basic.auth_flow(request))
        response = yield request
        challenge = response.headers.get("WWW-Authenticate", "")
        if response.status_code != 401 or not challenge.lower().startswith("bearer "):
            return
        params = dict(re.findall(r'(\w+)="([^"]*)"', challenge))
        realm = params.pop("realm")
        token = httpx.get(realm, params=params, auth=self._basic, trust_env=False)
        token.raise_for_status()
        request.headers["Authorization"] = f"Bearer {token.json()['token']}"
        yield request


def sha256_digest(data: bytes) -> str:
    return f"sha256:{hashlib.sha256(data).hexdigest()}"


def new_registry_server(workdir: Path, port: int, username: str) -> RegistryServer:
    """A registry (not started, no config written yet) in ``workdir``, created if need be, with
    one htpasswd user ``username`` whose password is new and random."""
    workdir.mkdir(parents=True, exist_ok=True)
    server = RegistryServer(workdir, port, username, "")
    server.set_password(secrets.token_urlsafe(16))
    return server


TOKEN_SERVICE = "drydock-tests-registry"
TOKEN_ISSUER = "drydock-tests-token-issuer"


class TokenIssuer:
    """Issues registry tokens (distribution's token auth spec) to users of an htpasswd file,
    for whatever scope is asked; refuses (401) a wrong or missing password."""

    def __init__(self, htpasswd_path: Path, certificate_path: Path) -> None:
        self.htpasswd_path = htpasswd_path
        self.certificate_path = certificate_path
        self._key = ec.generate_private_key(ec.SECP256R1())
        name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, TOKEN_ISSUER)])
        now = datetime.now(UTC)
        certificate = (
            x509.CertificateBuilder()
            .subject_name(name)
            .issuer_name(name)
            .public_key(self._key.public_key())
            .serial_number(x509.random_serial_number())
            .not_valid_before(now - timedelta(minutes=5))
            .not_valid_after(now + timedelta(days=1))
            .sign(self._key, hashes.SHA256())
        )
        certificate_path.write_bytes(certificate.public_bytes(serialization.Encoding.PEM))
        self._chain = [base64.b64encode(certificate.public_bytes(serialization.Encoding.DER))]
        self._server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), self._handler())
        self.url = f"http://127.0.0.1:{self._server.server_address[1]}"
        threading.Thread(target=self._server.serve_forever, daemon=True).start()

    def stop(self) -> None:
        self._server.shutdown()
        self._server.server_close()

    def user_of(self, authorization: str) -> str | None:
        scheme, _, encoded = authorization.partition(" ")
        if scheme.lower() != "basic":
            return None
        try:
            username, _, password = base64.b64decode(encoded).decode().partition(":")
        except ValueError:
            return None
        for line in self.htpasswd_path.read_text().splitlines():
            name, _, hashed = line.partition(":")
            if name == username and bcrypt.checkpw(password.encode(), hashed.encode()):
                return username
        return None

    def token(self, username: str, scope: str) -> str:
        access = []
        if scope.count(":") == 2:
            kind, name, actions = scope.split(":")
            access.append({"type": kind, "name": name, "actions": actions.split(",")})
        now = int(time.time())
        header = {"alg": "ES256", "typ": "JWT", "x5c": [c.decode() for c in self._chain]}
        claims = {
            "iss": TOKEN_ISSUER,
            "sub": username,
            "aud": TOKEN_SERVICE,
            "iat": now,
            "nbf": now - 10,
            "exp": now + 300,
            "jti": secrets.token_hex(8),
            "access": access,
        }
        signing_input = (
            f"{_b64url(json.dumps(header).encode())}.{_b64url(json.dumps(claims).encode())}"
        )
        r, s = decode_dss_signature(
            self._key.sign(signing_input.encode(), ec.ECDSA(hashes.SHA256()))
        )
        return f"{signing_input}.{_b64url(r.to_bytes(32, 'big') + s.to_bytes(32, 'big'))}"

    def _handler(self) -> type[http.server.BaseHTTPRequestHandler]:
        issuer = self

        class Handler(http.server.BaseHTTPRequestHandler):
            def do_GET(self) -> None:
                query = urllib.parse.parse_qs(urllib.parse.urlparse(self.path).query)
                username = issuer.user_of(self.headers.get("Authorization", ""))
                if username is None:
                    self._answer(401, {"details": "incorrect username or password"})
                    return
                scope = query.get("scope", [""])[0]
                self._answer(200, {"token": issuer.token(username, scope), "expires_in": 300})

            def _answer(self, status: int, body: dict[str, object]) -> None:
                data = json.dumps(body).encode()
                self.send_response(status)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(data)))
                self.end_headers()
                self.wfile.write(data)

            def log_message(self, format: str, *args: object) -> None:
                return None

        return Handler


def _b64url(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode()

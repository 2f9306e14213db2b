"""Talking to an OCI registry: read manifests and tags, put an image index, delete by digest.

``RegistryClient`` uses oras-py (``oras.provider.Registry``) for what it supports: its URLs,
tag listing (with pagination), blob reads, and its authentication backends. What oras lacks is
done over oras' own authenticated session, so the same credentials and tokens apply:

- reading a manifest with its exact bytes, media type and digest (``get_manifest`` returns
  the parsed JSON only);
- putting an OCI image index (``upload_manifest`` takes image manifests only);
- deleting a manifest by digest (``delete_tag`` looks a tag up first).

Two behaviours of oras are replaced (see ``_OrasRegistry``): its request wrapper retries every
failure five times with sleeps of up to 81 s and sends no timeout, and its token backend cannot
answer a Basic challenge (htpasswd registries). Here a request is bounded by ``timeout``, a
failure is raised at once as a ``RegistryPushError`` (the push task's retry policy decides what
happens next), and both Basic and Bearer (realm/service/scope token) challenges are answered with
the credential given, and only that one: no Docker config file or credential helper is read.

Passwords never appear in an error message, a repr or a log line: messages name the method, the
registry and the path, the HTTP status and the registry's error codes.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Callable, Iterator, Mapping
from contextlib import contextmanager
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any

import oras.auth
import oras.container
import oras.provider
import requests
from requests.adapters import HTTPAdapter

from adapters.credentials import RegistryCredential
from adapters.image_index import (
    DOCKER_MANIFEST,
    DOCKER_MANIFEST_LIST,
    INDEX_MEDIA_TYPES,
    OCI_INDEX,
    OCI_MANIFEST,
    index_children,
)
from adapters.image_reference import (
    DIGEST_PATTERN,
    problem_with_digest,
    problem_with_registry,
    problem_with_repository,
    problem_with_tag,
)
from adapters.registry_errors import RegistryPushError, classify_push_failure

# What a manifest read accepts: OCI and Docker schema2 images, indexes and manifest lists.
MANIFEST_MEDIA_TYPES = (OCI_MANIFEST, OCI_INDEX, DOCKER_MANIFEST, DOCKER_MANIFEST_LIST)
# Distribution refuses manifests over 4 MiB; a config blob is a few KiB.
MAX_MANIFEST_BYTES = 4 * 1024 * 1024
MAX_CONFIG_BYTES = 8 * 1024 * 1024
# An index of indexes is legal but rare; deeper nesting is not followed.
MAX_INDEX_DEPTH = 2
CREATED_ANNOTATION = "org.opencontainers.image.created"


@dataclass(frozen=True)
class ManifestInfo:
    digest: str
    media_type: str
    size: int
    body: dict[str, Any] = field(repr=False)
    raw: bytes = field(repr=False)

    @property
    def is_index(self) -> bool:
        return self.media_type in INDEX_MEDIA_TYPES


class _RegistryHTTPError(Exception):
    """A registry answer that is not a success, raised inside oras and turned into a
    ``RegistryPushError`` by the client (which knows whether credentials were sent)."""

    def __init__(self, response: requests.Response) -> None:
        super().__init__(_describe_response(response))
        self.status = response.status_code


class RegistryClient:
    """One registry, one credential (or none). Every failure is a ``RegistryPushError``."""

    def __init__(
        self,
        registry: str,
        credential: RegistryCredential | None,
        *,
        insecure: bool,
        timeout: float,
    ) -> None:
        problem = problem_with_registry(registry)
        if problem:
            raise ValueError(problem)
        self.registry = registry
        self.insecure = insecure
        self._username = credential.username if credential else None
        self._had_credentials = credential is not None
        self._oras = _OrasRegistry(registry, credential, insecure=insecure, timeout=timeout)

    def __repr__(self) -> str:
        return (
            f"RegistryClient({self.registry!r}, user={self._username!r}, insecure={self.insecure})"
        )

    def check_credentials(self) -> None:
        """``GET /v2/`` (the API version check) with the client's credential, answering a
        Basic challenge, or a Bearer one with a token from the registry's token service, as
        every other request does. Returns when the registry accepts it; raises
        ``RegistryPushError`` otherwise (``auth_expired`` or ``denied``: refused)."""
        where = f"{self.registry}/v2/"
        with self._failures("GET", where):
            response = self._oras.do_request(f"{self._oras.prefix}://{where}", "GET")
            with response:
                if response.status_code != 200:
                    raise _RegistryHTTPError(response)

    def manifest(self, repository: str, reference: str) -> ManifestInfo:
        """The manifest ``reference`` (a tag or a digest) names: an OCI or Docker schema2 image
        manifest, index or manifest list, with its exact bytes. Read by digest, the bytes are
        checked against it."""
        container = self._container(repository)
        self._check_reference(reference)
        where = container.manifest_url(reference)
        raw, headers = self._get_bounded(
            where,
            lambda: self._oras.do_request(
                f"{self._oras.prefix}://{where}",
                "GET",
                headers={"Accept": ", ".join(MANIFEST_MEDIA_TYPES)},
                stream=True,
            ),
            MAX_MANIFEST_BYTES,
        )
        if raw is None:
            raise self._invalid(f"manifest {reference} is over {MAX_MANIFEST_BYTES} bytes")
        try:
            body = json.loads(raw)
        except ValueError as exc:
            raise self._invalid(f"manifest {reference} is not JSON: {exc}") from None
        if not isinstance(body, dict):
            raise self._invalid(f"manifest {reference} is not a JSON object")
        media_type = _media_type(headers.get("Content-Type"), body)
        if media_type not in MANIFEST_MEDIA_TYPES:
            raise self._invalid(f"manifest {reference} has unsupported media type {media_type!r}")
        algorithm = reference.split(":", 1)[0] if DIGEST_PATTERN.fullmatch(reference) else "sha256"
        digest = _digest(raw, algorithm)
        if DIGEST_PATTERN.fullmatch(reference) and digest != reference:
            raise self._invalid(
                f"the registry returned content with digest {digest}, not {reference}"
            )
        return ManifestInfo(digest, media_type, len(raw), body, raw)

    def put_index(self, repository: str, tag: str, index: Mapping[str, Any]) -> str:
        """Put ``index`` (an OCI image index, e.g. from ``build_image_index``) as ``tag``, read
        it back by digest, check the bytes and media type, and return its digest."""
        container = self._container(repository)
        problem = problem_with_tag(tag)
        if problem:
            raise _bad_name(problem)
        if index.get("mediaType") != OCI_INDEX:
            raise self._invalid(
                f"the index's mediaType is {index.get('mediaType')!r}, not {OCI_INDEX}"
            )
        raw = json.dumps(dict(index), separators=(",", ":"), ensure_ascii=False).encode()
        digest = _digest(raw, "sha256")
        url = f"{self._oras.prefix}://{container.manifest_url(tag)}"
        with self._failures("PUT", container.manifest_url(tag)):
            response = self._oras.do_request(
                url, "PUT", data=raw, headers={"Content-Type": OCI_INDEX}
            )
            if response.status_code not in (200, 201):
                raise _RegistryHTTPError(response)
        stored_digest = response.headers.get("Docker-Content-Digest")
        if stored_digest and stored_digest != digest:
            raise self._invalid(f"the registry stored the index as {stored_digest}, not {digest}")
        stored = self.manifest(repository, digest)
        if stored.raw != raw or stored.media_type != OCI_INDEX:
            raise self._invalid(
                f"index {digest} read back as {stored.media_type} with different bytes"
            )
        return digest

    def list_tags(self, repository: str) -> list[str]:
        """Every tag of ``repository`` (following pages); none for a repository the registry
        does not know yet."""
        container = self._container(repository)
        try:
            with self._failures("GET", container.tags_url()):
                return list(self._oras.get_tags(container))
        except RegistryPushError as exc:
            if exc.status == 404 and "NAME_UNKNOWN" in exc.detail:
                return []
            raise

    def image_created(self, repository: str, manifest: ManifestInfo) -> datetime | None:
        """When the image was created, from its config blob's ``created``; for an index, the
        newest of its platform images (or, when none says, the index's own created
        annotation). None when nothing says."""
        return self._created(repository, manifest, depth=0)

    def blob(self, repository: str, digest: str, *, max_bytes: int = MAX_CONFIG_BYTES) -> bytes:
        """The bytes of blob ``digest`` (a config, say), checked against the digest; refused
        past ``max_bytes``, so a layer is never read into memory by mistake."""
        container = self._container(repository)
        problem = problem_with_digest(digest)
        if problem:
            raise _bad_name(problem)
        raw, _ = self._get_bounded(
            container.get_blob_url(digest),
            lambda: self._oras.get_blob(container, digest, stream=True),
            max_bytes,
        )
        if raw is None:
            raise self._invalid(f"blob {digest} is over {max_bytes} bytes")
        if _digest(raw, digest.split(":", 1)[0]) != digest:
            raise self._invalid(f"blob {digest} does not match its digest")
        return raw

    def delete_manifest(self, repository: str, digest: str) -> None:
        """Delete the manifest ``digest`` and with it every tag pointing at it. Deleting what
        is already gone succeeds, so a retried prune can run again."""
        container = self._container(repository)
        problem = problem_with_digest(digest)
        if problem:
            raise _bad_name(problem)
        url = f"{self._oras.prefix}://{container.manifest_url(digest)}"
        try:
            with self._failures("DELETE", container.manifest_url(digest)):
                response = self._oras.do_request(url, "DELETE")
                if response.status_code not in (200, 202):
                    raise _RegistryHTTPError(response)
        except RegistryPushError as exc:
            gone = {"MANIFEST_UNKNOWN", "NAME_UNKNOWN"}
            if exc.status == 404 and any(code in exc.detail for code in gone):
                return
            raise

    def _created(self, repository: str, manifest: ManifestInfo, depth: int) -> datetime | None:
        if manifest.is_index:
            if depth >= MAX_INDEX_DEPTH:
                return None
            try:
                children = index_children(manifest.body)
            except (ValueError, KeyError) as exc:
                raise self._invalid(f"index {manifest.digest}: {exc}") from None
            times: list[datetime] = []
            for _, digest in children:
                try:
                    child = self.manifest(repository, digest)
                except RegistryPushError as exc:
                    # A platform image deleted under its index says nothing about the others.
                    if exc.status == 404:
                        continue
                    raise
                created = self._created(repository, child, depth + 1)
                if created is not None:
                    times.append(created)
            if times:
                return max(times)
            annotations = manifest.body.get("annotations") or {}
            return _parse_time(annotations.get(CREATED_ANNOTATION))
        config = manifest.body.get("config")
        if not isinstance(config, dict) or not isinstance(config.get("digest"), str):
            raise self._invalid(f"manifest {manifest.digest} has no config descriptor")
        raw = self.blob(repository, config["digest"], max_bytes=MAX_CONFIG_BYTES)
        try:
            config_body = json.loads(raw)
        except ValueError:
            return None
        return _parse_time(config_body.get("created")) if isinstance(config_body, dict) else None

    def _get_bounded(
        self, where: str, send: Callable[[], requests.Response], max_bytes: int
    ) -> tuple[bytes | None, Mapping[str, str]]:
        """The body of the streamed GET ``send`` makes (None past ``max_bytes``, not read
        further) and the response's headers."""
        with self._failures("GET", where):
            response = send()
            with response:
                if response.status_code != 200:
                    raise _RegistryHTTPError(response)
                return _read_at_most(response, max_bytes), response.headers

    def _container(self, repository: str) -> oras.container.Container:
        problem = problem_with_repository(repository)
        if problem:
            raise _bad_name(problem)
        # Set the parts rather than let oras parse "host/repository": it takes a first path
        # component with a dot ("team.a/app") for a registry, and "localhost" for a namespace.
        namespace, _, name = repository.rpartition("/")
        container = oras.container.Container(name, registry=self.registry)
        container.namespace = namespace or None
        return container

    def _check_reference(self, reference: str) -> None:
        if DIGEST_PATTERN.fullmatch(reference):
            return
        problem = problem_with_tag(reference)
        if problem:
            raise _bad_name(problem)

    def _invalid(self, message: str) -> RegistryPushError:
        return classify_push_failure(
            f"manifest invalid: {self.registry}: {message}", had_credentials=self._had_credentials
        )

    @contextmanager
    def _failures(self, method: str, where: str) -> Iterator[None]:
        """Turn a failed request into a ``RegistryPushError`` naming ``method`` and ``where``
        (registry and path: no credentials ever appear in either)."""
        try:
            yield
        except _RegistryHTTPError as exc:
            raise classify_push_failure(
                f"{method} {where}: {exc}", had_credentials=self._had_credentials, status=exc.status
            ) from None
        except requests.RequestException as exc:
            raise classify_push_failure(
                f"{method} {where}: {type(exc).__name__}: {exc}",
                had_credentials=self._had_credentials,
            ) from None


class _TimeoutAdapter(HTTPAdapter):
    """Every request of the session is bounded, the token requests oras makes included."""

    def __init__(self, timeout: float) -> None:
        super().__init__(max_retries=0)
        self._timeout = timeout

    def send(
        self,
        request: requests.PreparedRequest,
        stream: bool = False,
        timeout: float | tuple[float, float] | tuple[float, None] | None = None,
        verify: bool | str = True,
        cert: bytes | str | tuple[bytes | str, bytes | str] | None = None,
        proxies: Mapping[str, str] | None = None,
    ) -> requests.Response:
        return super().send(
            request,
            stream=stream,
            timeout=self._timeout if timeout is None else timeout,
            verify=verify,
            cert=cert,
            proxies=proxies,
        )


class _ChallengeAuth(oras.auth.TokenAuth):  # type: ignore[misc]
    """oras' token backend, answering Basic challenges too, with one given credential.

    A Bearer challenge always gets a fresh token for the scope it names (oras would resend a
    token issued for another repository or action); a Basic challenge gets the credential, and
    later requests send it up front.
    """

    def __init__(self, credential: RegistryCredential | None) -> None:
        super().__init__()
        self._basic_scheme = False
        if credential is not None:
            self.set_basic_auth(credential.username, credential.password)

    def __repr__(self) -> str:
        return "<registry credentials>"

    def load_configs(self, container: Any, configs: list[str] | None = None) -> None:
        # Only the credential given: never the Docker config or a credential helper.
        return None

    def get_auth_header(self) -> dict[str, str]:
        basic = getattr(self, "_basic_auth", None)
        if self._basic_scheme and basic:
            return {"Authorization": f"Basic {basic}"}
        return dict(super().get_auth_header())

    def authenticate_request(
        self, original: requests.Response, headers: dict[str, str], refresh: bool = False
    ) -> tuple[dict[str, str], bool]:
        challenge = original.headers.get("WWW-Authenticate", "")
        if challenge.lower().startswith("basic"):
            self._basic_scheme = True
            return {**headers, **self.get_auth_header()}, True
        result, changed = super().authenticate_request(original, dict(headers), refresh=True)
        return dict(result), bool(changed)


class _OrasRegistry(oras.provider.Registry):  # type: ignore[misc]
    def __init__(
        self,
        hostname: str,
        credential: RegistryCredential | None,
        *,
        insecure: bool,
        timeout: float,
    ) -> None:
        super().__init__(hostname=hostname, insecure=insecure)
        adapter = _TimeoutAdapter(timeout)
        self.session.mount("http://", adapter)
        self.session.mount("https://", adapter)
        auth = _ChallengeAuth(credential)
        auth.session = self.session
        auth.prefix = self.prefix
        auth._tls_verify = self._tls_verify
        self.auth = auth

    def do_request(
        self,
        url: str,
        method: str = "GET",
        data: bytes | dict[str, Any] | None = None,
        headers: dict[str, str] | None = None,
        json: dict[str, Any] | None = None,
        stream: bool = False,
    ) -> requests.Response:
        """One request, answered once to an authentication challenge; no retries or sleeps
        (oras' own wrapper sleeps up to 81 s per failure, even for a refused connection)."""
        sent = {**(headers or {}), **self.auth.get_auth_header()}
        response = self._send(method, url, data, sent, json, stream)
        if response.status_code not in (401, 403):
            return response
        answered, changed = self.auth.authenticate_request(response, dict(sent))
        if not changed or answered.get("Authorization") == sent.get("Authorization"):
            return response
        response.close()
        return self._send(method, url, data, answered, json, stream)

    def _send(
        self,
        method: str,
        url: str,
        data: bytes | dict[str, Any] | None,
        headers: dict[str, str],
        json: dict[str, Any] | None,
        stream: bool,
    ) -> requests.Response:
        session: requests.Session = self.session
        return session.request(
            method,
            url,
            data=data,
            json=json,
            headers=headers,
            stream=stream,
            verify=self._tls_verify,
        )

    def _check_200_response(self, response: requests.Response) -> None:
        # oras raises a bare ValueError that loses the status; keep it for the classification.
        if response.status_code not in (200, 201, 202):
            raise _RegistryHTTPError(response)


def _bad_name(problem: str) -> RegistryPushError:
    """A repository, tag or digest the registry would refuse: refused before any request."""
    return classify_push_failure(f"name invalid: {problem}", had_credentials=False)


def _describe_response(response: requests.Response) -> str:
    codes = "; ".join(f"{code}: {message}" for code, message in _errors(response))
    status = f"HTTP {response.status_code} {response.reason or ''}".strip()
    return f"{status}: {codes}" if codes else status


def _errors(response: requests.Response) -> list[tuple[str, str]]:
    """The registry's error codes and messages (distribution spec body), if it sent them."""
    try:
        body = json.loads(response.content[:65536] or b"null")
    except (ValueError, requests.RequestException):
        return []
    errors = body.get("errors") if isinstance(body, dict) else None
    if not isinstance(errors, list):
        return []
    return [
        (str(error.get("code", "UNKNOWN")), str(error.get("message", ""))[:300])
        for error in errors[:5]
        if isinstance(error, dict)
    ]


def _read_at_most(response: requests.Response, limit: int) -> bytes | None:
    """The body of a streamed response, or None past ``limit`` bytes (not read further)."""
    chunks: list[bytes] = []
    size = 0
    for chunk in response.iter_content(chunk_size=65536):
        size += len(chunk)
        if size > limit:
            return None
        chunks.append(chunk)
    return b"".join(chunks)


def _digest(raw: bytes, algorithm: str) -> str:
    return f"{algorithm}:{hashlib.new(algorithm, raw).hexdigest()}"


def _media_type(content_type: str | None, body: Mapping[str, Any]) -> str:
    """The registry's Content-Type (without parameters), else the body's own mediaType."""
    header = (content_type or "").split(";", 1)[0].strip()
    if header in MANIFEST_MEDIA_TYPES:
        return header
    declared = body.get("mediaType")
    return declared if isinstance(declared, str) else header


def _parse_time(value: Any) -> datetime | None:
    if not isinstance(value, str) or not value:
        return None
    try:
        moment = datetime.fromisoformat(value)
    except ValueError:
        return None
    return moment if moment.tzinfo else moment.replace(tzinfo=UTC)

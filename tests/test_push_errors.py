"""Push failures classified from what docker, buildah and registries really say.

The docker and buildah messages below were captured from Docker Engine 20.10 (API 1.41, through
the docker SDK's push stream) and buildah 1.28 pushing to distribution 2.8.2 and to servers
answering the listed HTTP statuses; the Docker Hub ones are quoted from public issue threads.
"""

from __future__ import annotations

import pytest

from adapters.registry_errors import (
    RETRYABLE_KINDS,
    PushErrorKind,
    RegistryPushError,
    classify_push_failure,
)

K = PushErrorKind
BLOB = "sha256:01ba23cc368ec96c5cde38e7db610c7d5714f098efdabcb236471d4eac4761d7"
BUILDAH_PREFIX = 'pushing image "localhost/x:y" to "docker://127.0.0.1:5099/t/bx:1": '
BUILDAH_REUSE = (
    f"{BUILDAH_PREFIX}trying to reuse blob {BLOB} at destination: checking whether a blob "
    f"{BLOB} exists in 127.0.0.1:5099/t/bx: "
)

DOCKER_PUSH = [
    # (message, had_credentials, kind)
    ("no basic auth credentials", False, K.AUTH_REQUIRED),
    ("unauthorized: authentication required", False, K.AUTH_REQUIRED),
    ("unauthorized: authentication required", True, K.AUTH_EXPIRED),
    ("denied", True, K.DENIED),
    ("denied: requested access to the resource is denied", True, K.DENIED),
    ("toomanyrequests", True, K.RATE_LIMITED),
    ("toomanyrequests: Too Many Requests (HAP429).", True, K.RATE_LIMITED),
    (
        "error parsing HTTP 429 response body: invalid character 'T' looking for beginning of "
        'value: "Too Many Requests (HAP429).\\n"',
        True,
        K.RATE_LIMITED,
    ),
    ("received unexpected HTTP status: 500 Internal Server Error", True, K.SERVER_ERROR),
    ("received unexpected HTTP status: 502 Bad Gateway", True, K.SERVER_ERROR),
    ("manifest invalid", True, K.MANIFEST_INVALID),
    ("blob upload invalid", True, K.BLOB_UPLOAD_FAILED),
    (
        'Get "http://127.0.0.1:5098/v2/": dial tcp 127.0.0.1:5098: connect: connection refused',
        True,
        K.NETWORK_OR_TIMEOUT,
    ),
    (
        "write tcp 127.0.0.1:55520->127.0.0.1:5097: write: broken pipe",
        True,
        K.NETWORK_OR_TIMEOUT,
    ),
]

BUILDAH_PUSH = [
    (f"{BUILDAH_REUSE}unauthorized: authentication required", False, K.AUTH_REQUIRED),
    (f"{BUILDAH_REUSE}unauthorized: authentication required", True, K.AUTH_EXPIRED),
    (
        f"{BUILDAH_PREFIX}trying to reuse blob {BLOB} at destination: failed to read from "
        "destination repository t/bx: 403 (Forbidden)",
        True,
        K.DENIED,
    ),
    (
        f"{BUILDAH_PREFIX}writing blob: initiating layer upload to /v2/t/bx/blobs/uploads/ in "
        "127.0.0.1:5097: denied",
        True,
        K.DENIED,
    ),
    (
        f"{BUILDAH_PREFIX}trying to reuse blob {BLOB} at destination: failed to read from "
        "destination repository t/bx: 429 (Too Many Requests)",
        True,
        K.RATE_LIMITED,
    ),
    (
        f"{BUILDAH_PREFIX}writing blob: initiating layer upload to /v2/t/bx/blobs/uploads/ in "
        "127.0.0.1:5097: toomanyrequests",
        True,
        K.RATE_LIMITED,
    ),
    (
        f"{BUILDAH_PREFIX}trying to reuse blob {BLOB} at destination: failed to read from "
        "destination repository t/bx: 503 (Service Unavailable)",
        True,
        K.SERVER_ERROR,
    ),
    (
        f"{BUILDAH_PREFIX}writing blob: initiating layer upload to /v2/t/bx/blobs/uploads/ in "
        "127.0.0.1:5097: received unexpected HTTP status: 502 Bad Gateway",
        True,
        K.SERVER_ERROR,
    ),
    (
        f"{BUILDAH_PREFIX}Uploading manifest failed, attempted the following formats: "
        "application/vnd.oci.image.manifest.v1+json(writing manifest: uploading manifest 1 to "
        "127.0.0.1:5097/t/dx: manifest invalid)",
        True,
        K.MANIFEST_INVALID,
    ),
    (
        f"{BUILDAH_PREFIX}writing blob: uploading layer to http://127.0.0.1:5097/v2/t/dx/blobs/"
        "uploads/abc?digest=sha256%3A9e29045762ec2856dee47891fcfcd5154c7ed357a1d5a4a76c7207750e38"
        "c624: blob upload invalid",
        True,
        K.BLOB_UPLOAD_FAILED,
    ),
    ("invalid reference format: repository name must be lowercase", True, K.NAME_INVALID),
    (
        f"{BUILDAH_REUSE[: BUILDAH_REUSE.index('checking')]}pinging container registry "
        '127.0.0.1:5098: Get "http://127.0.0.1:5098/v2/": dial tcp 127.0.0.1:5098: connect: '
        "connection refused",
        True,
        K.NETWORK_OR_TIMEOUT,
    ),
    (
        f'{BUILDAH_PREFIX}writing blob: Patch "http://127.0.0.1:5097/v2/t/dx/blobs/uploads/abc": '
        "write tcp 127.0.0.1:42054->127.0.0.1:5097: write: broken pipe",
        True,
        K.NETWORK_OR_TIMEOUT,
    ),
    # An HTTPS client talking to an HTTP registry: configuration, which no retry fixes.
    (
        f'{BUILDAH_PREFIX}pinging container registry 127.0.0.1:5099: Get "https://127.0.0.1:5099'
        '/v2/": http: server gave HTTP response to HTTPS client',
        True,
        K.UNKNOWN,
    ),
]


@pytest.mark.parametrize(("message", "had_credentials", "kind"), DOCKER_PUSH)
def test_docker_push_messages(message: str, had_credentials: bool, kind: PushErrorKind) -> None:
    error = classify_push_failure(message, had_credentials=had_credentials)
    assert error.kind is kind
    assert error.retryable is (kind in RETRYABLE_KINDS)


@pytest.mark.parametrize(("message", "had_credentials", "kind"), BUILDAH_PUSH)
def test_buildah_push_messages(message: str, had_credentials: bool, kind: PushErrorKind) -> None:
    assert classify_push_failure(message, had_credentials=had_credentials).kind is kind


# What RegistryClient reports when requests fails below HTTP (messages of requests 2.3x).
@pytest.mark.parametrize(
    ("message", "kind"),
    [
        (
            "GET 127.0.0.1:5098/v2/t/app/tags/list: ConnectionError: HTTPConnectionPool("
            "host='127.0.0.1', port=5098): Max retries exceeded with url: /v2/t/app/tags/list "
            "(Caused by NewConnectionError(\"HTTPConnection(host='127.0.0.1', port=5098): Failed "
            'to establish a new connection: [Errno 111] Connection refused"))',
            K.NETWORK_OR_TIMEOUT,
        ),
        (
            "GET registry.example.com/v2/: ReadTimeout: HTTPSConnectionPool(host='registry."
            "example.com', port=443): Read timed out. (read timeout=5.0)",
            K.NETWORK_OR_TIMEOUT,
        ),
        (
            "GET registry.example.com/v2/: SSLError: HTTPSConnectionPool(host='registry.example."
            "com', port=443): Max retries exceeded with url: /v2/ (Caused by SSLError("
            "SSLCertVerificationError(1, '[SSL: CERTIFICATE_VERIFY_FAILED] certificate verify "
            "failed: self-signed certificate (_ssl.c:1006)')))",
            K.UNKNOWN,
        ),
    ],
)
def test_python_client_failures(message: str, kind: PushErrorKind) -> None:
    assert classify_push_failure(message, had_credentials=True).kind is kind


# The bodies distribution 2.8.2 sends, as RegistryClient reports them with the status.
@pytest.mark.parametrize(
    ("status", "message", "had_credentials", "kind"),
    [
        (401, "UNAUTHORIZED: authentication required", False, K.AUTH_REQUIRED),
        (401, "UNAUTHORIZED: authentication required", True, K.AUTH_EXPIRED),
        (403, "DENIED: requested access to the resource is denied", True, K.DENIED),
        (403, "", True, K.DENIED),
        (429, "TOOMANYREQUESTS: too many requests", True, K.RATE_LIMITED),
        (500, "UNKNOWN: unknown error", True, K.SERVER_ERROR),
        (502, "<html><body><h1>502</h1></body></html>", True, K.SERVER_ERROR),
        (503, "", True, K.SERVER_ERROR),
        (408, "", True, K.NETWORK_OR_TIMEOUT),
        (400, "MANIFEST_INVALID: manifest invalid", True, K.MANIFEST_INVALID),
        (400, "MANIFEST_BLOB_UNKNOWN: blob unknown to registry", True, K.MANIFEST_INVALID),
        (400, "NAME_INVALID: invalid repository name", True, K.NAME_INVALID),
        (
            400,
            "DIGEST_INVALID: provided digest did not match uploaded content",
            True,
            K.BLOB_UPLOAD_FAILED,
        ),
        (404, "MANIFEST_UNKNOWN: manifest unknown", True, K.UNKNOWN),
        (405, "UNSUPPORTED: The operation is unsupported.", True, K.UNKNOWN),
    ],
)
def test_http_statuses(
    status: int, message: str, had_credentials: bool, kind: PushErrorKind
) -> None:
    error = classify_push_failure(
        f"PUT 127.0.0.1:5000/v2/app/manifests/v1: HTTP {status}: {message}",
        had_credentials=had_credentials,
        status=status,
    )
    assert error.kind is kind
    assert error.status == status


def test_a_401_means_expired_only_when_credentials_were_sent() -> None:
    """Only credentials that were sent can be refreshed: the push task retries AUTH_EXPIRED once
    with fresh ones, while AUTH_REQUIRED (nothing configured) is permanent."""
    expired = classify_push_failure("authentication required", had_credentials=True, status=401)
    required = classify_push_failure("authentication required", had_credentials=False, status=401)
    assert (expired.kind, expired.retryable) == (K.AUTH_EXPIRED, True)
    assert (required.kind, required.retryable) == (K.AUTH_REQUIRED, False)


def test_the_engine_answering_500_for_a_bad_name_is_not_a_server_error() -> None:
    # The docker SDK's APIError for a push of an uppercase repository, status 500 from the engine.
    message = (
        "500 Server Error for http+docker://localhost/v1.41/images/127.0.0.1:5099/T/dx/push?tag=1"
        ': Internal Server Error ("invalid reference format: repository name must be lowercase")'
    )
    error = classify_push_failure(message, had_credentials=True, status=500)
    assert error.kind is K.NAME_INVALID and not error.retryable


def test_numbers_that_are_not_statuses_do_not_classify() -> None:
    # Ports, sizes and digests carry 401/403/500-like numbers without being statuses.
    message = "copying 503 bytes to 127.0.0.1:5000/app: layer sha256:5000401403 went missing"
    assert classify_push_failure(message, had_credentials=True).kind is K.UNKNOWN


def test_only_the_transient_kinds_are_retryable() -> None:
    assert {kind for kind in PushErrorKind if RegistryPushError(kind, "x").retryable} == {
        K.AUTH_EXPIRED,
        K.BLOB_UPLOAD_FAILED,
        K.RATE_LIMITED,
        K.SERVER_ERROR,
        K.NETWORK_OR_TIMEOUT,
    }


def test_the_error_names_its_kind_and_keeps_the_message_bounded() -> None:
    error = classify_push_failure("  manifest invalid " + "x" * 5000, had_credentials=False)
    assert str(error).startswith("manifest_invalid: manifest invalid")
    assert len(error.detail) == 2000
    assert error.status is None

"""Every way a registry push fails, as one error type with a kind and a retryable flag.

Pushes fail in many ways in real life; the task's retry decision, its telemetry and the dead
letter all read the kind, so a failure is classified once, here, from what the registry (or the
daemon talking to it) said.
"""

from __future__ import annotations

import re
from enum import StrEnum

from kernel.errors import TransientError


class PushErrorKind(StrEnum):
    AUTH_REQUIRED = "auth_required"
    AUTH_EXPIRED = "auth_expired"
    DENIED = "denied"
    NAME_INVALID = "name_invalid"
    MANIFEST_INVALID = "manifest_invalid"
    BLOB_UPLOAD_FAILED = "blob_upload_failed"
    RATE_LIMITED = "rate_limited"
    SERVER_ERROR = "server_error"
    NETWORK_OR_TIMEOUT = "network_or_timeout"
    UNKNOWN = "unknown"


# Kinds a later attempt can fix by itself. AUTH_EXPIRED is retried once fresh credentials are in
# hand (the push task asks the credential provider first).
RETRYABLE_KINDS = frozenset(
    {
        PushErrorKind.AUTH_EXPIRED,
        PushErrorKind.BLOB_UPLOAD_FAILED,
        PushErrorKind.RATE_LIMITED,
        PushErrorKind.SERVER_ERROR,
        PushErrorKind.NETWORK_OR_TIMEOUT,
    }
)


class RegistryPushError(TransientError):
    """A failed push or registry call. A subclass of TransientError so the base task considers
    it, but only ``retryable`` kinds are retried (``workers.retry.decide`` reads the flag)."""

    def __init__(self, kind: PushErrorKind, message: str, *, status: int | None = None) -> None:
        super().__init__(f"{kind.value}: {message}")
        self.kind = kind
        self.status = status
        self.detail = message

    @property
    def retryable(self) -> bool:
        return self.kind in RETRYABLE_KINDS


# An HTTP status as clients print it: "StatusCode: 502" (buildah), "received unexpected HTTP
# status: 500 Internal Server Error" (docker), "HTTP 503" (RegistryClient). A bare number is not
# enough: sizes, ports and byte counts in the same messages would match.
_STATUS = r"(?:status(?:\s*code)?|http)\W{0,3}"

# Registry error codes (distribution spec) and the phrases docker, buildah and Python clients
# print, most specific first: the first pattern that matches names the kind.
_PATTERNS: tuple[tuple[re.Pattern[str], PushErrorKind], ...] = tuple(
    (re.compile(pattern, re.IGNORECASE), kind)
    for pattern, kind in (
        (
            rf"toomanyrequests|too many requests|rate limit|rate exceeded|{_STATUS}429\b",
            PushErrorKind.RATE_LIMITED,
        ),
        (
            rf"\bdenied\b|\bforbidden\b|not authorized to perform|{_STATUS}403\b",
            PushErrorKind.DENIED,
        ),
        (
            # "no basic auth credentials": docker push to a registry it has no login for.
            rf"unauthorized|authentication required|no basic auth credentials|"
            rf"incorrect username or password|{_STATUS}401\b",
            PushErrorKind.AUTH_REQUIRED,
        ),
        (
            r"name invalid|name_invalid|invalid repository name|invalid reference format|"
            r"repository name must",
            PushErrorKind.NAME_INVALID,
        ),
        (
            r"manifest invalid|manifest_invalid|manifest blob unknown|manifest_blob_unknown|"
            r"manifest unverified|manifest_unverified",
            PushErrorKind.MANIFEST_INVALID,
        ),
        (
            r"blob upload|blob_upload|digest invalid|digest_invalid|size invalid|size_invalid",
            PushErrorKind.BLOB_UPLOAD_FAILED,
        ),
        (
            # "503 (Service Unavailable)": buildah's status with its reason.
            rf"{_STATUS}5\d\d\b|\b5\d\d \([A-Z]|internal server error|bad gateway|"
            r"service unavailable|gateway timeout",
            PushErrorKind.SERVER_ERROR,
        ),
        (
            r"connection refused|connection reset|connection aborted|broken pipe|\beof\b|"
            r"no such host|no route to host|network is unreachable|name resolution|"
            r"i/o timeout|timed out|timeout|deadline exceeded|dial tcp|tls handshake|"
            rf"server misbehaving|failed to establish a new connection|{_STATUS}408\b",
            PushErrorKind.NETWORK_OR_TIMEOUT,
        ),
    )
)


def classify_push_failure(
    message: str, *, had_credentials: bool, status: int | None = None
) -> RegistryPushError:
    """The error for a push that failed with ``message`` (and HTTP ``status`` when known).

    The registry answers 401 both when no credentials were sent and when the ones sent are no
    longer valid; ``had_credentials`` tells the two apart (only the second can be refreshed).
    Callers never put a credential in ``message``.
    """
    kind = _kind_from_status(status, message)
    if kind is PushErrorKind.AUTH_REQUIRED and had_credentials:
        kind = PushErrorKind.AUTH_EXPIRED
    return RegistryPushError(kind, message.strip()[:2000], status=status)


def _kind_from_status(status: int | None, message: str) -> PushErrorKind:
    if status == 401:
        return PushErrorKind.AUTH_REQUIRED
    if status == 403:
        return PushErrorKind.DENIED
    if status == 429:
        return PushErrorKind.RATE_LIMITED
    if status == 408:
        return PushErrorKind.NETWORK_OR_TIMEOUT
    from_text = _kind_from_text(message)
    if status is not None and status >= 500:
        # A 5xx whose text says more keeps the text's kind: the Docker engine answers 500 for a
        # push refused as "invalid reference format", which no retry fixes.
        return PushErrorKind.SERVER_ERROR if from_text is PushErrorKind.UNKNOWN else from_text
    return from_text


def _kind_from_text(message: str) -> PushErrorKind:
    for pattern, kind in _PATTERNS:
        if pattern.search(message):
            return kind
    return PushErrorKind.UNKNOWN

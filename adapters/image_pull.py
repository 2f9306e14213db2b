"""An image by digest on a Docker engine: the engine's own copy when it has that digest, else
pulled by digest with exactly the credential given (the engine's stored logins are never used).

What evaluation suites (``tasks.evaluation.suite``) and the runtime's Docker executor
(``tasks.runtime.docker_executor``) share; the rooms may not import each other, so it is here.

Errors: a pull the registry could not serve now (unreachable, 5xx, rate limited) raises
:class:`RegistryUnavailableError`, which a later attempt may get past; no such digest, or the
registry refusing the credential (or wanting one), raises :class:`ImageUnavailableError`, which
the same pull meets again. The registry's answers are read as pushes read them
(``adapters.registry_errors``).
"""

from __future__ import annotations

import contextlib
import re
from typing import Any

from adapters import docker_engine
from adapters.credentials import RegistryCredential, engine_auth_config
from adapters.registry_errors import PushErrorKind, classify_push_failure
from kernel.errors import DrydockError, TransientError

DIGEST = re.compile(r"sha256:[0-9a-f]{64}")

# Pull failures a later attempt may not meet; every other kind (not found, refused, denied) is
# permanent.
_RETRYABLE_PULL_KINDS = frozenset({"rate_limited", "server_error", "network_or_timeout"})


class RegistryUnavailableError(TransientError):
    """The registry could not serve the pull now: the next attempt may well get the image."""


class ImageUnavailableError(DrydockError):
    """The image cannot be had: not a reference by digest, no such digest in its repository, or
    the registry refused the pull (no or wrong credentials). The same pull fails the same way."""


def split_digest_reference(image_ref: str) -> tuple[str, str]:
    """``host/repository@sha256:...`` -> (``host/repository``, ``sha256:...``)."""
    repository, at, digest = image_ref.rpartition("@")
    if not at or not repository or not DIGEST.fullmatch(digest) or "/" not in repository:
        raise ImageUnavailableError(
            f"{image_ref!r} is not an image by digest (host/repository@sha256:<64 hex digits>)"
        )
    return repository, digest


def ensure_image(client: Any, image_ref: str, credential: RegistryCredential | None) -> str:
    """The id of the engine's image of ``image_ref`` (``host/repository@sha256:...``), pulled
    first with ``credential`` when the engine has none."""
    import docker.errors

    repository, digest = split_digest_reference(image_ref)
    with contextlib.suppress(docker.errors.ImageNotFound):
        return str(client.images.get(image_ref).id)
    registry = repository.split("/", 1)[0]
    auth = engine_auth_config(credential, registry)
    had_credentials = credential is not None
    try:
        stream = client.api.pull(repository, tag=digest, stream=True, decode=True, auth_config=auth)
        for chunk in stream:
            if "error" in chunk or "errorDetail" in chunk:
                detail = chunk.get("errorDetail") or {}
                message = str(detail.get("message") or chunk.get("error") or "unknown error")
                raise _pull_failure(
                    image_ref, message, status=None, had_credentials=had_credentials
                )
    except docker.errors.APIError as exc:
        status = getattr(exc, "status_code", None)
        raise _pull_failure(
            image_ref,
            docker_engine.explain(exc),
            status=status if isinstance(status, int) else None,
            had_credentials=had_credentials,
        ) from None
    try:
        return str(client.images.get(image_ref).id)
    except docker.errors.ImageNotFound:
        raise ImageUnavailableError(
            f"the engine pulled {image_ref} but has no image by that digest afterwards"
        ) from None


def _pull_failure(
    image_ref: str, message: str, *, status: int | None, had_credentials: bool
) -> DrydockError:
    failure = classify_push_failure(message, had_credentials=had_credentials, status=status)
    if failure.kind.value in _RETRYABLE_PULL_KINDS:
        return RegistryUnavailableError(
            f"the registry could not serve {image_ref} now: {failure.detail}"
        )
    if failure.kind in (PushErrorKind.AUTH_REQUIRED, PushErrorKind.AUTH_EXPIRED):
        said = "refused the credentials given" if had_credentials else "needs credentials"
        return ImageUnavailableError(
            f"cannot pull {image_ref}: the registry {said} ({failure.detail})"
        )
    return ImageUnavailableError(f"cannot pull {image_ref}: {failure.detail}")

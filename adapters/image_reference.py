"""Image references as the registry understands them: the grammar of distribution's reference
package (registry, repository, tag, digest), checked whole, and ``ImageReference`` parsing
``registry/repository[:tag][@digest]``. What the registry client and the payloads check names
against before any request is made.
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from dataclasses import dataclass

# The grammar of distribution's reference package (github.com/distribution/reference), matched
# whole (fullmatch: a trailing newline is not a valid tag).
_HOST_COMPONENT = r"(?:[a-zA-Z0-9]|[a-zA-Z0-9][a-zA-Z0-9-]*[a-zA-Z0-9])"

_REGISTRY = re.compile(
    rf"(?:{_HOST_COMPONENT}(?:\.{_HOST_COMPONENT})*|\[[a-fA-F0-9:]+\])(?::[0-9]{{1,5}})?"
)

_PATH_COMPONENT = r"[a-z0-9]+(?:(?:\.|_|__|-+)[a-z0-9]+)*"

_REPOSITORY = re.compile(rf"{_PATH_COMPONENT}(?:/{_PATH_COMPONENT})*")

_TAG = re.compile(r"[A-Za-z0-9_][A-Za-z0-9_.-]{0,127}")

DIGEST_PATTERN = re.compile(r"sha256:[a-f0-9]{64}|sha512:[a-f0-9]{128}")

MAX_NAME_LENGTH = 255


def problem_with_registry(registry: str) -> str | None:
    if not _REGISTRY.fullmatch(registry):
        return (
            f"registry {registry!r} is not a host name, IP address or [IPv6] with an optional port"
        )
    return None


def problem_with_repository(repository: str) -> str | None:
    if not _REPOSITORY.fullmatch(repository):
        return (
            f"repository {repository!r} must be lowercase letters, digits and separators "
            "('.', '_', '__', '-') in '/'-separated components, each starting and ending with "
            "a letter or digit"
        )
    return None


def problem_with_tag(tag: str) -> str | None:
    if not _TAG.fullmatch(tag):
        return (
            f"tag {tag!r} must be 1 to 128 letters, digits, '_', '.' or '-', not starting with "
            "'.' or '-'"
        )
    return None


def problem_with_digest(digest: str) -> str | None:
    if not DIGEST_PATTERN.fullmatch(digest):
        return f"digest {digest!r} must be sha256:<64 hex digits> or sha512:<128 hex digits>"
    return None


@dataclass(frozen=True)
class ImageReference:
    """``registry/repository[:tag][@digest]``, checked against distribution's grammar."""

    registry: str
    repository: str
    tag: str | None = None
    digest: str | None = None

    def __post_init__(self) -> None:
        problems = [
            problem_with_registry(self.registry),
            problem_with_repository(self.repository),
            problem_with_tag(self.tag) if self.tag is not None else None,
            problem_with_digest(self.digest) if self.digest is not None else None,
        ]
        if len(self.name) > MAX_NAME_LENGTH:
            problems.append(f"name {self.name!r} is longer than {MAX_NAME_LENGTH} characters")
        found = [problem for problem in problems if problem]
        if found:
            raise ValueError(f"invalid image reference: {'; '.join(found)}")

    @classmethod
    def parse(cls, text: str) -> ImageReference:
        """Parse ``host[:port]/repository[:tag][@digest]``. The host is required: a reference
        without one would mean Docker Hub to Docker, and Drydock never guesses a registry."""
        rest, _, digest = text.partition("@")
        host, slash, path = rest.partition("/")
        looks_like_host = "." in host or ":" in host or host == "localhost" or host[:1] == "["
        if not slash or not looks_like_host:
            raise ValueError(
                f"invalid image reference {text!r}: it must start with the registry host, "
                "e.g. registry.example.com/team/app:1.0 or 127.0.0.1:5000/team/app"
            )
        repository, colon, tag = path.rpartition(":")
        if not colon or "/" in tag:
            repository, tag = path, ""
        return cls(host, repository, tag or None, digest or None)

    @property
    def name(self) -> str:
        return f"{self.registry}/{self.repository}"

    @property
    def reference(self) -> str | None:
        """What to ask the registry for: the digest when there is one, else the tag."""
        return self.digest or self.tag

    def with_tag(self, tag: str) -> ImageReference:
        return ImageReference(self.registry, self.repository, tag, None)

    def with_digest(self, digest: str) -> ImageReference:
        return ImageReference(self.registry, self.repository, self.tag, digest)

    def __str__(self) -> str:
        text = self.name
        if self.tag:
            text += f":{self.tag}"
        if self.digest:
            text += f"@{self.digest}"
        return text


def registry_is_insecure(registry: str, insecure_registries: Sequence[str]) -> bool:
    """Whether ``registry`` (``host[:port]``) is spoken to over plain HTTP: its host, or the
    host with that port, is listed (``settings.insecure_registries``)."""
    host = registry.rsplit(":", 1)[0] if not registry.endswith("]") else registry
    return registry in insecure_registries or host in insecure_registries

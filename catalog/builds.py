from __future__ import annotations

import re
from pathlib import PurePosixPath
from typing import Annotated, Literal
from urllib.parse import urlsplit

from pydantic import AfterValidator, Field, field_validator, model_validator

from adapters.git_inputs import SourceRefusedError, check_repository_url, check_revision
from kernel.payload import Payload
from kernel.platforms import Platform
from kernel.settings import get_settings

# Docker reference grammar: lower-case path components separated by "/", each of
# [a-z0-9] runs joined by ".", "_", "__" or "-".
_NAME_COMPONENT = r"[a-z0-9]+(?:(?:\.|_|__|-+)[a-z0-9]+)*"
IMAGE_NAME = re.compile(rf"^{_NAME_COMPONENT}(?:/{_NAME_COMPONENT})*$")
TAG = re.compile(r"^[A-Za-z0-9_][A-Za-z0-9_.-]{0,127}$")
REGISTRY_HOST = re.compile(
    r"^(?:[a-z0-9](?:[a-z0-9-]*[a-z0-9])?(?:\.[a-z0-9-]+)*|\[[0-9a-f:]+\])(?::\d{1,5})?$"
)
BUILD_ARG_NAME = re.compile(r"^[A-Za-z_][A-Za-z0-9_]*$")
LABEL_KEY = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._/-]{0,254}$")
MAX_PLATFORMS = 8


def relative_path(value: str, what: str) -> str:
    """A path inside the checkout: relative, without ``..``. (Symlinks that lead outside are
    refused again after the fetch, when they can be seen.)"""
    path = PurePosixPath(value)
    if not value or "\x00" in value or path.is_absolute() or ".." in path.parts:
        raise ValueError(f"{what} must be a relative path inside the repository, without '..'")
    return str(path)


def checked_registry_host(value: str) -> str:
    """A registry's ``host[:port]``, lower-cased; ValueError for anything else."""
    value = value.strip().lower()
    if not REGISTRY_HOST.match(value):
        raise ValueError("must be a registry host[:port] without a scheme or path")
    return value


def checked_repository(value: str) -> str:
    """A repository path in a registry (``team/server``); ValueError for anything else."""
    if not IMAGE_NAME.match(value) or len(value) > 255:
        raise ValueError("must be a lower-case repository path like 'team/server'")
    return value


# Payload field types carrying those checks, for every payload naming a registry or repository.
RegistryHost = Annotated[str, AfterValidator(checked_registry_host)]
RepositoryPath = Annotated[str, AfterValidator(checked_repository)]


def _carries_credentials(url: str) -> bool:
    """True for ``https://user:pw@host/..`` and ``https://token@host/..``; an ssh user name
    (``ssh://git@host/..``, ``git@host:..``) is not a secret."""
    try:
        parts = urlsplit(url)
    except ValueError:
        return False
    if parts.password is not None:
        return True
    return parts.scheme in ("http", "https") and parts.username is not None


def tag_for_revision(revision: str) -> str:
    """A tag-safe form of a revision: ``feature/x`` -> ``feature-x``."""
    cleaned = re.sub(r"[^A-Za-z0-9_.-]+", "-", revision).strip(".-") or "revision"
    return cleaned[:100]


class CachePolicy(Payload):
    use_cache: bool = Field(
        True,
        description="Reuse cached layers from earlier builds; false builds every step anew.",
    )
    cache_from: list[str] = Field(
        default_factory=list,
        max_length=10,
        description=(
            "Images whose layers may be reused (docker: local images; buildah: a registry "
            "repository holding cached layers)."
        ),
    )


class PushTarget(Payload):
    registry: RegistryHost = Field(
        description="Registry host[:port], e.g. registry.example.com or 127.0.0.1:5000."
    )
    repository: RepositoryPath = Field(description="Repository in that registry, e.g. mcp/weather.")
    tag: str | None = Field(
        None,
        description="The multi-platform tag; default: the revision, made tag-safe.",
    )

    @field_validator("tag")
    @classmethod
    def _tag(cls, value: str | None) -> str | None:
        if value is not None and not TAG.match(value):
            raise ValueError("must be a tag: letters, digits, '_', '.', '-', at most 128")
        return value


class BuildImagePayload(Payload):
    repository_url: str = Field(
        max_length=2000,
        description=(
            "Git URL to build from; its scheme must be allowed (DRYDOCK_GIT_ALLOWED_SCHEMES)."
        ),
    )
    revision: str = Field(
        max_length=255, description="Branch, tag or commit (full or abbreviated SHA) to build."
    )
    context_dir: str = Field(".", description="Build context, relative to the repository root.")
    dockerfile: str = Field("Dockerfile", description="Dockerfile, relative to the context.")
    image: str = Field(
        max_length=200,
        description=("Local image name; each platform is tagged <image>:<revision>-<os>-<arch>."),
    )
    platforms: list[str] = Field(
        default_factory=lambda: ["linux/amd64"],
        min_length=1,
        max_length=MAX_PLATFORMS,
        description="Target platforms, os/arch[/variant]; one image is built for each.",
    )
    build_args: dict[str, str] = Field(
        default_factory=dict,
        description="Build arguments (values of secret-looking names are redacted everywhere).",
    )
    labels: dict[str, str] = Field(default_factory=dict, description="Image labels to add.")
    cache: CachePolicy = Field(default_factory=lambda: CachePolicy())
    backend: Literal["docker", "buildah"] | None = Field(
        None, description="Builder backend; default DRYDOCK_BUILD_BACKEND."
    )
    push: PushTarget | None = Field(
        None,
        description=("Push every platform's image there and publish one multi-platform index tag."),
    )

    @field_validator("repository_url")
    @classmethod
    def _url(cls, value: str) -> str:
        try:
            checked = check_repository_url(value, get_settings().git_allowed_schemes)
        except SourceRefusedError as exc:
            raise ValueError(str(exc)) from None
        if _carries_credentials(checked):
            # It would be stored with the job, shown in Flower and parked in the DLQ.
            raise ValueError(
                "must not carry credentials (user:token@): they would be stored with the job; "
                "use an ssh URL (the worker's ssh key) for private repositories"
            )
        return checked

    @field_validator("revision")
    @classmethod
    def _revision(cls, value: str) -> str:
        try:
            return check_revision(value)
        except SourceRefusedError as exc:
            raise ValueError(str(exc)) from None

    @field_validator("context_dir")
    @classmethod
    def _context(cls, value: str) -> str:
        return relative_path(value, "context_dir")

    @field_validator("dockerfile")
    @classmethod
    def _dockerfile(cls, value: str) -> str:
        return relative_path(value, "dockerfile")

    @field_validator("image")
    @classmethod
    def _image(cls, value: str) -> str:
        if not IMAGE_NAME.match(value):
            raise ValueError("must be a lower-case image name without a tag, like 'mcp/weather'")
        return value

    @field_validator("platforms")
    @classmethod
    def _platforms(cls, value: list[str]) -> list[str]:
        parsed = [str(Platform.parse(text)) for text in value]
        duplicates = sorted({p for p in parsed if parsed.count(p) > 1})
        if duplicates:
            raise ValueError(f"lists {', '.join(duplicates)} more than once")
        return parsed

    @field_validator("build_args")
    @classmethod
    def _build_args(cls, value: dict[str, str]) -> dict[str, str]:
        bad = sorted(name for name in value if not BUILD_ARG_NAME.match(name))
        if bad:
            raise ValueError(f"names must be identifiers: {', '.join(bad)}")
        return value

    @field_validator("labels")
    @classmethod
    def _labels(cls, value: dict[str, str]) -> dict[str, str]:
        bad = sorted(key for key in value if not LABEL_KEY.match(key))
        if bad:
            raise ValueError(f"keys must be like 'org.example.key': {', '.join(bad)}")
        return value

    @model_validator(mode="after")
    def _tag_fits(self) -> BuildImagePayload:
        longest = max(len(Platform.parse(p).tag_suffix) for p in self.platforms)
        if len(tag_for_revision(self.revision)) + 1 + longest > 128:
            raise ValueError("revision is too long to make per-platform tags of it")
        return self

    @property
    def parsed_platforms(self) -> list[Platform]:
        return [Platform.parse(p) for p in self.platforms]

    def platform_tag(self, platform: Platform) -> str:
        """``<revision>-<os>-<arch>``: the tag of one platform's image."""
        return f"{tag_for_revision(self.revision)}-{platform.tag_suffix}"

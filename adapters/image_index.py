"""The OCI image index of a multi-platform image, built from its per-platform manifests.

Pure: no registry here. ``RegistryClient.put_index`` puts what ``build_image_index`` returns,
and ``index_children`` reads the platforms back out of an index (or a Docker manifest list).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import TYPE_CHECKING, Any

from kernel.platforms import Platform

if TYPE_CHECKING:
    from adapters.registry import ManifestInfo

OCI_INDEX = "application/vnd.oci.image.index.v1+json"
OCI_MANIFEST = "application/vnd.oci.image.manifest.v1+json"
DOCKER_MANIFEST_LIST = "application/vnd.docker.distribution.manifest.list.v2+json"
DOCKER_MANIFEST = "application/vnd.docker.distribution.manifest.v2+json"

INDEX_MEDIA_TYPES = frozenset({OCI_INDEX, DOCKER_MANIFEST_LIST})
IMAGE_MANIFEST_MEDIA_TYPES = frozenset({OCI_MANIFEST, DOCKER_MANIFEST})

# Entries buildx adds next to the images (provenance, SBOM): not images of a platform.
_ATTESTATION_ANNOTATION = "vnd.docker.reference.type"


def build_image_index(
    children: Sequence[tuple[Platform, ManifestInfo]], annotations: Mapping[str, str]
) -> dict[str, Any]:
    """An OCI image index (schemaVersion 2) listing one image manifest per platform.

    The manifests are listed in platform order and the annotations in key order, so the same
    children always make the same bytes, hence the same digest. Refuses no children, a platform
    listed twice, and one manifest claimed by two platforms (what a builder that ignores the
    requested platform produces); children must be image manifests, not indexes.
    """
    if not children:
        raise ValueError("an image index needs at least one platform image")
    seen_platforms: dict[Platform, str] = {}
    seen_digests: dict[str, Platform] = {}
    for platform, manifest in children:
        if platform in seen_platforms:
            raise ValueError(f"platform {platform} is listed twice in the image index")
        if manifest.digest in seen_digests:
            raise ValueError(
                f"platforms {seen_digests[manifest.digest]} and {platform} are the same image "
                f"{manifest.digest}: one of them was not built for its platform"
            )
        if manifest.media_type not in IMAGE_MANIFEST_MEDIA_TYPES:
            raise ValueError(
                f"the image for {platform} is a {manifest.media_type}, not an image manifest "
                f"({' or '.join(sorted(IMAGE_MANIFEST_MEDIA_TYPES))})"
            )
        seen_platforms[platform] = manifest.digest
        seen_digests[manifest.digest] = platform

    index: dict[str, Any] = {
        "schemaVersion": 2,
        "mediaType": OCI_INDEX,
        "manifests": [
            {
                "mediaType": manifest.media_type,
                "digest": manifest.digest,
                "size": manifest.size,
                "platform": _platform_object(platform),
            }
            for platform, manifest in sorted(children, key=lambda child: child[0])
        ],
    }
    if annotations:
        index["annotations"] = {key: annotations[key] for key in sorted(annotations)}
    return index


def index_children(body: Mapping[str, Any]) -> list[tuple[Platform, str]]:
    """The (platform, digest) of each image an OCI index or Docker manifest list lists.

    Entries with no platform, and attestations (platform ``unknown/unknown``, as buildx writes
    them), are not images of a platform and are left out.
    """
    media_type = body.get("mediaType")
    manifests = body.get("manifests")
    if media_type not in INDEX_MEDIA_TYPES and not (media_type is None and manifests):
        raise ValueError(f"not an image index or manifest list (mediaType {media_type!r})")
    if not isinstance(manifests, list):
        raise ValueError("the image index has no 'manifests' list")
    children: list[tuple[Platform, str]] = []
    for entry in manifests:
        platform = entry.get("platform") if isinstance(entry, Mapping) else None
        if not isinstance(platform, Mapping):
            continue
        annotations = entry.get("annotations") or {}
        os_name, arch = platform.get("os"), platform.get("architecture")
        if _ATTESTATION_ANNOTATION in annotations or "unknown" in (os_name, arch):
            continue
        if not isinstance(os_name, str) or not isinstance(arch, str):
            raise ValueError(f"image index entry {entry.get('digest')} has no os/architecture")
        children.append((Platform(os_name, arch, platform.get("variant") or None), entry["digest"]))
    return children


def _platform_object(platform: Platform) -> dict[str, str]:
    result = {"architecture": platform.arch, "os": platform.os}
    if platform.variant:
        result["variant"] = platform.variant
    return result

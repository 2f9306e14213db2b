"""RegistryClient against a real registry (distribution 2.8.2, htpasswd auth), and the image
index it publishes. Images are put in the registry over plain HTTP by the fixture, so no Docker
engine or buildah is needed here."""

from __future__ import annotations

import socket
import time
import uuid
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta

import pytest

from adapters.credentials import RegistryCredential
from adapters.image_index import (
    DOCKER_MANIFEST,
    OCI_INDEX,
    OCI_MANIFEST,
    build_image_index,
    index_children,
)
from adapters.image_reference import ImageReference, registry_is_insecure
from adapters.registry import ManifestInfo, RegistryClient
from adapters.registry_errors import PushErrorKind, RegistryPushError
from kernel.platforms import Platform
from testkit.registry import RegistryServer, UploadedImage, sha256_digest

T0 = datetime(2025, 3, 4, 5, 6, 7, tzinfo=UTC)
AMD64, ARM64 = Platform.parse("linux/amd64"), Platform.parse("linux/arm64")


def client_for(
    server: RegistryServer, credential: RegistryCredential | None = None, timeout: float = 5
) -> RegistryClient:
    return RegistryClient(
        server.host, credential or server.credential(), insecure=True, timeout=timeout
    )


@pytest.fixture
def repository() -> str:
    return f"drydock-tests/app-{uuid.uuid4().hex[:8]}"


def info(image: UploadedImage) -> ManifestInfo:
    return ManifestInfo(image.digest, image.media_type, image.size, {}, image.raw)


def test_reads_an_oci_manifest_by_tag_and_by_digest(
    registry_server: RegistryServer, repository: str
) -> None:
    image = registry_server.put_image(repository, "v1", created=T0)
    client = client_for(registry_server)

    by_tag = client.manifest(repository, "v1")
    assert (by_tag.digest, by_tag.media_type, by_tag.size) == (
        image.digest,
        OCI_MANIFEST,
        image.size,
    )
    assert by_tag.raw == image.raw and not by_tag.is_index
    assert by_tag.body["config"]["digest"] == image.config_digest
    assert client.manifest(repository, image.digest) == by_tag


def test_reads_a_docker_schema2_manifest(registry_server: RegistryServer, repository: str) -> None:
    image = registry_server.put_image(repository, "v1", media_type=DOCKER_MANIFEST)
    manifest = client_for(registry_server).manifest(repository, "v1")
    assert (manifest.digest, manifest.media_type) == (image.digest, DOCKER_MANIFEST)


def test_puts_an_index_and_reads_it_back_with_its_platforms(
    registry_server: RegistryServer, repository: str
) -> None:
    amd = registry_server.put_image(repository, "rev-linux-amd64", platform="linux/amd64")
    # A Docker schema2 child in an OCI index: what a docker push gives, accepted by registries.
    arm = registry_server.put_image(
        repository, "rev-linux-arm64", platform="linux/arm64", media_type=DOCKER_MANIFEST
    )
    client = client_for(registry_server)
    children = [
        (ARM64, client.manifest(repository, arm.digest)),
        (AMD64, client.manifest(repository, amd.digest)),
    ]
    index = build_image_index(children, {"org.opencontainers.image.revision": "abc123"})

    digest = client.put_index(repository, "rev", index)

    stored = client.manifest(repository, "rev")
    assert stored.digest == digest and stored.is_index and stored.media_type == OCI_INDEX
    assert index_children(stored.body) == [(AMD64, amd.digest), (ARM64, arm.digest)]
    assert [m["mediaType"] for m in stored.body["manifests"]] == [OCI_MANIFEST, DOCKER_MANIFEST]
    assert stored.body["annotations"] == {"org.opencontainers.image.revision": "abc123"}
    # What any client sees, asking over plain HTTP for an OCI index.
    with registry_server.client() as http:
        response = http.get(f"/v2/{repository}/manifests/rev", headers={"Accept": OCI_INDEX})
    assert response.headers["Content-Type"] == OCI_INDEX
    assert response.headers["Docker-Content-Digest"] == digest
    assert sha256_digest(response.content) == digest
    # Putting the same index again is the same digest (the bytes are deterministic).
    assert (
        client.put_index(
            repository,
            "rev-again",
            build_image_index(children, {"org.opencontainers.image.revision": "abc123"}),
        )
        == digest
    )


def test_an_index_listing_a_missing_image_is_refused_as_invalid(
    registry_server: RegistryServer, repository: str
) -> None:
    image = registry_server.put_image(repository, "v1")
    missing = ManifestInfo("sha256:" + "0" * 64, OCI_MANIFEST, 10, {}, b"")
    index = build_image_index([(AMD64, info(image)), (ARM64, missing)], {})
    with pytest.raises(RegistryPushError) as caught:
        client_for(registry_server).put_index(repository, "rev", index)
    assert caught.value.kind is PushErrorKind.MANIFEST_INVALID
    assert caught.value.status == 400 and not caught.value.retryable
    assert "MANIFEST_BLOB_UNKNOWN" in str(caught.value)


def test_put_index_refuses_what_is_not_an_oci_index(
    registry_server: RegistryServer, repository: str
) -> None:
    client = client_for(registry_server)
    with pytest.raises(RegistryPushError) as caught:
        client.put_index(repository, "rev", {"schemaVersion": 2, "mediaType": OCI_MANIFEST})
    assert caught.value.kind is PushErrorKind.MANIFEST_INVALID
    with pytest.raises(RegistryPushError) as bad_tag:
        client.put_index(repository, "-rev", {"mediaType": OCI_INDEX})
    assert bad_tag.value.kind is PushErrorKind.NAME_INVALID


def test_lists_tags(registry_server: RegistryServer, repository: str) -> None:
    for tag in ("v2", "v1", "latest"):
        registry_server.put_image(repository, tag)
    client = client_for(registry_server)
    assert sorted(client.list_tags(repository)) == ["latest", "v1", "v2"]
    assert client.list_tags(f"{repository}-never-pushed") == []


def test_image_created_reads_the_config_and_the_newest_child_of_an_index(
    registry_server: RegistryServer, repository: str
) -> None:
    older = registry_server.put_image(repository, "a", platform="linux/amd64", created=T0)
    newer = registry_server.put_image(
        repository, "b", platform="linux/arm64", created=T0 + timedelta(hours=2)
    )
    undated = registry_server.put_image(repository, "c", platform="linux/arm/v7")
    client = client_for(registry_server)

    assert client.image_created(repository, client.manifest(repository, "a")) == T0
    assert client.image_created(repository, client.manifest(repository, "c")) is None
    index = build_image_index(
        [
            (AMD64, info(older)),
            (ARM64, info(newer)),
            (Platform.parse("linux/arm/v7"), info(undated)),
        ],
        {},
    )
    client.put_index(repository, "multi", index)
    created = client.image_created(repository, client.manifest(repository, "multi"))
    assert created == T0 + timedelta(hours=2)


def test_blob_reads_a_config_and_checks_its_digest(
    registry_server: RegistryServer, repository: str
) -> None:
    image = registry_server.put_image(repository, "v1", platform="linux/arm64", created=T0)
    config = client_for(registry_server).blob(repository, image.config_digest)
    assert sha256_digest(config) == image.config_digest and b'"arm64"' in config
    with pytest.raises(RegistryPushError) as too_big:
        client_for(registry_server).blob(repository, image.config_digest, max_bytes=10)
    assert "over 10 bytes" in str(too_big.value)


def test_delete_by_digest_removes_the_manifest_and_its_tags(
    registry_server: RegistryServer, repository: str
) -> None:
    gone = registry_server.put_image(repository, "old")
    registry_server.put_manifest(repository, "old-alias", gone.raw, gone.media_type)
    kept = registry_server.put_image(repository, "new")
    client = client_for(registry_server)

    client.delete_manifest(repository, gone.digest)

    with pytest.raises(RegistryPushError) as caught:
        client.manifest(repository, gone.digest)
    assert caught.value.status == 404 and "MANIFEST_UNKNOWN" in str(caught.value)
    assert not caught.value.retryable
    assert client.list_tags(repository) == ["new"]
    assert client.manifest(repository, "new").digest == kept.digest
    # Deleting what is already gone succeeds: a retried prune runs again.
    client.delete_manifest(repository, gone.digest)


def test_a_wrong_password_is_auth_expired_and_never_shown(
    registry_server: RegistryServer, repository: str
) -> None:
    registry_server.put_image(repository, "v1")
    wrong = "not-the-password-" + uuid.uuid4().hex
    client = client_for(registry_server, RegistryCredential(registry_server.username, wrong))
    with pytest.raises(RegistryPushError) as caught:
        client.manifest(repository, "v1")
    error = caught.value
    assert error.kind is PushErrorKind.AUTH_EXPIRED and error.retryable and error.status == 401
    for shown in (str(error), repr(error), error.detail, repr(client)):
        assert wrong not in shown
        assert registry_server.password not in shown


def test_no_credentials_is_auth_required_and_permanent(
    registry_server: RegistryServer, repository: str
) -> None:
    client = RegistryClient(registry_server.host, None, insecure=True, timeout=5)
    with pytest.raises(RegistryPushError) as caught:
        client.list_tags(repository)
    assert caught.value.kind is PushErrorKind.AUTH_REQUIRED and not caught.value.retryable


@pytest.fixture
def restored_password(registry_server: RegistryServer) -> Iterator[str]:
    original = registry_server.password
    yield original
    registry_server.set_password(original)


def test_a_rotated_password_turns_the_old_one_into_auth_expired(
    registry_server: RegistryServer, repository: str, restored_password: str
) -> None:
    registry_server.put_image(repository, "v1")
    old = client_for(registry_server)
    assert old.list_tags(repository) == ["v1"]

    registry_server.set_password("rotated-" + uuid.uuid4().hex)

    with pytest.raises(RegistryPushError) as caught:
        old.list_tags(repository)
    assert caught.value.kind is PushErrorKind.AUTH_EXPIRED
    assert client_for(registry_server).list_tags(repository) == ["v1"]


def test_a_stopped_registry_is_a_retryable_network_failure(
    registry_server: RegistryServer, repository: str
) -> None:
    client = client_for(registry_server)
    with registry_server.stopped():
        started = time.monotonic()
        with pytest.raises(RegistryPushError) as caught:
            client.manifest(repository, "v1")
        # Raised at once: the retry policy of the task decides, not a library's own sleeps.
        assert time.monotonic() - started < 2
    assert caught.value.kind is PushErrorKind.NETWORK_OR_TIMEOUT and caught.value.retryable
    assert registry_server.host in str(caught.value)


def test_a_registry_that_never_answers_times_out() -> None:
    # Accepts connections (the kernel's backlog) and never says a word.
    with socket.socket() as silent:
        silent.bind(("127.0.0.1", 0))
        silent.listen(8)
        host = f"127.0.0.1:{silent.getsockname()[1]}"
        client = RegistryClient(host, None, insecure=True, timeout=0.5)
        started = time.monotonic()
        with pytest.raises(RegistryPushError) as caught:
            client.list_tags("app")
        assert time.monotonic() - started < 3
    assert caught.value.kind is PushErrorKind.NETWORK_OR_TIMEOUT and caught.value.retryable
    assert "timed out" in str(caught.value)


def test_a_token_registry_is_answered_with_a_token_per_scope(
    token_registry_server: RegistryServer, repository: str
) -> None:
    """Bearer challenges: the client gets a token for each scope the registry names (pull to
    read, pull,push to put the index, delete to delete) from the realm, with its password."""
    server = token_registry_server
    amd = server.put_image(repository, "rev-linux-amd64", platform="linux/amd64", created=T0)
    arm = server.put_image(repository, "rev-linux-arm64", platform="linux/arm64", created=T0)
    client = client_for(server)

    index = build_image_index([(AMD64, info(amd)), (ARM64, info(arm))], {})
    digest = client.put_index(repository, "rev", index)

    assert sorted(client.list_tags(repository)) == ["rev", "rev-linux-amd64", "rev-linux-arm64"]
    assert client.image_created(repository, client.manifest(repository, "rev")) == T0
    client.delete_manifest(repository, digest)
    assert "rev" not in client.list_tags(repository)


def test_a_token_registry_refusing_the_password_is_auth_expired(
    token_registry_server: RegistryServer, repository: str
) -> None:
    wrong = "wrong-" + uuid.uuid4().hex
    client = client_for(
        token_registry_server, RegistryCredential(token_registry_server.username, wrong)
    )
    with pytest.raises(RegistryPushError) as caught:
        client.list_tags(repository)
    assert caught.value.kind is PushErrorKind.AUTH_EXPIRED and caught.value.status == 401
    assert wrong not in str(caught.value)
    anonymous = RegistryClient(token_registry_server.host, None, insecure=True, timeout=5)
    with pytest.raises(RegistryPushError) as refused:
        anonymous.list_tags(repository)
    assert refused.value.kind is PushErrorKind.AUTH_REQUIRED


def test_bad_names_are_refused_before_any_request() -> None:
    # Nothing listens on port 9: a request would fail as a network error instead.
    client = RegistryClient("127.0.0.1:9", None, insecure=True, timeout=1)
    for call in (
        lambda: client.list_tags("Team/App"),
        lambda: client.manifest("app", "bad tag"),
        lambda: client.manifest("app", "sha256:abc"),
        lambda: client.delete_manifest("app", "latest"),
    ):
        with pytest.raises(RegistryPushError) as caught:
            call()
        assert caught.value.kind is PushErrorKind.NAME_INVALID and not caught.value.retryable
    with pytest.raises(ValueError, match="registry"):
        RegistryClient("https://registry.example.com", None, insecure=False, timeout=1)


DIGEST = "sha256:" + "ab" * 32


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("127.0.0.1:5000/team/app:v1", ("127.0.0.1:5000", "team/app", "v1", None)),
        ("registry.example.com/app", ("registry.example.com", "app", None, None)),
        (f"localhost/a.b/c__d:1.0@{DIGEST}", ("localhost", "a.b/c__d", "1.0", DIGEST)),
        (f"[::1]:5000/app@{DIGEST}", ("[::1]:5000", "app", None, DIGEST)),
        ("ghcr.io/org/team/app:sha-abc_1", ("ghcr.io", "org/team/app", "sha-abc_1", None)),
    ],
)
def test_image_references_parse_and_print_back(
    text: str, expected: tuple[str, str, str | None, str | None]
) -> None:
    reference = ImageReference.parse(text)
    assert (reference.registry, reference.repository, reference.tag, reference.digest) == expected
    assert str(reference) == text
    assert reference.reference == (expected[3] or expected[2])


@pytest.mark.parametrize(
    ("text", "problem"),
    [
        ("team/app:v1", "must start with the registry host"),
        ("app", "must start with the registry host"),
        ("127.0.0.1:5000/Team/App", "lowercase"),
        ("127.0.0.1:5000/app:-v1", "tag '-v1'"),
        ("127.0.0.1:5000/app:" + "x" * 129, "1 to 128"),
        ("127.0.0.1:5000/app@sha256:abc", "64 hex digits"),
        ("127.0.0.1:5000/app//x", "repository"),
        ("127.0.0.1:5000/-app", "repository"),
        ("bad_host.example.com/app", "registry"),
        ("127.0.0.1:5000/" + "a" * 250, "longer than 255"),
    ],
)
def test_bad_image_references_are_refused_with_the_reason(text: str, problem: str) -> None:
    with pytest.raises(ValueError, match="invalid image reference") as caught:
        ImageReference.parse(text)
    assert problem in str(caught.value)


def test_image_reference_helpers() -> None:
    reference = ImageReference.parse("127.0.0.1:5000/team/app:v1")
    assert reference.name == "127.0.0.1:5000/team/app"
    assert str(reference.with_tag("v2")) == "127.0.0.1:5000/team/app:v2"
    assert str(reference.with_digest(DIGEST)) == f"127.0.0.1:5000/team/app:v1@{DIGEST}"
    loopback = ["localhost", "127.0.0.1", "[::1]"]
    assert registry_is_insecure("127.0.0.1:5000", loopback)
    assert registry_is_insecure("[::1]:5000", loopback)
    assert registry_is_insecure("localhost", loopback)
    assert not registry_is_insecure("registry.example.com:443", loopback)
    assert registry_is_insecure("registry.example.com:5000", ["registry.example.com:5000"])


def fake_manifest(name: str, media_type: str = OCI_MANIFEST) -> ManifestInfo:
    raw = name.encode()
    return ManifestInfo(sha256_digest(raw), media_type, len(raw), {}, raw)


def test_the_index_is_deterministic_whatever_the_order_given() -> None:
    amd, arm, v7 = fake_manifest("amd"), fake_manifest("arm"), fake_manifest("v7")
    arm_v7 = Platform.parse("linux/arm/v7")
    first = build_image_index([(ARM64, arm), (AMD64, amd), (arm_v7, v7)], {"b": "2", "a": "1"})
    second = build_image_index([(arm_v7, v7), (AMD64, amd), (ARM64, arm)], {"a": "1", "b": "2"})
    assert first == second
    assert list(first["annotations"]) == ["a", "b"]
    assert first["schemaVersion"] == 2 and first["mediaType"] == OCI_INDEX
    assert first["manifests"][0] == {
        "mediaType": OCI_MANIFEST,
        "digest": amd.digest,
        "size": 3,
        "platform": {"architecture": "amd64", "os": "linux"},
    }
    assert first["manifests"][1]["platform"] == {
        "architecture": "arm",
        "os": "linux",
        "variant": "v7",
    }
    assert "annotations" not in build_image_index([(AMD64, amd)], {})


def test_the_index_builder_refuses_what_cannot_be_one_image() -> None:
    amd, arm = fake_manifest("amd"), fake_manifest("arm")
    with pytest.raises(ValueError, match="at least one"):
        build_image_index([], {})
    with pytest.raises(ValueError, match="listed twice"):
        build_image_index([(AMD64, amd), (AMD64, arm)], {})
    with pytest.raises(ValueError, match="same image"):
        build_image_index([(AMD64, amd), (ARM64, amd)], {})
    with pytest.raises(ValueError, match="not an image manifest"):
        build_image_index([(AMD64, fake_manifest("idx", OCI_INDEX))], {})


def test_index_children_skips_attestations_and_refuses_non_indexes() -> None:
    body = {
        "schemaVersion": 2,
        "mediaType": OCI_INDEX,
        "manifests": [
            {"digest": "sha256:a", "platform": {"os": "linux", "architecture": "amd64"}},
            {"digest": "sha256:b", "platform": {"os": "unknown", "architecture": "unknown"}},
            {
                "digest": "sha256:c",
                "platform": {"os": "linux", "architecture": "arm64"},
                "annotations": {"vnd.docker.reference.type": "attestation-manifest"},
            },
            {"digest": "sha256:d"},
        ],
    }
    assert index_children(body) == [(AMD64, "sha256:a")]
    with pytest.raises(ValueError, match="not an image index"):
        index_children({"mediaType": OCI_MANIFEST, "layers": []})

"""The builder backends against real peers: the session's dockerd, buildah storage, a registry.

Images are FROM scratch plus the static busybox of this machine (nothing can be pulled here).
Each test repository carries a marker file of its own, so one test's layers are never another's
cache; each test removes the images it made.
"""

from __future__ import annotations

import json
import subprocess
import uuid
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path

import docker
import pytest

from adapters.credentials import RegistryCredential
from adapters.git import fetch_revision
from adapters.image_store import BackendUnavailableError
from adapters.registry_errors import PushErrorKind, RegistryPushError
from kernel.platforms import Platform
from kernel.settings import get_settings
from tasks.builds.backends import (
    PLATFORM_LABEL,
    BuildahBackend,
    BuilderBackend,
    BuildSpec,
    BuildStepFailedError,
    DockerBackend,
    PlatformMismatchError,
    backend_for,
    dockerfile_runs_on_target,
    emulation_available,
    host_platform,
    verify_platform,
)
from testkit.docker_engine import DockerEngine
from testkit.registry import RegistryServer
from tests.image_builders import BuildahStorage, GitRepo

NATIVE = host_platform()
# A platform this host does not run natively (this suite runs on amd64 or arm64 machines).
FOREIGN = Platform("linux", "arm64" if NATIVE.arch != "arm64" else "amd64")
BUSYBOX_BYTES = Path("/bin/busybox").stat().st_size
# DEFAULT_DOCKERFILE of tests.image_builders: FROM, COPY, COPY, LABEL, CMD.
DEFAULT_STEPS = 5

# A RUN step executes busybox (the host's architecture) with a build argument, output on both
# streams: RUN steps work, build arguments arrive, every line is streamed.
RUN_DOCKERFILE = """\
FROM scratch
ARG GREETING
COPY marker /marker
COPY busybox /bin/busybox
RUN ["/bin/busybox", "sh", "-c", "echo greeting=$GREETING; echo on-stderr >&2"]
"""


@dataclass
class Recorder:
    lines: list[str] = field(default_factory=list)
    steps: list[tuple[int, int, str]] = field(default_factory=list)

    def line(self, text: str) -> None:
        self.lines.append(text)

    def step(self, index: int, total: int, instruction: str) -> None:
        self.steps.append((index, total, instruction))


def checkout(repo: GitRepo, tmp_path: Path, revision: str = "main") -> Path:
    source = fetch_revision(
        repo.url,
        revision,
        tmp_path / f"src-{uuid.uuid4().hex[:6]}",
        allowed_schemes=["file"],
        timeout_seconds=30,
        max_bytes=50_000_000,
    )
    return source.path


def spec_for(context: Path, tag: str, platform: Platform = NATIVE, **options: object) -> BuildSpec:
    return BuildSpec(
        context=context,
        dockerfile=context / "Dockerfile",
        tag=tag,
        platform=platform,
        **options,  # type: ignore[arg-type]
    )


@pytest.fixture
def tags() -> Iterator[Callable[[str], str]]:
    """Unique image names for a test; whatever a backend made under them (or tagged as them)
    is removed afterwards."""
    made: list[str] = []
    suffix = uuid.uuid4().hex[:8]

    def tag(name: str) -> str:
        made.append(f"drydock-tests/{name}-{suffix}:latest")
        return made[-1]

    yield tag
    settings = get_settings()
    for image in made:
        for backend in (backend_for("docker", settings), backend_for("buildah", settings)):
            backend.remove_image(image)


@pytest.fixture
def docker_backend(docker_engine: DockerEngine) -> BuilderBackend:
    return backend_for("docker", get_settings())


@pytest.fixture
def buildah_backend(buildah_ready: BuildahStorage) -> BuilderBackend:
    return backend_for("buildah", get_settings())


def engine_client(engine: DockerEngine) -> docker.APIClient:
    return docker.APIClient(base_url=engine.url, version="1.41")


def buildah_inspect(storage: BuildahStorage, image: str) -> dict[str, object]:
    result = subprocess.run(
        storage.command("inspect", "--type", "image", image),
        capture_output=True,
        text=True,
        check=True,
    )
    details: dict[str, object] = json.loads(result.stdout)
    return details


# --- docker ---------------------------------------------------------------------------------


def test_docker_builds_its_native_platform_streaming_steps_and_lines(
    docker_engine: DockerEngine,
    docker_backend: BuilderBackend,
    git_repo_factory: Callable[..., GitRepo],
    tmp_path: Path,
    tags: Callable[[str], str],
) -> None:
    repo = git_repo_factory(dockerfile=RUN_DOCKERFILE)
    context = checkout(repo, tmp_path)
    tag = tags("native")
    seen = Recorder()
    built = docker_backend.build(
        spec_for(
            context,
            tag,
            build_args={"GREETING": "hello-from-drydock"},
            labels={"org.opencontainers.image.revision": repo.commits["main"]},
        ),
        seen.line,
        seen.step,
    )
    assert built.platform == NATIVE
    assert built.tag == tag
    assert built.image_id.startswith("sha256:")
    assert built.size_bytes >= BUSYBOX_BYTES
    # Five Dockerfile steps and the engine's LABEL step for the labels asked for.
    assert built.steps_total == 6
    assert built.steps_cached == 0
    assert seen.steps[0] == (1, 6, "FROM scratch")
    assert [index for index, _, _ in seen.steps] == [1, 2, 3, 4, 5, 6]
    assert "greeting=hello-from-drydock" in seen.lines
    assert "on-stderr" in seen.lines
    details = engine_client(docker_engine).inspect_image(tag)
    assert details["Id"] == built.image_id
    assert details["Config"]["Labels"]["org.opencontainers.image.revision"] == repo.commits["main"]
    assert verify_platform(docker_backend, tag, NATIVE) == NATIVE
    assert docker_backend.image_platform(tag) == NATIVE


def test_docker_refuses_other_platforms_and_says_to_use_buildah(
    docker_backend: BuilderBackend,
) -> None:
    assert docker_backend.unsupported_reason(NATIVE) is None
    reason = docker_backend.unsupported_reason(FOREIGN)
    assert reason is not None
    assert f"only its native platform {NATIVE}" in reason
    assert "use the buildah backend" in reason


def test_docker_mislabelling_a_platform_is_caught_by_verification(
    docker_backend: BuilderBackend,
    git_repo_factory: Callable[..., GitRepo],
    tmp_path: Path,
    tags: Callable[[str], str],
) -> None:
    context = checkout(git_repo_factory(), tmp_path)
    native = docker_backend.build(
        spec_for(context, tags("mislabel-native")), Recorder().line, Recorder().step
    )
    tag = tags("mislabel")
    # Past the refusal, straight to the engine. The classic builder's cache does not tell
    # platforms apart: with the native build cached, it hands back the native image.
    built = docker_backend.build(spec_for(context, tag, FOREIGN), Recorder().line, Recorder().step)
    assert built.platform == NATIVE
    assert built.image_id == native.image_id
    with pytest.raises(PlatformMismatchError, match=f"built as {NATIVE}, not the requested "):
        verify_platform(docker_backend, tag, FOREIGN)


def test_docker_rebuild_is_all_cache_and_no_cache_is_honoured(
    docker_backend: BuilderBackend,
    git_repo_factory: Callable[..., GitRepo],
    tmp_path: Path,
    tags: Callable[[str], str],
) -> None:
    context = checkout(git_repo_factory(), tmp_path)
    tag = tags("cache")
    first = docker_backend.build(spec_for(context, tag), Recorder().line, Recorder().step)
    assert (first.steps_total, first.steps_cached) == (DEFAULT_STEPS, 0)
    again = docker_backend.build(spec_for(context, tag), Recorder().line, Recorder().step)
    # Every step but FROM (which only names the base) came from the cache.
    assert (again.steps_total, again.steps_cached) == (DEFAULT_STEPS, DEFAULT_STEPS - 1)
    assert again.image_id == first.image_id
    fresh = docker_backend.build(
        spec_for(context, tag, no_cache=True), Recorder().line, Recorder().step
    )
    assert fresh.steps_cached == 0
    assert fresh.image_id != first.image_id


def test_docker_failing_step_names_the_step_and_shows_its_output(
    docker_engine: DockerEngine,
    docker_backend: BuilderBackend,
    git_repo_factory: Callable[..., GitRepo],
    tmp_path: Path,
    tags: Callable[[str], str],
) -> None:
    repo = git_repo_factory()
    repo.commit_broken_dockerfile()
    context = checkout(repo, tmp_path)
    with pytest.raises(BuildStepFailedError) as raised:
        docker_backend.build(spec_for(context, tags("broken")), Recorder().line, Recorder().step)
    error = raised.value
    assert error.step.startswith("Step 4/5 : RUN")
    assert "about to fail" in error.last_lines
    assert "something went wrong" in error.last_lines
    assert "returned a non-zero code: 1" in error.last_lines[-1]
    assert len(error.last_lines) <= 20
    assert "Step 4/5 : RUN" in str(error)
    assert "something went wrong" in str(error)
    # The failed step's container went with it.
    assert engine_client(docker_engine).containers(all=True) == []


def test_an_unreachable_docker_engine_is_a_transient_backend_error(
    git_repo_factory: Callable[..., GitRepo], tmp_path: Path
) -> None:
    backend = DockerBackend(f"unix://{tmp_path}/no-such-docker.sock")
    context = checkout(git_repo_factory(), tmp_path)
    with pytest.raises(BackendUnavailableError, match="cannot be reached"):
        backend.build(spec_for(context, "x:y"), Recorder().line, Recorder().step)
    with pytest.raises(BackendUnavailableError):
        backend.unsupported_reason(NATIVE)


# --- buildah --------------------------------------------------------------------------------


def test_buildah_builds_two_platforms_each_really_its_architecture(
    buildah_ready: BuildahStorage,
    buildah_backend: BuilderBackend,
    git_repo_factory: Callable[..., GitRepo],
    tmp_path: Path,
    tags: Callable[[str], str],
) -> None:
    context = checkout(git_repo_factory(), tmp_path)
    built = {}
    for platform in (NATIVE, FOREIGN):
        tag = tags(f"multi-{platform.tag_suffix}")
        seen = Recorder()
        built[platform] = buildah_backend.build(
            spec_for(context, tag, platform), seen.line, seen.step
        )
        assert built[platform].platform == platform
        assert verify_platform(buildah_backend, tag, platform) == platform
        config = buildah_inspect(buildah_ready, tag)["OCIv1"]
        assert isinstance(config, dict)
        assert config["architecture"] == platform.arch
        assert config["config"]["Labels"][PLATFORM_LABEL] == str(platform)
        assert built[platform].size_bytes >= BUSYBOX_BYTES
        assert seen.steps[0][2] == "FROM scratch"
    assert built[NATIVE].image_id != built[FOREIGN].image_id
    with pytest.raises(PlatformMismatchError):
        verify_platform(buildah_backend, built[FOREIGN].tag, NATIVE)


def test_buildah_cache_is_per_platform_and_no_cache_is_honoured(
    buildah_backend: BuilderBackend,
    git_repo_factory: Callable[..., GitRepo],
    tmp_path: Path,
    tags: Callable[[str], str],
) -> None:
    context = checkout(git_repo_factory(), tmp_path)
    # The Dockerfile's five steps and the platform label.
    steps = DEFAULT_STEPS + 1
    foreign = buildah_backend.build(
        spec_for(context, tags("cache-foreign"), FOREIGN), Recorder().line, Recorder().step
    )
    native = buildah_backend.build(
        spec_for(context, tags("cache-native")), Recorder().line, Recorder().step
    )
    assert native.platform == NATIVE
    assert native.steps_total == steps
    again = buildah_backend.build(
        spec_for(context, tags("cache-native")), Recorder().line, Recorder().step
    )
    assert (again.steps_cached, again.image_id) == (steps - 1, native.image_id)
    foreign_again = buildah_backend.build(
        spec_for(context, tags("cache-foreign"), FOREIGN), Recorder().line, Recorder().step
    )
    assert foreign_again.steps_cached == steps - 1
    assert (foreign_again.image_id, foreign_again.platform) == (foreign.image_id, FOREIGN)
    fresh = buildah_backend.build(
        spec_for(context, tags("cache-native"), no_cache=True), Recorder().line, Recorder().step
    )
    assert fresh.steps_cached == 0
    assert fresh.image_id != native.image_id


def test_buildah_runs_steps_with_build_arguments(
    buildah_backend: BuilderBackend,
    git_repo_factory: Callable[..., GitRepo],
    tmp_path: Path,
    tags: Callable[[str], str],
) -> None:
    context = checkout(git_repo_factory(dockerfile=RUN_DOCKERFILE), tmp_path)
    seen = Recorder()
    built = buildah_backend.build(
        spec_for(context, tags("run"), build_args={"GREETING": "hello-from-buildah"}),
        seen.line,
        seen.step,
    )
    assert "greeting=hello-from-buildah" in seen.lines
    assert "on-stderr" in seen.lines
    assert seen.steps[-1] == (6, 6, f'LABEL "{PLATFORM_LABEL}"="{NATIVE}"')
    assert built.steps_total == 6


def test_buildah_failing_step_names_the_step_and_shows_its_output(
    buildah_ready: BuildahStorage,
    buildah_backend: BuilderBackend,
    git_repo_factory: Callable[..., GitRepo],
    tmp_path: Path,
    tags: Callable[[str], str],
) -> None:
    repo = git_repo_factory()
    repo.commit_broken_dockerfile()
    context = checkout(repo, tmp_path)
    with pytest.raises(BuildStepFailedError) as raised:
        buildah_backend.build(spec_for(context, tags("broken")), Recorder().line, Recorder().step)
    error = raised.value
    assert error.step.startswith("STEP 4/6: RUN")
    assert "about to fail" in error.last_lines
    assert "something went wrong" in error.last_lines
    assert 'building at STEP "RUN' in str(error)
    assert "exit status 1" in str(error)
    # No working container is left behind by the failed step.
    containers = subprocess.run(
        buildah_ready.command("containers", "--quiet"), capture_output=True, text=True, check=True
    )
    assert containers.stdout.strip() == ""


def test_buildah_refuses_foreign_run_steps_only_without_emulation(
    buildah_backend: BuilderBackend,
) -> None:
    copy_only = "FROM scratch\nCOPY busybox /bin/busybox\n"
    with_run = 'FROM scratch\nCOPY busybox /bin/busybox\nRUN ["/bin/busybox", "true"]\n'
    cross_stage = (
        "FROM --platform=$BUILDPLATFORM scratch AS tools\n"
        'RUN ["/bin/busybox", "true"]\n'
        "FROM scratch\n"
        "COPY --from=tools /bin/busybox /bin/busybox\n"
    )
    assert buildah_backend.unsupported_reason(FOREIGN) is None
    assert buildah_backend.unsupported_reason(FOREIGN, copy_only) is None
    assert buildah_backend.unsupported_reason(FOREIGN, cross_stage) is None
    assert buildah_backend.unsupported_reason(NATIVE, with_run) is None
    reason = buildah_backend.unsupported_reason(FOREIGN, with_run)
    if emulation_available(FOREIGN.arch):
        assert reason is None
    else:
        assert reason is not None
        assert "RUN steps" in reason
        assert "qemu" in reason
    windows = buildah_backend.unsupported_reason(Platform("windows", "amd64"))
    assert windows is not None
    assert "Linux images only" in windows


@pytest.mark.parametrize(
    ("dockerfile", "runs"),
    [
        ("FROM scratch\nCOPY a /a\n", False),
        ("FROM scratch\nrun true\n", True),
        ("FROM scratch\n# RUN in a comment\nCOPY a /a\n", False),
        ("FROM scratch\nCOPY a \\\n  /a\nRUN true\n", True),
        ("FROM scratch\nCOPY a \\\n# RUN in a comment\n\n  /a\n", False),
        ("FROM scratch\nRUN \\\n\n  true\n", True),
        ("# escape=`\nFROM scratch\nCOPY a `\n  /a\n", False),
        ("FROM --platform=${BUILDPLATFORM} scratch AS b\nRUN true\nFROM scratch\n", False),
        ("FROM --platform=$BUILDPLATFORM scratch AS b\nFROM scratch\nRUN true\n", True),
    ],
)
def test_run_steps_on_the_target_platform_are_found(dockerfile: str, runs: bool) -> None:
    assert dockerfile_runs_on_target(dockerfile) is runs


def test_missing_buildah_is_a_transient_backend_error(
    git_repo_factory: Callable[..., GitRepo], tmp_path: Path
) -> None:
    backend = BuildahBackend(binary=str(tmp_path / "no-buildah"))
    context = checkout(git_repo_factory(), tmp_path)
    with pytest.raises(BackendUnavailableError, match="not installed"):
        backend.build(spec_for(context, "x:y"), Recorder().line, Recorder().step)


# --- pushes ---------------------------------------------------------------------------------


def registry_digest(registry: RegistryServer, repository: str, tag: str) -> str:
    with registry.client() as http:
        response = http.head(
            f"/v2/{repository}/manifests/{tag}",
            headers={
                "Accept": ", ".join(
                    [
                        "application/vnd.oci.image.manifest.v1+json",
                        "application/vnd.docker.distribution.manifest.v2+json",
                    ]
                )
            },
        )
    response.raise_for_status()
    return response.headers["Docker-Content-Digest"]


@pytest.fixture(params=["docker", "buildah"])
def any_backend(request: pytest.FixtureRequest) -> BuilderBackend:
    if request.param == "docker":
        request.getfixturevalue("docker_engine")
    else:
        request.getfixturevalue("buildah_ready")
    return backend_for(request.param, get_settings())


def test_push_reports_digest_bytes_and_reused_layers(
    any_backend: BuilderBackend,
    registry_server: RegistryServer,
    git_repo_factory: Callable[..., GitRepo],
    tmp_path: Path,
    tags: Callable[[str], str],
) -> None:
    context = checkout(git_repo_factory(), tmp_path)
    local = tags(f"push-{any_backend.name}")
    any_backend.build(spec_for(context, local), Recorder().line, Recorder().step)
    repository = f"drydock-tests/push-{any_backend.name}-{uuid.uuid4().hex[:8]}"
    target = f"{registry_server.host}/{repository}:v1"
    any_backend.tag(local, target)
    seen = Recorder()
    first = any_backend.push(
        target, target, registry_server.credential(), insecure=True, on_line=seen.line
    )
    assert first.digest == registry_digest(registry_server, repository, "v1")
    # Two COPY layers: the marker and busybox, both new to the registry.
    assert (first.layers_pushed, first.layers_reused) == (2, 0)
    assert first.bytes_sent >= BUSYBOX_BYTES
    assert seen.lines
    assert registry_server.password not in "\n".join(seen.lines)
    again_target = f"{registry_server.host}/{repository}:v2"
    any_backend.tag(local, again_target)
    again = any_backend.push(
        again_target, again_target, registry_server.credential(), insecure=True, on_line=seen.line
    )
    assert again.digest == first.digest
    assert (again.layers_pushed, again.layers_reused, again.bytes_sent) == (0, 2, 0)
    for image in (target, again_target):
        any_backend.remove_image(image)


def test_push_failures_are_classified(
    any_backend: BuilderBackend,
    registry_server: RegistryServer,
    git_repo_factory: Callable[..., GitRepo],
    tmp_path: Path,
    tags: Callable[[str], str],
) -> None:
    context = checkout(git_repo_factory(), tmp_path)
    local = tags(f"push-fail-{any_backend.name}")
    any_backend.build(spec_for(context, local), Recorder().line, Recorder().step)
    target = f"{registry_server.host}/drydock-tests/refused-{uuid.uuid4().hex[:8]}:v1"
    any_backend.tag(local, target)
    wrong = RegistryCredential(registry_server.username, "not-the-password")
    with pytest.raises(RegistryPushError) as expired:
        any_backend.push(target, target, wrong, insecure=True, on_line=Recorder().line)
    assert expired.value.kind is PushErrorKind.AUTH_EXPIRED
    assert expired.value.retryable
    assert "not-the-password" not in str(expired.value)
    with pytest.raises(RegistryPushError) as anonymous:
        any_backend.push(target, target, None, insecure=True, on_line=Recorder().line)
    assert anonymous.value.kind is PushErrorKind.AUTH_REQUIRED
    assert not anonymous.value.retryable
    with registry_server.stopped(), pytest.raises(RegistryPushError) as down:
        any_backend.push(
            target, target, registry_server.credential(), insecure=True, on_line=Recorder().line
        )
    assert down.value.kind is PushErrorKind.NETWORK_OR_TIMEOUT
    assert down.value.retryable
    # Nothing reached the registry under that name.
    with registry_server.client() as http:
        assert (
            http.get(f"/v2/{target.split('/', 1)[1].replace(':', '/manifests/')}").status_code
            == 404
        )
    any_backend.remove_image(target)

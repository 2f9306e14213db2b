"""An image to evaluate: a static busybox, pushed to the tests' registry and known by digest.

Session fixture ``evaluation_image``: built ``FROM scratch`` on the session's Docker engine
(busybox with its applets in /bin, running as nobody 65534:65534, so a suite meets the
permissions a hardened image has), pushed with the registry's htpasswd credential, then removed
from the engine: the first suite run against it pulls it by digest with that credential, as a
worker meets an image it never built. Use ``forget_evaluation_image`` to make a test pull it.
"""

from __future__ import annotations

import contextlib
import shutil
import uuid
from typing import Any, NamedTuple

import docker
import docker.errors
import pytest

from tasks.builds.backends import DockerBackend
from testkit.docker_engine import DockerEngine
from testkit.registry import RegistryServer
from tests.conftest import _missing
from tests.image_builders import BUSYBOX

EVALUATION_REPOSITORY = "evaluation/busybox"
EVALUATION_IMAGE_DOCKERFILE = """\
FROM scratch
COPY busybox /bin/busybox
RUN ["/bin/busybox", "--install", "-s", "/bin"]
ENV PATH=/bin
USER 65534:65534
"""


class EvaluationImage(NamedTuple):
    host: str
    repository: str
    digest: str

    @property
    def reference(self) -> str:
        """``host/repository@sha256:...``, as an evaluation names the image it runs."""
        return f"{self.host}/{self.repository}@{self.digest}"


def forget_evaluation_image(engine_url: str, image: EvaluationImage) -> None:
    """Remove ``image`` from the engine (if it is there), so the next run pulls it."""
    client = docker.DockerClient(base_url=engine_url)
    try:
        with contextlib.suppress(docker.errors.ImageNotFound):
            client.images.remove(image.reference, force=True)
    finally:
        client.close()


def engine_has(engine_url: str, image: EvaluationImage) -> bool:
    client = docker.DockerClient(base_url=engine_url)
    try:
        client.images.get(image.reference)
    except docker.errors.ImageNotFound:
        return False
    finally:
        client.close()
    return True


@pytest.fixture(scope="session")
def evaluation_image(
    docker_engine: DockerEngine,
    registry_server: RegistryServer,
    tmp_path_factory: pytest.TempPathFactory,
) -> EvaluationImage:
    """(host, repository, digest) of a busybox image in the tests' registry, not on the
    engine (the first suite run pulls it)."""
    if not BUSYBOX.exists():
        _missing(f"a static busybox at {BUSYBOX}")
    context = tmp_path_factory.mktemp("evaluation-image")
    shutil.copy2(BUSYBOX, context / "busybox")
    (context / "Dockerfile").write_text(EVALUATION_IMAGE_DOCKERFILE)
    tag = f"{registry_server.host}/{EVALUATION_REPOSITORY}:suite-{uuid.uuid4().hex[:8]}"
    client: Any = docker.DockerClient(base_url=docker_engine.url)
    try:
        # The engine has no bridge network: RUN steps get none.
        client.images.build(path=str(context), tag=tag, rm=True, network_mode="none")
        pushed = DockerBackend(docker_engine.url).push(
            tag, tag, registry_server.credential(), insecure=True, on_line=lambda _line: None
        )
        # Untagged and deleted (FROM scratch: no base image stays behind): a run must pull it.
        client.images.remove(tag, force=True)
    finally:
        client.close()
    image = EvaluationImage(registry_server.host, EVALUATION_REPOSITORY, pushed.digest)
    assert not engine_has(docker_engine.url, image)
    return image

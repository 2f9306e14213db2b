"""The remediation sandbox image on the session's Docker engine, for the `shell` executor's tests
and the remediation tests that run `shell` playbooks through the queue.

It is built once per session by the code `drydock remediation sandbox build` runs, under the
tag DRYDOCK_REMEDIATION_SANDBOX_IMAGE names, so a `shell` playbook without an ``image`` finds
it the way a worker in production would.
"""

from __future__ import annotations

import pytest

from testkit.docker_engine import DockerEngine
from tests.conftest import _missing
from tests.image_builders import BUSYBOX


@pytest.fixture(scope="session")
def sandbox_image(docker_engine: DockerEngine) -> str:
    """The sandbox image's tag (the settings' default), built on the session's engine."""
    from kernel.settings import get_settings
    from tasks.remediation.executors.sandbox import build_sandbox_image

    if not BUSYBOX.exists():
        _missing(f"a static busybox at {BUSYBOX}")
    tag = get_settings().remediation_sandbox_image
    build_sandbox_image(tag, busybox=BUSYBOX, base_url=docker_engine.url)
    return tag

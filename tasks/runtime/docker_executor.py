"""The Docker executor: an MCP server as a container on a Docker engine.

The image is pulled by digest with the registry credential given (never the engine's stored
logins; ``adapters.image_pull``), and run locked down: read-only root with a small ``/tmp``
tmpfs, every capability dropped, ``no-new-privileges``, a private IPC namespace, memory (no swap
beyond it), CPU and process limits. The engines here have no bridge network, so the server
shares the host's network and is told its port in ``PORT`` (chosen free on loopback by
``prepare`` and saved first, so a redelivered launch reuses it); it must listen on 127.0.0.1
there, which is where the probe calls it. The container's name is the instance's
(``drydock-rt-<instance id>``): a second start finds it instead of making another.
"""

from __future__ import annotations

import contextlib
import socket
from collections.abc import Mapping
from typing import Any

from adapters import docker_engine, image_pull
from adapters.container_run import cap_text
from kernel.redaction import scrub_text
from kernel.settings import get_settings
from models.runtime import Backend
from tasks.runtime import probes
from tasks.runtime.executors import LOG_TAIL_BYTES, LOG_TAIL_LINES, LaunchFailedError, LaunchSpec

LABEL_PREFIX = "io.drydock.runtime."
STOP_TIMEOUT_SECONDS = 10


class DockerExecutor:
    backend = Backend.DOCKER

    def probe_seconds(self) -> float:
        return get_settings().runtime_probe_timeout_seconds

    def prepare(self, spec: LaunchSpec, handle: Mapping[str, Any]) -> dict[str, Any]:
        if handle.get("container_name") and handle.get("port"):
            return dict(handle)
        return {"container_name": f"drydock-rt-{spec.instance_id}", "port": _free_port()}

    def start(self, spec: LaunchSpec, handle: Mapping[str, Any]) -> str:
        import docker.errors

        address = self._address(spec)
        port = int(handle["port"])
        with docker_engine.engine_errors(address):
            client = docker_engine.connect(address)
            try:
                container = _existing(client, str(handle["container_name"]))
                if container is not None and container.status != "running":
                    container.remove(force=True)
                    container = None
                if container is None:
                    try:
                        image_id = image_pull.ensure_image(client, spec.image, spec.credential)
                    except image_pull.ImageUnavailableError as exc:
                        raise LaunchFailedError(str(exc)) from None
                    try:
                        container = client.containers.run(
                            image_id,
                            name=str(handle["container_name"]),
                            detach=True,
                            network_mode="host",
                            environment={"PORT": str(port)},
                            read_only=True,
                            tmpfs={"/tmp": "size=16m,mode=1777"},
                            security_opt=["no-new-privileges"],
                            cap_drop=["ALL"],
                            ipc_mode="private",
                            mem_limit=f"{spec.memory_mb}m",
                            memswap_limit=f"{spec.memory_mb}m",
                            nano_cpus=int(spec.cpus * 1e9),
                            pids_limit=spec.pids,
                            labels={
                                LABEL_PREFIX + "instance": str(spec.instance_id),
                                LABEL_PREFIX + "server": f"{spec.tenant}/{spec.server}",
                                **spec.labels,
                            },
                        )
                    except docker.errors.APIError as exc:
                        raise LaunchFailedError(
                            f"the Docker engine refused the container: {docker_engine.explain(exc)}"
                        ) from None
            finally:
                client.close()
        return f"http://127.0.0.1:{port}"

    def probe(
        self, spec: LaunchSpec, handle: Mapping[str, Any], endpoint: str
    ) -> probes.ProbeResult:
        return probes.probe(endpoint, spec.probe_kind, spec.probe_path)

    def exited(self, spec: LaunchSpec, handle: Mapping[str, Any]) -> str | None:
        address = self._address(spec)
        with docker_engine.engine_errors(address):
            client = docker_engine.connect(address)
            try:
                container = _existing(client, str(handle.get("container_name", "")))
                if container is None:
                    return "its container is gone"
                if container.status in ("created", "running", "restarting"):
                    return None
                code = container.attrs.get("State", {}).get("ExitCode")
                return f"its container {container.status} (exit code {code})"
            finally:
                client.close()

    def stop(self, spec: LaunchSpec, handle: Mapping[str, Any]) -> str:
        name = handle.get("container_name")
        if not name:
            return ""
        address = self._address(spec)
        with docker_engine.engine_errors(address):
            client = docker_engine.connect(address)
            try:
                container = _existing(client, str(name))
                if container is None:
                    return ""
                with contextlib.suppress(Exception):
                    container.stop(timeout=STOP_TIMEOUT_SECONDS)
                output = container.logs(stdout=True, stderr=True, tail=LOG_TAIL_LINES)
                container.remove(force=True)
            finally:
                client.close()
        return _kept(output)

    def _address(self, spec: LaunchSpec) -> str | None:
        given = spec.connection.get("docker_host")
        return docker_engine.engine_address(str(given) if given else get_settings().docker_host)


def _existing(client: Any, name: str) -> Any:
    import docker.errors

    try:
        return client.containers.get(name)
    except docker.errors.NotFound:
        return None


def _kept(output: bytes) -> str:
    return cap_text(scrub_text(docker_engine.decode(output), []), LOG_TAIL_BYTES).text


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])

"""The Kubernetes executor: an MCP server as a Deployment of one pod behind a ClusterIP Service.

Everything goes through ``KubernetesAdapter`` (the target's ``connection``: ``namespace``, and
``kubeconfig``, else ``DRYDOCK_KUBECONFIG``). ``start`` makes, each at most once (a 409 from an
earlier attempt is kept):

- the image-pull Secret ``<name>-pull`` (``kubernetes.io/dockerconfigjson``) holding the stored
  registry credential, when there is one;
- the Deployment ``drydock-rt-<instance id>``: the image by digest, told its port in ``PORT``
  (8080, named ``mcp``; it must listen on all interfaces there), locked down as the Docker
  executor runs it: no privilege escalation, read-only root with a small in-memory ``/tmp``,
  every capability dropped, the runtime's default seccomp profile, no service account token,
  CPU and memory limits equal to requests; a readiness probe (a TCP connect for MCP servers,
  which Kubernetes cannot POST to; the GET for HTTP ones); and a progress deadline of the
  runtime's probe time, so a pod that never becomes ready fails its rollout;
- the Service of the same name, selecting the instance's pod.

Readiness is read back as ``kubectl rollout status`` reads it (the Deployment's status); once
the rollout has finished, the probe itself (the MCP ``initialize`` call, or the GET) is sent
through the API server's proxy to the Service, so what passes is the server answering, not only
its port open. A rollout past its progress deadline, or a Deployment gone, is the server exited.
``stop`` deletes all three (none there is fine).

The process limit has no per-pod field in a pod spec (it is the kubelet's), and the pods' logs
are not collected into the instance: ``kubectl logs`` reads them while the pod exists.
"""

from __future__ import annotations

import json
import math
import re
import time
from collections.abc import Mapping
from typing import Any

from adapters import kubernetes_workloads as workloads
from adapters.kubernetes import KubernetesAdapter, KubernetesApiError, RolloutStatus
from kernel.settings import get_settings
from models.runtime import Backend, ProbeKind
from tasks.runtime import probes
from tasks.runtime.executors import LaunchFailedError, LaunchSpec

SERVER_PORT = 8080
PORT_NAME = "mcp"
INSTANCE_LABEL = "runtime.drydock.io/instance"
SERVER_ANNOTATION = "runtime.drydock.io/server"
MANAGED_BY = {"app.kubernetes.io/managed-by": "drydock"}
DEFAULT_NAMESPACE = "default"
# A namespace is a DNS label (RFC 1123).
NAMESPACE = re.compile(r"^[a-z0-9]([-a-z0-9]{0,61}[a-z0-9])?$")


class KubernetesExecutor:
    backend = Backend.KUBERNETES

    def probe_seconds(self) -> float:
        return get_settings().runtime_probe_timeout_seconds

    def prepare(self, spec: LaunchSpec, handle: Mapping[str, Any]) -> dict[str, Any]:
        if handle.get("deployment") and handle.get("namespace"):
            return dict(handle)
        namespace = str(spec.connection.get("namespace") or DEFAULT_NAMESPACE)
        if not NAMESPACE.fullmatch(namespace):
            raise LaunchFailedError(
                f"the target's namespace {namespace!r} is not a Kubernetes namespace name"
            )
        name = f"drydock-rt-{spec.instance_id}"
        return {
            "namespace": namespace,
            "deployment": name,
            "service": name,
            "pull_secret": f"{name}-pull" if spec.credential is not None else None,
        }

    def start(self, spec: LaunchSpec, handle: Mapping[str, Any]) -> str:
        namespace = str(handle["namespace"])
        adapter = self._adapter(spec)
        try:
            pull_secret = handle.get("pull_secret")
            if pull_secret and spec.credential is not None:
                adapter.apply_image_pull_secret(
                    namespace,
                    str(pull_secret),
                    spec.image.split("/", 1)[0],
                    spec.credential.username,
                    spec.credential.password,
                )
            workloads.create(
                adapter,
                workloads.namespaced("apps/v1", namespace, "deployments"),
                deployment_manifest(spec, handle),
            )
            workloads.create(
                adapter,
                workloads.namespaced("v1", namespace, "services"),
                service_manifest(spec, handle),
            )
        except KubernetesApiError as exc:
            raise LaunchFailedError(f"the Kubernetes API refused the server: {exc}") from None
        finally:
            adapter.close()
        return f"http://{handle['service']}.{namespace}.svc:{SERVER_PORT}"

    def probe(
        self, spec: LaunchSpec, handle: Mapping[str, Any], endpoint: str
    ) -> probes.ProbeResult:
        namespace, name = str(handle["namespace"]), str(handle["deployment"])
        began = time.monotonic()
        adapter = self._adapter(spec)
        try:
            ok, detail = self._probe(
                adapter, namespace, name, str(handle["service"]), spec.probe_kind, spec.probe_path
            )
        except KubernetesApiError as exc:
            ok, detail = False, str(exc)
        finally:
            adapter.close()
        return probes.ProbeResult(ok, detail, (time.monotonic() - began) * 1000)

    def _probe(
        self,
        adapter: KubernetesAdapter,
        namespace: str,
        name: str,
        service: str,
        kind: ProbeKind,
        path: str,
    ) -> tuple[bool, str]:
        waiting = adapter.deployment_rollout_status(namespace, name).waiting_for()
        if waiting is not None:
            return False, f"the rollout of deployment {namespace}/{name} waits for {waiting}"
        proxy = workloads.service_proxy_path(namespace, service, PORT_NAME, path)
        where = f"service {namespace}/{service} {path}"
        if kind is ProbeKind.MCP:
            answer = adapter.proxy(
                "POST",
                proxy,
                body=probes.initialize_request(),
                headers=probes.INITIALIZE_HEADERS,
                max_bytes=probes.MAX_RESPONSE_BYTES,
            )
        else:
            answer = adapter.proxy("GET", proxy, max_bytes=probes.MAX_RESPONSE_BYTES)
        if not 200 <= answer.status < 300:
            said = _said(answer.text)
            return False, f"{where} answered HTTP {answer.status}{f': {said}' if said else ''}"
        if kind is ProbeKind.MCP:
            return probes.judge_initialize(answer.content_type, answer.text, where)
        return True, f"GET {where}: HTTP {answer.status}"

    def exited(self, spec: LaunchSpec, handle: Mapping[str, Any]) -> str | None:
        namespace, name = str(handle["namespace"]), str(handle["deployment"])
        adapter = self._adapter(spec)
        try:
            found = workloads.read(
                adapter, workloads.namespaced("apps/v1", namespace, "deployments", name)
            )
        finally:
            adapter.close()
        if found is None:
            return f"its deployment {namespace}/{name} is gone"
        if RolloutStatus.from_api(found).progress_deadline_exceeded:
            return f"its deployment {namespace}/{name} exceeded its progress deadline"
        return None

    def stop(self, spec: LaunchSpec, handle: Mapping[str, Any]) -> str:
        if not handle.get("deployment"):
            return ""
        namespace = str(handle["namespace"])
        adapter = self._adapter(spec)
        try:
            workloads.delete(
                adapter, workloads.namespaced("v1", namespace, "services", str(handle["service"]))
            )
            workloads.delete(
                adapter,
                workloads.namespaced(
                    "apps/v1", namespace, "deployments", str(handle["deployment"])
                ),
            )
            if handle.get("pull_secret"):
                workloads.delete(
                    adapter,
                    workloads.namespaced("v1", namespace, "secrets", str(handle["pull_secret"])),
                )
        finally:
            adapter.close()
        return ""

    def _adapter(self, spec: LaunchSpec) -> KubernetesAdapter:
        kubeconfig = spec.connection.get("kubeconfig") or get_settings().kubeconfig
        return KubernetesAdapter.from_config(str(kubeconfig) if kubeconfig else None)


def _labels(spec: LaunchSpec) -> dict[str, str]:
    return {**MANAGED_BY, INSTANCE_LABEL: str(spec.instance_id), **spec.labels}


def deployment_manifest(spec: LaunchSpec, handle: Mapping[str, Any]) -> dict[str, Any]:
    name, namespace = str(handle["deployment"]), str(handle["namespace"])
    resources = {"cpu": f"{round(spec.cpus * 1000)}m", "memory": f"{spec.memory_mb}Mi"}
    pod_spec: dict[str, Any] = {
        "automountServiceAccountToken": False,
        "enableServiceLinks": False,
        "securityContext": {"seccompProfile": {"type": "RuntimeDefault"}},
        "containers": [
            {
                "name": "server",
                "image": spec.image,
                "env": [{"name": "PORT", "value": str(SERVER_PORT)}],
                "ports": [{"name": PORT_NAME, "containerPort": SERVER_PORT, "protocol": "TCP"}],
                "resources": {"limits": resources, "requests": dict(resources)},
                "securityContext": {
                    "allowPrivilegeEscalation": False,
                    "privileged": False,
                    "readOnlyRootFilesystem": True,
                    "capabilities": {"drop": ["ALL"]},
                },
                "readinessProbe": {
                    **_readiness_check(spec),
                    "periodSeconds": 2,
                    "failureThreshold": 3,
                },
                "volumeMounts": [{"name": "tmp", "mountPath": "/tmp"}],
            }
        ],
        "volumes": [{"name": "tmp", "emptyDir": {"medium": "Memory", "sizeLimit": "16Mi"}}],
    }
    if handle.get("pull_secret"):
        pod_spec["imagePullSecrets"] = [{"name": str(handle["pull_secret"])}]
    return {
        "apiVersion": "apps/v1",
        "kind": "Deployment",
        "metadata": {
            "name": name,
            "namespace": namespace,
            "labels": _labels(spec),
            "annotations": {SERVER_ANNOTATION: f"{spec.tenant}/{spec.server}"},
        },
        "spec": {
            "replicas": 1,
            "progressDeadlineSeconds": max(
                10, math.ceil(get_settings().runtime_probe_timeout_seconds)
            ),
            "selector": {"matchLabels": {INSTANCE_LABEL: str(spec.instance_id)}},
            "template": {"metadata": {"labels": _labels(spec)}, "spec": pod_spec},
        },
    }


def _readiness_check(spec: LaunchSpec) -> dict[str, Any]:
    if spec.probe_kind is ProbeKind.HTTP:
        return {"httpGet": {"path": spec.probe_path, "port": PORT_NAME}}
    return {"tcpSocket": {"port": PORT_NAME}}


def _said(text: str) -> str:
    """What an answer through the proxy says: the API server's own Status message (no
    endpoints ready), else the start of the server's body."""
    try:
        status = json.loads(text)
    except ValueError:
        return text.strip()[:200]
    if isinstance(status, dict) and status.get("kind") == "Status":
        return str(status.get("message") or "")
    return text.strip()[:200]


def service_manifest(spec: LaunchSpec, handle: Mapping[str, Any]) -> dict[str, Any]:
    return {
        "apiVersion": "v1",
        "kind": "Service",
        "metadata": {
            "name": str(handle["service"]),
            "namespace": str(handle["namespace"]),
            "labels": _labels(spec),
            "annotations": {SERVER_ANNOTATION: f"{spec.tenant}/{spec.server}"},
        },
        "spec": {
            "type": "ClusterIP",
            "selector": {INSTANCE_LABEL: str(spec.instance_id)},
            "ports": [
                {"name": PORT_NAME, "port": SERVER_PORT, "targetPort": PORT_NAME, "protocol": "TCP"}
            ],
        },
    }

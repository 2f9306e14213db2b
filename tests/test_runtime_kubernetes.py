"""The runtime's Kubernetes executor, against the API stand-in (``tests/kube_standin.py``).

A launch on a ``kubernetes`` target makes an image-pull Secret, a Deployment and a Service
through the client (each checked against the Kubernetes schema by the stand-in), reads the
rollout back from the Deployment's status and sends the MCP ``initialize`` call through the API
server's proxy to the Service, where ``McpPod`` answers as the server's pod would.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from dispatch.enqueue import enqueue
from models.db import session_scope
from models.jobs import DeadLetter
from models.runtime import RuntimeInstance
from models.trust import TrustState
from tasks.runtime import servers
from testkit.registry import RegistryServer
from tests.conftest import wait_for_job
from tests.kube_standin import KubeStandIn
from tests.runtime_world import (
    BROKEN_ANSWER,
    PROBE_PATH,
    TENANT,
    McpImages,
    McpPod,
    history,
    instance_of,
    launch,
)
from tests.test_evaluation import asset_in

NAMESPACE = "mcp-servers"


def kubernetes_target(kubeconfig: Path) -> None:
    asset_in(TrustState.TRUSTED, TENANT, "k8s-cluster-1")
    servers.put_target(
        name="k8s-1",
        backend="kubernetes",
        asset=f"{TENANT}/k8s-cluster-1",
        platforms=["linux/amd64"],
        connection={"namespace": NAMESPACE, "kubeconfig": str(kubeconfig)},
        actor="test",
    )


def launch_on_kubernetes(digest: str) -> Any:
    return launch(digest, target="k8s-1")


def test_a_server_runs_as_a_locked_down_deployment_answers_through_its_service_and_stops(
    runtime_world: McpImages,
    kube_standin: KubeStandIn,
    kubeconfig_file: Path,
    mcp_pod: McpPod,
    registry_server: RegistryServer,
) -> None:
    kube_standin.pod_backend = mcp_pod.url
    kubernetes_target(kubeconfig_file)
    job = launch_on_kubernetes(runtime_world.good)
    assert job.status == "succeeded", job.error
    instance = instance_of(job)
    assert (instance.state, instance.target, instance.backend) == (
        "running",
        "k8s-1",
        "kubernetes",
    ), instance.reason
    name = f"drydock-rt-{instance.id}"
    assert instance.endpoint == f"http://{name}.{NAMESPACE}.svc:8080"
    assert instance.health is not None and "server echo-mcp 1.0" in instance.health["detail"]
    # The probe was the MCP call, sent through the API server's proxy to the Service's port.
    assert [(method, path) for method, path, _ in mcp_pod.requests] == [("POST", PROBE_PATH)]
    assert mcp_pod.requests[0][2]["method"] == "initialize"
    proxied = kube_standin.requests_to("POST")[-1]
    assert proxied.path == (f"/api/v1/namespaces/{NAMESPACE}/services/{name}:mcp/proxy{PROBE_PATH}")

    deployment = kube_standin.deployment(NAMESPACE, name)
    pod = deployment["spec"]["template"]["spec"]
    (container,) = pod["containers"]
    assert container["image"] == f"{runtime_world.repository}@{runtime_world.good}"
    assert container["securityContext"] == {
        "allowPrivilegeEscalation": False,
        "privileged": False,
        "readOnlyRootFilesystem": True,
        "capabilities": {"drop": ["ALL"]},
    }
    assert container["resources"]["limits"] == {"cpu": "1000m", "memory": "512Mi"}
    assert {"name": "PORT", "value": "8080"} in container["env"]
    assert container["readinessProbe"]["tcpSocket"] == {"port": "mcp"}
    assert pod["automountServiceAccountToken"] is False
    assert pod["securityContext"]["seccompProfile"] == {"type": "RuntimeDefault"}
    assert pod["imagePullSecrets"] == [{"name": f"{name}-pull"}]
    # The pull secret holds the stored registry login, as the kubelet reads it.
    auth = kube_standin.docker_config(NAMESPACE, f"{name}-pull")["auths"][registry_server.host]
    assert (auth["username"], auth["password"]) == (
        registry_server.username,
        registry_server.password,
    )
    service = kube_standin.services[(NAMESPACE, name)]
    selector = service["spec"]["selector"]
    assert selector.items() <= deployment["spec"]["template"]["metadata"]["labels"].items()
    assert service["spec"]["ports"] == [
        {"name": "mcp", "port": 8080, "targetPort": "mcp", "protocol": "TCP"}
    ]

    stopped = wait_for_job(
        enqueue("runtime.stop", {"instance_id": str(instance.id), "reason": "test over"}).id,
        timeout=60,
    )
    assert stopped.status == "succeeded", stopped.error
    assert [to for _, to, _ in history(instance.id)] == [
        "pending",
        "starting",
        "running",
        "draining",
        "stopped",
    ]
    assert (NAMESPACE, name) not in kube_standin.deployments
    assert (NAMESPACE, name) not in kube_standin.services
    assert (NAMESPACE, f"{name}-pull") not in kube_standin.secrets


def test_a_rollout_past_its_progress_deadline_fails_the_instance_and_removes_what_it_made(
    runtime_world: McpImages, kube_standin: KubeStandIn, kubeconfig_file: Path, mcp_pod: McpPod
) -> None:
    kube_standin.pod_backend = mcp_pod.url
    kube_standin.rollout_outcome = "progress_deadline_exceeded"
    kubernetes_target(kubeconfig_file)
    job = launch_on_kubernetes(runtime_world.good)
    assert job.status == "dead_lettered"
    instance = instance_of(job)
    assert instance.state == "failed"
    assert "exceeded its progress deadline" in instance.reason
    # Never ready: the proxy was never asked.
    assert mcp_pod.requests == []
    assert not kube_standin.deployments and not kube_standin.services
    assert not kube_standin.secrets


def test_a_pod_answering_initialize_with_an_error_fails_the_launch_with_its_words(
    runtime_world: McpImages, kube_standin: KubeStandIn, kubeconfig_file: Path, mcp_pod: McpPod
) -> None:
    kube_standin.pod_backend = mcp_pod.url
    mcp_pod.answer = BROKEN_ANSWER
    kubernetes_target(kubeconfig_file)
    job = launch_on_kubernetes(runtime_world.good)
    assert job.status == "dead_lettered"
    with session_scope() as session:
        instance = session.get(RuntimeInstance, instance_of(job).id)
        assert instance is not None and instance.state == "failed"
        assert "the server is broken" in instance.reason
        letter = session.query(DeadLetter).filter(DeadLetter.job_id == job.id).one()
        assert "the server is broken" in letter.message
    assert not kube_standin.deployments


def test_a_kubernetes_target_is_added_with_its_namespace_and_a_bad_one_is_refused(
    clean_state: None, kubeconfig_file: Path
) -> None:
    from tests.test_cli import assert_one_line_error, drydock

    asset_in(TrustState.TRUSTED, TENANT, "k8s-cluster-2")
    common = ("--backend", "kubernetes", "--asset", f"{TENANT}/k8s-cluster-2",
              "--platform", "linux/amd64", "--kubeconfig", str(kubeconfig_file))  # fmt: skip
    refused = drydock("runtime", "targets", "add", "k8s-2", *common, "--namespace", "Not_A_Label")
    assert_one_line_error(refused, "namespace 'Not_A_Label'")
    assert servers.list_targets() == []
    saved = drydock("runtime", "targets", "add", "k8s-2", *common, "--namespace", NAMESPACE)
    assert saved.returncode == 0, saved.stderr
    (target,) = servers.list_targets()
    assert target["connection"] == {"namespace": NAMESPACE, "kubeconfig": str(kubeconfig_file)}
    with_docker_key = servers.connection_problems("kubernetes", {"docker_host": "unix:///x"})
    assert with_docker_key == [
        "connection 'docker_host': a kubernetes target takes namespace, kubeconfig"
    ]

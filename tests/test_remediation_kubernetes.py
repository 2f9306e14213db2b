"""The ``kubernetes`` executor, called in-process against the Kubernetes API stand-in
(tests/kube_standin.py: no API server can run here). The stand-in serves TLS and checks a bearer
token, so the kubeconfig's CA and credentials are used for real; it records every request, so
the tests assert what a real API server would receive: paths, bodies and patch content types."""

from __future__ import annotations

import uuid
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import pytest
from pydantic import ValidationError

from adapters.kubernetes import RESTARTED_AT_ANNOTATION, KubernetesAdapter, KubernetesApiError
from kernel.settings import get_settings
from tasks.remediation.executors.base import (
    Executor,
    ExecutorUnavailableError,
    RunContext,
    StepResult,
    Target,
)
from tasks.remediation.executors.kubernetes import KubernetesExecutor, KubernetesSpec
from tests.kube_standin import KubeStandIn, write_kubeconfig

STRATEGIC_MERGE_PATCH = "application/strategic-merge-patch+json"
# Short retry and poll intervals: the tests' stand-in answers at once.
RETRY_SECONDS = 0.2
POLL_SECONDS = 0.05


def target(name: str = "worker-1", **connection: Any) -> Target:
    return Target(
        asset_id=uuid.uuid4(),
        tenant="acme",
        name=name,
        kind="kubernetes_node",
        connection=connection,
    )


def run_context(timeout_seconds: float = 20) -> RunContext:
    return RunContext.starting_now(uuid.uuid4(), 1, timeout_seconds)


def run_spec(
    kubeconfig: Path | str | None,
    actions: list[Mapping[str, Any]],
    on: Target | None = None,
    run: RunContext | None = None,
) -> list[StepResult]:
    spec = KubernetesSpec.model_validate({"actions": actions})
    executor = KubernetesExecutor(
        str(kubeconfig) if kubeconfig else None,
        eviction_retry_seconds=RETRY_SECONDS,
        poll_seconds=POLL_SECONDS,
    )
    return list(executor.execute(spec, on or target(), run or run_context()))


def test_the_executor_is_a_kubernetes_executor() -> None:
    executor: Executor = KubernetesExecutor()
    assert executor.kind == "kubernetes"
    assert executor.spec_model is KubernetesSpec


def test_cordon_marks_the_node_unschedulable_with_a_strategic_merge_patch(
    kube_standin: KubeStandIn, kubeconfig_file: Path
) -> None:
    kube_standin.add_node("worker-1")
    kube_standin.add_node("worker-2")

    [step] = run_spec(kubeconfig_file, [{"action": "cordon"}])

    assert step.ok, step.error
    assert step.name == "cordon node worker-1"
    assert step.outputs == {"node": "worker-1", "unschedulable": True, "changed": True}
    assert kube_standin.node("worker-1")["spec"]["unschedulable"] is True
    assert "unschedulable" not in kube_standin.node("worker-2")["spec"]
    [patch] = kube_standin.requests_to("PATCH")
    assert patch.path == "/api/v1/nodes/worker-1"
    assert patch.content_type == STRATEGIC_MERGE_PATCH
    assert patch.body == {"spec": {"unschedulable": True}}
    # Every request carried the kubeconfig's token.
    assert {r.authorization for r in kube_standin.requests} == {f"Bearer {kube_standin.token}"}

    # Cordoning again changes nothing and sends no patch.
    [again] = run_spec(kubeconfig_file, [{"action": "cordon"}])
    assert again.ok
    assert again.outputs["changed"] is False
    assert "already cordoned" in again.stdout
    assert len(kube_standin.requests_to("PATCH")) == 1


def test_uncordon_removes_the_field_as_kubectl_does(
    kube_standin: KubeStandIn, kubeconfig_file: Path
) -> None:
    kube_standin.add_node("worker-1", unschedulable=True)

    [step] = run_spec(kubeconfig_file, [{"action": "uncordon"}])

    assert step.ok, step.error
    assert step.outputs["changed"] is True
    assert "unschedulable" not in kube_standin.node("worker-1")["spec"]
    [patch] = kube_standin.requests_to("PATCH")
    assert patch.content_type == STRATEGIC_MERGE_PATCH
    assert patch.body == {"spec": {"unschedulable": None}}


def test_the_node_comes_from_the_targets_connection_or_the_spec(
    kube_standin: KubeStandIn, kubeconfig_file: Path
) -> None:
    kube_standin.add_node("ip-10-0-3-7.ec2.internal")
    kube_standin.add_node("worker-9")

    [from_connection] = run_spec(
        kubeconfig_file,
        [{"action": "cordon"}],
        on=target("gpu-host-7", kubernetes_node="ip-10-0-3-7.ec2.internal"),
    )
    [named] = run_spec(
        kubeconfig_file, [{"action": "cordon", "node": "worker-9"}], on=target("gpu-host-7")
    )

    assert from_connection.ok and named.ok
    assert kube_standin.node("ip-10-0-3-7.ec2.internal")["spec"]["unschedulable"] is True
    assert kube_standin.node("worker-9")["spec"]["unschedulable"] is True


def test_drain_cordons_evicts_and_leaves_daemonset_and_mirror_pods(
    kube_standin: KubeStandIn, kubeconfig_file: Path
) -> None:
    kube_standin.add_node("worker-1")
    kube_standin.add_node("worker-2")
    kube_standin.add_pod("shop", "web-1", "worker-1")
    kube_standin.add_pod("shop", "db-0", "worker-1", owner_kind="StatefulSet")
    kube_standin.add_pod("batch", "report-x1", "worker-1", owner_kind="Job", phase="Succeeded")
    kube_standin.add_pod("kube-system", "kube-proxy-abc", "worker-1", owner_kind="DaemonSet")
    kube_standin.add_pod("kube-system", "etcd-worker-1", "worker-1", mirror=True)
    kube_standin.add_pod("shop", "web-2", "worker-2")

    [step] = run_spec(kubeconfig_file, [{"action": "drain", "grace_seconds": 15}])

    assert step.ok, step.error
    assert step.name == "drain node worker-1"
    assert kube_standin.node("worker-1")["spec"]["unschedulable"] is True
    assert kube_standin.pod_names("worker-1") == [
        "kube-system/etcd-worker-1",
        "kube-system/kube-proxy-abc",
    ]
    assert kube_standin.pod_names("worker-2") == ["shop/web-2"]
    assert step.outputs["cordoned"] is True
    assert sorted(step.outputs["evicted"]) == ["batch/report-x1", "shop/db-0", "shop/web-1"]
    assert {s["pod"]: s["reason"] for s in step.outputs["skipped"]} == {
        "kube-system/etcd-worker-1": "mirror pod of a static pod (the kubelet owns it)",
        "kube-system/kube-proxy-abc": "managed by a DaemonSet (it would be recreated on this node)",
    }
    # Pods were listed by node, and each evicted through the Eviction API with its grace period.
    listing = kube_standin.requests_to("GET", "/api/v1/pods")[0]
    assert listing.query == {"fieldSelector": "spec.nodeName=worker-1"}
    evictions = kube_standin.requests_to("POST")
    assert sorted(r.path for r in evictions) == [
        "/api/v1/namespaces/batch/pods/report-x1/eviction",
        "/api/v1/namespaces/shop/pods/db-0/eviction",
        "/api/v1/namespaces/shop/pods/web-1/eviction",
    ]
    web = next(r for r in evictions if r.path.endswith("/web-1/eviction"))
    assert web.content_type == "application/json"
    assert web.body == {
        "apiVersion": "policy/v1",
        "kind": "Eviction",
        "metadata": {"name": "web-1", "namespace": "shop"},
        "deleteOptions": {"gracePeriodSeconds": 15},
    }
    assert "evicting pod shop/web-1" in step.stdout
    assert "node/worker-1 drained" in step.stdout


def test_drain_refuses_unmanaged_and_emptydir_pods_unless_told(
    kube_standin: KubeStandIn, kubeconfig_file: Path
) -> None:
    kube_standin.add_node("worker-1")
    kube_standin.add_pod("shop", "web-1", "worker-1")
    kube_standin.add_pod("ops", "debug-shell", "worker-1", owner_kind=None)
    kube_standin.add_pod("shop", "cache-0", "worker-1", owner_kind="StatefulSet", emptydir=True)

    [refused] = run_spec(kubeconfig_file, [{"action": "drain"}])

    assert not refused.ok
    assert refused.error is not None
    assert "cannot drain node worker-1" in refused.error
    assert "ops/debug-shell: not managed by a controller" in refused.error
    assert "force: true" in refused.error
    assert "shop/cache-0: using emptyDir volumes" in refused.error
    assert "delete_emptydir_data: true" in refused.error
    # Nothing was evicted, not even the pod that could have been.
    assert kube_standin.requests_to("POST") == []
    assert len(kube_standin.pod_names("worker-1")) == 3

    [forced] = run_spec(
        kubeconfig_file, [{"action": "drain", "force": True, "delete_emptydir_data": True}]
    )
    assert forced.ok, forced.error
    assert kube_standin.pod_names("worker-1") == []


def test_drain_retries_an_eviction_a_disruption_budget_refuses(
    kube_standin: KubeStandIn, kubeconfig_file: Path
) -> None:
    kube_standin.add_node("worker-1")
    kube_standin.add_pod("shop", "web-1", "worker-1")
    kube_standin.add_pod("shop", "web-2", "worker-1")
    kube_standin.refuse_eviction("shop", "web-1", times=2)

    [step] = run_spec(kubeconfig_file, [{"action": "drain"}])

    assert step.ok, step.error
    assert kube_standin.pod_names("worker-1") == []
    attempts = kube_standin.requests_to("POST", "/api/v1/namespaces/shop/pods/web-1/eviction")
    assert len(attempts) == 3
    assert len(kube_standin.requests_to("POST")) == 4
    assert step.outputs["eviction_refusals"] == {"shop/web-1": 2}
    assert "violate the pod's disruption budget" in step.stdout


def test_a_budget_that_never_allows_fails_the_drain_within_the_time_limit(
    kube_standin: KubeStandIn, kubeconfig_file: Path
) -> None:
    kube_standin.add_node("worker-1")
    kube_standin.add_pod("shop", "web-1", "worker-1")
    kube_standin.add_pod("shop", "web-2", "worker-1")
    kube_standin.refuse_eviction("shop", "web-1", budget="web-pdb")
    run = run_context(timeout_seconds=1.5)

    steps = run_spec(kubeconfig_file, [{"action": "drain"}, {"action": "uncordon"}], run=run)

    [step] = steps  # the uncordon after it never ran
    assert not step.ok
    assert not step.timed_out
    assert step.error is not None
    assert step.error.startswith("eviction of pod shop/web-1 refused: Cannot evict pod")
    assert "The disruption budget web-pdb needs 2 healthy pods" in step.error
    assert "time limit of 1.5s" in step.error
    # It gave up before the run's deadline, having retried, and the other pod went.
    assert run.remaining() > 0
    assert len(kube_standin.requests_to("POST", "/api/v1/namespaces/shop/pods/web-1/eviction")) > 1
    assert kube_standin.pod_names("worker-1") == ["shop/web-1"]
    assert step.outputs["evicted"] == ["shop/web-2"]
    refusals = step.outputs["eviction_refusals"]["shop/web-1"]
    assert f"refused {refusals} times" in step.error
    assert kube_standin.node("worker-1")["spec"]["unschedulable"] is True


def test_drain_waits_for_evicted_pods_and_times_out_on_one_that_stays(
    kube_standin: KubeStandIn, kubeconfig_file: Path
) -> None:
    kube_standin.add_node("worker-1")
    kube_standin.add_pod("shop", "web-1", "worker-1")
    kube_standin.pods_linger = True
    run = run_context(timeout_seconds=1)

    [step] = run_spec(kubeconfig_file, [{"action": "drain"}], run=run)

    assert not step.ok
    assert step.timed_out
    assert step.error == run.timeout_message()
    assert step.outputs["terminating"] == ["shop/web-1"]
    # It kept looking until the deadline rather than trusting the eviction's answer.
    assert len(kube_standin.requests_to("GET", "/api/v1/pods")) > 2


def test_restart_deployment_patches_the_template_annotation_and_waits_for_the_rollout(
    kube_standin: KubeStandIn, kubeconfig_file: Path
) -> None:
    kube_standin.add_deployment("shop", "web", replicas=3)

    [step] = run_spec(
        kubeconfig_file, [{"action": "restart_deployment", "namespace": "shop", "name": "web"}]
    )

    assert step.ok, step.error
    assert step.name == "restart deployment shop/web"
    [patch] = kube_standin.requests_to("PATCH")
    assert patch.path == "/apis/apps/v1/namespaces/shop/deployments/web"
    assert patch.content_type == STRATEGIC_MERGE_PATCH
    restarted_at = step.outputs["restarted_at"]
    assert patch.body == {
        "spec": {"template": {"metadata": {"annotations": {RESTARTED_AT_ANNOTATION: restarted_at}}}}
    }
    deployment = kube_standin.deployment("shop", "web")
    assert deployment["spec"]["template"]["metadata"]["annotations"] == {
        RESTARTED_AT_ANNOTATION: restarted_at
    }
    # The patch merged: the template's labels and containers are still there.
    assert deployment["spec"]["template"]["metadata"]["labels"] == {"app": "web"}
    assert deployment["spec"]["template"]["spec"]["containers"][0]["name"] == "web"
    assert deployment["metadata"]["generation"] == 2
    assert step.outputs["rollout"]["observed_generation"] == 2
    assert step.outputs["rollout"]["updated_replicas"] == 3
    assert kube_standin.requests_to("GET", "/apis/apps/v1/namespaces/shop/deployments/web")
    assert "successfully rolled out" in step.stdout


def test_a_rollout_that_does_not_finish_times_out_and_a_stalled_one_fails(
    kube_standin: KubeStandIn, kubeconfig_file: Path
) -> None:
    kube_standin.add_deployment("shop", "web", replicas=3)
    restart = {"action": "restart_deployment", "namespace": "shop", "name": "web"}

    kube_standin.rollout_outcome = "stuck"
    run = run_context(timeout_seconds=1)
    [stuck] = run_spec(kubeconfig_file, [restart], run=run)
    assert stuck.timed_out and not stuck.ok
    assert stuck.error == run.timeout_message()
    assert "1 of 3 replicas updated" in stuck.stdout

    kube_standin.rollout_outcome = "progress_deadline_exceeded"
    [stalled] = run_spec(kubeconfig_file, [restart])
    assert not stalled.ok and not stalled.timed_out
    assert stalled.error == "deployment shop/web exceeded its progress deadline"

    # Without waiting, the restart is done when the patch is accepted.
    [unwaited] = run_spec(kubeconfig_file, [{**restart, "wait": False}])
    assert unwaited.ok
    assert "rollout" not in unwaited.outputs


def test_a_missing_node_or_deployment_is_a_failed_step_that_says_so(
    kube_standin: KubeStandIn, kubeconfig_file: Path
) -> None:
    kube_standin.add_deployment("shop", "web")

    steps = run_spec(
        kubeconfig_file,
        [
            {"action": "drain", "node": "ghost"},
            {"action": "restart_deployment", "namespace": "shop", "name": "web"},
        ],
    )

    [step] = steps
    assert not step.ok
    assert step.error == f"node 'ghost' not found at {kube_standin.url}"
    assert kube_standin.requests_to("PATCH") == []

    [missing] = run_spec(
        kubeconfig_file, [{"action": "restart_deployment", "namespace": "shop", "name": "api"}]
    )
    assert missing.error == (
        f"deployment 'api' not found in namespace 'shop' at {kube_standin.url}"
    )


def test_a_forbidden_request_is_a_failed_step_with_the_apis_reason(
    kube_standin: KubeStandIn, kubeconfig_file: Path
) -> None:
    kube_standin.add_node("worker-1")
    kube_standin.add_pod("shop", "web-1", "worker-1")
    forbidden = (
        'pods "web-1" is forbidden: User "system:serviceaccount:drydock:worker" cannot create '
        'resource "pods/eviction" in API group "" in the namespace "shop"'
    )
    kube_standin.fail(403, method="POST", message=forbidden)

    [step] = run_spec(kubeconfig_file, [{"action": "drain"}])

    assert not step.ok
    assert step.error == f"eviction of pod shop/web-1 refused (403): {forbidden}"


def test_wrong_credentials_are_a_failed_step_naming_the_kubeconfig(
    kube_standin: KubeStandIn, tmp_path: Path
) -> None:
    kube_standin.add_node("worker-1")
    kubeconfig = write_kubeconfig(
        tmp_path / "config", kube_standin.url, "not-the-token", kube_standin.ca_pem
    )

    [step] = run_spec(kubeconfig, [{"action": "cordon"}])

    assert not step.ok
    assert step.error is not None
    assert "refused the credentials of the kubeconfig (401 Unauthorized)" in step.error
    assert "unschedulable" not in kube_standin.node("worker-1")["spec"]


def test_an_api_server_not_trusted_by_the_kubeconfig_is_not_talked_to(
    kube_standin: KubeStandIn, tmp_path: Path
) -> None:
    other_ca = KubeStandIn(tmp_path / "other").ca_pem
    kubeconfig = write_kubeconfig(
        tmp_path / "config", kube_standin.url, kube_standin.token, other_ca
    )

    with pytest.raises(ExecutorUnavailableError, match="CERTIFICATE_VERIFY_FAILED"):
        run_spec(kubeconfig, [{"action": "cordon"}])
    # The token never went to a server the kubeconfig does not trust.
    assert kube_standin.requests == []


def test_an_unreachable_or_failing_api_raises_executor_unavailable(
    kube_standin: KubeStandIn, kubeconfig_file: Path
) -> None:
    kube_standin.add_node("worker-1")
    kube_standin.fail(500, method="PATCH")

    with pytest.raises(ExecutorUnavailableError, match="answered 500 to PATCH /api/v1/nodes"):
        run_spec(kubeconfig_file, [{"action": "cordon"}])

    kube_standin.fail(429, message="Too many requests, please try again later.")
    with pytest.raises(ExecutorUnavailableError, match="throttled GET /api/v1/nodes/worker-1"):
        run_spec(kubeconfig_file, [{"action": "cordon"}])

    kube_standin.stop()
    with pytest.raises(ExecutorUnavailableError, match=f"API at {kube_standin.url} is unreachable"):
        run_spec(kubeconfig_file, [{"action": "cordon"}])


def test_no_usable_kubeconfig_raises_executor_unavailable(tmp_path: Path) -> None:
    with pytest.raises(ExecutorUnavailableError, match="does not exist"):
        run_spec(tmp_path / "absent", [{"action": "cordon"}])
    garbage = tmp_path / "garbage"
    garbage.write_text("just a line\n")
    with pytest.raises(ExecutorUnavailableError, match="no usable Kubernetes API configuration"):
        run_spec(garbage, [{"action": "cordon"}])


def test_the_executor_reads_the_kubeconfig_setting(
    kube_standin: KubeStandIn, kubeconfig_file: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    kube_standin.add_node("worker-1")
    monkeypatch.setenv("DRYDOCK_KUBECONFIG", str(kubeconfig_file))
    get_settings.cache_clear()
    try:
        [step] = run_spec(None, [{"action": "cordon"}])
    finally:
        monkeypatch.undo()
        get_settings.cache_clear()

    assert step.ok, step.error
    assert kube_standin.node("worker-1")["spec"]["unschedulable"] is True


def test_the_standin_refuses_patches_a_real_api_server_would_refuse(
    kube_standin: KubeStandIn, kubeconfig_file: Path
) -> None:
    # What makes the content-type assertions above worth something: a plain JSON body is no
    # patch to the API server (415), as it is not to the stand-in.
    kube_standin.add_node("worker-1")
    adapter = KubernetesAdapter.from_config(str(kubeconfig_file))
    try:
        with pytest.raises(KubernetesApiError, match=r"\(415\): the body of the request") as info:
            adapter.request(
                "PATCH",
                "/api/v1/nodes/worker-1",
                body={"spec": {"unschedulable": True}},
                content_type="application/json",
            )
    finally:
        adapter.close()
    assert info.value.status == 415
    assert "unschedulable" not in kube_standin.node("worker-1")["spec"]


@pytest.mark.parametrize(
    ("actions", "problem"),
    [
        ([], "at least 1 item"),
        ([{"action": "reboot"}], "does not match any of the expected tags"),
        ([{"action": "cordon", "node": "Worker_1"}], "is not a Kubernetes object name"),
        (
            [{"action": "restart_deployment", "namespace": "a.b", "name": "web"}],
            "is not a namespace name",
        ),
        ([{"action": "restart_deployment", "namespace": "shop"}], "Field required"),
        ([{"action": "drain", "grace_seconds": -1}], "greater than or equal to 0"),
        ([{"action": "cordon", "nodes": "worker-1"}], "Extra inputs are not permitted"),
        ([{"action": "cordon"}] * 51, "at most 50 items"),
    ],
)
def test_spec_validation_says_what_is_wrong(actions: list[dict[str, Any]], problem: str) -> None:
    with pytest.raises(ValidationError, match=problem):
        KubernetesSpec.model_validate({"actions": actions})


def test_a_target_name_that_is_no_node_name_fails_the_step(
    kube_standin: KubeStandIn, kubeconfig_file: Path
) -> None:
    [step] = run_spec(kubeconfig_file, [{"action": "cordon"}], on=target("GPU Host 7"))

    assert not step.ok
    assert step.error is not None
    assert step.error.startswith("no node to act on: 'GPU Host 7' is not a Kubernetes object name")
    assert kube_standin.requests == []

"""The ``kubernetes`` executor: cordon, uncordon or drain a node, restart a deployment.

Every request goes through ``adapters.kubernetes.KubernetesAdapter`` (built from
``DRYDOCK_KUBECONFIG`` or the in-cluster service account, bounded by the run's deadline). The
API unreachable, a 5xx, or a 429 that is the API server throttling raise
``ExecutorUnavailableError`` (the run is retried later); any other 4xx the adapter raises as
``KubernetesApiError``, whose message names what was refused and the API's own reason (node not
found, forbidden for this service account, eviction refused by a disruption budget), ends the
step as failed.

A drain works like ``kubectl drain --ignore-daemonsets``: it cordons the node, leaves DaemonSet
pods and mirror (static) pods alone, refuses (before evicting anything) when a pod has no
controller to recreate it unless ``force`` is set, or has emptyDir data unless
``delete_emptydir_data`` is set, evicts the rest through the Eviction API, retrying refusals
from disruption budgets within the run's time budget, and waits for the evicted pods to be gone.
A node a failed drain cordoned stays cordoned: the playbook's next run, or ``uncordon``, decides.
"""

from __future__ import annotations

import time
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import datetime
from typing import Annotated, Any, ClassVar, Literal

from pydantic import Field

from adapters.kubernetes import (
    RESTARTED_AT_ANNOTATION,
    EvictionRefusedError,
    KubernetesAdapter,
    KubernetesApiError,
    KubernetesTimeoutError,
    KubernetesUnavailableError,
    PodOnNode,
)
from kernel.kubernetes_names import NamespaceName, ObjectName, object_name_problem
from kernel.settings import get_settings
from tasks.remediation.executors.base import (
    ExecutorKind,
    ExecutorSpec,
    RunContext,
    StepResult,
    Target,
    unavailable_as_executor_error,
    utcnow,
)

MAX_ACTIONS = 50
# kubectl drain retries an eviction a disruption budget refused every 5 s.
EVICTION_RETRY_SECONDS = 5.0
POLL_SECONDS = 1.0
FINISHED_POD_PHASES = ("Succeeded", "Failed")

_NODE_DESCRIPTION = (
    "Node to act on; default: the target's `kubernetes_node` connection variable, else the "
    "target's name."
)


class CordonAction(ExecutorSpec):
    """Mark the node unschedulable: no new pods land on it; running pods stay."""

    action: Literal["cordon"] = Field(description="Mark a node unschedulable.")
    node: ObjectName | None = Field(None, description=_NODE_DESCRIPTION)


class UncordonAction(ExecutorSpec):
    """Make the node schedulable again."""

    action: Literal["uncordon"] = Field(description="Make a node schedulable again.")
    node: ObjectName | None = Field(None, description=_NODE_DESCRIPTION)


class DrainAction(ExecutorSpec):
    """Cordon the node and evict its pods, as ``kubectl drain --ignore-daemonsets`` does."""

    action: Literal["drain"] = Field(
        description="Cordon a node and evict its pods through the Eviction API."
    )
    node: ObjectName | None = Field(None, description=_NODE_DESCRIPTION)
    grace_seconds: int | None = Field(
        None,
        ge=0,
        le=3600,
        description=(
            "Termination grace period given to each evicted pod; default: each pod's own "
            "terminationGracePeriodSeconds."
        ),
    )
    force: bool = Field(
        False,
        description=(
            "Also evict running pods no controller manages (no ReplicaSet, StatefulSet, Job...): "
            "they are deleted and nothing recreates them. Without it the drain refuses."
        ),
    )
    delete_emptydir_data: bool = Field(
        False,
        description=(
            "Also evict pods using emptyDir volumes, whose data is lost. Without it the drain "
            "refuses."
        ),
    )


class RestartDeploymentAction(ExecutorSpec):
    """Roll every pod of a deployment, as ``kubectl rollout restart`` does."""

    action: Literal["restart_deployment"] = Field(
        description="Restart a deployment's pods with a rolling update."
    )
    namespace: NamespaceName = Field(description="Namespace of the deployment.")
    name: ObjectName = Field(description="Name of the deployment.")
    wait: bool = Field(
        True,
        description=(
            "Wait (within the playbook's time limit) until the new rollout has finished, as "
            "`kubectl rollout status` judges it."
        ),
    )


KubernetesAction = Annotated[
    CordonAction | UncordonAction | DrainAction | RestartDeploymentAction,
    Field(discriminator="action"),
]


class KubernetesSpec(ExecutorSpec):
    """A ``kubernetes`` playbook: actions against the Kubernetes API, each one step, in order."""

    actions: list[KubernetesAction] = Field(
        min_length=1,
        max_length=MAX_ACTIONS,
        description=(
            "What to do, in order: `cordon`, `uncordon`, `drain` (a node) or "
            "`restart_deployment`. The run stops at the first action that fails."
        ),
    )


class _StepFailed(Exception):
    def __init__(self, error: str) -> None:
        super().__init__(error)
        self.error = error


class _StepTimedOut(Exception):
    pass


@dataclass
class _Step:
    """One action's record while it runs: a transcript (stdout) and what changed (outputs)."""

    name: str
    started_at: datetime
    outputs: dict[str, Any]
    lines: list[str]

    def say(self, line: str) -> None:
        self.lines.append(line)

    def result(self, error: str | None = None, timed_out: bool = False) -> StepResult:
        return StepResult(
            name=self.name,
            ok=error is None,
            started_at=self.started_at,
            finished_at=utcnow(),
            stdout="".join(f"{line}\n" for line in self.lines),
            outputs=self.outputs,
            error=error,
            timed_out=timed_out,
        )


class KubernetesExecutor:
    """Runs a KubernetesSpec against the target's node (or the deployments it names)."""

    kind: ClassVar[ExecutorKind] = ExecutorKind.KUBERNETES
    # type[ExecutorSpec], not type[KubernetesSpec]: the Executor protocol's attribute is
    # mutable, so mypy holds implementations to exactly its type.
    spec_model: ClassVar[type[ExecutorSpec]] = KubernetesSpec

    def __init__(
        self,
        kubeconfig: str | None = None,
        *,
        eviction_retry_seconds: float = EVICTION_RETRY_SECONDS,
        poll_seconds: float = POLL_SECONDS,
    ) -> None:
        self._kubeconfig = kubeconfig
        self._eviction_retry_seconds = eviction_retry_seconds
        self._poll_seconds = poll_seconds

    def execute(
        self, spec: KubernetesSpec, target: Target, run: RunContext
    ) -> Iterator[StepResult]:
        with unavailable_as_executor_error(KubernetesUnavailableError):
            adapter = KubernetesAdapter.from_config(
                self._kubeconfig or get_settings().kubeconfig, deadline=run.deadline
            )
        # A simulation's every write is a server-side dry run: the API checks and answers it
        # (admission, validation, budgets) and persists nothing.
        adapter.dry_run = run.simulation
        try:
            for action in spec.actions:
                with unavailable_as_executor_error(KubernetesUnavailableError):
                    result = self._run_action(adapter, action, target, run)
                yield result
                if not result.ok:
                    return
        finally:
            adapter.close()

    def _run_action(
        self,
        adapter: KubernetesAdapter,
        action: CordonAction | UncordonAction | DrainAction | RestartDeploymentAction,
        target: Target,
        run: RunContext,
    ) -> StepResult:
        if isinstance(action, RestartDeploymentAction):
            step = _Step(f"restart deployment {action.namespace}/{action.name}", utcnow(), {}, [])
        else:
            node = action.node or _target_node(target)
            step = _Step(f"{action.action} node {node}", utcnow(), {"node": node}, [])
        try:
            if isinstance(action, RestartDeploymentAction):
                self._restart_deployment(adapter, action, step, run)
            else:
                problem = object_name_problem(node)
                if problem:
                    raise _StepFailed(f"no node to act on: {problem}")
                if isinstance(action, DrainAction):
                    self._drain(adapter, node, action, step, run)
                else:
                    self._set_unschedulable(adapter, node, isinstance(action, CordonAction), step)
        except _StepFailed as failed:
            return step.result(failed.error)
        except (_StepTimedOut, KubernetesTimeoutError):
            return step.result(run.timeout_message(), timed_out=True)
        except KubernetesApiError as exc:
            return step.result(str(exc))
        return step.result()

    def _set_unschedulable(
        self, adapter: KubernetesAdapter, node: str, unschedulable: bool, step: _Step
    ) -> None:
        changed = adapter.set_unschedulable(node, unschedulable)
        step.outputs.update(unschedulable=unschedulable, changed=changed)
        done = "cordoned" if unschedulable else "uncordoned"
        step.say(f"node/{node} {done if changed else 'already ' + done}")

    def _drain(
        self,
        adapter: KubernetesAdapter,
        node: str,
        action: DrainAction,
        step: _Step,
        run: RunContext,
    ) -> None:
        cordoned = adapter.cordon(node)
        step.say(f"node/{node} {'cordoned' if cordoned else 'already cordoned'}")
        evicted: list[str] = []
        skipped: list[dict[str, str]] = []
        step.outputs.update(cordoned=cordoned, evicted=evicted, skipped=skipped)

        to_evict: list[PodOnNode] = []
        blocked: dict[str, list[str]] = {}
        for pod in adapter.pods_on_node(node):
            reason = _skip_reason(pod)
            if reason:
                skipped.append({"pod": pod.ref, "reason": reason})
                step.say(f"skipping pod {pod.ref}: {reason}")
                continue
            finished = pod.phase in FINISHED_POD_PHASES
            if pod.controller_kind is None and not finished and not action.force:
                blocked.setdefault(
                    "not managed by a controller, so nothing would recreate them "
                    "(force: true evicts them anyway)",
                    [],
                ).append(pod.ref)
            if pod.emptydir_volumes and not finished and not action.delete_emptydir_data:
                blocked.setdefault(
                    "using emptyDir volumes, whose data would be lost "
                    "(delete_emptydir_data: true evicts them anyway)",
                    [],
                ).append(pod.ref)
            to_evict.append(pod)
        if blocked:
            step.outputs["blocked"] = {reason: refs for reason, refs in blocked.items()}
            problems = "; ".join(f"{', '.join(refs)}: {why}" for why, refs in blocked.items())
            raise _StepFailed(f"cannot drain node {node}: pods {problems}")

        evicted_pods = self._evict_all(adapter, to_evict, action.grace_seconds, step, run)
        if adapter.dry_run:
            step.say(f"node/{node} would be drained (dry run: nothing was evicted)")
            return
        self._wait_until_gone(adapter, node, evicted_pods, step, run)

    def _evict_all(
        self,
        adapter: KubernetesAdapter,
        pods: list[PodOnNode],
        grace_seconds: int | None,
        step: _Step,
        run: RunContext,
    ) -> list[PodOnNode]:
        """Evict every pod (each one is added to the step's ``evicted`` output as it goes); a
        disruption budget's refusal is retried, other pods first, every
        ``eviction_retry_seconds`` while the run's time allows another attempt. The pods
        evicted; those already gone are not among them."""
        started = time.monotonic()
        evicted: list[PodOnNode] = []
        refusals: dict[str, int] = {}
        pending = list(pods)
        while True:
            refused: list[tuple[PodOnNode, EvictionRefusedError]] = []
            for pod in pending:
                try:
                    adapter.evict(pod.namespace, pod.name, grace_seconds)
                except EvictionRefusedError as exc:
                    refused.append((pod, exc))
                    refusals[pod.ref] = refusals.get(pod.ref, 0) + 1
                    step.outputs["eviction_refusals"] = refusals
                    # Said once per pod: retries every few seconds for an hour would bury the
                    # transcript; the count is in the outputs.
                    if refusals[pod.ref] == 1:
                        step.say(f"{exc}; retrying every {self._eviction_retry_seconds:g}s")
                    continue
                except KubernetesApiError as exc:
                    if exc.status != 404:
                        raise
                    step.say(f"pod {pod.ref} already gone")
                    continue
                evicted.append(pod)
                step.outputs["evicted"].append(pod.ref)
                step.say(f"evicting pod {pod.ref}")
            if not refused:
                return evicted
            pending = [pod for pod, _ in refused]
            if run.remaining() <= self._eviction_retry_seconds:
                pod, first = refused[0]
                raise _StepFailed(
                    f"{first}; refused {refusals[pod.ref]} times over "
                    f"{time.monotonic() - started:.0f}s, and the playbook's time limit of "
                    f"{run.timeout_seconds:g}s leaves no time for another attempt"
                )
            time.sleep(self._eviction_retry_seconds)

    def _wait_until_gone(
        self,
        adapter: KubernetesAdapter,
        node: str,
        evicted: list[PodOnNode],
        step: _Step,
        run: RunContext,
    ) -> None:
        """Like kubectl drain: the step ends when the evicted pods have left the node."""
        waiting = {pod.uid or pod.ref for pod in evicted}
        while waiting:
            still_there = [
                pod for pod in adapter.pods_on_node(node) if (pod.uid or pod.ref) in waiting
            ]
            if not still_there:
                break
            step.outputs["terminating"] = [pod.ref for pod in still_there]
            waiting = {pod.uid or pod.ref for pod in still_there}
            if run.remaining() <= 0:
                raise _StepTimedOut()
            time.sleep(min(self._poll_seconds, run.remaining()))
        step.outputs.pop("terminating", None)
        step.say(f"node/{node} drained")

    def _restart_deployment(
        self,
        adapter: KubernetesAdapter,
        action: RestartDeploymentAction,
        step: _Step,
        run: RunContext,
    ) -> None:
        subject = f"deployment {action.namespace}/{action.name}"
        restarted_at = adapter.restart_deployment(action.namespace, action.name)
        step.outputs.update(
            namespace=action.namespace, deployment=action.name, restarted_at=restarted_at
        )
        step.say(f"{subject} restarted ({RESTARTED_AT_ANNOTATION}={restarted_at})")
        if not action.wait or adapter.dry_run:
            return
        last_said = None
        while True:
            status = adapter.deployment_rollout_status(action.namespace, action.name)
            step.outputs["rollout"] = status.as_dict()
            if status.progress_deadline_exceeded:
                raise _StepFailed(f"{subject} exceeded its progress deadline")
            waiting_for = status.waiting_for()
            if waiting_for is None:
                step.say(f"{subject} successfully rolled out")
                return
            if waiting_for != last_said:
                step.say(f"waiting for {subject} rollout: {waiting_for}")
                last_said = waiting_for
            if run.remaining() <= 0:
                raise _StepTimedOut()
            time.sleep(min(self._poll_seconds, run.remaining()))


def _target_node(target: Target) -> str:
    node = target.connection.get("kubernetes_node")
    return str(node) if node else target.name


def _skip_reason(pod: PodOnNode) -> str | None:
    """Pods a drain leaves where they are, as ``kubectl drain --ignore-daemonsets`` does."""
    if pod.mirror:
        return "mirror pod of a static pod (the kubelet owns it)"
    if pod.controller_kind == "DaemonSet":
        return "managed by a DaemonSet (it would be recreated on this node)"
    return None

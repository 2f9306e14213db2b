"""The ``kubernetes`` executor: cordon, uncordon or drain a node, restart a deployment.

``KubernetesAdapter`` is the only code here that talks to the Kubernetes API. It is built from a
kubeconfig (``DRYDOCK_KUBECONFIG``) or the in-cluster service account through the official
client, which brings the kubeconfig's authentication (certificates, tokens, exec plugins) and
TLS settings; requests go through the client's ``ApiClient.call_api`` with explicit paths,
content types and plain JSON bodies, so each request is exactly what ``kubectl`` sends:

- ``cordon``/``uncordon``: ``GET`` then ``PATCH /api/v1/nodes/{name}`` with the strategic merge
  patch ``{"spec": {"unschedulable": true}}`` (uncordon: ``null``, which removes the field);
- ``pods_on_node``: ``GET /api/v1/pods?fieldSelector=spec.nodeName={name}``;
- ``evict``: ``POST /api/v1/namespaces/{ns}/pods/{pod}/eviction`` with a ``policy/v1``
  Eviction, so PodDisruptionBudgets are honoured (a refusal is a 429);
- ``restart_deployment``: ``PATCH /apis/apps/v1/namespaces/{ns}/deployments/{name}`` setting
  the pod template annotation ``kubectl.kubernetes.io/restartedAt``, as ``kubectl rollout
  restart`` does; ``deployment_rollout_status`` reads it back (``GET``) the way ``kubectl
  rollout status`` judges a rollout finished;
- ``apply_image_pull_secret`` (registry credential rotation, not playbooks): ``PUT
  /api/v1/namespaces/{ns}/secrets/{name}`` of a whole ``kubernetes.io/dockerconfigjson``
  Secret, or ``POST /api/v1/namespaces/{ns}/secrets`` when there is none yet.

Errors: the API unreachable, a 5xx, or a 429 that is the API server throttling raise
``ExecutorUnavailableError`` (the run is retried later); any other 4xx raises
``KubernetesApiError``, whose message names what was refused and the API's own reason (node not
found, forbidden for this service account, eviction refused by a disruption budget), and ends
the step as failed.

A drain works like ``kubectl drain --ignore-daemonsets``: it cordons the node, leaves DaemonSet
pods and mirror (static) pods alone, refuses (before evicting anything) when a pod has no
controller to recreate it unless ``force`` is set, or has emptyDir data unless
``delete_emptydir_data`` is set, evicts the rest through the Eviction API, retrying refusals
from disruption budgets within the run's time budget, and waits for the evicted pods to be gone.
A node a failed drain cordoned stays cordoned: the playbook's next run, or ``uncordon``, decides.
"""

from __future__ import annotations

import base64
import json
import re
import time
import urllib.parse
from collections.abc import Iterator, Mapping
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path
from typing import Annotated, Any, ClassVar, Literal

from pydantic import AfterValidator, Field

from kernel.errors import DrydockError
from kernel.settings import get_settings
from tasks.remediation.executors.base import (
    ExecutorKind,
    ExecutorSpec,
    ExecutorUnavailableError,
    RunContext,
    StepResult,
    Target,
    utcnow,
)

RESTARTED_AT_ANNOTATION = "kubectl.kubernetes.io/restartedAt"
# The kubelet puts this annotation on the API's copy of a static pod; evicting such a copy does
# nothing (the kubelet recreates it from its manifest), so drains leave them, as kubectl does.
MIRROR_POD_ANNOTATION = "kubernetes.io/config.mirror"
STRATEGIC_MERGE_PATCH = "application/strategic-merge-patch+json"
DOCKER_CONFIG_JSON_SECRET = "kubernetes.io/dockerconfigjson"
MAX_ACTIONS = 50
# One request may take this long when the run's deadline leaves more room.
DEFAULT_REQUEST_TIMEOUT_SECONDS = 30.0
# kubectl drain retries an eviction a disruption budget refused every 5 s.
EVICTION_RETRY_SECONDS = 5.0
POLL_SECONDS = 1.0
FINISHED_POD_PHASES = ("Succeeded", "Failed")

# Kubernetes object names: a DNS-1123 subdomain (nodes, deployments) or label (namespaces).
_SUBDOMAIN = re.compile(r"[a-z0-9]([-a-z0-9]*[a-z0-9])?(\.[a-z0-9]([-a-z0-9]*[a-z0-9])?)*")
_LABEL = re.compile(r"[a-z0-9]([-a-z0-9]*[a-z0-9])?")


def _subdomain_problem(value: str) -> str | None:
    if len(value) > 253 or not _SUBDOMAIN.fullmatch(value):
        return (
            f"{value!r} is not a Kubernetes object name: use at most 253 lowercase letters, "
            "digits, '-' and '.', starting and ending with a letter or digit"
        )
    return None


def _object_name(value: str) -> str:
    problem = _subdomain_problem(value)
    if problem:
        raise ValueError(problem)
    return value


def _namespace_name(value: str) -> str:
    if len(value) > 63 or not _LABEL.fullmatch(value):
        raise ValueError(
            f"{value!r} is not a namespace name: use at most 63 lowercase letters, digits and "
            "'-', starting and ending with a letter or digit"
        )
    return value


ObjectName = Annotated[str, AfterValidator(_object_name)]
NamespaceName = Annotated[str, AfterValidator(_namespace_name)]

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


class KubernetesApiError(DrydockError):
    """The API answered a request with a 4xx other than throttling: the request itself was
    refused (not found, forbidden, invalid, a disruption budget), and retrying the same run
    later would meet the same answer."""

    def __init__(self, status: int, message: str, detail: str = "") -> None:
        super().__init__(message)
        self.status = status
        # The API's own words (the Status message and its causes), without our context.
        self.detail = detail or message


class EvictionRefusedError(KubernetesApiError):
    """A 429 to an eviction: a PodDisruptionBudget does not allow the pod to go yet."""


class KubernetesThrottledError(ExecutorUnavailableError):
    """A 429: the API server throttling its clients, or (to an eviction) a disruption budget
    not allowing the pod to go yet. Either may pass."""

    def __init__(self, message: str, detail: str) -> None:
        super().__init__(message)
        self.detail = detail


class KubernetesTimeoutError(ExecutorUnavailableError):
    """A request could not complete before the deadline the adapter was given."""


@dataclass(frozen=True)
class PodOnNode:
    """What a drain needs to know about one pod."""

    namespace: str
    name: str
    uid: str
    phase: str
    # Kind of the owner reference marked `controller: true` (ReplicaSet, DaemonSet, ...).
    controller_kind: str | None
    mirror: bool
    emptydir_volumes: tuple[str, ...]

    @property
    def ref(self) -> str:
        return f"{self.namespace}/{self.name}"

    @classmethod
    def from_api(cls, pod: Mapping[str, Any]) -> PodOnNode:
        metadata = pod.get("metadata") or {}
        controller = next(
            (ref for ref in metadata.get("ownerReferences") or [] if ref.get("controller")),
            None,
        )
        volumes = (pod.get("spec") or {}).get("volumes") or []
        return cls(
            namespace=str(metadata.get("namespace", "")),
            name=str(metadata.get("name", "")),
            uid=str(metadata.get("uid", "")),
            phase=str((pod.get("status") or {}).get("phase", "")),
            controller_kind=str(controller.get("kind")) if controller else None,
            mirror=MIRROR_POD_ANNOTATION in (metadata.get("annotations") or {}),
            emptydir_volumes=tuple(
                str(volume.get("name")) for volume in volumes if "emptyDir" in volume
            ),
        )


@dataclass(frozen=True)
class RolloutStatus:
    """A deployment's rollout as ``kubectl rollout status`` reads it."""

    generation: int
    observed_generation: int
    desired: int
    updated: int
    total: int
    available: int
    progress_deadline_exceeded: bool

    @classmethod
    def from_api(cls, deployment: Mapping[str, Any]) -> RolloutStatus:
        status = deployment.get("status") or {}
        desired = (deployment.get("spec") or {}).get("replicas")
        return cls(
            generation=int((deployment.get("metadata") or {}).get("generation", 0)),
            observed_generation=int(status.get("observedGeneration", 0)),
            # An unset spec.replicas means 1, as the API server defaults it.
            desired=1 if desired is None else int(desired),
            updated=int(status.get("updatedReplicas", 0)),
            total=int(status.get("replicas", 0)),
            available=int(status.get("availableReplicas", 0)),
            progress_deadline_exceeded=any(
                condition.get("type") == "Progressing"
                and condition.get("reason") == "ProgressDeadlineExceeded"
                for condition in status.get("conditions") or []
            ),
        )

    def waiting_for(self) -> str | None:
        """What the rollout still waits for, or None when it has finished (kubectl's test)."""
        if self.observed_generation < self.generation:
            return "the deployment controller to see the new pod template"
        if self.updated < self.desired:
            return f"{self.updated} of {self.desired} replicas updated"
        if self.total > self.updated:
            return f"{self.total - self.updated} old replicas to terminate"
        if self.available < self.updated:
            return f"{self.available} of {self.updated} updated replicas available"
        return None

    def as_dict(self) -> dict[str, int]:
        return {
            "generation": self.generation,
            "observed_generation": self.observed_generation,
            "desired_replicas": self.desired,
            "updated_replicas": self.updated,
            "replicas": self.total,
            "available_replicas": self.available,
        }


class KubernetesAdapter:
    """The Kubernetes API, as Drydock uses it. ``request`` is the one way out; the methods
    above it are the operations playbooks (and image-pull secrets) need.

    ``deadline`` (``time.monotonic()``), when given, bounds every request: none is sent after
    it, and one still waiting at it raises ``KubernetesTimeoutError``."""

    def __init__(
        self,
        api_client: Any,
        *,
        deadline: float | None = None,
        request_timeout: float = DEFAULT_REQUEST_TIMEOUT_SECONDS,
    ) -> None:
        self._api_client = api_client
        self.deadline = deadline
        self.request_timeout = request_timeout

    @classmethod
    def from_config(
        cls,
        kubeconfig: str | None = None,
        *,
        deadline: float | None = None,
        request_timeout: float = DEFAULT_REQUEST_TIMEOUT_SECONDS,
    ) -> KubernetesAdapter:
        """From the kubeconfig file given; without one, the in-cluster service account, else
        ``$KUBECONFIG`` or ``~/.kube/config``."""
        import urllib3
        from kubernetes import client, config

        configuration = client.Configuration()
        if kubeconfig:
            where = f"kubeconfig {kubeconfig}"
            if not Path(kubeconfig).is_file():
                raise ExecutorUnavailableError(f"{where} (DRYDOCK_KUBECONFIG) does not exist")
        else:
            where = "the in-cluster service account or the default kubeconfig"
        # Loading runs yaml parsing, exec credential plugins and file reads, each with its own
        # exceptions; all of them mean the same here: no usable configuration.
        try:
            if kubeconfig:
                config.load_kube_config(
                    config_file=kubeconfig,
                    client_configuration=configuration,
                    persist_config=False,
                )
            else:
                try:
                    config.load_incluster_config(client_configuration=configuration)
                except config.ConfigException:
                    config.load_kube_config(
                        client_configuration=configuration, persist_config=False
                    )
        except Exception as exc:
            raise ExecutorUnavailableError(
                f"no usable Kubernetes API configuration from {where}: {exc} "
                "(set DRYDOCK_KUBECONFIG to a kubeconfig file)"
            ) from exc
        # One quick retry of a failed connection; no read retries, which would multiply the
        # per-request timeout past the run's deadline. A longer outage is the task's to retry.
        configuration.retries = urllib3.Retry(
            total=1, connect=1, read=0, status=0, other=0, redirect=False
        )
        return cls(
            client.ApiClient(configuration), deadline=deadline, request_timeout=request_timeout
        )

    @property
    def server(self) -> str:
        return str(self._api_client.configuration.host)

    def close(self) -> None:
        self._api_client.close()

    def request(
        self,
        method: str,
        path: str,
        *,
        query: Mapping[str, str] | None = None,
        body: Any = None,
        content_type: str = "application/json",
    ) -> dict[str, Any]:
        """One API request; the response's JSON object. Raises ``KubernetesApiError`` for a
        refusal (4xx), ``ExecutorUnavailableError`` when the API cannot answer."""
        import urllib3
        from kubernetes.client.exceptions import ApiException

        what = f"{method} {path}"
        timeout = self.request_timeout
        if self.deadline is not None:
            timeout = min(timeout, self.deadline - time.monotonic())
            if timeout <= 0:
                raise KubernetesTimeoutError(f"{what}: the deadline passed before it was sent")
        try:
            response = self._api_client.call_api(
                path,
                method,
                query_params=list((query or {}).items()),
                header_params={"Accept": "application/json", "Content-Type": content_type},
                body=body,
                response_types_map={200: "object", 201: "object", 202: "object"},
                auth_settings=["BearerToken"],
                _return_http_data_only=True,
                _request_timeout=timeout,
            )
        except ApiException as exc:
            raise self._refusal(what, exc) from exc
        except (urllib3.exceptions.HTTPError, OSError) as exc:
            # (With a little slack: a request cut short by the deadline ends right at it.)
            if self.deadline is not None and time.monotonic() >= self.deadline - 0.1:
                raise KubernetesTimeoutError(f"{what}: no answer before the deadline") from exc
            reason = getattr(exc, "reason", None) or exc
            raise ExecutorUnavailableError(
                f"the Kubernetes API at {self.server} is unreachable ({what}): {reason}"
            ) from exc
        return response if isinstance(response, dict) else {}

    def _refusal(self, what: str, exc: Any) -> Exception:
        status = int(exc.status or 0)
        message, causes = _status_message(exc.body)
        detail = message or str(exc.reason or "no reason given")
        if causes:
            detail += f" ({'; '.join(causes)})"
        if status == 429:
            return KubernetesThrottledError(
                f"the Kubernetes API at {self.server} throttled {what} (429): {detail}", detail
            )
        if not 400 <= status < 500:
            # 5xx, or status 0: the client failed before an answer (TLS). Not the request's
            # fault, and it may pass.
            answered = f"answered {status}" if status else "gave no answer"
            return ExecutorUnavailableError(
                f"the Kubernetes API at {self.server} {answered} to {what}: {detail}"
            )
        if status == 401:
            return KubernetesApiError(
                status,
                f"the Kubernetes API at {self.server} refused the credentials of the "
                f"kubeconfig (401 Unauthorized) for {what}: {detail}",
                detail,
            )
        return KubernetesApiError(status, f"{what} refused ({status}): {detail}", detail)

    def get_node(self, node: str) -> dict[str, Any]:
        try:
            return self.request("GET", f"/api/v1/nodes/{_segment(node)}")
        except KubernetesApiError as exc:
            if exc.status == 404:
                raise KubernetesApiError(404, f"node {node!r} not found at {self.server}") from exc
            raise

    def set_unschedulable(self, node: str, unschedulable: bool) -> bool:
        """Cordon (True) or uncordon (False) ``node``; whether that changed anything."""
        current = bool((self.get_node(node).get("spec") or {}).get("unschedulable", False))
        if current == unschedulable:
            return False
        # kubectl's own patch: uncordoning removes the field rather than setting it false.
        self.request(
            "PATCH",
            f"/api/v1/nodes/{_segment(node)}",
            body={"spec": {"unschedulable": True if unschedulable else None}},
            content_type=STRATEGIC_MERGE_PATCH,
        )
        return True

    def cordon(self, node: str) -> bool:
        return self.set_unschedulable(node, True)

    def uncordon(self, node: str) -> bool:
        return self.set_unschedulable(node, False)

    def pods_on_node(self, node: str) -> list[PodOnNode]:
        listing = self.request(
            "GET", "/api/v1/pods", query={"fieldSelector": f"spec.nodeName={node}"}
        )
        return [PodOnNode.from_api(pod) for pod in listing.get("items") or []]

    def evict(self, namespace: str, pod: str, grace_seconds: int | None = None) -> None:
        """Evict through the Eviction API (disruption budgets apply). Raises
        ``EvictionRefusedError`` when a budget refuses (try again later), ``KubernetesApiError``
        404 when the pod is already gone."""
        eviction: dict[str, Any] = {
            "apiVersion": "policy/v1",
            "kind": "Eviction",
            "metadata": {"name": pod, "namespace": namespace},
        }
        if grace_seconds is not None:
            eviction["deleteOptions"] = {"gracePeriodSeconds": grace_seconds}
        path = f"/api/v1/namespaces/{_segment(namespace)}/pods/{_segment(pod)}/eviction"
        try:
            self.request("POST", path, body=eviction)
        except KubernetesThrottledError as exc:
            raise EvictionRefusedError(
                429, f"eviction of pod {namespace}/{pod} refused: {exc.detail}"
            ) from exc
        except KubernetesApiError as exc:
            if exc.status == 404:
                raise
            raise KubernetesApiError(
                exc.status,
                f"eviction of pod {namespace}/{pod} refused ({exc.status}): {exc.detail}",
                exc.detail,
            ) from exc

    def restart_deployment(self, namespace: str, name: str, at: datetime | None = None) -> str:
        """Stamp the pod template as ``kubectl rollout restart`` does; the stamp written."""
        restarted_at = (at or utcnow()).strftime("%Y-%m-%dT%H:%M:%SZ")
        patch = {
            "spec": {
                "template": {"metadata": {"annotations": {RESTARTED_AT_ANNOTATION: restarted_at}}}
            }
        }
        try:
            self.request(
                "PATCH",
                f"/apis/apps/v1/namespaces/{_segment(namespace)}/deployments/{_segment(name)}",
                body=patch,
                content_type=STRATEGIC_MERGE_PATCH,
            )
        except KubernetesApiError as exc:
            raise self._deployment_not_found(namespace, name, exc) from exc
        return restarted_at

    def deployment_rollout_status(self, namespace: str, name: str) -> RolloutStatus:
        try:
            deployment = self.request(
                "GET",
                f"/apis/apps/v1/namespaces/{_segment(namespace)}/deployments/{_segment(name)}",
            )
        except KubernetesApiError as exc:
            raise self._deployment_not_found(namespace, name, exc) from exc
        return RolloutStatus.from_api(deployment)

    def apply_image_pull_secret(
        self, namespace: str, name: str, registry: str, username: str, password: str
    ) -> Literal["created", "replaced"]:
        """Make the Secret ``namespace/name`` a ``kubernetes.io/dockerconfigjson`` holding
        exactly this registry login (what ``kubectl create secret docker-registry`` writes):
        replaced whole when it exists (the API refuses, 422, to change another type of Secret:
        a Secret's type is immutable), created when it does not. The password travels only in
        the request body, never in an error."""
        auth = base64.b64encode(f"{username}:{password}".encode()).decode()
        docker_config = {
            "auths": {registry: {"username": username, "password": password, "auth": auth}}
        }
        secret = {
            "apiVersion": "v1",
            "kind": "Secret",
            "metadata": {
                "name": name,
                "namespace": namespace,
                "labels": {"app.kubernetes.io/managed-by": "drydock"},
            },
            "type": DOCKER_CONFIG_JSON_SECRET,
            "data": {
                ".dockerconfigjson": base64.b64encode(json.dumps(docker_config).encode()).decode()
            },
        }
        collection = f"/api/v1/namespaces/{_segment(namespace)}/secrets"
        item = f"{collection}/{_segment(name)}"
        # A PUT without a resourceVersion replaces unconditionally; it does not create.
        try:
            self.request("PUT", item, body=secret)
            return "replaced"
        except KubernetesApiError as exc:
            if exc.status != 404:
                raise
        try:
            self.request("POST", collection, body=secret)
            return "created"
        except KubernetesApiError as exc:
            if exc.status != 409:
                raise
        # Someone created it between the two requests: replace theirs.
        self.request("PUT", item, body=secret)
        return "replaced"

    def _deployment_not_found(
        self, namespace: str, name: str, exc: KubernetesApiError
    ) -> KubernetesApiError:
        if exc.status != 404:
            return exc
        return KubernetesApiError(
            404, f"deployment {name!r} not found in namespace {namespace!r} at {self.server}"
        )


def _segment(name: str) -> str:
    """A name as one path segment: the adapter does not rely on its callers having checked
    that a name is a valid Kubernetes name."""
    return urllib.parse.quote(name, safe="")


def _status_message(body: Any) -> tuple[str, list[str]]:
    """The message of a Kubernetes ``Status`` error body and its causes' messages."""
    if isinstance(body, bytes):
        body = body.decode(errors="replace")
    try:
        status = json.loads(body) if isinstance(body, str) and body else {}
    except ValueError:
        return body.strip()[:300], []
    if not isinstance(status, dict):
        return "", []
    causes = [
        str(cause.get("message"))
        for cause in (status.get("details") or {}).get("causes") or []
        if isinstance(cause, dict) and cause.get("message")
    ]
    return str(status.get("message") or ""), causes


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
        adapter = KubernetesAdapter.from_config(
            self._kubeconfig or get_settings().kubeconfig, deadline=run.deadline
        )
        try:
            for action in spec.actions:
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
                problem = _subdomain_problem(node)
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
        if not action.wait:
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

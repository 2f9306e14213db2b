"""The Kubernetes API as Drydock uses it: nodes, pods, evictions and deployments for remediation
playbooks, image-pull Secrets for registry credential rotation.

``KubernetesAdapter`` is the only code that talks to the Kubernetes API. It is built from a
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
``KubernetesUnavailableError`` (its callers retry later: the remediation executor as its
``ExecutorUnavailableError``, rotation on its next run); any other 4xx raises
``KubernetesApiError``, whose message names what was refused and the API's own reason (node not
found, forbidden for this service account, eviction refused by a disruption budget).
"""

from __future__ import annotations

import base64
import json
import time
import urllib.parse
from collections.abc import Mapping
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, Literal

from kernel.errors import DrydockError, TransientError

RESTARTED_AT_ANNOTATION = "kubectl.kubernetes.io/restartedAt"
# The kubelet puts this annotation on the API's copy of a static pod; evicting such a copy does
# nothing (the kubelet recreates it from its manifest), so drains leave them, as kubectl does.
MIRROR_POD_ANNOTATION = "kubernetes.io/config.mirror"
STRATEGIC_MERGE_PATCH = "application/strategic-merge-patch+json"
DOCKER_CONFIG_JSON_SECRET = "kubernetes.io/dockerconfigjson"
# One request may take this long when the deadline it was given leaves more room.
DEFAULT_REQUEST_TIMEOUT_SECONDS = 30.0


class KubernetesUnavailableError(TransientError):
    """The API cannot answer now: unreachable, no usable configuration, a 5xx, throttling.
    Another attempt may get through."""


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


class KubernetesThrottledError(KubernetesUnavailableError):
    """A 429: the API server throttling its clients, or (to an eviction) a disruption budget
    not allowing the pod to go yet. Either may pass."""

    def __init__(self, message: str, detail: str) -> None:
        super().__init__(message)
        self.detail = detail


class KubernetesTimeoutError(KubernetesUnavailableError):
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


@dataclass(frozen=True)
class ProxiedAnswer:
    """What came back through an API server proxy: the status, content type and body."""

    status: int
    content_type: str
    text: str


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
        # Every write sent as a server-side dry run (``dryRun=All``): checked, not persisted.
        self.dry_run = False

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
                raise KubernetesUnavailableError(f"{where} (DRYDOCK_KUBECONFIG) does not exist")
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
            raise KubernetesUnavailableError(
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
        refusal (4xx), ``KubernetesUnavailableError`` when the API cannot answer."""
        response = self._call(method, path, query=query, body=body, content_type=content_type)
        return response if isinstance(response, dict) else {}

    def proxy(
        self,
        method: str,
        path: str,
        *,
        body: Any = None,
        headers: Mapping[str, str] | None = None,
        max_bytes: int = 256 * 1024,
    ) -> ProxiedAnswer:
        """A request through one of the API server's proxy subresources (``.../proxy/...``):
        whatever status it brings back is the answer (the API's own refusals included), read up
        to ``max_bytes``. Raises ``KubernetesUnavailableError`` when the API cannot answer."""
        response = self._call(
            method,
            path,
            body=body,
            content_type=(headers or {}).get("Content-Type", "application/json"),
            accept=(headers or {}).get("Accept", "*/*"),
            raw=True,
        )
        try:
            data = response.read(max_bytes)
        finally:
            response.release_conn()
        content_type = str(response.headers.get("Content-Type") or "").split(";")[0].strip()
        return ProxiedAnswer(int(response.status), content_type, data.decode("utf-8", "replace"))

    def _call(
        self,
        method: str,
        path: str,
        *,
        query: Mapping[str, str] | None = None,
        body: Any = None,
        content_type: str = "application/json",
        accept: str = "application/json",
        raw: bool = False,
    ) -> Any:
        import urllib3
        from kubernetes.client.exceptions import ApiException

        what = f"{method} {path}"
        if self.dry_run and method in _WRITES:
            query = {**(query or {}), "dryRun": "All"}
        timeout = self.request_timeout
        if self.deadline is not None:
            timeout = min(timeout, self.deadline - time.monotonic())
            if timeout <= 0:
                raise KubernetesTimeoutError(f"{what}: the deadline passed before it was sent")
        try:
            return self._api_client.call_api(
                path,
                method,
                query_params=list((query or {}).items()),
                header_params={"Accept": accept, "Content-Type": content_type},
                body=body,
                response_types_map={200: "object", 201: "object", 202: "object"},
                auth_settings=["BearerToken"],
                _return_http_data_only=True,
                # Unread (raw): the caller reads the body and judges the status itself.
                _preload_content=not raw,
                _request_timeout=timeout,
            )
        except ApiException as exc:
            raise self._refusal(what, exc) from exc
        except (urllib3.exceptions.HTTPError, OSError) as exc:
            # (With a little slack: a request cut short by the deadline ends right at it.)
            if self.deadline is not None and time.monotonic() >= self.deadline - 0.1:
                raise KubernetesTimeoutError(f"{what}: no answer before the deadline") from exc
            reason = getattr(exc, "reason", None) or exc
            raise KubernetesUnavailableError(
                f"the Kubernetes API at {self.server} is unreachable ({what}): {reason}"
            ) from exc

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
            return KubernetesUnavailableError(
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
        restarted_at = (at or datetime.now(UTC)).strftime("%Y-%m-%dT%H:%M:%SZ")
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


_WRITES = frozenset({"POST", "PUT", "PATCH", "DELETE"})


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

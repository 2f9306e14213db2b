"""A stand-in for the Kubernetes API server, for the ``kubernetes`` executor's tests and the
image-pull secrets of credential rotation.

No Kubernetes API server can run on this machine (no kube-apiserver or etcd binaries, no
container runtime for kind or k3s), so those tests talk to this small threaded HTTPS server
instead. It implements exactly the requests ``KubernetesAdapter`` makes, and nothing else,
answering them the way kube-apiserver does: the same paths, status codes, ``Status`` error bodies
(reasons, messages, causes), and the same rules for bodies and content types (a PATCH must be a
strategic merge or JSON merge patch, a POST or PUT JSON; anything else is a 415):

- ``GET``/``PATCH /api/v1/nodes/{name}``
- ``GET /api/v1/pods?fieldSelector=spec.nodeName={node}``
- ``POST /api/v1/namespaces/{ns}/pods/{name}/eviction`` (a ``policy/v1`` Eviction)
- ``GET``/``PATCH``/``DELETE /apis/apps/v1/namespaces/{ns}/deployments/{name}`` and ``POST``
  to the collection (201, or 409 when it exists), a new Deployment checked against the
  Kubernetes 1.30 OpenAPI schema (``kubernetes_validate``, strict: an unknown field is a 422)
- ``POST /api/v1/namespaces/{ns}/services``, ``GET``/``DELETE .../services/{name}`` (checked the
  same way), and ``.../services/{name}:{port}/proxy/{path}``: the API server's proxy to the
  Service's pods, answered by ``pod_backend`` (a URL the test serves) once a Deployment whose pods
  the Service selects has an available replica, else a 503 as kube-apiserver gives
- ``POST /api/v1/namespaces/{ns}/secrets`` (create: 201, or 409 when it exists) and
  ``GET``/``PUT``/``DELETE /api/v1/namespaces/{ns}/secrets/{name}`` (replace: 200, or 404 when
  there is none, as for Secrets a PUT never creates); validated as kube-apiserver does: a
  ``v1`` Secret whose name and namespace match the URL, ``data`` values in base64, a
  ``kubernetes.io/dockerconfigjson`` Secret holding a ``.dockerconfigjson`` key of JSON, the
  type immutable on replace (422), a stale ``resourceVersion`` refused (409)
- every ``DELETE`` answers 200 with the object (its ``propagationPolicy`` recorded in the query)

It serves TLS with a CA of its own, and accepts one bearer token: the kubeconfig the
``kubeconfig_file`` fixture writes carries both, so the client's TLS and authentication are used
as against a real cluster. Every request is recorded (method, path, query, content type, body).

What it simplifies, so that no test relies on it:
- patches are applied as JSON merge patches (RFC 7386); a strategic merge patch holding a list
  is refused, because list merge keys are not implemented (the adapter's patches hold none);
- the deployment controller is simulated: a new Deployment, or a change to ``spec.template``
  (which bumps ``metadata.generation``), finishes its rollout at once, unless ``rollout_outcome``
  says it gets stuck or exceeds its progress deadline; no ReplicaSets or pods are made for a
  created Deployment (the proxy stands for them);
- an eviction deletes the pod at once (the grace period is recorded, not waited for), unless
  ``pods_linger`` is set: then the pod stays, terminating, as one that never stops would;
- no resourceVersion conflicts (but on Secrets), watches, pagination, RBAC or admission;
- every namespace exists, and Secrets' ``stringData`` is refused rather than merged (the
  adapter sends ``data`` only).

Failures are injected with ``refuse_eviction`` (a PodDisruptionBudget saying no, N times or
always) and ``fail`` (the next matching requests answered 500, 403, ...).

One module, long as the API surface it stands in for: each request's rules beside its handler.
"""

from __future__ import annotations

import base64
import copy
import http.server
import ipaddress
import itertools
import json
import secrets
import ssl
import sys
import threading
import urllib.error
import urllib.parse
import urllib.request
import uuid
from collections.abc import Iterator
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any, Literal

import kubernetes_validate
import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

STRATEGIC_MERGE_PATCH = "application/strategic-merge-patch+json"
MERGE_PATCH = "application/merge-patch+json"
PATCH_TYPES_ACCEPTED = (
    "application/json-patch+json, application/merge-patch+json, "
    "application/apply-patch+yaml, application/strategic-merge-patch+json"
)
PDB_MESSAGE = "Cannot evict pod as it would violate the pod's disruption budget."
_REASONS = {
    400: "BadRequest",
    401: "Unauthorized",
    403: "Forbidden",
    404: "NotFound",
    405: "MethodNotAllowed",
    409: "Conflict",
    415: "UnsupportedMediaType",
    422: "Invalid",
    429: "TooManyRequests",
    500: "InternalError",
    503: "ServiceUnavailable",
}

# The Kubernetes version whose OpenAPI schema created objects are checked against.
SCHEMA_VERSION = "1.30"

RolloutOutcome = Literal["complete", "stuck", "progress_deadline_exceeded"]


class ApiStatus(Exception):
    """An error answer: kube-apiserver's ``Status`` object."""

    def __init__(
        self, code: int, message: str, details: dict[str, Any] | None = None, reason: str = ""
    ) -> None:
        super().__init__(message)
        self.code = code
        self.body: dict[str, Any] = {
            "kind": "Status",
            "apiVersion": "v1",
            "metadata": {},
            "status": "Failure",
            "message": message,
            "reason": reason or _REASONS.get(code, "Unknown"),
            "code": code,
        }
        if details is not None:
            self.body["details"] = details


def _not_found(kind: str, name: str, group: str = "") -> ApiStatus:
    resource = f"{kind}.{group}" if group else kind
    details: dict[str, Any] = {"name": name, "kind": kind}
    if group:
        details["group"] = group
    return ApiStatus(404, f'{resource} "{name}" not found', details)


@dataclass(frozen=True)
class RecordedRequest:
    method: str
    path: str
    query: dict[str, str]
    content_type: str | None
    authorization: str | None
    body: Any


@dataclass
class _Injected:
    status: int
    message: str
    times: int
    method: str | None
    path: str | None


@dataclass
class _Refusal:
    remaining: int | None  # None: refuses for ever
    budget: str


@dataclass(frozen=True)
class _Raw:
    """An answer passed through as it came (the service proxy's)."""

    content_type: str
    body: bytes


def _claim_namespace(metadata: dict[str, Any], namespace: str) -> None:
    """An object's namespace is the URL's: another is refused, none is set to it."""
    if metadata.get("namespace", namespace) != namespace:
        raise ApiStatus(
            400,
            "the namespace of the provided object does not match the namespace sent on the request",
        )
    metadata["namespace"] = namespace


def _schema_problems(manifest: dict[str, Any]) -> list[str]:
    """Where ``manifest`` breaks the Kubernetes OpenAPI schema, as kube-apiserver's strict
    field validation refuses it ([] when it is valid)."""
    try:
        kubernetes_validate.validate(manifest, SCHEMA_VERSION, strict=True)
    except kubernetes_validate.ValidationError as exc:
        where = ".".join(str(p) for p in exc.path)
        return [f"{where}: {exc.message}"]
    return []


def _merge_patch(target: Any, patch: Any) -> Any:
    """RFC 7386: objects merge key by key, null deletes, anything else replaces."""
    if not isinstance(patch, dict):
        return copy.deepcopy(patch)
    merged = dict(target) if isinstance(target, dict) else {}
    for key, value in patch.items():
        if value is None:
            merged.pop(key, None)
        else:
            merged[key] = _merge_patch(merged.get(key), value)
    return merged


def _holds_list(value: Any) -> bool:
    if isinstance(value, list):
        return True
    return isinstance(value, dict) and any(_holds_list(item) for item in value.values())


@dataclass
class KubeStandIn:
    """The stand-in's state and its HTTPS server. ``url``, ``token`` and ``ca_pem`` are what a
    kubeconfig needs; ``start``/``stop`` may be repeated (stopped, the API is unreachable)."""

    workdir: Path
    token: str = field(default_factory=lambda: secrets.token_urlsafe(24))
    nodes: dict[str, dict[str, Any]] = field(default_factory=dict)
    pods: dict[tuple[str, str], dict[str, Any]] = field(default_factory=dict)
    deployments: dict[tuple[str, str], dict[str, Any]] = field(default_factory=dict)
    secrets: dict[tuple[str, str], dict[str, Any]] = field(default_factory=dict)
    services: dict[tuple[str, str], dict[str, Any]] = field(default_factory=dict)
    requests: list[RecordedRequest] = field(default_factory=list)
    # Where the pods behind every Service answer (the proxy forwards there); None: nowhere.
    pod_backend: str | None = None
    pods_linger: bool = False
    rollout_outcome: RolloutOutcome = "complete"

    def __post_init__(self) -> None:
        self._lock = threading.Lock()
        self._injected: list[_Injected] = []
        self._refusals: dict[tuple[str, str], _Refusal] = {}
        # next() on a count is atomic: setup methods may call it without the lock.
        self._versions = itertools.count(1001)
        self._server: _QuietServer | None = None
        self._port = 0
        self.ca_pem, self._cert_path, self._key_path = _make_tls_files(self.workdir)

    # --- running -------------------------------------------------------------------------

    @property
    def url(self) -> str:
        return f"https://127.0.0.1:{self._port}"

    def start(self) -> None:
        server = _QuietServer(("127.0.0.1", self._port), self._handler())
        context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
        context.load_cert_chain(self._cert_path, self._key_path)
        server.socket = context.wrap_socket(server.socket, server_side=True)
        self._port = server.server_address[1]
        # A short poll interval: stop() (shutdown) waits up to one.
        threading.Thread(target=server.serve_forever, args=(0.02,), daemon=True).start()
        self._server = server

    def stop(self) -> None:
        if self._server is not None:
            self._server.shutdown()
            self._server.server_close()
            self._server = None

    # --- state the tests set up and read -------------------------------------------------

    def add_node(self, name: str, unschedulable: bool = False) -> dict[str, Any]:
        node: dict[str, Any] = {
            "apiVersion": "v1",
            "kind": "Node",
            "metadata": {
                "name": name,
                "uid": str(uuid.uuid4()),
                "resourceVersion": self._next_version(),
                "labels": {"kubernetes.io/hostname": name},
            },
            "spec": {"unschedulable": True} if unschedulable else {},
            "status": {"conditions": [{"type": "Ready", "status": "True"}]},
        }
        with self._lock:
            self.nodes[name] = node
        return node

    def add_pod(
        self,
        namespace: str,
        name: str,
        node: str,
        *,
        owner_kind: str | None = "ReplicaSet",
        mirror: bool = False,
        emptydir: bool = False,
        phase: str = "Running",
    ) -> dict[str, Any]:
        """A pod on ``node``; owned by a ``owner_kind`` controller (None: a bare pod)."""
        metadata: dict[str, Any] = {
            "name": name,
            "namespace": namespace,
            "uid": str(uuid.uuid4()),
            "resourceVersion": self._next_version(),
        }
        if owner_kind:
            metadata["ownerReferences"] = [
                {
                    "apiVersion": "apps/v1",
                    "kind": owner_kind,
                    "name": f"{name}-owner",
                    "uid": str(uuid.uuid4()),
                    "controller": True,
                    "blockOwnerDeletion": True,
                }
            ]
        if mirror:
            # What the kubelet sets on the API's copy of a static pod (a hash of its manifest).
            metadata["annotations"] = {"kubernetes.io/config.mirror": secrets.token_hex(16)}
            metadata["ownerReferences"] = [
                {
                    "apiVersion": "v1",
                    "kind": "Node",
                    "name": node,
                    "uid": str(uuid.uuid4()),
                    "controller": True,
                }
            ]
        volumes = [{"name": "cache", "emptyDir": {}}] if emptydir else []
        pod: dict[str, Any] = {
            "apiVersion": "v1",
            "kind": "Pod",
            "metadata": metadata,
            "spec": {
                "nodeName": node,
                "containers": [{"name": "main", "image": "registry.example/app:1"}],
                "volumes": volumes,
                "terminationGracePeriodSeconds": 30,
            },
            "status": {"phase": phase},
        }
        with self._lock:
            self.pods[(namespace, name)] = pod
        return pod

    def add_deployment(self, namespace: str, name: str, replicas: int = 2) -> dict[str, Any]:
        deployment: dict[str, Any] = {
            "apiVersion": "apps/v1",
            "kind": "Deployment",
            "metadata": {
                "name": name,
                "namespace": namespace,
                "uid": str(uuid.uuid4()),
                "generation": 1,
                "resourceVersion": self._next_version(),
            },
            "spec": {
                "replicas": replicas,
                "selector": {"matchLabels": {"app": name}},
                "template": {
                    "metadata": {"labels": {"app": name}},
                    "spec": {"containers": [{"name": name, "image": "registry.example/app:1"}]},
                },
            },
            "status": {},
        }
        self._roll_out(deployment, "complete")
        with self._lock:
            self.deployments[(namespace, name)] = deployment
        return deployment

    def node(self, name: str) -> dict[str, Any]:
        with self._lock:
            return copy.deepcopy(self.nodes[name])

    def pod_names(self, node: str | None = None) -> list[str]:
        with self._lock:
            return sorted(
                f"{ns}/{name}"
                for (ns, name), pod in self.pods.items()
                if node is None or pod["spec"]["nodeName"] == node
            )

    def deployment(self, namespace: str, name: str) -> dict[str, Any]:
        with self._lock:
            return copy.deepcopy(self.deployments[(namespace, name)])

    def add_secret(
        self, namespace: str, name: str, data: dict[str, bytes], type_: str = "Opaque"
    ) -> dict[str, Any]:
        """A Secret made by someone else (``data`` as plain bytes; stored in base64)."""
        secret: dict[str, Any] = {
            "apiVersion": "v1",
            "kind": "Secret",
            "metadata": {
                "name": name,
                "namespace": namespace,
                "uid": str(uuid.uuid4()),
                "resourceVersion": self._next_version(),
                "creationTimestamp": datetime.now(UTC).strftime("%Y-%m-%dT%H:%M:%SZ"),
            },
            "type": type_,
            "data": {key: base64.b64encode(value).decode() for key, value in data.items()},
        }
        with self._lock:
            self.secrets[(namespace, name)] = secret
        return secret

    def secret(self, namespace: str, name: str) -> dict[str, Any]:
        with self._lock:
            return copy.deepcopy(self.secrets[(namespace, name)])

    def docker_config(self, namespace: str, name: str) -> dict[str, Any]:
        """The decoded ``.dockerconfigjson`` of an image-pull Secret, as the kubelet reads it."""
        encoded = self.secret(namespace, name)["data"][".dockerconfigjson"]
        config: dict[str, Any] = json.loads(base64.b64decode(encoded))
        return config

    def refuse_eviction(
        self, namespace: str, pod: str, times: int | None = None, budget: str = "web-pdb"
    ) -> None:
        """A PodDisruptionBudget refusing the pod's eviction ``times`` times (None: always)."""
        with self._lock:
            self._refusals[(namespace, pod)] = _Refusal(times, budget)

    def fail(
        self,
        status: int = 500,
        times: int = 1,
        *,
        method: str | None = None,
        path: str | None = None,
        message: str = "Internal error occurred: injected by the test",
    ) -> None:
        """Answer the next ``times`` requests (matching ``method`` and ``path``, when given)
        with ``status``."""
        with self._lock:
            self._injected.append(_Injected(status, message, times, method, path))

    def requests_to(self, method: str, path: str | None = None) -> list[RecordedRequest]:
        with self._lock:
            return [
                r for r in self.requests if r.method == method and (path is None or r.path == path)
            ]

    # --- the API -------------------------------------------------------------------------

    def _next_version(self) -> str:
        return str(next(self._versions))

    def _answer(self, request: RecordedRequest) -> tuple[int, Any]:
        """The status and JSON body for one request (the lock is held)."""
        if request.authorization != f"Bearer {self.token}":
            raise ApiStatus(401, "Unauthorized")
        for injected in self._injected:
            if injected.times > 0 and (
                (injected.method is None or injected.method == request.method)
                and (injected.path is None or injected.path == request.path)
            ):
                injected.times -= 1
                raise ApiStatus(injected.status, injected.message)
        if request.query.get("dryRun") == "All" and request.method != "GET":
            # kube-apiserver's server-side dry run: answered as if done, nothing persisted.
            kept = copy.deepcopy(
                (self.nodes, self.pods, self.deployments, self.secrets, self.services)
            )
            try:
                return self._route(request)
            finally:
                self.nodes, self.pods, self.deployments, self.secrets, self.services = kept
        return self._route(request)

    def _route(self, request: RecordedRequest) -> tuple[int, Any]:
        parts = request.path.strip("/").split("/")
        match parts:
            case ["api", "v1", "nodes", name]:
                return self._node_request(request, name)
            case ["api", "v1", "pods"]:
                self._allow(request, "GET")
                return 200, self._list_pods(request.query)
            case ["api", "v1", "namespaces", namespace, "pods", name, "eviction"]:
                self._allow(request, "POST")
                return self._evict(request, namespace, name)
            case ["apis", "apps", "v1", "namespaces", namespace, "deployments"]:
                self._allow(request, "POST")
                return self._create(request, namespace, self.deployments, "deployments", "apps")
            case ["apis", "apps", "v1", "namespaces", namespace, "deployments", name]:
                return self._deployment_request(request, namespace, name)
            case ["api", "v1", "namespaces", namespace, "services"]:
                self._allow(request, "POST")
                return self._create(request, namespace, self.services, "services")
            case ["api", "v1", "namespaces", namespace, "services", service, "proxy", *rest]:
                return self._proxy(request, namespace, service, "/".join(rest))
            case ["api", "v1", "namespaces", namespace, "services", name]:
                self._allow(request, "GET", "DELETE")
                return self._get_or_delete(request, self.services, namespace, name, "services")
            case ["api", "v1", "namespaces", namespace, "secrets"]:
                self._allow(request, "POST")
                return self._create_secret(request, namespace)
            case ["api", "v1", "namespaces", namespace, "secrets", name]:
                return self._secret_request(request, namespace, name)
        raise ApiStatus(404, "the server could not find the requested resource")

    @staticmethod
    def _allow(request: RecordedRequest, *methods: str) -> None:
        if request.method not in methods:
            raise ApiStatus(405, "the server does not allow this method on the requested resource")

    def _node_request(self, request: RecordedRequest, name: str) -> tuple[int, dict[str, Any]]:
        self._allow(request, "GET", "PATCH")
        node = self.nodes.get(name)
        if node is None:
            raise _not_found("nodes", name)
        if request.method == "PATCH":
            patched = _merge_patch(node, self._patch_body(request))
            patched["metadata"]["resourceVersion"] = self._next_version()
            self.nodes[name] = node = patched
        return 200, node

    def _list_pods(self, query: dict[str, str]) -> dict[str, Any]:
        selector = query.get("fieldSelector")
        node: str | None = None
        if selector is not None:
            field_name, _, value = selector.partition("=")
            if field_name != "spec.nodeName" or not value:
                raise ApiStatus(
                    400,
                    f"the stand-in only implements fieldSelector=spec.nodeName=<node>, "
                    f"not {selector!r}",
                )
            node = value
        items = [
            pod
            for _, pod in sorted(self.pods.items())
            if node is None or pod["spec"]["nodeName"] == node
        ]
        return {
            "kind": "PodList",
            "apiVersion": "v1",
            "metadata": {"resourceVersion": self._next_version()},
            "items": items,
        }

    def _evict(
        self, request: RecordedRequest, namespace: str, name: str
    ) -> tuple[int, dict[str, Any]]:
        body = request.body
        if not isinstance(body, dict) or body.get("kind") != "Eviction":
            raise ApiStatus(400, "the body of the request is not an Eviction")
        if body.get("apiVersion") not in ("policy/v1", "policy/v1beta1"):
            raise ApiStatus(
                400, f'no kind "Eviction" is registered for version {body.get("apiVersion")!r}'
            )
        if (body.get("metadata") or {}).get("name") != name:
            raise ApiStatus(400, "name in URL does not match name in Eviction object")
        pod = self.pods.get((namespace, name))
        if pod is None:
            raise _not_found("pods", name)
        refusal = self._refusals.get((namespace, name))
        if refusal is not None and refusal.remaining != 0:
            if refusal.remaining is not None:
                refusal.remaining -= 1
            raise ApiStatus(
                429,
                PDB_MESSAGE,
                {
                    "causes": [
                        {
                            "reason": "DisruptionBudget",
                            "message": f"The disruption budget {refusal.budget} needs 2 healthy "
                            "pods and has 2 currently",
                        }
                    ]
                },
            )
        if self.pods_linger:
            pod["metadata"].setdefault("deletionTimestamp", datetime.now(UTC).isoformat())
        else:
            del self.pods[(namespace, name)]
        return 201, {
            "kind": "Status",
            "apiVersion": "v1",
            "metadata": {},
            "status": "Success",
            "code": 201,
        }

    def _deployment_request(
        self, request: RecordedRequest, namespace: str, name: str
    ) -> tuple[int, dict[str, Any]]:
        self._allow(request, "GET", "PATCH", "DELETE")
        deployment = self.deployments.get((namespace, name))
        if deployment is None:
            raise _not_found("deployments", name, group="apps")
        if request.method == "DELETE":
            return 200, self.deployments.pop((namespace, name))
        if request.method == "PATCH":
            patched = _merge_patch(deployment, self._patch_body(request))
            patched["metadata"]["resourceVersion"] = self._next_version()
            if patched["spec"]["template"] != deployment["spec"]["template"]:
                patched["metadata"]["generation"] += 1
                self._roll_out(patched, self.rollout_outcome)
            self.deployments[(namespace, name)] = deployment = patched
        return 200, deployment

    def _create(
        self,
        request: RecordedRequest,
        namespace: str,
        store: dict[tuple[str, str], dict[str, Any]],
        plural: str,
        group: str = "",
    ) -> tuple[int, dict[str, Any]]:
        """A create of a Deployment or Service: validated, 409 when the name is taken."""
        made: dict[str, Any] = copy.deepcopy(request.body)
        metadata = made.setdefault("metadata", {})
        _claim_namespace(metadata, namespace)
        problems = _schema_problems(made)
        kind = str(made.get("kind"))
        name = str(metadata.get("name") or "")
        if problems:
            raise ApiStatus(
                422,
                f'{kind} "{name}" is invalid: {"; ".join(problems)}',
                {"name": name, "kind": kind, "causes": [{"message": p} for p in problems]},
                reason="Invalid",
            )
        if kind == "Deployment":
            metadata["generation"] = 1
            self._roll_out(made, self.rollout_outcome, first=True)
        return self._store_new(store, namespace, made, plural, group)

    def _store_new(
        self,
        store: dict[tuple[str, str], dict[str, Any]],
        namespace: str,
        made: dict[str, Any],
        plural: str,
        group: str = "",
    ) -> tuple[int, dict[str, Any]]:
        """Keep a created object under its name, stamped as the API server stamps one (409
        when the name is taken)."""
        metadata = made["metadata"]
        name = str(metadata.get("name") or "")
        if (namespace, name) in store:
            resource = f"{plural}.{group}" if group else plural
            raise ApiStatus(
                409,
                f'{resource} "{name}" already exists',
                {"name": name, "kind": plural, **({"group": group} if group else {})},
                reason="AlreadyExists",
            )
        metadata.update(
            uid=str(uuid.uuid4()),
            resourceVersion=self._next_version(),
            creationTimestamp=datetime.now(UTC).strftime("%Y-%m-%dT%H:%M:%SZ"),
        )
        store[(namespace, name)] = made
        return 201, made

    def _get_or_delete(
        self,
        request: RecordedRequest,
        store: dict[tuple[str, str], dict[str, Any]],
        namespace: str,
        name: str,
        plural: str,
    ) -> tuple[int, dict[str, Any]]:
        found = store.get((namespace, name))
        if found is None:
            raise _not_found(plural, name)
        if request.method == "DELETE":
            del store[(namespace, name)]
        return 200, found

    def _proxy(
        self, request: RecordedRequest, namespace: str, service_ref: str, path: str
    ) -> tuple[int, Any]:
        """kube-apiserver's service proxy: to the Service's ready pods, or a 503."""
        name, _, port = service_ref.partition(":")
        service = self.services.get((namespace, name))
        if service is None:
            raise _not_found("services", name)
        if port and port not in {p.get("name") for p in service["spec"].get("ports", [])}:
            raise ApiStatus(
                503, f'no endpoints available for service "{name}:{port}" (no such port)'
            )
        selector = service["spec"].get("selector") or {}
        ready = any(
            selector.items() <= d["spec"]["template"]["metadata"]["labels"].items()
            and d["status"].get("availableReplicas", 0) > 0
            for (ns, _), d in self.deployments.items()
            if ns == namespace
        )
        if not ready:
            raise ApiStatus(503, f'no endpoints available for service "{name}"')
        if self.pod_backend is None:
            raise ApiStatus(
                503, f"error trying to reach service: dial tcp 10.0.0.1:{port}: connect: refused"
            )
        forwarded = urllib.request.Request(
            f"{self.pod_backend.rstrip('/')}/{path}",
            data=json.dumps(request.body).encode() if request.body is not None else None,
            headers={"Content-Type": request.content_type or "application/json"},
            method=request.method,
        )
        try:
            with urllib.request.urlopen(forwarded, timeout=5) as answer:
                return answer.status, _Raw(answer.headers.get("Content-Type", ""), answer.read())
        except urllib.error.HTTPError as exc:
            return exc.code, _Raw(exc.headers.get("Content-Type", ""), exc.read())

    def _create_secret(
        self, request: RecordedRequest, namespace: str
    ) -> tuple[int, dict[str, Any]]:
        secret = self._checked_secret(request.body, namespace)
        return self._store_new(self.secrets, namespace, secret, "secrets")

    def _secret_request(
        self, request: RecordedRequest, namespace: str, name: str
    ) -> tuple[int, dict[str, Any]]:
        self._allow(request, "GET", "PUT", "DELETE")
        current = self.secrets.get((namespace, name))
        if current is None:
            raise _not_found("secrets", name)
        if request.method == "GET":
            return 200, current
        if request.method == "DELETE":
            return 200, self.secrets.pop((namespace, name))
        secret = self._checked_secret(request.body, namespace, name)
        sent_version = secret["metadata"].get("resourceVersion")
        if sent_version and sent_version != current["metadata"]["resourceVersion"]:
            raise ApiStatus(
                409,
                f'Operation cannot be fulfilled on secrets "{name}": the object has been '
                "modified; please apply your changes to the latest version and try again",
                {"name": name, "kind": "secrets"},
            )
        if secret["type"] != current["type"]:
            raise ApiStatus(
                422,
                f'Secret "{name}" is invalid: type: Invalid value: "{secret["type"]}": field is '
                "immutable",
                {"name": name, "kind": "Secret", "causes": [{"field": "type"}]},
            )
        secret["metadata"].update(
            uid=current["metadata"]["uid"],
            creationTimestamp=current["metadata"]["creationTimestamp"],
            resourceVersion=self._next_version(),
        )
        self.secrets[(namespace, name)] = secret
        return 200, secret

    @staticmethod
    def _checked_secret(body: Any, namespace: str, name: str | None = None) -> dict[str, Any]:
        """A Secret body as kube-apiserver would accept it, with the type defaulted."""
        if body.get("kind") != "Secret" or body.get("apiVersion") != "v1":
            raise ApiStatus(400, "the body of the request is not a v1 Secret")
        if "stringData" in body:
            raise ApiStatus(400, "the stand-in does not implement stringData")
        secret: dict[str, Any] = copy.deepcopy(body)
        metadata = secret.setdefault("metadata", {})
        _claim_namespace(metadata, namespace)
        if name is not None and metadata.get("name") != name:
            raise ApiStatus(400, "the name of the object does not match the name on the URL")
        if not metadata.get("name"):
            raise ApiStatus(422, "Secret is invalid: metadata.name: Required value: name")
        data = secret.setdefault("data", {})
        decoded: dict[str, bytes] = {}
        for key, value in data.items():
            try:
                decoded[key] = base64.b64decode(value, validate=True)
            except (ValueError, TypeError):
                raise ApiStatus(400, f"illegal base64 data in data[{key}]") from None
        secret_type = secret.setdefault("type", "Opaque")
        if secret_type == "kubernetes.io/dockerconfigjson":
            where = f'Secret "{metadata["name"]}" is invalid: data[.dockerconfigjson]'
            if ".dockerconfigjson" not in decoded:
                raise ApiStatus(422, f"{where}: Required value")
            try:
                json.loads(decoded[".dockerconfigjson"])
            except ValueError:
                raise ApiStatus(
                    422, f'{where}: Invalid value: "<secret contents redacted>": not JSON'
                ) from None
        return secret

    @staticmethod
    def _roll_out(
        deployment: dict[str, Any], outcome: RolloutOutcome, *, first: bool = False
    ) -> None:
        """The deployment controller, reduced to its verdict on the new pod template (``first``:
        of a new Deployment, which has no old replicas to keep serving)."""
        replicas = deployment["spec"].get("replicas", 1)
        done = outcome == "complete"
        progressing = (
            {"type": "Progressing", "status": "True", "reason": "NewReplicaSetAvailable"}
            if done
            else {"type": "Progressing", "status": "True", "reason": "ReplicaSetUpdated"}
            if outcome == "stuck"
            else {"type": "Progressing", "status": "False", "reason": "ProgressDeadlineExceeded"}
        )
        deployment["status"] = {
            "observedGeneration": deployment["metadata"]["generation"],
            "replicas": replicas if done else replicas + 1,
            "updatedReplicas": replicas if done else 1,
            "readyReplicas": replicas,
            "availableReplicas": replicas,
            "conditions": [progressing],
        }
        if first and not done:
            deployment["status"].update(
                replicas=replicas,
                updatedReplicas=replicas,
                readyReplicas=0,
                availableReplicas=0,
                unavailableReplicas=replicas,
            )

    @staticmethod
    def _patch_body(request: RecordedRequest) -> Any:
        content_type = (request.content_type or "").split(";")[0].strip()
        if content_type not in (STRATEGIC_MERGE_PATCH, MERGE_PATCH):
            if content_type == "application/json-patch+json":
                raise ApiStatus(415, "the stand-in does not implement JSON patches")
            raise ApiStatus(
                415,
                "the body of the request was in an unknown format - accepted media types "
                f"include: {PATCH_TYPES_ACCEPTED}",
            )
        if not isinstance(request.body, dict):
            raise ApiStatus(400, "the patch is not a JSON object")
        if content_type == STRATEGIC_MERGE_PATCH and _holds_list(request.body):
            raise ApiStatus(415, "the stand-in does not implement strategic merges of lists")
        return request.body

    def _handler(self) -> type[http.server.BaseHTTPRequestHandler]:
        standin = self

        class Handler(http.server.BaseHTTPRequestHandler):
            def _serve(self) -> None:
                url = urllib.parse.urlsplit(self.path)
                length = int(self.headers.get("Content-Length") or 0)
                raw = self.rfile.read(length) if length else b""
                body: Any = None
                if raw:
                    try:
                        body = json.loads(raw)
                    except ValueError:
                        body = raw.decode(errors="replace")
                request = RecordedRequest(
                    method=self.command,
                    path=url.path,
                    query=dict(urllib.parse.parse_qsl(url.query)),
                    content_type=self.headers.get("Content-Type"),
                    authorization=self.headers.get("Authorization"),
                    body=body,
                )
                with standin._lock:
                    standin.requests.append(request)
                    try:
                        if self.command in ("POST", "PATCH", "PUT") and not isinstance(body, dict):
                            raise ApiStatus(400, "the request body is not a JSON object")
                        if (
                            self.command in ("POST", "PUT")
                            and (request.content_type or "").split(";")[0] != "application/json"
                        ):
                            raise ApiStatus(
                                415, f"a {self.command} body must be application/json here"
                            )
                        status, answer = standin._answer(request)
                        content_type = "application/json"
                        if isinstance(answer, _Raw):
                            content_type, payload = answer.content_type, answer.body
                        else:
                            payload = json.dumps(answer).encode()
                    except ApiStatus as error:
                        status, payload = error.code, json.dumps(error.body).encode()
                        content_type = "application/json"
                self.send_response(status)
                self.send_header("Content-Type", content_type)
                self.send_header("Content-Length", str(len(payload)))
                self.end_headers()
                self.wfile.write(payload)

            do_GET = do_PATCH = do_POST = do_PUT = do_DELETE = _serve

            def log_message(self, format: str, *args: object) -> None:
                return None

        return Handler


class _QuietServer(http.server.ThreadingHTTPServer):
    def handle_error(self, request: Any, client_address: Any) -> None:
        # A client that gives up on the TLS handshake (a kubeconfig not trusting this CA) is
        # what some tests are about, not a stand-in failure worth a traceback.
        if isinstance(sys.exc_info()[1], ssl.SSLError | ConnectionError):
            return
        super().handle_error(request, client_address)


def _make_tls_files(directory: Path) -> tuple[str, Path, Path]:
    """A CA of the stand-in's own and a server certificate for 127.0.0.1 it signed: the CA's
    PEM (for the kubeconfig), the certificate chain file and the key file."""
    now = datetime.now(UTC)
    ca_key = ec.generate_private_key(ec.SECP256R1())
    ca_name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "kube-standin-ca")])
    ca = (
        x509.CertificateBuilder()
        .subject_name(ca_name)
        .issuer_name(ca_name)
        .public_key(ca_key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - timedelta(minutes=5))
        .not_valid_after(now + timedelta(days=1))
        .add_extension(x509.BasicConstraints(ca=True, path_length=0), critical=True)
        .add_extension(
            x509.KeyUsage(
                digital_signature=True,
                content_commitment=False,
                key_encipherment=False,
                data_encipherment=False,
                key_agreement=False,
                key_cert_sign=True,
                crl_sign=True,
                encipher_only=False,
                decipher_only=False,
            ),
            critical=True,
        )
        .add_extension(x509.SubjectKeyIdentifier.from_public_key(ca_key.public_key()), False)
        .sign(ca_key, hashes.SHA256())
    )
    key = ec.generate_private_key(ec.SECP256R1())
    certificate = (
        x509.CertificateBuilder()
        .subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "kube-apiserver")]))
        .issuer_name(ca_name)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - timedelta(minutes=5))
        .not_valid_after(now + timedelta(days=1))
        .add_extension(
            x509.SubjectAlternativeName([x509.IPAddress(ipaddress.ip_address("127.0.0.1"))]),
            critical=False,
        )
        .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
        .add_extension(x509.ExtendedKeyUsage([ExtendedKeyUsageOID.SERVER_AUTH]), critical=False)
        .add_extension(
            x509.AuthorityKeyIdentifier.from_issuer_public_key(ca_key.public_key()), False
        )
        .sign(ca_key, hashes.SHA256())
    )
    directory.mkdir(parents=True, exist_ok=True)
    cert_path = directory / "apiserver.pem"
    key_path = directory / "apiserver-key.pem"
    ca_pem = ca.public_bytes(serialization.Encoding.PEM).decode()
    cert_path.write_bytes(certificate.public_bytes(serialization.Encoding.PEM))
    key_path.write_bytes(
        key.private_bytes(
            serialization.Encoding.PEM,
            serialization.PrivateFormat.PKCS8,
            serialization.NoEncryption(),
        )
    )
    return ca_pem, cert_path, key_path


def write_kubeconfig(path: Path, server: str, token: str, ca_pem: str) -> Path:
    """A kubeconfig with one cluster (``server``, trusting ``ca_pem``), one token user and one
    context, current. JSON is YAML, so the client reads it as it reads any kubeconfig."""
    config = {
        "apiVersion": "v1",
        "kind": "Config",
        "clusters": [
            {
                "name": "standin",
                "cluster": {
                    "server": server,
                    "certificate-authority-data": base64.b64encode(ca_pem.encode()).decode(),
                },
            }
        ],
        "users": [{"name": "drydock", "user": {"token": token}}],
        "contexts": [{"name": "standin", "context": {"cluster": "standin", "user": "drydock"}}],
        "current-context": "standin",
    }
    path.write_text(json.dumps(config, indent=2))
    return path


@pytest.fixture
def kube_standin(tmp_path_factory: pytest.TempPathFactory) -> Iterator[KubeStandIn]:
    """A running stand-in API server with empty state, for one test."""
    standin = KubeStandIn(tmp_path_factory.mktemp("kube-standin"))
    standin.start()
    yield standin
    standin.stop()


@pytest.fixture
def kubeconfig_file(kube_standin: KubeStandIn, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A kubeconfig for ``kube_standin`` (its URL, CA and token)."""
    directory = tmp_path_factory.mktemp("kubeconfig")
    return write_kubeconfig(
        directory / "config", kube_standin.url, kube_standin.token, kube_standin.ca_pem
    )

"""Objects made and removed on the Kubernetes API, as the runtime's executor needs them.

Each request is what ``kubectl`` sends, through ``KubernetesAdapter`` (its errors, its timeouts):

- ``create``: ``POST`` to the collection; a 409 ``AlreadyExists`` is an earlier attempt's object,
  kept (a redelivered launch makes nothing twice);
- ``read``: ``GET`` of one object, None when there is none (404);
- ``delete``: ``DELETE`` with ``propagationPolicy=Background`` (a Deployment's ReplicaSets and
  pods go after it); nothing there (404) is fine;
- ``service_proxy_path``: the API server's proxy to a Service's named port, through which a
  probe reaches the pods behind it from outside the cluster.
"""

from __future__ import annotations

import urllib.parse
from collections.abc import Mapping
from typing import Any

from adapters.kubernetes import KubernetesAdapter, KubernetesApiError


def namespaced(group_version: str, namespace: str, plural: str, name: str | None = None) -> str:
    """``/api/v1/namespaces/{ns}/{plural}[/{name}]`` (``group_version`` ``v1`` or, for a
    group, ``apps/v1``)."""
    root = "/api/v1" if group_version == "v1" else f"/apis/{group_version}"
    path = f"{root}/namespaces/{_segment(namespace)}/{plural}"
    return f"{path}/{_segment(name)}" if name is not None else path


def create(adapter: KubernetesAdapter, collection: str, body: Mapping[str, Any]) -> bool:
    """Create ``body`` in ``collection``; False when it exists already (kept as it is)."""
    try:
        adapter.request("POST", collection, body=dict(body))
    except KubernetesApiError as exc:
        if exc.status == 409:
            return False
        raise
    return True


def read(adapter: KubernetesAdapter, path: str) -> dict[str, Any] | None:
    try:
        return adapter.request("GET", path)
    except KubernetesApiError as exc:
        if exc.status == 404:
            return None
        raise


def delete(adapter: KubernetesAdapter, path: str) -> bool:
    """Delete the object at ``path``; False when there was none."""
    try:
        adapter.request("DELETE", path, query={"propagationPolicy": "Background"})
    except KubernetesApiError as exc:
        if exc.status == 404:
            return False
        raise
    return True


def service_proxy_path(namespace: str, service: str, port_name: str, path: str) -> str:
    """The API server's proxy to ``path`` on the Service's port ``port_name``."""
    service_ref = f"{_segment(service)}:{_segment(port_name)}"
    base = f"{namespaced('v1', namespace, 'services')}/{service_ref}/proxy"
    return base + "/" + urllib.parse.quote(path.lstrip("/"), safe="/")


def _segment(name: str) -> str:
    return urllib.parse.quote(name, safe="")

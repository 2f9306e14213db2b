"""Kubernetes object names as the API accepts them, as pydantic types: what a playbook names
(nodes, deployments, namespaces) and where a registry credential's image-pull Secret lives.

Pure validation, no client: the models (``models.credentials``) check pull-secret names with
these, and the remediation executor its playbooks' targets.
"""

from __future__ import annotations

import re
from typing import Annotated

from pydantic import AfterValidator

# Kubernetes object names: a DNS-1123 subdomain (nodes, deployments) or label (namespaces).
_SUBDOMAIN = re.compile(r"[a-z0-9]([-a-z0-9]*[a-z0-9])?(\.[a-z0-9]([-a-z0-9]*[a-z0-9])?)*")
_LABEL = re.compile(r"[a-z0-9]([-a-z0-9]*[a-z0-9])?")


def object_name_problem(value: str) -> str | None:
    """Why ``value`` is not a Kubernetes object name (a DNS-1123 subdomain), or None."""
    if len(value) > 253 or not _SUBDOMAIN.fullmatch(value):
        return (
            f"{value!r} is not a Kubernetes object name: use at most 253 lowercase letters, "
            "digits, '-' and '.', starting and ending with a letter or digit"
        )
    return None


def _object_name(value: str) -> str:
    problem = object_name_problem(value)
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

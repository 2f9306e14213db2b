"""Operators' side of the runtime: servers, their releases (from the artifact ledger), targets,
and reading instances back. What the CLI and the API call; the jobs live in ``lifecycle``."""

from __future__ import annotations

import re
import uuid
from collections.abc import Sequence
from datetime import UTC, datetime
from typing import Any

from sqlalchemy import select

from catalog.runtime import PROBE_PATH_PATTERN, REPOSITORY_PATTERN, SERVER_NAME_PATTERN
from kernel.errors import DrydockError
from models import runtime, trust
from models.db import session_scope
from models.runtime import (
    Backend,
    Isolation,
    ProbeKind,
    RuntimeInstance,
    RuntimeRelease,
    RuntimeServer,
    RuntimeTarget,
)

NAME = re.compile(SERVER_NAME_PATTERN)
REPOSITORY = re.compile(REPOSITORY_PATTERN)
PROBE_PATH = re.compile(PROBE_PATH_PATTERN)
DIGEST = re.compile(r"^sha256:[0-9a-f]{64}$")
PLATFORM = re.compile(r"^[a-z0-9]+/[a-z0-9]+(/[a-z0-9]+)?$")


class RuntimeInputError(DrydockError):
    """What an operator asked for is malformed (each problem named)."""

    def __init__(self, problems: Sequence[str]) -> None:
        super().__init__("; ".join(problems))
        self.problems = list(problems)


class RuntimeConflictError(DrydockError):
    """Well formed, but the store says no: the server exists, the digest is not the ledger's,
    the asset is unknown."""


def add_server(
    *,
    tenant: str,
    name: str,
    repository: str,
    probe_kind: str = ProbeKind.MCP.value,
    probe_path: str = "/mcp",
    isolation: str = Isolation.CONTAINER.value,
    confidential: bool = False,
    accelerator: str | None = None,
    description: str = "",
    actor: str,
) -> dict[str, Any]:
    problems = []
    if not NAME.fullmatch(name):
        problems.append(f"name {name!r}: lower-case letters, digits, '.', '_' or '-', ≤ 100")
    if not REPOSITORY.fullmatch(repository):
        problems.append(f"repository {repository!r}: host[:port]/path, as images are named")
    if probe_kind not in {k.value for k in ProbeKind}:
        problems.append(f"probe {probe_kind!r}: one of {', '.join(k.value for k in ProbeKind)}")
    if not PROBE_PATH.fullmatch(probe_path):
        problems.append(f"probe path {probe_path!r}: an absolute path of at most 200 characters")
    if isolation not in {i.value for i in Isolation}:
        problems.append(f"isolation {isolation!r}: one of {', '.join(i.value for i in Isolation)}")
    if problems:
        raise RuntimeInputError(problems)
    with session_scope() as session:
        existing = session.scalar(
            select(RuntimeServer).where(RuntimeServer.tenant == tenant, RuntimeServer.name == name)
        )
        if existing is not None:
            raise RuntimeConflictError(f"server {tenant}/{name} exists")
        server = RuntimeServer(
            tenant=tenant,
            name=name,
            repository=repository,
            probe_kind=probe_kind,
            probe_path=probe_path,
            isolation=isolation,
            confidential=confidential,
            accelerator=accelerator,
            description=description,
            created_by=actor,
        )
        session.add(server)
        session.flush()
        return server_json(server)


def add_release(
    *, tenant: str | None, server: str, digest: str, tier: str, actor: str
) -> dict[str, Any]:
    """A release of a digest the artifact ledger built, with the platforms it built it for."""
    if not DIGEST.fullmatch(digest):
        raise RuntimeInputError([f"digest {digest!r}: sha256:<64 hex digits>"])
    with session_scope() as session:
        found = runtime.find_server(session, server, tenant)
        platforms = runtime.ledger_platforms(session, digest)
        if platforms is None:
            raise RuntimeConflictError(
                f"{digest} is not in the artifact ledger: only images Drydock built "
                "(builds.build_image, pushed) can be released"
            )
        release = session.scalar(
            select(RuntimeRelease).where(
                RuntimeRelease.server_id == found.id,
                RuntimeRelease.digest == digest,
                RuntimeRelease.tier == tier,
            )
        )
        if release is None:
            release = RuntimeRelease(
                server_id=found.id, digest=digest, tier=tier, platforms=platforms, created_by=actor
            )
            session.add(release)
            session.flush()
        return release_json(release)


def put_target(
    *,
    name: str,
    backend: str,
    asset: str,
    platforms: Sequence[str],
    isolation: str = Isolation.CONTAINER.value,
    confidential: bool = False,
    accelerators: Sequence[str] = (),
    priority: int = 100,
    connection: dict[str, Any] | None = None,
    enabled: bool = True,
    actor: str,
) -> dict[str, Any]:
    """Add or replace a runtime target."""
    problems = []
    if not NAME.fullmatch(name):
        problems.append(f"name {name!r}: lower-case letters, digits, '.', '_' or '-', ≤ 100")
    if backend not in {b.value for b in Backend}:
        problems.append(f"backend {backend!r}: one of {', '.join(b.value for b in Backend)}")
    if isolation not in {i.value for i in Isolation}:
        problems.append(f"isolation {isolation!r}: one of {', '.join(i.value for i in Isolation)}")
    bad = [p for p in platforms if not PLATFORM.fullmatch(p)]
    if not platforms or bad:
        problems.append(f"platforms: os/arch pairs such as linux/amd64 (not {bad or 'none'})")
    problems += connection_problems(backend, connection or {})
    if problems:
        raise RuntimeInputError(problems)
    with session_scope() as session:
        try:
            found = trust.find_asset(session, asset)
        except trust.AssetNotFoundError:
            raise RuntimeConflictError(f"no trust asset {asset}") from None
        target = session.get(RuntimeTarget, name)
        if target is None:
            target = RuntimeTarget(name=name)
            session.add(target)
        target.backend = backend
        target.asset_id = found.id
        target.platforms = list(platforms)
        target.isolation = isolation
        target.confidential = confidential
        target.accelerators = list(accelerators)
        target.priority = priority
        target.connection = dict(connection or {})
        target.enabled = enabled
        target.updated_by = actor
        session.flush()
        return target_json(target)


# What each backend's executor reads of a target's connection.
CONNECTION_KEYS = {
    Backend.DOCKER.value: ("docker_host",),
    Backend.KUBERNETES.value: ("namespace", "kubeconfig"),
    Backend.LIBVIRT.value: ("libvirt_uri", "asset_class"),
}
NAMESPACE = re.compile(r"^[a-z0-9]([-a-z0-9]{0,61}[a-z0-9])?$")


def connection_problems(backend: str, connection: dict[str, Any]) -> list[str]:
    """What is wrong with a target's connection for its backend ([] when nothing)."""
    known = CONNECTION_KEYS.get(backend)
    if known is None:
        return []
    problems = [
        f"connection {key!r}: a {backend} target takes {', '.join(known)}"
        for key in connection
        if key not in known
    ]
    problems += [
        f"connection {key!r}: a string of at most 400 characters"
        for key, value in connection.items()
        if key in known and (not isinstance(value, str) or not value or len(value) > 400)
    ]
    if backend == Backend.LIBVIRT.value and not connection.get("asset_class"):
        problems.append(
            "connection 'asset_class': a libvirt target names the trust class its VMs' "
            "evidence is judged by"
        )
    namespace = connection.get("namespace")
    if isinstance(namespace, str) and namespace and not NAMESPACE.fullmatch(namespace):
        problems.append(f"namespace {namespace!r}: a Kubernetes namespace name (a DNS label)")
    return problems


def instance_detail(instance_id: uuid.UUID, tenant: str | None) -> dict[str, Any]:
    with session_scope() as session:
        instance = runtime.get_instance(session, instance_id, tenant)
        return {
            **instance_json(instance),
            "history": [
                {
                    "seq": move.seq,
                    "from_state": move.from_state,
                    "to_state": move.to_state,
                    "cause": move.cause,
                    "detail": move.detail,
                    "actor": move.actor,
                    "job_id": str(move.job_id) if move.job_id else None,
                    "at": _iso(move.at),
                }
                for move in runtime.instance_history(session, instance.id)
            ],
        }


def list_instances(
    *, tenant: str | None, server: str | None = None, limit: int = 100
) -> list[dict[str, Any]]:
    with session_scope() as session:
        query = select(RuntimeInstance)
        if tenant is not None:
            query = query.where(RuntimeInstance.tenant == tenant)
        if server is not None:
            query = query.where(
                RuntimeInstance.server_id == runtime.find_server(session, server, tenant).id
            )
        rows = session.scalars(query.order_by(RuntimeInstance.created_at.desc()).limit(limit))
        return [instance_json(row) for row in rows]


def server_json(server: RuntimeServer) -> dict[str, Any]:
    return {
        "id": str(server.id),
        "tenant": server.tenant,
        "name": server.name,
        "repository": server.repository,
        "probe": {"kind": server.probe_kind, "path": server.probe_path},
        "isolation": server.isolation,
        "confidential": server.confidential,
        "accelerator": server.accelerator,
        "description": server.description,
        "created_at": _iso(server.created_at),
        "created_by": server.created_by,
    }


def release_json(release: RuntimeRelease) -> dict[str, Any]:
    return {
        "id": str(release.id),
        "server_id": str(release.server_id),
        "digest": release.digest,
        "tier": release.tier,
        "platforms": release.platforms,
        "created_at": _iso(release.created_at),
    }


def target_json(target: RuntimeTarget) -> dict[str, Any]:
    return {
        "name": target.name,
        "backend": target.backend,
        "asset_id": str(target.asset_id),
        "platforms": target.platforms,
        "isolation": target.isolation,
        "confidential": target.confidential,
        "accelerators": target.accelerators,
        "priority": target.priority,
        "connection": target.connection,
        "enabled": target.enabled,
    }


def instance_json(instance: RuntimeInstance) -> dict[str, Any]:
    return {
        "id": str(instance.id),
        "server_id": str(instance.server_id),
        "release_id": str(instance.release_id),
        "tenant": instance.tenant,
        "state": instance.state,
        "target": instance.target,
        "backend": instance.backend,
        "endpoint": instance.endpoint,
        "reason": instance.reason,
        "decision_id": instance.decision_id,
        "health": instance.health,
        "log_tail": instance.log_tail,
        "created_at": _iso(instance.created_at),
        "updated_at": _iso(instance.updated_at),
    }


def _iso(at: datetime | None) -> str | None:
    return None if at is None else at.astimezone(UTC).isoformat()


def list_servers(*, tenant: str | None, limit: int = 200) -> list[dict[str, Any]]:
    with session_scope() as session:
        query = select(RuntimeServer)
        if tenant is not None:
            query = query.where(RuntimeServer.tenant == tenant)
        rows = session.scalars(
            query.order_by(RuntimeServer.tenant, RuntimeServer.name).limit(limit)
        )
        return [server_json(row) for row in rows]


def describe_server(ref: str, tenant: str | None) -> dict[str, Any]:
    """A server with its releases and its newest instances."""
    with session_scope() as session:
        server = runtime.find_server(session, ref, tenant)
        releases = session.scalars(
            select(RuntimeRelease)
            .where(RuntimeRelease.server_id == server.id)
            .order_by(RuntimeRelease.created_at)
        )
        instances = session.scalars(
            select(RuntimeInstance)
            .where(RuntimeInstance.server_id == server.id)
            .order_by(RuntimeInstance.created_at.desc())
            .limit(50)
        )
        return {
            **server_json(server),
            "releases": [release_json(r) for r in releases],
            "instances": [instance_json(i) for i in instances],
        }


def list_targets() -> list[dict[str, Any]]:
    with session_scope() as session:
        rows = session.scalars(
            select(RuntimeTarget).order_by(RuntimeTarget.priority, RuntimeTarget.name)
        )
        return [target_json(row) for row in rows]

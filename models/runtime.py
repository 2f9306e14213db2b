"""The runtime's records: MCP servers, their releases, the targets they may run on, and the
instances that run them, with each instance's lifecycle written race-free and announced.

An instance moves only along :data:`ALLOWED_MOVES` (``pending → starting → running → draining
→ stopped``, or ``failed``/``blocked`` with the reason) and only through :func:`move_instance`:
the UPDATE carries the version it read (SQLAlchemy's ``version_id_col``), so a writer that lost
a race gets StaleDataError and decides again on a fresh read instead of overwriting; each move
appends one ``runtime_instance_history`` row (append-only, a trigger refuses UPDATE and DELETE)
and stages one ``runtime.instance`` event on the watch stream, both in the move's transaction.

One live instance per release: a partial unique index over the live states (pending, starting,
running, blocked) means two racing launches of a release make one instance; the loser finds the
winner's (:func:`live_instance`).
"""

from __future__ import annotations

import uuid
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from enum import StrEnum
from typing import Any

from sqlalchemy import (
    BigInteger,
    Boolean,
    CheckConstraint,
    DateTime,
    ForeignKey,
    Identity,
    Index,
    Integer,
    String,
    Text,
    UniqueConstraint,
    Uuid,
    func,
    select,
    text,
)
from sqlalchemy.dialects.postgresql import JSONB
from sqlalchemy.orm import Mapped, Session, mapped_column

from kernel.errors import DrydockError, NotFoundError
from models import stream
from models.base import Base, sql_in_list


class Backend(StrEnum):
    DOCKER = "docker"
    KUBERNETES = "kubernetes"
    LIBVIRT = "libvirt"


class Isolation(StrEnum):
    """How far a server is kept from its neighbours, weakest first."""

    CONTAINER = "container"
    VM = "vm"


ISOLATION_RANK = {Isolation.CONTAINER: 0, Isolation.VM: 1}


class ProbeKind(StrEnum):
    # The MCP ``initialize`` call, over streamable HTTP: a JSON-RPC result naming the server.
    MCP = "mcp"
    # A GET answered 2xx.
    HTTP = "http"


class InstanceState(StrEnum):
    PENDING = "pending"
    STARTING = "starting"
    RUNNING = "running"
    DRAINING = "draining"
    STOPPED = "stopped"
    FAILED = "failed"
    # Policy refused it (the gates that failed are its reason); a later launch decides again.
    BLOCKED = "blocked"


LIVE_STATES = (
    InstanceState.PENDING,
    InstanceState.STARTING,
    InstanceState.RUNNING,
    InstanceState.BLOCKED,
)
FINISHED_STATES = frozenset({InstanceState.STOPPED, InstanceState.FAILED})

ALLOWED_MOVES: dict[InstanceState | None, frozenset[InstanceState]] = {
    None: frozenset({InstanceState.PENDING}),
    InstanceState.PENDING: frozenset(
        {InstanceState.STARTING, InstanceState.BLOCKED, InstanceState.FAILED, InstanceState.STOPPED}
    ),
    InstanceState.STARTING: frozenset(
        {
            InstanceState.RUNNING,
            InstanceState.FAILED,
            InstanceState.BLOCKED,
            InstanceState.DRAINING,
        }
    ),
    InstanceState.RUNNING: frozenset({InstanceState.DRAINING, InstanceState.FAILED}),
    InstanceState.DRAINING: frozenset({InstanceState.STOPPED, InstanceState.FAILED}),
    # A blocked instance is decided again by the next launch of its release, or given up.
    InstanceState.BLOCKED: frozenset({InstanceState.PENDING, InstanceState.STOPPED}),
    InstanceState.STOPPED: frozenset(),
    InstanceState.FAILED: frozenset(),
}


class RuntimeServer(Base):
    """An MCP server of a tenant: where its images come from and how it is probed."""

    __tablename__ = "runtime_servers"

    id: Mapped[uuid.UUID] = mapped_column(Uuid, primary_key=True, default=uuid.uuid4)
    tenant: Mapped[str] = mapped_column(String(100))
    name: Mapped[str] = mapped_column(String(100))
    # host/repository its releases are pulled from, by digest.
    repository: Mapped[str] = mapped_column(String(400))
    description: Mapped[str] = mapped_column(Text, default="")
    probe_kind: Mapped[str] = mapped_column(String(10), default=ProbeKind.MCP.value)
    # The path the probe calls on the server's port (``/mcp``).
    probe_path: Mapped[str] = mapped_column(String(200), default="/mcp")
    # What the server needs of a target (the launch may ask for more, never less).
    isolation: Mapped[str] = mapped_column(String(20), default=Isolation.CONTAINER.value)
    confidential: Mapped[bool] = mapped_column(Boolean, default=False)
    accelerator: Mapped[str | None] = mapped_column(String(100))
    created_at: Mapped[datetime] = mapped_column(DateTime(timezone=True), server_default=func.now())
    created_by: Mapped[str | None] = mapped_column(String(200))

    __table_args__ = (
        UniqueConstraint("tenant", "name"),
        CheckConstraint(sql_in_list("probe_kind", tuple(ProbeKind)), name="probe_kind"),
        CheckConstraint(sql_in_list("isolation", tuple(Isolation)), name="isolation"),
    )


class RuntimeRelease(Base):
    """A digest of a server at a tier, with the platforms the artifact ledger built for it."""

    __tablename__ = "runtime_releases"

    id: Mapped[uuid.UUID] = mapped_column(Uuid, primary_key=True, default=uuid.uuid4)
    server_id: Mapped[uuid.UUID] = mapped_column(
        Uuid, ForeignKey("runtime_servers.id", ondelete="CASCADE")
    )
    digest: Mapped[str] = mapped_column(String(100))
    tier: Mapped[str] = mapped_column(String(100))
    platforms: Mapped[list[str]] = mapped_column(JSONB)
    created_at: Mapped[datetime] = mapped_column(DateTime(timezone=True), server_default=func.now())
    created_by: Mapped[str | None] = mapped_column(String(200))
    # A rollout of it failed and the tier went back to the release before it; a promotion of
    # the digest again clears it. The catalog shows a tier's newest release not rolled back.
    rolled_back_at: Mapped[datetime | None] = mapped_column(DateTime(timezone=True))

    __table_args__ = (UniqueConstraint("server_id", "digest", "tier"),)


class RuntimeTarget(Base):
    """Somewhere servers can run: a backend, the trust asset it runs on, what it offers."""

    __tablename__ = "runtime_targets"

    name: Mapped[str] = mapped_column(String(100), primary_key=True)
    backend: Mapped[str] = mapped_column(String(20))
    asset_id: Mapped[uuid.UUID] = mapped_column(
        Uuid, ForeignKey("trust_assets.id", ondelete="RESTRICT")
    )
    # os/arch pairs it runs (``linux/amd64``).
    platforms: Mapped[list[str]] = mapped_column(JSONB)
    isolation: Mapped[str] = mapped_column(String(20))
    confidential: Mapped[bool] = mapped_column(Boolean, default=False)
    accelerators: Mapped[list[str]] = mapped_column(JSONB, default=list)
    # Lower first: the order candidates are tried in (then by name).
    priority: Mapped[int] = mapped_column(Integer, default=100)
    # How the executor reaches it: docker_host, namespace, libvirt_uri... Never a secret.
    connection: Mapped[dict[str, Any]] = mapped_column(JSONB, default=dict)
    enabled: Mapped[bool] = mapped_column(Boolean, default=True)
    created_at: Mapped[datetime] = mapped_column(DateTime(timezone=True), server_default=func.now())
    updated_by: Mapped[str | None] = mapped_column(String(200))

    __table_args__ = (
        CheckConstraint(sql_in_list("backend", tuple(Backend)), name="backend"),
        CheckConstraint(sql_in_list("isolation", tuple(Isolation)), name="isolation"),
    )


class RuntimeInstance(Base):
    """One release running (or trying to) on one target. ``version`` is the optimistic lock."""

    __tablename__ = "runtime_instances"

    id: Mapped[uuid.UUID] = mapped_column(Uuid, primary_key=True, default=uuid.uuid4)
    release_id: Mapped[uuid.UUID] = mapped_column(
        Uuid, ForeignKey("runtime_releases.id", ondelete="CASCADE")
    )
    server_id: Mapped[uuid.UUID] = mapped_column(
        Uuid, ForeignKey("runtime_servers.id", ondelete="CASCADE")
    )
    tenant: Mapped[str] = mapped_column(String(100))
    # None while blocked before any target was chosen.
    target: Mapped[str | None] = mapped_column(String(100))
    backend: Mapped[str | None] = mapped_column(String(20))
    asset_id: Mapped[uuid.UUID | None] = mapped_column(Uuid)
    state: Mapped[str] = mapped_column(String(20))
    version: Mapped[int] = mapped_column(Integer, nullable=False)
    # Why it is where it is: the failing gates when blocked, the error when failed.
    reason: Mapped[str] = mapped_column(Text, default="")
    # The placement decision that let it start (or blocked it).
    decision_id: Mapped[int | None] = mapped_column(
        BigInteger, ForeignKey("policy_decisions.id", ondelete="SET NULL")
    )
    # What the executor made (container id and name, port...), so a redelivered job finds it.
    handle: Mapped[dict[str, Any]] = mapped_column(JSONB, default=dict)
    endpoint: Mapped[str | None] = mapped_column(String(400))
    # The newest probe: {"ok", "detail", "at", "ms"}.
    health: Mapped[dict[str, Any] | None] = mapped_column(JSONB)
    # The end of its output, capped and redacted, when it stopped or failed.
    log_tail: Mapped[str | None] = mapped_column(Text)
    launch_job_id: Mapped[uuid.UUID | None] = mapped_column(Uuid)
    created_at: Mapped[datetime] = mapped_column(DateTime(timezone=True), server_default=func.now())
    updated_at: Mapped[datetime] = mapped_column(
        DateTime(timezone=True), server_default=func.now(), onupdate=func.now()
    )

    __mapper_args__ = {"version_id_col": version}  # noqa: RUF012 (SQLAlchemy reads a dict)
    __table_args__ = (
        CheckConstraint(sql_in_list("state", tuple(InstanceState)), name="state"),
        Index(
            "uq_runtime_instances_live_release",
            "release_id",
            unique=True,
            postgresql_where=text(sql_in_list("state", LIVE_STATES)),
        ),
        Index(None, "server_id", "created_at"),
    )


class RuntimeInstanceMove(Base):
    """One move of an instance's lifecycle. Append-only (a trigger refuses changes)."""

    __tablename__ = "runtime_instance_history"

    id: Mapped[int] = mapped_column(BigInteger, Identity(), primary_key=True)
    instance_id: Mapped[uuid.UUID] = mapped_column(
        Uuid, ForeignKey("runtime_instances.id", ondelete="CASCADE")
    )
    seq: Mapped[int] = mapped_column(Integer)
    from_state: Mapped[str | None] = mapped_column(String(20))
    to_state: Mapped[str] = mapped_column(String(20))
    cause: Mapped[str] = mapped_column(String(60))
    detail: Mapped[str] = mapped_column(Text, default="")
    actor: Mapped[str] = mapped_column(String(200))
    job_id: Mapped[uuid.UUID | None] = mapped_column(Uuid)
    at: Mapped[datetime] = mapped_column(DateTime(timezone=True), server_default=func.now())

    __table_args__ = (UniqueConstraint("instance_id", "seq"),)


class IllegalInstanceMoveError(DrydockError):
    def __init__(self, instance_id: uuid.UUID, from_state: str | None, to_state: str) -> None:
        super().__init__(
            f"instance {instance_id} cannot move from {from_state or '(new)'} to {to_state}"
        )


class ServerNotFoundError(NotFoundError):
    def __init__(self, ref: str) -> None:
        super().__init__(f"no server {ref}")


class ReleaseNotFoundError(NotFoundError):
    pass


class InstanceNotFoundError(NotFoundError):
    def __init__(self, instance_id: uuid.UUID | str) -> None:
        super().__init__(f"no instance {instance_id}")


class TargetNotFoundError(NotFoundError):
    def __init__(self, name: str) -> None:
        super().__init__(f"no runtime target {name!r}")


@dataclass(frozen=True)
class Move:
    to_state: InstanceState
    cause: str
    detail: str = ""


def open_instance(
    session: Session,
    *,
    release: RuntimeRelease,
    server: RuntimeServer,
    actor: str,
    job_id: uuid.UUID | None,
) -> RuntimeInstance:
    """A new instance of ``release``, ``pending``, with its first history row and event. The
    caller holds the release's row lock (:func:`lock_release`), so no other launch races it; the
    partial unique index is the backstop."""
    instance = RuntimeInstance(
        release_id=release.id,
        server_id=server.id,
        tenant=server.tenant,
        state=InstanceState.PENDING.value,
        reason="",
        handle={},
        launch_job_id=job_id,
    )
    session.add(instance)
    session.flush()
    _append(session, instance, None, Move(InstanceState.PENDING, "launch_requested"), actor, job_id)
    return instance


def move_instance(
    session: Session,
    instance: RuntimeInstance,
    move: Move,
    *,
    actor: str,
    job_id: uuid.UUID | None = None,
) -> RuntimeInstanceMove:
    """Move ``instance`` one step (checked against ALLOWED_MOVES), append its history row and
    stage its stream event. StaleDataError on flush: another writer moved it first."""
    from_state = InstanceState(instance.state)
    if move.to_state not in ALLOWED_MOVES[from_state]:
        raise IllegalInstanceMoveError(instance.id, from_state.value, move.to_state.value)
    instance.state = move.to_state.value
    instance.reason = move.detail[:4000]
    session.flush()
    return _append(session, instance, from_state.value, move, actor, job_id)


def _append(
    session: Session,
    instance: RuntimeInstance,
    from_state: str | None,
    move: Move,
    actor: str,
    job_id: uuid.UUID | None,
) -> RuntimeInstanceMove:
    row = RuntimeInstanceMove(
        instance_id=instance.id,
        seq=instance.version,
        from_state=from_state,
        to_state=move.to_state.value,
        cause=move.cause,
        detail=move.detail[:4000],
        actor=actor,
        job_id=job_id,
    )
    session.add(row)
    session.flush()
    stream.stage(
        session,
        stream.StreamEventKind.RUNTIME_INSTANCE,
        instance.tenant,
        {
            "instance_id": str(instance.id),
            "server_id": str(instance.server_id),
            "release_id": str(instance.release_id),
            "target": instance.target,
            "backend": instance.backend,
            "seq": row.seq,
            "from_state": from_state,
            "to_state": row.to_state,
            "cause": row.cause,
            "detail": row.detail[:1000],
            "actor": actor,
            "job_id": str(job_id) if job_id else None,
            "at": datetime.now(UTC).isoformat(),
        },
    )
    return row


def lock_release(session: Session, release_id: uuid.UUID) -> RuntimeRelease:
    """The release's row, locked until the transaction ends: launches of one release queue up
    here, so each sees the live instance the one before it made."""
    release = session.get(RuntimeRelease, release_id, with_for_update=True, populate_existing=True)
    if release is None:
        raise ReleaseNotFoundError(f"no release {release_id}")
    return release


# ---- reads ---------------------------------------------------------------------------------------


def find_server(session: Session, ref: str, tenant: str | None) -> RuntimeServer:
    """A server by id, or by name within ``tenant`` (or ``tenant/name``)."""
    try:
        server = session.get(RuntimeServer, uuid.UUID(ref))
    except ValueError:
        server = None
        owner, slash, name = ref.rpartition("/")
        owner = owner if slash else (tenant or "")
        if tenant is None or owner == tenant:
            server = session.scalar(
                select(RuntimeServer).where(
                    RuntimeServer.tenant == owner, RuntimeServer.name == name
                )
            )
    if server is None or (tenant is not None and server.tenant != tenant):
        raise ServerNotFoundError(ref)
    return server


def find_release(
    session: Session, server: RuntimeServer, digest: str, tier: str | None
) -> RuntimeRelease:
    """The server's release of ``digest`` at ``tier`` (none: its newest tier for the digest)."""
    query = select(RuntimeRelease).where(
        RuntimeRelease.server_id == server.id, RuntimeRelease.digest == digest
    )
    if tier is not None:
        query = query.where(RuntimeRelease.tier == tier)
    release = session.scalars(query.order_by(RuntimeRelease.created_at.desc()).limit(1)).first()
    if release is None:
        at = f" at tier {tier}" if tier else ""
        raise ReleaseNotFoundError(
            f"server {server.tenant}/{server.name} has no release of {digest}{at} "
            "(`drydock releases add`)"
        )
    return release


def live_instance(session: Session, release_id: uuid.UUID) -> RuntimeInstance | None:
    return session.scalar(
        select(RuntimeInstance).where(
            RuntimeInstance.release_id == release_id,
            RuntimeInstance.state.in_([s.value for s in LIVE_STATES]),
        )
    )


def get_instance(session: Session, instance_id: uuid.UUID, tenant: str | None) -> RuntimeInstance:
    instance = session.get(RuntimeInstance, instance_id)
    if instance is None or (tenant is not None and instance.tenant != tenant):
        raise InstanceNotFoundError(instance_id)
    return instance


def instance_history(session: Session, instance_id: uuid.UUID) -> Sequence[RuntimeInstanceMove]:
    return session.scalars(
        select(RuntimeInstanceMove)
        .where(RuntimeInstanceMove.instance_id == instance_id)
        .order_by(RuntimeInstanceMove.seq)
    ).all()


# Built once: every launch reads it.
_ENABLED_TARGETS = (
    select(RuntimeTarget)
    .where(RuntimeTarget.enabled.is_(True))
    .order_by(RuntimeTarget.priority, RuntimeTarget.name)
)


def enabled_targets(session: Session) -> Sequence[RuntimeTarget]:
    return session.scalars(_ENABLED_TARGETS).all()


def ledger_platforms(session: Session, digest: str) -> list[str] | None:
    """The platforms the artifact ledger built ``digest`` for: the build's platforms when it is
    a multi-platform index, the platform's own when it is one platform's image; None: the ledger
    never produced it."""
    platforms = session.execute(
        text(
            """
            SELECT platform FROM build_platforms WHERE digest = :digest
            UNION
            SELECT p.platform FROM build_runs r JOIN build_platforms p ON p.run_id = r.id
             WHERE r.index_digest = :digest
            """
        ),
        {"digest": digest},
    ).scalars()
    found = sorted(str(p) for p in platforms)
    return found or None


@dataclass(frozen=True)
class QuarantinedInstance:
    instance_id: uuid.UUID
    # tenant/name of the quarantined asset, and whether it is the instance's own VM.
    asset: str
    own_vm: bool


def quarantined_instances(session: Session, limit: int) -> list[QuarantinedInstance]:
    """Running instances on a quarantined host asset, or whose own VM asset (``handle``'s
    ``vm_asset``, in the instance's tenant) is quarantined; oldest first."""
    rows = session.execute(
        text(
            """
            SELECT i.id, a.tenant || '/' || a.name AS asset, a.id <> i.asset_id AS own_vm
              FROM runtime_instances i
              JOIN trust_assets a
                ON a.id = i.asset_id
                OR (a.tenant = i.tenant AND a.name = i.handle ->> 'vm_asset')
             WHERE i.state = 'running' AND a.state = 'quarantined'
             ORDER BY i.created_at
             LIMIT :limit
            """
        ),
        {"limit": limit},
    ).all()
    seen: dict[uuid.UUID, QuarantinedInstance] = {}
    for instance_id, asset, own_vm in rows:
        seen.setdefault(instance_id, QuarantinedInstance(instance_id, asset, bool(own_vm)))
    return list(seen.values())

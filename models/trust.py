"""The trust registry: assets, their lifecycle, and its transitions, written race-free and
published live.

Every state change goes through :func:`transition`. It reads the asset, asks a *plan* what to do
given the state it found, writes the new state together with one append-only
``trust_transitions`` row per step and a PostgreSQL ``NOTIFY`` (delivered only if the
transaction commits), then publishes the same message on Redis. The UPDATE carries the version
it read (SQLAlchemy's ``version_id_col``); when another writer got there first the whole unit is
rolled back and the plan runs again on a fresh read, so a lost race is re-decided, never
overwritten. A plan asking for an edge the lifecycle does not have raises
:class:`IllegalTransitionError`.

Over 500 lines on purpose: the registry's tables, its lifecycle (the allowed edges) and the one
writer of transitions are a single invariant (version-checked state, its append-only rows and
their announcement in one transaction); split, each part would be correct only with the others.
"""

from __future__ import annotations

import json
import uuid
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from enum import StrEnum
from typing import Any

import redis
from sqlalchemy import (
    BigInteger,
    CheckConstraint,
    DateTime,
    ForeignKey,
    Index,
    Integer,
    LargeBinary,
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
from sqlalchemy.orm.exc import StaleDataError
from tenacity import (
    Retrying,
    retry_if_exception_type,
    stop_after_attempt,
    wait_random_exponential,
)

from kernel.errors import DrydockError, NotFoundError, TransientError
from kernel.settings import get_settings
from models import stream
from models.base import Base, sql_in_list
from models.db import session_scope
from models.notices import pg_listen, pg_notify, publish

# Published (Redis) when Drydock wants fresh evidence from an asset: its agent should send it,
# carrying the message's ``nonce``. What asks also records the nonce (a remediation run, a VM
# instance), so a missed message is not a lost request.
EVIDENCE_REQUEST_CHANNEL = "drydock:attestation:evidence-requests"


class TrustState(StrEnum):
    """Where an asset stands. Moves only along ``models.trust.ALLOWED_TRANSITIONS``."""

    UNKNOWN = "unknown"
    PENDING_ATTESTATION = "pending_attestation"
    TRUSTED = "trusted"
    # Its evidence expired: it was trusted, nothing says it still is.
    STALE = "stale"
    # Verification failed or policy was breached; only remediation releases it.
    QUARANTINED = "quarantined"
    REMEDIATING = "remediating"


class AssetKind(StrEnum):
    VM = "vm"
    HOST = "host"
    ACCELERATOR = "accelerator"


class TrustAssetClass(Base):
    """Reference values and policy shared by a class of assets (a VM image, a host model, an
    accelerator tier): what their evidence must show, and how long it keeps them trusted."""

    __tablename__ = "trust_asset_classes"

    name: Mapped[str] = mapped_column(String(100), primary_key=True)
    evidence_ttl_seconds: Mapped[int] = mapped_column(Integer)
    # {"sha256": {"0": "<hex>", ...}, ...}: PCR values a TPM quote must report.
    tpm_pcrs: Mapped[dict[str, dict[str, str]]] = mapped_column(JSONB, default=dict)
    # Allowed SEV-SNP launch measurements and TDX MRTDs (hex); empty: none is allowed.
    snp_measurements: Mapped[list[str]] = mapped_column(JSONB, default=list)
    # {"bootloader": n, "tee": n, "snp": n, "microcode": n}: the lowest SNP TCB accepted.
    snp_min_tcb: Mapped[dict[str, int] | None] = mapped_column(JSONB)
    tdx_mr_td: Mapped[list[str]] = mapped_column(JSONB, default=list)
    # {"0": "<hex>", ...}: RTMR values a TDX quote must carry.
    tdx_rtmrs: Mapped[dict[str, str]] = mapped_column(JSONB, default=dict)
    tdx_accepted_tcb_statuses: Mapped[list[str]] = mapped_column(JSONB, default=list)
    allow_debug: Mapped[bool] = mapped_column(default=False)
    # Accelerator tier gates: the lowest driver version, and whether CC mode must be on.
    accelerator_min_driver: Mapped[str | None] = mapped_column(String(50))
    accelerator_require_cc: Mapped[bool] = mapped_column(default=False)
    accelerator_require_ecc: Mapped[bool] = mapped_column(default=False)
    # The tenant's playbook of this name is requested, by itself, for the class's assets that
    # are quarantined (the remediation sweep); None: an operator asks.
    remediation_playbook: Mapped[str | None] = mapped_column(String(100))
    updated_at: Mapped[datetime] = mapped_column(
        DateTime(timezone=True), server_default=func.now(), onupdate=func.now()
    )
    updated_by: Mapped[str | None] = mapped_column(String(200))

    __table_args__ = (CheckConstraint("evidence_ttl_seconds > 0", name="evidence_ttl_seconds"),)


class TrustAsset(Base):
    """A VM, host or accelerator of a tenant, and where it stands.

    ``version`` is the optimistic lock: SQLAlchemy adds ``AND version = <read>`` to every
    UPDATE and raises StaleDataError when another writer got there first (models.trust retries
    from a fresh read, so a lost race never overwrites)."""

    __tablename__ = "trust_assets"

    id: Mapped[uuid.UUID] = mapped_column(Uuid, primary_key=True, default=uuid.uuid4)
    tenant: Mapped[str] = mapped_column(String(100))
    name: Mapped[str] = mapped_column(String(200))
    kind: Mapped[str] = mapped_column(String(20))
    asset_class: Mapped[str | None] = mapped_column(
        String(100), ForeignKey("trust_asset_classes.name", ondelete="RESTRICT")
    )
    state: Mapped[str] = mapped_column(String(30), default=TrustState.UNKNOWN.value)
    version: Mapped[int] = mapped_column(Integer, nullable=False)
    # The registered TPM attestation key, as given (PEM, TPMT_PUBLIC or JWK); public, not secret.
    attestation_key: Mapped[bytes | None] = mapped_column(LargeBinary)
    # The newest accepted TPM quote's clock info: an older or equal one is a replay.
    tpm_reset_count: Mapped[int | None] = mapped_column(BigInteger)
    tpm_restart_count: Mapped[int | None] = mapped_column(BigInteger)
    tpm_clock: Mapped[int | None] = mapped_column(BigInteger)
    last_verified_at: Mapped[datetime | None] = mapped_column(DateTime(timezone=True))
    evidence_expires_at: Mapped[datetime | None] = mapped_column(DateTime(timezone=True))
    # The newest accelerator posture report, as validated.
    posture: Mapped[dict[str, Any] | None] = mapped_column(JSONB)
    # Linked libvirt domain (attestation.sync_vm_inventory).
    libvirt_uuid: Mapped[uuid.UUID | None] = mapped_column(Uuid, unique=True)
    libvirt_state: Mapped[str | None] = mapped_column(String(30))
    inventory_seen_at: Mapped[datetime | None] = mapped_column(DateTime(timezone=True))
    inventory_missing_since: Mapped[datetime | None] = mapped_column(DateTime(timezone=True))
    # Remediation on a protected asset always needs an approval.
    protected: Mapped[bool] = mapped_column(default=False, server_default=text("false"))
    # The remediation lane (stage) it is in: which workspace promotions cover it.
    lane: Mapped[str | None] = mapped_column(String(100))
    # How playbooks reach it: ansible host vars (ansible_host, ansible_user, ...),
    # kubernetes_node, libvirt_domain. Not secret: credentials live with the workers.
    connection: Mapped[dict[str, Any]] = mapped_column(
        JSONB, default=dict, server_default=text("'{}'::jsonb")
    )
    created_at: Mapped[datetime] = mapped_column(DateTime(timezone=True), server_default=func.now())
    updated_at: Mapped[datetime] = mapped_column(
        DateTime(timezone=True), server_default=func.now(), onupdate=func.now()
    )

    __mapper_args__ = {"version_id_col": version}  # noqa: RUF012 (SQLAlchemy reads a dict)
    __table_args__ = (
        UniqueConstraint("tenant", "name"),
        CheckConstraint(sql_in_list("state", tuple(TrustState)), name="state"),
        CheckConstraint(sql_in_list("kind", tuple(AssetKind)), name="kind"),
        # The staleness sweep reads only trusted rows that are due, through this index.
        Index(
            "ix_trust_assets_trusted_expiry",
            "evidence_expires_at",
            postgresql_where=text("state = 'trusted'"),
        ),
    )


class TrustTransition(Base):
    """One change of an asset's state. Append-only: the database refuses UPDATE and DELETE
    (a trigger, see migration 0004), and (asset, seq) is unique, so history cannot fork."""

    __tablename__ = "trust_transitions"

    id: Mapped[int] = mapped_column(BigInteger, primary_key=True, autoincrement=True)
    asset_id: Mapped[uuid.UUID] = mapped_column(
        Uuid, ForeignKey("trust_assets.id", ondelete="RESTRICT")
    )
    # The asset's version once this transition was written: orders the history.
    seq: Mapped[int] = mapped_column(Integer)
    tenant: Mapped[str] = mapped_column(String(100))
    # None only for the row that registers the asset.
    from_state: Mapped[str | None] = mapped_column(String(30))
    to_state: Mapped[str] = mapped_column(String(30))
    cause: Mapped[str] = mapped_column(String(50))
    detail: Mapped[str] = mapped_column(Text, default="")
    # What moved it: a verdict id and its failed checks, a posture gate, a job.
    evidence: Mapped[dict[str, Any]] = mapped_column(JSONB, default=dict)
    actor: Mapped[str] = mapped_column(String(200))
    job_id: Mapped[uuid.UUID | None] = mapped_column(
        Uuid, ForeignKey("jobs.id", ondelete="SET NULL")
    )
    created_at: Mapped[datetime] = mapped_column(DateTime(timezone=True), server_default=func.now())

    __table_args__ = (
        UniqueConstraint("asset_id", "seq"),
        CheckConstraint(sql_in_list("to_state", tuple(TrustState)), name="to_state"),
        Index(None, "tenant", "created_at"),
    )


class AttestationVerdict(Base):
    """One verification of an asset's evidence (or accelerator posture): every check and the
    claims read. One per job: a redelivered job finds its verdict instead of judging again."""

    __tablename__ = "attestation_verdicts"

    id: Mapped[int] = mapped_column(BigInteger, primary_key=True, autoincrement=True)
    asset_id: Mapped[uuid.UUID] = mapped_column(
        Uuid, ForeignKey("trust_assets.id", ondelete="RESTRICT")
    )
    job_id: Mapped[uuid.UUID | None] = mapped_column(
        Uuid, ForeignKey("jobs.id", ondelete="SET NULL"), unique=True
    )
    kind: Mapped[str] = mapped_column(String(30))
    verified: Mapped[bool]
    summary: Mapped[str] = mapped_column(Text)
    checks: Mapped[list[dict[str, str]]] = mapped_column(JSONB)
    claims: Mapped[dict[str, Any]] = mapped_column(JSONB)
    nonce: Mapped[str | None] = mapped_column(String(200))
    # The time certificates and collateral were judged at (now, or the pinned time).
    judged_at: Mapped[datetime] = mapped_column(DateTime(timezone=True))
    created_at: Mapped[datetime] = mapped_column(DateTime(timezone=True), server_default=func.now())

    __table_args__ = (Index(None, "asset_id", "created_at"),)


# PostgreSQL NOTIFY channel and Redis pub/sub channel every transition is published on.
PG_CHANNEL = "drydock_trust"
REDIS_CHANNEL = "drydock:trust:transitions"

S = TrustState
ALLOWED_TRANSITIONS: dict[TrustState | None, frozenset[TrustState]] = {
    # Registration.
    None: frozenset({S.UNKNOWN}),
    S.UNKNOWN: frozenset({S.PENDING_ATTESTATION}),
    # Judged: trusted; stale when the evidence verified but had already expired when judged
    # (a pinned verification time); quarantined when it failed.
    S.PENDING_ATTESTATION: frozenset({S.TRUSTED, S.STALE, S.QUARANTINED}),
    # Expired, failed a later verification or posture report, or asked to attest again.
    S.TRUSTED: frozenset({S.STALE, S.QUARANTINED, S.PENDING_ATTESTATION}),
    S.STALE: frozenset({S.PENDING_ATTESTATION, S.QUARANTINED}),
    # Only remediation releases a quarantined asset.
    S.QUARANTINED: frozenset({S.REMEDIATING}),
    # Remediation done: attest again; remediation failed: back to quarantine.
    S.REMEDIATING: frozenset({S.PENDING_ATTESTATION, S.QUARANTINED}),
}
del S

# Attempts at one transition before a writer that keeps losing races gives up.
TRANSITION_ATTEMPTS = 8


class IllegalTransitionError(DrydockError):
    def __init__(self, asset: str, from_state: str | None, to_state: str) -> None:
        allowed = ", ".join(sorted(ALLOWED_TRANSITIONS.get(_state(from_state), ()))) or "none"
        super().__init__(
            f"asset {asset} cannot move from {from_state or '(new)'} to {to_state}; "
            f"allowed from {from_state or '(new)'}: {allowed}"
        )
        self.from_state = from_state
        self.to_state = to_state


class TransitionConflictError(TransientError):
    """Other writers kept changing the asset between our read and our write."""


class AssetNotFoundError(NotFoundError):
    def __init__(self, asset: str) -> None:
        super().__init__(f"no trust asset {asset}")


class AssetClassNotFoundError(NotFoundError):
    def __init__(self, name: str) -> None:
        super().__init__(f"no asset class {name!r}; create it with `drydock trust class set`")


def _state(value: str | None) -> TrustState | None:
    return None if value is None else TrustState(value)


@dataclass(frozen=True)
class Move:
    """One step a plan asks for: to ``to_state``, because ``cause`` (a short identifier such as
    ``evidence_failed``), with ``detail`` for people and ``evidence`` for machines."""

    to_state: TrustState
    cause: str
    detail: str = ""
    evidence: dict[str, Any] = field(default_factory=dict)


@dataclass(frozen=True)
class TransitionRecord:
    """A committed transition as published on both channels and printed by ``trust watch``."""

    id: int
    asset_id: str
    tenant: str
    asset: str
    seq: int
    from_state: str | None
    to_state: str
    cause: str
    detail: str
    actor: str
    job_id: str | None
    at: str

    @classmethod
    def of(cls, row: TrustTransition, asset: TrustAsset) -> TransitionRecord:
        return cls(
            id=row.id,
            asset_id=str(asset.id),
            tenant=asset.tenant,
            asset=asset.name,
            seq=row.seq,
            from_state=row.from_state,
            to_state=row.to_state,
            cause=row.cause,
            # NOTIFY payloads must stay under 8000 bytes; the row keeps the whole detail.
            detail=row.detail[:1000],
            actor=row.actor,
            job_id=str(row.job_id) if row.job_id else None,
            at=(row.created_at or datetime.now(UTC)).astimezone(UTC).isoformat(),
        )

    @classmethod
    def from_message(cls, message: str | bytes) -> TransitionRecord:
        data = json.loads(message)
        return cls(**{name: data.get(name) for name in cls.__dataclass_fields__})

    def as_message(self) -> str:
        return json.dumps(self.__dict__, separators=(",", ":"))

    def line(self) -> str:
        """One readable line: when, which asset, from → to, why, who."""
        moved = f"{self.from_state or '(new)'} -> {self.to_state}"
        why = f"{self.cause}: {self.detail}" if self.detail else self.cause
        job = f" job {self.job_id}" if self.job_id else ""
        return f"{self.at[:19]}Z {self.tenant}/{self.asset} {moved} ({why}) by {self.actor}{job}"


Plan = Callable[[Session, TrustAsset], Sequence[Move]]


def transition(
    asset_id: uuid.UUID,
    plan: Plan,
    *,
    actor: str,
    job_id: uuid.UUID | None = None,
    attempts: int = TRANSITION_ATTEMPTS,
) -> list[TransitionRecord]:
    """Apply what ``plan`` decides for the asset, race-free. Returns the committed transitions
    (none when the plan asked for none) after publishing them.

    ``plan`` runs inside the transaction, on a fresh read each attempt, and may write other rows
    (a verdict, say) through the session it is given: they commit or roll back with the move.
    A lost race retries with jittered backoff; after ``attempts`` it raises
    TransitionConflictError (retryable by the job). IllegalTransitionError is raised at once.
    """
    retrying = Retrying(
        retry=retry_if_exception_type(StaleDataError),
        stop=stop_after_attempt(attempts),
        wait=wait_random_exponential(multiplier=0.01, max=0.5),
        reraise=True,
    )
    try:
        for attempt in retrying:
            with attempt:
                records = _transition_once(asset_id, plan, actor=actor, job_id=job_id)
    except StaleDataError as exc:
        raise TransitionConflictError(
            f"asset {asset_id} changed under {attempts} attempts to move it; try again"
        ) from exc
    publish_to_redis(records)
    return records


def _transition_once(
    asset_id: uuid.UUID, plan: Plan, *, actor: str, job_id: uuid.UUID | None
) -> list[TransitionRecord]:
    with session_scope() as session:
        asset = session.get(TrustAsset, asset_id, populate_existing=True)
        if asset is None:
            raise AssetNotFoundError(str(asset_id))
        moves = plan(session, asset)
        rows = [apply_move(session, asset, move, actor=actor, job_id=job_id) for move in moves]
        # Flush whatever else the plan changed on the asset, under the same version check.
        session.flush()
        quarantine = next((r for r in rows if r.to_state == TrustState.QUARANTINED.value), None)
        if quarantine is not None:
            # Imported here: the policy records import this module.
            from models.policy import preempt_waiting_jobs

            why = (
                f"{quarantine.cause}: {quarantine.detail}"
                if quarantine.detail
                else quarantine.cause
            )
            preempt_waiting_jobs(
                session,
                asset,
                reason=f"target asset {asset.tenant}/{asset.name} was quarantined ({why})"[:1000],
                actor=actor,
            )
        return _notify(session, asset, rows)


def _notify(
    session: Session, asset: TrustAsset, rows: Sequence[TrustTransition]
) -> list[TransitionRecord]:
    """NOTIFY each new row inside the transaction: listeners hear it only if this commits, and
    in commit order."""
    records = [TransitionRecord.of(row, asset) for row in rows]
    for record, row in zip(records, rows, strict=True):
        pg_notify(session, PG_CHANNEL, record.as_message())
        # The stream keeps the whole detail (the NOTIFY payload's is cut to fit).
        stream.stage(
            session,
            stream.StreamEventKind.TRUST_TRANSITION,
            asset.tenant,
            {**record.__dict__, "detail": row.detail},
        )
    return records


def apply_move(
    session: Session,
    asset: TrustAsset,
    move: Move,
    *,
    actor: str,
    job_id: uuid.UUID | None,
) -> TrustTransition:
    """Move ``asset`` one step (checked against ALLOWED_TRANSITIONS) and append its row."""
    from_state = asset.state
    if move.to_state not in ALLOWED_TRANSITIONS.get(_state(from_state), frozenset()):
        raise IllegalTransitionError(f"{asset.tenant}/{asset.name}", from_state, move.to_state)
    asset.state = move.to_state.value
    # The UPDATE ... WHERE version = <read>: StaleDataError here means we lost a race.
    session.flush()
    return _append(session, asset, from_state, move, actor=actor, job_id=job_id)


def _append(
    session: Session,
    asset: TrustAsset,
    from_state: str | None,
    move: Move,
    *,
    actor: str,
    job_id: uuid.UUID | None,
) -> TrustTransition:
    """Write the transition row of a move already flushed to ``asset`` (seq: its new version)."""
    row = TrustTransition(
        asset_id=asset.id,
        seq=asset.version,
        tenant=asset.tenant,
        from_state=from_state,
        to_state=move.to_state.value,
        cause=move.cause,
        detail=move.detail,
        evidence=move.evidence,
        actor=actor,
        job_id=job_id,
    )
    session.add(row)
    session.flush()
    session.refresh(row, ["created_at"])
    return row


def publish_to_redis(records: Sequence[TransitionRecord]) -> None:
    """Publish committed transitions on Redis. Best effort: the rows and the PostgreSQL
    notification are the record."""
    publish(REDIS_CHANNEL, [record.as_message() for record in records])


def register_asset(
    *,
    tenant: str,
    name: str,
    kind: AssetKind,
    actor: str,
    asset_class: str | None = None,
    attestation_key: bytes | None = None,
) -> tuple[uuid.UUID, bool]:
    """Create the asset in ``unknown`` (with its registration transition), or update the class
    and key of an existing one. Returns (id, created)."""
    with session_scope() as session:
        if asset_class is not None and session.get(TrustAssetClass, asset_class) is None:
            raise AssetClassNotFoundError(asset_class)
        existing = session.scalar(
            select(TrustAsset).where(TrustAsset.tenant == tenant, TrustAsset.name == name)
        )
        if existing is not None:
            if existing.kind != kind.value:
                raise DrydockError(
                    f"asset {tenant}/{name} is registered as a {existing.kind}, not a {kind.value}"
                )
            if asset_class is not None:
                existing.asset_class = asset_class
            if attestation_key is not None:
                existing.attestation_key = attestation_key
            return existing.id, False
        asset = TrustAsset(
            tenant=tenant,
            name=name,
            kind=kind.value,
            asset_class=asset_class,
            attestation_key=attestation_key,
            state=TrustState.UNKNOWN.value,
        )
        session.add(asset)
        session.flush()
        detail = f"{kind.value} registered" + (f" in class {asset_class}" if asset_class else "")
        registered = Move(TrustState.UNKNOWN, "registered", detail)
        row = _append(session, asset, None, registered, actor=actor, job_id=None)
        records = _notify(session, asset, [row])
        asset_id = asset.id
    publish_to_redis(records)
    return asset_id, True


def find_asset(session: Session, ref: str, tenant: str | None = None) -> TrustAsset:
    """An asset by id, or by ``tenant/name`` or name (with ``tenant``)."""
    try:
        asset = session.get(TrustAsset, uuid.UUID(ref))
    except ValueError:
        if "/" in ref and tenant is None:
            tenant, ref = ref.split("/", 1)
        query = select(TrustAsset).where(TrustAsset.name == ref)
        if tenant is not None:
            query = query.where(TrustAsset.tenant == tenant)
        found = session.scalars(query.limit(2)).all()
        if len(found) > 1:
            raise DrydockError(
                f"{ref!r} names assets of several tenants; say tenant/name"
            ) from None
        asset = found[0] if found else None
    if asset is None:
        raise AssetNotFoundError(ref if tenant is None else f"{tenant}/{ref}")
    return asset


def history(session: Session, asset_id: uuid.UUID) -> list[TrustTransition]:
    return list(
        session.scalars(
            select(TrustTransition)
            .where(TrustTransition.asset_id == asset_id)
            .order_by(TrustTransition.seq)
        )
    )


def latest_verdict(session: Session, asset_id: uuid.UUID) -> AttestationVerdict | None:
    """The asset's newest verdict (of evidence or posture), if any."""
    return session.scalars(
        select(AttestationVerdict)
        .where(AttestationVerdict.asset_id == asset_id)
        .order_by(AttestationVerdict.id.desc())
        .limit(1)
    ).first()


def due_for_staleness(session: Session, now: datetime, limit: int) -> list[uuid.UUID]:
    """Trusted assets whose evidence expired by ``now``, oldest first. Served by the partial
    index ``ix_trust_assets_trusted_expiry``: the sweep reads only rows that are due."""
    return list(
        session.scalars(
            select(TrustAsset.id)
            .where(
                TrustAsset.state == TrustState.TRUSTED.value,
                TrustAsset.evidence_expires_at <= now,
            )
            .order_by(TrustAsset.evidence_expires_at)
            .limit(limit)
        )
    )


def expire_stale_evidence(now: datetime, *, actor: str, limit: int = 500) -> list[TransitionRecord]:
    """Move every trusted asset whose evidence has expired to ``stale``. An asset that changed
    in the meantime (verified again, quarantined) is re-read and left alone."""

    def plan(session: Session, asset: TrustAsset) -> list[Move]:
        expires = asset.evidence_expires_at
        if asset.state != TrustState.TRUSTED.value or expires is None or expires > now:
            return []
        return [
            Move(
                TrustState.STALE,
                "evidence_expired",
                f"evidence expired at {expires.astimezone(UTC):%Y-%m-%dT%H:%M:%SZ}",
            )
        ]

    with session_scope() as session:
        due = due_for_staleness(session, now, limit)
    records: list[TransitionRecord] = []
    for asset_id in due:
        records += transition(asset_id, plan, actor=actor)
    return records


def state_counts(session: Session) -> dict[str, int]:
    rows = session.execute(select(TrustAsset.state, func.count()).group_by(TrustAsset.state)).all()
    return {state: count for state, count in rows}


def listen(
    *, tenant: str | None = None, on_ready: Callable[[], None] | None = None
) -> Iterator[TransitionRecord]:
    """Transitions as they commit, from PostgreSQL LISTEN, forever (the caller stops).
    ``on_ready`` is called once the LISTEN is in place: nothing committed after it is missed."""
    for notice in pg_listen([PG_CHANNEL], on_ready=on_ready):
        record = TransitionRecord.from_message(notice.payload)
        if tenant is None or record.tenant == tenant:
            yield record


def subscribe(
    *, tenant: str | None = None, on_ready: Callable[[], None] | None = None
) -> Iterator[TransitionRecord]:
    """Transitions as they are published on Redis, forever (the caller stops)."""
    client = redis.Redis.from_url(get_settings().broker_url)
    pubsub = client.pubsub()
    pubsub.subscribe(REDIS_CHANNEL)
    try:
        # The server's subscribe confirmation: from here on nothing published is missed.
        while pubsub.get_message(timeout=5) is None:
            pass
        if on_ready is not None:
            on_ready()
        for message in pubsub.listen():  # type: ignore[no-untyped-call]
            if message.get("type") != "message":
                continue
            record = TransitionRecord.from_message(message["data"])
            if tenant is None or record.tenant == tenant:
                yield record
    finally:
        pubsub.close()
        client.close()

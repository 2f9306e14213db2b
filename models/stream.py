"""The event stream's stored history: trust transitions, policy decisions and remediation
updates, one ``stream_events`` row each, in one order that readers can resume from.

A writer *stages* an event in its transaction (:func:`stage`); the rows are written just
before that transaction commits, under a transaction-level advisory lock. The lock is why a
reader that has seen event N never later finds an N-1: ids are taken and committed one
transaction at a time, so a smaller id can never become visible after a larger one. (Without
it, transaction A could take id 5, B id 6, B commit, a reader move its cursor past 6, and A's 5
appear behind it: a gap.) The lock is taken only after the transaction's other writes have
been flushed, and the transaction does nothing but insert these rows before it commits, so it
waits on no other lock while it holds this one: it cannot deadlock, and it is held for a
commit's length.

``GET /v1/stream`` reads this table after the client's ``Last-Event-ID``; a NOTIFY on
``drydock_stream`` (sent on commit) says there is more, for readers that listen.
"""

from __future__ import annotations

from collections.abc import Callable, Collection, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from enum import StrEnum
from typing import Any

from sqlalchemy import (
    BigInteger,
    CheckConstraint,
    DateTime,
    Identity,
    Index,
    String,
    bindparam,
    event,
    func,
    select,
    text,
)
from sqlalchemy.dialects.postgresql import JSONB
from sqlalchemy.orm import Mapped, Session, mapped_column

from kernel.redaction import redact
from models.base import Base, sql_in_list


class StreamEventKind(StrEnum):
    TRUST_TRANSITION = "trust.transition"
    POLICY_DECISION = "policy.decision"
    REMEDIATION_UPDATE = "remediation.update"
    REMEDIATION_WORKSPACE = "remediation.workspace"
    WORKFLOW_EVENT = "workflow.event"
    RUNTIME_INSTANCE = "runtime.instance"
    RUNTIME_RELEASE = "runtime.release"


class StreamEvent(Base):
    """One thing that happened, as the stream serves it. Append-only."""

    __tablename__ = "stream_events"

    id: Mapped[int] = mapped_column(BigInteger, Identity(), primary_key=True)
    kind: Mapped[str] = mapped_column(String(40))
    # None: no tenant's (an operator's decision for no tenant); operator streams only.
    tenant: Mapped[str | None] = mapped_column(String(100))
    data: Mapped[dict[str, Any]] = mapped_column(JSONB)
    at: Mapped[datetime] = mapped_column(DateTime(timezone=True), server_default=func.now())

    __table_args__ = (
        CheckConstraint(sql_in_list("kind", tuple(StreamEventKind)), name="kind"),
        Index(None, "tenant", "id"),
    )


PG_CHANNEL = "drydock_stream"
_STAGED = "drydock.stream.staged"
_NOTICES = "drydock.stream.notices"

# The data of an event, or a function giving it once the transaction is about to commit (when
# what it describes, such as a run's state set after the audit row, is final).
EventData = dict[str, Any] | Callable[[], dict[str, Any]]


def stage(session: Session, kind: StreamEventKind, tenant: str | None, data: EventData) -> None:
    """Add an event to the stream if, and when, ``session``'s transaction commits."""
    session.info.setdefault(_STAGED, []).append((kind, tenant, data))


def stage_notice(session: Session, channel: str, payload: str) -> None:
    """``pg_notify`` on commit, sent in the same round trip as the staged events (a NOTIFY is
    delivered on commit wherever in the transaction it is sent). Under 8000 bytes."""
    session.info.setdefault(_NOTICES, []).append((channel, payload))


# The staged events and notices in one round trip (the function is migration 0018's): the
# notices, then the append lock (a 64-bit key no other advisory lock of Drydock's uses; those
# are derived from uuids), the rows in their staged order and the NOTIFY of the newest id.
_APPEND = text("SELECT drydock_stream_append(:events, :notices)").bindparams(
    bindparam("events", type_=JSONB), bindparam("notices", type_=JSONB)
)


@event.listens_for(Session, "before_commit")
def _write_staged(session: Session) -> None:
    staged = session.info.pop(_STAGED, None)
    notices = session.info.pop(_NOTICES, None)
    if not staged and not notices:
        return
    # Everything else first: from the lock on, this transaction waits on nothing.
    session.flush()
    events = [
        {
            "kind": kind.value,
            "tenant": tenant,
            # Secrets never reach the stream: what the rows hold is redacted again here.
            "data": redact(data() if callable(data) else data),
        }
        for kind, tenant, data in staged or ()
    ]
    session.execute(_APPEND, {"events": events, "notices": notices or []})


@event.listens_for(Session, "after_soft_rollback")
def _drop_staged(session: Session, previous_transaction: Any) -> None:
    # A rolled-back transaction's events never happened.
    if previous_transaction.parent is None:
        session.info.pop(_STAGED, None)
        session.info.pop(_NOTICES, None)


@dataclass(frozen=True)
class StreamFilter:
    """What a reader may see: events of ``kinds``; of ``tenant`` only, or every tenant's."""

    kinds: Collection[StreamEventKind]
    tenant: str | None = None


def events_after(
    session: Session, after: int, seen: StreamFilter, *, limit: int = 100
) -> Sequence[StreamEvent]:
    """Events with an id above ``after`` that ``seen`` admits, oldest first."""
    query = (
        select(StreamEvent)
        .where(StreamEvent.id > after, StreamEvent.kind.in_([k.value for k in seen.kinds]))
        .order_by(StreamEvent.id)
        .limit(limit)
    )
    if seen.tenant is not None:
        query = query.where(StreamEvent.tenant == seen.tenant)
    return session.scalars(query).all()


def last_event_id(session: Session) -> int:
    """The newest event's id (0 when there is none): where a reader starting now begins."""
    return session.scalar(select(func.coalesce(func.max(StreamEvent.id), 0))) or 0


def event_time(row: StreamEvent) -> str:
    return row.at.astimezone(UTC).isoformat()

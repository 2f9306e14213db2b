"""A workflow run's timeline: what happened to it, one ``workflow_events`` row each, in order.

The rows are the run's audit trail as well as its timeline: every step that finishes has one
(``step.succeeded``, ``step.failed``, ``step.cancelled``) naming the runner (the worker's
hostname) and the policy context it ran under (the run's push decision, its tenant), and so
has every commit and every push. Each row is announced on commit (NOTIFY ``drydock_workflows``,
which ``drydock policy watch`` follows) and staged on the event stream (``workflow.event``).
Append-only, like the histories it sits beside.
"""

from __future__ import annotations

import json
import uuid
from datetime import datetime
from typing import Any

from sqlalchemy import (
    BigInteger,
    DateTime,
    ForeignKey,
    Identity,
    Index,
    String,
    Uuid,
    func,
    select,
)
from sqlalchemy.dialects.postgresql import JSONB
from sqlalchemy.orm import Mapped, Session, mapped_column

from kernel.redaction import redact
from models import notices, stream
from models.base import Base

PG_CHANNEL = "drydock_workflows"
MAX_EVENTS_READ = 1000


class WorkflowEvent(Base):
    __tablename__ = "workflow_events"

    id: Mapped[int] = mapped_column(BigInteger, Identity(), primary_key=True)
    run_id: Mapped[uuid.UUID] = mapped_column(Uuid, ForeignKey("workflow_runs.id"))
    tenant: Mapped[str] = mapped_column(String(100))
    # run.started, run.failed, run.succeeded, run.cancelled, step.started, step.commit,
    # step.skipped, step.push, step.attempt_failed, step.succeeded, step.failed, step.cancelled
    type: Mapped[str] = mapped_column(String(40))
    step: Mapped[str | None] = mapped_column(String(63))
    runner: Mapped[str | None] = mapped_column(String(200))
    data: Mapped[dict[str, Any]] = mapped_column(JSONB)
    at: Mapped[datetime] = mapped_column(DateTime(timezone=True), server_default=func.now())

    __table_args__ = (Index(None, "run_id", "id"),)


def record(
    session: Session,
    run_id: uuid.UUID,
    tenant: str,
    type_: str,
    *,
    step: str | None = None,
    runner: str | None = None,
    **data: Any,
) -> None:
    """Add an event to the run's timeline in ``session``'s transaction (announced on commit).
    ``data`` is redacted: no secret reaches the timeline."""
    clean = redact(data)
    row = WorkflowEvent(
        run_id=run_id, tenant=tenant, type=type_, step=step, runner=runner, data=clean
    )
    session.add(row)
    session.flush()
    message = {
        "id": row.id,
        "run_id": str(run_id),
        "tenant": tenant,
        "type": type_,
        "step": step,
        "runner": runner,
        **clean,
    }
    # NOTIFY payloads are bounded (8000 bytes): a large event is announced without its data.
    payload = json.dumps(message, default=str, separators=(",", ":"))
    if len(payload) > 7000:
        payload = json.dumps({k: message[k] for k in ("id", "run_id", "tenant", "type", "step")})
    notices.pg_notify(session, PG_CHANNEL, payload)
    stream.stage(session, stream.StreamEventKind.WORKFLOW_EVENT, tenant, message)


def events_of(
    session: Session, run_id: uuid.UUID, after: int = 0, limit: int = MAX_EVENTS_READ
) -> list[WorkflowEvent]:
    return list(
        session.scalars(
            select(WorkflowEvent)
            .where(WorkflowEvent.run_id == run_id, WorkflowEvent.id > after)
            .order_by(WorkflowEvent.id)
            .limit(limit)
        )
    )


def event_json(row: WorkflowEvent) -> dict[str, Any]:
    return {
        "id": row.id,
        "run_id": str(row.run_id),
        "type": row.type,
        "step": row.step,
        "runner": row.runner,
        "at": row.at.isoformat() if row.at else None,
        **row.data,
    }

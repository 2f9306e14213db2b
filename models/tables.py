"""The outcome store: every job, every transition of it, and every dead letter."""

from __future__ import annotations

import uuid
from datetime import datetime
from enum import StrEnum
from typing import Any

from sqlalchemy import (
    BigInteger,
    CheckConstraint,
    DateTime,
    ForeignKey,
    Identity,
    Index,
    Integer,
    PrimaryKeyConstraint,
    String,
    Text,
    Uuid,
    func,
    text,
)
from sqlalchemy.dialects.postgresql import JSONB
from sqlalchemy.orm import Mapped, mapped_column

from models.base import Base


class JobStatus(StrEnum):
    QUEUED = "queued"
    RUNNING = "running"
    RETRYING = "retrying"
    SUCCEEDED = "succeeded"
    DEAD_LETTERED = "dead_lettered"


TERMINAL_STATUSES = (JobStatus.SUCCEEDED, JobStatus.DEAD_LETTERED)


class EventKind(StrEnum):
    ENQUEUED = "enqueued"
    STARTED = "started"
    PROGRESS = "progress"
    RETRY = "retry"
    SUCCEEDED = "succeeded"
    FAILED = "failed"
    DEAD_LETTERED = "dead_lettered"


# A job has at most one of each of these: the database itself refuses a duplicated outcome.
OUTCOME_EVENT_KINDS = (EventKind.SUCCEEDED, EventKind.FAILED, EventKind.DEAD_LETTERED)


def sql_in_list(column: str, values: tuple[StrEnum, ...]) -> str:
    """``column IN ('a', 'b')`` for a set of enum values, for constraints and raw statements."""
    return f"{column} IN ({', '.join(repr(v.value) for v in values)})"


class Job(Base):
    __tablename__ = "jobs"

    id: Mapped[uuid.UUID] = mapped_column(Uuid, primary_key=True, default=uuid.uuid4)
    task_name: Mapped[str] = mapped_column(String(200))
    queue: Mapped[str] = mapped_column(String(50))
    # Secret-looking fields are replaced by "[REDACTED]"; see workers.redaction.
    payload: Mapped[dict[str, Any]] = mapped_column(JSONB)
    # Fernet token of the redacted values, present only when a fleet key is configured.
    sealed_secrets: Mapped[str | None] = mapped_column(Text)
    idempotency_key: Mapped[str | None] = mapped_column(String(200), unique=True)
    status: Mapped[str] = mapped_column(String(20), default=JobStatus.QUEUED.value)
    attempts: Mapped[int] = mapped_column(Integer, default=0, server_default="0")
    enqueued_by: Mapped[str | None] = mapped_column(String(200))
    replay_of: Mapped[uuid.UUID | None] = mapped_column(
        Uuid, ForeignKey("jobs.id", ondelete="SET NULL")
    )
    enqueued_at: Mapped[datetime] = mapped_column(
        DateTime(timezone=True), server_default=func.now()
    )
    started_at: Mapped[datetime | None] = mapped_column(DateTime(timezone=True))
    finished_at: Mapped[datetime | None] = mapped_column(DateTime(timezone=True))
    worker: Mapped[str | None] = mapped_column(String(200))
    worker_pid: Mapped[int | None] = mapped_column(Integer)
    result: Mapped[Any | None] = mapped_column(JSONB)
    error: Mapped[str | None] = mapped_column(Text)
    error_class: Mapped[str | None] = mapped_column(String(200))

    # No index may cover a column that changes while a job runs (status, attempts, times):
    # then PostgreSQL updates the row in place (HOT, helped by the fillfactor) without touching
    # any index, twice for every job. Listings walk enqueued_at newest first and filter.
    __table_args__ = (
        CheckConstraint(sql_in_list("status", tuple(JobStatus)), name="status"),
        Index(None, "enqueued_at"),
        {"postgresql_with": {"fillfactor": 80}},
    )


class JobEvent(Base):
    __tablename__ = "job_events"

    # The key is (job_id, id): one index serves "this job's events in order" and the key both,
    # since every job writes at least two events and each index costs on every insert.
    job_id: Mapped[uuid.UUID] = mapped_column(
        Uuid, ForeignKey("jobs.id", ondelete="CASCADE"), primary_key=True
    )
    id: Mapped[int] = mapped_column(BigInteger, Identity(), primary_key=True)
    kind: Mapped[str] = mapped_column(String(20))
    attempt: Mapped[int] = mapped_column(Integer, default=0)
    at: Mapped[datetime] = mapped_column(DateTime(timezone=True), server_default=func.now())
    # For started: none; for outcomes: how long the attempt ran.
    latency_ms: Mapped[float | None]
    # For started: how long the message waited in its queue (or past its retry ETA).
    queue_wait_ms: Mapped[float | None]
    queue: Mapped[str | None] = mapped_column(String(50))
    worker: Mapped[str | None] = mapped_column(String(200))
    worker_pid: Mapped[int | None] = mapped_column(Integer)
    detail: Mapped[dict[str, Any]] = mapped_column(JSONB, default=dict, server_default="{}")

    __table_args__ = (
        PrimaryKeyConstraint("job_id", "id"),
        CheckConstraint(sql_in_list("kind", tuple(EventKind)), name="kind"),
        Index(
            "uq_job_events_one_outcome",
            "job_id",
            "kind",
            unique=True,
            postgresql_where=text(sql_in_list("kind", OUTCOME_EVENT_KINDS)),
        ),
    )


class DeadLetter(Base):
    __tablename__ = "dead_letters"

    id: Mapped[int] = mapped_column(BigInteger, primary_key=True, autoincrement=True)
    job_id: Mapped[uuid.UUID] = mapped_column(
        Uuid, ForeignKey("jobs.id", ondelete="CASCADE"), unique=True
    )
    task_name: Mapped[str] = mapped_column(String(200))
    queue: Mapped[str] = mapped_column(String(50))
    error_class: Mapped[str] = mapped_column(String(200))
    message: Mapped[str] = mapped_column(Text)
    traceback: Mapped[str | None] = mapped_column(Text)
    payload: Mapped[dict[str, Any]] = mapped_column(JSONB)
    attempts: Mapped[int] = mapped_column(Integer)
    reason: Mapped[str] = mapped_column(String(30))
    dead_lettered_at: Mapped[datetime] = mapped_column(
        DateTime(timezone=True), server_default=func.now()
    )
    replayed_at: Mapped[datetime | None] = mapped_column(DateTime(timezone=True))
    replayed_by: Mapped[str | None] = mapped_column(String(200))
    replay_job_id: Mapped[uuid.UUID | None] = mapped_column(
        Uuid, ForeignKey("jobs.id", ondelete="SET NULL")
    )

    __table_args__ = (Index(None, "dead_lettered_at"),)


class ApiToken(Base):
    """A bearer token of the HTTP API. Only its SHA-256 is stored: the token itself is shown
    once, when it is created."""

    __tablename__ = "api_tokens"

    id: Mapped[int] = mapped_column(BigInteger, primary_key=True, autoincrement=True)
    name: Mapped[str] = mapped_column(String(100))
    token_hash: Mapped[str] = mapped_column(String(64), unique=True)
    # Task-name patterns (fnmatch, e.g. "builds.*"): what the token may enqueue and read.
    scopes: Mapped[list[str]] = mapped_column(JSONB)
    created_at: Mapped[datetime] = mapped_column(DateTime(timezone=True), server_default=func.now())
    created_by: Mapped[str | None] = mapped_column(String(200))
    last_used_at: Mapped[datetime | None] = mapped_column(DateTime(timezone=True))
    revoked_at: Mapped[datetime | None] = mapped_column(DateTime(timezone=True))

    # A name is reused only once its previous token is revoked; revoked ones stay for audit.
    __table_args__ = (
        Index(
            "uq_api_tokens_active_name",
            "name",
            unique=True,
            postgresql_where=text("revoked_at IS NULL"),
        ),
    )

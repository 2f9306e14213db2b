"""The artifact ledger: build runs, their per-platform images and digests, and kept artifacts.

Every write here is idempotent per job: a retried or redelivered job continues the run its first
attempt opened instead of adding another, and a platform's row is updated in place.
"""

from __future__ import annotations

import hashlib
import uuid
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
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
    LargeBinary,
    String,
    Text,
    UniqueConstraint,
    Uuid,
    cast,
    func,
    select,
    text,
    update,
)
from sqlalchemy.dialects.postgresql import JSONB
from sqlalchemy.dialects.postgresql import insert as pg_insert
from sqlalchemy.orm import Mapped, Session, mapped_column

from kernel.errors import NotFoundError
from models.base import Base, sql_in_list
from models.db import session_scope
from models.evaluation import ImageCertification


class BuildStatus(StrEnum):
    FETCHING = "fetching"
    BUILDING = "building"
    # Every platform built; with a push target the pushes and the index follow.
    BUILT = "built"
    PUSHING = "pushing"
    # Pushed, and the multi-platform index published: the request's one tag exists.
    PUBLISHED = "published"
    FAILED = "failed"


class PlatformStatus(StrEnum):
    BUILDING = "building"
    BUILT = "built"
    PUSHING = "pushing"
    PUSHED = "pushed"
    FAILED = "failed"


class CredentialOutcome(StrEnum):
    """What the credential provider gave a build's push, recorded on the run."""

    NOT_NEEDED = "not_needed"  # no push target
    ANONYMOUS = "anonymous"  # the registry has no credentials configured in Drydock
    ISSUED = "issued"  # the provider gave credentials
    REFRESHED = "refreshed"  # the registry refused them; the provider's fresh ones worked
    REJECTED = "rejected"  # refused even after a refresh
    UNAVAILABLE = "unavailable"  # the provider could not give any


class BuildRun(Base):
    """One ``builds.build_image`` job: what was asked, what it resolved to, how it ended."""

    __tablename__ = "build_runs"

    id: Mapped[uuid.UUID] = mapped_column(Uuid, primary_key=True, default=uuid.uuid4)
    # One run per job: a redelivered or retried job continues its run instead of adding one.
    job_id: Mapped[uuid.UUID] = mapped_column(
        Uuid, ForeignKey("jobs.id", ondelete="CASCADE"), unique=True
    )
    # Never with credentials: a URL carrying them is refused (catalog.builds).
    repository_url: Mapped[str] = mapped_column(Text)
    revision: Mapped[str] = mapped_column(String(255))
    # The commit the revision resolved to when it was fetched.
    commit: Mapped[str | None] = mapped_column(String(64))
    ref_kind: Mapped[str | None] = mapped_column(String(10))
    image: Mapped[str] = mapped_column(String(255))
    backend: Mapped[str] = mapped_column(String(20))
    platforms: Mapped[list[str]] = mapped_column(JSONB)
    # {"registry", "repository", "tag"}: where the multi-platform tag goes; None: build only.
    push_target: Mapped[dict[str, Any] | None] = mapped_column(JSONB)
    status: Mapped[str] = mapped_column(String(20))
    error: Mapped[str | None] = mapped_column(Text)
    credential_outcome: Mapped[str | None] = mapped_column(String(20))
    index_digest: Mapped[str | None] = mapped_column(String(100))
    created_at: Mapped[datetime] = mapped_column(DateTime(timezone=True), server_default=func.now())
    fetch_ms: Mapped[float | None]
    build_ms: Mapped[float | None]
    built_at: Mapped[datetime | None] = mapped_column(DateTime(timezone=True))
    # Set once the push chord is sent, so a redelivered build never sends it twice.
    pushes_dispatched_at: Mapped[datetime | None] = mapped_column(DateTime(timezone=True))
    finished_at: Mapped[datetime | None] = mapped_column(DateTime(timezone=True))

    __table_args__ = (
        CheckConstraint(sql_in_list("status", tuple(BuildStatus)), name="status"),
        CheckConstraint(
            "credential_outcome IS NULL OR "
            + sql_in_list("credential_outcome", tuple(CredentialOutcome)),
            name="credential_outcome",
        ),
        Index(None, "created_at"),
        # The policy engine finds a digest's repository by its index digest (or a platform's).
        Index(
            "ix_build_runs_index_digest",
            "index_digest",
            postgresql_where=text("index_digest IS NOT NULL"),
        ),
    )


class BuildPlatform(Base):
    """One platform's image of a build run: built, then (with a push target) pushed."""

    __tablename__ = "build_platforms"

    id: Mapped[int] = mapped_column(BigInteger, primary_key=True, autoincrement=True)
    run_id: Mapped[uuid.UUID] = mapped_column(Uuid, ForeignKey("build_runs.id", ondelete="CASCADE"))
    platform: Mapped[str] = mapped_column(String(50))
    # The local per-platform tag, <image>:<revision>-<os>-<arch>.
    tag: Mapped[str] = mapped_column(String(400))
    status: Mapped[str] = mapped_column(String(20))
    image_id: Mapped[str | None] = mapped_column(String(100))
    size_bytes: Mapped[int | None] = mapped_column(BigInteger)
    steps_total: Mapped[int | None] = mapped_column(Integer)
    steps_cached: Mapped[int | None] = mapped_column(Integer)
    build_started_at: Mapped[datetime | None] = mapped_column(DateTime(timezone=True))
    build_ms: Mapped[float | None]
    error: Mapped[str | None] = mapped_column(Text)
    log_artifact_id: Mapped[int | None] = mapped_column(
        BigInteger, ForeignKey("artifacts.id", ondelete="SET NULL")
    )
    # Once pushed: the registry reference and manifest digest.
    pushed_ref: Mapped[str | None] = mapped_column(String(500))
    digest: Mapped[str | None] = mapped_column(String(100))
    bytes_sent: Mapped[int | None] = mapped_column(BigInteger)
    layers_pushed: Mapped[int | None] = mapped_column(Integer)
    layers_reused: Mapped[int | None] = mapped_column(Integer)
    push_ms: Mapped[float | None]
    pushed_at: Mapped[datetime | None] = mapped_column(DateTime(timezone=True))

    __table_args__ = (
        UniqueConstraint("run_id", "platform"),
        CheckConstraint(sql_in_list("status", tuple(PlatformStatus)), name="status"),
        Index(None, "digest"),
    )


class Artifact(Base):
    """A file a job produced and keeps (a build log, later remediation output), in the database
    so every worker and the API can read it without shared disks."""

    __tablename__ = "artifacts"

    id: Mapped[int] = mapped_column(BigInteger, primary_key=True, autoincrement=True)
    job_id: Mapped[uuid.UUID] = mapped_column(Uuid, ForeignKey("jobs.id", ondelete="CASCADE"))
    kind: Mapped[str] = mapped_column(String(50))
    name: Mapped[str] = mapped_column(String(200))
    content_type: Mapped[str] = mapped_column(String(100))
    # Bytes kept (the tail when the whole was over the cap), and whether anything was cut.
    size_bytes: Mapped[int] = mapped_column(BigInteger)
    truncated: Mapped[bool] = mapped_column(default=False)
    sha256: Mapped[str] = mapped_column(String(64))
    body: Mapped[bytes] = mapped_column(LargeBinary)
    created_at: Mapped[datetime] = mapped_column(DateTime(timezone=True), server_default=func.now())

    # A retried job replaces its artifact of the same kind and name instead of adding one.
    __table_args__ = (UniqueConstraint("job_id", "kind", "name"),)


class RegistryEventKind(StrEnum):
    TAG_STARTED = "tag_started"
    TAG_SUCCEEDED = "tag_succeeded"
    TAG_FAILED = "tag_failed"
    PUSH_STARTED = "push_started"
    PUSH_RETRY = "push_retry"
    PUSH_FAILED = "push_failed"
    PUSH_SUCCEEDED = "push_succeeded"
    AUTH_REFRESH = "auth_refresh"
    INDEX_PUBLISHED = "index_published"
    TAG_DELETED = "tag_deleted"


class RegistryEvent(Base):
    """Registry telemetry: one row per tag, push, retry, refresh. ``detail`` follows the schema
    of its kind and version in tasks.pushes.telemetry, checked before the row is written."""

    __tablename__ = "registry_events"

    id: Mapped[int] = mapped_column(BigInteger, Identity(), primary_key=True)
    job_id: Mapped[uuid.UUID] = mapped_column(Uuid, ForeignKey("jobs.id", ondelete="CASCADE"))
    run_id: Mapped[uuid.UUID | None] = mapped_column(
        Uuid, ForeignKey("build_runs.id", ondelete="SET NULL")
    )
    kind: Mapped[str] = mapped_column(String(30))
    schema_version: Mapped[int] = mapped_column(Integer)
    platform: Mapped[str | None] = mapped_column(String(50))
    at: Mapped[datetime] = mapped_column(DateTime(timezone=True), server_default=func.now())
    detail: Mapped[dict[str, Any]] = mapped_column(JSONB)

    __table_args__ = (
        CheckConstraint(sql_in_list("kind", tuple(RegistryEventKind)), name="kind"),
        Index(None, "job_id"),
        Index(None, "run_id"),
        Index(None, "at"),
    )


class RetentionPolicyRow(Base):
    """Which tags of a registry repository ``pushes.prune_tags`` keeps."""

    __tablename__ = "retention_policies"

    id: Mapped[int] = mapped_column(BigInteger, primary_key=True, autoincrement=True)
    host: Mapped[str] = mapped_column(String(255))
    repository: Mapped[str] = mapped_column(String(255))
    keep_newest: Mapped[int] = mapped_column(Integer)
    keep_patterns: Mapped[list[str]] = mapped_column(JSONB, default=list, server_default="[]")
    updated_at: Mapped[datetime] = mapped_column(DateTime(timezone=True), server_default=func.now())
    updated_by: Mapped[str | None] = mapped_column(String(200))

    __table_args__ = (
        UniqueConstraint("host", "repository"),
        CheckConstraint("keep_newest >= 0", name="keep_newest"),
    )


# The most of a build log kept per platform; a longer log keeps its tail (where errors are).
MAX_LOG_BYTES = 1024 * 1024


@dataclass(frozen=True)
class NewRun:
    job_id: uuid.UUID
    repository_url: str
    revision: str
    image: str
    backend: str
    platforms: list[str]
    push_target: dict[str, Any] | None


def open_run(new: NewRun) -> uuid.UUID:
    """The run of this job: created by its first attempt, reopened (status ``fetching``, error
    cleared) by a later one."""
    with session_scope() as session:
        run_id = session.execute(
            pg_insert(BuildRun)
            .values(
                id=uuid.uuid4(),
                job_id=new.job_id,
                repository_url=new.repository_url,
                revision=new.revision,
                image=new.image,
                backend=new.backend,
                platforms=new.platforms,
                push_target=new.push_target,
                status=BuildStatus.FETCHING.value,
            )
            .on_conflict_do_update(
                index_elements=[BuildRun.job_id],
                set_={"status": BuildStatus.FETCHING.value, "error": None, "finished_at": None},
            )
            .returning(BuildRun.id)
        ).scalar_one()
        return uuid.UUID(str(run_id))


def update_run(run_id: uuid.UUID, **values: Any) -> None:
    with session_scope() as session:
        session.execute(update(BuildRun).where(BuildRun.id == run_id).values(**values))


def fail_run(run_id: uuid.UUID, error: str) -> None:
    update_run(
        run_id, status=BuildStatus.FAILED.value, error=error[:4000], finished_at=datetime.now(UTC)
    )


def claim_push_dispatch(run_id: uuid.UUID) -> bool:
    """True once per run: the caller sends the push chord. A redelivered build finds it taken."""
    with session_scope() as session:
        claimed = session.execute(
            update(BuildRun)
            .where(BuildRun.id == run_id, BuildRun.pushes_dispatched_at.is_(None))
            .values(pushes_dispatched_at=datetime.now(UTC), status=BuildStatus.PUSHING.value)
            .returning(BuildRun.id)
        ).first()
        return claimed is not None


def release_push_dispatch(run_id: uuid.UUID) -> None:
    """The chord could not be sent: let the next attempt send it."""
    update_run(run_id, pushes_dispatched_at=None, status=BuildStatus.BUILT.value)


def get_run(session: Session, run_id: uuid.UUID) -> BuildRun:
    run = session.get(BuildRun, run_id)
    if run is None:
        raise NotFoundError(f"no build run {run_id}")
    return run


def run_of_job(session: Session, job_id: uuid.UUID) -> BuildRun | None:
    return session.execute(select(BuildRun).where(BuildRun.job_id == job_id)).scalar_one_or_none()


def platforms_of(session: Session, run_id: uuid.UUID) -> list[BuildPlatform]:
    return list(
        session.execute(
            select(BuildPlatform)
            .where(BuildPlatform.run_id == run_id)
            .order_by(BuildPlatform.platform)
        ).scalars()
    )


def list_runs(session: Session, *, limit: int = 20) -> Sequence[BuildRun]:
    return (
        session.execute(select(BuildRun).order_by(BuildRun.created_at.desc()).limit(limit))
        .scalars()
        .all()
    )


def start_platform(run_id: uuid.UUID, platform: str, tag: str) -> None:
    now = datetime.now(UTC)
    with session_scope() as session:
        session.execute(
            pg_insert(BuildPlatform)
            .values(
                run_id=run_id,
                platform=platform,
                tag=tag,
                status=PlatformStatus.BUILDING.value,
                build_started_at=now,
            )
            .on_conflict_do_update(
                index_elements=[BuildPlatform.run_id, BuildPlatform.platform],
                set_={
                    "tag": tag,
                    "status": PlatformStatus.BUILDING.value,
                    "build_started_at": now,
                    "error": None,
                },
            )
        )


def update_platform(run_id: uuid.UUID, platform: str, **values: Any) -> None:
    with session_scope() as session:
        session.execute(
            update(BuildPlatform)
            .where(BuildPlatform.run_id == run_id, BuildPlatform.platform == platform)
            .values(**values)
        )


def keep_artifact(
    job_id: uuid.UUID,
    *,
    kind: str,
    name: str,
    body: bytes,
    content_type: str = "text/plain; charset=utf-8",
    max_bytes: int = MAX_LOG_BYTES,
) -> int:
    """Store (or replace, for a retried job) an artifact; the tail is kept beyond ``max_bytes``.
    Returns its id."""
    truncated = len(body) > max_bytes
    kept = body[-max_bytes:] if truncated else body
    values = {
        "job_id": job_id,
        "kind": kind,
        "name": name,
        "content_type": content_type,
        "size_bytes": len(kept),
        "truncated": truncated,
        "sha256": hashlib.sha256(kept).hexdigest(),
        "body": kept,
        "created_at": datetime.now(UTC),
    }
    with session_scope() as session:
        artifact_id = session.execute(
            pg_insert(Artifact)
            .values(**values)
            .on_conflict_do_update(
                index_elements=[Artifact.job_id, Artifact.kind, Artifact.name],
                set_={k: v for k, v in values.items() if k not in ("job_id", "kind", "name")},
            )
            .returning(Artifact.id)
        ).scalar_one()
        return int(artifact_id)


def get_artifact(session: Session, artifact_id: int) -> Artifact | None:
    return session.get(Artifact, artifact_id)


def newest_index(session: Session, host: str, repository: str) -> BuildRun | None:
    """The newest published run whose index went to this repository."""
    return session.execute(
        select(BuildRun)
        .where(
            BuildRun.index_digest.is_not(None),
            BuildRun.push_target["registry"].astext == host,
            BuildRun.push_target["repository"].astext == repository,
        )
        .order_by(BuildRun.finished_at.desc().nulls_last())
        .limit(1)
    ).scalar_one_or_none()


def live_certified_digests(session: Session, host: str, repository: str) -> set[str]:
    now = datetime.now(UTC)
    return set(
        session.execute(
            select(ImageCertification.digest).where(
                ImageCertification.host == host,
                ImageCertification.repository == repository,
                ImageCertification.revoked_at.is_(None),
                ImageCertification.expires_at > now,
            )
        ).scalars()
    )


def retention_policy(session: Session, host: str, repository: str) -> RetentionPolicyRow | None:
    return session.execute(
        select(RetentionPolicyRow).where(
            RetentionPolicyRow.host == host, RetentionPolicyRow.repository == repository
        )
    ).scalar_one_or_none()


def set_retention_policy(
    session: Session,
    host: str,
    repository: str,
    *,
    keep_newest: int,
    keep_patterns: Sequence[str],
    by: str | None,
) -> None:
    if keep_newest < 0:
        raise ValueError("keep_newest must be 0 or more")
    values = {
        "keep_newest": keep_newest,
        "keep_patterns": list(keep_patterns),
        "updated_at": datetime.now(UTC),
        "updated_by": by,
    }
    session.execute(
        pg_insert(RetentionPolicyRow)
        .values(host=host, repository=repository, **values)
        .on_conflict_do_update(
            index_elements=[RetentionPolicyRow.host, RetentionPolicyRow.repository], set_=values
        )
    )


def retention_policies(session: Session) -> Sequence[RetentionPolicyRow]:
    return (
        session.execute(
            select(RetentionPolicyRow).order_by(
                RetentionPolicyRow.host, RetentionPolicyRow.repository
            )
        )
        .scalars()
        .all()
    )


@dataclass(frozen=True)
class TelemetryCount:
    kind: str
    platform: str
    error_kind: str
    outcome: str
    count: int
    bytes: int


def registry_telemetry_counts(session: Session) -> list[TelemetryCount]:
    """Registry events counted for /metrics (empty strings where a label does not apply)."""
    detail = RegistryEvent.detail
    error_kind = func.coalesce(detail["error_kind"].astext, "")
    outcome = func.coalesce(detail["outcome"].astext, "")
    platform = func.coalesce(RegistryEvent.platform, "")
    rows = session.execute(
        select(
            RegistryEvent.kind,
            platform,
            error_kind,
            outcome,
            func.count(),
            func.coalesce(func.sum(cast(detail["bytes"].astext, BigInteger)), 0),
        ).group_by(RegistryEvent.kind, platform, error_kind, outcome)
    ).all()
    return [TelemetryCount(k, p, e, o, int(n), int(b)) for k, p, e, o, n, b in rows]

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
from typing import Any

from sqlalchemy import BigInteger, cast, func, select, update
from sqlalchemy.dialects.postgresql import insert as pg_insert
from sqlalchemy.orm import Session

from kernel.errors import NotFoundError
from models.db import session_scope
from models.tables import (
    Artifact,
    BuildPlatform,
    BuildRun,
    BuildStatus,
    ImageCertification,
    PlatformStatus,
    RegistryEvent,
    RetentionPolicyRow,
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

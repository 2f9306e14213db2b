"""Reading the build ledger for a reader who may see only some of it: build runs, their logs,
registry events and capability scores, each bounded by the jobs behind it.

A reader is a ``Visibility``: the task names whose jobs it may see (None: every task) and the
tenant it reads for (None: every tenant). A build run is seen through its job
(``builds.build_image``); a registry event through its own job's task, and through the tenant of
the build it belongs to (its run's job), since the push jobs a build sends act for no tenant of
their own (``dispatch.chord``); an event of no run (a prune) through its own job's tenant. A
capability score is seen when a visible run built its repository.

Pages are keyed, not offset: runs by (created_at, id), events by id, newest first, so that a
listing neither skips nor repeats rows while new ones arrive.
"""

from __future__ import annotations

import uuid
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime

from sqlalchemy import ColumnElement, case, exists, or_, select, true
from sqlalchemy.orm import Session, aliased

from models.anomaly import CapabilityScore
from models.builds import Artifact, BuildPlatform, BuildRun, RegistryEvent
from models.jobs import Job

# The largest id a bigint holds: an event cursor beyond it is the same position as it.
MAX_EVENT_ID = 2**63 - 1


@dataclass(frozen=True)
class Visibility:
    """Whose jobs a reader may see: those of ``task_names`` (None: every task) acting for
    ``tenant`` (None: any tenant, or none)."""

    task_names: Sequence[str] | None
    tenant: str | None

    def of_job(self, job: type[Job]) -> list[ColumnElement[bool]]:
        """The conditions on ``job`` for its rows to be seen."""
        clauses: list[ColumnElement[bool]] = []
        if self.task_names is not None:
            clauses.append(job.task_name.in_(list(self.task_names)))
        if self.tenant is not None:
            clauses.append(job.tenant == self.tenant)
        return clauses


@dataclass(frozen=True)
class SeenRun:
    run: BuildRun
    # The tenant its job acts for (None: an operator's build).
    tenant: str | None


@dataclass(frozen=True)
class LogInfo:
    """A build log artifact without its body."""

    id: int
    size_bytes: int
    truncated: bool


# ---- build runs ----------------------------------------------------------------------------------


def list_runs(
    session: Session,
    seen: Visibility,
    *,
    status: str | None = None,
    after: tuple[datetime, uuid.UUID] | None = None,
    limit: int = 50,
) -> list[SeenRun]:
    """Visible runs newest first; ``after`` continues after the (created_at, id) of a page's
    last run."""
    query = (
        select(BuildRun, Job.tenant)
        .join(Job, Job.id == BuildRun.job_id)
        .where(*seen.of_job(Job))
        .order_by(BuildRun.created_at.desc(), BuildRun.id)
        .limit(limit)
    )
    if status is not None:
        query = query.where(BuildRun.status == status)
    if after is not None:
        at, last_id = after
        query = query.where(
            (BuildRun.created_at < at) | ((BuildRun.created_at == at) & (BuildRun.id > last_id))
        )
    return [SeenRun(run, tenant) for run, tenant in session.execute(query).all()]


def visible_run(session: Session, seen: Visibility, run_id: uuid.UUID) -> SeenRun | None:
    row = session.execute(
        select(BuildRun, Job.tenant)
        .join(Job, Job.id == BuildRun.job_id)
        .where(BuildRun.id == run_id, *seen.of_job(Job))
    ).first()
    return None if row is None else SeenRun(row[0], row[1])


def visible_run_ids(
    session: Session, seen: Visibility, run_ids: Sequence[uuid.UUID]
) -> set[uuid.UUID]:
    """Those of ``run_ids`` the reader may see."""
    if not run_ids:
        return set()
    return set(
        session.execute(
            select(BuildRun.id)
            .join(Job, Job.id == BuildRun.job_id)
            .where(BuildRun.id.in_(list(run_ids)), *seen.of_job(Job))
        ).scalars()
    )


def log_infos(session: Session, artifact_ids: Sequence[int]) -> dict[int, LogInfo]:
    """The artifacts' sizes and truncation, their bodies left in the store."""
    if not artifact_ids:
        return {}
    rows = session.execute(
        select(Artifact.id, Artifact.size_bytes, Artifact.truncated).where(
            Artifact.id.in_(list(artifact_ids))
        )
    ).all()
    return {int(i): LogInfo(int(i), int(size), bool(cut)) for i, size, cut in rows}


# ---- registry events -----------------------------------------------------------------------------


def list_events(
    session: Session,
    seen: Visibility,
    *,
    run_id: uuid.UUID | None = None,
    job_id: uuid.UUID | None = None,
    kind: str | None = None,
    before_id: int | None = None,
    limit: int = 50,
) -> Sequence[RegistryEvent]:
    """Visible events newest first (by id); ``before_id`` continues after a page's last."""
    own_job = aliased(Job)
    build_job = aliased(Job)
    query = (
        select(RegistryEvent)
        .join(own_job, own_job.id == RegistryEvent.job_id)
        .outerjoin(BuildRun, BuildRun.id == RegistryEvent.run_id)
        .outerjoin(build_job, build_job.id == BuildRun.job_id)
        .order_by(RegistryEvent.id.desc())
        .limit(limit)
    )
    if seen.task_names is not None:
        query = query.where(own_job.task_name.in_(list(seen.task_names)))
    if seen.tenant is not None:
        # The build's tenant for an event of a run; its own job's for one of none.
        tenant = case((RegistryEvent.run_id.is_not(None), build_job.tenant), else_=own_job.tenant)
        query = query.where(tenant == seen.tenant)
    if run_id is not None:
        query = query.where(RegistryEvent.run_id == run_id)
    if job_id is not None:
        query = query.where(RegistryEvent.job_id == job_id)
    if kind is not None:
        query = query.where(RegistryEvent.kind == kind)
    if before_id is not None:
        query = query.where(RegistryEvent.id < min(before_id, MAX_EVENT_ID))
    return session.execute(query).scalars().all()


# ---- capability scores ---------------------------------------------------------------------------


def _repository_built_visibly(seen: Visibility) -> ColumnElement[bool]:
    """A visible run built the score's repository (always true for a reader who sees all)."""
    if seen.task_names is None and seen.tenant is None:
        return true()
    return exists(
        select(BuildRun.id)
        .join(Job, Job.id == BuildRun.job_id)
        .where(BuildRun.repository_url == CapabilityScore.repository, *seen.of_job(Job))
    )


def list_scores(
    session: Session,
    seen: Visibility,
    *,
    repository: str | None = None,
    metric: str | None = None,
    flagged: bool | None = None,
    limit: int = 50,
    offset: int = 0,
) -> Sequence[CapabilityScore]:
    """Scores of the repositories visible runs built, by repository then metric."""
    query = (
        select(CapabilityScore)
        .where(_repository_built_visibly(seen))
        .order_by(CapabilityScore.repository, CapabilityScore.metric)
        .limit(limit)
        .offset(offset)
        # Rows loaded earlier in this session may predate a recomputation's statements.
        .execution_options(populate_existing=True)
    )
    if repository is not None:
        query = query.where(CapabilityScore.repository == repository)
    if metric is not None:
        query = query.where(CapabilityScore.metric == metric)
    if flagged is not None:
        query = query.where(CapabilityScore.flagged == flagged)
    return session.execute(query).scalars().all()


def repository_for_digest(session: Session, seen: Visibility, digest: str) -> str | None:
    """The repository whose newest visible run produced ``digest``, as a platform's image or as
    the multi-platform index (``models.anomaly.repository_for_digest``, within what the reader
    sees)."""
    built_it = or_(
        BuildRun.index_digest == digest,
        exists(
            select(BuildPlatform.id).where(
                BuildPlatform.run_id == BuildRun.id, BuildPlatform.digest == digest
            )
        ),
    )
    return session.execute(
        select(BuildRun.repository_url)
        .join(Job, Job.id == BuildRun.job_id)
        .where(built_it, *seen.of_job(Job))
        .order_by(BuildRun.created_at.desc())
        .limit(1)
    ).scalar_one_or_none()


def registry_hosts(session: Session, seen: Visibility, repository: str) -> set[str]:
    """The registries (lower-cased, as the scores name them) visible runs of ``repository``
    push to."""
    host = BuildRun.push_target["registry"].astext
    return {
        value.lower()
        for value in session.execute(
            select(host)
            .distinct()
            .join(Job, Job.id == BuildRun.job_id)
            .where(BuildRun.repository_url == repository, host.is_not(None), *seen.of_job(Job))
        ).scalars()
    }

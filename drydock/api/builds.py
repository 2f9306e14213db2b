"""``/v1/builds`` and ``/v1/registry``: build runs and their logs, registry events, capability
scores over HTTP.

Visibility follows the jobs behind the rows, as ``/v1/jobs`` does: a build run is seen when its
job (``builds.build_image``) is within the token's scopes, a registry event when its own job
(``pushes.*``) is; anything else is 404 to read and absent from a listing, as if it did not
exist. A tenant token sees its tenant's rows only: a run's tenant is its job's, an event's is the
tenant of the build it belongs to (the push jobs a build sends act for no tenant of their own),
an event of no build (a prune) its own job's. An operator token sees every tenant's, or one
tenant's with ``?tenant=`` on a listing.

A capability score is an aggregate over every run of a repository, whichever tenant's: the
anomaly gate judges an image by its repository's history, so a tenant may see the scores of the
repositories its own visible build runs built (and only those: the score of a repository it
never built would tell it about another tenant's builds). The numbers (metric, value, flagged,
window) are shown whole; the ``detail`` names runs and registries, so a tenant token sees it only
when every run and registry it names is its own (its visible runs, the registries they push to),
and otherwise gets ``{}`` with ``detail_withheld``. An operator token sees every score with its
detail.

Secrets: build logs are scrubbed as they are kept (the build's secret build arguments, URL
passwords, bearer values) and registry event details hold none by their schemas; repository URLs
with credentials are refused at enqueue and stored with any password masked. What is read is
scrubbed once more on the way out (URL passwords and tokens, Authorization-style values,
secret-named fields), so that a row written before those rules, or by a path that missed one,
still shows no credential.

A platform is named in a path by its tag suffix: ``linux-amd64`` for ``linux/amd64``,
``linux-arm-v7`` for ``linux/arm/v7`` (a slash cannot be one path segment).
"""

from __future__ import annotations

import re
import uuid
from collections.abc import Sequence
from datetime import UTC, datetime, timedelta
from typing import Annotated, Any

from fastapi import APIRouter, Path, Query
from fastapi.responses import PlainTextResponse, Response
from pydantic import BaseModel, Field, StringConstraints
from sqlalchemy.orm import Session

from drydock.api.auth import Caller, tenant_to_read, visible_tasks
from drydock.api.bodies import RowBody, RowView, UTCDateTime
from drydock.api.errors import ErrorBody, InputProblem
from drydock.api.inputs import (
    MAX_FILTER_LENGTH,
    MAX_OFFSET,
    MAX_PAGE,
    NO_NUL,
    FilterText,
    TenantQuery,
)
from kernel.errors import NotFoundError
from kernel.redaction import REDACTED, redact, scrub_embedded
from models import build_reads
from models import builds as ledger
from models.anomaly import CapabilityMetric, CapabilityScore
from models.build_reads import LogInfo, SeenRun, Visibility
from models.builds import (
    BuildPlatform,
    BuildStatus,
    CredentialOutcome,
    PlatformStatus,
    RegistryEvent,
    RegistryEventKind,
)
from models.db import session_scope

router = APIRouter(tags=["builds"])

TRUNCATED_HEADER = "X-Drydock-Log-Truncated"
_NOT_VISIBLE = (
    "No such run (or platform, or log yet), or one outside the token's scopes or of another tenant."
)
_FORBIDDEN = "A tenant token named another tenant (?tenant=)."

# A platform's tag suffix: os-arch[-variant], the form of kernel.platforms.Platform.tag_suffix.
PLATFORM_SEGMENT_PATTERN = r"^[a-z0-9]+-[a-z0-9_]+(?:-[a-z0-9]+)?$"
# A run page's position: its last run's creation (microseconds since the epoch) and id. Every
# string of this form is a position, so any cursor the pattern admits is answered.
RUN_CURSOR_PATTERN = r"^[0-9]{1,16}-[0-9a-f]{32}$"
# An event page's position: its last event's id (larger than any id: from the newest).
EVENT_CURSOR_PATTERN = r"^[0-9]{1,19}$"
# As long as a repository URL may be (catalog.builds, adapters.git_inputs).
MAX_REPOSITORY_LENGTH = 2048

RepositoryText = Annotated[
    str, StringConstraints(min_length=1, max_length=MAX_REPOSITORY_LENGTH, pattern=NO_NUL)
]
Limit = Annotated[int, Query(ge=1, le=MAX_PAGE, description="The most rows a page holds.")]

# ---- bodies ------------------------------------------------------------------------------------


class PushTargetBody(BaseModel):
    registry: str
    repository: str
    tag: str | None = Field(description="Null: the revision, made tag-safe.")


class BuildRunSummaryBody(RowBody):
    id: uuid.UUID
    job_id: uuid.UUID
    tenant: str | None = Field(description="The tenant the build's job acts for.")
    repository_url: str = Field(description="Shown without credentials.")
    revision: str
    commit: str | None = Field(description="What the revision resolved to when fetched.")
    ref_kind: str | None
    image: str
    backend: str
    platforms: list[str] = Field(description="The platforms asked for, os/arch[/variant].")
    push_target: PushTargetBody | None = Field(description="Null: built only, not pushed.")
    status: BuildStatus
    error: str | None
    credential_outcome: CredentialOutcome | None
    index_digest: str | None = Field(description="The published multi-platform index.")
    created_at: UTCDateTime
    built_at: UTCDateTime | None
    finished_at: UTCDateTime | None
    fetch_ms: float | None
    build_ms: float | None
    url: str


class LogLinkBody(BaseModel):
    url: str = Field(description="GET it for the log as text/plain.")
    size_bytes: int = Field(description="Bytes kept: the log's tail when it was longer.")
    truncated: bool = Field(description="The log was longer than kept: its start is cut.")


class PlatformBuildBody(RowBody):
    platform: str = Field(description="os/arch[/variant].")
    tag: str = Field(description="The local per-platform tag.")
    status: PlatformStatus
    image_id: str | None
    size_bytes: int | None
    steps_total: int | None
    steps_cached: int | None
    build_started_at: UTCDateTime | None
    build_ms: float | None
    error: str | None
    pushed_ref: str | None
    digest: str | None
    bytes_sent: int | None
    layers_pushed: int | None
    layers_reused: int | None
    push_ms: float | None
    pushed_at: UTCDateTime | None
    log: LogLinkBody | None = Field(description="Null until the platform's build has ended.")


class BuildRunBody(BuildRunSummaryBody):
    platform_builds: list[PlatformBuildBody] = Field(
        description="Each platform's image as built and pushed, by platform."
    )


class BuildRunPageBody(BaseModel):
    runs: list[BuildRunSummaryBody]
    next_cursor: str | None = Field(
        description="Pass as ?cursor= for the next page; null on the last page."
    )


class RegistryEventBody(RowBody):
    id: int
    job_id: uuid.UUID
    run_id: uuid.UUID | None
    kind: RegistryEventKind
    schema_version: int
    platform: str | None
    at: UTCDateTime
    detail: dict[str, Any] = Field(
        description="As the schema of its kind and version states (`drydock schema "
        "--registry-events`); secrets redacted."
    )


class RegistryEventPageBody(BaseModel):
    events: list[RegistryEventBody]
    next_cursor: str | None = Field(
        description="Pass as ?cursor= for the next page; null on the last page."
    )


class CapabilityScoreBody(RowBody):
    repository: str = Field(description="The git repository built, shown without credentials.")
    metric: CapabilityMetric
    value: float
    flagged: bool = Field(description="Over the metric's threshold: the anomaly gate fails.")
    detail: dict[str, Any]
    detail_withheld: bool = Field(
        description="The detail names another tenant's runs or registries: shown as {}."
    )
    window_start: UTCDateTime
    computed_at: UTCDateTime


class CapabilityScoresBody(BaseModel):
    repository: str | None = Field(
        description="The repository asked for, or the one ?digest= resolved to (null: none)."
    )
    scores: list[CapabilityScoreBody]


# ---- what a caller sees, and how it is shown ---------------------------------------------------


def _visibility(caller: Caller, tenant: str | None) -> Visibility:
    return Visibility(task_names=visible_tasks(caller), tenant=tenant)


# http(s)://user@host/...: a user name over http is a token (catalog.builds refuses such URLs).
# A user:password pair is left to scrub_embedded, which keeps the user and masks the password.
_HTTP_USER = re.compile(r"^(?P<head>https?://)(?P<user>[^/?#@:]+)@", re.IGNORECASE)


def shown_url(url: str) -> str:
    """``url`` with any credential it carries replaced: a password (of any scheme), a token
    given as an http(s) user name. An ssh user (``git@``) is not a secret and stays."""
    scrubbed = scrub_embedded(url)
    return _HTTP_USER.sub(lambda m: f"{m.group('head')}{REDACTED}@", scrubbed)


def _shown_text(text: str | None) -> str | None:
    return None if text is None else scrub_embedded(text)


def _platform_segment(platform: str) -> str:
    return platform.replace("/", "-")


def run_url(run_id: uuid.UUID) -> str:
    return f"/v1/builds/runs/{run_id}"


def _run_view(seen: SeenRun, **extra: Any) -> RowView:
    run = seen.run
    return RowView(
        run,
        tenant=seen.tenant,
        repository_url=shown_url(run.repository_url),
        error=_shown_text(run.error),
        url=run_url(run.id),
        **extra,
    )


def run_summary(seen: SeenRun) -> BuildRunSummaryBody:
    return BuildRunSummaryBody.model_validate(_run_view(seen))


def run_detail(
    seen: SeenRun, platforms: Sequence[BuildPlatform], logs: dict[int, LogInfo]
) -> BuildRunBody:
    run = seen.run
    builds = []
    for row in platforms:
        log = logs.get(row.log_artifact_id) if row.log_artifact_id is not None else None
        link = None
        if log is not None:
            url = f"{run_url(run.id)}/logs/{_platform_segment(row.platform)}"
            link = LogLinkBody(url=url, size_bytes=log.size_bytes, truncated=log.truncated)
        builds.append(
            PlatformBuildBody.model_validate(RowView(row, error=_shown_text(row.error), log=link))
        )
    return BuildRunBody.model_validate(_run_view(seen, platform_builds=builds))


def event_body(event: RegistryEvent) -> RegistryEventBody:
    return RegistryEventBody.model_validate(RowView(event, detail=redact(event.detail)))


# ---- routes: build runs ------------------------------------------------------------------------


@router.get(
    "/v1/builds/runs",
    response_model=BuildRunPageBody,
    responses={403: {"model": ErrorBody, "description": _FORBIDDEN}},
)
def list_runs(
    caller: Caller,
    tenant: TenantQuery = None,
    status: BuildStatus | None = None,
    limit: Limit = 50,
    cursor: Annotated[
        str | None,
        Query(
            description="next_cursor of the previous page.",
            max_length=MAX_FILTER_LENGTH,
            pattern=RUN_CURSOR_PATTERN,
        ),
    ] = None,
) -> BuildRunPageBody:
    """Build runs newest first, a page at a time."""
    seen = _visibility(caller, tenant_to_read(caller, tenant))
    with session_scope() as session:
        rows = build_reads.list_runs(
            session,
            seen,
            status=status.value if status else None,
            after=_decode_run_cursor(cursor) if cursor else None,
            limit=limit + 1,
        )
        page = [run_summary(row) for row in rows[:limit]]
        next_cursor = None
        if len(rows) > limit:
            last = rows[limit - 1].run
            next_cursor = _encode_run_cursor(last.created_at, last.id)
    return BuildRunPageBody(runs=page, next_cursor=next_cursor)


@router.get(
    "/v1/builds/runs/{run_id}",
    response_model=BuildRunBody,
    responses={404: {"model": ErrorBody, "description": _NOT_VISIBLE}},
)
def get_run(run_id: uuid.UUID, caller: Caller) -> BuildRunBody:
    """One build run with each platform's image and a link to its build log."""
    with session_scope() as session:
        seen = _visible_run(session, caller, run_id)
        platforms = ledger.platforms_of(session, run_id)
        artifact_ids = [p.log_artifact_id for p in platforms if p.log_artifact_id is not None]
        logs = build_reads.log_infos(session, artifact_ids)
        return run_detail(seen, platforms, logs)


@router.get(
    "/v1/builds/runs/{run_id}/logs/{platform}",
    # Response, not PlainTextResponse: the errors stay declared (and sent) as JSON.
    response_class=Response,
    responses={
        200: {
            "description": "The platform's build log (its tail, when it was longer than kept).",
            "content": {"text/plain": {"schema": {"type": "string"}}},
            "headers": {
                TRUNCATED_HEADER: {
                    "description": "true: the log was longer than kept, and its start is cut.",
                    "schema": {"type": "string", "enum": ["true", "false"]},
                }
            },
        },
        404: {"model": ErrorBody, "description": _NOT_VISIBLE},
    },
)
def get_log(
    run_id: uuid.UUID,
    platform: Annotated[
        str,
        Path(
            description="The platform as its tag suffix: linux-amd64 for linux/amd64, "
            "linux-arm-v7 for linux/arm/v7.",
            max_length=60,
            pattern=PLATFORM_SEGMENT_PATTERN,
        ),
    ],
    caller: Caller,
) -> PlainTextResponse:
    """A platform's build log, as text."""
    with session_scope() as session:
        _visible_run(session, caller, run_id)
        rows = ledger.platforms_of(session, run_id)
        row = next((r for r in rows if _platform_segment(r.platform) == platform), None)
        if row is None:
            raise NotFoundError(f"build run {run_id} has no platform {platform}")
        artifact = (
            None
            if row.log_artifact_id is None
            else ledger.get_artifact(session, row.log_artifact_id)
        )
        if artifact is None:
            raise NotFoundError(f"build run {run_id} has no log of {row.platform} (yet)")
        body, truncated = artifact.body, artifact.truncated
    # Kept scrubbed; scrubbed again for a log kept before a rule was added.
    text = scrub_embedded(body.decode("utf-8", errors="replace"))
    return PlainTextResponse(
        text,
        media_type="text/plain; charset=utf-8",
        headers={TRUNCATED_HEADER: "true" if truncated else "false"},
    )


def _visible_run(session: Session, caller: Caller, run_id: uuid.UUID) -> SeenRun:
    # A tenant token sees its tenant's runs only; an operator's, every tenant's.
    seen = build_reads.visible_run(session, _visibility(caller, caller.tenant), run_id)
    if seen is None:
        raise NotFoundError(f"no build run {run_id}")
    return seen


# ---- routes: registry events -------------------------------------------------------------------


@router.get(
    "/v1/registry/events",
    response_model=RegistryEventPageBody,
    responses={403: {"model": ErrorBody, "description": _FORBIDDEN}},
    tags=["registry"],
)
def list_events(
    caller: Caller,
    tenant: TenantQuery = None,
    run_id: Annotated[uuid.UUID | None, Query(description="A build run's events.")] = None,
    job_id: Annotated[uuid.UUID | None, Query(description="A (push) job's events.")] = None,
    kind: RegistryEventKind | None = None,
    limit: Limit = 50,
    cursor: Annotated[
        str | None,
        Query(description="next_cursor of the previous page.", pattern=EVENT_CURSOR_PATTERN),
    ] = None,
) -> RegistryEventPageBody:
    """Registry telemetry (tags, pushes, retries, credential refreshes, indexes, prunes) newest
    first, a page at a time."""
    seen = _visibility(caller, tenant_to_read(caller, tenant))
    with session_scope() as session:
        rows = build_reads.list_events(
            session,
            seen,
            run_id=run_id,
            job_id=job_id,
            kind=kind.value if kind else None,
            before_id=int(cursor) if cursor else None,
            limit=limit + 1,
        )
        page = [event_body(event) for event in rows[:limit]]
    next_cursor = str(rows[limit - 1].id) if len(rows) > limit else None
    return RegistryEventPageBody(events=page, next_cursor=next_cursor)


# ---- routes: capability scores -----------------------------------------------------------------


@router.get(
    "/v1/registry/capability-scores",
    response_model=CapabilityScoresBody,
    responses={403: {"model": ErrorBody, "description": _FORBIDDEN}},
    tags=["registry"],
)
def capability_scores(
    caller: Caller,
    tenant: TenantQuery = None,
    repository: Annotated[
        RepositoryText | None, Query(description="A git repository's URL, as built.")
    ] = None,
    digest: Annotated[
        FilterText | None,
        Query(description="An image or index digest: the scores of the repository built it."),
    ] = None,
    metric: CapabilityMetric | None = None,
    flagged: Annotated[bool | None, Query(description="Only flagged (or unflagged) ones.")] = None,
    limit: Limit = 50,
    offset: Annotated[int, Query(ge=0, le=MAX_OFFSET)] = 0,
) -> CapabilityScoresBody:
    """Anomaly scores by repository and metric, as the policy engine's anomaly gate reads them:
    of one repository (``?repository=``, or the one whose newest build produced ``?digest=``),
    or of every repository the token may see. ``repository`` and ``digest`` together: the
    digest's repository, when it is that one."""
    seen = _visibility(caller, tenant_to_read(caller, tenant))
    with session_scope() as session:
        wanted = repository
        if digest is not None:
            found = build_reads.repository_for_digest(session, seen, digest)
            if found is None or (repository is not None and found != repository):
                return CapabilityScoresBody(repository=None, scores=[])
            wanted = found
        rows = build_reads.list_scores(
            session,
            seen,
            repository=wanted,
            metric=metric.value if metric else None,
            flagged=flagged,
            limit=limit,
            offset=offset,
        )
        scores = [_score_body(session, seen, row) for row in rows]
    return CapabilityScoresBody(
        repository=None if wanted is None else shown_url(wanted), scores=scores
    )


def _score_body(session: Session, seen: Visibility, score: CapabilityScore) -> CapabilityScoreBody:
    detail = redact(score.detail)
    withheld = seen.tenant is not None and not _detail_is_own(session, seen, score)
    return CapabilityScoreBody.model_validate(
        RowView(
            score,
            repository=shown_url(score.repository),
            detail={} if withheld else detail,
            detail_withheld=withheld,
        )
    )


def _detail_is_own(session: Session, seen: Visibility, score: CapabilityScore) -> bool:
    """Whether every run and registry the score's detail names is the reader's."""
    run_id = score.detail.get("run_id")
    if run_id is not None:
        try:
            named = uuid.UUID(str(run_id))
        except ValueError:
            return False
        if not build_reads.visible_run_ids(session, seen, [named]):
            return False
    hosts = score.detail.get("hosts")
    if hosts:
        own = build_reads.registry_hosts(session, seen, score.repository)
        if not {str(host).lower() for host in hosts} <= own:
            return False
    return True


# ---- cursors -----------------------------------------------------------------------------------

_EPOCH = datetime(1970, 1, 1, tzinfo=UTC)
_MICROSECOND = timedelta(microseconds=1)
_RUN_CURSOR = re.compile(RUN_CURSOR_PATTERN)


def _encode_run_cursor(at: datetime, run_id: uuid.UUID) -> str:
    return f"{(at - _EPOCH) // _MICROSECOND}-{run_id.hex}"


def _decode_run_cursor(cursor: str) -> tuple[datetime, uuid.UUID]:
    if not _RUN_CURSOR.match(cursor):  # the parameter's own pattern: a safety net
        raise InputProblem.at(["query", "cursor"], "not a next_cursor this API returned")
    micros, run_id = cursor.split("-")
    return _EPOCH + int(micros) * _MICROSECOND, uuid.UUID(hex=run_id)

"""The pushes queue without Celery: push a platform image, publish a run's index, prune tags.

Every registry step is recorded as telemetry (``tasks.pushes.telemetry``). Failures are
``RegistryPushError`` with a kind; credentials the registry refuses are refreshed once through
the registry's credential provider before the failure counts.
"""

from __future__ import annotations

import time
import uuid
from collections.abc import Callable
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any, Literal, TypeVar, cast

from adapters.credentials import (
    CredentialRefusedError,
    CredentialUnavailableError,
    RegistryCredential,
    credential_for,
    refresh_credential,
)
from adapters.image_index import build_image_index
from adapters.image_reference import registry_is_insecure
from adapters.image_store import image_store_for
from adapters.registry import ManifestInfo, RegistryClient
from adapters.registry_errors import PushErrorKind, RegistryPushError
from catalog.builds import tag_for_revision
from catalog.pushes import (
    PruneTagsPayload,
    PublishIndexPayload,
    PushImagePayload,
)
from kernel.context import JobContext
from kernel.errors import DrydockError, TransientError
from kernel.platforms import Platform
from kernel.redaction import scrub_text
from kernel.settings import Settings, get_settings
from models import builds as ledger
from models import credentials as credential_store
from models.builds import BuildStatus, CredentialOutcome, PlatformStatus, RegistryEventKind
from models.db import session_scope
from tasks.pushes import telemetry
from tasks.pushes.retention import RetentionPolicy, TagState, plan_prune

T = TypeVar("T")

# Keys of JobContext.notes the listeners read.
NOTE_TARGET = "push_target"
NOTE_PLATFORM = "push_platform"
NOTE_RUN = "push_run_id"


class ImageNotBuiltError(DrydockError):
    """The run has no built image for that platform (it failed, or never ran)."""


class IndexNotReadyError(TransientError):
    """Some platform of the run is not pushed yet; the index waits for it."""


class NoRetentionPolicyError(DrydockError):
    pass


ProviderName = Literal["static", "htpasswd", "command"]


@dataclass(frozen=True)
class _Target:
    registry: str
    repository: str

    def ref(self, tag: str) -> str:
        return f"{self.registry}/{self.repository}:{tag}"


def _target_of(push_target: dict[str, Any] | None) -> tuple[_Target, str | None]:
    if not push_target:
        raise ImageNotBuiltError("the build run has no push target")
    return _Target(push_target["registry"], push_target["repository"]), push_target.get("tag")


def is_insecure(registry: str, settings: Settings) -> bool:
    return registry_is_insecure(registry, settings.insecure_registries)


def registry_client(
    registry: str, credential: RegistryCredential | None, settings: Settings
) -> RegistryClient:
    return RegistryClient(
        registry,
        credential,
        insecure=is_insecure(registry, settings),
        timeout=settings.registry_timeout_seconds,
    )


def with_fresh_credentials(
    action: Callable[[RegistryCredential | None], T],
    *,
    registry: str,
    job_id: uuid.UUID,
    run_id: uuid.UUID | None,
    platform: str | None,
    on_refreshed: Callable[[], None] = lambda: None,
    on_retry: Callable[[RegistryPushError], None] = lambda _: None,
) -> T:
    """Run ``action`` with the registry's credentials; if the registry says they expired (or
    were changed behind Drydock's back), ask the provider for fresh ones and run it once more.
    A second refusal raises CredentialRefusedError: more attempts cannot help."""
    credential = credential_for(registry)
    try:
        return action(credential)
    except RegistryPushError as exc:
        if exc.kind is not PushErrorKind.AUTH_EXPIRED or credential is None:
            raise
        refused = exc
    provider = cast(ProviderName, credential_store.provider_of(registry) or "static")

    def refresh_event(outcome: str, error: str | None = None) -> None:
        telemetry.record(
            RegistryEventKind.AUTH_REFRESH,
            job_id=job_id,
            run_id=run_id,
            platform=platform,
            registry=registry,
            provider=provider,
            outcome=outcome,
            error=error,
        )

    try:
        fresh = refresh_credential(registry, credential)
    except (CredentialRefusedError, CredentialUnavailableError) as exc:
        refresh_event("unavailable", str(exc)[:500])
        raise
    refresh_event("refreshed")
    on_refreshed()
    on_retry(refused)
    try:
        return action(fresh)
    except RegistryPushError as again:
        if again.kind is PushErrorKind.AUTH_EXPIRED:
            raise CredentialRefusedError(
                f"the registry {registry} refused freshly issued credentials too: {again.detail}"
            ) from None
        raise


def push_image(
    payload: PushImagePayload, ctx: JobContext, settings: Settings | None = None
) -> dict[str, Any]:
    settings = settings or get_settings()
    with session_scope() as session:
        run = ledger.get_run(session, payload.run_id)
        rows = {row.platform: row for row in ledger.platforms_of(session, payload.run_id)}
        target, _ = _target_of(run.push_target)
        backend_name = run.backend
        run_id = run.id
    ctx.notes.update({NOTE_PLATFORM: payload.platform, NOTE_RUN: str(run_id)})
    row = rows.get(payload.platform)
    if row is None or row.image_id is None:
        raise ImageNotBuiltError(
            f"build run {payload.run_id} has no built image for {payload.platform}"
        )
    platform = Platform.parse(payload.platform)
    local_tag = row.tag
    destination = target.ref(local_tag.rsplit(":", 1)[1])
    ctx.notes[NOTE_TARGET] = destination
    images = image_store_for(backend_name, settings)
    event = _EventWriter(ctx.job_id, run_id, payload.platform)

    event(RegistryEventKind.TAG_STARTED, source=local_tag, target=destination)
    try:
        images.tag(local_tag, destination)
    except Exception as exc:
        event(RegistryEventKind.TAG_FAILED, target=destination, error=str(exc)[:2000])
        raise
    event(RegistryEventKind.TAG_SUCCEEDED, target=destination)

    ledger.update_platform(run_id, payload.platform, status=PlatformStatus.PUSHING.value)
    insecure = is_insecure(target.registry, settings)
    started = time.monotonic()

    def attempt(credential: RegistryCredential | None) -> Any:
        event(
            RegistryEventKind.PUSH_STARTED,
            target=destination,
            attempt=ctx.attempt,
            backend=backend_name,
            authenticated=credential is not None,
        )
        scrub = [credential.password] if credential else []
        try:
            return images.push(
                destination,
                destination,
                credential,
                insecure=insecure,
                on_line=_ThrottledProgress(ctx, destination),
            )
        except RegistryPushError as exc:
            event(
                RegistryEventKind.PUSH_FAILED,
                target=destination,
                attempt=ctx.attempt,
                error_kind=exc.kind,
                retryable=exc.retryable,
                error=scrub_text(str(exc), scrub)[:2000],
            )
            raise

    def refreshed() -> None:
        ledger.update_run(run_id, credential_outcome=CredentialOutcome.REFRESHED.value)

    def retry_now(exc: RegistryPushError) -> None:
        event(
            RegistryEventKind.PUSH_RETRY,
            target=destination,
            attempt=ctx.attempt,
            delay_seconds=0.0,
            error_kind=exc.kind,
        )

    try:
        result = with_fresh_credentials(
            attempt,
            registry=target.registry,
            job_id=ctx.job_id,
            run_id=run_id,
            platform=payload.platform,
            on_refreshed=refreshed,
            on_retry=retry_now,
        )
    except CredentialRefusedError:
        ledger.update_run(run_id, credential_outcome=CredentialOutcome.REJECTED.value)
        raise
    except RegistryPushError as exc:
        if exc.kind is PushErrorKind.AUTH_REQUIRED:
            raise RegistryPushError(
                exc.kind,
                f"{exc.detail} (no credentials are stored for {target.registry}: add them with "
                f"`drydock registry login {target.registry}`)",
                status=exc.status,
            ) from None
        raise
    duration_ms = (time.monotonic() - started) * 1000
    event(
        RegistryEventKind.PUSH_SUCCEEDED,
        target=destination,
        digest=result.digest,
        bytes=result.bytes_sent,
        layers_pushed=result.layers_pushed,
        layers_reused=result.layers_reused,
        duration_ms=duration_ms,
    )
    ledger.update_platform(
        run_id,
        payload.platform,
        status=PlatformStatus.PUSHED.value,
        pushed_ref=destination,
        digest=result.digest,
        bytes_sent=result.bytes_sent,
        layers_pushed=result.layers_pushed,
        layers_reused=result.layers_reused,
        push_ms=duration_ms,
        pushed_at=datetime.now(UTC),
    )
    ctx.progress(100, f"pushed {destination} ({platform})")
    return {
        "target": destination,
        "digest": result.digest,
        "bytes_sent": result.bytes_sent,
        "layers_pushed": result.layers_pushed,
        "layers_reused": result.layers_reused,
    }


def fail_push_run(exc: BaseException, ctx: JobContext, reason: str) -> str | None:
    """A push was dead-lettered: its platform and its run are failed. Returns why the run's
    index job, which the chord will now never start, must be dead-lettered too (the Celery
    task does that, so it is not left queued forever), or None when the push never got as far
    as naming its run. Once the cause is fixed an operator replays the push, then the index
    (``drydock dlq replay``)."""
    if NOTE_RUN not in ctx.notes:
        return None
    run_id = uuid.UUID(ctx.notes[NOTE_RUN])
    platform = ctx.notes[NOTE_PLATFORM]
    message = f"the push of {platform} was dead-lettered ({reason}): {exc}"[:2000]
    ledger.update_platform(run_id, platform, status=PlatformStatus.FAILED.value, error=message)
    ledger.fail_run(run_id, message)
    return f"not published: {message}"


def run_dead_lettered(exc: BaseException, ctx: JobContext, reason: str) -> None:
    """The dead-letter listener of ``pushes.publish_index``: its run failed."""
    if NOTE_RUN in ctx.notes:
        ledger.fail_run(uuid.UUID(ctx.notes[NOTE_RUN]), f"{type(exc).__name__}: {exc}")


def push_retry_scheduled(exc: BaseException, ctx: JobContext, delay: float) -> None:
    """The retry listener of ``pushes.push_image``: a ``push_retry`` event for each retry the
    base task schedules after a retryable registry failure."""
    if not isinstance(exc, RegistryPushError) or NOTE_TARGET not in ctx.notes:
        return
    telemetry.record(
        RegistryEventKind.PUSH_RETRY,
        job_id=ctx.job_id,
        run_id=uuid.UUID(ctx.notes[NOTE_RUN]),
        platform=ctx.notes[NOTE_PLATFORM],
        target=ctx.notes[NOTE_TARGET],
        attempt=ctx.attempt,
        delay_seconds=delay,
        error_kind=exc.kind,
    )


def publish_index(
    payload: PublishIndexPayload, ctx: JobContext, settings: Settings | None = None
) -> dict[str, Any]:
    settings = settings or get_settings()
    with session_scope() as session:
        run = ledger.get_run(session, payload.run_id)
        target, tag = _target_of(run.push_target)
        rows = ledger.platforms_of(session, payload.run_id)
        commit, source, revision, run_id = run.commit, run.repository_url, run.revision, run.id
        wanted = list(run.platforms)
    ctx.notes[NOTE_RUN] = str(run_id)
    pushed = {row.platform: row.digest for row in rows if row.status == PlatformStatus.PUSHED}
    waiting = [p for p in wanted if not pushed.get(p)]
    if waiting:
        raise IndexNotReadyError(
            f"build run {run_id} has not pushed {', '.join(waiting)} yet; the index waits"
        )
    index_tag = tag or tag_for_revision(revision)
    destination = target.ref(index_tag)
    annotations = {
        "org.opencontainers.image.revision": commit or "",
        "org.opencontainers.image.source": source,
        "org.opencontainers.image.created": datetime.now(UTC).isoformat(timespec="seconds"),
    }

    def publish(credential: RegistryCredential | None) -> tuple[str, list[str]]:
        client = registry_client(target.registry, credential, settings)
        children: list[tuple[Platform, ManifestInfo]] = []
        for platform in wanted:
            digest = pushed[platform]
            assert digest is not None
            children.append((Platform.parse(platform), client.manifest(target.repository, digest)))
        index = build_image_index(children, annotations)
        return client.put_index(target.repository, index_tag, index), wanted

    ctx.progress(50, f"publishing {destination} for {', '.join(wanted)}")
    digest, platforms = with_fresh_credentials(
        publish, registry=target.registry, job_id=ctx.job_id, run_id=run_id, platform=None
    )
    telemetry.record(
        RegistryEventKind.INDEX_PUBLISHED,
        job_id=ctx.job_id,
        run_id=run_id,
        platform=None,
        target=destination,
        digest=digest,
        platforms=platforms,
    )
    ledger.update_run(
        run_id,
        index_digest=digest,
        status=BuildStatus.PUBLISHED.value,
        finished_at=datetime.now(UTC),
    )
    return {"index": destination, "digest": digest, "platforms": platforms}


def prune_tags(
    payload: PruneTagsPayload, ctx: JobContext, settings: Settings | None = None
) -> dict[str, Any]:
    settings = settings or get_settings()
    host, repository = payload.registry, payload.repository
    with session_scope() as session:
        policy_row = ledger.retention_policy(session, host, repository)
        if policy_row is None:
            raise NoRetentionPolicyError(
                f"no retention policy for {host}/{repository}; set one with "
                f"`drydock retention set {host}/{repository} --keep-newest N`"
            )
        policy = RetentionPolicy(
            keep_newest=policy_row.keep_newest, keep_patterns=tuple(policy_row.keep_patterns)
        )
        protected = dict.fromkeys(
            ledger.live_certified_digests(session, host, repository),
            "referenced by a live certification",
        )
        newest = ledger.newest_index(session, host, repository)
        newest_index = newest.index_digest if newest is not None else None

    def survey(credential: RegistryCredential | None) -> tuple[RegistryClient, list[TagState]]:
        client = registry_client(host, credential, settings)
        tags = client.list_tags(repository)
        states: list[TagState] = []
        for number, tag in enumerate(sorted(tags), start=1):
            manifest = client.manifest(repository, tag)
            children = tuple(child["digest"] for child in manifest.body.get("manifests", []) or [])
            states.append(
                TagState(
                    tag=tag,
                    digest=manifest.digest,
                    created=client.image_created(repository, manifest),
                    child_digests=children,
                )
            )
            if number % 20 == 0:
                ctx.progress(50 * number / len(tags), f"read {number}/{len(tags)} tags")
        return client, states

    client, states = with_fresh_credentials(
        survey, registry=host, job_id=ctx.job_id, run_id=None, platform=None
    )
    if newest_index is not None:
        protected.setdefault(newest_index, "the newest published index")
        for state in states:
            if state.digest == newest_index:
                for child in state.child_digests:
                    protected.setdefault(child, "listed by the newest published index")
    plan = plan_prune(states, policy, protected)
    deleted: list[str] = []
    if not payload.dry_run:
        for number, digest in enumerate(plan.delete_digests, start=1):
            client.delete_manifest(repository, digest)
            deleted.append(digest)
            telemetry.record(
                RegistryEventKind.TAG_DELETED,
                job_id=ctx.job_id,
                run_id=None,
                platform=None,
                repository=f"{host}/{repository}",
                digest=digest,
                tags=sorted(d.tag for d in plan.decisions if d.digest == digest),
            )
            ctx.progress(50 + 50 * number / len(plan.delete_digests), f"deleted {number} digest(s)")
    return {
        "repository": f"{host}/{repository}",
        "dry_run": payload.dry_run,
        "policy": {"keep_newest": policy.keep_newest, "keep_patterns": list(policy.keep_patterns)},
        "keep": [
            {"tag": d.tag, "digest": d.digest, "reason": d.reason} for d in plan.decisions if d.keep
        ],
        "delete": [
            {"tag": d.tag, "digest": d.digest, "reason": d.reason}
            for d in plan.decisions
            if not d.keep
        ],
        "delete_digests": list(plan.delete_digests),
        "deleted_digests": deleted,
    }


class _ThrottledProgress:
    """The push's output as job progress, at most one event a second (a push of many layers
    prints a line per chunk)."""

    def __init__(self, ctx: JobContext, destination: str, interval: float = 1.0) -> None:
        self.ctx, self.destination, self.interval = ctx, destination, interval
        self.last = 0.0

    def __call__(self, line: str) -> None:
        now = time.monotonic()
        if now - self.last < self.interval or not line.strip():
            return
        self.last = now
        self.ctx.progress(None, f"pushing {self.destination}: {line.strip()}"[:300])


class _EventWriter:
    def __init__(self, job_id: uuid.UUID, run_id: uuid.UUID | None, platform: str | None) -> None:
        self.job_id, self.run_id, self.platform = job_id, run_id, platform

    def __call__(self, kind: RegistryEventKind, **fields: Any) -> None:
        telemetry.record(
            kind, job_id=self.job_id, run_id=self.run_id, platform=self.platform, **fields
        )

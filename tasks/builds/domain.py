"""``builds.build_image`` without Celery: fetch, build every platform, verify, record.

The Celery task (``tasks.builds.celery_tasks``) passes the job's context and a function that sends
the push chord; everything else happens here, against the ledger (``models.builds``) and a
builder backend (``tasks.builds.backends``).
"""

from __future__ import annotations

import shutil
import tempfile
import threading
import time
import uuid
from collections import deque
from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from adapters.credentials import CredentialUnavailableError, credential_for
from adapters.git import fetch_revision
from adapters.git_inputs import redact_url, resolve_inside
from catalog.builds import BuildImagePayload
from kernel.context import JobContext
from kernel.errors import DrydockError, TransientError
from kernel.platforms import Platform
from kernel.redaction import scrub_text, secret_strings, split_secrets
from kernel.settings import Settings, get_settings
from models import builds as ledger
from models.builds import BuildStatus, CredentialOutcome, PlatformStatus
from tasks.builds.backends import (
    BuilderBackend,
    BuildSpec,
    BuiltImage,
    backend_for,
    verify_platform,
)

# Lines of a build's log kept in memory per platform; the stored artifact is capped again.
LOG_LINES_KEPT = 20_000


class PlatformUnsupportedError(DrydockError):
    """The chosen backend cannot build a requested platform; nothing was built."""


# Sends the pushes of a built run (one job per platform, then the index): returns the job ids.
PushDispatcher = Callable[[uuid.UUID, Sequence[Platform]], list[str]]


def work_dir_for(settings: Settings, job_id: uuid.UUID, attempt: int) -> Path:
    root = Path(settings.build_work_dir or Path(tempfile.gettempdir()) / "drydock-builds")
    return root / f"{job_id}-{attempt}"


@dataclass
class _PlatformLog:
    """One platform's build log: every line to the artifact, step lines to progress."""

    platform: Platform
    scrub: Sequence[str]
    lines: deque[str]
    steps_done: int = 0
    steps_total: int = 0

    def add(self, line: str) -> None:
        self.lines.append(scrub_text(line.rstrip("\n"), self.scrub))

    def text(self) -> bytes:
        return ("\n".join(self.lines) + "\n").encode()


class _Progress:
    """Job progress across platforms built in parallel: 0-10% fetching, 10-95% building (by
    steps done over all platforms), then recording."""

    def __init__(self, ctx: JobContext, logs: Sequence[_PlatformLog]) -> None:
        self._ctx = ctx
        self._logs = logs
        self._lock = threading.Lock()

    def step(self, log: _PlatformLog, index: int, total: int, instruction: str) -> None:
        with self._lock:
            log.steps_done, log.steps_total = index, total
            known = [entry for entry in self._logs if entry.steps_total]
            fraction = (
                sum(entry.steps_done / entry.steps_total for entry in known) / len(self._logs)
                if known
                else 0.0
            )
            self._ctx.progress(
                10 + 85 * fraction,
                f"{log.platform}: step {index}/{total} {instruction}"[:300],
                platform=str(log.platform),
                step=index,
                steps=total,
            )


def build_image(
    payload: BuildImagePayload,
    ctx: JobContext,
    dispatch_pushes: PushDispatcher,
    settings: Settings | None = None,
) -> dict[str, Any]:
    settings = settings or get_settings()
    backend = backend_for(payload.backend or settings.build_backend, settings)
    platforms = payload.parsed_platforms
    run_id = ledger.open_run(
        ledger.NewRun(
            job_id=ctx.job_id,
            repository_url=redact_url(payload.repository_url),
            revision=payload.revision,
            image=payload.image,
            backend=backend.name,
            platforms=[str(p) for p in platforms],
            push_target=payload.push.model_dump(mode="json") if payload.push else None,
        )
    )
    work_dir = work_dir_for(settings, ctx.job_id, ctx.attempt)
    # A build argument's secret value can appear in an error (a failed RUN step echoing it):
    # the run's stored error is scrubbed of them, as its logs are.
    _, secrets = split_secrets(dict(payload.build_args), ctx.secret_names)
    scrub = secret_strings(secrets)
    try:
        result = _build(payload, ctx, backend, platforms, run_id, work_dir, settings)
    except TransientError as exc:
        ledger.update_run(run_id, error=scrub_text(str(exc), scrub)[:4000])
        raise
    except Exception as exc:
        ledger.fail_run(run_id, scrub_text(f"{type(exc).__name__}: {exc}", scrub))
        raise
    finally:
        shutil.rmtree(work_dir, ignore_errors=True)
    if payload.push is not None:
        if ledger.claim_push_dispatch(run_id):
            try:
                result["push_jobs"] = dispatch_pushes(run_id, platforms)
            except Exception:
                ledger.release_push_dispatch(run_id)
                raise
            ctx.progress(100, f"built; pushing {len(platforms)} platform image(s)")
        else:
            result["push_jobs"] = "already dispatched"
    else:
        ledger.update_run(run_id, status=BuildStatus.BUILT.value, finished_at=datetime.now(UTC))
        ctx.progress(100, "built")
    return result


def _build(
    payload: BuildImagePayload,
    ctx: JobContext,
    backend: BuilderBackend,
    platforms: list[Platform],
    run_id: uuid.UUID,
    work_dir: Path,
    settings: Settings,
) -> dict[str, Any]:
    _refuse_unsupported(backend, platforms, None)
    _check_credentials(payload, run_id)

    ctx.progress(0, f"fetching {redact_url(payload.repository_url)} at {payload.revision}")
    fetch_started = time.monotonic()
    work_dir.mkdir(parents=True, exist_ok=True)
    source = fetch_revision(
        payload.repository_url,
        payload.revision,
        work_dir / "source",
        allowed_schemes=settings.git_allowed_schemes,
        timeout_seconds=settings.git_timeout_seconds,
        max_bytes=settings.git_max_bytes,
    )
    fetch_ms = (time.monotonic() - fetch_started) * 1000
    ledger.update_run(
        run_id,
        commit=source.commit,
        ref_kind=source.ref_kind,
        fetch_ms=fetch_ms,
        status=BuildStatus.BUILDING.value,
    )
    ctx.progress(10, f"fetched {payload.revision} ({source.ref_kind}) at {source.commit[:12]}")
    context = resolve_inside(source.path, payload.context_dir, "context_dir")
    dockerfile = resolve_inside(context, payload.dockerfile, "dockerfile")
    # Now that the Dockerfile can be read: buildah builds a foreign architecture only when no
    # step has to run on it (no RUN, or an emulator for it is there).
    _refuse_unsupported(backend, platforms, dockerfile.read_text(errors="replace"))

    _, secrets = split_secrets(dict(payload.build_args), ctx.secret_names)
    scrub = secret_strings(secrets)
    logs = [_PlatformLog(p, scrub, deque(maxlen=LOG_LINES_KEPT)) for p in platforms]
    progress = _Progress(ctx, logs)
    build_started = time.monotonic()

    def build_one(log: _PlatformLog) -> BuiltImage:
        platform = log.platform
        tag = f"{payload.image}:{payload.platform_tag(platform)}"
        ledger.start_platform(run_id, str(platform), tag)
        started = time.monotonic()
        spec = BuildSpec(
            context=context,
            dockerfile=dockerfile,
            tag=tag,
            platform=platform,
            build_args=dict(payload.build_args),
            labels={
                "org.opencontainers.image.revision": source.commit,
                "org.opencontainers.image.source": redact_url(payload.repository_url),
                **payload.labels,
            },
            no_cache=not payload.cache.use_cache,
            cache_from=list(payload.cache.cache_from),
        )
        try:
            built = backend.build(
                spec,
                log.add,
                lambda index, total, instruction: progress.step(log, index, total, instruction),
            )
            verify_platform(backend, built.tag, platform)
        except Exception as exc:
            ledger.update_platform(
                run_id,
                str(platform),
                status=PlatformStatus.FAILED.value,
                error=scrub_text(f"{type(exc).__name__}: {exc}", scrub)[:4000],
                build_ms=(time.monotonic() - started) * 1000,
                log_artifact_id=_keep_log(ctx.job_id, log),
            )
            raise
        ledger.update_platform(
            run_id,
            str(platform),
            status=PlatformStatus.BUILT.value,
            image_id=built.image_id,
            size_bytes=built.size_bytes,
            steps_total=built.steps_total,
            steps_cached=built.steps_cached,
            build_ms=(time.monotonic() - started) * 1000,
            log_artifact_id=_keep_log(ctx.job_id, log),
        )
        return built

    with ThreadPoolExecutor(max_workers=min(settings.build_parallelism, len(logs))) as pool:
        futures = [pool.submit(build_one, log) for log in logs]
        # Every platform finishes (or fails) before the job does: no build is left running.
        errors = [f.exception() for f in futures]
    failed = [e for e in errors if e is not None]
    if failed:
        raise failed[0]
    built_images = [f.result() for f in futures]
    ledger.update_run(
        run_id,
        status=BuildStatus.BUILT.value,
        build_ms=(time.monotonic() - build_started) * 1000,
        built_at=datetime.now(UTC),
    )
    return {
        "run_id": str(run_id),
        "commit": source.commit,
        "ref_kind": source.ref_kind,
        "backend": backend.name,
        "platforms": {
            str(image.platform): {
                "tag": image.tag,
                "image_id": image.image_id,
                "size_bytes": image.size_bytes,
                "steps_cached": image.steps_cached,
                "steps_total": image.steps_total,
            }
            for image in built_images
        },
    }


def _refuse_unsupported(
    backend: BuilderBackend, platforms: Sequence[Platform], dockerfile_text: str | None
) -> None:
    refusals = [
        f"{platform}: {reason}"
        for platform in platforms
        if (reason := backend.unsupported_reason(platform, dockerfile_text)) is not None
    ]
    if refusals:
        raise PlatformUnsupportedError(
            f"the {backend.name} backend cannot build " + "; ".join(refusals)
        )


def _check_credentials(payload: BuildImagePayload, run_id: uuid.UUID) -> None:
    """Before building anything: can the push target's credentials be had? A build whose push
    could never authenticate should say so before spending the build. The answer is the run's
    credential outcome (a push that has to refresh them updates it)."""
    outcome = CredentialOutcome.NOT_NEEDED
    if payload.push is not None:
        try:
            credential = credential_for(payload.push.registry)
        except CredentialUnavailableError:
            ledger.update_run(run_id, credential_outcome=CredentialOutcome.UNAVAILABLE.value)
            raise
        outcome = CredentialOutcome.ANONYMOUS if credential is None else CredentialOutcome.ISSUED
    ledger.update_run(run_id, credential_outcome=outcome.value)


def _keep_log(job_id: uuid.UUID, log: _PlatformLog) -> int:
    return ledger.keep_artifact(
        job_id, kind="build_log", name=f"{log.platform.tag_suffix}.log", body=log.text()
    )

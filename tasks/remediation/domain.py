"""The remediation queue's work: running a run's playbook against its asset, and closing the
loop on the asset. Requests and decisions that lead to a run are ``requests``; Beat's sweep
``sweep``; what operators read ``views``.

A run's life: requested (by a person, a service or policy) for a quarantined asset ->
``pending_approval`` when the playbook, the asset or the tenant needs an approval, else
``queued`` -> ``running`` -> ``succeeded`` | ``failed``; or ``cancelled`` (rejected, cancelled,
or the asset was trusted again before it ran) or ``expired`` (nobody approved in time, or the
approval ran out before it started). Every decision is a ``remediation_audit`` row.

What makes it safe to point at production:
- one active run per (tenant, asset, playbook), by a partial unique index: concurrent
  requests collapse into one run and every caller gets its id; one *running* run per asset;
- a run that needs approval executes only with a signed token bound to it (approvals.py),
  checked by the task itself; a forged, foreign or expired token is refused and audited;
- one execution at a time per run: a session advisory lock, released if the worker dies, so
  a redelivered message never runs a playbook beside a live execution of it;
- commands run in sandbox containers, ansible over its connection, libvirt and Kubernetes
  through their APIs: never on the worker host (executors/).

Success moves the asset ``remediating -> pending_attestation`` and asks for fresh evidence
with a new nonce; failure sends it back to ``quarantined`` with the reason.
"""

from __future__ import annotations

import contextlib
import os
import secrets
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

import orjson
from sqlalchemy import select, text
from sqlalchemy.exc import IntegrityError
from sqlalchemy.orm import Session

from catalog.remediation import RunPlaybookPayload
from kernel.context import JobContext
from kernel.errors import DrydockError, TransientError
from kernel.logs import get_logger
from kernel.redaction import scrub_text, secret_strings
from kernel.settings import get_settings
from models import notices, trust
from models import remediation as store
from models.db import get_engine, session_scope
from models.remediation import (
    RemediationPlaybook,
    RemediationRun,
    RunState,
)
from models.trust import Move, TrustAsset, TrustState
from policy import approvals
from policy.approvals import ApprovalTokenError, TokenProblem
from tasks.remediation import artifacts
from tasks.remediation.executors import executor_for
from tasks.remediation.executors.base import (
    ExecutorKind,
    RunContext,
    SecretEnvSpec,
    Target,
)
from tasks.remediation.playbooks import parse_spec
from tasks.remediation.run_records import A, actor_of, expire_run, finish_run, run_result

# Published (Redis) when a run succeeded: the asset's agent should send fresh evidence
# carrying ``nonce``. The asset's move to pending_attestation is also on the trust channels.
EVIDENCE_REQUEST_CHANNEL = trust.EVIDENCE_REQUEST_CHANNEL
# Worker variables a playbook's secret_env may name: nothing else of the worker's environment
# (its database URL, say) can be pulled into a step.
SECRET_ENV_PREFIX = "DRYDOCK_REMEDIATION_SECRET_"


class AssetBusyError(TransientError):
    """Another playbook is running on the asset: this run waits its turn (retried)."""


class SecretUnavailableError(DrydockError):
    pass


# -- playbooks ---------------------------------------------------------------------------------


# -- requests ----------------------------------------------------------------------------------


# -- approvals ---------------------------------------------------------------------------------


# -- sending -----------------------------------------------------------------------------------


# -- execution ---------------------------------------------------------------------------------


class _Refused(DrydockError):
    """Raised out of execute_run once a refusal is audited: the job is dead-lettered."""


def execute_run(payload: RunPlaybookPayload, ctx: JobContext) -> dict[str, Any]:
    """The task: admit the job (tenant, state, approval), claim the run and the asset, run the
    playbook step by step keeping each step, then close the loop on the asset."""
    actor = actor_of(ctx)
    admitted = _admit(payload, actor)
    if admitted is not None:
        return admitted
    with _run_lock(payload.run_id) as held:
        if not held:
            # A live execution elsewhere holds the run (a duplicate delivery): it records the
            # outcome; this job must not run the playbook beside it.
            return {
                "run_id": str(payload.run_id),
                "state": RunState.RUNNING.value,
                "note": ("executing on another worker; this delivery did nothing"),
            }
        started = _start(payload.run_id, ctx)
        if isinstance(started, dict):
            return started
        return _execute(started, ctx)


def _admit(payload: RunPlaybookPayload, actor: str) -> dict[str, Any] | None:
    """None when the job may run its run; the run's outcome when it already has one. Raises
    (after auditing and committing) when it must not run at all."""
    refusal: DrydockError | None = None
    with session_scope() as session:
        run = store.get_run(session, payload.run_id, payload.tenant, lock=True)
        if run.state in store.TERMINAL_RUN_STATES:
            return run_result(run, repeated=True)
        if run.state == RunState.PENDING_APPROVAL.value:
            refusal = _refuse_token(
                session,
                run,
                actor,
                TokenProblem.MISSING if payload.approval_token is None else TokenProblem.FORGED,
                "the run is waiting for approval: "
                + "; ".join(run.approval_reasons)
                + " (`drydock remediation approve RUN`)",
            )
        elif run.approval_reasons:
            refusal = _check_token(session, run, payload.approval_token, actor)
    if refusal is not None:
        raise refusal
    return None


def _check_token(
    session: Session, run: RemediationRun, token: str | None, actor: str
) -> DrydockError | None:
    if token is None:
        return _refuse_token(
            session,
            run,
            actor,
            TokenProblem.MISSING,
            "the run needs approval and the job carries no approval token",
        )
    try:
        grant = approvals.verify(
            token, run_id=run.id, tenant=run.tenant, key=approvals.signing_key()
        )
    except ApprovalTokenError as exc:
        if exc.problem is TokenProblem.EXPIRED and run.attempts == 0:
            # The approval ran out before the run ever started: the run is over.
            expire_run(session, run, actor, f"{exc}; approve a new request to run it")
            return _Refused(f"run {run.id} expired: {exc}")
        return _refuse_token(session, run, actor, exc.problem, str(exc))
    if grant.token_id != run.approval_token_id:
        return _refuse_token(
            session,
            run,
            actor,
            TokenProblem.SUPERSEDED,
            "the approval token is not the one issued for this run's approval",
        )
    return None


def _refuse_token(
    session: Session, run: RemediationRun, actor: str, problem: TokenProblem, message: str
) -> _Refused:
    store.audit(session, run, A.TOKEN_REFUSED, actor, message, problem=problem.value)
    return _Refused(f"run {run.id} refused: {message}")


@contextlib.contextmanager
def _run_lock(run_id: uuid.UUID) -> Iterator[bool]:
    """A session advisory lock on the run for the whole execution. PostgreSQL releases it when
    the connection closes, so a worker that dies mid-run frees the run for its redelivery."""
    key = int.from_bytes(run_id.bytes[:8], "big", signed=True)
    with get_engine().connect() as conn:
        held = bool(conn.execute(text("SELECT pg_try_advisory_lock(:key)"), {"key": key}).scalar())
        conn.commit()
        try:
            yield held
        finally:
            if held:
                conn.execute(text("SELECT pg_advisory_unlock(:key)"), {"key": key})
                conn.commit()


@dataclass(frozen=True)
class _Started:
    run_id: uuid.UUID
    attempt: int
    executor: ExecutorKind
    spec: dict[str, Any]
    timeout_seconds: int
    playbook: str
    target: Target


def _start(run_id: uuid.UUID, ctx: JobContext) -> _Started | dict[str, Any]:
    """Mark the run running (one running run per asset, by index) and move its asset to
    remediating. A run whose asset is no longer distrusted is cancelled instead."""
    actor = actor_of(ctx)
    try:
        with session_scope() as session:
            run = store.get_run(session, run_id, None, lock=True)
            if run.state in store.TERMINAL_RUN_STATES:
                return run_result(run, repeated=True)
            run.state = RunState.RUNNING.value
            run.attempts += 1
            run.started_at = run.started_at or datetime.now(UTC)
            run.job_id = ctx.job_id
            run.error = None
            store.audit(
                session, run, A.STARTED, actor, attempt=run.attempts, job_id=str(ctx.job_id)
            )
            session.flush()
            attempt = run.attempts
            asset_id = run.asset_id
            book = session.get(RemediationPlaybook, run.playbook_id)
            assert book is not None  # a foreign key
    except IntegrityError:
        with session_scope() as session:
            other = store.running_run_on_asset(session, _asset_of(run_id))
        raise AssetBusyError(
            f"another playbook ({other.playbook_name if other else '?'} run "
            f"{other.id if other else '?'}) is running on the asset; this run waits"
        ) from None

    def claim(session: Session, asset: TrustAsset) -> list[Move]:
        if asset.state == TrustState.QUARANTINED.value:
            return [
                Move(
                    TrustState.REMEDIATING,
                    "remediation_started",
                    f"playbook {book.name} v{book.version} run {run_id} (attempt {attempt})",
                    {"run_id": str(run_id)},
                )
            ]
        if asset.state == TrustState.REMEDIATING.value:
            return []  # this run's earlier attempt (or an orphan) left it here
        raise _NoLongerDistrusted(asset.state)

    try:
        trust.transition(asset_id, claim, actor=actor, job_id=ctx.job_id)
    except _NoLongerDistrusted as exc:
        with session_scope() as session:
            run = store.get_run(session, run_id, None, lock=True)
            finish_run(
                session,
                run,
                RunState.CANCELLED,
                A.CANCELLED,
                actor,
                f"the asset is {exc.state} now, no longer distrusted: nothing to remediate",
            )
            return run_result(run)
    with session_scope() as session:
        asset = session.get(TrustAsset, asset_id)
        assert asset is not None
        target = Target(
            asset_id=asset.id,
            tenant=asset.tenant,
            name=asset.name,
            kind=asset.kind,
            libvirt_uuid=asset.libvirt_uuid,
            connection=dict(asset.connection or {}),
        )
    return _Started(
        run_id=run_id,
        attempt=attempt,
        executor=ExecutorKind(book.executor),
        spec=dict(book.spec),
        timeout_seconds=book.timeout_seconds,
        playbook=f"{book.name} v{book.version}",
        target=target,
    )


class _NoLongerDistrusted(DrydockError):
    def __init__(self, state: str) -> None:
        super().__init__(state)
        self.state = state


def _asset_of(run_id: uuid.UUID) -> uuid.UUID:
    with session_scope() as session:
        return store.get_run(session, run_id, None).asset_id


def _execute(started: _Started, ctx: JobContext) -> dict[str, Any]:
    settings = get_settings()
    spec = parse_spec(started.executor, started.spec)
    try:
        secret_env = resolve_secret_env(spec)
    except SecretUnavailableError as exc:
        return _conclude(started, ctx, {}, failure=str(exc))
    scrub = secret_strings(secret_env)
    run = RunContext.starting_now(
        started.run_id, started.attempt, started.timeout_seconds, secret_env
    )
    total = _step_count(spec)
    ran = 0
    failure: str | None = None
    # The steps' outputs as kept (redacted), merged in order: the run's outputs.
    outputs: dict[str, Any] = {}
    log = get_logger(run_id=str(started.run_id), attempt=started.attempt)
    try:
        # Leaving the loop early (a failed step, an error) stops what the executor started
        # (ansible-playbook, a container) at once, not whenever the generator is collected.
        steps_run = executor_for(started.executor).execute(spec, started.target, run)
        try:
            for index, step in enumerate(steps_run):
                kept = artifacts.kept_step(
                    step,
                    secrets=scrub,
                    max_bytes=settings.remediation_artifact_max_bytes,
                    extra_secret_fields=settings.extra_secret_fields,
                )
                with session_scope() as session:
                    store.keep_artifact(
                        session, started.run_id, started.target.tenant, started.attempt, index, kept
                    )
                ran = index + 1
                outputs.update(kept["outputs"])
                percent = None if total is None else min(100.0, 100.0 * ran / total)
                ctx.progress(
                    percent,
                    f"step {ran} {kept['step_name']}: {'ok' if step.ok else 'failed'}",
                    run_id=str(started.run_id),
                )
                if not step.ok:
                    reason = step.error or "no reason given"
                    failure = scrub_text(f"step {ran} {step.name!r} failed: {reason}", scrub)
                    break
        finally:
            # A generator's close() stops it where it stands (GeneratorExit inside it).
            getattr(steps_run, "close", lambda: None)()
    except TransientError as exc:
        # The engine, daemon or API could not be reached: the run waits for the retry, the asset
        # stays remediating. Retries spent -> dead letter -> gave_up() fails the run.
        with session_scope() as session:
            row = store.get_run(session, started.run_id, None, lock=True)
            if row.state == RunState.RUNNING.value:
                row.state = RunState.QUEUED.value
                row.error = scrub_text(str(exc), scrub)
        log.warning("remediation.executor_unavailable", error=str(exc)[:300])
        raise
    if not ran:
        failure = "the playbook ran no step"
    return _conclude(started, ctx, outputs, failure=failure)


def _step_count(spec: Any) -> int | None:
    for field_name in ("steps", "actions"):
        items = getattr(spec, field_name, None)
        if isinstance(items, list | tuple):
            return len(items)
    return None


def resolve_secret_env(spec: Any) -> dict[str, str]:
    """The secret variables a spec names, read from the worker's environment."""
    if not isinstance(spec, SecretEnvSpec):
        return {}
    resolved = {}
    for name, source in spec.secret_env.items():
        if not source.startswith(SECRET_ENV_PREFIX):
            raise SecretUnavailableError(
                f"secret_env {name}: worker variable {source} must start with {SECRET_ENV_PREFIX}"
            )
        value = os.environ.get(source)
        if value is None:
            raise SecretUnavailableError(f"secret_env {name}: {source} is not set on this worker")
        resolved[name] = value
    return resolved


def _conclude(
    started: _Started, ctx: JobContext, outputs: dict[str, Any], *, failure: str | None
) -> dict[str, Any]:
    """Record the outcome and move the asset, in one transaction: success -> pending
    attestation with a fresh nonce; failure -> back to quarantine with the reason."""
    actor = actor_of(ctx)
    nonce = secrets.token_hex(32) if failure is None else None
    summary: dict[str, Any] = {}

    def plan(session: Session, asset: TrustAsset) -> list[Move]:
        run = store.get_run(session, started.run_id, None, lock=True)
        if run.state != RunState.RUNNING.value or run.attempts != started.attempt:
            return []  # concluded already (this attempt's outcome is recorded)
        run.outputs = outputs
        evidence = {"run_id": str(run.id), "playbook": started.playbook}
        if failure is None:
            run.evidence_nonce = nonce
            finish_run(session, run, RunState.SUCCEEDED, A.SUCCEEDED, actor, "every step succeeded")
            move = Move(
                TrustState.PENDING_ATTESTATION,
                "remediation_succeeded",
                f"playbook {started.playbook} run {run.id} succeeded; fresh evidence requested "
                f"(nonce {nonce})",
                {**evidence, "nonce": nonce},
            )
        else:
            finish_run(session, run, RunState.FAILED, A.FAILED, actor, failure)
            move = Move(
                TrustState.QUARANTINED,
                "remediation_failed",
                f"playbook {started.playbook} run {run.id} failed: {failure}"[:2000],
                evidence,
            )
        summary.update(run_result(run))
        if asset.state != TrustState.REMEDIATING.value:
            return []
        return [move]

    trust.transition(started.target.asset_id, plan, actor=actor, job_id=ctx.job_id)
    if failure is None and summary.get("state") == RunState.SUCCEEDED.value:
        _request_evidence(started, nonce)
    with session_scope() as session:
        asset = session.get(TrustAsset, started.target.asset_id)
        summary["asset_state"] = asset.state if asset else None
    return summary


def _request_evidence(started: _Started, nonce: str | None) -> None:
    """Ask the asset's agent for fresh evidence carrying ``nonce``. Best effort: the asset is
    pending_attestation and the nonce is on the run whatever happens to this message."""
    message = {
        "asset_id": str(started.target.asset_id),
        "tenant": started.target.tenant,
        "asset": started.target.name,
        "run_id": str(started.run_id),
        "nonce": nonce,
        "requested_at": datetime.now(UTC).isoformat(),
    }
    notices.publish(EVIDENCE_REQUEST_CHANNEL, [orjson.dumps(message)])


def gave_up(exc: BaseException, ctx: JobContext, reason: str) -> None:
    """The job was dead-lettered (retries spent, time limit, a bug): a run this job started
    fails, and its asset goes back to quarantine with the reason. Refusals of the job itself
    (a bad token, another tenant's run) leave the run as it was."""
    with session_scope() as session:
        run = session.scalar(select(RemediationRun).where(RemediationRun.job_id == ctx.job_id))
        if run is None:
            return
        run_id = run.id
    fail_orphaned_run(run_id, f"{reason}: {type(exc).__name__}: {exc}"[:2000], actor_of(ctx))


def fail_orphaned_run(run_id: uuid.UUID, failure: str, actor: str) -> bool:
    """Fail a started run whose job ended without concluding it. False when it had concluded."""
    outcome: dict[str, bool] = {}

    def plan(session: Session, asset: TrustAsset) -> list[Move]:
        run = store.get_run(session, run_id, None, lock=True)
        outcome["failed"] = False
        if run.state not in (RunState.RUNNING.value, RunState.QUEUED.value) or not run.attempts:
            return []
        finish_run(session, run, RunState.FAILED, A.FAILED, actor, failure)
        outcome["failed"] = True
        if asset.state != TrustState.REMEDIATING.value:
            return []
        return [
            Move(
                TrustState.QUARANTINED,
                "remediation_failed",
                f"run {run_id} gave up after {run.attempts} attempt(s): {failure}"[:2000],
                {"run_id": str(run_id)},
            )
        ]

    trust.transition(_asset_of(run_id), plan, actor=actor)
    return outcome.get("failed", False)


# -- the sweep (Beat) --------------------------------------------------------------------------


# -- reading -----------------------------------------------------------------------------------

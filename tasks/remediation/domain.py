"""The remediation queue's work, and the requests and decisions that lead to it.

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
import dataclasses
import os
import secrets
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Any

import orjson
from sqlalchemy import select, text
from sqlalchemy.exc import IntegrityError
from sqlalchemy.orm import Session

from catalog.remediation import RunPlaybookPayload, SweepRunsPayload
from dispatch.enqueue import enqueue
from kernel.context import JobContext
from kernel.errors import BrokerUnavailableError, DrydockError, TransientError
from kernel.logs import get_logger
from kernel.redaction import is_secret_name, scrub_text, secret_strings
from kernel.settings import get_settings
from models import notices, trust
from models import policy as policy_store
from models import remediation as store
from models.db import get_engine, session_scope
from models.jobs import Job, JobStatus
from models.remediation import (
    RemediationAuditAction,
    RemediationPlaybook,
    RemediationRefusedError,
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
from tasks.remediation.playbooks import PlaybookDefinition, parse_spec

A = RemediationAuditAction
RUN_TASK = "remediation.run_playbook"
# Published (Redis) when a run succeeded: the asset's agent should send fresh evidence
# carrying ``nonce``. The asset's move to pending_attestation is also on the trust channels.
EVIDENCE_REQUEST_CHANNEL = "drydock:attestation:evidence-requests"
# Worker variables a playbook's secret_env may name: nothing else of the worker's environment
# (its database URL, say) can be pulled into a step.
SECRET_ENV_PREFIX = "DRYDOCK_REMEDIATION_SECRET_"
# A queued run whose job was not sent is sent by the sweep once it is this old (the request
# that recorded it may still be sending).
UNSENT_GRACE = timedelta(seconds=60)


class AssetBusyError(TransientError):
    """Another playbook is running on the asset: this run waits its turn (retried)."""


class SecretUnavailableError(DrydockError):
    pass


def actor_of(ctx: JobContext) -> str:
    return f"worker:{ctx.who.hostname}"


# -- playbooks ---------------------------------------------------------------------------------


def create_playbook(definition: PlaybookDefinition, *, tenant: str, actor: str) -> dict[str, Any]:
    """Store the definition as the next version of the tenant's playbook of that name."""
    check_tenant(tenant)
    for _ in range(5):
        try:
            with session_scope() as session:
                playbook = store.add_playbook_version(
                    session,
                    tenant=tenant,
                    name=definition.name,
                    executor=definition.executor.value,
                    spec=definition.parsed_spec().model_dump(mode="json"),
                    timeout_seconds=definition.timeout_seconds,
                    requires_approval=definition.requires_approval,
                    asset_kinds=[kind.value for kind in definition.asset_kinds],
                    description=definition.description,
                    created_by=actor,
                )
                return playbook_summary(playbook)
        except IntegrityError:
            continue  # another writer took that version number: take the next
    raise TransientError(f"playbook {definition.name}: versions kept changing; try again")


def playbook_summary(playbook: RemediationPlaybook, *, with_spec: bool = True) -> dict[str, Any]:
    summary = {
        "id": str(playbook.id),
        "tenant": playbook.tenant,
        "name": playbook.name,
        "version": playbook.version,
        "executor": playbook.executor,
        "timeout_seconds": playbook.timeout_seconds,
        "requires_approval": playbook.requires_approval,
        "asset_kinds": playbook.asset_kinds,
        "description": playbook.description,
        "created_at": _iso(playbook.created_at),
        "created_by": playbook.created_by,
    }
    if with_spec:
        summary["spec"] = playbook.spec
    return summary


def describe_playbook(tenant: str, name: str, version: int | None = None) -> dict[str, Any]:
    """One version of a playbook (the newest unless given) with its spec and every version."""
    with session_scope() as session:
        book = store.get_playbook(session, tenant, name, version)
        versions = [row.version for row in store.playbook_versions(session, tenant, name)]
        return {**playbook_summary(book), "versions": versions}


def check_tenant(tenant: str) -> str:
    if not tenant or len(tenant) > 100 or tenant != tenant.strip():
        raise RemediationRefusedError(f"tenant {tenant!r}: 1 to 100 characters, no padding")
    return tenant


# -- requests ----------------------------------------------------------------------------------


@dataclass(frozen=True)
class RequestOutcome:
    run_id: uuid.UUID
    # False: the asset and playbook already had an active run, and this request joined it.
    created: bool
    state: str
    job_id: uuid.UUID | None
    approval_reasons: list[str]


def request_run(
    *, tenant: str, asset: str, playbook: str, requested_by: str, reason: str = ""
) -> RequestOutcome:
    """Ask for ``playbook`` to run against ``asset`` (an id or a name of the tenant's).

    Refused (RemediationRefusedError, with the reason) when the asset is not distrusted or the
    playbook does not apply to its kind. When the asset and playbook already have an active
    run, that run is returned (``created`` False) and the request is audited as joining it.
    A run that needs no approval is enqueued at once."""
    check_tenant(tenant)
    for _ in range(5):
        with session_scope() as session:
            target = trust.find_asset(session, asset, tenant)
            book = store.get_playbook(session, tenant, playbook)
            existing = store.active_run(session, tenant, target.id, book.name)
            if existing is None:
                _check_requestable(target, book)
                reasons = _approval_reasons(session, target, book)
                now = datetime.now(UTC)
                state = RunState.PENDING_APPROVAL if reasons else RunState.QUEUED
                ttl = get_settings().remediation_request_ttl_seconds
                run_id = store.insert_run_unless_active(
                    session,
                    {
                        "id": uuid.uuid4(),
                        "tenant": tenant,
                        "asset_id": target.id,
                        "playbook_id": book.id,
                        "playbook_name": book.name,
                        "playbook_version": book.version,
                        "state": state.value,
                        "reason": reason,
                        "requested_by": requested_by,
                        "requested_at": now,
                        "approval_reasons": reasons,
                        "approval_deadline": now + timedelta(seconds=ttl) if reasons else None,
                        "trust_context": trust_context(session, target),
                        "attempts": 0,
                        "outputs": {},
                    },
                )
                if run_id is not None:
                    run = store.get_run(session, run_id, tenant)
                    store.audit(session, run, A.REQUESTED, requested_by, reason, state=state.value)
                    outcome = _outcome(run, created=True)
                    break
                # Another request inserted first: join it (read on the next pass).
                continue
            store.audit(session, existing, A.JOINED, requested_by, reason)
            outcome = _outcome(existing, created=False)
            break
    else:
        raise TransientError("the asset's runs kept changing under the request; try again")
    if outcome.state == RunState.QUEUED and outcome.job_id is None:
        outcome = dataclasses.replace(outcome, job_id=send_run(outcome.run_id))
    return outcome


def _outcome(run: RemediationRun, *, created: bool) -> RequestOutcome:
    return RequestOutcome(
        run_id=run.id,
        created=created,
        state=run.state,
        job_id=run.job_id,
        approval_reasons=list(run.approval_reasons),
    )


def _check_requestable(asset: TrustAsset, playbook: RemediationPlaybook) -> None:
    name = f"{asset.tenant}/{asset.name}"
    if asset.kind not in playbook.asset_kinds:
        raise RemediationRefusedError(
            f"playbook {playbook.name} applies to {', '.join(playbook.asset_kinds)} assets; "
            f"{name} is a {asset.kind}"
        )
    if asset.state != TrustState.QUARANTINED.value:
        hint = {
            TrustState.REMEDIATING.value: "another playbook is remediating it now",
            TrustState.TRUSTED.value: "it is trusted",
            TrustState.PENDING_ATTESTATION.value: "it is waiting for fresh evidence",
            TrustState.STALE.value: "its evidence expired: it needs fresh evidence, not repair",
            TrustState.UNKNOWN.value: "it has never been attested",
        }.get(asset.state, asset.state)
        raise RemediationRefusedError(
            f"asset {name} is {asset.state}, not distrusted ({hint}): remediation runs only "
            "against quarantined assets"
        )


def _approval_reasons(
    session: Session, asset: TrustAsset, playbook: RemediationPlaybook
) -> list[str]:
    reasons = []
    if playbook.requires_approval:
        reasons.append(f"playbook {playbook.name} requires approval")
    if asset.protected:
        reasons.append(f"asset {asset.tenant}/{asset.name} is protected")
    if policy_store.tenant_requires_approval(session, asset.tenant):
        reasons.append(f"tenant {asset.tenant} requires approval for remediation")
    return reasons


def trust_context(session: Session, asset: TrustAsset) -> dict[str, Any]:
    """Where the asset stood when the run was asked for: its state, the transition that put it
    there and its newest verdict."""
    history = trust.history(session, asset.id)
    last = history[-1] if history else None
    verdict = trust.latest_verdict(session, asset.id)
    return {
        "state": asset.state,
        "version": asset.version,
        "last_transition": None
        if last is None
        else {
            "from": last.from_state,
            "to": last.to_state,
            "cause": last.cause,
            "detail": last.detail[:1000],
            "actor": last.actor,
            "at": _iso(last.created_at),
        },
        "last_verdict": None
        if verdict is None
        else {
            "id": verdict.id,
            "kind": verdict.kind,
            "verified": verdict.verified,
            "summary": verdict.summary[:1000],
            "at": _iso(verdict.created_at),
        },
    }


# -- approvals ---------------------------------------------------------------------------------


@dataclass(frozen=True)
class ApprovalOutcome:
    run_id: uuid.UUID
    token: str
    expires_at: datetime
    job_id: uuid.UUID | None


def approve_run(
    run_id: uuid.UUID, *, tenant: str | None, approver: str, reason: str = ""
) -> ApprovalOutcome:
    """Approve a pending run: issue its token, queue it, send its job. The requester cannot
    approve their own request; a run whose approval wait ran out expires instead."""
    key = approvals.signing_key()
    now = datetime.now(UTC)
    expired = False
    with session_scope() as session:
        run = store.get_run(session, run_id, tenant, lock=True)
        if run.state != RunState.PENDING_APPROVAL.value:
            raise RemediationRefusedError(_not_pending(run))
        if run.approval_deadline is not None and run.approval_deadline <= now:
            _expire(session, run, approver, "nobody approved it before its deadline")
            expired = True
        else:
            if approver == run.requested_by:
                raise RemediationRefusedError(
                    f"run {run.id} was requested by {approver}: someone else must approve it"
                )
            grant = approvals.new_grant(
                run.id,
                run.tenant,
                approver,
                ttl_seconds=get_settings().remediation_approval_ttl_seconds,
                now=now,
            )
            run.state = RunState.QUEUED.value
            run.approved_by = approver
            run.approved_at = grant.issued_at
            run.approval_expires_at = grant.expires_at
            run.approval_token_id = grant.token_id
            store.audit(
                session,
                run,
                A.APPROVED,
                approver,
                reason,
                token_id=grant.token_id,
                expires_at=_iso(grant.expires_at),
            )
            token = approvals.mint(grant, key)
    if expired:
        raise RemediationRefusedError(
            f"run {run_id} expired: its approval deadline passed before it was approved"
        )
    job_id = send_run(run_id)
    return ApprovalOutcome(run_id, token, grant.expires_at, job_id)


def reject_run(run_id: uuid.UUID, *, tenant: str | None, actor: str, reason: str) -> str:
    """Refuse a pending run (it becomes cancelled). Returns the new state."""
    with session_scope() as session:
        run = store.get_run(session, run_id, tenant, lock=True)
        if run.state != RunState.PENDING_APPROVAL.value:
            raise RemediationRefusedError(_not_pending(run))
        _finish(session, run, RunState.CANCELLED, A.REJECTED, actor, reason or "rejected")
        return run.state


def cancel_run(run_id: uuid.UUID, *, tenant: str | None, actor: str, reason: str) -> str:
    """Cancel a run that has not started. A running playbook is not stopped halfway: that
    would leave the asset in a state nobody chose."""
    with session_scope() as session:
        run = store.get_run(session, run_id, tenant, lock=True)
        if run.state not in (RunState.PENDING_APPROVAL.value, RunState.QUEUED.value):
            raise RemediationRefusedError(
                f"run {run.id} is {run.state}: only pending or queued runs can be cancelled"
            )
        _finish(session, run, RunState.CANCELLED, A.CANCELLED, actor, reason or "cancelled")
        return run.state


def _not_pending(run: RemediationRun) -> str:
    if run.state == RunState.QUEUED.value and run.approved_by:
        return f"run {run.id} was already approved by {run.approved_by}"
    return f"run {run.id} is {run.state}, not pending approval"


def _expire(session: Session, run: RemediationRun, actor: str, reason: str) -> None:
    _finish(session, run, RunState.EXPIRED, A.EXPIRED, actor, reason)


def _finish(
    session: Session,
    run: RemediationRun,
    state: RunState,
    action: RemediationAuditAction,
    actor: str,
    reason: str,
    **detail: Any,
) -> None:
    run.state = state.value
    run.finished_at = datetime.now(UTC)
    if state is not RunState.SUCCEEDED:
        run.error = reason
    store.audit(session, run, action, actor, reason, **detail)


# -- sending -----------------------------------------------------------------------------------


def send_run(run_id: uuid.UUID) -> uuid.UUID | None:
    """Enqueue the run's job (with its approval token, minted again from the stored grant) and
    note it on the run. Every send of a run uses one idempotency key, so a run is enqueued once
    however often this is called. None when the broker is down: the run stays queued without a
    job, and the sweep sends it later."""
    with session_scope() as session:
        run = store.get_run(session, run_id, None)
        payload: dict[str, Any] = {"run_id": str(run.id), "tenant": run.tenant}
        if run.approved_by and run.approval_token_id and run.approval_expires_at:
            grant = approvals.ApprovalGrant(
                run_id=run.id,
                tenant=run.tenant,
                approver=run.approved_by,
                token_id=run.approval_token_id,
                issued_at=run.approved_at or datetime.now(UTC),
                expires_at=run.approval_expires_at,
            )
            payload["approval_token"] = approvals.mint(grant, approvals.signing_key())
    try:
        job = enqueue(
            RUN_TASK, payload, f"remediation-run:{run_id}", enqueued_by=f"remediation:{run_id}"
        )
    except BrokerUnavailableError as exc:
        get_logger(run_id=str(run_id)).warning("remediation.send_failed", error=str(exc)[:300])
        return None
    with session_scope() as session:
        run = store.get_run(session, run_id, None, lock=True)
        if run.job_id is None:
            run.job_id = job.id
    return job.id


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
            _expire(session, run, actor, f"{exc}; approve a new request to run it")
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
            _finish(
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
            _finish(session, run, RunState.SUCCEEDED, A.SUCCEEDED, actor, "every step succeeded")
            move = Move(
                TrustState.PENDING_ATTESTATION,
                "remediation_succeeded",
                f"playbook {started.playbook} run {run.id} succeeded; fresh evidence requested "
                f"(nonce {nonce})",
                {**evidence, "nonce": nonce},
            )
        else:
            _finish(session, run, RunState.FAILED, A.FAILED, actor, failure)
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
        _finish(session, run, RunState.FAILED, A.FAILED, actor, failure)
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


def sweep_runs(payload: SweepRunsPayload, ctx: JobContext) -> dict[str, Any]:
    """Expire runs whose approval wait or approval ran out; send queued runs whose job never
    reached the broker; fail started runs whose job was dead-lettered without concluding
    them (the hard time limit kills a task before it can)."""
    now = datetime.now(UTC)
    actor = actor_of(ctx)
    expired: list[str] = []
    with session_scope() as session:
        for run in store.runs_waiting_past(session, now, payload.limit):
            if run.state == RunState.PENDING_APPROVAL.value:
                why = "nobody approved it before its deadline"
            else:
                why = "its approval expired before it started"
            _expire(session, run, actor, why)
            expired.append(str(run.id))
        unsent = [run.id for run in store.unsent_runs(session, now - UNSENT_GRACE, payload.limit)]
        orphaned = [
            run.id
            for run in session.scalars(
                select(RemediationRun)
                .join(Job, Job.id == RemediationRun.job_id)
                .where(
                    RemediationRun.state.in_([RunState.RUNNING.value, RunState.QUEUED.value]),
                    RemediationRun.attempts > 0,
                    Job.status == JobStatus.DEAD_LETTERED.value,
                )
                .limit(payload.limit)
            )
        ]
    sent = [str(run_id) for run_id in unsent if send_run(run_id) is not None]
    failed = [
        str(run_id)
        for run_id in orphaned
        if fail_orphaned_run(run_id, "its job was dead-lettered before it concluded", actor)
    ]
    return {"expired": expired, "sent": sent, "failed": failed}


# -- reading -----------------------------------------------------------------------------------


def run_result(run: RemediationRun, *, repeated: bool = False) -> dict[str, Any]:
    """A run's outcome as a job result (and the API's run summary)."""
    result = {
        "run_id": str(run.id),
        "tenant": run.tenant,
        "asset_id": str(run.asset_id),
        "playbook": run.playbook_name,
        "playbook_version": run.playbook_version,
        "state": run.state,
        "attempts": run.attempts,
        "error": run.error,
        "evidence_nonce": run.evidence_nonce,
    }
    if repeated:
        result["repeated"] = True
    return result


def _iso(moment: datetime | None) -> str | None:
    return None if moment is None else moment.astimezone(UTC).isoformat()


def run_view(run: RemediationRun) -> dict[str, Any]:
    """A run as the CLI and the API show it."""
    return {
        "id": str(run.id),
        "tenant": run.tenant,
        "asset_id": str(run.asset_id),
        "playbook": run.playbook_name,
        "playbook_version": run.playbook_version,
        "state": run.state,
        "reason": run.reason,
        "requested_by": run.requested_by,
        "requested_at": _iso(run.requested_at),
        "approval_reasons": list(run.approval_reasons),
        "approval_deadline": _iso(run.approval_deadline),
        "approved_by": run.approved_by,
        "approved_at": _iso(run.approved_at),
        "approval_expires_at": _iso(run.approval_expires_at),
        "trust_context": run.trust_context,
        "attempts": run.attempts,
        "job_id": str(run.job_id) if run.job_id else None,
        "started_at": _iso(run.started_at),
        "finished_at": _iso(run.finished_at),
        "error": run.error,
        "outputs": run.outputs,
        "evidence_nonce": run.evidence_nonce,
    }


def describe_run(run_id: uuid.UUID, *, tenant: str | None) -> dict[str, Any]:
    """A run with its asset, its audit trail and every step's artifact."""
    with session_scope() as session:
        run = store.get_run(session, run_id, tenant)
        asset = session.get(TrustAsset, run.asset_id)
        view = run_view(run)
        view["asset"] = (
            None
            if asset is None
            else {
                "name": asset.name,
                "kind": asset.kind,
                "state": asset.state,
            }
        )
        view["audit"] = [
            {
                "action": row.action,
                "actor": row.actor,
                "reason": row.reason,
                "detail": row.detail,
                "at": _iso(row.at),
            }
            for row in store.audit_trail(session, run.id)
        ]
        view["artifacts"] = [
            {
                "attempt": row.attempt,
                "step": row.step_index + 1,
                "name": row.step_name,
                "ok": row.ok,
                "timed_out": row.timed_out,
                "exit_code": row.exit_code,
                "error": row.error,
                "stdout": row.stdout,
                "stderr": row.stderr,
                "stdout_bytes": row.stdout_bytes,
                "stderr_bytes": row.stderr_bytes,
                "truncated": row.truncated,
                "outputs": row.outputs,
                "started_at": _iso(row.started_at),
                "finished_at": _iso(row.finished_at),
                "duration_ms": row.duration_ms,
            }
            for row in store.artifacts(session, run.id)
        ]
        return view


def list_run_views(
    *,
    tenant: str | None,
    state: str | None = None,
    asset: str | None = None,
    limit: int = 50,
) -> list[dict[str, Any]]:
    with session_scope() as session:
        asset_id = trust.find_asset(session, asset, tenant).id if asset else None
        return [
            run_view(run)
            for run in store.list_runs(
                session, tenant=tenant, state=state, asset_id=asset_id, limit=limit
            )
        ]


def set_protection(*, tenant: str, asset: str | None, protected: bool, actor: str) -> str:
    """Protect (or unprotect) one asset, or with no asset the whole tenant: remediation there
    then always needs an approval."""
    check_tenant(tenant)
    with session_scope() as session:
        if asset is None:
            policy_store.set_tenant_policy(session, tenant, requires_approval=protected, by=actor)
            return f"tenant {tenant}"
        target = trust.find_asset(session, asset, tenant)
        name = f"{target.tenant}/{target.name}"
        asset_id = target.id

    def plan(session: Session, row: TrustAsset) -> list[Move]:
        row.protected = protected
        return []

    trust.transition(asset_id, plan, actor=actor)
    return f"asset {name}"


def set_connection(*, tenant: str, asset: str, connection: dict[str, Any], actor: str) -> None:
    """Set how playbooks reach an asset (ansible host vars, kubernetes_node, libvirt_domain).
    These are stored and shown: a secret among them (a password) is refused."""
    secret = sorted(name for name in connection if is_secret_name(name))
    if secret:
        raise RemediationRefusedError(
            f"connection variables {', '.join(secret)} look secret: credentials stay with the "
            "workers (an SSH key file, an agent), never in the registry"
        )
    with session_scope() as session:
        asset_id = trust.find_asset(session, asset, tenant).id

    def plan(session: Session, row: TrustAsset) -> list[Move]:
        row.connection = dict(connection)
        return []

    trust.transition(asset_id, plan, actor=actor)

"""The one path every job takes to the broker: validate, admit, record, send.

``drydock.enqueue`` (Python producers), the HTTP API, the CLI, Beat (``dispatch.beat``), the
builds chord (``dispatch.chord``) and follow-up jobs sent by domain code all come through here.
A producer imports this module and nothing of the workers' task code: the payload is validated
against ``catalog``, admitted by ``policy.admission``, the job is recorded in PostgreSQL, and
the message is sent by name. Also here: replaying and purging dead letters.

The Celery app is imported when a message is sent, not when this module is: domain modules
that send follow-up jobs import this one, and must load without Celery.
"""

from __future__ import annotations

import time
import uuid
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

from kombu.exceptions import OperationalError as KombuOperationalError
from pydantic import ValidationError
from redis.exceptions import RedisError
from sqlalchemy.orm import Session

from catalog import TaskSpec, spec_for
from kernel.errors import (
    BrokerUnavailableError,
    DrydockError,
    FieldProblem,
    NotFoundError,
    PayloadInvalidError,
    ReplayRefusedError,
)
from kernel.logs import get_logger
from kernel.redaction import REDACTED, restore_secrets, seal, split_secrets, unseal
from kernel.settings import get_settings
from kernel.storable import NUL_PROBLEM, check_storable
from kernel.topology import ENQUEUED_AT_HEADER
from models import admission_tokens, job_reads
from models import jobs as job_store
from models.db import session_scope
from models.jobs import Job
from policy.admission import admit, unbound

MAX_IDEMPOTENCY_KEY_LENGTH = 200


class IdempotencyConflictError(DrydockError):
    """The key was already used for a different task or payload."""


@dataclass(frozen=True)
class EnqueuedJob:
    id: uuid.UUID
    task_name: str
    queue: str
    status: str
    # False when the idempotency key had been used: this is the first job, and nothing was sent.
    created: bool


@dataclass(frozen=True)
class PreparedJob:
    """A job's payload checked and split, ready to record and send."""

    spec: TaskSpec
    payload: dict[str, Any]
    redacted: dict[str, Any]
    sealed: str | None


def validate_payload(task_name: str, payload: Mapping[str, Any]) -> dict[str, Any]:
    """The payload as it will be sent: the fields given, in their JSON form, or
    PayloadInvalidError. Defaults are left for the worker's own validation to fill in, which
    keeps messages, Flower's events and stored rows small."""
    spec = spec_for(task_name)
    if not isinstance(payload, Mapping):
        raise PayloadInvalidError(task_name, [FieldProblem("(payload)", "must be a JSON object")])
    try:
        model = spec.payload.model_validate(dict(payload))
    except ValidationError as exc:
        raise PayloadInvalidError.from_validation(task_name, exc) from None
    return model.model_dump(mode="json", exclude_unset=True)


def enqueue(
    task_name: str,
    payload: Mapping[str, Any],
    idempotency_key: str | None = None,
    *,
    enqueued_by: str = "python",
    tenant: str | None = None,
    target_asset: str | uuid.UUID | None = None,
    approval_token: str | None = None,
    job_id: uuid.UUID | None = None,
    expires: float | None = None,
) -> EnqueuedJob:
    """Validate, admit, record and send one job. The same idempotency key (or ``job_id``) twice
    returns the first job and sends nothing.

    Raises only its documented errors: ``UnknownTaskError``, ``PayloadInvalidError`` (each bad
    field named, a NUL character included), ``PayloadTooLargeError`` (over
    ``DRYDOCK_MAX_PAYLOAD_BYTES``), ``IdempotencyConflictError``, ``AdmissionRefusedError`` and
    ``BrokerUnavailableError``.

    Admission (``policy.admission``): the job acts for ``tenant`` (else the payload's
    ``tenant`` field, if any) and is bound to ``target_asset`` (an asset id or ``tenant/name``),
    whose quarantine preempts it while it waits; a protected target needs ``approval_token``.
    A refusal raises AdmissionRefusedError and is recorded as a policy decision.

    ``expires``: seconds after which a job that has not started is not run (Beat's upkeep, whose
    next tick sends a fresh one); the worker records it as preempted (``workers.signals``)."""
    _check_key(task_name, idempotency_key)
    _check_text_arguments(
        task_name,
        {"enqueued_by": enqueued_by, "tenant": tenant, "target_asset": target_asset},
    )
    prepared = prepare(task_name, payload)
    named = prepared.payload.get("tenant")
    acting_for = tenant if tenant is not None else named if isinstance(named, str) else None
    job_id = job_id or uuid.uuid4()
    # Most jobs act for no tenant and name no target: their admission is settled without a
    # read, and goes into the job's insert.
    settled = unbound(task_name) if acting_for is None and target_asset is None else None
    with session_scope() as session:
        job, created = job_store.create_job(
            session,
            job_store.NewJob(
                id=job_id,
                task_name=task_name,
                queue=prepared.spec.queue,
                payload=prepared.redacted,
                sealed_secrets=prepared.sealed,
                idempotency_key=idempotency_key,
                enqueued_by=enqueued_by,
                policy_context=settled.context() if settled is not None else None,
            ),
        )
        if not created:
            if job.task_name != task_name or job.payload != prepared.redacted:
                raise IdempotencyConflictError(
                    f"idempotency key {idempotency_key!r} was already used by job {job.id} "
                    f"({job.task_name}) with a different task or payload"
                )
            return _enqueued(job, created=False)
        if settled is None:
            _admit_recorded(
                session, job, tenant=acting_for, target=target_asset, approval_token=approval_token
            )
    _send_or_forget(prepared, job_id, expires)
    get_logger(job_id=str(job_id), task=task_name, queue=prepared.spec.queue).info(
        "job.enqueued", action="enqueued", enqueued_by=enqueued_by, tenant=acting_for
    )
    return EnqueuedJob(job_id, task_name, prepared.spec.queue, "queued", created=True)


def replay_dead_letter(job_id: uuid.UUID, *, by: str) -> EnqueuedJob:
    """Enqueue a new job with the dead job's original payload, and record who replayed it. The
    new job is admitted like any other, for the dead job's tenant and target: a refusal raises
    AdmissionRefusedError (recorded) and leaves the dead letter as it was."""
    if not by.strip():
        raise ReplayRefusedError("say who is replaying (--by NAME)")
    with session_scope() as session:
        letter = job_reads.get_dead_letter(session, job_id, lock=True)
        if letter is None:
            raise NotFoundError(f"no dead letter for job {job_id}")
        if letter.replayed_at is not None:
            raise ReplayRefusedError(
                f"job {job_id} was already replayed by {letter.replayed_by} at "
                f"{letter.replayed_at:%Y-%m-%d %H:%M:%S} as job {letter.replay_job_id}"
            )
        original = job_reads.get_job(session, job_id)
        assert original is not None  # dead_letters.job_id is a foreign key
        payload = _original_payload(original)
        prepared = prepare(original.task_name, payload)
        new_id = uuid.uuid4()
        # Admitted again, for the tenant and target the dead job had: what was allowed then
        # (a target since quarantined, a task since barred) may not be now.
        bound = original.tenant is not None or original.target_asset_id is not None
        replayed, _ = job_store.create_job(
            session,
            job_store.NewJob(
                id=new_id,
                task_name=original.task_name,
                queue=prepared.spec.queue,
                payload=prepared.redacted,
                sealed_secrets=prepared.sealed,
                enqueued_by=f"replay:{by}",
                replay_of=original.id,
                policy_context=None if bound else unbound(original.task_name).context(),
            ),
        )
        if bound:
            _admit_recorded(
                session,
                replayed,
                tenant=original.tenant,
                target=original.target_asset_id,
                approval_token=None,
            )
        job_reads.mark_replayed(session, letter, by=by, replay_job_id=new_id, at=datetime.now(UTC))
    try:
        _send(prepared, new_id)
    except BrokerUnavailableError:
        with session_scope() as session:
            letter = job_reads.get_dead_letter(session, job_id, lock=True)
            if letter is not None:
                letter.replayed_at = letter.replayed_by = letter.replay_job_id = None
            job_store.forget_unsent_job(session, new_id)
        raise
    _remove_parked([job_id])
    return EnqueuedJob(new_id, original.task_name, prepared.spec.queue, "queued", created=True)


def _admit_recorded(
    session: Session,
    job: Job,
    *,
    tenant: str | None,
    target: str | uuid.UUID | None,
    approval_token: str | None,
) -> None:
    """Admit a job just inserted (so the decision names it) and keep the admission on its row;
    AdmissionRefusedError, after recording the refusal, rolls the insert back."""
    admission = admit(
        session,
        task_name=job.task_name,
        tenant=tenant,
        target=target,
        approval_token=approval_token,
        actor=job.enqueued_by or "unknown",
        job_id=job.id,
    )
    job.tenant = tenant
    job.target_asset_id = admission.target_asset_id
    job.policy_context = admission.context()


def purge_dead_letters(
    *, job_ids: Sequence[uuid.UUID] | None = None, older_than: datetime | None = None
) -> int:
    """Delete dead letters (all, the given jobs', or those older than a time) and their parked
    messages. The jobs and their events stay as the record of what happened."""
    with session_scope() as session:
        letters = job_reads.dead_letters_to_purge(session, job_ids=job_ids, older_than=older_than)
        if job_ids is not None:
            missing = set(job_ids) - {letter.job_id for letter in letters}
            if missing:
                raise NotFoundError(
                    "no dead letter for job " + ", ".join(sorted(str(m) for m in missing))
                )
        purged = [letter.job_id for letter in letters]
        job_reads.delete_dead_letters(session, letters)
    _remove_parked(purged)
    return len(purged)


def prepare(task_name: str, payload: Mapping[str, Any]) -> PreparedJob:
    spec = spec_for(task_name)
    normalized = validate_payload(task_name, payload)
    settings = get_settings()
    check_storable(task_name, normalized, limit_bytes=settings.max_payload_bytes)
    redacted, secrets = split_secrets(normalized, settings.extra_secret_fields)
    sealed = None
    if secrets and settings.secret_key is not None:
        sealed = seal(secrets, settings.secret_key.get_secret_value())
    return PreparedJob(spec, normalized, redacted, sealed)


def celery_app() -> Any:
    # Here, not at the top: see the module's docstring.
    from workers.app import app

    return app


def _remove_parked(job_ids: Sequence[uuid.UUID]) -> None:
    from workers import dead_letter

    dead_letter.remove_parked(celery_app(), job_ids)


def message_options(prepared: PreparedJob, job_id: uuid.UUID) -> dict[str, Any]:
    """How a recorded job's message is sent: its id, queue, redacted reprs and enqueue time."""
    return {
        "kwargs": prepared.payload,
        "task_id": str(job_id),
        "queue": prepared.spec.queue,
        "routing_key": prepared.spec.queue,
        # What Flower and Celery's own logs show instead of the real arguments.
        "kwargsrepr": repr(prepared.redacted),
        "argsrepr": "()",
        "headers": {ENQUEUED_AT_HEADER: time.time()},
        # The worker that runs the job applies its own queue's time limits. Without these, a
        # sender that has the task registered (any worker sending a follow-up job or a chord)
        # would stamp its own limits on the message, and Celery obeys the message's.
        "time_limit": None,
        "soft_time_limit": None,
    }


def broker_unavailable(what: str, exc: BaseException) -> BrokerUnavailableError:
    return BrokerUnavailableError(
        f"could not send {what} to the broker ({exc}); nothing was recorded, "
        "enqueue it again once Redis is reachable"
    )


# What a send raises when the broker cannot be reached.
BROKER_ERRORS = (KombuOperationalError, RedisError, OSError)


def _send(prepared: PreparedJob, job_id: uuid.UUID, expires: float | None = None) -> None:
    app = celery_app()
    options = message_options(prepared, job_id)
    if expires is not None:
        options["expires"] = expires
    try:
        app.send_task(prepared.spec.name, **options)
    except BROKER_ERRORS as exc:
        raise broker_unavailable(prepared.spec.name, exc) from None


def _send_or_forget(prepared: PreparedJob, job_id: uuid.UUID, expires: float | None) -> None:
    try:
        _send(prepared, job_id, expires)
    except BrokerUnavailableError:
        with session_scope() as session:
            # The approval token it used (if any) admits another try.
            admission_tokens.release_use(session, job_id)
            job_store.forget_unsent_job(session, job_id)
        raise


def _original_payload(job: Job) -> dict[str, Any]:
    if job.sealed_secrets:
        key = get_settings().secret_key
        if key is None:
            raise ReplayRefusedError(
                f"job {job.id} has sealed secrets and DRYDOCK_SECRET_KEY is not set"
            )
        return dict(
            restore_secrets(job.payload, unseal(job.sealed_secrets, key.get_secret_value()))
        )
    _, lost = split_secrets(job.payload, get_settings().extra_secret_fields)
    if any(value == REDACTED for value in lost.values()):
        raise ReplayRefusedError(
            f"job {job.id} had secret fields ({', '.join(sorted(lost))}) that were not kept "
            "because no DRYDOCK_SECRET_KEY was set when it was enqueued; enqueue it again with "
            "its secrets"
        )
    return dict(job.payload)


def _check_key(task_name: str, key: str | None) -> None:
    if key is None:
        return
    if not isinstance(key, str):
        raise PayloadInvalidError(
            task_name,
            [FieldProblem("idempotency_key", f"must be a string, not {type(key).__name__}")],
        )
    if "\x00" in key:
        raise PayloadInvalidError(task_name, [FieldProblem("idempotency_key", NUL_PROBLEM)])
    if not key.strip() or len(key) > MAX_IDEMPOTENCY_KEY_LENGTH:
        raise PayloadInvalidError(
            task_name,
            [
                FieldProblem(
                    "idempotency_key", f"must be 1 to {MAX_IDEMPOTENCY_KEY_LENGTH} characters"
                )
            ],
        )


def _check_text_arguments(task_name: str, arguments: Mapping[str, object]) -> None:
    """The job's own fields (who, for whom, on what) are stored as text: a NUL character in one
    would fail the insert with a database error instead of naming it."""
    problems = []
    for name, value in arguments.items():
        if value is None or (name == "target_asset" and isinstance(value, uuid.UUID)):
            continue
        if not isinstance(value, str):
            problems.append(FieldProblem(name, f"must be a string, not {type(value).__name__}"))
        elif "\x00" in value:
            problems.append(FieldProblem(name, NUL_PROBLEM))
    if problems:
        raise PayloadInvalidError(task_name, problems)


def _enqueued(job: Job, *, created: bool) -> EnqueuedJob:
    return EnqueuedJob(job.id, job.task_name, job.queue, job.status, created=created)

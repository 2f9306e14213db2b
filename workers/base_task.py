"""The base every Drydock task uses: validation, attempts, retries, dead letters and events.

A task is a plain handler ``(payload, ctx) -> result`` registered with ``@drydock_task(name)``.
For each delivery of its message the base task:

1. records the attempt (``started`` event, queue wait, worker identity), or, when the job already
   has an outcome (a redelivered message), returns that outcome and writes nothing;
2. validates the keyword arguments with the payload model from ``catalog``; an invalid
   payload is dead-lettered at once, with zero retries and a message naming each bad field;
3. runs the handler; on success records the result (redacted);
4. on an error the task declared transient, asks ``workers.retry.decide`` and either schedules
   the next attempt with backoff (``retry`` event) or, with the budget spent, dead-letters the job;
   any other error is dead-lettered at once (it would fail the same way again).

Every transition is one ``job_events`` row and one JSON log line.
"""

from __future__ import annotations

import os
import time
import traceback
import uuid
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any

import orjson
import psycopg
from celery import Task
from celery.backends.redis import RedisBackend
from celery.exceptions import Reject, Retry, SoftTimeLimitExceeded, TimeLimitExceeded
from pydantic import ValidationError
from sqlalchemy.exc import OperationalError

from catalog import spec_for
from kernel.context import JobContext, WorkerIdentity
from kernel.errors import DeadLetteredError, PayloadInvalidError
from kernel.logs import get_logger
from kernel.payload import Payload
from kernel.redaction import redact, scrub_text, secret_strings, split_secrets
from kernel.settings import get_settings
from kernel.topology import ENQUEUED_AT_HEADER
from models import job_reads
from models import jobs as job_store
from models.db import session_scope
from workers import dead_letter
from workers.app import app
from workers.retry import RetryPolicy, Verdict, backoff_seconds, decide

# The Celery state of a job that reported progress: ``AsyncResult(job_id).state`` while it runs,
# with ``.info`` the reported ``percent``, ``message`` and detail (redacted), ``job_id`` and
# ``attempt``, for a service holding the id to read live; ``drydock job ID --follow`` reads the
# ``progress`` events in PostgreSQL instead, which are the record.
PROGRESS_STATE = "PROGRESS"


class ProgressStateBackend(RedisBackend):
    """Celery's Redis result backend, carrying PROGRESS states and chord bookkeeping only.

    Outcomes live in PostgreSQL: tasks ignore their results, so success and failure are not
    written here, except for the members of a chord (``drydock_task(chord_member=True)``),
    whose empty results Celery counts to start the chord's callback.

    Stock, every ``send_task`` would still SUBSCRIBE to the job's result channel (and
    UNSUBSCRIBE when its AsyncResult is dropped), two Redis commands per enqueue for a result
    that never comes. Nothing waits on a Celery result in Drydock, so producers subscribe to
    nothing; reading a state (``AsyncResult(id).state``) works as usual.
    """

    def on_task_call(self, producer: Any, task_id: str) -> None:
        return None

    def add_pending_result(
        self, result: Any, weak: bool = False, start_drainer: bool = True
    ) -> Any:
        # Sending a chord builds a GroupResult of its members, which would subscribe to each
        # member's result channel in the sending process (a build's worker) and keep them, and
        # the results, for the life of that process. Nothing waits on a Celery result here.
        return result


@dataclass
class WorkerJobContext(JobContext):
    """The context a worker hands its handler: progress is a ``progress`` event (shown by
    ``drydock job ID``, followed live by ``--follow``) and the task's Celery state ``PROGRESS``.

    The event is the record: if it cannot be written the error propagates, like any other
    write to the outcome store. The Celery state is a live view: failing to set it (Redis
    unreachable) is logged and the job carries on.
    """

    # The running task and its Celery id: progress is also set as the task's PROGRESS state.
    # None (a context made outside a worker): progress is recorded as events only.
    _task: DrydockTask | None = field(default=None, repr=False)
    _task_id: str | None = field(default=None, repr=False)
    _state_set: bool = field(default=False, repr=False)

    def _report(self, data: dict[str, Any]) -> None:
        with session_scope() as session:
            job_store.record_progress(session, self.job_id, self.attempt, self.who, data)
        if self._task is not None and self._task_id is not None:
            meta = {**data, "job_id": str(self.job_id), "attempt": self.attempt}
            # Set before trying: a state written by a call that then failed is still cleared.
            self._state_set = True
            try:
                self._task.update_state(task_id=self._task_id, state=PROGRESS_STATE, meta=meta)
            except Exception as exc:
                self._state_failed("set", exc)

    def end_attempt(self) -> None:
        """The handler returned or raised: drop the PROGRESS state it set, which no longer
        describes the job (it is about to succeed, retry or be dead-lettered). Jobs that never
        reported progress touch nothing here. Errors are logged, never raised."""
        if not self._state_set or self._task is None or self._task_id is None:
            return
        self._state_set = False
        try:
            self._task.backend.forget(self._task_id)
        except Exception as exc:
            self._state_failed("clear", exc)

    def _state_failed(self, what: str, exc: Exception) -> None:
        self._logger().warning(
            "job.progress_state_failed",
            action="progress",
            state_operation=what,
            error=f"{type(exc).__name__}: {exc}"[:300],
        )


Handler = Callable[[Any, JobContext], Any]
# Told when a retry of the job is scheduled: (the error, the job, seconds until the retry).
RetryListener = Callable[[BaseException, JobContext, float], None]
# Told when the job was dead-lettered after its handler failed: (the error, the job, reason).
DeadLetterListener = Callable[[BaseException, JobContext, str], None]


class DrydockTask(Task[..., Any]):
    acks_late = True
    reject_on_worker_lost = True
    # Retries are decided by workers.retry within the settings' budget, not by Celery's counter.
    max_retries = None
    ignore_result = True
    typing = False

    payload_model: type[Payload]
    transient: tuple[type[BaseException], ...] = ()
    handler: Handler
    on_retry_scheduled: RetryListener | None = None
    on_dead_lettered: DeadLetterListener | None = None
    # The job's own attempt budget, read from its arguments (a workflow step's retries); None
    # or absent: the settings' DRYDOCK_RETRY_MAX_ATTEMPTS.
    attempt_budget: Callable[[Mapping[str, Any]], int | None] | None = None

    def execute(self, kwargs: dict[str, Any]) -> Any:
        try:
            return self._execute(kwargs)
        except (OperationalError, psycopg.OperationalError) as exc:
            # The outcome store is unreachable: nothing about this attempt can be recorded, and a
            # failed task would be acknowledged and lost. Hand the message back with backoff.
            settings = get_settings()
            delay = backoff_seconds(
                min(self.request.retries + 1, 20),
                RetryPolicy(1, settings.retry_base_seconds, settings.retry_max_seconds),
            )
            get_logger(job_id=self.request.id, task=self.name).error(
                "job.store_unavailable",
                action="requeue",
                error=str(getattr(exc, "orig", None) or exc)[:300],
                delay_seconds=round(delay, 3),
            )
            raise self._retry_or_requeue(
                countdown=delay,
                exc=None,
                kwargsrepr=repr(redact(kwargs, settings.extra_secret_fields)),
            ) from None

    def _execute(self, kwargs: dict[str, Any]) -> Any:
        settings = get_settings()
        extra = tuple(settings.extra_secret_fields)
        job_id = job_uuid(self.request.id or "")
        redacted, secrets = split_secrets(kwargs, extra)
        scrub_values = secret_strings(secrets)
        delivery = self.request.delivery_info or {}
        who = WorkerIdentity(
            hostname=self.request.hostname or "unknown",
            pid=os.getpid(),
            queue=delivery.get("routing_key") or spec_for(self.name).queue,
        )
        log = get_logger(
            job_id=str(job_id), task=self.name, worker=who.hostname, pid=who.pid, queue=who.queue
        )

        start = job_store.start_attempt(
            job_id,
            task_name=self.name,
            payload=redacted,
            who=who,
            queue_wait_ms=self._queue_wait_ms(),
        )
        if isinstance(start, job_store.AlreadyFinished):
            # A redelivery of a job that already has its outcome: nothing to do, nothing to add.
            log.info("job.redelivered_after_outcome", action="skip", status=start.status)
            return None
        attempt = start.attempt
        log = log.bind(attempt=attempt)
        log.info("job.started", action="started")
        started = time.monotonic()
        budget = self.attempt_budget(kwargs) if self.attempt_budget is not None else None
        policy = RetryPolicy(
            budget or settings.retry_max_attempts,
            settings.retry_base_seconds,
            settings.retry_max_seconds,
        )

        def dead_letter_job(error: BaseException, reason: str, tb: str | None) -> DeadLetteredError:
            message = scrub_text(str(error), scrub_values)
            error_class = type(error).__name__
            dead_letter_now(
                self.name,
                job_id,
                attempt,
                who,
                error_class=error_class,
                message=message,
                traceback=scrub_text(tb, scrub_values) if tb else None,
                reason=reason,
                latency_ms=_ms_since(started),
                log=log,
            )
            return DeadLetteredError(f"{reason}: {error_class}: {message}")

        if attempt > policy.max_attempts:
            # More deliveries than the budget allows can only come from workers dying mid-job
            # (reject_on_worker_lost requeues them). Stop the loop: this job kills its worker.
            lost = RuntimeError(
                f"delivered {attempt} times without finishing: the worker running it was lost "
                "each time (killed, out of memory, or the hard time limit)"
            )
            raise dead_letter_job(lost, "worker_lost", None) from None

        try:
            payload = self.payload_model.model_validate(kwargs)
        except ValidationError as exc:
            invalid = PayloadInvalidError.from_validation(self.name, exc)
            raise dead_letter_job(invalid, "invalid_payload", None) from None

        ctx = WorkerJobContext(
            job_id=job_id,
            attempt=attempt,
            who=who,
            secret_names=extra,
            _log=log,
            _task=self,
            _task_id=self.request.id,
        )
        try:
            try:
                result = self.handler(payload, ctx)
            finally:
                # Before the outcome or the retry is recorded: the next attempt's state is its own.
                ctx.end_attempt()
        except Retry:
            raise
        except SoftTimeLimitExceeded as exc:
            limit = self.soft_time_limit
            timeout = TimeoutError(f"exceeded the time limit of {limit}s for this queue")
            failure = dead_letter_job(timeout, "time_limit", _format_tb(exc))
            self._tell_listener(self.on_dead_lettered, log, timeout, ctx, "time_limit")
            raise failure from None
        except Exception as exc:
            decision = decide(exc, attempt, self.transient, policy)
            if decision.verdict is Verdict.RETRY:
                message = scrub_text(str(exc), scrub_values)
                with session_scope() as session:
                    job_store.record_retry(
                        session,
                        job_id,
                        attempt,
                        who,
                        error_class=type(exc).__name__,
                        message=message,
                        delay_seconds=decision.delay_seconds,
                        latency_ms=_ms_since(started),
                    )
                log.warning(
                    "job.retry",
                    action="retry",
                    error_class=type(exc).__name__,
                    error=message,
                    delay_seconds=round(decision.delay_seconds, 3),
                )
                self._tell_listener(self.on_retry_scheduled, log, exc, ctx, decision.delay_seconds)
                # The retried message carries the same kwargs; Flower is shown a redacted repr.
                raise self._retry_or_requeue(
                    countdown=decision.delay_seconds,
                    exc=DeadLetteredError(f"{type(exc).__name__}: {message}"),
                    kwargsrepr=repr(redacted),
                ) from None
            reason = (
                "retry_budget_exhausted"
                if decision.verdict is Verdict.BUDGET_EXHAUSTED
                else "permanent_error"
            )
            failure = dead_letter_job(exc, reason, _format_tb(exc))
            self._tell_listener(self.on_dead_lettered, log, exc, ctx, reason)
            raise failure from None

        try:
            stored = orjson.dumps(redact(_jsonable(result), extra), option=orjson.OPT_NON_STR_KEYS)
        except TypeError as exc:
            bad = TypeError(f"the task returned a result that is not JSON: {exc}")
            raise dead_letter_job(bad, "invalid_result", _format_tb(exc)) from None
        recorded = job_store.record_success(
            job_id, attempt, who, result_json=stored.decode(), latency_ms=_ms_since(started)
        )
        log.info(
            "job.succeeded" if recorded else "job.outcome_already_recorded",
            action="succeeded",
            duration_ms=round(_ms_since(started), 1),
        )
        return None

    def on_failure(self, exc: Exception, task_id: str, args: Any, kwargs: Any, einfo: Any) -> None:
        """Celery calls this in the worker's main process when it kills a pool process at the
        hard time limit; the task's own code never ran its error handling then, so the job is
        dead-lettered here. (Every other failure was already recorded by the task itself.)"""
        if not isinstance(exc, TimeLimitExceeded):
            return
        job_id = job_uuid(task_id)
        with session_scope() as session:
            job = job_reads.get_job(session, job_id)
            if job is None:
                return
            who = WorkerIdentity(job.worker or "unknown", job.worker_pid or 0, job.queue)
            attempt = job.attempts
        limit = exc.args[0] if exc.args else self.time_limit
        dead_letter_now(
            self.name,
            job_id,
            attempt,
            who,
            error_class="TimeLimitExceeded",
            message=f"killed at the hard time limit of {limit}s: it ignored the soft limit",
            traceback=None,
            reason="time_limit",
            latency_ms=None,
            log=get_logger(
                job_id=str(job_id),
                task=self.name,
                worker=who.hostname,
                pid=who.pid,
                queue=who.queue,
                attempt=attempt,
            ),
        )

    @staticmethod
    def _tell_listener(listener: Callable[..., None] | None, log: Any, *args: Any) -> None:
        """The task's own record of a retry or dead letter (registry telemetry, a dependent job
        failed with it). The retry or dead letter itself is already recorded; a listener that
        fails is logged and must not stop it."""
        if listener is None:
            return
        try:
            listener(*args)
        except Exception as listener_error:
            log.error(
                "job.listener_failed",
                action="listener",
                error=f"{type(listener_error).__name__}: {listener_error}"[:300],
            )

    def _retry_or_requeue(
        self, *, countdown: float, exc: Exception | None, kwargsrepr: str
    ) -> BaseException:
        """Schedule the next attempt. If the retry message cannot be published (the broker is
        failing), reject the delivery back to the queue instead: a failed task would be
        acknowledged, and the job lost."""
        # Celery passes kwargsrepr/argsrepr on to apply_async; its stubs do not know that.
        schedule: Any = self.retry
        try:
            scheduled: BaseException = schedule(
                countdown=countdown, exc=exc, kwargsrepr=kwargsrepr, argsrepr="()"
            )
            return scheduled
        except Retry as raised:
            return raised
        except Exception as publish_error:
            get_logger(job_id=self.request.id, task=self.name).error(
                "job.retry_publish_failed",
                action="requeue",
                error=f"{type(publish_error).__name__}: {publish_error}"[:300],
            )
            return Reject(publish_error, requeue=True)

    def _queue_wait_ms(self) -> float | None:
        """How long the message waited: since enqueue, or since its retry was due."""
        eta = self.request.eta
        if eta:
            due = datetime.fromisoformat(str(eta)).timestamp()
        else:
            headers = self.request.headers or {}
            raw = headers.get(ENQUEUED_AT_HEADER) or getattr(self.request, ENQUEUED_AT_HEADER, None)
            if raw is None:
                return None
            due = float(raw)
        return max(0.0, (time.time() - due) * 1000)


def dead_letter_now(
    task_name: str,
    job_id: uuid.UUID,
    attempt: int,
    who: WorkerIdentity,
    *,
    error_class: str,
    message: str,
    traceback: str | None,
    reason: str,
    latency_ms: float | None,
    log: Any,
) -> bool:
    """Fail the job for good: its rows (``failed``, ``dead_lettered``, ``dead_letters``), its
    parked message on the ``dead_letter`` queue, and a log line each. Message and traceback must
    already be scrubbed of secrets. False when the job already had an outcome."""
    with session_scope() as session:
        letter = job_store.record_dead_letter(
            session,
            job_id,
            attempt,
            who,
            error_class=error_class,
            message=message,
            traceback=traceback,
            reason=reason,
            latency_ms=latency_ms,
        )
        parked = (
            None
            if letter is None
            else dead_letter.parked_body(
                job_id,
                task_name=task_name,
                queue=who.queue,
                error_class=error_class,
                message=message,
                reason=reason,
                attempts=attempt,
                payload=letter.payload,
            )
        )
    if parked is None:
        return False
    dead_letter.park(app, job_id, parked)
    log.error("job.failed", action="failed", reason=reason, error_class=error_class, error=message)
    log.error("job.dead_lettered", action="dead_lettered", reason=reason)
    return True


def drydock_task(
    name: str,
    *,
    transient: tuple[type[BaseException], ...] = (),
    on_retry_scheduled: RetryListener | None = None,
    on_dead_lettered: DeadLetterListener | None = None,
    chord_member: bool = False,
    attempt_budget: Callable[[Mapping[str, Any]], int | None] | None = None,
) -> Callable[[Handler], DrydockTask]:
    """Register ``handler`` as the Celery task ``name`` (which must be in ``catalog``).

    ``chord_member``: the task runs in the header of a Celery chord, which counts finished
    members through the result backend, so its (empty) result is stored there; every other
    task ignores its result, the outcome being in PostgreSQL.
    """
    spec = spec_for(name)
    soft_limit, hard_limit = get_settings().time_limits_for(spec.queue)

    def register(handler: Handler) -> DrydockTask:
        def run(self: DrydockTask, /, **kwargs: Any) -> Any:
            return self.execute(kwargs)

        task: DrydockTask = app.task(
            name=name,
            base=DrydockTask,
            bind=True,
            payload_model=spec.payload,
            transient=tuple(transient),
            handler=staticmethod(handler),
            on_retry_scheduled=(
                staticmethod(on_retry_scheduled) if on_retry_scheduled is not None else None
            ),
            on_dead_lettered=(
                staticmethod(on_dead_lettered) if on_dead_lettered is not None else None
            ),
            attempt_budget=staticmethod(attempt_budget) if attempt_budget is not None else None,
            ignore_result=not chord_member,
            time_limit=hard_limit,
            soft_time_limit=soft_limit,
        )(run)
        return task

    return register


# Ids of jobs whose producer chose a task id that is not a UUID are derived from it in this
# namespace: the same message always maps to the same job.
FOREIGN_ID_NAMESPACE = uuid.UUID("5b0e8a4e-6c4f-4d8e-9a55-8f2b1c9d7e31")


def job_uuid(task_id: str) -> uuid.UUID:
    """The job id of a Celery task id: itself when it is a UUID (every ``enqueue``), else a
    stable UUID derived from it (producers speaking Celery's protocol with ids of their own)."""
    try:
        return uuid.UUID(task_id)
    except ValueError:
        return uuid.uuid5(FOREIGN_ID_NAMESPACE, task_id)


def _ms_since(start: float) -> float:
    return (time.monotonic() - start) * 1000


def _format_tb(exc: BaseException) -> str:
    return "".join(traceback.format_exception(type(exc), exc, exc.__traceback__))


def _jsonable(value: Any) -> Any:
    if isinstance(value, Payload):
        return value.model_dump(mode="json")
    return value

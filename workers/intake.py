"""The worker's intake: every message taken from a queue is either run or dead-lettered.

Stock Celery logs and acknowledges a message it cannot run (an unknown task, a refused content
type, a body it cannot decode), so the job vanishes with no row; a body of the wrong shape (a
JSON string instead of ``[args, kwargs, embed]``) raises inside the consumer and kills the
worker, and the message, given back, kills the next one. Producers in other languages write to
Redis directly, so the fleet must hold for any input.

``GuardedConsumer`` (Celery's ``worker_consumer``) checks each message before Celery's own
handling (``refusal_for``: cheap checks on what Celery decodes anyway) and dead-letters one that
cannot be run on its first delivery, with the reason, the queue, the raw body (capped,
redacted) and the id it carried; it is never retried. Anything Celery itself still refuses, or
raises on, goes the same way. The message is acknowledged only once its dead letter is
recorded: with the outcome store down it is held and the record retried, never dropped.
"""

from __future__ import annotations

import os
import uuid
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any

from celery.worker.consumer import Consumer

from kernel.context import WorkerIdentity
from kernel.errors import list_problems
from kernel.logs import get_logger
from kernel.redaction import redact, redact_text, seal, split_secrets
from kernel.settings import get_settings
from kernel.storable import nul_problems
from workers.broker import RAW_KEEP_BYTES, UNREADABLE_HEADER, UNREADABLE_RAW_HEADER, capped_text

# Dead-letter reasons of refused messages (beside the base task's own).
UNREADABLE = "unreadable_message"
UNKNOWN_TASK = "unknown_task"
INVALID_PAYLOAD = "invalid_payload"
TOO_LARGE = "payload_too_large"

# How much of a refused body the dead letter keeps.
RAW_BODY_KEEP_BYTES = RAW_KEEP_BYTES
ACCEPTED_CONTENT_TYPES = frozenset({"application/json"})
# Ids of refused messages that carried no id of their own: from their delivery tag, so a
# redelivery of the same message maps to the same job.
DELIVERY_TAG_NAMESPACE = uuid.UUID("0c6f5a52-8f7e-4b61-a1c9-5d0f4f3e2b17")
# Holding a refused message while the store is down: first retry after this, doubling to the cap.
RECORD_RETRY_FIRST_SECONDS = 1.0
RECORD_RETRY_MAX_SECONDS = 30.0


@dataclass(frozen=True)
class Refusal:
    reason: str
    error_class: str
    problem: str


def refusal_for(message: Any, tasks: Mapping[str, Any], *, limit_bytes: int) -> Refusal | None:
    """Why ``message`` cannot be run, or None. Reads only what Celery decodes in any case."""
    headers = message.headers
    if isinstance(headers, dict) and UNREADABLE_HEADER in headers:
        return Refusal(UNREADABLE, "UnreadableMessage", str(headers[UNREADABLE_HEADER]))
    if not isinstance(headers, dict) or "task" not in headers:
        return Refusal(
            UNREADABLE,
            "UnreadableMessage",
            "the message has no 'task' header: Drydock reads Celery's message protocol 2",
        )
    name = headers["task"]
    if not isinstance(name, str) or not name:
        return Refusal(UNREADABLE, "UnreadableMessage", "the message's 'task' header is not a name")
    if not isinstance(headers.get("id"), str) or not headers["id"]:
        return Refusal(UNREADABLE, "UnreadableMessage", "the message has no 'id' header string")
    task = tasks.get(name)
    if task is None:
        return Refusal(UNKNOWN_TASK, "UnknownTaskError", f"unknown task {_shown(name)!r}")
    header_problem = _header_problem(headers)
    if header_problem is not None:
        return Refusal(UNREADABLE, "UnreadableMessage", header_problem)
    content_type = message.content_type
    if content_type not in ACCEPTED_CONTENT_TYPES:
        return Refusal(
            UNREADABLE,
            "ContentDisallowed",
            f"content type {_shown(str(content_type))!r} is refused: Drydock accepts JSON only",
        )
    body = message.body
    if len(body) > limit_bytes:
        return Refusal(
            TOO_LARGE,
            "PayloadTooLargeError",
            f"the message body is {len(body)} bytes, over the limit of {limit_bytes} bytes "
            "(DRYDOCK_MAX_PAYLOAD_BYTES)",
        )
    try:
        decoded = message.decode()  # cached on the message: Celery's request reads this copy
    except Exception as exc:
        return Refusal(UNREADABLE, "UnreadableMessage", f"the body is not valid JSON ({exc})"[:500])
    if not isinstance(decoded, list | tuple) or len(decoded) != 3:
        return Refusal(
            UNREADABLE,
            "UnreadableMessage",
            "the body is not Celery's [args, kwargs, embed] array",
        )
    args, kwargs, embed = decoded
    if not isinstance(args, list | tuple):
        return Refusal(INVALID_PAYLOAD, "PayloadInvalidError", "the body's args are not an array")
    if not isinstance(kwargs, dict):
        return Refusal(
            INVALID_PAYLOAD,
            "PayloadInvalidError",
            "the payload (the body's kwargs) is not a JSON object",
        )
    if embed is not None and not isinstance(embed, dict):
        return Refusal(UNREADABLE, "UnreadableMessage", "the body's embed is not an object")
    if args and getattr(task, "payload_model", None) is not None:
        return Refusal(
            INVALID_PAYLOAD,
            "PayloadInvalidError",
            f"{name} takes its payload as keyword arguments only; the message has "
            f"{len(args)} positional argument(s)",
        )
    raw = body if isinstance(body, bytes) else str(body).encode()
    if b"\\u0000" in raw or b"\x00" in raw:
        problems = nul_problems(kwargs) + nul_problems(args, whole="(args)")
        if problems:
            listed = list_problems(problems)
            return Refusal(INVALID_PAYLOAD, "PayloadInvalidError", f"invalid payload: {listed}")
    return None


def _header_problem(headers: Mapping[str, Any]) -> str | None:
    """Headers Celery's request reads in the worker's main process, of the wrong type."""
    for name in ("eta", "expires", "root_id", "parent_id", "group", "shadow"):
        value = headers.get(name)
        if value is not None and not isinstance(value, str):
            return f"the message's {name!r} header is not a string"
    retries = headers.get("retries", 0)
    if retries is not None and (isinstance(retries, bool) or not isinstance(retries, int)):
        return "the message's 'retries' header is not an integer"
    limits = headers.get("timelimit")
    if limits is not None and (
        not isinstance(limits, list | tuple)
        or len(limits) != 2
        or not all(v is None or (isinstance(v, int | float) and v > 0) for v in limits)
    ):
        return "the message's 'timelimit' header is not [soft, hard] seconds"
    return None


class GuardedConsumer(Consumer):
    """Celery's consumer, dead-lettering every message it cannot run (see the module)."""

    def create_task_handler(self) -> Callable[[Any], Any]:  # type: ignore[override]
        celery_handler = super().create_task_handler()
        tasks = self.app.tasks
        limit = get_settings().max_payload_bytes
        extra_secrets = tuple(get_settings().extra_secret_fields)
        connection_errors: tuple[type[BaseException], ...] = tuple(
            getattr(self, "connection_errors", ())
        )

        def on_task_received(message: Any) -> Any:
            try:
                refusal = refusal_for(message, tasks, limit_bytes=limit)
            except Exception as exc:  # a check that raises is a message that cannot be read
                refusal = Refusal(UNREADABLE, "UnreadableMessage", _error_text(exc))
            if refusal is not None:
                return self.refuse(message, refusal)
            if message.headers.get("kwargsrepr") is None:
                # A producer that skipped enqueue sent no redacted repr: Celery would show the
                # real arguments, secrets and all, in Flower's events and its own logs.
                message.headers["kwargsrepr"] = repr(redact(message.decode()[1], extra_secrets))
                message.headers["argsrepr"] = "()"
            try:
                return celery_handler(message)
            except connection_errors:
                raise  # the broker is gone: the consumer reconnects, the message comes back
            except Exception as exc:
                # Celery could not turn it into a request (a header it could not parse, say).
                return self.refuse(
                    message, Refusal(UNREADABLE, type(exc).__name__, _error_text(exc))
                )

        return on_task_received

    # Celery's own refusals, should a message pass the checks above and still be refused.
    def on_unknown_message(self, body: Any, message: Any) -> None:
        self.refuse(message, Refusal(UNREADABLE, "UnreadableMessage", "not a task message"))

    def on_unknown_task(self, body: Any, message: Any, exc: BaseException) -> None:
        name = (message.headers or {}).get("task") if isinstance(message.headers, dict) else None
        self.refuse(message, Refusal(UNKNOWN_TASK, "UnknownTaskError", f"unknown task {name!r}"))

    def on_invalid_task(self, body: Any, message: Any, exc: BaseException) -> None:
        self.refuse(message, Refusal(UNREADABLE, type(exc).__name__, _error_text(exc)))

    def on_decode_error(self, message: Any, exc: BaseException) -> None:
        self.refuse(message, Refusal(UNREADABLE, type(exc).__name__, _error_text(exc)))

    def refuse(self, message: Any, refusal: Refusal, *, delay: float = 0.0) -> None:
        """Record the dead letter, then acknowledge the message; if the record cannot be made
        (the store is down), hold the message and try again later."""
        try:
            dead_letter_refused(message, refusal, hostname=self.hostname)
        except Exception as exc:
            delay = min(RECORD_RETRY_MAX_SECONDS, max(RECORD_RETRY_FIRST_SECONDS, delay * 2))
            get_logger().error(
                "job.refusal_not_recorded",
                action="hold",
                reason=refusal.reason,
                error=_error_text(exc),
                retry_in_seconds=delay,
            )
            self.timer.call_after(delay, self.refuse, (message, refusal), {"delay": delay})
            return
        if not message.acknowledged:
            message.ack()


def dead_letter_refused(message: Any, refusal: Refusal, *, hostname: str) -> None:
    """The refused message's dead letter (rows, the parked DLQ message, log lines)."""
    from models import jobs as job_store
    from models.db import session_scope
    from workers import dead_letter
    from workers.app import app
    from workers.base_task import job_uuid

    settings = get_settings()
    headers = message.headers if isinstance(message.headers, dict) else {}
    delivery = message.delivery_info or {}
    queue = _stored(str(delivery.get("routing_key") or "unknown"), 50)
    carried_id = headers.get("id") if isinstance(headers.get("id"), str) else None
    job_id = (
        job_uuid(carried_id)
        if carried_id
        else uuid.uuid5(DELIVERY_TAG_NAMESPACE, str(message.delivery_tag))
    )
    name = headers.get("task")
    task_name = _stored(name, 200) if isinstance(name, str) and name else "(unreadable)"
    payload, sealed = _storable_payload(message, refusal, settings.extra_secret_fields)
    problem = _stored(redact_text(refusal.problem, settings.extra_secret_fields), 2000)
    who = WorkerIdentity(hostname=hostname, pid=os.getpid(), queue=queue)
    with session_scope() as session:
        letter = job_store.record_refused_message(
            session,
            job_store.RefusedMessage(
                job_id=job_id,
                task_name=task_name,
                queue=queue,
                payload=payload,
                sealed_secrets=sealed,
                error_class=refusal.error_class,
                message=problem,
                reason=refusal.reason,
                raw_body=_raw_body(message, headers, settings.extra_secret_fields),
                message_id=_stored(carried_id, 200) if carried_id else None,
            ),
            who,
        )
        parked = None
        if letter is not None:
            parked = dead_letter.parked_body(
                job_id,
                task_name=letter.task_name,
                queue=letter.queue,
                error_class=refusal.error_class,
                message=problem,
                reason=refusal.reason,
                attempts=0,
                payload=letter.payload,
            )
    log = get_logger(job_id=str(job_id), task=task_name, queue=queue, worker=hostname)
    if parked is None:
        log.info("job.refused_again", action="skip", reason=refusal.reason)
        return
    dead_letter.park(app, job_id, parked)
    log.error(
        "job.refused",
        action="dead_lettered",
        reason=refusal.reason,
        error_class=refusal.error_class,
        error=problem,
        message_id=carried_id,
    )


def _storable_payload(
    message: Any, refusal: Refusal, extra: list[str]
) -> tuple[dict[str, Any], str | None]:
    """The payload to keep on the job row (redacted; secrets sealed for a replay): the
    message's kwargs when they could be read and stored, else nothing."""
    if refusal.reason not in (UNKNOWN_TASK, INVALID_PAYLOAD) or UNREADABLE_HEADER in (
        message.headers or {}
    ):
        return {}, None
    try:
        decoded = message.decode()
    except Exception:
        return {}, None
    kwargs = decoded[1] if isinstance(decoded, list | tuple) and len(decoded) == 3 else None
    if not isinstance(kwargs, dict) or nul_problems(kwargs):
        return {}, None
    redacted, secrets = split_secrets(kwargs, extra)
    key = get_settings().secret_key
    sealed = seal(secrets, key.get_secret_value()) if secrets and key is not None else None
    return redacted, sealed


def _raw_body(message: Any, headers: Mapping[str, Any], extra: list[str]) -> str:
    """What the operator sees of the message as it came: capped, redacted, storable."""
    if UNREADABLE_HEADER in headers:
        text = str(headers.get(UNREADABLE_RAW_HEADER, ""))  # capped by the transport
    else:
        body = message.body
        text = body.decode("utf-8", errors="replace") if isinstance(body, bytes) else str(body)
        text = capped_text(text, RAW_BODY_KEEP_BYTES)
    return _stored(redact_text(text, extra), RAW_BODY_KEEP_BYTES * 2)


def _stored(text: str, limit: int) -> str:
    """Text PostgreSQL can store (no NUL), within a column's length."""
    return text.replace("\x00", "\\u0000")[:limit]


def _shown(text: str) -> str:
    return text.replace("\x00", "\\u0000")[:200]


def _error_text(exc: BaseException) -> str:
    return f"{type(exc).__name__}: {exc}"[:500]

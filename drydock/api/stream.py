"""``GET /v1/stream``: trust transitions, policy decisions and remediation updates as
Server-Sent Events, for clients in any language (a browser's ``EventSource``, ``curl -N``).

Each event is ``id: <n>``, ``event: <kind>``, ``data: <JSON>``; ids only grow. A client that
reconnects with ``Last-Event-ID: <n>`` (EventSource does it by itself) is served every event
after ``n`` from the stored history (``models.stream``) and then the live ones: nothing is
missed while it was away, and nothing is sent twice. ``?last_event_id=`` says the same for
clients that cannot set headers; ``0`` replays the whole kept history. Without either, the
stream starts with what happens next.

What a token sees: the kinds its scopes read (``trust.read`` for transitions,
``policy.decide`` for decisions, ``remediation.run_playbook`` for remediation updates), of its
own tenant for a tenant token. Asking for a kind it may not read is 403. The token is checked
again as the stream runs: once revoked, the stream ends.
"""

from __future__ import annotations

import json
import time
from collections.abc import AsyncIterator, Callable, Sequence
from typing import Annotated, Any

import anyio
from fastapi import APIRouter, Header, HTTPException, Query
from pydantic import BaseModel, Field
from sse_starlette import EventSourceResponse, ServerSentEvent

from drydock.api.auth import Caller, PresentedToken, tenant_to_read
from drydock.api.errors import ErrorBody, InputProblem
from drydock.api.inputs import TenantQuery
from kernel.settings import get_settings
from models import stream, tokens
from models.db import session_scope
from models.stream import StreamEvent, StreamEventKind, StreamFilter

router = APIRouter(tags=["stream"])

KIND_SCOPES: dict[StreamEventKind, str] = {
    StreamEventKind.TRUST_TRANSITION: "trust.read",
    StreamEventKind.POLICY_DECISION: "policy.decide",
    StreamEventKind.REMEDIATION_UPDATE: "remediation.run_playbook",
    StreamEventKind.REMEDIATION_WORKSPACE: "remediation.run_playbook",
    StreamEventKind.WORKFLOW_EVENT: "workflows.read",
    StreamEventKind.RUNTIME_INSTANCE: "runtime.read",
    StreamEventKind.RUNTIME_RELEASE: "runtime.read",
}
# Events read per query: a client far behind catches up in pages of this many.
PAGE = 200
# How often a running stream checks that its token is still valid.
TOKEN_RECHECK_SECONDS = 30.0
# Sent as the stream's retry: how long (ms) an EventSource waits before reconnecting.
RETRY_MS = 2000
MAX_EVENT_ID = 2**63 - 1


class StreamEventBody(BaseModel):
    """The ``data`` of each event (its ``id`` and ``event`` lines repeat id and kind)."""

    id: int
    kind: StreamEventKind
    tenant: str | None
    at: str = Field(description="When it was recorded (ISO 8601, UTC).")
    data: dict[str, Any] = Field(
        description="trust.transition: the transition; policy.decision: the decision with its "
        "gates; remediation.update: the run's action, state and actor; remediation.workspace: a "
        "workspace's edit, simulation, promotion or a run its promotion created, refreshed or "
        "skipped; runtime.instance: an "
        "instance's move; runtime.release: a promotion, rollout or rollback."
    )


def _event_id(value: str, where: tuple[str, str]) -> int:
    # The parameter's pattern has checked the digits; the range is left.
    if int(value) > MAX_EVENT_ID:
        raise InputProblem.at(
            list(where), f"must be the id of an event this stream sent (at most {MAX_EVENT_ID})"
        )
    return int(value)


def _readable_kinds(
    caller: tokens.Caller, asked: Sequence[StreamEventKind]
) -> list[StreamEventKind]:
    if asked:
        refused = [kind for kind in asked if not caller.may_use(KIND_SCOPES[kind])]
        if refused:
            names = ", ".join(f"{kind.value} (scope {KIND_SCOPES[kind]})" for kind in refused)
            raise HTTPException(403, f"token {caller.name!r} may not read {names}")
        return list(dict.fromkeys(asked))
    kinds = [kind for kind, scope in KIND_SCOPES.items() if caller.may_use(scope)]
    if not kinds:
        scopes = ", ".join(sorted(set(KIND_SCOPES.values())))
        raise HTTPException(
            403, f"token {caller.name!r} may read no kind of event (scopes: {scopes})"
        )
    return kinds


def _message(row: StreamEvent) -> ServerSentEvent:
    body = {
        "id": row.id,
        "kind": row.kind,
        "tenant": row.tenant,
        "at": stream.event_time(row),
        "data": row.data,
    }
    return ServerSentEvent(
        data=json.dumps(body, separators=(",", ":")), event=row.kind, id=str(row.id)
    )


def _read_after(after: int, seen: StreamFilter) -> list[ServerSentEvent]:
    with session_scope() as session:
        return [_message(row) for row in stream.events_after(session, after, seen, limit=PAGE)]


def start_after() -> int:
    """Where a reader starting now begins: after the newest event."""
    with session_scope() as session:
        return stream.last_event_id(session)


def _still_valid(token: str) -> bool:
    with session_scope() as session:
        return tokens.authenticate(session, token) is not None


@router.get(
    "/v1/stream",
    response_class=EventSourceResponse,
    responses={
        200: {
            "description": "An endless text/event-stream; each event's data is a StreamEventBody.",
            "content": {
                "text/event-stream": {
                    "schema": {"type": "string"},
                    # Each event's data: OpenAPI 3.1 has no word for it (3.2's itemSchema).
                    "x-event-data": {"$ref": "#/components/schemas/StreamEventBody"},
                }
            },
        },
        403: {"model": ErrorBody, "description": "A kind or tenant the token may not read."},
    },
)
async def event_stream(
    caller: Caller,
    token: PresentedToken,
    tenant: TenantQuery = None,
    kind: Annotated[
        list[StreamEventKind] | None,
        Query(max_length=len(StreamEventKind), description="Only these kinds (repeatable)."),
    ] = None,
    last_event_id_query: Annotated[
        str | None,
        Query(
            alias="last_event_id",
            max_length=19,
            pattern=r"^[0-9]+$",
            description="Resume after this event (as Last-Event-ID); 0: from the start.",
        ),
    ] = None,
    last_event_id: Annotated[
        str | None,
        Header(
            alias="Last-Event-ID",
            max_length=19,
            pattern=r"^[0-9]+$",
            description="Resume after this event: what EventSource sends when it reconnects.",
        ),
    ] = None,
) -> EventSourceResponse:
    """Events as they are recorded, resumable by id."""
    kinds = _readable_kinds(caller, kind or [])
    seen = StreamFilter(kinds=kinds, tenant=tenant_to_read(caller, tenant))
    # The header wins: EventSource sends it on reconnect, with the query of the first connect.
    if last_event_id is not None:
        after = _event_id(last_event_id, ("header", "Last-Event-ID"))
    elif last_event_id_query is not None:
        after = _event_id(last_event_id_query, ("query", "last_event_id"))
    else:
        after = await anyio.to_thread.run_sync(start_after)
    return event_source(seen, after, lambda: _still_valid(token))


def event_source(
    seen: StreamFilter, after: int, still_valid: Callable[[], bool]
) -> EventSourceResponse:
    """The events ``seen`` admits after ``after``, then the live ones, for as long as
    ``still_valid`` (asked every TOKEN_RECHECK_SECONDS, in a thread) says the reader may read.
    The API's stream and the console's live pages both serve this."""
    settings = get_settings()

    async def events() -> AsyncIterator[ServerSentEvent]:
        cursor = after
        checked = time.monotonic()
        yield ServerSentEvent(comment="drydock stream", retry=RETRY_MS)
        while True:
            batch = await anyio.to_thread.run_sync(_read_after, cursor, seen)
            for message in batch:
                yield message
                cursor = int(message.id or cursor)
            if time.monotonic() - checked > TOKEN_RECHECK_SECONDS:
                if not await anyio.to_thread.run_sync(still_valid):
                    return
                checked = time.monotonic()
            if len(batch) < PAGE:
                await anyio.sleep(settings.stream_poll_seconds)

    return EventSourceResponse(
        events(),
        ping=settings.stream_ping_seconds,
        # Proxies (nginx) must pass events on as they come, not buffer them.
        headers={"Cache-Control": "no-cache", "X-Accel-Buffering": "no"},
    )

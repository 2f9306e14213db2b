"""The console's trust registry: assets and their states, one asset's history, and the live
transitions a page shows as they happen (``/console/stream``, Server-Sent Events read with the
session's cookie)."""

from __future__ import annotations

import uuid
from typing import Any

import anyio
from fastapi import APIRouter, Request
from fastapi.responses import Response
from starlette.concurrency import run_in_threadpool

from drydock.api.stream import event_source, start_after
from drydock.console import sessions
from drydock.console.web import (
    PageProblem,
    current_session,
    render,
    require_page_scope,
    uuid_or_404,
)
from kernel.errors import NotFoundError
from models import tokens, trust, trust_actions
from models.db import session_scope
from models.stream import StreamEventKind, StreamFilter
from models.trust import TrustState

router = APIRouter()
PAGE = 100
READ_SCOPE = "trust.read"


def _assets(caller: tokens.Caller, state: str | None) -> list[dict[str, Any]]:
    require_page_scope(caller, READ_SCOPE)
    if state is not None and state not in {s.value for s in TrustState}:
        raise PageProblem(422, f"state: one of {', '.join(s.value for s in TrustState)}")
    with session_scope() as session:
        rows = trust_actions.list_assets(
            session,
            tenant=caller.tenant,
            state=TrustState(state) if state else None,
            limit=PAGE,
        )
        return [
            {
                "id": str(a.id),
                "tenant": a.tenant,
                "name": a.name,
                "kind": a.kind,
                "asset_class": a.asset_class,
                "state": a.state,
                "last_verified_at": a.last_verified_at,
                "evidence_expires_at": a.evidence_expires_at,
            }
            for a in rows
        ]


@router.get("/trust")
async def assets(request: Request, state: str | None = None) -> Response:
    session = await current_session(request)
    rows = await run_in_threadpool(_assets, session.caller, state or None)
    # The page's stream starts where the page was read: nothing in between is missed.
    after = await run_in_threadpool(start_after)
    return render(
        request,
        "trust.html",
        {
            "assets": rows,
            "state": state or None,
            "states": [s.value for s in TrustState],
            "stream_after": after,
        },
        session=session,
    )


def _asset(caller: tokens.Caller, asset_id: uuid.UUID) -> dict[str, Any]:
    require_page_scope(caller, READ_SCOPE)
    with session_scope() as session:
        try:
            asset = trust_actions.visible_asset(session, asset_id, caller.tenant)
        except NotFoundError:
            raise PageProblem(404, f"no asset {asset_id}") from None
        return {
            "asset": {
                "id": str(asset.id),
                "tenant": asset.tenant,
                "name": asset.name,
                "kind": asset.kind,
                "asset_class": asset.asset_class,
                "state": asset.state,
                "protected": asset.protected,
                "last_verified_at": asset.last_verified_at,
                "evidence_expires_at": asset.evidence_expires_at,
            },
            "history": [
                {
                    "seq": move.seq,
                    "from_state": move.from_state,
                    "to_state": move.to_state,
                    "cause": move.cause,
                    "detail": move.detail,
                    "actor": move.actor,
                    "at": move.created_at,
                }
                for move in reversed(trust.history(session, asset.id))
            ],
        }


@router.get("/trust/{asset_id}")
async def asset(request: Request, asset_id: str) -> Response:
    session = await current_session(request)
    parsed = uuid_or_404(asset_id, "asset")
    shown = await run_in_threadpool(_asset, session.caller, parsed)
    return render(request, "asset.html", shown, session=session)


@router.get("/stream")
async def live(request: Request, after: str | None = None) -> Response:
    """Trust transitions as they are recorded, for the console's live pages (the session's
    tenant only for a tenant token), from after event ``after`` (the page's) or the
    ``Last-Event-ID`` EventSource sends when it reconnects; ends when the session does."""
    session = await current_session(request)
    require_page_scope(session.caller, READ_SCOPE)
    cookie = request.cookies.get(sessions.COOKIE)
    seen = StreamFilter(kinds=[StreamEventKind.TRUST_TRANSITION], tenant=session.caller.tenant)
    given = request.headers.get("last-event-id") or after or ""
    if given.isdigit() and len(given) < 19:
        start = int(given)
    else:
        start = await anyio.to_thread.run_sync(start_after)
    return event_source(seen, start, lambda: sessions.read_session(cookie) is not None)

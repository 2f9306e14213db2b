"""The console's policy decisions (each with its gates and their reasons) and the catalog of
MCP servers (each tier's release with its certification, instance health, host trust and
anomaly scores)."""

from __future__ import annotations

from typing import Any

from fastapi import APIRouter, Request
from fastapi.responses import Response
from starlette.concurrency import run_in_threadpool

from drydock.console.web import PageProblem, current_session, render, require_page_scope
from kernel.errors import NotFoundError
from models import policy, tokens
from models.db import session_scope
from models.policy import PolicyDecisionKind
from tasks.runtime import promotions
from tasks.runtime.server_catalog import Health, catalog_page

router = APIRouter()
PAGE = 50


def _decisions(caller: tokens.Caller, kind: str | None) -> list[dict[str, Any]]:
    require_page_scope(caller, "policy.decide")
    if kind is not None and kind not in {k.value for k in PolicyDecisionKind}:
        raise PageProblem(422, f"kind: one of {', '.join(k.value for k in PolicyDecisionKind)}")
    with session_scope() as session:
        rows = policy.list_decisions(session, tenant=caller.tenant, kind=kind, limit=PAGE)
        return [
            {
                "id": row.id,
                "kind": row.kind,
                "allowed": row.allowed,
                "tenant": row.tenant,
                "summary": row.summary,
                "gates": row.gates,
                "actor": row.actor,
                "job_id": str(row.job_id) if row.job_id else None,
                "decided_at": row.decided_at,
            }
            for row in rows
        ]


@router.get("/policy")
async def decisions(request: Request, kind: str | None = None) -> Response:
    session = await current_session(request)
    rows = await run_in_threadpool(_decisions, session.caller, kind or None)
    return render(
        request,
        "policy.html",
        {"decisions": rows, "kind": kind or None, "kinds": [k.value for k in PolicyDecisionKind]},
        session=session,
    )


def _catalog(
    caller: tokens.Caller, tier: str | None, health: str | None, after: str | None
) -> dict[str, Any]:
    require_page_scope(caller, "runtime.read")
    if health is not None and health not in {h.value for h in Health}:
        raise PageProblem(422, f"health: one of {', '.join(h.value for h in Health)}")
    if tier is not None and len(tier) > 100:
        raise PageProblem(422, "tier: at most 100 characters")
    if after is not None and len(after) > 250:
        raise PageProblem(422, "after: not a position this console gave")
    return catalog_page(
        tenant=caller.tenant,
        tier=tier,
        health=Health(health) if health else None,
        after=after,
        limit=PAGE,
    )


@router.get("/catalog")
async def catalog(
    request: Request, tier: str | None = None, health: str | None = None, after: str | None = None
) -> Response:
    session = await current_session(request)
    page = await run_in_threadpool(
        _catalog, session.caller, tier or None, health or None, after or None
    )
    return render(
        request,
        "catalog.html",
        {**page, "tier": tier or None, "health": health or None,
         "healths": [h.value for h in Health]},
        session=session,
    )  # fmt: skip


def _history(caller: tokens.Caller, server: str) -> dict[str, Any]:
    require_page_scope(caller, "runtime.read")
    try:
        return promotions.history_of(tenant=caller.tenant, server=server[:250], limit=PAGE)
    except NotFoundError:
        raise PageProblem(404, f"no server {server[:100]!r}") from None


@router.get("/catalog/{tenant}/{name}")
async def server_history(request: Request, tenant: str, name: str) -> Response:
    """A server's promotions, rollouts and rollbacks, each with its checkpoints."""
    session = await current_session(request)
    shown = await run_in_threadpool(_history, session.caller, f"{tenant}/{name}")
    return render(request, "server_history.html", shown, session=session)

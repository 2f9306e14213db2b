"""The console's workflow runs: runs newest first, and one run as a DAG of its steps (state,
attempts, commit, pushes) with each step's result and provenance log, the run's timeline, and
whether its signed provenance verifies against the fleet's key."""

from __future__ import annotations

import json
import uuid
from typing import Any

from fastapi import APIRouter, Request
from fastapi.responses import Response
from starlette.concurrency import run_in_threadpool

from drydock.console.web import (
    PageProblem,
    current_session,
    render,
    require_page_scope,
    uuid_or_404,
)
from kernel.errors import NotFoundError
from models import tokens, workflow_runs
from models.db import session_scope
from tasks.workflows import run_operations
from tasks.workflows.run_provenance import run_provenance, verify_run

router = APIRouter()
PAGE = 50
READ_SCOPE = "workflows.read"


def _runs(caller: tokens.Caller) -> list[dict[str, Any]]:
    require_page_scope(caller, READ_SCOPE)
    with session_scope() as session:
        return [
            {
                "id": str(row.id),
                "tenant": row.tenant,
                "workflow": row.workflow_name,
                "version": row.workflow_version,
                "state": row.state,
                "created_at": row.created_at,
            }
            for row in workflow_runs.list_runs(session, caller.tenant, PAGE)
        ]


@router.get("/workflows")
async def runs(request: Request) -> Response:
    session = await current_session(request)
    rows = await run_in_threadpool(_runs, session.caller)
    return render(request, "workflow_runs.html", {"runs": rows}, session=session)


def levels(steps: list[dict[str, Any]]) -> list[list[dict[str, Any]]]:
    """The steps in columns: each one column right of the furthest step it needs."""
    depth: dict[str, int] = {}
    by_name = {step["name"]: step for step in steps}

    def depth_of(name: str, seen: frozenset[str] = frozenset()) -> int:
        if name not in depth:
            needs = [n for n in by_name[name]["needs"] if n in by_name and n not in seen]
            depth[name] = 1 + max((depth_of(n, seen | {name}) for n in needs), default=-1)
        return depth[name]

    columns: list[list[dict[str, Any]]] = []
    for step in steps:
        level = depth_of(step["name"])
        while len(columns) <= level:
            columns.append([])
        columns[level].append(step)
    return columns


def _run(caller: tokens.Caller, run_id: uuid.UUID) -> dict[str, Any]:
    require_page_scope(caller, READ_SCOPE)
    try:
        run = run_operations.run_view(run_id, caller.tenant)
        timeline = run_operations.run_timeline(run_id, caller.tenant, 0)
        provenance = run_provenance(run_id, caller.tenant)
    except NotFoundError:
        raise PageProblem(404, f"no workflow run {run_id}") from None
    verification = verify_run(provenance).as_dict()
    return {
        "run": run,
        "columns": levels(run["steps"]),
        "timeline": timeline,
        "step_logs": {
            name: json.dumps(log, indent=2, sort_keys=True)
            for name, log in provenance.step_logs.items()
        },
        "envelope": provenance.envelope,
        "verification": verification,
        "finished": run["state"] in {s.value for s in workflow_runs.FINISHED_RUN_STATES},
    }


@router.get("/workflows/{run_id}")
async def run(request: Request, run_id: str) -> Response:
    session = await current_session(request)
    parsed = uuid_or_404(run_id, "workflow run")
    shown = await run_in_threadpool(_run, session.caller, parsed)
    return render(request, "workflow_run.html", shown, session=session)

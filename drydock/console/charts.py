"""``/console/charts``: queue depth and job latency over time, and build latency per repository
with its anomaly score, drawn from the stored rows."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from typing import Any

from fastapi import APIRouter, Request
from fastapi.responses import Response
from starlette.concurrency import run_in_threadpool

from drydock.api.auth import visible_tasks
from drydock.console.plots import Series, line_chart
from drydock.console.web import PageProblem, current_session, render
from models import console_series, tokens
from models.db import session_scope

router = APIRouter()
# The windows offered, and the interval each is drawn in (60 to 96 points).
WINDOWS = {"1h": (timedelta(hours=1), 60), "6h": (timedelta(hours=6), 300),
           "24h": (timedelta(hours=24), 900)}  # fmt: skip
# Repositories drawn, busiest first.
MAX_REPOSITORIES = 6


def _charts(caller: tokens.Caller, window: str) -> dict[str, Any]:
    if window not in WINDOWS:
        raise PageProblem(422, f"window: one of {', '.join(WINDOWS)}")
    length, step = WINDOWS[window]
    now = datetime.now(UTC)
    # Whole intervals, so a reload in the same interval draws the same points.
    until = datetime.fromtimestamp((now.timestamp() // step + 1) * step, UTC)
    since = until - length
    with session_scope() as session:
        intervals = console_series.job_intervals(
            session, since=since, until=until, step_seconds=step, tenant=caller.tenant,
            task_names=visible_tasks(caller),
        )  # fmt: skip
        repositories = console_series.build_latencies(session, since=since, tenant=caller.tenant)
    depth = line_chart(
        [Series("waiting", [(i.start, float(i.waiting)) for i in intervals])],
        unit="jobs",
        title="jobs waiting",
        between=(since, until),
    )
    latency = line_chart(
        [
            Series("p50", [(i.start, i.p50_ms) for i in intervals]),
            Series("p95", [(i.start, i.p95_ms) for i in intervals]),
        ],
        unit="ms",
        title="job latency (enqueue to finish)",
        between=(since, until),
    )
    shown = repositories[:MAX_REPOSITORIES]
    builds = line_chart(
        [Series(r.repository, list(r.builds)) for r in shown],
        unit="ms",
        title="build latency per repository",
        between=(since, until),
    )
    return {
        "window": window,
        "windows": list(WINDOWS),
        "depth_chart": depth,
        "latency_chart": latency,
        "build_chart": builds,
        "repositories": shown,
        "finished": sum(i.finished for i in intervals),
        "enqueued": sum(i.enqueued for i in intervals),
    }


@router.get("/charts")
async def charts(request: Request, window: str = "1h") -> Response:
    session = await current_session(request)
    shown = await run_in_threadpool(_charts, session.caller, window)
    return render(request, "charts.html", shown, session=session)

"""``GET /health/workflows``: the workflows queue's depth, runs stuck on a step whose runner
stopped beating its heartbeat, and each runner's last heartbeat (503 when a run is stuck)."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from typing import Literal

from fastapi import APIRouter
from fastapi.responses import JSONResponse
from pydantic import BaseModel, Field
from sqlalchemy.exc import SQLAlchemyError

from drydock.health import queue_depth
from kernel.settings import get_settings
from models import workflow_runs as store
from models.db import session_scope
from workers.heartbeat import redis_client

router = APIRouter(tags=["health"])
QUEUE = "workflows"
# Runners shown: those that beat a heartbeat within this long.
RUNNER_WINDOW = timedelta(hours=24)


class StuckStep(BaseModel):
    run_id: str
    step: str
    runner: str | None
    last_heartbeat_at: str | None = Field(description="None: it never beat one.")
    started_at: str | None


class RunnerBeat(BaseModel):
    runner: str
    last_heartbeat_at: str
    seconds_ago: float


class WorkflowsHealth(BaseModel):
    status: Literal["healthy", "unhealthy"]
    checked_at: datetime
    queue_depth: int | None = Field(description="Step and start jobs waiting; None: no broker.")
    stuck_after_seconds: float
    stuck: list[StuckStep]
    runners: list[RunnerBeat]
    errors: list[str] = Field(default_factory=list)


def workflows_report() -> WorkflowsHealth:
    settings = get_settings()
    now = datetime.now(UTC)
    errors: list[str] = []
    depth: int | None = None
    try:
        depth = queue_depth(redis_client(settings), QUEUE)
    except Exception as exc:  # the broker away: said, not raised
        errors.append(f"the broker did not answer: {type(exc).__name__}")
    stuck: list[StuckStep] = []
    runners: list[RunnerBeat] = []
    threshold = settings.workflow_stuck_after_seconds
    try:
        with session_scope() as session:
            for step in store.stale_running_steps(session, now - timedelta(seconds=threshold)):
                stuck.append(
                    StuckStep(
                        run_id=str(step.run_id),
                        step=step.name,
                        runner=step.runner,
                        last_heartbeat_at=step.heartbeat_at.isoformat()
                        if step.heartbeat_at
                        else None,
                        started_at=step.started_at.isoformat() if step.started_at else None,
                    )
                )
            for runner, beat in store.runner_heartbeats(session, now - RUNNER_WINDOW):
                runners.append(
                    RunnerBeat(
                        runner=runner,
                        last_heartbeat_at=beat.isoformat(),
                        seconds_ago=round((now - beat).total_seconds(), 1),
                    )
                )
    except SQLAlchemyError as exc:
        errors.append(f"the database did not answer: {type(exc).__name__}")
    healthy = not stuck and not errors
    return WorkflowsHealth(
        status="healthy" if healthy else "unhealthy",
        checked_at=now,
        queue_depth=depth,
        stuck_after_seconds=threshold,
        stuck=stuck,
        runners=runners,
        errors=errors,
    )


@router.get(
    "/health/workflows",
    response_model=WorkflowsHealth,
    responses={503: {"model": WorkflowsHealth, "description": "A run is stuck, or no store."}},
)
def workflows_health() -> JSONResponse:
    """The workflows queue's depth, stuck runs and each runner's last heartbeat."""
    report = workflows_report()
    return JSONResponse(
        report.model_dump(mode="json"), status_code=200 if report.status == "healthy" else 503
    )

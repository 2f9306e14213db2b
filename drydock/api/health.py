"""``/health/*`` and ``/metrics``: no payloads and no token, so probes and Prometheus reach them."""

from __future__ import annotations

from typing import Literal

from fastapi import FastAPI, HTTPException
from fastapi.responses import Response
from prometheus_client import CONTENT_TYPE_LATEST
from pydantic import BaseModel
from sqlalchemy.exc import SQLAlchemyError

from drydock.api.errors import ErrorBody
from drydock.health import FleetHealth, check_fleet
from drydock.metrics import DrydockCollector, render

_metrics = DrydockCollector()


class LiveBody(BaseModel):
    status: Literal["ok"]


def install(app: FastAPI) -> None:
    app.add_api_route(
        "/health/live", live, methods=["GET"], response_model=LiveBody, tags=["health"]
    )
    app.add_api_route(
        "/health/fleet",
        fleet,
        methods=["GET"],
        response_model=FleetHealth,
        responses={503: {"model": FleetHealth, "description": "Unhealthy; see reasons."}},
        tags=["health"],
    )
    app.add_api_route(
        "/metrics",
        metrics,
        methods=["GET"],
        response_class=Response,
        responses={
            200: {
                "description": "The Prometheus text exposition format.",
                "content": {CONTENT_TYPE_LATEST.split(";")[0]: {"schema": {"type": "string"}}},
            },
            503: {"model": ErrorBody, "description": "The store is unreachable."},
        },
        tags=["health"],
    )


def live() -> LiveBody:
    """The API process is up. Depends on nothing else, for a liveness probe."""
    return LiveBody(status="ok")


def fleet(response: Response) -> FleetHealth:
    """Queues, workers, stuck jobs, Beat, the peers (Docker engine, registries, libvirt,
    Kubernetes API) and a verdict with its reasons (503 when unhealthy)."""
    health = check_fleet()
    if not health.healthy:
        response.status_code = 503
    return health


def metrics() -> Response:
    """Prometheus text format: jobs by task and status, durations, retries, dead letters,
    queue depth, workers, fleet and peer health, trust assets, remediation runs, credential
    probes and policy denials."""
    try:
        body = render(_metrics)
    except SQLAlchemyError as exc:
        raise HTTPException(503, f"metrics unavailable: {type(exc).__name__}") from None
    return Response(body, media_type=CONTENT_TYPE_LATEST)

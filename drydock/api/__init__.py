"""The HTTP API: enqueue from any language, read jobs and dead letters, health and metrics.

Served by uvicorn (`drydock api`); the OpenAPI document is at ``/openapi.json`` and lists every
task's payload schema. Everything under ``/v1`` needs a bearer token (`drydock tokens create`)
whose scopes (task-name patterns) bound what it may enqueue, read and replay: a job outside
them is 403 to enqueue and 404 to read, as if it did not exist. ``/health/*`` and ``/metrics``
carry no payloads and need no token, so probes and Prometheus can reach them.
"""

from __future__ import annotations

import gc
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Any

from fastapi import FastAPI

from drydock import console
from drydock.api import (
    builds,
    dead_letters,
    enqueue,
    errors,
    health,
    jobs,
    openapi,
    policy,
    releases,
    remediation,
    remediation_workspaces,
    remotes,
    servers,
    stream,
    trust,
    workflow_health,
    workflow_runs,
    workflows,
)
from drydock.api.edge import EdgeMiddleware

API_VERSION = "1"

# The module's doc is the OpenAPI document's description.
_DESCRIPTION = (__doc__ or "").strip()


@asynccontextmanager
async def _frozen_startup_heap(_app: FastAPI) -> AsyncIterator[None]:
    # What importing the app made (modules, models, schemas: most of the heap) lives as long as
    # the process. Frozen, the collector never walks it again: without this a full collection
    # every few hundred requests pauses one for ~80 ms (bench/runtime.py's catalog p99).
    gc.collect()
    gc.freeze()
    yield


def create_app() -> FastAPI:
    """The application: the edge, the error handlers, and every domain's routes (in this order,
    which is the OpenAPI document's and the order paths are matched in)."""
    app = FastAPI(
        title="Drydock",
        version=API_VERSION,
        summary="Enqueue jobs on the Drydock fleet and follow them.",
        lifespan=_frozen_startup_heap,
    )
    # A path with a trailing slash is another path: not redirected to a route it does not name.
    app.router.redirect_slashes = False
    app.add_middleware(EdgeMiddleware)
    errors.install(
        app,
        {
            **remediation.EXCEPTION_HANDLERS,
            **policy.EXCEPTION_HANDLERS,
            **trust.EXCEPTION_HANDLERS,
        },
    )
    app.include_router(remediation.router)
    app.include_router(remediation_workspaces.router)
    app.include_router(policy.router)
    app.include_router(trust.router)
    app.include_router(builds.router)
    app.include_router(stream.router)
    # Before the definitions' routes: /v1/workflows/runs is not a workflow's name.
    app.include_router(workflow_runs.router)
    app.include_router(workflows.router)
    # The app's own routes, as app.routes lists them (an included router's are listed as one).
    enqueue.install(app)
    jobs.install(app)
    dead_letters.install(app)
    health.install(app)
    app.include_router(remotes.router)
    app.include_router(workflow_health.router)
    app.include_router(servers.router)
    app.include_router(releases.router)
    # The operator console's pages (not in the OpenAPI document).
    console.install(app)

    # OpenAPI: exact, with every task's payload schema (drydock.api.openapi).
    def exact_openapi() -> dict[str, Any]:
        if not app.openapi_schema:
            app.openapi_schema = openapi.build(app, _DESCRIPTION)
        return app.openapi_schema

    app.openapi = exact_openapi  # type: ignore[method-assign]
    return app


app = create_app()

__all__ = ["API_VERSION", "app", "create_app"]

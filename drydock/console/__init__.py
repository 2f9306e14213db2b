"""The operator console: pages served by ``drydock api`` under ``/console``, rendered on the
server with Jinja2 (one small stylesheet, one small script for live pages, no client build).

Logging in exchanges an API token for a session cookie (``drydock.console.sessions``); a page
shows what that token may read through the API, and its forms act as the API would for it."""

from __future__ import annotations

from pathlib import Path
from urllib.parse import quote

from fastapi import APIRouter, FastAPI, Request
from fastapi.responses import FileResponse, Response
from starlette.concurrency import run_in_threadpool

from drydock.console import charts, governance, jobs, login, sessions, trust, workflows
from drydock.console.web import LoginRequired, PageProblem, problem_page, redirect

STATIC = Path(__file__).parent / "static"
_STATIC_FILES = {"console.css": "text/css", "console.js": "text/javascript"}

router = APIRouter(prefix="/console", include_in_schema=False)
router.include_router(login.router)
router.include_router(jobs.router)
router.include_router(trust.router)
router.include_router(workflows.router)
router.include_router(governance.router)
router.include_router(charts.router)


@router.get("")
def console_root() -> Response:
    return redirect("/console/")


@router.get("/static/{name}")
def static(name: str) -> Response:
    if name not in _STATIC_FILES:
        return Response(status_code=404)
    return FileResponse(
        STATIC / name,
        media_type=_STATIC_FILES[name],
        headers={"Cache-Control": "max-age=300", "X-Content-Type-Options": "nosniff"},
    )


def install(app: FastAPI) -> None:
    app.include_router(router)

    @app.exception_handler(LoginRequired)
    async def _login_first(request: Request, exc: LoginRequired) -> Response:
        return redirect(f"/console/login?next={quote(exc.path)}")

    @app.exception_handler(PageProblem)
    async def _problem(request: Request, exc: PageProblem) -> Response:
        session = await run_in_threadpool(
            sessions.read_session, request.cookies.get(sessions.COOKIE)
        )
        return problem_page(request, exc, session)


__all__ = ["install"]

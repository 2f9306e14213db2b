"""``/console/login`` and ``/console/logout``: an API token exchanged for a session cookie."""

from __future__ import annotations

from fastapi import APIRouter, Request
from fastapi.responses import Response
from starlette.concurrency import run_in_threadpool

from drydock.console import sessions
from drydock.console.web import checked_form, read_form, redirect, render, same_origin
from kernel.settings import get_settings

router = APIRouter()


def _next_page(value: str | None) -> str:
    # Only the console's own pages: a login link cannot send the browser elsewhere.
    if value and value.startswith("/console") and not value.startswith("//"):
        return value
    return "/console/"


@router.get("/login")
def login_page(request: Request, next: str | None = None) -> Response:
    return render(request, "login.html", {"next": _next_page(next), "error": None}, session=None)


@router.post("/login")
async def log_in(request: Request) -> Response:
    same_origin(request)
    form = await read_form(request)
    following = _next_page(form.get("next"))
    session_id = await run_in_threadpool(sessions.open_session, form.get("token", ""))
    if session_id is None:
        return render(
            request, "login.html",
            {"next": following, "error": "That token is not valid, or it was revoked."},
            session=None,
        )  # fmt: skip
    response = redirect(following)
    response.set_cookie(
        sessions.COOKIE,
        session_id,
        max_age=get_settings().console_session_seconds,
        path="/console",
        httponly=True,
        samesite="strict",
        secure=request.url.scheme == "https",
    )
    return response


@router.post("/logout")
async def log_out(request: Request) -> Response:
    await checked_form(request)
    await run_in_threadpool(sessions.close_session, request.cookies.get(sessions.COOKIE))
    response = redirect("/console/login")
    response.delete_cookie(sessions.COOKIE, path="/console")
    return response

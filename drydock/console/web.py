"""What every console page shares: rendering with the security headers, the caller's session,
the CSRF check of forms, and problems shown as pages (never a traceback, never JSON)."""

from __future__ import annotations

import json
import uuid
from collections.abc import Mapping
from datetime import UTC, datetime
from pathlib import Path
from typing import Any
from urllib.parse import parse_qs, urlsplit

from fastapi import Request
from fastapi.responses import HTMLResponse, RedirectResponse, Response
from fastapi.templating import Jinja2Templates
from starlette.concurrency import run_in_threadpool

from drydock.console import sessions
from drydock.console.sessions import ConsoleSession
from models import tokens

TEMPLATES = Jinja2Templates(directory=Path(__file__).parent / "templates")
# Scripts, styles and forms of the console's own origin only; no frame may hold a page.
_HEADERS = {
    "Content-Security-Policy": (
        "default-src 'self'; img-src 'self' data:; style-src 'self'; script-src 'self'; "
        "connect-src 'self'; frame-ancestors 'none'; form-action 'self'; base-uri 'none'"
    ),
    "X-Content-Type-Options": "nosniff",
    "X-Frame-Options": "DENY",
    "Referrer-Policy": "same-origin",
    "Cache-Control": "no-store",
}
# A form is small: a token, a filter, a payload (bounded again by the payload limit).
MAX_FORM_FIELDS = 20


class LoginRequired(Exception):
    """No session (or an ended one): the page redirects to the login."""

    def __init__(self, path: str) -> None:
        super().__init__(path)
        self.path = path


class PageProblem(Exception):
    """A page that cannot be shown or an action refused: shown as a page with the reason."""

    def __init__(self, status: int, message: str) -> None:
        super().__init__(message)
        self.status = status
        self.message = message


def when(moment: datetime | None) -> str:
    return "" if moment is None else moment.astimezone(UTC).strftime("%Y-%m-%d %H:%M:%S")


def pretty(value: Any) -> str:
    return json.dumps(value, indent=2, sort_keys=True, default=str)


TEMPLATES.env.filters["when"] = when
TEMPLATES.env.filters["pretty"] = pretty


def render(
    request: Request,
    template: str,
    context: Mapping[str, Any],
    *,
    session: ConsoleSession | None,
    status: int = 200,
) -> HTMLResponse:
    response = TEMPLATES.TemplateResponse(
        request,
        template,
        {"session": session, "caller": session.caller if session else None, **context},
        status_code=status,
    )
    response.headers.update(_HEADERS)
    return response


def redirect(location: str) -> RedirectResponse:
    response = RedirectResponse(location, status_code=303)
    response.headers.update(_HEADERS)
    return response


async def current_session(request: Request) -> ConsoleSession:
    """The caller's session, or LoginRequired (the page they asked for comes after)."""
    cookie = request.cookies.get(sessions.COOKIE)
    found = await run_in_threadpool(sessions.read_session, cookie)
    if found is None:
        raise LoginRequired(request.url.path)
    return found


async def read_form(request: Request) -> dict[str, str]:
    """An urlencoded form's fields (the first value of each)."""
    content_type = request.headers.get("content-type", "").split(";")[0].strip()
    if content_type != "application/x-www-form-urlencoded":
        raise PageProblem(415, "the console's forms are sent as application/x-www-form-urlencoded")
    body = (await request.body()).decode("utf-8", errors="replace")
    try:
        fields = parse_qs(body, keep_blank_values=True, max_num_fields=MAX_FORM_FIELDS)
    except ValueError:
        raise PageProblem(422, f"a form has at most {MAX_FORM_FIELDS} fields") from None
    return {name: values[0] for name, values in fields.items()}


async def checked_form(request: Request) -> tuple[ConsoleSession, dict[str, str]]:
    """A state-changing form: the session, a same-origin request, and its CSRF token."""
    session = await current_session(request)
    same_origin(request)
    form = await read_form(request)
    if not sessions.csrf_matches(session, form.get("csrf")):
        raise PageProblem(403, "the form's CSRF token is missing or stale: reload the page")
    return session, form


def same_origin(request: Request) -> None:
    origin = request.headers.get("origin")
    if origin and origin != "null" and urlsplit(origin).netloc != request.headers.get("host"):
        raise PageProblem(403, f"a form from {origin} is not the console's own")


def problem_page(request: Request, exc: PageProblem, session: ConsoleSession | None) -> Response:
    return render(
        request, "problem.html", {"status": exc.status, "message": exc.message},
        session=session, status=exc.status,
    )  # fmt: skip


def uuid_or_404(text: str, what: str) -> uuid.UUID:
    """A page's id (a job, an asset, a run), or a 404 page saying what an id looks like."""
    try:
        return uuid.UUID(text)
    except ValueError:
        raise PageProblem(404, f"no {what} {text[:60]!r}: a {what} id is a UUID") from None


def require_page_scope(caller: tokens.Caller, scope: str) -> None:
    """A page the caller's token has no scope for: a 403 page naming the scope."""
    if not caller.may_use(scope):
        raise PageProblem(403, f"token {caller.name!r} lacks the {scope} scope")

"""The API's edge: every request body is read here, bounded, before any route parses it.

- Over the limit (``DRYDOCK_MAX_PAYLOAD_BYTES`` plus room for JSON framing): 413, judged by
  ``Content-Length`` before reading, and by counting for a chunked body, whose reading stops at
  the limit.
- A body that is not JSON (another ``Content-Type``): 415; JSON that does not parse, or nests
  deeper than any payload does: 422.
- What the store cannot keep, at any depth: a NUL character or a lone surrogate in a string or
  key (PostgreSQL would fail the request with a database error), a number beyond a bigint: 422
  naming each place.

The body is then handed on unchanged, so the routes read it as if nothing had happened.
"""

from __future__ import annotations

import json
from email.message import Message as MimeMessage
from typing import Any

from fastapi.responses import JSONResponse
from starlette.datastructures import Headers
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from drydock.api.errors import Problem, problem, problem_response
from kernel.settings import get_settings
from kernel.storable import NUL_PROBLEM

# JSON framing the payload's own bytes do not count: whitespace, indentation, escapes.
FRAMING_BYTES = 64 * 1024
# Deeper than any payload or playbook nests, and well inside the decoders' recursion limits.
MAX_DEPTH = 64
# Numbers a payload can carry: stored as JSON and encoded with orjson, which holds integers of 64
# bits; a bigint's range, for integers and floats alike, so the published schemas can say it.
MAX_NUMBER = 2**63 - 1
NUMBER_PROBLEM = f"must lie between -{MAX_NUMBER} and {MAX_NUMBER}"
CONSOLE_PREFIX = "/console/"
# A body can hold thousands of bad strings: the first hundred say enough.
MAX_PROBLEMS = 100


def body_limit_bytes() -> int:
    return get_settings().max_payload_bytes + FRAMING_BYTES


class EdgeMiddleware:
    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        headers = Headers(scope=scope)
        limit = body_limit_bytes()
        declared = headers.get("content-length", "")
        if declared.isdigit() and int(declared) > limit:
            await _too_large(int(declared), limit)(scope, receive, send)
            return
        chunks: list[bytes] = []
        size = 0
        while True:
            message = await receive()
            if message["type"] == "http.disconnect":
                return
            chunk = message.get("body", b"")
            size += len(chunk)
            if size > limit:
                await _too_large(size, limit, counted=True)(scope, receive, send)
                return
            chunks.append(chunk)
            if not message.get("more_body", False):
                break
        body = b"".join(chunks)
        # The console's forms are urlencoded (bounded above, read by the console itself).
        judged = body and not scope["path"].startswith(CONSOLE_PREFIX)
        refusal = judge_body(headers.get("content-type"), body) if judged else None
        if refusal is not None:
            await refusal(scope, receive, send)
            return

        replayed = False

        async def replay() -> Message:
            nonlocal replayed
            if not replayed:
                replayed = True
                return {"type": "http.request", "body": body, "more_body": False}
            return await receive()

        await self.app(scope, replay, send)


def _too_large(size: int, limit: int, *, counted: bool = False) -> JSONResponse:
    seen = f"more than {limit}" if counted else str(size)
    return JSONResponse(
        {
            "detail": f"the request body is {seen} bytes, over the limit of {limit} bytes "
            "(DRYDOCK_MAX_PAYLOAD_BYTES plus JSON framing); pass large data by reference "
            "(a URL, a repository, a registry) instead",
            "limit_bytes": limit,
        },
        status_code=413,
        # The rest of the body is not read: the connection cannot carry another request.
        headers={"Connection": "close"},
    )


def is_json(content_type: str | None) -> bool:
    """No Content-Type, application/json or application/*+json (as FastAPI reads bodies)."""
    if not content_type:
        return True
    mime = MimeMessage()
    mime["content-type"] = content_type
    subtype = mime.get_content_subtype()
    return mime.get_content_maintype() == "application" and (
        subtype == "json" or subtype.endswith("+json")
    )


def judge_body(content_type: str | None, body: bytes) -> JSONResponse | None:
    """The refusal of a body, or None when it may go on to its route."""
    if not is_json(content_type):
        detail = f"the body must be JSON (Content-Type: application/json), not {content_type}"
        return JSONResponse({"detail": detail}, status_code=415)
    try:
        # The parser the routes use (FastAPI's and json_body), so what passes here parses there.
        value = json.loads(body, parse_constant=_refuse_constant)
    except (ValueError, RecursionError) as exc:
        return problem_response([problem(["body"], f"the body is not valid JSON: {exc}")])
    problems = value_problems(value)
    return problem_response(problems) if problems else None


def _refuse_constant(name: str) -> Any:
    raise ValueError(f"{name} is not a JSON number")


def value_problems(value: Any) -> list[Problem]:
    """A problem for every string or key PostgreSQL cannot store (NUL, lone surrogates), every
    number outside ±MAX_NUMBER, and nesting deeper than MAX_DEPTH; at most MAX_PROBLEMS."""
    found: list[Problem] = []
    stack: list[tuple[Any, tuple[str | int, ...]]] = [(value, ())]
    while stack and len(found) < MAX_PROBLEMS:
        node, path = stack.pop()
        where = ["body", *path]
        if len(path) > MAX_DEPTH:
            found.append(problem(where, f"nests deeper than {MAX_DEPTH} levels", "too_deep"))
        elif isinstance(node, str):
            text_problem = _text_problem(node)
            if text_problem:
                found.append(problem(where, text_problem, "unstorable_text"))
        elif isinstance(node, bool) or node is None:
            continue
        elif isinstance(node, int | float):
            if abs(node) > MAX_NUMBER:
                found.append(problem(where, NUMBER_PROBLEM, "number_out_of_range"))
        elif isinstance(node, dict):
            for key, child in node.items():
                key_problem = _text_problem(key)
                if key_problem:
                    where_key = [*where, _shown(key)]
                    found.append(problem(where_key, f"field name {key_problem}", "unstorable_text"))
                else:
                    stack.append((child, (*path, key)))
        elif isinstance(node, list):
            stack.extend((child, (*path, index)) for index, child in enumerate(node))
    return sorted(found, key=lambda p: p.field)


def _shown(key: str) -> str:
    """A key as it can be quoted back: its NUL and lone surrogates escaped."""
    return key.encode("utf-8", "backslashreplace").decode().replace("\x00", "\\u0000")


def _text_problem(text: str) -> str | None:
    if "\x00" in text:
        return NUL_PROBLEM
    try:
        text.encode("utf-8")
    except UnicodeEncodeError:
        return "must be valid Unicode text (it holds a lone surrogate)"
    return None

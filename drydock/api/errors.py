"""How the HTTP API answers what it refuses: one problem format for every 422, and a status for
every error Drydock raises, so that no input ends in a 500.

A 422 always has the same shape, whichever layer refused the input (the edge, FastAPI's
parameter validation, a payload model, a store lookup)::

    {"detail": [{"loc": ["body", "sleep_seconds"], "field": "sleep_seconds",
                 "msg": "Input should be greater than or equal to 0", "type": "..."}],
     "message": "..."}

Every other error is ``{"detail": "one line"}`` (a refused admission adds its decision).
"""

from __future__ import annotations

import re
from collections.abc import Callable, Sequence
from typing import Any

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from pydantic import BaseModel, ValidationError
from sqlalchemy.exc import DataError, OperationalError
from starlette.exceptions import HTTPException as StarletteHTTPException

from catalog import CATALOG
from kernel.errors import (
    BrokerUnavailableError,
    DrydockError,
    NotFoundError,
    PayloadInvalidError,
    PayloadTooLargeError,
    ReplayRefusedError,
    TransientError,
    UnknownTaskError,
)
from kernel.logs import get_logger
from kernel.storable import NUL_PROBLEM

RETRY_AFTER_SECONDS = "5"

# ---- bodies ------------------------------------------------------------------------------------


class ErrorBody(BaseModel):
    detail: str


class Problem(BaseModel):
    loc: list[str | int]
    field: str
    msg: str
    type: str


class ProblemBody(BaseModel):
    detail: list[Problem]
    message: str


class InputProblem(Exception):
    """Raised by a route for input FastAPI could not judge on its own: answered as a 422."""

    def __init__(self, problems: Sequence[Problem]) -> None:
        super().__init__("; ".join(f"{p.field}: {p.msg}" for p in problems))
        self.problems = list(problems)

    @classmethod
    def at(cls, loc: Sequence[str | int], msg: str, kind: str = "invalid") -> InputProblem:
        return cls([problem(loc, msg, kind)])

    @classmethod
    def of_body(cls, exc: ValidationError, *, under: Sequence[str | int] = ()) -> InputProblem:
        """A body's validation errors, each placed in the body (below ``under``)."""
        # include_input=False: the offending value may be a secret, and must not be echoed.
        return cls(
            [
                problem(["body", *under, *error["loc"]], error["msg"], error["type"])
                for error in exc.errors(include_input=False, include_url=False)
            ]
        )


def problem(loc: Sequence[str | int], msg: str, kind: str = "invalid") -> Problem:
    """One problem: where (``["query", "limit"]``, ``["body", "data", "x"]``) and what."""
    where, *path = loc
    field = ".".join(str(part) for part in path) or ("(body)" if where == "body" else str(where))
    return Problem(loc=list(loc), field=field, msg=msg, type=kind)


def problem_response(problems: Sequence[Problem]) -> JSONResponse:
    message = "; ".join(f"{p.field}: {p.msg}" for p in problems)
    body = ProblemBody(detail=list(problems), message=f"invalid request: {message}")
    return JSONResponse(body.model_dump(mode="json"), status_code=422)


# Where the job's own fields of ``client.enqueue`` come from over HTTP, for naming them.
_ENQUEUE_ARGUMENT_LOCATIONS: dict[str, list[str | int]] = {
    "idempotency_key": ["header", "Idempotency-Key"],
    "target_asset": ["header", "X-Drydock-Target-Asset"],
    "(payload)": ["body"],
}


# ---- handlers ----------------------------------------------------------------------------------


def _request_validation(request: Request, exc: Exception) -> JSONResponse:
    assert isinstance(exc, RequestValidationError)
    problems = []
    for error in exc.errors():
        given = error.get("input")
        # A NUL character fails a parameter's pattern; say so instead of quoting the pattern.
        msg = NUL_PROBLEM if isinstance(given, str) and "\x00" in given else str(error["msg"])
        problems.append(problem(tuple(error["loc"]) or ("request",), msg, str(error["type"])))
    return problem_response(problems)


def _input_problem(request: Request, exc: Exception) -> JSONResponse:
    assert isinstance(exc, InputProblem)
    return problem_response(exc.problems)


def _invalid_payload(request: Request, exc: Exception) -> JSONResponse:
    assert isinstance(exc, PayloadInvalidError)
    problems = []
    for p in exc.problems:
        loc = _ENQUEUE_ARGUMENT_LOCATIONS.get(p.field, ["body", *p.field.split(".")])
        found = problem(loc, p.problem, "payload_invalid")
        # The payload's own paths keep their dotted form, as `enqueue` names them.
        problems.append(found.model_copy(update={"field": p.field}) if loc[0] == "body" else found)
    return problem_response(problems)


def _too_large(request: Request, exc: Exception) -> JSONResponse:
    assert isinstance(exc, PayloadTooLargeError)
    return JSONResponse({"detail": str(exc)}, status_code=413)


def _not_found(request: Request, exc: Exception) -> JSONResponse:
    return JSONResponse({"detail": str(exc)}, status_code=404)


def _conflict(request: Request, exc: Exception) -> JSONResponse:
    return JSONResponse({"detail": str(exc)}, status_code=409)


def _unavailable(request: Request, exc: Exception) -> JSONResponse:
    return JSONResponse(
        {"detail": str(exc)}, status_code=503, headers={"Retry-After": RETRY_AFTER_SECONDS}
    )


def _database_down(request: Request, exc: Exception) -> JSONResponse:
    assert isinstance(exc, OperationalError)
    message = " ".join(str(exc.orig).split())[:300]
    return JSONResponse(
        {"detail": f"the outcome store is unreachable: {message}"},
        status_code=503,
        headers={"Retry-After": RETRY_AFTER_SECONDS},
    )


def _data_refused(request: Request, exc: Exception) -> JSONResponse:
    # Every input is bounded and checked before it reaches the store, so this means a bound was
    # missed: still the caller's data, not a server fault, and logged so the gap gets closed.
    assert isinstance(exc, DataError)
    reason = " ".join(str(exc.orig).split("\n")[0].split())[:200]
    get_logger().warning("api.data_refused", path=request.url.path, reason=reason)
    return problem_response([problem(["request"], f"the store refused a value: {reason}")])


# ---- routing errors: 404 and 405 ---------------------------------------------------------------

_ENQUEUE_PATH = re.compile(r"^/v1/jobs/([^/]+)$")


def _http_error(app: FastAPI) -> Callable[[Request, Exception], JSONResponse]:
    def handle(request: Request, exc: Exception) -> JSONResponse:
        assert isinstance(exc, StarletteHTTPException)
        headers = dict(exc.headers or {})
        if exc.status_code == 405:
            # Starlette names the methods of the first route whose path matched; a path served
            # by several routes (GET and POST of /v1/remediation/playbooks) allows them all, as
            # the OpenAPI document lists them.
            allowed = allowed_methods(app.openapi(), request.url.path)
            if allowed:
                headers["Allow"] = ", ".join(allowed)
            detail = f"{request.method} is not allowed here; allowed: {headers.get('Allow')}"
            return JSONResponse({"detail": detail}, status_code=405, headers=headers)
        if exc.status_code == 404 and request.method == "POST":
            unknown = _ENQUEUE_PATH.match(request.url.path)
            if unknown:
                # Each task has its own route: any other name is a task that does not exist.
                message = str(UnknownTaskError(unknown.group(1), list(CATALOG)))
                return JSONResponse({"detail": message}, status_code=404)
        if exc.status_code == 400 and exc.detail == "There was an error parsing the body":
            # FastAPI's own words for a body it could not decode; the edge normally answers first.
            return problem_response([problem(["body"], "the body is not valid JSON")])
        if exc.status_code == 422:
            return problem_response([problem(["request"], str(exc.detail))])
        return JSONResponse({"detail": exc.detail}, status_code=exc.status_code, headers=headers)

    return handle


def allowed_methods(document: dict[str, Any], path: str) -> list[str]:
    """The methods the document lists for ``path``: its own entry when it has one (a concrete
    path wins over a template, as OpenAPI says), else those of the templates it matches."""
    paths: dict[str, dict[str, Any]] = document.get("paths", {})
    if path in paths:
        matched = [paths[path]]
    else:
        matched = [item for template, item in paths.items() if _template(template).match(path)]
    return sorted({method.upper() for item in matched for method in item})


def _template(template: str) -> re.Pattern[str]:
    parts = re.split(r"\{[^}]+\}", template)
    return re.compile("^" + "[^/]+".join(re.escape(part) for part in parts) + "$")


# ---- installing --------------------------------------------------------------------------------


def install(app: FastAPI, extra: dict[type[Exception], Any] | None = None) -> None:
    """Register every handler; ``extra`` adds the routers' own (more specific) ones."""
    handlers: dict[type[Exception], Any] = {
        RequestValidationError: _request_validation,
        InputProblem: _input_problem,
        PayloadInvalidError: _invalid_payload,
        PayloadTooLargeError: _too_large,
        UnknownTaskError: _not_found,
        NotFoundError: _not_found,
        ReplayRefusedError: _conflict,
        BrokerUnavailableError: _unavailable,
        TransientError: _unavailable,
        # Any other refusal Drydock raises on purpose: the request conflicts with what is stored.
        DrydockError: _conflict,
        OperationalError: _database_down,
        DataError: _data_refused,
        StarletteHTTPException: _http_error(app),
        **(extra or {}),
    }
    for error, handler in handlers.items():
        app.add_exception_handler(error, handler)

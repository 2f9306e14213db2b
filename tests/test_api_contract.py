"""The HTTP API keeps the contract its OpenAPI document states: schemathesis, with every check,
generates requests from the document (valid ones and invalid ones, and methods it does not
list) and sends them to the real API over its ASGI interface, against the real store, broker and
worker, with a valid operator token.

One pytest item per documented operation; derandomized and bounded, so the run is the same
every time and fits CI's budget.
"""

from __future__ import annotations

import time
from collections.abc import Iterator
from typing import Any

import pytest
import schemathesis
from hypothesis import HealthCheck, settings
from schemathesis.checks import not_a_server_error
from schemathesis.specs.openapi.checks import positive_data_acceptance

from drydock.api import app
from tests.conftest import WorkerProcess

pytestmark = pytest.mark.fleet

# Fuzzed examples per operation; the examples and coverage phases add their own, each bounded by
# the operation's parameters. ~40 operations times this stays within CI's budget on two cores.
MAX_EXAMPLES = 25
SEED = 20261203

CONFIG = schemathesis.Config.from_dict(
    {
        "seed": SEED,
        "generation": {"max-examples": MAX_EXAMPLES, "deterministic": True},
        # A move without If-Match is 428 Precondition Required (RFC 6585): the answer for a
        # request that must be conditional, beside the 4xx schemathesis expects by default.
        "checks": {
            "missing_required_header": {"expected-statuses": [400, 401, 403, 406, 415, 422, 428]}
        },
    }
)
# GET /v1/stream is an endless event stream: a generated request would wait on it forever.
# tests/test_api_stream.py checks its refusals and its events instead.
schema = schemathesis.openapi.from_asgi("/openapi.json", app, config=CONFIG).exclude(
    path="/v1/stream"
)

# One operator token for the whole run: schemathesis applies it to cases it builds while
# collecting, before any test's store exists, so it cannot be one `drydock tokens create` makes.
# Each test stores its hash again after the fleet fixture empties the tables.
OPERATOR_TOKEN = "ddk_contract-" + "0" * 43


@schema.auth(refresh_interval=None, retry_on=[])
class OperatorToken:
    """An operator token (scope ``*``), sent as the bearer token the document declares."""

    def get(self, case: schemathesis.Case[Any], ctx: schemathesis.AuthContext) -> str:
        return OPERATOR_TOKEN

    def set(self, case: schemathesis.Case[Any], data: str, ctx: schemathesis.AuthContext) -> None:
        case.headers["Authorization"] = f"Bearer {data}"


@pytest.fixture(scope="module", autouse=True)
def drained_worker(session_worker: WorkerProcess, redis_server: str) -> Iterator[None]:
    """Afterwards, the jobs the run enqueued are gone from the queues and the shared worker has
    finished the few it had taken, so later tests find it idle."""
    yield
    import redis

    from tests.conftest import QUEUE_KEYS
    from workers.app import app as celery

    broker = redis.Redis.from_url(redis_server)
    broker.delete(*QUEUE_KEYS)
    broker.close()
    inspect = celery.control.inspect(destination=[session_worker.hostname], timeout=1)
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        busy = [*((inspect.active() or {}).values()), *((inspect.reserved() or {}).values())]
        if not any(busy):
            return
        time.sleep(0.5)


@pytest.fixture
def operator_token(fleet: WorkerProcess) -> None:
    from models import tokens
    from models.db import session_scope
    from models.tokens import ApiToken

    with session_scope() as session:
        session.add(
            ApiToken(
                name="contract",
                token_hash=tokens.hash_token(OPERATOR_TOKEN),
                scopes=["*"],
                created_by="test",
            )
        )


@schema.parametrize()
@settings(
    max_examples=MAX_EXAMPLES,
    derandomize=True,
    deadline=None,
    database=None,
    suppress_health_check=list(HealthCheck),
)
def test_the_api_keeps_its_documented_contract(
    case: schemathesis.Case[Any], operator_token: None
) -> None:
    response = case.call()
    excluded: list[Any] = []
    if case.operation.path == "/health/fleet" and response.status_code == 503:
        # The documented answer of an unhealthy fleet (the tests run no Beat and no worker on
        # the private queue), not a server fault; its body is still checked as FleetHealth.
        excluded.append(not_a_server_error)
    if _refused_by_a_validator(response):
        # Payload and playbook models (tasks/) check some fields with Python validators whose
        # rules their JSON Schema does not state (a digest's form, a platform's, unique step
        # names, the structure of ansible plays). Such a refusal names the field and the rule;
        # it is the schema that says too little, and only moving the rules into the models'
        # field constraints (in tasks/) can make it say them.
        excluded.append(positive_data_acceptance)
    case.validate_response(response, excluded_checks=excluded)


def _refused_by_a_validator(response: Any) -> bool:
    """A 422 whose every problem is a ValueError raised by a model's validator."""
    if response.status_code != 422:
        return False
    problems = response.json()["detail"]
    return bool(problems) and all(p["msg"].startswith("Value error, ") for p in problems)

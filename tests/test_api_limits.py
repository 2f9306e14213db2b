"""What the HTTP API refuses, and how: NUL characters wherever they come in, bounds on every
parameter, bodies over the size limit, bodies that are not JSON; and the same refusals from
Python's ``enqueue``. Against the real store, broker and worker: nothing refused is stored."""

from __future__ import annotations

import uuid
from collections.abc import Iterator
from typing import Any

import pytest
from fastapi.testclient import TestClient
from sqlalchemy import text

from tests.conftest import WorkerProcess
from tests.test_api import bearer, make_token

pytestmark = pytest.mark.fleet

NUL_PROBLEM = "must not contain the NUL character (\\u0000)"


@pytest.fixture
def api(fleet: WorkerProcess) -> Iterator[TestClient]:
    from drydock.api import app

    with TestClient(app) as client:
        yield client


@pytest.fixture
def operator(api: TestClient) -> dict[str, str]:
    return bearer(make_token("operator", "*"))


@pytest.fixture
def small_limit(monkeypatch: pytest.MonkeyPatch) -> Iterator[int]:
    """DRYDOCK_MAX_PAYLOAD_BYTES at its minimum, 1 KiB, for this test only."""
    from kernel.settings import get_settings

    monkeypatch.setenv("DRYDOCK_MAX_PAYLOAD_BYTES", "1024")
    get_settings.cache_clear()
    try:
        yield 1024
    finally:
        monkeypatch.undo()
        get_settings.cache_clear()


def stored_jobs() -> int:
    from models.db import session_scope

    with session_scope() as session:
        return int(session.execute(text("SELECT count(*) FROM jobs")).scalar_one())


def problems(response: Any) -> dict[str, tuple[list[Any], str]]:
    """The 422's problems by field: (loc, msg)."""
    assert response.status_code == 422, response.text
    return {p["field"]: (p["loc"], p["msg"]) for p in response.json()["detail"]}


# ---- NUL characters ----------------------------------------------------------------------------


def test_nul_in_a_payload_is_refused_naming_the_field_and_nothing_is_stored(
    api: TestClient, operator: dict[str, str]
) -> None:
    for payload, field, loc in [
        ({"message": "a\x00b"}, "message", ["body", "message"]),
        ({"data": {"deep": ["ok", "x\x00"]}}, "data.deep.1", ["body", "data", "deep", 1]),
        ({"data": {"k\x00ey": 1}}, "data.k\\u0000ey", ["body", "data", "k\\u0000ey"]),
    ]:
        response = api.post("/v1/jobs/builds.canary", json=payload, headers=operator)
        found = problems(response)
        assert set(found) == {field}, response.text
        assert found[field][0] == loc
        assert NUL_PROBLEM in found[field][1]
    assert stored_jobs() == 0


def test_nul_in_other_bodies_headers_and_path_parameters_is_refused(
    api: TestClient, operator: dict[str, str]
) -> None:
    decide = api.post(
        "/v1/policy/decide",
        json={"digest": "sha256:\x00", "tier": "t", "asset": "a", "tenant": "acme"},
        headers=operator,
    )
    assert problems(decide)["digest"] == (["body", "digest"], NUL_PROBLEM)
    run = api.post(
        "/v1/remediation/runs",
        json={"asset": "vm", "playbook": "restart", "reason": "why\x00", "tenant": "acme"},
        headers=operator,
    )
    assert problems(run)["reason"][1] == NUL_PROBLEM
    for header in ("Idempotency-Key", "X-Drydock-Target-Asset", "X-Drydock-Approval"):
        response = api.post(
            "/v1/jobs/builds.canary", json={}, headers={**operator, header: "a\x00b"}
        )
        assert problems(response)[header] == (["header", header], NUL_PROBLEM)
    named = api.get("/v1/remediation/playbooks/a%00b?tenant=acme", headers=operator)
    assert problems(named)["name"] == (["path", "name"], NUL_PROBLEM)
    assert stored_jobs() == 0


@pytest.mark.parametrize(
    "path",
    [
        "/v1/jobs?task=a%00b",
        "/v1/policy/decisions?tenant=a%00b",
        "/v1/evaluation/certifications?digest=a%00b",
        "/v1/evaluation/certifications?tier=a%00b",
        "/v1/remediation/playbooks?tenant=a%00b",
        "/v1/remediation/playbooks/restart?tenant=a%00b",
        "/v1/remediation/runs?tenant=a%00b",
        "/v1/remediation/runs?asset=a%00b",
    ],
)
def test_nul_in_a_query_filter_is_refused_naming_it(
    api: TestClient, operator: dict[str, str], path: str
) -> None:
    name = path.split("?")[1].split("=")[0]
    assert problems(api.get(path, headers=operator))[name] == (["query", name], NUL_PROBLEM)


# ---- bounds ------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "path, name",
    [
        ("/v1/dead-letters?offset=9223372036854775808", "offset"),
        ("/v1/dead-letters?offset=1000001", "offset"),
        ("/v1/dead-letters?offset=-1", "offset"),
        ("/v1/dead-letters?limit=0", "limit"),
        ("/v1/jobs?limit=501", "limit"),
        ("/v1/jobs?task=" + "t" * 201, "task"),
        ("/v1/jobs?queue=nope", "queue"),
        ("/v1/jobs?cursor=garbage", "cursor"),
        ("/v1/remediation/playbooks/restart?tenant=acme&version=2147483648", "version"),
        ("/v1/remediation/runs?tenant=" + "t" * 101, "tenant"),
        ("/v1/remediation/runs?tenant=%20acme", "tenant"),
        ("/v1/evaluation/certifications?status=nope", "status"),
    ],
)
def test_parameters_out_of_bounds_are_refused_naming_them(
    api: TestClient, operator: dict[str, str], path: str, name: str
) -> None:
    found = problems(api.get(path, headers=operator))
    assert set(found) == {name}
    assert found[name][0] == ["query", name]


def test_an_operator_token_must_name_the_tenant(api: TestClient, operator: dict[str, str]) -> None:
    for response in (
        api.get("/v1/remediation/playbooks/restart", headers=operator),
        api.post(
            "/v1/policy/decide",
            json={"digest": "sha256:x", "tier": "t", "asset": "a"},
            headers=operator,
        ),
    ):
        assert response.status_code == 403, response.text
        assert "name the tenant" in response.json()["detail"]


# ---- bodies ------------------------------------------------------------------------------------


def test_a_body_over_the_limit_is_refused_before_it_is_read(
    api: TestClient, operator: dict[str, str], small_limit: int
) -> None:
    from drydock.api.edge import FRAMING_BYTES

    edge = small_limit + FRAMING_BYTES
    huge = b'{"message": "' + b"x" * edge + b'"}'
    declared = api.post(
        "/v1/jobs/builds.canary",
        content=huge,
        headers={**operator, "Content-Type": "application/json"},
    )
    assert declared.status_code == 413, declared.text
    assert str(edge) in declared.json()["detail"]

    def chunks() -> Iterator[bytes]:
        # No Content-Length: the edge counts, and stops reading at the limit.
        for start in range(0, len(huge), 4096):
            yield huge[start : start + 4096]

    chunked = api.post(
        "/v1/jobs/builds.canary",
        content=chunks(),
        headers={**operator, "Content-Type": "application/json"},
    )
    assert chunked.status_code == 413, chunked.text
    # Every route, not just the enqueue ones.
    playbook = api.post(
        "/v1/remediation/playbooks?tenant=acme",
        content=huge,
        headers={**operator, "Content-Type": "application/json"},
    )
    assert playbook.status_code == 413
    assert stored_jobs() == 0


def test_a_payload_over_the_limit_is_413_with_its_size(
    api: TestClient, operator: dict[str, str], small_limit: int
) -> None:
    # Under the edge's limit (the payload plus framing), over the payload's own.
    payload = {"data": {"blob": "x" * (small_limit + 10)}}
    response = api.post("/v1/jobs/builds.canary", json=payload, headers=operator)
    assert response.status_code == 413, response.text
    assert "DRYDOCK_MAX_PAYLOAD_BYTES" in response.json()["detail"]
    assert f"limit of {small_limit} bytes" in response.json()["detail"]
    assert stored_jobs() == 0


def test_bodies_that_are_not_json_get_415_or_422_with_a_clear_message(
    api: TestClient, operator: dict[str, str]
) -> None:
    text_body = api.post(
        "/v1/jobs/builds.canary",
        content=b"message=hi",
        headers={**operator, "Content-Type": "text/plain"},
    )
    assert text_body.status_code == 415
    assert "must be JSON" in text_body.json()["detail"]
    for raw in (b'{"message": ', b"\xff\xfe not utf-8", b"NaN", b"[" * 100 + b"]" * 100):
        response = api.post(
            "/v1/jobs/builds.canary",
            content=raw,
            headers={**operator, "Content-Type": "application/json"},
        )
        assert response.status_code == 422, (raw, response.text)
        assert response.json()["detail"][0]["loc"][0] == "body"
    # Types are JSON's, not coerced: "5" is not a number, 1 is not true; 5.0 is 5.
    strict = api.post(
        "/v1/jobs/builds.canary",
        json={"sleep_seconds": "5", "fail_permanently": 1},
        headers=operator,
    )
    assert set(problems(strict)) == {"sleep_seconds", "fail_permanently"}
    assert stored_jobs() == 0
    integral = api.post("/v1/jobs/builds.canary", json={"fail_attempts": 0.0}, headers=operator)
    assert integral.status_code == 202, integral.text


def test_numbers_beyond_64_bits_are_refused(api: TestClient, operator: dict[str, str]) -> None:
    response = api.post("/v1/jobs/builds.canary", json={"data": {"n": 2**64}}, headers=operator)
    assert problems(response)["data.n"][0] == ["body", "data", "n"]
    assert stored_jobs() == 0


# ---- routing -----------------------------------------------------------------------------------


def test_405_names_every_method_the_path_serves(api: TestClient, operator: dict[str, str]) -> None:
    for method, path, allowed in [
        ("OPTIONS", "/v1/remediation/playbooks", "GET, POST"),
        ("DELETE", f"/v1/jobs/{uuid.uuid4()}", "GET"),
        ("GET", "/v1/jobs/builds.canary", "POST"),
        ("PUT", "/v1/jobs", "GET"),
    ]:
        response = api.request(method, path, headers=operator)
        assert response.status_code == 405, (method, path, response.text)
        assert response.headers["Allow"] == allowed
    # A task that does not exist is not a method problem: 404, listing those that do.
    unknown = api.post("/v1/jobs/builds.nope", json={}, headers=operator)
    assert unknown.status_code == 404 and "builds.canary" in unknown.json()["detail"]


# ---- Python's enqueue --------------------------------------------------------------------------


def test_enqueue_refuses_nul_and_oversize_payloads_and_stores_nothing(
    fleet: WorkerProcess, small_limit: int
) -> None:
    from drydock import PayloadInvalidError, enqueue
    from kernel.errors import PayloadTooLargeError

    with pytest.raises(PayloadInvalidError) as invalid:
        enqueue("builds.canary", {"message": "a\x00b", "data": {"k": ["\x00"]}})
    assert {(p.field, p.problem) for p in invalid.value.problems} == {
        ("message", NUL_PROBLEM),
        ("data.k.0", NUL_PROBLEM),
    }
    with pytest.raises(PayloadInvalidError) as key:
        enqueue("builds.canary", {}, idempotency_key="k\x00")
    assert [p.field for p in key.value.problems] == ["idempotency_key"]
    with pytest.raises(PayloadTooLargeError) as large:
        enqueue("builds.canary", {"data": {"blob": "x" * 2000}})
    assert large.value.limit_bytes == small_limit and large.value.size_bytes > small_limit
    assert stored_jobs() == 0

"""The HTTP API, driven through FastAPI's test client against the real store, broker and worker."""

from __future__ import annotations

import hashlib
import uuid
from collections.abc import Iterator
from typing import Any

import pytest
from fastapi.testclient import TestClient
from sqlalchemy import text

from tests.conftest import WorkerProcess, wait_for_job

pytestmark = pytest.mark.fleet


@pytest.fixture
def api(fleet: WorkerProcess) -> Iterator[TestClient]:
    from drydock.api import app

    with TestClient(app) as client:
        yield client


def make_token(name: str, *scopes: str, tenant: str | None = None) -> str:
    """A new token's plaintext: an operator's, or bound to ``tenant``."""
    from catalog import CATALOG
    from models import tokens
    from models.db import session_scope

    with session_scope() as session:
        _, plaintext = tokens.create_token(
            session,
            name=name,
            scopes=list(scopes),
            known_tasks=CATALOG,
            created_by="test",
            tenant=tenant,
        )
    return plaintext


def bearer(token: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {token}"}


def test_every_v1_route_needs_a_valid_unrevoked_token(api: TestClient) -> None:
    from models import tokens
    from models.db import session_scope

    job_id = uuid.uuid4()
    routes = [
        ("POST", "/v1/jobs/builds.canary"),
        ("GET", f"/v1/jobs/{job_id}"),
        ("GET", "/v1/jobs"),
        ("GET", "/v1/tasks"),
        ("GET", "/v1/dead-letters"),
        ("GET", f"/v1/dead-letters/{job_id}"),
        ("POST", f"/v1/dead-letters/{job_id}/replay"),
    ]
    token = make_token("ci", "*")
    with session_scope() as session:
        assert tokens.revoke_token(session, "ci")
    for method, path in routes:
        for headers in (
            {},
            bearer("ddk_not-a-real-token"),
            bearer(token),
            {"Authorization": "Basic x"},
        ):
            response = api.request(method, path, headers=headers)
            assert response.status_code == 401, (method, path, headers, response.text)
            assert response.headers["WWW-Authenticate"].startswith("Bearer")
    # Nothing was enqueued by any of those.
    with session_scope() as session:
        assert session.execute(text("SELECT count(*) FROM jobs")).scalar_one() == 0


def test_tokens_are_stored_only_as_a_hash(api: TestClient) -> None:
    from models.db import session_scope

    token = make_token("hashed", "builds.*")
    with session_scope() as session:
        row = session.execute(text("SELECT * FROM api_tokens WHERE name = 'hashed'")).one()
    assert token not in [str(value) for value in row]
    assert row.token_hash == hashlib.sha256(token.encode()).hexdigest()


def test_enqueue_over_http_then_follow_the_job_to_its_result(api: TestClient) -> None:
    token = make_token("builder", "builds.*")
    response = api.post(
        "/v1/jobs/builds.canary",
        json={"message": "over http", "data": {"api_token": "hunter2"}},
        headers=bearer(token),
    )
    assert response.status_code == 202, response.text
    body = response.json()
    assert body["created"] is True and body["queue"] == "builds"
    assert response.headers["Location"] == f"/v1/jobs/{body['id']}"

    assert wait_for_job(uuid.UUID(body["id"])).status == "succeeded"
    job = api.get(f"/v1/jobs/{body['id']}", headers=bearer(token)).json()
    assert job["result"]["message"] == "over http"
    assert job["attempts"] == 1
    assert job["enqueued_by"] == "api:builder"
    assert [e["kind"] for e in job["events"]] == ["enqueued", "started", "succeeded"]
    # Secrets are redacted in what the API returns, as everywhere else.
    assert "hunter2" not in response.text + str(job)
    assert job["payload"]["data"]["api_token"] == "[REDACTED]"


def test_idempotency_key_returns_the_first_job_and_refuses_a_different_payload(
    api: TestClient,
) -> None:
    token = make_token("idem", "builds.*")
    headers = {**bearer(token), "Idempotency-Key": "order-7"}
    first = api.post("/v1/jobs/builds.canary", json={"message": "a"}, headers=headers)
    again = api.post("/v1/jobs/builds.canary", json={"message": "a"}, headers=headers)
    assert (first.status_code, again.status_code) == (202, 200)
    assert again.json()["id"] == first.json()["id"] and again.json()["created"] is False

    conflict = api.post("/v1/jobs/builds.canary", json={"message": "b"}, headers=headers)
    assert conflict.status_code == 409
    assert "order-7" in conflict.json()["detail"]
    wait_for_job(uuid.UUID(first.json()["id"]))


def test_bad_payloads_get_422_with_each_field_path(api: TestClient) -> None:
    token = make_token("validator", "*")
    response = api.post(
        "/v1/jobs/builds.canary",
        json={"message": 5, "sleep_seconds": -1, "data": {"ok": 1}, "bogus": True},
        headers=bearer(token),
    )
    assert response.status_code == 422
    fields = {problem["field"]: problem["msg"] for problem in response.json()["detail"]}
    assert set(fields) == {"message", "sleep_seconds", "bogus"}
    assert "greater than or equal to 0" in fields["sleep_seconds"]
    assert "Extra inputs" in fields["bogus"]
    assert {tuple(p["loc"]) for p in response.json()["detail"]} >= {("body", "sleep_seconds")}

    not_an_object = api.post("/v1/jobs/builds.canary", json=[1, 2], headers=bearer(token))
    assert not_an_object.status_code == 422
    long_key = {**bearer(token), "Idempotency-Key": "k" * 201}
    assert api.post("/v1/jobs/builds.canary", json={}, headers=long_key).status_code == 422

    unknown = api.post("/v1/jobs/builds.nope", json={}, headers=bearer(token))
    assert unknown.status_code == 404
    assert "builds.canary" in unknown.json()["detail"]  # it lists the tasks that exist


def test_scopes_bound_what_a_token_enqueues_reads_and_replays(api: TestClient) -> None:
    builds = make_token("builds-only", "builds.*")
    pushes = make_token("pushes-only", "pushes.canary")

    refused = api.post("/v1/jobs/pushes.canary", json={}, headers=bearer(builds))
    assert refused.status_code == 403
    assert "builds-only" in refused.json()["detail"]

    mine = api.post("/v1/jobs/pushes.canary", json={}, headers=bearer(pushes)).json()["id"]
    wait_for_job(uuid.UUID(mine))
    # Another token's job does not exist as far as this token can tell.
    assert api.get(f"/v1/jobs/{mine}", headers=bearer(builds)).status_code == 404
    assert api.get(f"/v1/jobs/{mine}", headers=bearer(pushes)).status_code == 200
    listed = api.get("/v1/jobs", headers=bearer(builds)).json()["jobs"]
    assert mine not in [job["id"] for job in listed]
    tasks = [t["name"] for t in api.get("/v1/tasks", headers=bearer(builds)).json()]
    assert sorted(tasks) == ["builds.build_image", "builds.canary"]

    dead = api.post(
        "/v1/jobs/pushes.canary", json={"fail_permanently": True}, headers=bearer(pushes)
    ).json()["id"]
    wait_for_job(uuid.UUID(dead))
    assert api.get(f"/v1/dead-letters/{dead}", headers=bearer(builds)).status_code == 404
    replay = api.post(f"/v1/dead-letters/{dead}/replay", headers=bearer(builds))
    assert replay.status_code == 404
    assert api.get("/v1/dead-letters", headers=bearer(builds)).json() == []


def test_listing_filters_and_pages_without_gaps_or_repeats(api: TestClient) -> None:
    token = make_token("lister", "*")
    ids = []
    for n in range(5):
        response = api.post(
            "/v1/jobs/builds.canary", json={"message": f"m{n}"}, headers=bearer(token)
        )
        ids.append(response.json()["id"])
    dead = api.post(
        "/v1/jobs/pushes.canary", json={"fail_permanently": True}, headers=bearer(token)
    ).json()["id"]
    for job_id in [*ids, dead]:
        wait_for_job(uuid.UUID(job_id))

    seen: list[str] = []
    cursor = None
    while True:
        params: dict[str, Any] = {"task": "builds.canary", "limit": 2}
        if cursor:
            params["cursor"] = cursor
        page = api.get("/v1/jobs", params=params, headers=bearer(token)).json()
        assert len(page["jobs"]) <= 2
        seen += [job["id"] for job in page["jobs"]]
        cursor = page["next_cursor"]
        if cursor is None:
            break
    assert sorted(seen) == sorted(ids) and len(seen) == len(set(seen))

    failed = api.get("/v1/jobs", params={"status": "dead_lettered"}, headers=bearer(token))
    assert [job["id"] for job in failed.json()["jobs"]] == [dead]
    assert api.get("/v1/jobs", params={"status": "nope"}, headers=bearer(token)).status_code == 422
    assert api.get("/v1/jobs", params={"queue": "nope"}, headers=bearer(token)).status_code == 422
    bad_cursor = api.get("/v1/jobs", params={"cursor": "garbage"}, headers=bearer(token))
    assert bad_cursor.status_code == 422


def test_dead_letters_list_show_and_replay_once(api: TestClient) -> None:
    token = make_token("operator", "builds.*")
    dead = api.post(
        "/v1/jobs/builds.canary", json={"fail_permanently": True}, headers=bearer(token)
    ).json()["id"]
    wait_for_job(uuid.UUID(dead))

    listed = api.get("/v1/dead-letters", headers=bearer(token)).json()
    assert [letter["job_id"] for letter in listed] == [dead]
    shown = api.get(f"/v1/dead-letters/{dead}", headers=bearer(token)).json()
    assert shown["reason"] == "permanent_error"
    assert "fail permanently" in shown["message"]

    replay = api.post(f"/v1/dead-letters/{dead}/replay", headers=bearer(token))
    assert replay.status_code == 202, replay.text
    new_id = replay.json()["id"]
    assert new_id != dead
    replayed = wait_for_job(uuid.UUID(new_id))
    assert replayed.replay_of == uuid.UUID(dead)
    again = api.post(f"/v1/dead-letters/{dead}/replay", headers=bearer(token))
    assert again.status_code == 409
    # The replay failed the same way: its own dead letter is listed, the replayed one is not.
    waiting = [x["job_id"] for x in api.get("/v1/dead-letters", headers=bearer(token)).json()]
    assert waiting == [new_id]
    with_replayed = api.get(
        "/v1/dead-letters", params={"include_replayed": True}, headers=bearer(token)
    ).json()
    original = next(x for x in with_replayed if x["job_id"] == dead)
    assert original["replayed_by"] == "api:operator" and original["replay_job_id"] == new_id


def test_openapi_publishes_the_routes_and_every_payload_schema(api: TestClient) -> None:
    from catalog import CATALOG

    document = api.get("/openapi.json").json()
    paths = document["paths"]
    assert {"/v1/jobs/{job_id}", "/v1/jobs", "/health/fleet", "/metrics"} <= set(paths)
    schemas = document["components"]["schemas"]
    for name, spec in CATALOG.items():
        assert set(schemas[f"payload.{name}"]["properties"]) == set(spec.payload.model_fields)
        # Each task has its own route, whose body is that task's payload and no other's.
        body = paths[f"/v1/jobs/{name}"]["post"]["requestBody"]
        assert body["content"]["application/json"]["schema"] == {
            "$ref": f"#/components/schemas/payload.{name}"
        }
        assert body["required"] == bool(spec.payload.model_json_schema().get("required"))
    # A task's name and a job's id never share a path template.
    assert "/v1/jobs/{task_name}" not in paths
    # Nested models of a payload (a build's push target) are published with it.
    assert {"PushTarget", "CachePolicy"} <= set(schemas)
    assert api.get("/health/live").json() == {"status": "ok"}

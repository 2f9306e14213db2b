"""``/v1/builds`` and ``/v1/registry`` over HTTP, against the real store: pages of build runs and
registry events (keyed cursors), a run with its platforms and logs, capability scores, and who
sees what (scopes, tenants, operators), with credentials kept out of every answer.

Most rows are written with the ledger's own functions (``models.builds``, the telemetry's
``record``) or as the build task writes them; one run is made by a real ``builds.build_image``
job on the session worker.
"""

from __future__ import annotations

import uuid
from collections.abc import Iterator, Sequence
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest
from fastapi.testclient import TestClient

from models import builds as ledger
from models.anomaly import CapabilityScore
from models.builds import RegistryEventKind
from models.db import session_scope
from models.jobs import Job
from tests.conftest import TEST_BUILD_TIME_LIMIT, WorkerProcess, wait_for_job
from tests.test_api import bearer, make_token

pytestmark = pytest.mark.fleet

BASE = datetime(2026, 1, 1, 12, 0, tzinfo=UTC)
REPO_ACME = "https://git.example/acme/app.git"
REPO_GLOBEX = "https://git.example/globex/app.git"
REPO_SHARED = "https://git.example/oss/shared.git"
DIGEST = "sha256:" + "ab" * 32
INDEX_DIGEST = "sha256:" + "cd" * 32


@pytest.fixture
def api(clean_state: None) -> Iterator[TestClient]:
    from drydock.api import app

    with TestClient(app) as client:
        yield client


def token(name: str, *scopes: str, tenant: str | None = None) -> dict[str, str]:
    """A bearer header for a new token."""
    return bearer(make_token(name, *scopes, tenant=tenant))


def add_job(task: str = "builds.build_image", tenant: str | None = None) -> uuid.UUID:
    job_id = uuid.uuid4()
    with session_scope() as session:
        queue = task.split(".")[0]
        session.add(Job(id=job_id, task_name=task, queue=queue, payload={}, tenant=tenant))
    return job_id


def add_run(
    *,
    tenant: str | None,
    created_at: datetime = BASE,
    repository: str = REPO_ACME,
    status: str = "built",
    platforms: Sequence[str] = ("linux/amd64",),
    error: str | None = None,
    index_digest: str | None = None,
    registry: str | None = None,
) -> uuid.UUID:
    """A run of a new build job acting for ``tenant``, as ``ledger.open_run`` opens it, then
    dated and ended."""
    job_id = add_job(tenant=tenant)
    run_id = ledger.open_run(
        ledger.NewRun(
            job_id=job_id,
            repository_url=repository,
            revision="main",
            image="team/app",
            backend="buildah",
            platforms=list(platforms),
            push_target=(
                None
                if registry is None
                else {"registry": registry, "repository": "team/app", "tag": None}
            ),
        )
    )
    ledger.update_run(
        run_id,
        created_at=created_at,
        status=status,
        error=error,
        index_digest=index_digest,
        finished_at=created_at + timedelta(minutes=5),
    )
    return run_id


def job_of(run_id: uuid.UUID) -> uuid.UUID:
    with session_scope() as session:
        return ledger.get_run(session, run_id).job_id


def add_platform(
    run_id: uuid.UUID, platform: str, log: bytes | None, *, max_bytes: int = 1024, **values: Any
) -> None:
    """The platform's row as the build task leaves it, with its log kept as an artifact."""
    ledger.start_platform(run_id, platform, f"team/app:main-{platform.replace('/', '-')}")
    if log is not None:
        values["log_artifact_id"] = ledger.keep_artifact(
            job_of(run_id),
            kind="build_log",
            name=f"{platform.replace('/', '-')}.log",
            body=log,
            max_bytes=max_bytes,
        )
    ledger.update_platform(run_id, platform, status="built", **values)


def record_event(
    kind: RegistryEventKind, *, job_id: uuid.UUID, run_id: uuid.UUID | None, **fields: Any
) -> None:
    from tasks.pushes import telemetry

    telemetry.record(kind, job_id=job_id, run_id=run_id, **fields)


def pages(
    api: TestClient, path: str, key: str, headers: dict[str, str], **query: Any
) -> list[list[dict[str, Any]]]:
    """Every page of a listing, following next_cursor."""
    found = []
    cursor = None
    while True:
        params = {**query, **({"cursor": cursor} if cursor else {})}
        response = api.get(path, params=params, headers=headers)
        assert response.status_code == 200, response.text
        body = response.json()
        found.append(body[key])
        cursor = body["next_cursor"]
        if cursor is None:
            return found


# ---- build runs ------------------------------------------------------------------------------


def test_runs_are_listed_newest_first_a_page_at_a_time_without_repeat_or_gap(
    api: TestClient,
) -> None:
    # Three runs share a creation time: the id orders them, and no page boundary splits them
    # wrongly.
    times = [BASE + timedelta(minutes=m) for m in (0, 1, 1, 1, 2, 3, 4)]
    runs = [add_run(tenant="acme", created_at=at) for at in times]
    add_run(tenant="globex", created_at=BASE + timedelta(minutes=10))
    expected = [
        run
        for _, run in sorted(zip(times, runs, strict=True), key=lambda p: (-p[0].timestamp(), p[1]))
    ]
    acme = token("acme-reader", "builds.*", tenant="acme")

    got = pages(api, "/v1/builds/runs", "runs", acme, limit=3)
    assert [len(page) for page in got] == [3, 3, 1]
    listed = [uuid.UUID(run["id"]) for page in got for run in page]
    assert listed == expected

    # A run that arrives while a client pages is on no page after the first: nothing shifts.
    first = api.get("/v1/builds/runs", params={"limit": 3}, headers=acme).json()
    add_run(tenant="acme", created_at=BASE + timedelta(hours=1))
    rest = pages(api, "/v1/builds/runs", "runs", acme, limit=3, cursor=first["next_cursor"])
    after = [uuid.UUID(run["id"]) for page in rest for run in page]
    assert [uuid.UUID(r["id"]) for r in first["runs"]] + after == expected

    summary = first["runs"][0]
    assert summary["tenant"] == "acme" and summary["status"] == "built"
    assert summary["url"] == f"/v1/builds/runs/{summary['id']}"
    assert summary["created_at"].endswith("Z")

    failed = add_run(tenant="acme", status="failed", error="BuildStepFailedError: step 2")
    only = api.get("/v1/builds/runs", params={"status": "failed"}, headers=acme).json()
    assert [r["id"] for r in only["runs"]] == [str(failed)] and only["next_cursor"] is None


def test_a_run_shows_its_platforms_and_each_log_as_text_saying_whether_it_was_cut(
    api: TestClient,
) -> None:
    run_id = add_run(tenant="acme", platforms=["linux/amd64", "linux/arm/v7", "linux/arm64"])
    short = b"STEP 1/2: FROM scratch\nSTEP 2/2: COPY busybox /\n"
    long = b"".join(b"line %04d\n" % n for n in range(400))
    add_platform(
        run_id,
        "linux/amd64",
        short,
        image_id="sha256:img",
        size_bytes=1234,
        steps_total=2,
        steps_cached=1,
    )
    add_platform(run_id, "linux/arm/v7", long, max_bytes=1000)
    # Still building: no log yet.
    ledger.start_platform(run_id, "linux/arm64", "team/app:main-linux-arm64")
    acme = token("acme", "builds.build_image", tenant="acme")

    response = api.get(f"/v1/builds/runs/{run_id}", headers=acme)
    assert response.status_code == 200, response.text
    run = response.json()
    assert run["platforms"] == ["linux/amd64", "linux/arm/v7", "linux/arm64"]
    builds = {b["platform"]: b for b in run["platform_builds"]}
    assert builds["linux/amd64"]["log"] == {
        "url": f"/v1/builds/runs/{run_id}/logs/linux-amd64",
        "size_bytes": len(short),
        "truncated": False,
    }
    assert builds["linux/amd64"]["steps_cached"] == 1
    assert builds["linux/arm/v7"]["log"]["url"].endswith("/logs/linux-arm-v7")
    assert builds["linux/arm/v7"]["log"]["truncated"] is True
    assert builds["linux/arm64"]["log"] is None and builds["linux/arm64"]["status"] == "building"

    whole = api.get(builds["linux/amd64"]["log"]["url"], headers=acme)
    assert whole.status_code == 200
    assert whole.headers["content-type"] == "text/plain; charset=utf-8"
    assert whole.headers["X-Drydock-Log-Truncated"] == "false"
    assert whole.content == short

    cut = api.get(builds["linux/arm/v7"]["log"]["url"], headers=acme)
    assert cut.headers["X-Drydock-Log-Truncated"] == "true"
    assert len(cut.content) == 1000 and long.endswith(cut.content)  # the tail is kept

    for missing in ("linux-arm64", "linux-386", "windows-amd64"):
        answer = api.get(f"/v1/builds/runs/{run_id}/logs/{missing}", headers=acme)
        assert answer.status_code == 404, missing
        assert answer.headers["content-type"] == "application/json"
    assert api.get(f"/v1/builds/runs/{uuid.uuid4()}", headers=acme).status_code == 404


def test_another_tenants_run_and_a_token_without_the_build_scope_see_nothing(
    api: TestClient,
) -> None:
    run_id = add_run(tenant="acme")
    add_platform(run_id, "linux/amd64", b"secret-free log\n")
    paths = [f"/v1/builds/runs/{run_id}", f"/v1/builds/runs/{run_id}/logs/linux-amd64"]
    readers = {
        "globex": token("globex", "builds.*", tenant="globex"),
        # The push task's scope, not the build's: a run is seen through its build job.
        "pusher": token("pusher", "pushes.*"),
        "pusher-acme": token("pusher-acme", "pushes.*", tenant="acme"),
    }
    for name, headers in readers.items():
        for path in paths:
            answer = api.get(path, headers=headers)
            assert answer.status_code == 404, (name, path, answer.text)
            # As if it did not exist: the same answer as for a run that does not.
            assert answer.json() == {"detail": f"no build run {run_id}"}
        listed = api.get("/v1/builds/runs", headers=headers)
        assert listed.status_code == 200 and listed.json()["runs"] == []
    for headers in (token("acme", "builds.*", tenant="acme"), token("operator", "*")):
        for path in paths:
            assert api.get(path, headers=headers).status_code == 200


def test_an_operator_reads_one_tenant_with_tenant_and_a_tenant_token_only_its_own(
    api: TestClient,
) -> None:
    acme_run = add_run(tenant="acme", created_at=BASE)
    globex_run = add_run(tenant="globex", created_at=BASE + timedelta(minutes=1))
    operator_run = add_run(tenant=None, created_at=BASE + timedelta(minutes=2))
    operator = token("operator", "builds.*")

    def listed(headers: dict[str, str], **query: Any) -> list[str]:
        response = api.get("/v1/builds/runs", params=query, headers=headers)
        assert response.status_code == 200, response.text
        return [run["id"] for run in response.json()["runs"]]

    assert listed(operator) == [str(operator_run), str(globex_run), str(acme_run)]
    assert listed(operator, tenant="acme") == [str(acme_run)]
    assert listed(operator, tenant="initech") == []
    acme = token("acme", "builds.*", tenant="acme")
    assert listed(acme) == [str(acme_run)]
    assert listed(acme, tenant="acme") == [str(acme_run)]
    refused = api.get("/v1/builds/runs", params={"tenant": "globex"}, headers=acme)
    assert refused.status_code == 403 and "acme" in refused.json()["detail"]


@pytest.mark.parametrize(
    ("path", "query", "field"),
    [
        ("/v1/builds/runs", {"limit": 0}, "limit"),
        ("/v1/builds/runs", {"limit": 501}, "limit"),
        ("/v1/builds/runs", {"limit": "many"}, "limit"),
        ("/v1/builds/runs", {"status": "sunk"}, "status"),
        ("/v1/builds/runs", {"cursor": "yesterday"}, "cursor"),
        ("/v1/builds/runs", {"tenant": " padded"}, "tenant"),
        ("/v1/registry/events", {"cursor": "-1"}, "cursor"),
        ("/v1/registry/events", {"kind": "push_exploded"}, "kind"),
        ("/v1/registry/events", {"run_id": "not-a-uuid"}, "run_id"),
        ("/v1/registry/events", {"limit": 10_000}, "limit"),
        ("/v1/registry/capability-scores", {"metric": "vibes"}, "metric"),
        ("/v1/registry/capability-scores", {"repository": ""}, "repository"),
        ("/v1/registry/capability-scores", {"offset": -1}, "offset"),
        (f"/v1/builds/runs/{uuid.UUID(int=1)}/logs/linux_amd64", {}, "platform"),
        ("/v1/builds/runs/not-a-run", {}, "run_id"),
    ],
)
def test_a_bad_parameter_is_a_422_problem_naming_it(
    api: TestClient, path: str, query: dict[str, Any], field: str
) -> None:
    response = api.get(path, params=query, headers=token("operator", "*"))
    assert response.status_code == 422, response.text
    body = response.json()
    assert [p["field"] for p in body["detail"]] == [field]
    assert body["message"].startswith("invalid request: ")


def test_credentials_in_stored_urls_and_errors_are_not_shown(api: TestClient) -> None:
    # Enqueue refuses such URLs (catalog.builds) and the task masks passwords before storing:
    # rows written before those rules, or by a path that missed them, are masked on the way out.
    with_token = add_run(tenant="acme", repository="https://ghp_t0ken@git.example/acme/a.git")
    with_password = add_run(
        tenant="acme",
        repository="https://deploy:hunter2@git.example/acme/b.git",
        status="failed",
        error="GitFetchError: git fetch of https://deploy:hunter2@git.example/acme/b.git failed",
        created_at=BASE + timedelta(minutes=1),
    )
    add_platform(
        with_password,
        "linux/amd64",
        b"fetching https://deploy:hunter2@git.example/acme/b.git\n"
        b"Authorization: Bearer abcdefghijklmnop\n",
        error="pull of https://deploy:hunter2@registry.example/x failed",
    )
    ssh_run = add_run(
        tenant="acme",
        repository="ssh://git@git.example/acme/c.git",
        created_at=BASE + timedelta(minutes=2),
    )
    acme = token("acme", "builds.*", tenant="acme")

    listing = api.get("/v1/builds/runs", headers=acme)
    shown = {run["id"]: run["repository_url"] for run in listing.json()["runs"]}
    assert shown[str(with_token)] == "https://[REDACTED]@git.example/acme/a.git"
    assert shown[str(with_password)] == "https://deploy:[REDACTED]@git.example/acme/b.git"
    # An ssh user is not a secret.
    assert shown[str(ssh_run)] == "ssh://git@git.example/acme/c.git"
    detail = api.get(f"/v1/builds/runs/{with_password}", headers=acme)
    log = api.get(f"/v1/builds/runs/{with_password}/logs/linux-amd64", headers=acme)
    for text in (listing.text, detail.text, log.text):
        assert "hunter2" not in text and "ghp_t0ken" not in text
        assert "abcdefghijklmnop" not in text
    assert "[REDACTED]" in detail.json()["error"]
    assert "[REDACTED]" in detail.json()["platform_builds"][0]["error"]


# ---- registry events -------------------------------------------------------------------------


def push_events(run_id: uuid.UUID, count: int, platform: str = "linux/amd64") -> uuid.UUID:
    """A push job of the run (a chord member: it acts for no tenant) and its events."""
    push_job = add_job("pushes.push_image", tenant=None)
    for attempt in range(1, count + 1):
        record_event(
            RegistryEventKind.PUSH_STARTED,
            job_id=push_job,
            run_id=run_id,
            platform=platform,
            target=f"registry.example/team/app:main-{attempt}",
            attempt=attempt,
            backend="buildah",
            authenticated=True,
        )
    return push_job


def test_registry_events_page_newest_first_and_follow_the_builds_tenant(
    api: TestClient,
) -> None:
    acme_run = add_run(tenant="acme")
    globex_run = add_run(tenant="globex")
    acme_push = push_events(acme_run, 7)
    push_events(globex_run, 2)
    prune_job = add_job("pushes.prune_tags", tenant=None)
    record_event(
        RegistryEventKind.TAG_DELETED,
        job_id=prune_job,
        run_id=None,
        platform=None,
        repository="team/app",
        digest=DIGEST,
        tags=["old"],
    )
    acme = token("acme", "pushes.*", tenant="acme")

    got = pages(api, "/v1/registry/events", "events", acme, limit=3)
    assert [len(page) for page in got] == [3, 3, 1]
    events = [event for page in got for event in page]
    ids = [event["id"] for event in events]
    assert ids == sorted(ids, reverse=True) and len(set(ids)) == 7
    # The push job acts for no tenant: its events are the tenant's of the build they push.
    assert {(e["run_id"], e["job_id"]) for e in events} == {(str(acme_run), str(acme_push))}
    assert events[0]["kind"] == "push_started" and events[0]["detail"]["attempt"] == 7
    assert events[0]["schema_version"] == 1 and events[0]["at"].endswith("Z")

    operator = token("operator", "pushes.*")
    everything = api.get("/v1/registry/events", params={"limit": 500}, headers=operator).json()
    assert len(everything["events"]) == 10 and everything["next_cursor"] is None
    of_globex = api.get("/v1/registry/events", params={"tenant": "globex"}, headers=operator)
    assert {e["run_id"] for e in of_globex.json()["events"]} == {str(globex_run)}
    pruned = api.get("/v1/registry/events", params={"kind": "tag_deleted"}, headers=operator)
    assert [e["job_id"] for e in pruned.json()["events"]] == [str(prune_job)]
    # A prune acts for no tenant: no tenant token sees it.
    assert (
        api.get("/v1/registry/events", params={"kind": "tag_deleted"}, headers=acme).json()[
            "events"
        ]
        == []
    )
    by_run = api.get("/v1/registry/events", params={"run_id": str(globex_run)}, headers=acme)
    assert by_run.json()["events"] == []
    by_job = api.get(
        "/v1/registry/events", params={"job_id": str(acme_push), "limit": 2}, headers=acme
    ).json()
    assert len(by_job["events"]) == 2 and by_job["next_cursor"] == str(by_job["events"][1]["id"])
    # Events are seen through their own job's task: a builds-only token sees none.
    builds_only = token("builder", "builds.*", tenant="acme")
    assert api.get("/v1/registry/events", headers=builds_only).json()["events"] == []


def test_a_registry_event_detail_shows_no_credential(api: TestClient) -> None:
    run_id = add_run(tenant="acme", registry="registry.example")
    push_job = add_job("pushes.push_image")
    # The refresh's error is the provider's message as it came: it may quote what it ran.
    record_event(
        RegistryEventKind.AUTH_REFRESH,
        job_id=push_job,
        run_id=run_id,
        platform="linux/amd64",
        registry="registry.example",
        provider="command",
        outcome="unavailable",
        error="helper said: https://robot:s3cr3t-pass@registry.example/token "
        "Authorization: Bearer eyJhbGciOiJIUzI1NiJ9.payload",
    )
    record_event(
        RegistryEventKind.TAG_FAILED,
        job_id=push_job,
        run_id=run_id,
        platform="linux/amd64",
        target="registry.example/team/app:main",
        error="tag failed: Basic dXNlcjpodW50ZXIy",
    )
    response = api.get("/v1/registry/events", headers=token("acme", "pushes.*", tenant="acme"))
    assert response.status_code == 200, response.text
    for secret in ("s3cr3t-pass", "eyJhbGciOiJIUzI1NiJ9", "dXNlcjpodW50ZXIy"):
        assert secret not in response.text
    refresh = next(e for e in response.json()["events"] if e["kind"] == "auth_refresh")
    assert refresh["detail"]["provider"] == "command" and "[REDACTED]" in refresh["detail"]["error"]


# ---- capability scores -----------------------------------------------------------------------


def add_score(
    repository: str, metric: str, value: float, detail: dict[str, Any], flagged: bool = False
) -> None:
    with session_scope() as session:
        session.add(
            CapabilityScore(
                repository=repository,
                metric=metric,
                value=value,
                flagged=flagged,
                detail=detail,
                window_start=BASE - timedelta(days=7),
                computed_at=BASE,
            )
        )


def test_capability_scores_of_the_repositories_a_tenant_built_with_others_details_withheld(
    api: TestClient,
) -> None:
    acme_run = add_run(
        tenant="acme", repository=REPO_SHARED, registry="acme.registry", created_at=BASE
    )
    globex_run = add_run(
        tenant="globex",
        repository=REPO_SHARED,
        registry="globex.registry",
        created_at=BASE + timedelta(minutes=1),
        index_digest=INDEX_DIGEST,
    )
    add_platform(globex_run, "linux/amd64", None, digest=DIGEST)
    add_run(tenant="globex", repository=REPO_GLOBEX)
    # The newest run of the shared repository is globex's: its latency detail names it.
    add_score(
        REPO_SHARED,
        "build_latency",
        4.2,
        {"run_id": str(globex_run), "latency_ms": 400.0, "n": 8},
        flagged=True,
    )
    add_score(
        REPO_SHARED,
        "credential_churn",
        1,
        {"hosts": ["acme.registry", "globex.registry"], "rotated": 1},
    )
    add_score(REPO_SHARED, "missing_architectures", 0, {"run_id": str(acme_run), "missing": []})
    add_score(REPO_GLOBEX, "build_latency", 0.1, {"run_id": "x"})
    acme = token("acme", "builds.*", tenant="acme")

    def scores(headers: dict[str, str], **query: Any) -> dict[str, Any]:
        response = api.get("/v1/registry/capability-scores", params=query, headers=headers)
        assert response.status_code == 200, response.text
        body: dict[str, Any] = response.json()
        return body

    mine = scores(acme, repository=REPO_SHARED)
    assert mine["repository"] == REPO_SHARED
    by_metric = {s["metric"]: s for s in mine["scores"]}
    assert list(by_metric) == ["build_latency", "credential_churn", "missing_architectures"]
    # The numbers are the repository's, whoever built it; details naming globex are withheld.
    assert by_metric["build_latency"]["value"] == 4.2 and by_metric["build_latency"]["flagged"]
    assert by_metric["build_latency"]["detail"] == {}
    assert by_metric["build_latency"]["detail_withheld"] is True
    assert by_metric["credential_churn"]["detail_withheld"] is True
    assert by_metric["missing_architectures"]["detail"] == {"run_id": str(acme_run), "missing": []}
    assert by_metric["missing_architectures"]["detail_withheld"] is False

    # Only the repositories its runs built: never globex's own.
    assert [s["repository"] for s in scores(acme)["scores"]] == [REPO_SHARED] * 3
    assert scores(acme, repository=REPO_GLOBEX)["scores"] == []
    assert len(scores(acme, flagged=True)["scores"]) == 1
    # By digest: the repository of the newest run (visible to the reader) that produced it.
    assert scores(acme, digest=DIGEST)["scores"] == []  # globex's image
    globex = token("globex", "builds.*", tenant="globex")
    for digest in (DIGEST, INDEX_DIGEST):
        found = scores(globex, digest=digest, metric="build_latency")
        assert found["repository"] == REPO_SHARED
        assert found["scores"][0]["detail"]["run_id"] == str(globex_run)
    assert scores(globex, digest=DIGEST, repository=REPO_GLOBEX) == {
        "repository": None,
        "scores": [],
    }

    operator = scores(token("operator", "*"))
    assert len(operator["scores"]) == 4
    assert not any(s["detail_withheld"] for s in operator["scores"])
    assert scores(token("pusher", "pushes.*"))["scores"] == []
    assert scores(token("operator-2", "*"), tenant="acme", repository=REPO_SHARED)["scores"][0][
        "detail_withheld"
    ]


# ---- the document ----------------------------------------------------------------------------


def test_the_routes_are_in_the_openapi_document_with_their_schemas(api: TestClient) -> None:
    document = api.get("/openapi.json").json()
    schemas = document["components"]["schemas"]

    def ok_schema(path: str) -> dict[str, Any]:
        operation = document["paths"][path]["get"]
        assert {"401", "404" if "{" in path else "403", "422"} <= set(operation["responses"])
        content: dict[str, Any] = operation["responses"]["200"]["content"]
        return content

    for path, model in [
        ("/v1/builds/runs", "BuildRunPageBody"),
        ("/v1/builds/runs/{run_id}", "BuildRunBody"),
        ("/v1/registry/events", "RegistryEventPageBody"),
        ("/v1/registry/capability-scores", "CapabilityScoresBody"),
    ]:
        assert ok_schema(path)["application/json"]["schema"] == {
            "$ref": f"#/components/schemas/{model}"
        }
    log = document["paths"]["/v1/builds/runs/{run_id}/logs/{platform}"]["get"]
    assert log["responses"]["200"]["content"] == {"text/plain": {"schema": {"type": "string"}}}
    assert "X-Drydock-Log-Truncated" in log["responses"]["200"]["headers"]
    assert log["responses"]["404"]["content"]["application/json"]["schema"] == {
        "$ref": "#/components/schemas/ErrorBody"
    }
    platform = next(p for p in log["parameters"] if p["name"] == "platform")
    assert "linux-amd64" in platform["description"]
    run = schemas["BuildRunBody"]["properties"]
    assert run["status"] == {"$ref": "#/components/schemas/BuildStatus"}
    assert schemas["PlatformBuildBody"]["properties"]["log"]["anyOf"][0] == {
        "$ref": "#/components/schemas/LogLinkBody"
    }
    assert "detail_withheld" in schemas["CapabilityScoreBody"]["required"]
    limits = [
        p["schema"]
        for path in ("/v1/builds/runs", "/v1/registry/events", "/v1/registry/capability-scores")
        for p in document["paths"][path]["get"]["parameters"]
        if p["name"] == "limit"
    ]
    assert all(limit["maximum"] == 500 for limit in limits) and len(limits) == 3


# ---- a run a real build made ------------------------------------------------------------------


def test_a_run_made_by_a_real_build_is_read_with_its_log(
    fleet: WorkerProcess, buildah_ready: Any, git_repo_factory: Any
) -> None:
    from dispatch.enqueue import enqueue
    from drydock.api import app

    repo = git_repo_factory()
    job = enqueue(
        "builds.build_image",
        {
            "repository_url": repo.url,
            "revision": repo.branch,
            "image": f"drydock-test/{uuid.uuid4().hex[:8]}",
            "backend": "buildah",
        },
        tenant="acme",
    )
    assert wait_for_job(job.id, timeout=TEST_BUILD_TIME_LIMIT * 3).status == "succeeded"
    with TestClient(app) as api:
        acme = token("acme", "builds.*", tenant="acme")
        page = api.get("/v1/builds/runs", headers=acme).json()
        assert [run["job_id"] for run in page["runs"]] == [str(job.id)]
        run = api.get(page["runs"][0]["url"], headers=acme).json()
        assert run["status"] == "built" and run["commit"] == repo.head_commit
        assert run["tenant"] == "acme" and run["repository_url"] == repo.url
        (amd64,) = run["platform_builds"]
        assert amd64["platform"] == "linux/amd64" and amd64["status"] == "built"
        log = api.get(amd64["log"]["url"], headers=acme)
        assert log.status_code == 200 and log.headers["X-Drydock-Log-Truncated"] == "false"
        assert len(log.content) == amd64["log"]["size_bytes"] and "STEP" in log.text
        other = token("globex", "builds.*", tenant="globex")
        assert api.get(page["runs"][0]["url"], headers=other).status_code == 404

"""The live catalog (``GET /v1/catalog``, ``drydock catalog``): what the ledger, the evaluations,
the instances and the trust registry say now, a bounded number of queries a page."""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from datetime import UTC, datetime
from typing import Any

from fastapi.testclient import TestClient
from sqlalchemy import event

from drydock.api import app
from models.anomaly import CapabilityScore
from models.db import get_engine, session_scope
from models.trust import TrustAsset, TrustState
from models.trust_actions import move_by_operator
from tasks.runtime import servers
from tasks.runtime.server_catalog import Health, catalog_page
from tests.runtime_world import PROBE_PATH, TENANT, McpImages, certify, launch
from tests.test_api import bearer, make_token
from tests.test_cli import drydock
from tests.test_evaluation import put_tier


@contextmanager
def counted_queries() -> Iterator[list[str]]:
    statements: list[str] = []

    def count(_conn: Any, _cursor: Any, statement: str, *_args: Any) -> None:
        statements.append(statement)

    engine = get_engine()
    event.listen(engine, "before_cursor_execute", count)
    try:
        yield statements
    finally:
        event.remove(engine, "before_cursor_execute", count)


def test_the_catalog_shows_releases_per_tier_with_certification_health_trust_and_scores(
    runtime_world: McpImages,
) -> None:
    # echo: the good digest also released at "edge" and running there; the broken one is the
    # newest at "standard" and never launched.
    put_tier("edge", "true")
    certify(runtime_world.good, "edge", runtime_world, evaluated_at=datetime.now(UTC))
    servers.add_release(
        tenant=TENANT, server="echo", digest=runtime_world.good, tier="edge", actor="test"
    )
    job = launch(runtime_world.good, tier="edge")
    assert job.status == "succeeded", job.error
    for name in ("alpha", "zulu"):
        servers.add_server(tenant=TENANT, name=name, repository=runtime_world.repository,
                           probe_path=PROBE_PATH, actor="test")  # fmt: skip
    now = datetime.now(UTC)
    with session_scope() as session:
        session.add(
            CapabilityScore(repository="file:///srv/echo-mcp.git", metric="build_latency",
                            value=7.5, flagged=True, detail={}, window_start=now, computed_at=now)
        )  # fmt: skip

    api = TestClient(app)
    acme = bearer(make_token("acme-ops", "runtime.read", tenant=TENANT))
    page = api.get("/v1/catalog", headers=acme)
    assert page.status_code == 200, page.text
    items = {item["name"]: item for item in page.json()["items"]}
    assert list(items) == ["alpha", "echo", "zulu"]
    echo = items["echo"]
    assert echo["health"] == "healthy"
    assert items["alpha"]["health"] == "none" and items["alpha"]["tiers"] == {}
    edge = echo["tiers"]["edge"]
    assert edge["digest"] == runtime_world.good
    assert edge["platforms"] == ["linux/amd64"]
    assert edge["certification"]["status"] == "active"
    assert edge["certification"]["expires_at"] is not None
    assert edge["instance"]["state"] == "running" and edge["instance"]["host_trust"] == "trusted"
    assert edge["instance"]["health"]["ok"] is True
    standard = echo["tiers"]["standard"]
    assert standard["digest"] == runtime_world.broken and standard["instance"] is None
    assert standard["anomaly_scores"] == [
        {"metric": "build_latency", "value": 7.5, "flagged": True}
    ]

    # Filters: health, tier; another tenant sees none of it.
    assert [i["name"] for i in api.get("/v1/catalog?health=healthy", headers=acme).json()[
        "items"]] == ["echo"]  # fmt: skip
    assert [i["name"] for i in api.get("/v1/catalog?health=none", headers=acme).json()[
        "items"]] == ["alpha", "zulu"]  # fmt: skip
    assert [i["name"] for i in api.get("/v1/catalog?tier=edge", headers=acme).json()[
        "items"]] == ["echo"]  # fmt: skip
    assert api.get("/v1/catalog?health=sick", headers=acme).status_code == 422
    globex = bearer(make_token("globex-ops", "runtime.read", tenant="globex"))
    assert api.get("/v1/catalog", headers=globex).json()["items"] == []

    # Pages of one, walked by the cursor.
    names, after = [], None
    while True:
        query = "/v1/catalog?limit=1" + (f"&after={after}" if after else "")
        body = api.get(query, headers=acme).json()
        names += [i["name"] for i in body["items"]]
        after = body["next_after"]
        if after is None:
            break
    assert names == ["alpha", "echo", "zulu"]

    # The host quarantined: the next read says so (nothing cached).
    with session_scope() as session:
        host = session.query(TrustAsset).filter_by(tenant=TENANT, name="docker-host-1").one()
        host_id = host.id
    move_by_operator(host_id, TrustState.QUARANTINED, reason="test", actor="operator:test",
                     expected_version=None)  # fmt: skip
    edge = catalog_page(tenant=TENANT)["items"][1]["tiers"]["edge"]
    assert edge["instance"]["host_trust"] == "quarantined"

    shown = drydock("catalog", "--tenant", TENANT)
    assert shown.returncode == 0, shown.stderr
    assert f"{TENANT}/echo healthy" in shown.stdout
    assert "flagged: build_latency" in shown.stdout
    assert "instance running on docker-1 (host quarantined)" in shown.stdout


def test_a_catalog_page_costs_the_same_few_queries_for_three_servers_or_thirty(
    runtime_world: McpImages,
) -> None:
    def queries() -> int:
        with counted_queries() as statements:
            page = catalog_page(tenant=TENANT, limit=200)
        assert page["items"]
        return len([s for s in statements if s.lstrip().upper().startswith(("SELECT", "WITH"))])

    few = queries()
    for index in range(30):
        servers.add_server(tenant=TENANT, name=f"extra-{index:02}",
                           repository=runtime_world.repository, actor="test")  # fmt: skip
        servers.add_release(tenant=TENANT, server=f"extra-{index:02}", digest=runtime_world.good,
                            tier="standard", actor="test")  # fmt: skip
    # Six at most: a query whose keys are empty (no instances, so no hosts) is not sent.
    assert few == queries() <= 6
    assert catalog_page(tenant=TENANT, health=Health.NONE, limit=200)["items"]

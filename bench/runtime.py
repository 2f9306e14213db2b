"""The runtime's two hot reads: placement decisions, and catalog pages over many servers.

    python -m bench.runtime [--decisions 2000] [--servers 10000] [--pages 200]

It starts its own PostgreSQL (default durability settings) in a temporary directory, migrates it,
and stops the server when it ends.

1. **placement**: a tenant's trusted host with four targets (the first two unable to run the
   release: wrong platform, wrong isolation), a tier, a fresh certification of the digest, then
   ``--decisions`` calls of ``policy.runtime_placement.place_release`` as a launch makes them,
   each in its own transaction that commits its recorded decision (the ``policy_decisions`` row
   and its ``policy.decision`` stream event). One process, so one core. Prints decisions per
   second and checks that every one was recorded and allowed.
2. **catalog**: ``--servers`` servers of 20 tenants, each with a release at two tiers, a
   certification per digest and tier, a running instance for one server in three, seeded in
   bulk; then ``--pages`` reads of ``tasks.runtime.server_catalog.catalog_page`` as
   ``GET /v1/catalog`` makes them (50 a page): the first page, a page deep in by cursor, a
   tenant's page, a tier filter and two health filters, in turn, after ``VACUUM ANALYZE`` and
   with the heap frozen as the API process freezes it. Prints p50, p95 and p99 in ms.

Targets: ≥ 1,000 placement decisions/s; catalog p99 ≤ 50 ms. The exit status is 1 when one is
missed.
"""

from __future__ import annotations

import argparse
import gc
import statistics
import sys
import time
import uuid
from collections.abc import Callable
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from bench.postgres import migrated_postgres  # noqa: E402

TENANT = "bench"
DIGEST = "sha256:" + "ab" * 32
PLACEMENT_GOAL = 1000.0
CATALOG_P99_GOAL_MS = 50.0


def _trusted_asset(tenant: str, name: str) -> uuid.UUID:
    from sqlalchemy import update

    from models import trust
    from models.db import session_scope
    from models.trust import AssetKind, TrustAsset

    asset_id, _ = trust.register_asset(tenant=tenant, name=name, kind=AssetKind.HOST, actor="bench")
    now = datetime.now(UTC)
    with session_scope() as session:
        # Straight to trusted with fresh evidence: the bench measures placement, not attestation.
        session.execute(
            update(TrustAsset)
            .where(TrustAsset.id == asset_id)
            .values(
                state="trusted", last_verified_at=now, evidence_expires_at=now + timedelta(days=1)
            )
        )
    return asset_id


def _certify(digest: str, tier: str) -> None:
    from models import evaluation
    from models.db import session_scope
    from models.jobs import Job

    job_id = uuid.uuid4()
    with session_scope() as session:
        session.add(Job(id=job_id, task_name="evaluation.refresh_certification",
                        queue="evaluation", payload={}, status="succeeded"))  # fmt: skip
        session.flush()
        evaluation.record_evaluation(
            session,
            evaluation.Evaluation(job_id=job_id, digest=digest, tier=tier, host="registry.bench",
                                  repository="bench/echo", passed=True, evidence=[],
                                  summary="bench", evaluated_at=datetime.now(UTC)),
        )  # fmt: skip


def _tier(name: str) -> None:
    from models import evaluation
    from models.db import session_scope

    suite = {"command": ["/bin/true"], "files": {}, "results": "jsonl", "timeout_seconds": 5}
    with session_scope() as session:
        evaluation.put_tier(session, name=name, suite=suite, validity_seconds=86400,
                            refresh_window_seconds=600, description="", by="bench")  # fmt: skip


def bench_placement(decisions: int) -> bool:
    from sqlalchemy import func, select

    from models import runtime
    from models.db import session_scope
    from models.policy import PolicyDecision
    from models.runtime import Isolation
    from policy.runtime_placement import ServerNeeds, place_release
    from tasks.runtime import servers

    _trusted_asset(TENANT, "host-1")
    for name, platforms, isolation, priority in (
        ("arm-only", ["linux/arm64"], "container", 10),
        ("vm-only", ["linux/amd64"], "vm", 20),
        ("docker-1", ["linux/amd64"], "container", 30),
        ("docker-2", ["linux/amd64"], "container", 40),
    ):
        servers.put_target(name=name, backend="docker", asset=f"{TENANT}/host-1",
                           platforms=platforms, isolation=isolation, priority=priority,
                           actor="bench")  # fmt: skip
    _tier("standard")
    _certify(DIGEST, "standard")
    needs = ServerNeeds(platforms=("linux/amd64",), isolation=Isolation.CONTAINER,
                        confidential=False, accelerator=None, target=None)  # fmt: skip
    allowed = 0
    started = time.perf_counter()
    for _ in range(decisions):
        with session_scope() as session:
            placement = place_release(
                session, tenant=TENANT, digest=DIGEST, tier="standard", needs=needs,
                targets=runtime.enabled_targets(session), actor="bench",
            )  # fmt: skip
            allowed += placement.target is not None
    elapsed = time.perf_counter() - started
    with session_scope() as session:
        recorded = session.scalar(select(func.count()).select_from(PolicyDecision))
    rate = decisions / elapsed
    ok = rate >= PLACEMENT_GOAL and allowed == decisions and recorded == decisions
    print(f"placement: {decisions} decisions in {elapsed:.2f}s = {rate:,.0f}/s "
          f"(goal ≥ {PLACEMENT_GOAL:,.0f}/s), {allowed} allowed, {recorded} recorded"
          f"{'' if ok else '  MISSED'}")  # fmt: skip
    return ok


def _seed_catalog(count: int) -> None:
    from models.db import session_scope
    from models.runtime import RuntimeInstance, RuntimeRelease, RuntimeServer

    _tier("edge")
    digests = [f"sha256:{n:064x}" for n in range(1, 9)]
    for digest in digests:
        for tier in ("standard", "edge"):
            _certify(digest, tier)
    batch = 1000
    for start in range(0, count, batch):
        with session_scope() as session:
            for n in range(start, min(start + batch, count)):
                server = RuntimeServer(
                    tenant=f"tenant-{n % 20:02}", name=f"server-{n:05}",
                    repository="registry.bench/bench/echo", probe_kind="mcp", probe_path="/mcp",
                    isolation="container", confidential=False, description="",
                    created_by="bench",
                )  # fmt: skip
                session.add(server)
                session.flush()
                for tier in ("standard", "edge"):
                    release = RuntimeRelease(
                        server_id=server.id,
                        tier=tier,
                        digest=digests[n % len(digests)],
                        platforms=["linux/amd64"],
                        created_by="bench",
                    )
                    session.add(release)
                    session.flush()
                    if n % 3 == 0 and tier == "standard":
                        session.add(RuntimeInstance(
                            release_id=release.id, server_id=server.id, tenant=server.tenant,
                            target="docker-1", backend="docker", state="running",
                            endpoint="http://127.0.0.1:9/mcp", handle={},
                            health={"ok": True, "detail": "bench", "ms": 1},
                        ))  # fmt: skip


def _analyze() -> None:
    from models.db import get_engine

    # Autovacuum would get there in its own time: a fleet's tables have statistics.
    with get_engine().connect().execution_options(isolation_level="AUTOCOMMIT") as connection:
        connection.exec_driver_sql("VACUUM ANALYZE")


def bench_catalog(count: int, pages: int) -> bool:
    from tasks.runtime.server_catalog import Health, catalog_page

    started = time.perf_counter()
    _seed_catalog(count)
    print(f"catalog: seeded {count:,} servers in {time.perf_counter() - started:.1f}s")
    _analyze()
    # As the API process does at startup (drydock.api's lifespan): the heap frozen, so a full
    # collection does not walk it.
    gc.collect()
    gc.freeze()
    deep = f"tenant-10/server-{count // 2:05}"
    reads: list[Callable[[], dict[str, Any]]] = [
        lambda: catalog_page(tenant=None),
        lambda: catalog_page(tenant=None, after=deep),
        lambda: catalog_page(tenant="tenant-07"),
        lambda: catalog_page(tenant=None, tier="edge", after=deep),
        lambda: catalog_page(tenant=None, health=Health.HEALTHY),
        lambda: catalog_page(tenant=None, health=Health.NONE, after=deep),
    ]
    for read in reads:  # warm the connection pool and the plans
        assert read()["items"], "a catalog page came back empty"
    timings = []
    for n in range(pages):
        began = time.perf_counter()
        page = reads[n % len(reads)]()
        timings.append((time.perf_counter() - began) * 1000)
        assert page["items"], "a catalog page came back empty"
    timings.sort()
    p50 = statistics.median(timings)
    p95 = timings[int(len(timings) * 0.95) - 1]
    p99 = timings[max(0, int(len(timings) * 0.99) - 1)]
    ok = p99 <= CATALOG_P99_GOAL_MS
    print(f"catalog: {pages} pages of 50 over {count:,} servers: p50 {p50:.1f} ms, "
          f"p95 {p95:.1f} ms, p99 {p99:.1f} ms (goal p99 ≤ {CATALOG_P99_GOAL_MS:g} ms)"
          f"{'' if ok else '  MISSED'}")  # fmt: skip
    return ok


def main() -> int:
    parser = argparse.ArgumentParser(description=(__doc__ or "").split("\n\n")[0])
    parser.add_argument("--decisions", type=int, default=2000)
    parser.add_argument("--servers", type=int, default=10_000)
    parser.add_argument("--pages", type=int, default=200)
    args = parser.parse_args()

    with migrated_postgres("runtime"):
        ok = bench_placement(args.decisions)
        ok &= bench_catalog(args.servers, args.pages)
        return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())

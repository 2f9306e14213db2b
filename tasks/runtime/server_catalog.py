"""The live catalog: every server with its release per tier, computed from what exists.

One page is at most six queries, whatever its size (none is sent for an empty set of keys):
the servers (filtered by tenant, tier and health, ordered by ``tenant/name`` after the cursor),
their releases, the newest certification of each release's digest at its tier, their newest
instance per release, the trust state of those instances' hosts, and the anomaly scores of the
build repositories the artifact ledger made the digests from. Nothing is cached or static: a
launch, a certification or a quarantine shows on the next read.

A server's ``health``: ``healthy`` when an instance runs with a passing probe, ``degraded`` when
it has live instances (starting, blocked, pending) but none healthy, ``down`` when every instance
has ended, ``none`` when it was never launched.
"""

from __future__ import annotations

from collections import defaultdict
from datetime import datetime
from enum import StrEnum
from typing import Any

from sqlalchemy import and_, case, exists, func, select, text, tuple_

from models.db import session_scope
from models.evaluation import EvaluationCertification
from models.runtime import (
    LIVE_STATES,
    InstanceState,
    RuntimeInstance,
    RuntimeRelease,
    RuntimeServer,
)
from models.trust import TrustAsset

MAX_PAGE = 200


class Health(StrEnum):
    HEALTHY = "healthy"
    DEGRADED = "degraded"
    DOWN = "down"
    NONE = "none"


def _health_column() -> Any:
    instance = RuntimeInstance
    of_server = instance.server_id == RuntimeServer.id
    healthy = exists().where(
        of_server,
        instance.state == InstanceState.RUNNING.value,
        instance.health["ok"].as_boolean().is_(True),
    )
    live = exists().where(of_server, instance.state.in_([s.value for s in LIVE_STATES]))
    any_instance = exists().where(of_server)
    return case(
        (healthy, Health.HEALTHY.value),
        (live, Health.DEGRADED.value),
        (any_instance, Health.DOWN.value),
        else_=Health.NONE.value,
    ).label("health")


def catalog_page(
    *,
    tenant: str | None,
    tier: str | None = None,
    health: Health | None = None,
    after: str | None = None,
    limit: int = 50,
) -> dict[str, Any]:
    limit = max(1, min(limit, MAX_PAGE))
    health_of = _health_column()
    query = select(RuntimeServer, health_of).order_by(RuntimeServer.tenant, RuntimeServer.name)
    if tenant is not None:
        query = query.where(RuntimeServer.tenant == tenant)
    if tier is not None:
        query = query.where(
            exists().where(
                RuntimeRelease.server_id == RuntimeServer.id, RuntimeRelease.tier == tier
            )
        )
    if health is not None:
        query = query.where(health_of == health.value)
    if after:
        owner, _, name = after.partition("/")
        query = query.where(tuple_(RuntimeServer.tenant, RuntimeServer.name) > (owner, name))
    with session_scope() as session:
        rows = session.execute(query.limit(limit + 1)).all()
        more = len(rows) > limit
        rows = rows[:limit]
        server_ids = [server.id for server, _ in rows]
        releases = session.scalars(
            select(RuntimeRelease)
            .where(RuntimeRelease.server_id.in_(server_ids))
            .where(RuntimeRelease.tier == tier if tier is not None else text("true"))
            # A tier shows its newest release that no rollout rolled back.
            .order_by(
                RuntimeRelease.tier,
                RuntimeRelease.rolled_back_at.asc().nulls_first(),
                RuntimeRelease.created_at.desc(),
            )
        ).all()
        pairs = {(r.digest, r.tier) for r in releases}
        certifications = _newest_certifications(session, pairs)
        instances = _newest_instances(session, [r.id for r in releases])
        hosts = _hosts(session, [i.asset_id for i in instances.values() if i.asset_id])
        scores = _anomaly_scores(session, sorted({digest for digest, _ in pairs}))
        by_server: dict[Any, list[RuntimeRelease]] = defaultdict(list)
        for release in releases:
            by_server[release.server_id].append(release)
        items = [
            {
                "id": str(server.id),
                "tenant": server.tenant,
                "name": server.name,
                "repository": server.repository,
                "isolation": server.isolation,
                "confidential": server.confidential,
                "health": server_health,
                "tiers": _tiers(by_server[server.id], certifications, instances, hosts, scores),
            }
            for server, server_health in rows
        ]
    next_after = f"{rows[-1][0].tenant}/{rows[-1][0].name}" if more and rows else None
    return {"items": items, "next_after": next_after}


def _tiers(
    releases: list[RuntimeRelease],
    certifications: dict[tuple[str, str], EvaluationCertification],
    instances: dict[Any, RuntimeInstance],
    hosts: dict[Any, TrustAsset],
    scores: dict[str, list[dict[str, Any]]],
) -> dict[str, Any]:
    """Per tier, the release shown, with what is known of it: the newest release running there
    that no rollout rolled back, else its newest not rolled back, else its newest."""
    by_tier: dict[str, list[RuntimeRelease]] = defaultdict(list)
    for release in releases:
        by_tier[release.tier].append(release)
    tiers: dict[str, Any] = {}
    for tier, candidates in by_tier.items():
        serving = [
            r
            for r in candidates
            if r.rolled_back_at is None
            and r.id in instances
            and instances[r.id].state == InstanceState.RUNNING.value
        ]
        release = serving[0] if serving else candidates[0]
        certification = certifications.get((release.digest, release.tier))
        instance = instances.get(release.id)
        host = hosts.get(instance.asset_id) if instance is not None and instance.asset_id else None
        tiers[tier] = {
            "digest": release.digest,
            "platforms": release.platforms,
            "released_at": _iso(release.created_at),
            "certification": (
                {
                    "status": certification.status,
                    "expires_at": _iso(certification.expires_at),
                    "evaluated_at": _iso(certification.evaluated_at),
                }
                if certification is not None
                else None
            ),
            "instance": (
                {
                    "id": str(instance.id),
                    "state": instance.state,
                    "target": instance.target,
                    "health": instance.health,
                    "host_trust": host.state if host is not None else None,
                }
                if instance is not None
                else None
            ),
            "anomaly_scores": scores.get(release.digest, []),
        }
    return tiers


def _newest_certifications(
    session: Any, pairs: set[tuple[str, str]]
) -> dict[tuple[str, str], EvaluationCertification]:
    if not pairs:
        return {}
    cert = EvaluationCertification
    ranked = (
        select(
            cert.id,
            func.row_number()
            .over(partition_by=(cert.digest, cert.tier), order_by=cert.evaluated_at.desc())
            .label("rank"),
        )
        .where(tuple_(cert.digest, cert.tier).in_(sorted(pairs)))
        .subquery()
    )
    found = session.scalars(
        select(cert).join(ranked, and_(ranked.c.id == cert.id, ranked.c.rank == 1))
    ).all()
    return {(c.digest, c.tier): c for c in found}


def _newest_instances(session: Any, release_ids: list[Any]) -> dict[Any, RuntimeInstance]:
    if not release_ids:
        return {}
    ranked = (
        select(
            RuntimeInstance.id,
            func.row_number()
            .over(
                partition_by=RuntimeInstance.release_id,
                order_by=RuntimeInstance.created_at.desc(),
            )
            .label("rank"),
        )
        .where(RuntimeInstance.release_id.in_(release_ids))
        .subquery()
    )
    found = session.scalars(
        select(RuntimeInstance).join(
            ranked, and_(ranked.c.id == RuntimeInstance.id, ranked.c.rank == 1)
        )
    ).all()
    return {i.release_id: i for i in found}


def _hosts(session: Any, asset_ids: list[Any]) -> dict[Any, TrustAsset]:
    if not asset_ids:
        return {}
    found = session.scalars(select(TrustAsset).where(TrustAsset.id.in_(asset_ids))).all()
    return {a.id: a for a in found}


def _anomaly_scores(session: Any, digests: list[str]) -> dict[str, list[dict[str, Any]]]:
    """The scores of the repositories the ledger built each digest from (one platform's image
    or a multi-platform index)."""
    if not digests:
        return {}
    rows = session.execute(
        text(
            """
            SELECT DISTINCT d.digest, s.metric, s.value, s.flagged
              FROM (SELECT p.digest, r.repository_url
                      FROM build_platforms p JOIN build_runs r ON r.id = p.run_id
                     WHERE p.digest = ANY(:digests)
                    UNION
                    SELECT r.index_digest, r.repository_url
                      FROM build_runs r WHERE r.index_digest = ANY(:digests)) d
              JOIN capability_scores s ON s.repository = d.repository_url
             ORDER BY d.digest, s.metric
            """
        ),
        {"digests": digests},
    ).all()
    by_digest: dict[str, list[dict[str, Any]]] = defaultdict(list)
    for digest, metric, value, flagged in rows:
        by_digest[digest].append({"metric": metric, "value": value, "flagged": flagged})
    return by_digest


def _iso(at: datetime | None) -> str | None:
    return at.isoformat() if at else None

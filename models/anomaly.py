"""Capability scores: per-repository anomaly metrics recomputed from the build ledger.

Beat's ``evaluation.recompute_anomalies`` calls ``recompute_capability_scores``; the policy
engine's anomaly gate reads the rows through ``scores_for`` (finding the repository of an image
with ``repository_for_digest``). A repository is a git repository built
(``build_runs.repository_url``).

Each metric is one set-based statement (``LATENCY_SQL``, ``CHURN_SQL``,
``MISSING_ARCHITECTURES_SQL``): an ``INSERT ... SELECT ... ON CONFLICT DO UPDATE`` of every
repository's score, and in the same statement a ``DELETE`` of the metric's rows of repositories
that have no score any more (no build in the window, too few builds). No row is handled in
Python: a recomputation is three statements whatever the ledger holds (``bench/beat.py`` times
them over a million runs).

The window: a run belongs to it when it was *created* in ``[now - window, now]`` (the ledger's
index on ``created_at`` can find them) and counts as finished when ``finished_at <= now``. A build
runs for minutes, so this differs from "finished in the window" only at the window's very edge.

- ``build_latency``: a robust z-score of the newest finished run's ``build_ms`` against the
  median and MAD (median absolute deviation) of the *other* runs in the window:
  ``z = 0.6745 * (x - median) / MAD``. When MAD is 0 (more than half the baseline identical),
  the scale falls back to the mean absolute deviation: ``z = (x - median) / (1.2533 * meanAD)``;
  when that is 0 too (every baseline run identical), ``z`` is 0 if ``x`` equals the median and
  ``±Z_CAP`` otherwise. Every ``z`` is clamped to ``[-Z_CAP, Z_CAP]`` so values stay finite
  (JSON has no infinity). A repository with fewer than ``min_builds`` runs (the newest included)
  gets no row. Flagged when ``z > latency_z_threshold``: only slow builds are anomalies.
- ``credential_churn``: within the window, the ``credential_events`` of kinds rotated,
  rotation_failed and probe_refused for the registry hosts its runs push to
  (``push_target->>'registry'``), plus the ``registry_events`` of kind auth_refresh of its runs.
  Every repository with a run in the window has a row (0 without a push target). Flagged when
  the count exceeds ``churn_threshold``.
- ``missing_architectures``: for the newest finished run (built, published or failed), the
  platforms it asked for without a ``build_platforms`` row in status built or pushed. Flagged
  when any is missing.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime, timedelta
from enum import StrEnum
from typing import Any

from sqlalchemy import (
    CheckConstraint,
    DateTime,
    PrimaryKeyConstraint,
    String,
    Text,
    select,
    text,
)
from sqlalchemy.dialects.postgresql import JSONB
from sqlalchemy.orm import Mapped, Session, mapped_column

from models.base import Base, sql_in_list
from models.builds import BuildStatus, PlatformStatus, RegistryEventKind
from models.credentials import CredentialEventKind


class CapabilityMetric(StrEnum):
    # Robust z-score of the newest build's latency against the rolling median/MAD.
    BUILD_LATENCY = "build_latency"
    # Credential rotations and registry auth failures within the window.
    CREDENTIAL_CHURN = "credential_churn"
    # Expected platforms not built within the window.
    MISSING_ARCHITECTURES = "missing_architectures"


class CapabilityScore(Base):
    """Anomaly scores per repository, recomputed by Beat from the build ledger and read by the
    policy engine's anomaly gate."""

    __tablename__ = "capability_scores"

    # The build's repository URL, as long as build_runs allows.
    repository: Mapped[str] = mapped_column(Text)
    metric: Mapped[str] = mapped_column(String(40))
    value: Mapped[float]
    # Over the metric's threshold at recomputation: the anomaly gate fails on it.
    flagged: Mapped[bool]
    detail: Mapped[dict[str, Any]] = mapped_column(JSONB, default=dict)
    window_start: Mapped[datetime] = mapped_column(DateTime(timezone=True))
    computed_at: Mapped[datetime] = mapped_column(DateTime(timezone=True))

    __table_args__ = (
        PrimaryKeyConstraint("repository", "metric"),
        CheckConstraint(sql_in_list("metric", tuple(CapabilityMetric)), name="metric"),
    )


# |z| never exceeds this: the score of a build that differs from a baseline with no spread at
# all, and the clamp that keeps every value finite.
Z_CAP = 1000.0
# Consistency constants of the robust z-score (Iglewicz and Hoaglin): MAD and the mean absolute
# deviation scaled to the standard deviation of a normal distribution.
MAD_SCALE = 0.6745
MEAN_AD_SCALE = 1.2533

CHURN_CREDENTIAL_KINDS = (
    CredentialEventKind.ROTATED,
    CredentialEventKind.ROTATION_FAILED,
    CredentialEventKind.PROBE_REFUSED,
)
FINISHED_RUN_STATUSES = (BuildStatus.BUILT, BuildStatus.PUBLISHED, BuildStatus.FAILED)
BUILT_PLATFORM_STATUSES = (PlatformStatus.BUILT, PlatformStatus.PUSHED)

# Runs of the window; every statement starts from these.
_WINDOW_RUNS = "created_at >= :window_start AND created_at <= :now"


def _scoring_statement(metric: CapabilityMetric, scoring: str) -> str:
    """One metric's statement: its ``scoring`` CTEs, ending in ``scored`` (repository, value,
    flagged, detail), then the upsert, the deletion of the metric's rows no longer scored, and
    the counts."""
    return f"""
WITH {scoring},
upserted AS (
    INSERT INTO capability_scores
        (repository, metric, value, flagged, detail, window_start, computed_at)
    SELECT repository, '{metric.value}', value, flagged, detail, :window_start, :now
    FROM scored
    ON CONFLICT (repository, metric) DO UPDATE SET
        value = EXCLUDED.value,
        flagged = EXCLUDED.flagged,
        detail = EXCLUDED.detail,
        window_start = EXCLUDED.window_start,
        computed_at = EXCLUDED.computed_at
    RETURNING flagged
),
pruned AS (
    DELETE FROM capability_scores AS old
    WHERE old.metric = '{metric.value}'
      AND NOT EXISTS (SELECT 1 FROM scored WHERE scored.repository = old.repository)
)
SELECT count(*) AS scored, count(*) FILTER (WHERE flagged) AS flagged FROM upserted
"""


# One pass over the window's runs collects each repository's latencies, newest first (one sort
# by repository; a window function and two grouped percentiles over every run cost three). The
# median and the MAD are then taken per repository over its array, which is small.
LATENCY_SQL = _scoring_statement(
    CapabilityMetric.BUILD_LATENCY,
    f"""
per_repository AS (
    SELECT repository_url AS repository,
           array_agg(build_ms ORDER BY finished_at DESC, id DESC) AS latencies,
           (array_agg(id ORDER BY finished_at DESC, id DESC))[1] AS run_id
    FROM build_runs
    WHERE {_WINDOW_RUNS} AND finished_at <= :now AND build_ms IS NOT NULL
    GROUP BY repository_url
    HAVING count(*) >= :min_builds
),
baseline AS (
    SELECT per_repository.*, latencies[1] AS x, cardinality(latencies) AS n,
           latencies[2:] AS others, middle.median
    FROM per_repository
    CROSS JOIN LATERAL (
        SELECT percentile_cont(0.5) WITHIN GROUP (ORDER BY other) AS median
        FROM unnest(latencies[2:]) AS other
    ) AS middle
),
newest AS (
    SELECT baseline.repository, baseline.run_id, baseline.x, baseline.n, baseline.median,
           spread.mad, spread.mean_ad,
           greatest(-{Z_CAP}, least({Z_CAP},
               CASE
                   WHEN spread.mad > 0
                       THEN {MAD_SCALE} * (baseline.x - baseline.median) / spread.mad
                   WHEN spread.mean_ad > 0
                       THEN (baseline.x - baseline.median) / ({MEAN_AD_SCALE} * spread.mean_ad)
                   ELSE sign(baseline.x - baseline.median) * {Z_CAP}
               END
           )) AS z
    FROM baseline
    CROSS JOIN LATERAL (
        SELECT percentile_cont(0.5) WITHIN GROUP (ORDER BY abs(other - baseline.median)) AS mad,
               avg(abs(other - baseline.median)) AS mean_ad
        FROM unnest(baseline.others) AS other
    ) AS spread
),
scored AS (
    SELECT repository, z AS value, z > :latency_z_threshold AS flagged,
           jsonb_build_object(
               'run_id', run_id,
               'latency_ms', x,
               'median_ms', median,
               'mad_ms', mad,
               'mean_absolute_deviation_ms', mean_ad,
               'n', n
           ) AS detail
    FROM newest
)
""",
)

# The window's (repository, registry) pairs in one hashed pass; every count is then joined to
# those few rows. Auth refreshes are found from the events' side (few) and their runs by key.
CHURN_SQL = _scoring_statement(
    CapabilityMetric.CREDENTIAL_CHURN,
    f"""
repository_hosts AS (
    SELECT DISTINCT repository_url AS repository, lower(push_target->>'registry') AS host
    FROM build_runs
    WHERE {_WINDOW_RUNS}
),
repositories AS (
    SELECT repository,
           coalesce(
               jsonb_agg(host ORDER BY host) FILTER (WHERE host IS NOT NULL), '[]'::jsonb
           ) AS hosts
    FROM repository_hosts
    GROUP BY repository
),
host_events AS (
    SELECT lower(host) AS host,
           count(*) FILTER (WHERE kind = '{CredentialEventKind.ROTATED.value}') AS rotated,
           count(*) FILTER (
               WHERE kind = '{CredentialEventKind.ROTATION_FAILED.value}'
           ) AS rotation_failed,
           count(*) FILTER (
               WHERE kind = '{CredentialEventKind.PROBE_REFUSED.value}'
           ) AS probe_refused
    FROM credential_events
    WHERE at >= :window_start AND at <= :now AND {sql_in_list("kind", CHURN_CREDENTIAL_KINDS)}
    GROUP BY lower(host)
),
credential_counts AS (
    SELECT repository_hosts.repository,
           sum(rotated) AS rotated,
           sum(rotation_failed) AS rotation_failed,
           sum(probe_refused) AS probe_refused
    FROM repository_hosts JOIN host_events USING (host)
    GROUP BY repository_hosts.repository
),
refresh_counts AS (
    SELECT run.repository_url AS repository, count(*) AS auth_refresh
    FROM registry_events AS event JOIN build_runs AS run ON run.id = event.run_id
    WHERE event.kind = '{RegistryEventKind.AUTH_REFRESH.value}'
      AND event.at >= :window_start AND event.at <= :now
      AND run.created_at >= :window_start AND run.created_at <= :now
    GROUP BY run.repository_url
),
counted AS (
    SELECT repositories.repository, repositories.hosts,
           coalesce(credential_counts.rotated, 0) AS rotated,
           coalesce(credential_counts.rotation_failed, 0) AS rotation_failed,
           coalesce(credential_counts.probe_refused, 0) AS probe_refused,
           coalesce(refresh_counts.auth_refresh, 0) AS auth_refresh
    FROM repositories
    LEFT JOIN credential_counts USING (repository)
    LEFT JOIN refresh_counts USING (repository)
),
scored AS (
    SELECT repository,
           rotated + rotation_failed + probe_refused + auth_refresh AS value,
           rotated + rotation_failed + probe_refused + auth_refresh > :churn_threshold
               AS flagged,
           jsonb_build_object(
               'hosts', hosts,
               'rotated', rotated,
               'rotation_failed', rotation_failed,
               'probe_refused', probe_refused,
               'auth_refresh', auth_refresh
           ) AS detail
    FROM counted
)
""",
)

# The newest finished run per repository (sorting only its key and id), then each of those few
# runs' platforms looked up by the (run_id, platform) key.
MISSING_ARCHITECTURES_SQL = _scoring_statement(
    CapabilityMetric.MISSING_ARCHITECTURES,
    f"""
newest AS (
    SELECT DISTINCT ON (repository_url) repository_url AS repository, id AS run_id
    FROM build_runs
    WHERE {_WINDOW_RUNS} AND finished_at <= :now
      AND {sql_in_list("status", FINISHED_RUN_STATUSES)}
    ORDER BY repository_url, finished_at DESC, id DESC
),
compared AS (
    SELECT newest.repository, run.id AS run_id, run.status, run.platforms, missing.platforms
           AS missing
    FROM newest
    JOIN build_runs AS run ON run.id = newest.run_id
    CROSS JOIN LATERAL (
        SELECT coalesce(
                   jsonb_agg(expected.platform ORDER BY expected.platform), '[]'::jsonb
               ) AS platforms
        FROM jsonb_array_elements_text(run.platforms) AS expected(platform)
        WHERE NOT EXISTS (
            SELECT 1 FROM build_platforms AS built
            WHERE built.run_id = run.id AND built.platform = expected.platform
              AND {sql_in_list("built.status", BUILT_PLATFORM_STATUSES)}
        )
    ) AS missing
),
scored AS (
    SELECT repository,
           jsonb_array_length(missing) AS value,
           jsonb_array_length(missing) > 0 AS flagged,
           jsonb_build_object(
               'run_id', run_id,
               'status', status,
               'expected', platforms,
               'missing', missing
           ) AS detail
    FROM compared
)
""",
)


@dataclass(frozen=True)
class RecomputeSummary:
    # Repositories with a run in the window (each has at least a credential_churn row).
    repositories: int
    # Per metric: how many repositories it flagged.
    flagged: dict[str, int]


def recompute_capability_scores(
    session: Session,
    *,
    now: datetime,
    window: timedelta,
    latency_z_threshold: float,
    min_builds: int,
    churn_threshold: int,
) -> RecomputeSummary:
    """Recompute every repository's scores over ``[now - window, now]`` in the caller's
    transaction: three statements, one per metric. Idempotent for the same ledger and ``now``."""
    if now.tzinfo is None:
        raise ValueError("now must be timezone-aware")
    if window <= timedelta(0):
        raise ValueError("window must be positive")
    if min_builds < 2:
        raise ValueError("min_builds must be at least 2: the newest run and a baseline")
    params: dict[str, Any] = {
        "now": now,
        "window_start": now - window,
        "min_builds": min_builds,
        "latency_z_threshold": latency_z_threshold,
        "churn_threshold": churn_threshold,
    }
    counts = {
        metric: session.execute(text(sql), params).one()
        for metric, sql in (
            (CapabilityMetric.BUILD_LATENCY, LATENCY_SQL),
            (CapabilityMetric.CREDENTIAL_CHURN, CHURN_SQL),
            (CapabilityMetric.MISSING_ARCHITECTURES, MISSING_ARCHITECTURES_SQL),
        )
    }
    return RecomputeSummary(
        repositories=int(counts[CapabilityMetric.CREDENTIAL_CHURN].scored),
        flagged={metric.value: int(row.flagged) for metric, row in counts.items()},
    )


def scores_for(session: Session, repository: str) -> list[CapabilityScore]:
    """The repository's scores, one per metric scored, by metric name."""
    return list(
        session.execute(
            select(CapabilityScore)
            .where(CapabilityScore.repository == repository)
            .order_by(CapabilityScore.metric)
            # Rows loaded earlier in this session may predate a recomputation's statements.
            .execution_options(populate_existing=True)
        ).scalars()
    )


REPOSITORY_FOR_DIGEST_SQL = """
SELECT repository FROM (
    SELECT run.repository_url AS repository, run.created_at
    FROM build_platforms AS platform JOIN build_runs AS run ON run.id = platform.run_id
    WHERE platform.digest = :digest
    UNION ALL
    SELECT repository_url, created_at FROM build_runs WHERE index_digest = :digest
) AS builds
ORDER BY created_at DESC
LIMIT 1
"""


def repository_for_digest(session: Session, digest: str) -> str | None:
    """The repository whose newest build produced ``digest``: a platform's image
    (``build_platforms.digest``) or a multi-platform index (``build_runs.index_digest``)."""
    repository = session.execute(
        text(REPOSITORY_FOR_DIGEST_SQL), {"digest": digest}
    ).scalar_one_or_none()
    return None if repository is None else str(repository)

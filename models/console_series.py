"""Time series the console plots, read from the stored rows: jobs waiting and their latency per
interval, and build latency per repository. Each is one statement over an index range."""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime, timedelta

from sqlalchemy import ARRAY, Text, bindparam, text
from sqlalchemy.orm import Session


@dataclass(frozen=True)
class JobInterval:
    start: datetime
    # Jobs enqueued and neither started nor finished at the interval's end: the queues' depth.
    waiting: int
    enqueued: int
    finished: int
    # From enqueue to finish, of the jobs that finished in the interval; None: none did.
    p50_ms: float | None
    p95_ms: float | None


# Jobs that waited longer than this before the window are not counted as waiting in it: the
# scan stays on the enqueued_at index however large the store is.
WAITING_HORIZON = timedelta(days=1)

_JOB_INTERVALS = text(
    """
    WITH intervals AS (
        SELECT start, start + make_interval(secs => :step) AS stop
          FROM generate_series(CAST(:since AS timestamptz),
                               CAST(:until AS timestamptz) - make_interval(secs => :step),
                               make_interval(secs => :step)) AS start
    ), scoped AS (
        SELECT enqueued_at, started_at, finished_at
          FROM jobs
         WHERE enqueued_at >= CAST(:horizon AS timestamptz) AND enqueued_at < :until
           AND (CAST(:tenant AS text) IS NULL OR tenant = :tenant)
           AND (:every_task OR task_name = ANY(:task_names))
    )
    SELECT i.start,
           (SELECT count(*) FROM scoped s
             WHERE s.enqueued_at < i.stop
               AND (s.started_at IS NULL OR s.started_at >= i.stop)
               AND (s.finished_at IS NULL OR s.finished_at >= i.stop)) AS waiting,
           (SELECT count(*) FROM scoped s
             WHERE s.enqueued_at >= i.start AND s.enqueued_at < i.stop) AS enqueued,
           f.finished, f.p50_ms, f.p95_ms
      FROM intervals AS i
      LEFT JOIN LATERAL (
            SELECT count(*) AS finished,
                   percentile_cont(0.5) WITHIN GROUP (ORDER BY latency) AS p50_ms,
                   percentile_cont(0.95) WITHIN GROUP (ORDER BY latency) AS p95_ms
              FROM (SELECT extract(epoch FROM s.finished_at - s.enqueued_at) * 1000 AS latency
                      FROM scoped s
                     WHERE s.finished_at >= i.start AND s.finished_at < i.stop) AS done
      ) AS f ON true
     ORDER BY i.start
    """
).bindparams(bindparam("task_names", type_=ARRAY(Text)))


def job_intervals(
    session: Session,
    *,
    since: datetime,
    until: datetime,
    step_seconds: int,
    tenant: str | None,
    task_names: Sequence[str] | None,
) -> list[JobInterval]:
    """Per interval of ``step_seconds`` from ``since`` to ``until``: waiting, enqueued and
    finished jobs and the finished ones' latency (of one tenant's jobs, of these tasks)."""
    rows = session.execute(
        _JOB_INTERVALS,
        {
            "since": since,
            "until": until,
            "horizon": since - WAITING_HORIZON,
            "step": step_seconds,
            "tenant": tenant,
            "every_task": task_names is None,
            "task_names": list(task_names or []),
        },
    ).all()
    return [
        JobInterval(
            start=row.start,
            waiting=row.waiting,
            enqueued=row.enqueued,
            finished=row.finished,
            p50_ms=row.p50_ms,
            p95_ms=row.p95_ms,
        )
        for row in rows
    ]


@dataclass(frozen=True)
class RepositoryLatency:
    repository: str
    # (when the build was asked for, its build time in ms), oldest first.
    builds: list[tuple[datetime, float]]
    # The anomaly score of its newest build's latency, and whether it is over the threshold.
    score: float | None
    flagged: bool


_BUILD_LATENCIES = text(
    """
    SELECT r.repository_url AS repository, r.created_at, r.build_ms
      FROM build_runs AS r
      JOIN jobs AS j ON j.id = r.job_id
     WHERE r.created_at >= :since AND r.build_ms IS NOT NULL
       AND (CAST(:tenant AS text) IS NULL OR j.tenant = :tenant)
     ORDER BY r.created_at
     LIMIT :limit
    """
)
_LATENCY_SCORES = text(
    """
    SELECT repository, value, flagged FROM capability_scores
     WHERE metric = 'build_latency' AND repository = ANY(:repositories)
    """
).bindparams(bindparam("repositories", type_=ARRAY(Text)))


def build_latencies(
    session: Session, *, since: datetime, tenant: str | None, limit: int = 5000
) -> list[RepositoryLatency]:
    """Each repository's builds since ``since`` (at most ``limit`` builds in all) with the
    anomaly score of its build latency, busiest repository first."""
    builds: dict[str, list[tuple[datetime, float]]] = defaultdict(list)
    for row in session.execute(
        _BUILD_LATENCIES, {"since": since, "tenant": tenant, "limit": limit}
    ):
        builds[row.repository].append((row.created_at, float(row.build_ms)))
    scores = {
        row.repository: (float(row.value), bool(row.flagged))
        for row in session.execute(_LATENCY_SCORES, {"repositories": sorted(builds)})
    }
    return sorted(
        (
            RepositoryLatency(
                repository=repository,
                builds=points,
                score=scores[repository][0] if repository in scores else None,
                flagged=scores.get(repository, (0.0, False))[1],
            )
            for repository, points in builds.items()
        ),
        key=lambda latency: (-len(latency.builds), latency.repository),
    )

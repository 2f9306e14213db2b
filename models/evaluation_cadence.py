"""The certification cadence Beat runs: refreshes due inside their window, expired
certifications turned stale, and claims whose job never ran released for the next sweep.

The sweep's statements touch only due rows, through partial indexes (see ``bench/beat.py``
for their plans): ``DUE_REFRESHES_SQL`` claims certifications inside their refresh window that
have no refresh yet (``refresh_job_id`` set in the same statement, so a second sweep, even a
concurrent one, skips them), and ``STALE_SQL`` moves expired ones to ``stale``.
"""

from __future__ import annotations

import uuid
from dataclasses import dataclass
from datetime import datetime, timedelta

from sqlalchemy import text
from sqlalchemy.orm import Session


@dataclass(frozen=True)
class DueRefresh:
    certification_id: uuid.UUID
    digest: str
    tier: str
    host: str
    repository: str
    # The id the refresh job is enqueued under: claimed with the row, so sending it twice
    # (a retried sweep) finds the same job.
    job_id: uuid.UUID


# The due rows, oldest refresh time first, claimed in the statement that finds them. SKIP LOCKED:
# two sweeps at once split the due rows instead of waiting on each other; the re-checked
# ``refresh_job_id IS NULL`` keeps any row from being claimed twice.
DUE_REFRESHES_SQL = """
    UPDATE evaluation_certifications AS c
       SET refresh_job_id = gen_random_uuid(), refresh_requested_at = :now
      FROM (
            SELECT id FROM evaluation_certifications
             WHERE status = 'active' AND refresh_job_id IS NULL AND refresh_at <= :now
             ORDER BY refresh_at
             LIMIT :limit
               FOR UPDATE SKIP LOCKED
           ) AS due
     WHERE c.id = due.id AND c.refresh_job_id IS NULL
 RETURNING c.id, c.digest, c.tier, c.host, c.repository, c.refresh_job_id
"""

STALE_SQL = """
    UPDATE evaluation_certifications
       SET status = 'stale', reason = 'expired before a refresh passed', updated_at = :now
     WHERE status = 'active' AND expires_at <= :now
 RETURNING id
"""

# Claimed refreshes that will not produce an evaluation, released for the next sweep: the job
# ended preempted or dead-lettered, or never came to exist (the sweep died between claiming and
# sending; given this long, since a claim commits a moment before its job). Claimed rows are few
# (refreshes in flight), found through their own partial index.
UNSENT_CLAIM_GRACE = timedelta(minutes=10)

FAILED_CLAIMS_SQL = """
    UPDATE evaluation_certifications AS c
       SET refresh_job_id = NULL, refresh_requested_at = NULL
     WHERE c.status = 'active' AND c.refresh_job_id IS NOT NULL
       AND c.refresh_requested_at IS NOT NULL
       AND NOT EXISTS (
            SELECT 1 FROM jobs j
             WHERE j.id = c.refresh_job_id AND j.status NOT IN ('preempted', 'dead_lettered')
           )
       AND (c.refresh_requested_at <= :before
            OR EXISTS (SELECT 1 FROM jobs j WHERE j.id = c.refresh_job_id))
 RETURNING c.id
"""


def claim_due_refreshes(session: Session, *, now: datetime, limit: int) -> list[DueRefresh]:
    rows = session.execute(text(DUE_REFRESHES_SQL), {"now": now, "limit": limit}).all()
    return [
        DueRefresh(
            certification_id=row.id,
            digest=row.digest,
            tier=row.tier,
            host=row.host,
            repository=row.repository,
            job_id=row.refresh_job_id,
        )
        for row in rows
    ]


def mark_stale(session: Session, *, now: datetime) -> int:
    """Active certifications past expiry become stale; how many did."""
    return len(session.execute(text(STALE_SQL), {"now": now}).all())


def release_failed_claims(session: Session, *, now: datetime) -> int:
    return len(session.execute(text(FAILED_CLAIMS_SQL), {"before": now - UNSENT_CLAIM_GRACE}).all())

"""Evaluation tiers and certifications: queries, the lineage of a (digest, tier), and the
cadence sweep Beat runs.

A certification row is one evaluation. A pass makes it ``active`` (the previous active row of the
same digest and tier becomes ``superseded``); a fail makes it ``failed`` and revokes the active
one. ``replaces_id`` links each row to the one it followed, so ``lineage`` walks the history.

The sweep's two statements touch only due rows, through partial indexes (see ``bench/beat.py``
for their plans): ``DUE_REFRESHES_SQL`` claims certifications inside their refresh window that
have no refresh yet (``refresh_job_id`` set in the same statement, so a second sweep, even a
concurrent one, skips them), and ``STALE_SQL`` moves expired ones to ``stale``.
"""

from __future__ import annotations

import uuid
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Any

from sqlalchemy import select, text, update
from sqlalchemy.orm import Session

from kernel.errors import DrydockError, NotFoundError
from models.tables import (
    CertificationStatus,
    EvaluationCertification,
    EvaluationTier,
    ImageCertification,
)

# The name image_certifications rows carry for a tier, so retention keeps certified digests.
IMAGE_CERTIFICATION_PREFIX = "evaluation:"


class TierNotFoundError(NotFoundError):
    pass


class CertificationError(DrydockError):
    """A certification request that cannot be honoured as asked."""


def image_certification_name(tier: str) -> str:
    return f"{IMAGE_CERTIFICATION_PREFIX}{tier}"


# ---- tiers ---------------------------------------------------------------------------------------


def put_tier(
    session: Session,
    *,
    name: str,
    suite: dict[str, Any],
    validity_seconds: int,
    refresh_window_seconds: int,
    description: str,
    by: str,
) -> EvaluationTier:
    """Create or replace a tier. Certifications already issued keep their times; the next
    evaluation uses the new suite and validity."""
    if validity_seconds <= 0:
        raise CertificationError("validity must be positive")
    if not 0 <= refresh_window_seconds < validity_seconds:
        raise CertificationError(
            f"the refresh window ({refresh_window_seconds}s) must be shorter than the validity "
            f"({validity_seconds}s), or the refresh would be due as soon as a certification is "
            "issued"
        )
    tier = session.get(EvaluationTier, name, with_for_update=True)
    if tier is None:
        tier = EvaluationTier(name=name)
        session.add(tier)
    tier.suite = suite
    tier.validity_seconds = validity_seconds
    tier.refresh_window_seconds = refresh_window_seconds
    tier.description = description
    tier.updated_by = by
    session.flush()
    return tier


def get_tier(session: Session, name: str) -> EvaluationTier:
    tier = session.get(EvaluationTier, name)
    if tier is None:
        raise TierNotFoundError(f"no evaluation tier {name!r}; create it with `drydock tiers put`")
    return tier


def list_tiers(session: Session) -> Sequence[EvaluationTier]:
    return session.execute(select(EvaluationTier).order_by(EvaluationTier.name)).scalars().all()


# ---- certifications ------------------------------------------------------------------------------


def active_certification(
    session: Session, digest: str, tier: str, *, lock: bool = False
) -> EvaluationCertification | None:
    stmt = select(EvaluationCertification).where(
        EvaluationCertification.digest == digest,
        EvaluationCertification.tier == tier,
        EvaluationCertification.status == CertificationStatus.ACTIVE.value,
    )
    if lock:
        stmt = stmt.with_for_update()
    return session.execute(stmt).scalar_one_or_none()


def latest_certification(
    session: Session, digest: str, tier: str
) -> EvaluationCertification | None:
    """The newest evaluation of a digest at a tier, whatever its outcome: what the policy
    engine's freshness gate judges."""
    return session.execute(
        select(EvaluationCertification)
        .where(EvaluationCertification.digest == digest, EvaluationCertification.tier == tier)
        .order_by(EvaluationCertification.evaluated_at.desc())
        .limit(1)
    ).scalar_one_or_none()


def certification_for_job(session: Session, job_id: uuid.UUID) -> EvaluationCertification | None:
    return session.execute(
        select(EvaluationCertification).where(EvaluationCertification.job_id == job_id)
    ).scalar_one_or_none()


def get_certification(session: Session, cert_id: uuid.UUID) -> EvaluationCertification:
    cert = session.get(EvaluationCertification, cert_id)
    if cert is None:
        raise NotFoundError(f"no certification {cert_id}")
    return cert


def lineage(session: Session, cert_id: uuid.UUID) -> list[EvaluationCertification]:
    """The certification and every one it replaced, newest first (one recursive query)."""
    rows = session.execute(
        text(
            """
            WITH RECURSIVE chain(id, depth) AS (
                SELECT id, 0 FROM evaluation_certifications WHERE id = :id
                UNION ALL
                SELECT c.replaces_id, chain.depth + 1
                  FROM chain JOIN evaluation_certifications c ON c.id = chain.id
                 WHERE c.replaces_id IS NOT NULL AND chain.depth < 1000
            )
            SELECT id FROM chain ORDER BY depth
            """
        ),
        {"id": cert_id},
    ).scalars()
    ids = list(rows)
    if not ids:
        raise NotFoundError(f"no certification {cert_id}")
    found = {
        c.id: c
        for c in session.execute(
            select(EvaluationCertification).where(EvaluationCertification.id.in_(ids))
        ).scalars()
    }
    return [found[i] for i in ids]


def list_certifications(
    session: Session,
    *,
    digest: str | None = None,
    tier: str | None = None,
    status: str | None = None,
    limit: int = 50,
) -> Sequence[EvaluationCertification]:
    stmt = select(EvaluationCertification)
    if digest is not None:
        stmt = stmt.where(EvaluationCertification.digest == digest)
    if tier is not None:
        stmt = stmt.where(EvaluationCertification.tier == tier)
    if status is not None:
        stmt = stmt.where(EvaluationCertification.status == status)
    return (
        session.execute(stmt.order_by(EvaluationCertification.evaluated_at.desc()).limit(limit))
        .scalars()
        .all()
    )


@dataclass(frozen=True)
class Evaluation:
    """What one run of a tier's suite found, to be recorded."""

    job_id: uuid.UUID
    digest: str
    tier: str
    host: str
    repository: str
    passed: bool
    evidence: list[dict[str, Any]]
    summary: str
    evaluated_at: datetime


def record_evaluation(session: Session, evaluation: Evaluation) -> EvaluationCertification:
    """Record an evaluation: on a pass, issue the next certification (the active one is
    superseded); on a fail, keep the evidence as a failed row and revoke the active one.

    Idempotent per job: a redelivered refresh finds the row its first delivery wrote."""
    existing = certification_for_job(session, evaluation.job_id)
    if existing is not None:
        return existing
    tier = get_tier(session, evaluation.tier)
    current = active_certification(session, evaluation.digest, evaluation.tier, lock=True)
    previous = current or latest_certification(session, evaluation.digest, evaluation.tier)
    at = evaluation.evaluated_at
    row = EvaluationCertification(
        digest=evaluation.digest,
        tier=evaluation.tier,
        host=evaluation.host,
        repository=evaluation.repository,
        evidence=evaluation.evidence,
        summary=evaluation.summary,
        evaluated_at=at,
        cadence_seconds=tier.validity_seconds,
        replaces_id=previous.id if previous is not None else None,
        job_id=evaluation.job_id,
    )
    name = image_certification_name(evaluation.tier)
    if current is not None:
        current.status = (
            CertificationStatus.SUPERSEDED.value
            if evaluation.passed
            else CertificationStatus.REVOKED.value
        )
        if not evaluation.passed:
            current.revoked_at = at
            current.reason = f"evaluation failed: {evaluation.summary}"
        # The unique index allows one active row: the old one leaves before the new one comes.
        session.flush()
    if evaluation.passed:
        row.status = CertificationStatus.ACTIVE.value
        row.issued_at = at
        row.expires_at = at + timedelta(seconds=tier.validity_seconds)
        row.refresh_at = row.expires_at - timedelta(seconds=tier.refresh_window_seconds)
        _keep_image_certification(session, evaluation, name, row.issued_at, row.expires_at)
    else:
        row.status = CertificationStatus.FAILED.value
        row.reason = evaluation.summary
        _revoke_image_certifications(session, evaluation.digest, name, at)
    session.add(row)
    session.flush()
    return row


def revoke(session: Session, cert_id: uuid.UUID, *, reason: str, at: datetime) -> None:
    """An operator's revocation of an active certification."""
    cert = session.get(EvaluationCertification, cert_id, with_for_update=True)
    if cert is None:
        raise NotFoundError(f"no certification {cert_id}")
    if cert.status != CertificationStatus.ACTIVE.value:
        raise CertificationError(f"certification {cert_id} is {cert.status}, not active")
    cert.status = CertificationStatus.REVOKED.value
    cert.revoked_at = at
    cert.reason = reason
    _revoke_image_certifications(session, cert.digest, image_certification_name(cert.tier), at)


def release_refresh(session: Session, cert_id: uuid.UUID, refresh_job_id: uuid.UUID) -> bool:
    """Let the next sweep enqueue a refresh again: the one claimed (``refresh_job_id``) did not
    produce an evaluation (refused by policy, preempted, dead-lettered, or never sent)."""
    released = session.execute(
        update(EvaluationCertification)
        .where(
            EvaluationCertification.id == cert_id,
            EvaluationCertification.refresh_job_id == refresh_job_id,
            EvaluationCertification.status == CertificationStatus.ACTIVE.value,
        )
        .values(refresh_job_id=None, refresh_requested_at=None)
    )
    return bool(released.rowcount)  # type: ignore[attr-defined]


def _keep_image_certification(
    session: Session, evaluation: Evaluation, name: str, issued: datetime, expires: datetime
) -> None:
    live = session.execute(
        select(ImageCertification)
        .where(
            ImageCertification.host == evaluation.host,
            ImageCertification.repository == evaluation.repository,
            ImageCertification.digest == evaluation.digest,
            ImageCertification.name == name,
            ImageCertification.revoked_at.is_(None),
        )
        .with_for_update()
    ).scalars()
    rows = list(live)
    if rows:
        for row in rows:
            row.expires_at = expires
        return
    session.add(
        ImageCertification(
            host=evaluation.host,
            repository=evaluation.repository,
            digest=evaluation.digest,
            name=name,
            issued_at=issued,
            expires_at=expires,
        )
    )


def _revoke_image_certifications(session: Session, digest: str, name: str, at: datetime) -> None:
    session.execute(
        update(ImageCertification)
        .where(
            ImageCertification.digest == digest,
            ImageCertification.name == name,
            ImageCertification.revoked_at.is_(None),
        )
        .values(revoked_at=at)
    )


# ---- the cadence sweep ---------------------------------------------------------------------------


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

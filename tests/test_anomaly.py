"""Capability scores recomputed from a seeded build ledger in a real PostgreSQL: the robust
latency z-score against an independent computation, credential churn, missing architectures, the
window, min_builds, idempotence, and finding an image's repository by digest."""

from __future__ import annotations

import statistics
import uuid
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest
from sqlalchemy import delete
from sqlalchemy.orm import Session

from models.anomaly import (
    Z_CAP,
    CapabilityScore,
    RecomputeSummary,
    recompute_capability_scores,
    repository_for_digest,
    scores_for,
)
from models.builds import BuildPlatform, BuildRun, RegistryEvent
from models.credentials import CredentialEvent
from models.db import session_scope
from models.jobs import Job

NOW = datetime(2025, 6, 1, 12, 0, tzinfo=UTC)
WINDOW = timedelta(days=7)
THRESHOLD = 3.5
MIN_BUILDS = 5
CHURN_THRESHOLD = 3

SPIKY = "https://git.example/team/spiky.git"
STEADY = "https://git.example/team/steady.git"
REGISTRY = "registry.example:5000"


@pytest.fixture
def ledger(clean_state: None) -> Iterator[None]:
    # clean_state empties the ledger (jobs CASCADE) but not capability_scores, which has no
    # foreign key to it.
    with session_scope() as session:
        session.execute(delete(CapabilityScore))
    yield


def recompute(
    now: datetime = NOW, min_builds: int = MIN_BUILDS, window: timedelta = WINDOW
) -> RecomputeSummary:
    with session_scope() as session:
        return recompute_capability_scores(
            session,
            now=now,
            window=window,
            latency_z_threshold=THRESHOLD,
            min_builds=min_builds,
            churn_threshold=CHURN_THRESHOLD,
        )


@dataclass(frozen=True)
class Score:
    value: float
    flagged: bool
    detail: dict[str, Any]


def scores(repository: str) -> dict[str, Score]:
    with session_scope() as session:
        return {
            row.metric: Score(row.value, row.flagged, row.detail)
            for row in scores_for(session, repository)
        }


def add_run(
    session: Session,
    repository: str,
    *,
    hours_ago: float,
    build_ms: float | None = 100.0,
    status: str = "built",
    platforms: Sequence[str] = ("linux/amd64",),
    built: Sequence[str] | None = None,
    registry: str | None = None,
    index_digest: str | None = None,
) -> uuid.UUID:
    """A finished run created ``hours_ago`` (finished 10 minutes later) with a built row for
    each platform in ``built`` (default: all of them)."""
    job_id = uuid.uuid4()
    session.add(Job(id=job_id, task_name="builds.build_image", queue="builds", payload={}))
    # No ORM relationships tell the unit of work the order: the job goes first.
    session.flush()
    created = NOW - timedelta(hours=hours_ago)
    run_id = uuid.uuid4()
    session.add(
        BuildRun(
            id=run_id,
            job_id=job_id,
            repository_url=repository,
            revision="main",
            image="team/app",
            backend="docker",
            platforms=list(platforms),
            push_target=(
                None
                if registry is None
                else {"registry": registry, "repository": "team/app", "tag": "main"}
            ),
            status=status,
            index_digest=index_digest,
            build_ms=build_ms,
            created_at=created,
            finished_at=created + timedelta(minutes=10),
        )
    )
    session.flush()
    for platform in platforms if built is None else built:
        session.add(
            BuildPlatform(
                run_id=run_id, platform=platform, tag=f"team/app:{platform}", status="built"
            )
        )
    session.flush()
    return run_id


def add_latencies(repository: str, latencies: Sequence[float], *, start_hours_ago: float) -> None:
    """Runs an hour apart, oldest first: the last latency is the newest run's."""
    with session_scope() as session:
        for index, latency in enumerate(latencies):
            add_run(session, repository, hours_ago=start_hours_ago - index, build_ms=latency)


def robust_z(latencies: Sequence[float]) -> float:
    """The newest latency's z against the others, computed without the database."""
    *baseline, newest = latencies
    median = statistics.median(baseline)
    mad = statistics.median(abs(value - median) for value in baseline)
    return 0.6745 * (newest - median) / mad


BASELINE = [100.0, 110.0, 105.0, 95.0, 102.0, 98.0, 107.0]


def test_a_latency_spike_is_flagged_with_the_robust_z_score_and_a_steady_repository_is_not(
    ledger: None,
) -> None:
    add_latencies(SPIKY, [*BASELINE, 400.0], start_hours_ago=20)
    add_latencies(STEADY, [*BASELINE, 104.0], start_hours_ago=20)
    # A far slower build three weeks ago is outside the window: not part of the baseline.
    add_latencies(SPIKY, [1_000_000.0], start_hours_ago=24 * 21)

    summary = recompute()

    spiky = scores(SPIKY)["build_latency"]
    expected = robust_z([*BASELINE, 400.0])
    assert expected > THRESHOLD
    assert spiky.value == pytest.approx(expected)
    assert spiky.flagged
    assert spiky.detail["latency_ms"] == 400.0
    assert spiky.detail["median_ms"] == statistics.median(BASELINE)
    assert spiky.detail["n"] == len(BASELINE) + 1
    steady = scores(STEADY)["build_latency"]
    assert steady.value == pytest.approx(robust_z([*BASELINE, 104.0]))
    assert not steady.flagged
    assert summary.repositories == 2
    assert summary.flagged["build_latency"] == 1


def test_the_detail_names_the_newest_run_and_a_faster_build_is_never_flagged(
    ledger: None,
) -> None:
    add_latencies(SPIKY, BASELINE, start_hours_ago=20)
    with session_scope() as session:
        newest = add_run(session, SPIKY, hours_ago=1, build_ms=5.0)

    recompute()

    score = scores(SPIKY)["build_latency"]
    assert score.detail["run_id"] == str(newest)
    assert score.value == pytest.approx(robust_z([*BASELINE, 5.0]))
    assert score.value < -THRESHOLD and not score.flagged


def test_a_baseline_without_median_spread_falls_back_to_the_mean_absolute_deviation(
    ledger: None,
) -> None:
    baseline = [100.0, 100.0, 100.0, 100.0, 160.0]
    add_latencies(SPIKY, [*baseline, 130.0], start_hours_ago=20)
    identical = "https://git.example/team/identical.git"
    add_latencies(identical, [100.0] * 5 + [101.0], start_hours_ago=20)
    unchanged = "https://git.example/team/unchanged.git"
    add_latencies(unchanged, [100.0] * 6, start_hours_ago=20)

    recompute()

    mean_absolute_deviation = statistics.mean(abs(value - 100.0) for value in baseline)
    assert scores(SPIKY)["build_latency"].value == pytest.approx(
        (130.0 - 100.0) / (1.2533 * mean_absolute_deviation)
    )
    # No spread at all: any difference is the capped score, flagged; no difference scores 0.
    capped = scores(identical)["build_latency"]
    assert capped.value == Z_CAP and capped.flagged
    assert capped.detail["mad_ms"] == 0 and capped.detail["mean_absolute_deviation_ms"] == 0
    assert scores(unchanged)["build_latency"].value == 0.0
    assert not scores(unchanged)["build_latency"].flagged


def test_fewer_than_min_builds_has_no_latency_score_and_loses_an_old_one(ledger: None) -> None:
    add_latencies(SPIKY, [100.0, 101.0, 99.0, 500.0], start_hours_ago=10)

    recompute(min_builds=4)
    assert scores(SPIKY)["build_latency"].flagged

    recompute(min_builds=5)
    assert "build_latency" not in scores(SPIKY)
    # The repository still has its other scores: it built in the window.
    assert set(scores(SPIKY)) == {"credential_churn", "missing_architectures"}


def test_the_newest_finished_run_names_its_missing_architectures(ledger: None) -> None:
    both = ("linux/amd64", "linux/arm64")
    with session_scope() as session:
        # An older run that missed arm64 no longer counts once a newer one built everything.
        add_run(session, STEADY, hours_ago=30, platforms=both, built=["linux/amd64"])
        add_run(session, STEADY, hours_ago=5, platforms=both)
        add_run(session, SPIKY, hours_ago=30, platforms=both)
        missing_run = add_run(
            session,
            SPIKY,
            hours_ago=5,
            status="failed",
            platforms=(*both, "linux/s390x"),
            built=["linux/amd64"],
        )
        # arm64 was attempted and failed: a row, but not a built one.
        session.add(
            BuildPlatform(run_id=missing_run, platform="linux/arm64", tag="t", status="failed")
        )

    summary = recompute()

    missing = scores(SPIKY)["missing_architectures"]
    assert missing.value == 2 and missing.flagged
    assert missing.detail["missing"] == ["linux/arm64", "linux/s390x"]
    assert missing.detail["run_id"] == str(missing_run)
    assert missing.detail["status"] == "failed"
    complete = scores(STEADY)["missing_architectures"]
    assert complete.value == 0 and not complete.flagged
    assert summary.flagged["missing_architectures"] == 1


def test_credential_churn_counts_rotations_refusals_and_auth_refreshes_of_its_registry(
    ledger: None,
) -> None:
    with session_scope() as session:
        run_id = add_run(session, SPIKY, hours_ago=5, registry=REGISTRY)
        add_run(session, STEADY, hours_ago=5, registry="other.example")
        add_run(session, "https://git.example/team/local.git", hours_ago=5)
        in_window = NOW - timedelta(days=1)
        for host, kind, at in [
            (REGISTRY, "rotated", in_window),
            (REGISTRY, "rotated", in_window),
            (REGISTRY, "probe_refused", in_window),
            (REGISTRY, "rotation_failed", in_window),
            # Not churn: an accepted probe, another registry, an event outside the window.
            (REGISTRY, "probe_accepted", in_window),
            ("elsewhere.example", "rotated", in_window),
            (REGISTRY, "rotated", NOW - timedelta(days=10)),
        ]:
            session.add(CredentialEvent(host=host, kind=kind, at=at, detail={}))
        job_id = session.get_one(BuildRun, run_id).job_id
        session.add(
            RegistryEvent(
                job_id=job_id,
                run_id=run_id,
                kind="auth_refresh",
                schema_version=1,
                platform="linux/amd64",
                at=in_window,
                detail={"registry": REGISTRY, "provider": "htpasswd", "outcome": "refreshed"},
            )
        )

    summary = recompute()

    churn = scores(SPIKY)["credential_churn"]
    assert churn.value == 5 and churn.flagged
    assert churn.detail == {
        "hosts": [REGISTRY],
        "rotated": 2,
        "rotation_failed": 1,
        "probe_refused": 1,
        "auth_refresh": 1,
    }
    assert scores(STEADY)["credential_churn"].value == 0
    assert not scores("https://git.example/team/local.git")["credential_churn"].flagged
    assert summary.repositories == 3
    assert summary.flagged["credential_churn"] == 1


def test_recomputing_twice_gives_the_same_scores(ledger: None) -> None:
    add_latencies(SPIKY, [*BASELINE, 400.0], start_hours_ago=20)
    add_latencies(STEADY, [*BASELINE, 104.0], start_hours_ago=20)

    first = recompute()
    before = {repository: scores(repository) for repository in (SPIKY, STEADY)}
    second = recompute()

    assert second == first
    assert {repository: scores(repository) for repository in (SPIKY, STEADY)} == before
    with session_scope() as session:
        assert len(session.query(CapabilityScore).all()) == 6


def test_repositories_whose_runs_left_the_window_lose_their_scores(ledger: None) -> None:
    add_latencies(SPIKY, [*BASELINE, 400.0], start_hours_ago=20)
    add_latencies(STEADY, [*BASELINE, 104.0], start_hours_ago=24 * 30)

    recompute()
    assert scores(STEADY) == {}  # a month old: outside the window from the start
    assert len(scores(SPIKY)) == 3

    summary = recompute(now=NOW + timedelta(days=8))
    assert scores(SPIKY) == {}
    assert summary.repositories == 0
    assert summary.flagged == {
        "build_latency": 0,
        "credential_churn": 0,
        "missing_architectures": 0,
    }


def test_an_image_digest_leads_to_the_repository_of_its_newest_build(ledger: None) -> None:
    platform_digest = "sha256:" + "a" * 64
    index_digest = "sha256:" + "b" * 64
    with session_scope() as session:
        add_run(session, STEADY, hours_ago=50)
        older = add_run(session, STEADY, hours_ago=40, index_digest=index_digest)
        newer = add_run(session, SPIKY, hours_ago=2)
        for run_id in (older, newer):
            session.query(BuildPlatform).filter_by(run_id=run_id).update(
                {"digest": platform_digest}
            )

    with session_scope() as session:
        assert repository_for_digest(session, platform_digest) == SPIKY
        assert repository_for_digest(session, index_digest) == STEADY
        assert repository_for_digest(session, "sha256:" + "c" * 64) is None


def test_a_naive_time_is_refused(ledger: None) -> None:
    with session_scope() as session, pytest.raises(ValueError, match="timezone-aware"):
        recompute_capability_scores(
            session,
            now=NOW.replace(tzinfo=None),
            window=WINDOW,
            latency_z_threshold=THRESHOLD,
            min_builds=MIN_BUILDS,
            churn_threshold=CHURN_THRESHOLD,
        )

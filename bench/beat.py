"""Beat's upkeep at scale: the anomaly recomputation and the evaluation cadence sweep.

    python -m bench.beat [--builds 1000000] [--repositories 5000] [--ledger-days 6.5]
                         [--certifications 1000000] [--rounds 3] [--parts anomaly,cadence]
                         [--explain]

It starts its own PostgreSQL (default durability settings) in a temporary directory, migrates it,
seeds it with set-based SQL (``generate_series``, no row built in Python), runs the very
functions Beat's tasks call, and stops the server when it ends.

1. **anomaly**: ``models.anomaly.recompute_capability_scores`` over a ledger of ``--builds``
   build runs (each with its job row and per-platform rows; a pushed one with two registry
   events, and 1% of those an auth refresh) of ``--repositories`` repositories, spread over
   ``--ledger-days`` before now, plus 100,000 credential events (three registries churning).
   By default the whole ledger lies inside the 7-day window, the worst case: every run is
   read. The newest build of one
   repository in a hundred is ten times slower than its others; the run checks exactly those
   are flagged. Each of ``--rounds`` recomputations is timed (the first inserts the scores,
   later ones update them), with each of its three statements. Target: every recomputation
   ≤ 10 s.
2. **cadence**: ``models.evaluation.claim_due_refreshes`` and ``mark_stale`` over
   ``--certifications`` evaluation certifications of which 1% are due for a refresh and 0.1%
   expired. It times the sweeps Beat makes (each claims at most ``evaluation_refresh_batch``
   and marks the expired stale) until nothing is due, then, from the seeded state again,
   prints ``EXPLAIN ANALYZE`` of both statements (rolled back), checks the due query reads
   ``ix_evaluation_certifications_refresh_due`` and the stale one
   ``ix_evaluation_certifications_expiry``, and for reference times one sweep claiming every
   due row at once. Target: every sweep ≤ 1 s.

``--explain`` also prints ``EXPLAIN ANALYZE`` of the three anomaly statements. The exit status
is 1 when a target or a check was missed.
"""

from __future__ import annotations

import argparse
import shutil
import statistics
import sys
import tempfile
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from sqlalchemy import Connection, Engine, event, text  # noqa: E402
from sqlalchemy.orm import Session  # noqa: E402

from drydock import localservers  # noqa: E402
from kernel.settings import Settings  # noqa: E402

ANOMALY_TARGET_S = 10.0
SWEEP_TARGET_S = 1.0
# Every hundredth repository's newest build is this much slower than its usual builds.
SPIKE_EVERY = 100
SPIKE_FACTOR = 10
REGISTRY_HOSTS = 50
CREDENTIAL_EVENTS = 100_000
DUE_INDEX = "ix_evaluation_certifications_refresh_due"
EXPIRY_INDEX = "ix_evaluation_certifications_expiry"

# --- seeding: set-based, the ledger's newest run at i = n ----------------------------------------

# Runs i = 1..n, created evenly over the ledger's span (newest last), finished 5 minutes later
# and an hour before now. Repository k = i % r: each builds at its own level (1-7 minutes) ±10%;
# even ones build two platforms, every fifth one pushes nowhere, one run in 97 failed (its arm64
# image missing).
SEED_BUILDS_SQL = """
INSERT INTO jobs (id, task_name, queue, payload, status, attempts, enqueued_at, finished_at)
SELECT md5('job-' || i)::uuid, 'builds.build_image', 'builds', '{}'::jsonb, 'succeeded', 1,
       created, created + interval '5 minutes'
FROM (
    SELECT i, :now - interval '1 hour' - :span * ((:n - i)::float8 / :n) AS created
    FROM generate_series(1, :n) AS i
) AS seq;

INSERT INTO build_runs (
    id, job_id, repository_url, revision, commit, ref_kind, image, backend, platforms,
    push_target, status, credential_outcome, index_digest, created_at, fetch_ms, build_ms,
    built_at, finished_at
)
SELECT md5('run-' || i)::uuid, md5('job-' || i)::uuid,
       'https://git.example/team/repo-' || k || '.git', 'main', md5('commit-' || i), 'branch',
       'team/repo-' || k, 'docker',
       CASE WHEN k % 2 = 0 THEN '["linux/amd64", "linux/arm64"]'::jsonb
            ELSE '["linux/amd64"]'::jsonb END,
       CASE WHEN k % 5 = 4 THEN NULL
            ELSE jsonb_build_object(
                'registry', 'registry-' || (k % :hosts) || '.example:5000',
                'repository', 'team/repo-' || k, 'tag', 'main') END,
       CASE WHEN i % 97 = 0 THEN 'failed' WHEN k % 5 = 4 THEN 'built' ELSE 'published' END,
       CASE WHEN k % 5 = 4 THEN 'not_needed' ELSE 'issued' END,
       CASE WHEN i % 97 <> 0 AND k % 5 <> 4
            THEN 'sha256:' || encode(sha256(('index-' || i)::bytea), 'hex') END,
       created, 1500 + 1000 * random(),
       60000 * (1 + k % 7) * (0.9 + 0.2 * random())
           * CASE WHEN i > :n - :r AND k % :spike_every = 0 THEN :spike_factor ELSE 1 END,
       created + interval '4 minutes', created + interval '5 minutes'
FROM (
    SELECT i, i % :r AS k, :now - interval '1 hour' - :span * ((:n - i)::float8 / :n) AS created
    FROM generate_series(1, :n) AS i
) AS seq;

INSERT INTO build_platforms (run_id, platform, tag, status, image_id, build_ms, digest)
SELECT run.id, p.platform, run.image || ':' || 'main-' || replace(p.platform, '/', '-'),
       CASE WHEN run.status = 'failed' AND p.platform = 'linux/arm64' THEN 'failed'
            WHEN run.push_target IS NULL THEN 'built' ELSE 'pushed' END,
       'sha256:' || md5(run.id::text || p.platform), run.build_ms,
       CASE WHEN run.push_target IS NOT NULL
            THEN 'sha256:' || encode(sha256((run.id::text || p.platform)::bytea), 'hex') END
FROM build_runs AS run CROSS JOIN LATERAL jsonb_array_elements_text(run.platforms) AS p(platform);

-- Two registry events a pushed run leaves, and an auth refresh for one run in a hundred.
INSERT INTO registry_events (job_id, run_id, kind, schema_version, platform, at, detail)
SELECT run.job_id, run.id, kind, 1, 'linux/amd64', run.finished_at, '{}'::jsonb
FROM build_runs AS run CROSS JOIN (VALUES ('push_started'), ('push_succeeded')) AS k(kind)
WHERE run.push_target IS NOT NULL;
INSERT INTO registry_events (job_id, run_id, kind, schema_version, platform, at, detail)
SELECT run.job_id, run.id, 'auth_refresh', 1, 'linux/amd64', run.finished_at, '{}'::jsonb
FROM build_runs AS run
WHERE run.push_target IS NOT NULL AND hashtext(run.id::text) % 100 = 0;

-- Probes of every registry, spread over the ledger's span; three registries churn (one event
-- in ten a rotation, a failed one or a refused probe), so their repositories are flagged.
INSERT INTO credential_events (host, kind, detail, at)
SELECT 'registry-' || (i % :hosts) || '.example:5000',
       CASE WHEN i % :hosts < 3 AND i / :hosts % 10 = 0
            THEN (ARRAY['rotated', 'rotation_failed', 'probe_refused'])[1 + i % 3]
            ELSE 'probe_accepted' END,
       '{}'::jsonb, :now - :span * (i::float8 / :credential_events)
FROM generate_series(1, :credential_events) AS i;
"""

# Certifications i = 1..n, one digest each, at one tier: one in a hundred due for its refresh
# (refresh time passed, not expired, not claimed), one in a thousand expired with a refresh that
# never passed (claimed), one in ten no longer active, the rest due later within 29 days.
SEED_CERTIFICATIONS_SQL = """
INSERT INTO evaluation_tiers (name, suite, validity_seconds, refresh_window_seconds, description)
VALUES ('standard', '{"command": ["true"], "timeout_seconds": 60}', 2592000, 86400, 'bench');

INSERT INTO evaluation_certifications (
    id, digest, tier, host, repository, status, evidence, summary, evaluated_at, issued_at,
    expires_at, refresh_at, cadence_seconds, refresh_job_id, refresh_requested_at, reason
)
SELECT md5('cert-' || i)::uuid, 'sha256:' || encode(sha256(('digest-' || i)::bytea), 'hex'),
       'standard', 'registry.example:5000', 'team/repo-' || i % 5000,
       CASE WHEN i % 10 = 5 THEN 'superseded' ELSE 'active' END,
       '[]'::jsonb, '', issued, issued, issued + interval '30 days',
       issued + interval '29 days', 2592000,
       CASE WHEN i % 1000 = 1 THEN md5('refresh-' || i)::uuid END,
       CASE WHEN i % 1000 = 1 THEN :now - interval '1 day' END, ''
FROM (
    SELECT i, CASE
        -- due: the refresh window opened up to 12 hours ago
        WHEN i % 100 = 0 THEN :now - interval '29 days' - interval '12 hours' * random()
        -- expired, its claimed refresh never passed
        WHEN i % 1000 = 1 THEN :now - interval '31 days'
        ELSE :now - interval '29 days' * random() + interval '1 minute'
    END AS issued
    FROM generate_series(1, :n) AS i
) AS seq;
"""

# Back to the seeded state after a sweep: claims undone, stale rows active again.
RESET_CERTIFICATIONS_SQL = """
UPDATE evaluation_certifications SET refresh_job_id = NULL, refresh_requested_at = NULL
WHERE refresh_requested_at = :now;
UPDATE evaluation_certifications SET status = 'active', reason = '' WHERE status = 'stale';
"""


def run_script(engine: Engine, script: str, params: dict[str, Any]) -> None:
    """Each ``;``-terminated statement of ``script`` in one transaction, timed."""
    with engine.begin() as conn:
        for statement in (part.strip() for part in script.split(";\n")):
            if not statement:
                continue
            started = time.monotonic()
            result = conn.execute(text(statement), params)
            first_line = next(line for line in statement.splitlines() if not line.startswith("--"))
            print(
                f"  {first_line[:60]:<60} {result.rowcount:>10,} rows "
                f"{time.monotonic() - started:6.1f} s",
                flush=True,
            )


def vacuum_analyze(engine: Engine) -> None:
    """Statistics for the planner, hint bits set, and the seeding's dirty pages written: what is
    timed next is the statement, not the aftermath of a bulk load."""
    with engine.connect().execution_options(isolation_level="AUTOCOMMIT") as conn:
        conn.execute(text("VACUUM ANALYZE"))
        conn.execute(text("CHECKPOINT"))


@contextmanager
def rolled_back(engine: Engine) -> Iterator[Session]:
    with Session(engine) as session:
        try:
            yield session
        finally:
            session.rollback()


def explain(engine: Engine, sql: str, params: dict[str, Any]) -> str:
    """EXPLAIN ANALYZE of ``sql`` with its effects rolled back."""
    with rolled_back(engine) as session:
        rows = session.execute(text("EXPLAIN (ANALYZE, BUFFERS) " + sql), params).scalars()
        return "\n".join(f"    {line}" for line in rows)


class StatementTimer:
    """Times every statement the engine runs, in order, while it is on."""

    def __init__(self, engine: Engine) -> None:
        self.timings: list[float] = []
        self._started = 0.0
        event.listen(engine, "before_cursor_execute", self._before)
        event.listen(engine, "after_cursor_execute", self._after)

    def _before(self, conn: Connection, *args: Any) -> None:
        self._started = time.monotonic()

    def _after(self, conn: Connection, *args: Any) -> None:
        self.timings.append(time.monotonic() - self._started)

    def take(self) -> list[float]:
        taken, self.timings = self.timings, []
        return taken


# --- 1. anomaly recomputation ------------------------------------------------------------------


@dataclass
class AnomalyRound:
    seconds: float
    statements: list[float]
    repositories: int
    flagged: dict[str, int]


def bench_anomaly(engine: Engine, args: argparse.Namespace, now: datetime) -> bool:
    """True when the target or the check was missed."""
    from models.anomaly import (
        CHURN_SQL,
        LATENCY_SQL,
        MISSING_ARCHITECTURES_SQL,
        recompute_capability_scores,
    )

    settings = Settings()
    window = timedelta(seconds=settings.anomaly_window_seconds)
    print(
        f"\n1. anomaly recomputation: seeding {args.builds:,} build runs of "
        f"{args.repositories:,} repositories over {args.ledger_days} day(s)",
        flush=True,
    )
    started = time.monotonic()
    run_script(
        engine,
        SEED_BUILDS_SQL,
        {
            "now": now,
            "n": args.builds,
            "r": args.repositories,
            "span": timedelta(days=args.ledger_days),
            "hosts": REGISTRY_HOSTS,
            "spike_every": SPIKE_EVERY,
            "spike_factor": SPIKE_FACTOR,
            "credential_events": CREDENTIAL_EVENTS,
        },
    )
    vacuum_analyze(engine)
    print(f"  seeded and analyzed in {time.monotonic() - started:.1f} s", flush=True)
    if args.explain:
        sql_params = {
            "now": now,
            "window_start": now - window,
            "min_builds": settings.anomaly_min_builds,
            "latency_z_threshold": settings.anomaly_latency_z_threshold,
            "churn_threshold": settings.anomaly_churn_threshold,
        }
        for name, sql in (
            ("build_latency", LATENCY_SQL),
            ("credential_churn", CHURN_SQL),
            ("missing_architectures", MISSING_ARCHITECTURES_SQL),
        ):
            print(f"  EXPLAIN ANALYZE {name}:\n{explain(engine, sql, sql_params)}")

    timer = StatementTimer(engine)
    rounds = []
    for _ in range(args.rounds):
        timer.take()
        started = time.monotonic()
        with Session(engine) as session, session.begin():
            summary = recompute_capability_scores(
                session,
                now=now,
                window=window,
                latency_z_threshold=settings.anomaly_latency_z_threshold,
                min_builds=settings.anomaly_min_builds,
                churn_threshold=settings.anomaly_churn_threshold,
            )
        seconds = time.monotonic() - started
        statements = timer.take()[-3:]  # the three scoring statements
        rounds.append(AnomalyRound(seconds, statements, summary.repositories, summary.flagged))

    print(f"  window {window.total_seconds() / 86400:g} days, {args.rounds} recomputation(s):")
    print("  round  total s  latency s  churn s  missing s  repositories  flagged")
    for number, r in enumerate(rounds, start=1):
        latency, churn, missing = r.statements
        print(
            f"  {number:>5}  {r.seconds:7.2f}  {latency:9.2f}  {churn:7.2f}  {missing:9.2f}"
            f"  {r.repositories:>12,}  {r.flagged}"
        )
    spiked = len(range(0, args.repositories, SPIKE_EVERY))
    flagged_latency = rounds[-1].flagged["build_latency"]
    check_ok = flagged_latency == spiked
    worst = max(r.seconds for r in rounds)
    target_ok = worst <= ANOMALY_TARGET_S
    print(
        f"  latency spikes seeded {spiked}, flagged {flagged_latency} "
        f"(check: {'met' if check_ok else 'MISSED'})"
    )
    median = statistics.median(r.seconds for r in rounds)
    print(
        f"  slowest recomputation {worst:.2f} s, median {median:.2f} s "
        f"(target ≤ {ANOMALY_TARGET_S:.0f} s: {'met' if target_ok else 'MISSED'})"
    )
    return not (check_ok and target_ok)


# --- 2. cadence sweep --------------------------------------------------------------------------


def bench_cadence(engine: Engine, args: argparse.Namespace, now: datetime) -> bool:
    """True when a target or a check was missed."""
    from models.evaluation_cadence import (
        DUE_REFRESHES_SQL,
        STALE_SQL,
        claim_due_refreshes,
        mark_stale,
    )

    batch = Settings().evaluation_refresh_batch
    n = args.certifications
    due = n // 100
    expired = len(range(1, n + 1, 1000))
    print(f"\n2. cadence sweep: seeding {n:,} evaluation certifications", flush=True)
    started = time.monotonic()
    run_script(engine, SEED_CERTIFICATIONS_SQL, {"now": now, "n": n})
    vacuum_analyze(engine)
    print(f"  seeded and analyzed in {time.monotonic() - started:.1f} s", flush=True)

    def sweep(limit: int) -> tuple[float, int, int]:
        """One Beat sweep: claim up to ``limit`` due refreshes, mark expired ones stale."""
        started = time.monotonic()
        with Session(engine) as session, session.begin():
            claimed = len(claim_due_refreshes(session, now=now, limit=limit))
            staled = mark_stale(session, now=now)
        return time.monotonic() - started, claimed, staled

    sweeps: list[tuple[float, int, int]] = []
    while not sweeps or sweeps[-1][1] > 0:
        sweeps.append(sweep(batch))
    claimed = sum(c for _, c, _ in sweeps)
    staled = sum(s for _, _, s in sweeps)
    counts_ok = claimed == due and staled == expired
    print(
        f"  sweeps of {batch:,} (evaluation_refresh_batch) until none is due: {len(sweeps)}, "
        f"{claimed:,} claimed (seeded {due:,}), {staled:,} marked stale (seeded {expired:,})"
    )
    print("  per sweep: " + ", ".join(f"{s:.3f}" for s, _, _ in sweeps) + " s")

    run_script(engine, RESET_CERTIFICATIONS_SQL, {"now": now})
    plans_ok = True
    for name, sql, params, index in (
        ("due refreshes", DUE_REFRESHES_SQL, {"now": now, "limit": batch}, DUE_INDEX),
        ("stale", STALE_SQL, {"now": now}, EXPIRY_INDEX),
    ):
        plan = explain(engine, sql, params)
        uses = index in plan
        plans_ok &= uses
        print(f"  EXPLAIN ANALYZE {name} (rolled back):\n{plan}")
        print(f"  uses {index}: {'yes' if uses else 'NO'}")

    at_once, claimed, staled = sweep(due)
    counts_ok &= claimed == due and staled == expired
    print(
        f"  for reference, one sweep claiming all {claimed:,} due rows at once: {at_once:.3f} s "
        "(Beat claims at most a batch per sweep)"
    )
    worst = max(s for s, _, _ in sweeps)
    target_ok = worst <= SWEEP_TARGET_S
    print(f"  counts: {'met' if counts_ok else 'MISSED'}")
    print(
        f"  slowest sweep {worst:.3f} s (target ≤ {SWEEP_TARGET_S:.0f} s: "
        f"{'met' if target_ok else 'MISSED'})"
    )
    return not (plans_ok and counts_ok and target_ok)


def main() -> int:
    parser = argparse.ArgumentParser(description=(__doc__ or "").split("\n\n")[0])
    parser.add_argument("--builds", type=int, default=1_000_000)
    parser.add_argument("--repositories", type=int, default=5_000)
    parser.add_argument(
        "--ledger-days",
        type=float,
        default=6.5,
        help="span of the ledger before now; inside the 7-day window by default",
    )
    parser.add_argument("--certifications", type=int, default=1_000_000)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--parts", default="anomaly,cadence")
    parser.add_argument("--explain", action="store_true")
    parser.add_argument("--keep", action="store_true", help="keep the database directory")
    args = parser.parse_args()
    parts = {p.strip() for p in args.parts.split(",") if p.strip()}

    workdir = Path(tempfile.mkdtemp(prefix="drydock-bench-beat-"))
    server = localservers.start_postgres(workdir / "postgres")
    try:
        from models.db import get_engine
        from models.migrate import upgrade

        upgrade("head", server.url)
        engine = get_engine(server.url)
        now = datetime.now(UTC).replace(microsecond=0)
        failed = False
        if "anomaly" in parts:
            failed |= bench_anomaly(engine, args, now)
        if "cadence" in parts:
            failed |= bench_cadence(engine, args, now)
        return 1 if failed else 0
    finally:
        server.stop()
        if args.keep:
            print(f"database kept in {workdir}")
        else:
            shutil.rmtree(workdir, ignore_errors=True)


if __name__ == "__main__":
    sys.exit(main())

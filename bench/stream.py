"""The event stream's costs: numbering events at commit, catching up, and live delivery.

    python -m bench.stream [--writers 4] [--commits 500] [--history 100000] [--live 200]

It starts its own PostgreSQL (default durability settings) in a temporary directory, migrates it,
and stops the server when it ends.

1. **append**: ``--writers`` threads each commit ``--commits`` transactions holding one event.
   Staged (``models.stream.stage``: numbered at commit under the advisory lock, with a NOTIFY)
   against the same row inserted plainly in the transaction (no lock, no order guarantee).
   Prints commits per second of each and their ratio: what commit-ordered ids cost writers.
2. **catch-up**: ``--history`` events seeded, then read from id 0 page by page as
   ``GET /v1/stream`` reads them for a client resuming far behind (the route's own reader and
   its SSE formatting). Prints events per second.
3. **live**: an API served by uvicorn, one client on ``GET /v1/stream``, and ``--live`` events
   committed at 20 per second. Prints the delay from commit to the client's receipt, p50 and
   p95 (bounded below by ``DRYDOCK_STREAM_POLL_SECONDS``, 0.5 s by default).

Targets: append ratio ≥ 0.5 with 4 writers; catch-up ≥ 5,000 events/s; live p95 ≤ poll + 0.25 s.
The exit status is 1 when one is missed.
"""

from __future__ import annotations

import argparse
import json
import socket
import statistics
import sys
import threading
import time
from collections.abc import Callable
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from sqlalchemy import insert, text  # noqa: E402

from bench.postgres import migrated_postgres  # noqa: E402
from drydock import localservers  # noqa: E402

APPEND_RATIO_TARGET = 0.5
CATCH_UP_TARGET = 5_000.0
LIVE_SLACK_S = 0.25


def _timed_writers(writers: int, commits: int, write: Callable[[int], None]) -> float:
    """Commits per second of ``writers`` threads each calling ``write`` ``commits`` times."""

    def writer(first: int) -> None:
        for n in range(first, first + commits):
            write(n)

    threads = [threading.Thread(target=writer, args=(w * commits,)) for w in range(writers)]
    started = time.perf_counter()
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    return writers * commits / (time.perf_counter() - started)


def bench_append(writers: int, commits: int) -> bool:
    from models import stream
    from models.db import session_scope
    from models.stream import StreamEvent, StreamEventKind

    def staged(n: int) -> None:
        with session_scope() as session:
            stream.stage(session, StreamEventKind.POLICY_DECISION, "acme", {"n": n})

    def plain(n: int) -> None:
        with session_scope() as session:
            session.execute(
                insert(StreamEvent).values(kind="policy.decision", tenant="acme", data={"n": n})
            )

    _timed_writers(writers, 20, plain)  # warm the pool
    plain_rate = _timed_writers(writers, commits, plain)
    staged_rate = _timed_writers(writers, commits, staged)
    ratio = staged_rate / plain_rate
    print(f"append, {writers} writers x {commits} commits:")
    print(f"  plain insert   {plain_rate:8.0f} commits/s")
    print(f"  staged (lock)  {staged_rate:8.0f} commits/s   ratio {ratio:.2f}")
    return ratio >= APPEND_RATIO_TARGET


def bench_catch_up(history: int) -> bool:
    from drydock.api.stream import _read_after
    from models.db import session_scope
    from models.stream import StreamEventKind, StreamFilter

    with session_scope() as session:
        session.execute(
            text(
                "INSERT INTO stream_events (kind, tenant, data) SELECT 'trust.transition', "
                "'acme', jsonb_build_object('asset', 'vm-' || i, 'to_state', 'trusted', "
                "'detail', repeat('x', 200)) FROM generate_series(1, :n) AS i"
            ),
            {"n": history},
        )
    seen = StreamFilter(kinds=list(StreamEventKind))
    started = time.perf_counter()
    cursor, served = 0, 0
    while True:
        batch = _read_after(cursor, seen)
        if not batch:
            break
        served += len(batch)
        cursor = int(batch[-1].id or cursor)
    rate = served / (time.perf_counter() - started)
    print(f"catch-up: {served} events from id 0 at {rate:,.0f} events/s")
    return rate >= CATCH_UP_TARGET


def bench_live(count: int) -> bool:
    import httpx
    import uvicorn

    from catalog import CATALOG
    from drydock.api import app
    from kernel.settings import get_settings
    from models import stream, tokens
    from models.db import session_scope
    from models.stream import StreamEventKind

    with session_scope() as session:
        _, token = tokens.create_token(
            session, name="bench", scopes=["*"], known_tasks=CATALOG, created_by="bench"
        )
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    server = uvicorn.Server(
        uvicorn.Config(app, host="127.0.0.1", port=port, log_level="warning", lifespan="off")
    )
    threading.Thread(target=server.run, daemon=True).start()
    localservers.wait_for(lambda: server.started, 20, "uvicorn")
    delays: list[float] = []

    def read() -> None:
        headers = {"Authorization": f"Bearer {token}"}
        with httpx.stream(
            "GET", f"http://127.0.0.1:{port}/v1/stream", headers=headers, timeout=30
        ) as response:
            for line in response.iter_lines():
                if line.startswith("data:"):
                    sent = json.loads(line[5:])["data"]["sent"]
                    delays.append(time.time() - sent)
                    if len(delays) == count:
                        return

    reader = threading.Thread(target=read)
    reader.start()
    time.sleep(1)  # connected: the stream starts with what happens next
    for _ in range(count):
        with session_scope() as session:
            stream.stage(session, StreamEventKind.TRUST_TRANSITION, "acme", {"sent": time.time()})
        time.sleep(0.05)
    reader.join(30)
    server.should_exit = True
    if len(delays) < count:
        print(f"live: only {len(delays)} of {count} events arrived")
        return False
    ordered = sorted(delays)
    p50 = statistics.median(ordered)
    p95 = ordered[int(len(ordered) * 0.95) - 1]
    poll = get_settings().stream_poll_seconds
    print(
        f"live: {count} events, commit to client p50 {p50 * 1000:.0f} ms, p95 {p95 * 1000:.0f} ms"
    )
    print(f"  (poll interval {poll * 1000:.0f} ms)")
    return p95 <= poll + LIVE_SLACK_S


def main() -> int:
    parser = argparse.ArgumentParser(description=(__doc__ or "").split("\n\n")[0])
    parser.add_argument("--writers", type=int, default=4)
    parser.add_argument("--commits", type=int, default=500)
    parser.add_argument("--history", type=int, default=100_000)
    parser.add_argument("--live", type=int, default=200)
    args = parser.parse_args()

    with migrated_postgres("stream"):
        ok = bench_append(args.writers, args.commits)
        ok &= bench_catch_up(args.history)
        ok &= bench_live(args.live)
        return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())

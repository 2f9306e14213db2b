"""The heartbeat file a worker or Beat writes for probes and drain in its own container.

Kept apart from ``workers.heartbeat`` (which needs Celery and Redis) so that ``drydock probe``,
run by the platform every few seconds, imports next to nothing.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

import orjson


@dataclass(frozen=True)
class LocalHeartbeat:
    """What a worker or Beat last wrote to its heartbeat file."""

    role: Literal["worker", "beat"]
    hostname: str
    pid: int
    queues: tuple[str, ...]
    # Jobs the worker received and has not finished: running, or prefetched and waiting for a
    # pool process. Drain waits for none, since a prefetched job also runs before shutdown.
    held: int
    written_at: float
    # Did this beat reach Redis? A worker that cannot reach its broker takes no jobs.
    broker_ok: bool

    def as_json(self) -> bytes:
        return orjson.dumps(
            {
                "role": self.role,
                "hostname": self.hostname,
                "pid": self.pid,
                "queues": list(self.queues),
                "held": self.held,
                "written_at": self.written_at,
                "broker_ok": self.broker_ok,
            }
        )

    @classmethod
    def from_json(cls, raw: bytes) -> LocalHeartbeat:
        data = orjson.loads(raw)
        role = data["role"]
        if role not in ("worker", "beat"):
            raise ValueError(f"unknown role {role!r}")
        return cls(
            role=role,
            hostname=str(data["hostname"]),
            pid=int(data["pid"]),
            queues=tuple(str(q) for q in data["queues"]),
            held=int(data["held"]),
            written_at=float(data["written_at"]),
            broker_ok=bool(data["broker_ok"]),
        )


def write_local_heartbeat(path: str, beat: LocalHeartbeat) -> None:
    """Replace the file atomically: a probe never reads half a record."""
    target = Path(path)
    partial = target.with_name(f".{target.name}.{os.getpid()}")
    try:
        partial.write_bytes(beat.as_json())
        os.replace(partial, target)
    except OSError as exc:
        # A probe will report the stale file; the worker itself keeps working.
        from kernel.logs import get_logger

        get_logger().warning("heartbeat.file_failed", path=path, error=str(exc))


def read_local_heartbeat(path: str) -> LocalHeartbeat:
    """The last record, or ValueError saying why there is none to read."""
    try:
        raw = Path(path).read_bytes()
    except FileNotFoundError:
        raise ValueError(f"no heartbeat file at {path} (not started yet, or stopped)") from None
    except OSError as exc:
        raise ValueError(f"cannot read heartbeat file {path}: {exc}") from None
    try:
        return LocalHeartbeat.from_json(raw)
    except (ValueError, KeyError, TypeError) as exc:
        raise ValueError(f"heartbeat file {path} is not a heartbeat record: {exc}") from None


def probe_problem(
    beat: LocalHeartbeat, *, now: float, stale_after: float, need_broker: bool
) -> str | None:
    """Why a probe fails, or None when it passes. Liveness asks only that the event loop still
    beats; readiness also asks that the last beat reached the broker."""
    age = now - beat.written_at
    if age > stale_after:
        return (
            f"{beat.role} {beat.hostname} last beat {age:.0f}s ago (more than {stale_after:g}s): "
            "its event loop is wedged or it stopped"
        )
    if need_broker and not beat.broker_ok:
        return f"{beat.role} {beat.hostname} cannot reach the broker"
    return None

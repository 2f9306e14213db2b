"""What a job's handler knows about the job it runs: a plain context that needs no Celery.

Domain functions (``tasks/<queue>/domain.py``) take a :class:`JobContext`: the job's id, its
attempt, the worker running it, and ``progress``. The Celery runtime hands them its own
subclass (``workers.base_task.WorkerJobContext``), whose progress is recorded as a job event and
set as the task's ``PROGRESS`` state; a context made anywhere else (a test, a script) only logs
it, so domain code runs and is tested without a broker or a worker.
"""

from __future__ import annotations

import math
import numbers
import uuid
from dataclasses import dataclass, field
from typing import Any

from kernel.logs import get_logger
from kernel.redaction import redact


@dataclass(frozen=True)
class WorkerIdentity:
    hostname: str
    pid: int
    queue: str

    def as_dict(self) -> dict[str, Any]:
        return {"worker": self.hostname, "worker_pid": self.pid, "queue": self.queue}


@dataclass
class JobContext:
    """The job a handler runs, and where its progress goes."""

    job_id: uuid.UUID
    attempt: int
    who: WorkerIdentity
    secret_names: tuple[str, ...] = ()
    # What the handler leaves for its task's retry listener (which push target failed, say).
    notes: dict[str, Any] = field(default_factory=dict)
    _log: Any = field(default=None, repr=False)

    def progress(self, percent: float | None, message: str, **detail: Any) -> None:
        """Report how far the job has come. Secrets in ``detail`` are redacted.

        ``percent`` is None (unknown: an indeterminate bar) or a number from 0 to 100, rounded
        to one decimal; a number outside that range is clamped to it (with a warning in the
        log), while NaN, infinity or anything not a number raises ValueError or TypeError.
        """
        data = redact(
            {"percent": self._checked_percent(percent), "message": message, **detail},
            self.secret_names,
        )
        self._report(data)
        self._logger().info("job.progress", action="progress", **data)

    def end_attempt(self) -> None:
        """The handler returned or raised; a worker's context drops what its progress left."""

    def _report(self, data: dict[str, Any]) -> None:
        """Where the (redacted) progress goes besides the log: nowhere, outside a worker."""

    def _checked_percent(self, percent: float | None) -> float | None:
        if percent is None:
            return None
        if isinstance(percent, bool) or not isinstance(percent, numbers.Real):
            raise TypeError(
                f"progress percent must be a number from 0 to 100 or None, "
                f"not {type(percent).__name__}"
            )
        value = float(percent)
        if not math.isfinite(value):
            raise ValueError(f"progress percent must be a number from 0 to 100, not {value}")
        clamped = min(100.0, max(0.0, round(value, 1)))
        if clamped != round(value, 1):
            self._logger().warning(
                "job.progress_percent_clamped", action="progress", given=value, percent=clamped
            )
        return clamped

    def _logger(self) -> Any:
        return self._log if self._log is not None else get_logger(job_id=str(self.job_id))

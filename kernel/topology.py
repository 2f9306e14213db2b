"""Queue names and their rules, declared once; the kombu queues built from them are
``workers.queues``. Automatic queue creation is off, so a typo is an error.

A task's queue is the prefix of its name: ``builds.build_image`` runs on ``builds``.
"""

from __future__ import annotations

from dataclasses import dataclass

WORK_QUEUES: tuple[str, ...] = (
    "builds",
    "pushes",
    "attestation",
    "remediation",
    "evaluation",
    "workflows",
    "runtime",
)
DEAD_LETTER_QUEUE = "dead_letter"
ALL_QUEUES: tuple[str, ...] = (*WORK_QUEUES, DEAD_LETTER_QUEUE)

# Header on dead-letter messages naming the job, so replay and purge can find its message.
DEAD_LETTER_JOB_HEADER = "drydock_job_id"
# Header stamped by ``enqueue`` with the enqueue time (epoch seconds) for queue-wait metrics.
ENQUEUED_AT_HEADER = "drydock_enqueued_at"


@dataclass(frozen=True)
class QueueProfile:
    """Per-queue worker defaults applied by ``drydock worker``."""

    # Long jobs take one message at a time so a busy worker never sits on work another could run.
    prefetch_multiplier: int
    long_running: bool


QUEUE_PROFILES: dict[str, QueueProfile] = {
    "builds": QueueProfile(prefetch_multiplier=1, long_running=True),
    "pushes": QueueProfile(prefetch_multiplier=1, long_running=True),
    "attestation": QueueProfile(prefetch_multiplier=4, long_running=False),
    "remediation": QueueProfile(prefetch_multiplier=1, long_running=True),
    "evaluation": QueueProfile(prefetch_multiplier=1, long_running=True),
    # Workflow steps: containers and agents on a project's workspace, each up to an hour.
    "workflows": QueueProfile(prefetch_multiplier=1, long_running=True),
    # Launches pull an image and wait for its probe; stops drain. Minutes, not hours.
    "runtime": QueueProfile(prefetch_multiplier=1, long_running=True),
}


def queue_for_task(task_name: str) -> str:
    """The queue a task name routes to; a name without a known queue prefix is an error."""
    prefix, dot, rest = task_name.partition(".")
    if not dot or not rest or prefix not in WORK_QUEUES:
        raise ValueError(
            f"task name {task_name!r} must be '<queue>.<name>' with queue one of "
            f"{', '.join(WORK_QUEUES)}"
        )
    return prefix


def parse_queue_list(text: str) -> list[str]:
    """``"builds, pushes"`` -> ``["builds", "pushes"]``; unknown or unserved queues refused."""
    names = [part.strip() for part in text.split(",") if part.strip()]
    if not names:
        raise ValueError("no queues given")
    for name in names:
        if name == DEAD_LETTER_QUEUE:
            raise ValueError(
                "the dead_letter queue is a parking lot for operators (drydock dlq), not served "
                "by workers"
            )
        if name not in WORK_QUEUES:
            raise ValueError(f"unknown queue {name!r}; queues are {', '.join(WORK_QUEUES)}")
    return names


def prefetch_for(queues: list[str]) -> int:
    """The smallest prefetch among the queues a worker serves: long jobs win."""
    return min(QUEUE_PROFILES[q].prefetch_multiplier for q in queues)

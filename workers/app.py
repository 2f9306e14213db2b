"""The Celery app. Producers import it to send by name; only workers import task modules."""

from __future__ import annotations

from typing import Any

from celery import Celery

# Imported for its signal handlers: logging, fresh connections after a fork, outcomes of
# dropped messages.
import workers.signals  # noqa: F401
from beat_schedules import beat_schedule
from kernel.settings import Settings, get_settings
from workers.heartbeat import BEAT_KEY_PREFIX, WorkerHeartbeat
from workers.orphans import OrphanSweep
from workers.queues import celery_queues, route_task

# Imported by workers only (Celery's ``include``), never by producers.
TASK_MODULES = [
    "tasks.canary.celery_tasks",
    "tasks.builds.celery_tasks",
    "tasks.pushes.celery_tasks",
    "tasks.attestation.celery_tasks",
    "tasks.remediation.celery_tasks",
    "tasks.evaluation.celery_tasks",
    "tasks.workflows.celery_tasks",
    "tasks.runtime.celery_tasks",
]


def celery_config(settings: Settings) -> dict[str, Any]:
    return {
        "broker_url": settings.broker_url,
        "broker_connection_retry_on_startup": True,
        # kombu's Redis transport, but an item in a queue that is not a message envelope is
        # turned into one carrying it, instead of killing the worker (workers.broker); and the
        # consumer dead-letters every message it cannot run (workers.intake).
        "broker_transport": "workers.broker:GuardedRedisTransport",
        "worker_consumer": "workers.intake:GuardedConsumer",
        # Redis redelivers an unacknowledged message after this long; see Settings for the rule.
        "broker_transport_options": {
            "visibility_timeout": settings.visibility_timeout,
            "unacked_restore_interval": settings.restore_sweep_seconds,
            "unacked_restore_throttle": 1,
            # Without a socket timeout a worker cut off from Redis blocks in a send (the event
            # heartbeat's PUBLISH) until TCP gives up, minutes later: its event loop stops. With
            # one, the send fails, Celery notices the lost broker and reconnects.
            "socket_timeout": 10,
            "socket_connect_timeout": 5,
            "socket_keepalive": True,
            # A worker cut off while it held the restore lock would hold up every other worker's
            # redelivery of lost jobs for kombu's default 300 s; a restore takes milliseconds.
            "unacked_mutex_expire": 60,
        },
        # JSON only: pickle would let whoever can write to Redis run code on every worker.
        "task_serializer": "json",
        "result_serializer": "json",
        "event_serializer": "json",
        "accept_content": ["json"],
        "result_accept_content": ["json"],
        # Outcomes live in PostgreSQL; Celery's result backend would be a second, weaker copy.
        # The backend (the broker's Redis) carries only the PROGRESS states of running jobs
        # (JobContext.progress): results and errors are never stored, and producers do not
        # subscribe to results (see ProgressStateBackend). A state expires unless renewed, and
        # is dropped when its attempt ends. Never set result_extended: it would copy the
        # task's arguments, secrets included, into Redis.
        "task_ignore_result": True,
        "task_store_errors_even_if_ignored": False,
        "result_backend": f"workers.base_task:ProgressStateBackend+{settings.broker_url}",
        "result_expires": 600,
        "result_extended": False,
        # A Redis hiccup may delay a progress report by a few seconds, not hold the job up.
        "redis_socket_connect_timeout": 2.0,
        "redis_socket_timeout": 5.0,
        "result_backend_transport_options": {
            "retry_policy": {"max_retries": 2, "interval_start": 0.2, "interval_step": 0.3}
        },
        # A job is acknowledged only once it has an outcome; a worker that dies gives it back.
        "task_acks_late": True,
        "task_reject_on_worker_lost": True,
        "worker_cancel_long_running_tasks_on_connection_loss": True,
        "worker_prefetch_multiplier": 1,
        "task_queues": celery_queues(),
        "task_create_missing_queues": False,
        "task_routes": (route_task,),
        # Flower sees every task: sent, received, started, retried, succeeded, failed.
        "worker_send_task_events": True,
        "task_send_sent_event": True,
        "task_publish_retry": True,
        "task_publish_retry_policy": {
            "max_retries": 3,
            "interval_start": 0.2,
            "interval_step": 0.5,
            "interval_max": 2,
        },
        "include": TASK_MODULES,
        "beat_schedule": beat_schedule(settings),
        # Beat records every tick for /health/fleet and ticks at least once per heartbeat.
        # Its scheduler is RedBeat's: the schedule and a lock live in the broker's Redis, so
        # any number of Beats may run and one fires at a time (see HeartbeatScheduler). Each
        # due entry is sent through dispatch.enqueue like any other job (validated, admitted,
        # recorded): the scheduler is dispatch's subclass, named here and loaded by Beat only.
        "beat_scheduler": "dispatch.beat:DispatchingScheduler",
        "beat_max_loop_interval": settings.heartbeat_seconds,
        "redbeat_redis_url": settings.broker_url,
        # Set, not inherited: RedBeat would otherwise read broker_transport_options.
        "redbeat_redis_options": {
            "socket_timeout": 5,
            "socket_connect_timeout": 5,
            "health_check_interval": 30,
        },
        "redbeat_key_prefix": BEAT_KEY_PREFIX,
        "redbeat_lock_timeout": settings.beat_lock_timeout_seconds,
        "timezone": "UTC",
        "enable_utc": True,
    }


app = Celery("drydock")
app.conf.update(celery_config(get_settings()))
# Every worker records a heartbeat in Redis for /health/fleet (see workers.heartbeat).
app.steps["consumer"].add(WorkerHeartbeat)
# Every worker sweeps for jobs held by lost workers (see workers.orphans).
app.steps["consumer"].add(OrphanSweep)

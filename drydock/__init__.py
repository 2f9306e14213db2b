"""Drydock: the job fleet behind an MCP-server hosting platform.

Upstream Python services enqueue by task name::

    from drydock import enqueue
    job = enqueue("builds.canary", {"message": "hello"}, idempotency_key="req-42")
"""

from drydock.client import EnqueuedJob, IdempotencyConflictError, enqueue
from workers.errors import (
    BrokerUnavailableError,
    DrydockError,
    PayloadInvalidError,
    UnknownTaskError,
)

__all__ = [
    "BrokerUnavailableError",
    "DrydockError",
    "EnqueuedJob",
    "IdempotencyConflictError",
    "PayloadInvalidError",
    "UnknownTaskError",
    "enqueue",
]

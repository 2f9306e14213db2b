"""Drydock: the job fleet behind an MCP-server hosting platform.

Upstream Python services enqueue by task name::

    from drydock import enqueue
    job = enqueue("builds.canary", {"message": "hello"}, idempotency_key="req-42")

Imports are lazy so that ``drydock --help`` and a bad setting never fail before the CLI can
explain them.
"""

from __future__ import annotations

from typing import Any

_EXPORTS = {
    "enqueue": "dispatch.enqueue",
    "EnqueuedJob": "dispatch.enqueue",
    "IdempotencyConflictError": "dispatch.enqueue",
    "BrokerUnavailableError": "kernel.errors",
    "DrydockError": "kernel.errors",
    "PayloadInvalidError": "kernel.errors",
    "PayloadTooLargeError": "kernel.errors",
    "UnknownTaskError": "kernel.errors",
}

__all__ = sorted(_EXPORTS)


def __getattr__(name: str) -> Any:
    if name in _EXPORTS:
        import importlib

        return getattr(importlib.import_module(_EXPORTS[name]), name)
    raise AttributeError(f"module 'drydock' has no attribute {name!r}")

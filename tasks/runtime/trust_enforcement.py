"""``runtime.enforce_trust``: nothing keeps running where trust was withdrawn.

Beat runs it every ``DRYDOCK_RUNTIME_TRUST_SWEEP_SECONDS``. It reads the trust registry, not its
stream, so every way an asset reaches ``quarantined`` (a failed quote, a breached posture, an
operator's ``drydock trust move``) is seen, and a sweep that missed a turn loses nothing: each
running instance whose host asset or own VM asset is quarantined is drained and stopped, the
quarantine named in its history (cause ``quarantined``). A starting VM instance does not wait
for the sweep: its launch fails it as soon as its asset is quarantined. Blocked and pending
instances have nothing running; their next launch is judged by the placement gates again.
"""

from __future__ import annotations

from typing import Any

from catalog.runtime import EnforceTrustPayload
from kernel.context import JobContext
from models import runtime
from models.db import session_scope
from tasks.runtime.lifecycle import stop_instance


def enforce_trust(payload: EnforceTrustPayload, ctx: JobContext) -> dict[str, Any]:
    with session_scope() as session:
        found = runtime.quarantined_instances(session, payload.limit)
    stopped = []
    for item in found:
        whose = "its VM" if item.own_vm else "its host"
        stop_instance(
            item.instance_id, f"{whose} {item.asset} is quarantined", ctx, cause="quarantined"
        )
        stopped.append({"instance_id": str(item.instance_id), "asset": item.asset})
    ctx.progress(100, f"{len(stopped)} instance(s) on quarantined assets stopped")
    return {"stopped": stopped}

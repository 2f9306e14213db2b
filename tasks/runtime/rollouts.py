"""Rolling a release out at its tier: beside the old, probed, shifted to, or rolled back.

A rollout (``runtime.rollout``), in steps a redelivered job picks up where they stood:

1. *Begin*, under the server's row lock: the rollout row (found again by its job on a
   redelivery), what serves the tier now (its newest running instance of another release) and
   the analysis window (the payload's, else the tier's rule); one running rollout per server and
   tier, a second is refused.
2. *Launch* the new release beside the old (``lifecycle.launch``: the placement decision, the
   launch probe); the old instance keeps serving meanwhile.
3. *Analyse*: the new instance is probed every ``ANALYSIS_INTERVAL_SECONDS`` through the window;
   ``FAILURES_TO_ROLL_BACK`` failed probes in a row, its server exiting, or its instance moved on
   (stopped, quarantined) fail the analysis.
4. *Shift* (passed): the old instances at the tier are drained and stopped (cause
   ``rolled_out``), the rollout ``succeeded``. *Roll back* (the launch failed or was blocked, or
   the analysis failed): the new instance is stopped (cause ``rolled_back``), its release marked
   rolled back (the catalog shows the tier's release before it again), and one ``rollback``
   history row records the checkpoint that failed; the old instance never stopped, so the tier
   is served throughout. With nothing serving before, the rollout ends ``failed`` instead.

Drydock owns no load balancer: the *shift* is the record (the catalog and history name the new
release) and the old instances' drain; whatever routes traffic follows the catalog.
"""

from __future__ import annotations

import time
import uuid
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

from sqlalchemy import select
from sqlalchemy.exc import IntegrityError
from sqlalchemy.orm import Session

from catalog.runtime import LaunchPayload, RolloutPayload
from kernel.context import JobContext
from kernel.decisions import Gate, GateName
from models import runtime
from models import runtime_releases as history
from models.db import session_scope
from models.runtime import InstanceState, RuntimeInstance, RuntimeRelease, RuntimeServer
from models.runtime_releases import ChangeKind, ChangeOutcome, ReleaseChange, RolloutState
from tasks.runtime import lifecycle
from tasks.runtime.executors import executor_for
from tasks.runtime.promotions import TierRules
from tasks.runtime.servers import RuntimeConflictError

ANALYSIS_INTERVAL_SECONDS = 1.0
FAILURES_TO_ROLL_BACK = 2


@dataclass(frozen=True)
class Plan:
    rollout_id: uuid.UUID
    server_id: uuid.UUID
    tenant: str
    tier: str
    digest: str
    from_digest: str | None
    analysis_seconds: float
    state: str


def rollout(payload: RolloutPayload, ctx: JobContext) -> dict[str, Any]:
    actor = lifecycle.actor_of(ctx)
    plan = _begin(payload, ctx, actor)
    if plan.state != RolloutState.RUNNING.value:
        return _view(plan.rollout_id)
    served = f"beside {plan.from_digest}" if plan.from_digest else "(nothing serves the tier yet)"
    ctx.progress(5, f"launching {plan.digest} at tier {plan.tier} {served}")
    try:
        launched = lifecycle.launch(
            LaunchPayload(
                tenant=plan.tenant,
                server=str(plan.server_id),
                digest=plan.digest,
                tier=plan.tier,
                reason=f"rollout {plan.rollout_id}",
            ),
            ctx,
        )
    except lifecycle.InstanceFailedError as exc:
        # The launch stopped what it made; the instance is failed with the reason.
        _note_new_instance(plan.rollout_id, exc.instance_id)
        failed = Gate(GateName.PROBE_ANALYSIS, False, f"its launch failed: {exc.why}")
        return _end_failed(plan, None, failed, ctx)
    instance_id = uuid.UUID(launched["instance_id"])
    _note_new_instance(plan.rollout_id, instance_id)
    if launched["state"] != InstanceState.RUNNING.value:
        why = f"its instance is {launched['state']}: {launched['reason']}"
        return _end_failed(plan, instance_id, Gate(GateName.PLACEMENT, False, why), ctx)
    ctx.progress(40, f"running at {launched['endpoint']}; analysing for {plan.analysis_seconds:g}s")
    verdict = _analyse(instance_id, plan.analysis_seconds, ctx)
    if not verdict.passed:
        return _end_failed(plan, instance_id, verdict, ctx)
    return _shift(plan, instance_id, verdict, ctx)


def _begin(payload: RolloutPayload, ctx: JobContext, actor: str) -> Plan:
    with session_scope() as session:
        rollout = history.rollout_of_job(session, ctx.job_id)
        if rollout is None:
            rollout = _open(session, payload, ctx, actor)
        release = session.get(RuntimeRelease, rollout.to_release_id)
        server = session.get(RuntimeServer, rollout.server_id)
        assert release is not None and server is not None
        old = (
            session.get(RuntimeRelease, rollout.from_release_id)
            if rollout.from_release_id
            else None
        )
        return Plan(
            rollout_id=rollout.id,
            server_id=server.id,
            tenant=server.tenant,
            tier=rollout.tier,
            digest=release.digest,
            from_digest=old.digest if old is not None else None,
            analysis_seconds=rollout.analysis_seconds,
            state=rollout.state,
        )


def _open(
    session: Session, payload: RolloutPayload, ctx: JobContext, actor: str
) -> history.RuntimeRollout:
    server = runtime.find_server(session, payload.server, payload.tenant)
    session.get(RuntimeServer, server.id, with_for_update=True, populate_existing=True)
    release = runtime.find_release(session, server, payload.digest, payload.tier)
    running = history.running_rollout(session, server.id, payload.tier)
    if running is not None:
        raise RuntimeConflictError(
            f"rollout {running.id} of {server.tenant}/{server.name} at tier {payload.tier} is "
            "still running: wait for it (`drydock releases history`)"
        )
    serving = _serving(session, server.id, payload.tier, exclude=release.id)
    analysis = payload.analysis_seconds
    if analysis is None:
        analysis = TierRules.of(session, payload.tier).analysis_seconds
    rollout = history.RuntimeRollout(
        server_id=server.id,
        tier=payload.tier,
        job_id=ctx.job_id,
        to_release_id=release.id,
        from_release_id=serving[0].release_id if serving else None,
        from_instance_id=serving[0].id if serving else None,
        state=RolloutState.RUNNING.value,
        analysis_seconds=analysis,
        reason=payload.reason,
        actor=actor,
    )
    try:
        # The partial unique index settles two rollouts racing past the read above.
        with session.begin_nested():
            session.add(rollout)
            session.flush()
    except IntegrityError:
        raise RuntimeConflictError(
            f"another rollout of {server.tenant}/{server.name} at tier {payload.tier} "
            "started meanwhile"
        ) from None
    old_digest = _digest_of(session, rollout.from_release_id)
    history.record_change(
        session,
        ReleaseChange(
            server_id=server.id,
            tenant=server.tenant,
            kind=ChangeKind.ROLLOUT.value,
            outcome=ChangeOutcome.STARTED.value,
            tier=payload.tier,
            digest=release.digest,
            from_digest=old_digest,
            rollout_id=rollout.id,
            detail=payload.reason or f"analysis window {analysis:g}s",
            actor=actor,
            job_id=ctx.job_id,
        ),
    )
    return rollout


def _serving(
    session: Session, server_id: uuid.UUID, tier: str, *, exclude: uuid.UUID
) -> list[RuntimeInstance]:
    """Running instances of the server at ``tier`` of releases other than ``exclude``, newest
    first."""
    return list(
        session.scalars(
            select(RuntimeInstance)
            .join(RuntimeRelease, RuntimeRelease.id == RuntimeInstance.release_id)
            .where(
                RuntimeInstance.server_id == server_id,
                RuntimeRelease.tier == tier,
                RuntimeInstance.release_id != exclude,
                RuntimeInstance.state == InstanceState.RUNNING.value,
            )
            .order_by(RuntimeInstance.created_at.desc())
        ).all()
    )


def _note_new_instance(rollout_id: uuid.UUID, instance_id: uuid.UUID) -> None:
    with session_scope() as session:
        rollout = session.get(history.RuntimeRollout, rollout_id, with_for_update=True)
        if rollout is not None and rollout.to_instance_id is None:
            rollout.to_instance_id = instance_id


def _analyse(instance_id: uuid.UUID, seconds: float, ctx: JobContext) -> Gate:
    """Probe the new instance through the window; the gate says how it went."""
    spec, backend, handle = lifecycle.launch_inputs(instance_id)
    executor = executor_for(backend)
    deadline = time.monotonic() + seconds
    probes = failures = 0
    while True:
        with session_scope() as session:
            instance = session.get(RuntimeInstance, instance_id)
            assert instance is not None
            state, endpoint = instance.state, instance.endpoint or ""
        if state != InstanceState.RUNNING.value:
            return Gate(GateName.PROBE_ANALYSIS, False, f"its instance became {state}")
        gone = executor.exited(spec, handle)
        if gone is not None:
            return Gate(GateName.PROBE_ANALYSIS, False, f"its server {gone} during the analysis")
        result = executor.probe(spec, handle, endpoint)
        probes += 1
        failures = 0 if result.ok else failures + 1
        if failures >= FAILURES_TO_ROLL_BACK:
            return Gate(
                GateName.PROBE_ANALYSIS,
                False,
                f"{failures} probes in a row failed (last: {result.detail})",
            )
        left = deadline - time.monotonic()
        if left <= 0:
            return Gate(
                GateName.PROBE_ANALYSIS,
                True,
                f"{probes} probes over {seconds:g}s, last: {result.detail}",
            )
        if seconds > 0:
            ctx.progress(40 + 40 * (1 - left / seconds), f"analysing: {probes} probes")
        time.sleep(min(ANALYSIS_INTERVAL_SECONDS, left))


def _shift(plan: Plan, instance_id: uuid.UUID, verdict: Gate, ctx: JobContext) -> dict[str, Any]:
    with session_scope() as session:
        rollout = history.get_rollout(session, plan.rollout_id)
        old = _serving(session, plan.server_id, plan.tier, exclude=rollout.to_release_id)
        old_ids = [instance.id for instance in old]
    for n, old_id in enumerate(old_ids, start=1):
        ctx.progress(80 + 15 * n / len(old_ids), f"draining old instance {old_id}")
        lifecycle.stop_instance(
            old_id, f"rollout {plan.rollout_id} shifted to {plan.digest}", ctx, cause="rolled_out"
        )
    with session_scope() as session:
        rollout = _locked_rollout(session, plan.rollout_id)
        if rollout.state == RolloutState.RUNNING.value:
            release = session.get(RuntimeRelease, rollout.to_release_id, with_for_update=True)
            assert release is not None
            release.rolled_back_at = None
            _finish(session, rollout, RolloutState.SUCCEEDED)
            drained = f"; drained {len(old_ids)} old instance(s)" if old_ids else ""
            _record_end(session, plan, rollout, ChangeKind.ROLLOUT, ChangeOutcome.SUCCEEDED,
                        verdict, f"shifted to {plan.digest}{drained}", ctx)  # fmt: skip
    ctx.progress(100, f"rolled out {plan.digest} at tier {plan.tier}")
    return _view(plan.rollout_id)


def _end_failed(
    plan: Plan, instance_id: uuid.UUID | None, failed: Gate, ctx: JobContext
) -> dict[str, Any]:
    """Stop the new instance, mark its release rolled back, record it once."""
    if instance_id is not None:
        lifecycle.stop_instance(
            instance_id, f"rollout {plan.rollout_id} rolled back: {failed.reason}", ctx,
            cause="rolled_back",
        )  # fmt: skip
    with session_scope() as session:
        rollout = _locked_rollout(session, plan.rollout_id)
        if rollout.state == RolloutState.RUNNING.value:
            release = session.get(RuntimeRelease, rollout.to_release_id, with_for_update=True)
            assert release is not None
            if plan.from_digest is not None:
                release.rolled_back_at = datetime.now(UTC)
                _finish(session, rollout, RolloutState.ROLLED_BACK)
                _record_end(session, plan, rollout, ChangeKind.ROLLBACK,
                            ChangeOutcome.ROLLED_BACK, failed,
                            f"back to {plan.from_digest}: {failed.reason}", ctx)  # fmt: skip
            else:
                _finish(session, rollout, RolloutState.FAILED)
                _record_end(session, plan, rollout, ChangeKind.ROLLOUT, ChangeOutcome.FAILED,
                            failed, f"nothing to roll back to: {failed.reason}", ctx)  # fmt: skip
    ctx.progress(100, f"rollout of {plan.digest} at tier {plan.tier} failed: {failed.reason}")
    return _view(plan.rollout_id)


def _finish(session: Session, rollout: history.RuntimeRollout, state: RolloutState) -> None:
    rollout.state = state.value
    rollout.finished_at = datetime.now(UTC)
    session.flush()


def _record_end(
    session: Session,
    plan: Plan,
    rollout: history.RuntimeRollout,
    kind: ChangeKind,
    outcome: ChangeOutcome,
    checkpoint: Gate,
    detail: str,
    ctx: JobContext,
) -> None:
    history.record_change(
        session,
        ReleaseChange(
            server_id=plan.server_id,
            tenant=plan.tenant,
            kind=kind.value,
            outcome=outcome.value,
            tier=plan.tier,
            digest=plan.digest,
            from_digest=plan.from_digest,
            rollout_id=rollout.id,
            checkpoints=[checkpoint.as_json()],
            detail=detail,
            actor=rollout.actor,
            job_id=ctx.job_id,
        ),
    )


def _locked_rollout(session: Session, rollout_id: uuid.UUID) -> history.RuntimeRollout:
    rollout = session.get(
        history.RuntimeRollout, rollout_id, with_for_update=True, populate_existing=True
    )
    if rollout is None:
        raise history.RolloutNotFoundError(rollout_id)
    return rollout


def _digest_of(session: Session, release_id: uuid.UUID | None) -> str | None:
    if release_id is None:
        return None
    release = session.get(RuntimeRelease, release_id)
    return release.digest if release is not None else None


def _view(rollout_id: uuid.UUID) -> dict[str, Any]:
    with session_scope() as session:
        rollout = history.get_rollout(session, rollout_id)
        return rollout_json(session, rollout)


def rollout_json(session: Session, rollout: history.RuntimeRollout) -> dict[str, Any]:
    return {
        "rollout_id": str(rollout.id),
        "state": rollout.state,
        "tier": rollout.tier,
        "digest": _digest_of(session, rollout.to_release_id),
        "from_digest": _digest_of(session, rollout.from_release_id),
        "to_instance_id": str(rollout.to_instance_id) if rollout.to_instance_id else None,
        "from_instance_id": str(rollout.from_instance_id) if rollout.from_instance_id else None,
        "analysis_seconds": rollout.analysis_seconds,
        "finished_at": rollout.finished_at.isoformat() if rollout.finished_at else None,
    }

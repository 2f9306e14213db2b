"""Launching and stopping instances: the decisions and moves around each executor's work.

A launch, in three transactions with the executor's work between them:

1. *Decide*, under the release's row lock (so launches of one release queue up): a live
   instance of the release already running, or starting under another launch, is the answer
   (two racing launches make one instance); otherwise the instance is opened (or a blocked one
   taken up again), the target chosen and judged (``policy.runtime_placement``, one recorded
   decision linked to the instance), and the instance moved to ``blocked`` with the failing
   gates, or to ``starting`` on the chosen target with the executor's handle saved.
2. *Start* and *probe*, outside any transaction: the executor makes it run; the probe is called
   until it passes, the server exits, or the probe time runs out.
3. *Record*: ``running`` with its endpoint and health, or ``failed`` with the reason (what it
   made is stopped and removed, the end of its output kept). A launch that finds its instance
   moved on meanwhile (a stop came) leaves it as the stop left it.

A redelivered launch of the same job finds its instance ``starting`` with its handle and picks up
at step 2: the executor finds what the first attempt made. The engine unreachable is transient:
the job retries and the instance stays ``starting``.
"""

from __future__ import annotations

import time
import uuid
from dataclasses import dataclass
from typing import Any, NoReturn

from adapters.credentials import credential_for
from catalog.runtime import LaunchPayload, StopPayload
from kernel.context import JobContext
from kernel.errors import DrydockError
from kernel.settings import get_settings
from models import runtime
from models.db import session_scope
from models.runtime import (
    Backend,
    InstanceState,
    Isolation,
    Move,
    ProbeKind,
    RuntimeInstance,
    RuntimeServer,
)
from policy.runtime_placement import ServerNeeds, place_release
from tasks.runtime import probes
from tasks.runtime.executors import Executor, LaunchFailedError, LaunchSpec, executor_for

PROBE_INTERVAL_SECONDS = 0.2


class InstanceFailedError(DrydockError):
    """The launch ran to its end and the instance failed (its reason says why)."""

    def __init__(self, instance_id: uuid.UUID, why: str) -> None:
        super().__init__(f"instance {instance_id} failed: {why}")
        self.instance_id = instance_id
        self.why = why


@dataclass(frozen=True)
class Decided:
    instance_id: uuid.UUID
    state: str
    # Running, or starting under another launch job: this launch has nothing to do.
    launched_by_other: bool
    target: str | None
    view: dict[str, Any]


def actor_of(ctx: JobContext) -> str:
    return f"worker:{ctx.who.hostname}"


def launch(payload: LaunchPayload, ctx: JobContext) -> dict[str, Any]:
    actor = actor_of(ctx)
    decided = _decide(payload, ctx, actor)
    if decided.state != InstanceState.STARTING.value or decided.launched_by_other:
        return decided.view
    instance_id = decided.instance_id
    spec, backend, handle = launch_inputs(instance_id)
    executor = executor_for(backend)
    ctx.progress(20, f"starting on {decided.target} ({backend.value})")
    try:
        endpoint = executor.start(spec, handle)
        ctx.progress(50, f"started; probing {endpoint}")
        result = _await_probe(executor, spec, handle, endpoint)
    except LaunchFailedError as exc:
        _fail(instance_id, executor, spec, handle, str(exc), "launch_failed", actor, ctx)
    if not result.ok:
        why = f"probe failed: {result.detail}"
        _fail(instance_id, executor, spec, handle, why, "probe_failed", actor, ctx)
    with session_scope() as session:
        instance = _locked(session, instance_id)
        if instance.state != InstanceState.STARTING.value:
            return _view(instance)
        instance.endpoint = endpoint
        instance.health = result.as_json()
        runtime.move_instance(
            session,
            instance,
            Move(InstanceState.RUNNING, "probe_passed", result.detail),
            actor=actor,
            job_id=ctx.job_id,
        )
        ctx.progress(100, f"running at {endpoint}")
        return _view(instance)


def _decide(payload: LaunchPayload, ctx: JobContext, actor: str) -> Decided:
    with session_scope() as session:
        server = runtime.find_server(session, payload.server, payload.tenant)
        release = runtime.find_release(session, server, payload.digest, payload.tier)
        runtime.lock_release(session, release.id)
        instance = runtime.live_instance(session, release.id)
        if instance is not None and instance.state in (
            InstanceState.RUNNING.value,
            InstanceState.STARTING.value,
        ):
            mine = instance.launch_job_id == ctx.job_id
            return Decided(
                instance_id=instance.id,
                state=instance.state,
                launched_by_other=not mine,
                target=instance.target,
                view=_view(instance),
            )
        if instance is None:
            instance = runtime.open_instance(
                session, release=release, server=server, actor=actor, job_id=ctx.job_id
            )
        elif instance.state == InstanceState.BLOCKED.value:
            instance.launch_job_id = ctx.job_id
            runtime.move_instance(
                session,
                instance,
                Move(InstanceState.PENDING, "launch_requested", payload.reason),
                actor=actor,
                job_id=ctx.job_id,
            )
        placement = place_release(
            session,
            tenant=server.tenant,
            digest=release.digest,
            tier=release.tier,
            needs=needs_of(server, release.platforms, payload.target),
            targets=runtime.enabled_targets(session),
            actor=actor,
        )
        instance.decision_id = placement.decision.id
        target = placement.target
        if target is None:
            runtime.move_instance(
                session,
                instance,
                Move(InstanceState.BLOCKED, "placement_denied", placement.decision.summary),
                actor=actor,
                job_id=ctx.job_id,
            )
            return Decided(
                instance_id=instance.id,
                state=instance.state,
                launched_by_other=False,
                target=None,
                view=_view(instance),
            )
        instance.target = target.name
        instance.backend = target.backend
        instance.asset_id = target.asset_id
        spec = _spec(instance, server, release.digest, target.connection)
        instance.handle = executor_for(Backend(target.backend)).prepare(spec, instance.handle)
        runtime.move_instance(
            session,
            instance,
            Move(InstanceState.STARTING, "placed", f"on {target.name} ({target.backend})"),
            actor=actor,
            job_id=ctx.job_id,
        )
        return Decided(
            instance_id=instance.id,
            state=instance.state,
            launched_by_other=False,
            target=target.name,
            view=_view(instance),
        )


def needs_of(server: RuntimeServer, platforms: list[str], target: str | None) -> ServerNeeds:
    return ServerNeeds(
        platforms=tuple(platforms),
        isolation=Isolation(server.isolation),
        confidential=server.confidential,
        accelerator=server.accelerator,
        target=target,
    )


def _spec(
    instance: RuntimeInstance, server: RuntimeServer, digest: str, connection: Any
) -> LaunchSpec:
    settings = get_settings()
    return LaunchSpec(
        instance_id=instance.id,
        tenant=server.tenant,
        server=server.name,
        image=f"{server.repository}@{digest}",
        credential=credential_for(server.repository.split("/", 1)[0]),
        connection=dict(connection or {}),
        memory_mb=settings.runtime_memory_mb,
        cpus=settings.runtime_cpus,
        pids=settings.runtime_pids,
        probe_kind=ProbeKind(server.probe_kind),
        probe_path=server.probe_path,
    )


def launch_inputs(instance_id: uuid.UUID) -> tuple[LaunchSpec, Backend, dict[str, Any]]:
    with session_scope() as session:
        instance = session.get(RuntimeInstance, instance_id)
        assert instance is not None
        server = session.get(RuntimeServer, instance.server_id)
        # Placed: only a starting (or later) instance is launched or stopped by its executor.
        assert server is not None and instance.target is not None and instance.backend
        target = session.get(runtime.RuntimeTarget, instance.target)
        release = session.get(runtime.RuntimeRelease, instance.release_id)
        assert release is not None
        connection = target.connection if target is not None else {}
        spec = _spec(instance, server, release.digest, connection)
        return spec, Backend(instance.backend), dict(instance.handle)


def _await_probe(
    executor: Executor, spec: LaunchSpec, handle: dict[str, Any], endpoint: str
) -> probes.ProbeResult:
    seconds = executor.probe_seconds()
    deadline = time.monotonic() + seconds
    while True:
        result = executor.probe(spec, handle, endpoint)
        if result.ok:
            return result
        gone = executor.exited(spec, handle)
        if gone is not None:
            return probes.ProbeResult(False, f"{gone} before answering ({result.detail})", 0)
        if time.monotonic() >= deadline:
            return probes.ProbeResult(
                False, f"no passing answer in {seconds:g}s (last: {result.detail})", result.ms
            )
        time.sleep(PROBE_INTERVAL_SECONDS)


def _fail(
    instance_id: uuid.UUID,
    executor: Any,
    spec: LaunchSpec,
    handle: dict[str, Any],
    why: str,
    cause: str,
    actor: str,
    ctx: JobContext,
) -> NoReturn:
    log_tail = executor.stop(spec, handle)
    with session_scope() as session:
        instance = _locked(session, instance_id)
        if instance.state == InstanceState.STARTING.value:
            instance.log_tail = log_tail
            runtime.move_instance(
                session,
                instance,
                Move(InstanceState.FAILED, cause, why),
                actor=actor,
                job_id=ctx.job_id,
            )
    raise InstanceFailedError(instance_id, why)


def stop(payload: StopPayload, ctx: JobContext) -> dict[str, Any]:
    """Drain and stop an instance (nothing to do when it already ended)."""
    return stop_instance(payload.instance_id, payload.reason or "stop requested", ctx)


def stop_instance(
    instance_id: uuid.UUID, detail: str, ctx: JobContext, cause: str = "stop_requested"
) -> dict[str, Any]:
    """Drain and stop ``instance_id``, ``cause`` and ``detail`` kept in its history."""
    actor = actor_of(ctx)
    with session_scope() as session:
        instance = _locked(session, instance_id)
        state = InstanceState(instance.state)
        if state in runtime.FINISHED_STATES:
            return _view(instance)
        if state in (InstanceState.PENDING, InstanceState.BLOCKED):
            runtime.move_instance(
                session,
                instance,
                Move(InstanceState.STOPPED, "stopped", detail),
                actor=actor,
                job_id=ctx.job_id,
            )
            return _view(instance)
        if state is not InstanceState.DRAINING:
            runtime.move_instance(
                session,
                instance,
                Move(InstanceState.DRAINING, cause, detail),
                actor=actor,
                job_id=ctx.job_id,
            )
    spec, backend, handle = launch_inputs(instance_id)
    log_tail = executor_for(backend).stop(spec, handle)
    with session_scope() as session:
        instance = _locked(session, instance_id)
        if instance.state == InstanceState.DRAINING.value:
            instance.log_tail = log_tail
            runtime.move_instance(
                session,
                instance,
                Move(InstanceState.STOPPED, "stopped", detail),
                actor=actor,
                job_id=ctx.job_id,
            )
        return _view(instance)


def _locked(session: Any, instance_id: uuid.UUID) -> RuntimeInstance:
    instance = session.get(
        RuntimeInstance, instance_id, with_for_update=True, populate_existing=True
    )
    if instance is None:
        raise runtime.InstanceNotFoundError(instance_id)
    assert isinstance(instance, RuntimeInstance)
    return instance


def _view(instance: RuntimeInstance) -> dict[str, Any]:
    return {
        "instance_id": str(instance.id),
        "state": instance.state,
        "target": instance.target,
        "backend": instance.backend,
        "endpoint": instance.endpoint,
        "reason": instance.reason,
        "decision_id": instance.decision_id,
    }

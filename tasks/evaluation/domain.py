"""The evaluation queue's work: refreshing certifications, Beat's cadence sweep, anomaly scores.

A refresh runs the tier's suite against the image digest in a container with no network
(``tasks.evaluation.suite``), but only on a host whose trust state is ``trusted``: that gate is
a policy decision, recorded for every refresh, and a refusal dead-letters the job at once. The
outcome is recorded by ``models.evaluation.record_evaluation``: a pass issues the next
certification in the lineage, a fail revokes the active one.
"""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from typing import Any

from sqlalchemy.orm import Session

from adapters.credentials import credential_for
from catalog.evaluation import (
    RecomputeAnomaliesPayload,
    RefreshCertificationPayload,
    SweepCertificationsPayload,
)
from dispatch.enqueue import enqueue
from kernel.context import JobContext
from kernel.decisions import Decision
from kernel.errors import BrokerUnavailableError, DrydockError, NotFoundError
from kernel.logs import get_logger
from kernel.settings import get_settings
from models import anomaly, evaluation, evaluation_cadence, trust
from models import policy as policy_store
from models.db import session_scope
from models.evaluation import CertificationStatus, EvaluationCertification
from models.policy import PolicyDecisionKind
from policy.admission import AdmissionRefusedError
from policy.engine import decide_evaluation_host
from tasks.evaluation.suite import run_suite
from tasks.evaluation.suite_spec import parse_suite_spec

REFRESH_TASK = "evaluation.refresh_certification"


class EvaluationRefusedError(DrydockError):
    """The policy forbids running the suite here (this worker's host is not trusted). Not
    retried; the cadence sweep enqueues the refresh again, for a worker that may run it."""


def refresh_certification(payload: RefreshCertificationPayload, ctx: JobContext) -> dict[str, Any]:
    settings = get_settings()
    with session_scope() as session:
        # A redelivery of a refresh that already recorded its evaluation: report it again.
        done = evaluation.certification_for_job(session, ctx.job_id)
        if done is not None:
            return _result(done.id, done.status, done.summary, redelivered=True)
        if payload.certification_id is not None:
            renewed = session.get(EvaluationCertification, payload.certification_id)
            if renewed is None or renewed.status != CertificationStatus.ACTIVE.value:
                state = "gone" if renewed is None else renewed.status
                return {
                    "skipped": f"certification {payload.certification_id} is {state}, "
                    "so its refresh is moot",
                }
        tier = evaluation.get_tier(session, payload.tier)
        suite = parse_suite_spec(tier.suite)
        decision = _host_decision(session, settings.evaluation_host_asset, ctx)
    if not decision.allowed:
        raise EvaluationRefusedError(f"evaluation refused by policy: {decision.summary}")

    image = f"{payload.registry}/{payload.repository}@{payload.digest}"
    ctx.progress(10, f"running the {payload.tier} suite on {image}", tier=payload.tier)
    run = run_suite(
        image,
        suite,
        docker_host=settings.docker_host,
        credential=credential_for(payload.registry),
        extra_env={
            "DRYDOCK_DIGEST": payload.digest,
            "DRYDOCK_TIER": payload.tier,
            "DRYDOCK_IMAGE": image,
        },
    )
    ctx.progress(90, f"suite {'passed' if run.passed else 'failed'}: {run.summary()}")
    with session_scope() as session:
        cert = evaluation.record_evaluation(
            session,
            evaluation.Evaluation(
                job_id=ctx.job_id,
                digest=payload.digest,
                tier=payload.tier,
                host=payload.registry,
                repository=payload.repository,
                passed=run.passed,
                evidence=[check.as_json() for check in run.checks],
                summary=run.summary(),
                evaluated_at=datetime.now(UTC),
            ),
        )
        cert_id, status = cert.id, cert.status
    return {
        **_result(cert_id, status, run.summary()),
        "exit_code": run.exit_code,
        "timed_out": run.timed_out,
        "problems": list(run.problems),
        "duration_ms": round(run.duration_ms, 1),
        "output_tail": run.output_tail,
    }


def _host_decision(session: Session, configured: str | None, ctx: JobContext) -> Decision:
    """Judge this worker's host and record the decision, whichever way it goes."""
    host = None
    if configured is not None:
        try:
            host = trust.find_asset(session, configured)
        except NotFoundError:
            host = None
    decision = decide_evaluation_host(
        policy_store.asset_facts(host) if host is not None else None,
        configured=configured,
        now=datetime.now(UTC),
    )
    policy_store.record_decision(
        session,
        PolicyDecisionKind.EVALUATION_HOST,
        decision,
        request={"host_asset": configured, "worker": ctx.who.hostname},
        tenant=host.tenant if host is not None else None,
        actor=ctx.who.hostname,
        job_id=ctx.job_id,
    )
    return decision


def _result(cert_id: Any, status: str, summary: str, **extra: Any) -> dict[str, Any]:
    return {"certification_id": str(cert_id), "status": status, "summary": summary, **extra}


def sweep_certifications(payload: SweepCertificationsPayload, ctx: JobContext) -> dict[str, Any]:
    """Beat's cadence sweep: expired certifications become stale; those inside their refresh
    window get one refresh each (claimed before it is sent, so a second sweep skips them);
    claims whose job never came to exist, was preempted or was dead-lettered are released for
    the next sweep."""
    settings = get_settings()
    now = datetime.now(UTC)
    with session_scope() as session:
        stale = evaluation_cadence.mark_stale(session, now=now)
        released = evaluation_cadence.release_failed_claims(session, now=now)
        due = evaluation_cadence.claim_due_refreshes(
            session, now=now, limit=payload.limit or settings.evaluation_refresh_batch
        )
    log = get_logger(job_id=str(ctx.job_id))
    sent, refused, unsent = 0, 0, 0
    for position, item in enumerate(due):
        try:
            enqueue(
                REFRESH_TASK,
                {
                    "digest": item.digest,
                    "tier": item.tier,
                    "registry": item.host,
                    "repository": item.repository,
                    "certification_id": str(item.certification_id),
                },
                enqueued_by="beat:evaluation-cadence",
                target_asset=settings.evaluation_host_asset,
                job_id=item.job_id,
            )
            sent += 1
        except AdmissionRefusedError as exc:
            # The evaluation host is quarantined: the refresh waits for the next sweep.
            refused += 1
            _release(item)
            log.warning(
                "evaluation.refresh_refused",
                certification=str(item.certification_id),
                reason=str(exc),
            )
        except BrokerUnavailableError as exc:
            # Nothing more can be sent now: give every unsent claim back to the next sweep.
            for rest in due[position:]:
                _release(rest)
            unsent = len(due) - position
            log.warning("evaluation.sweep_broker_unavailable", unsent=unsent, error=str(exc))
            break
    return {
        "stale": stale,
        "released": released,
        "due": len(due),
        "enqueued": sent,
        "refused": refused,
        "unsent": unsent,
    }


def _release(item: evaluation_cadence.DueRefresh) -> None:
    with session_scope() as session:
        evaluation.release_refresh(session, item.certification_id, item.job_id)


def recompute_anomalies(payload: RecomputeAnomaliesPayload, ctx: JobContext) -> dict[str, Any]:
    settings = get_settings()
    window = timedelta(seconds=payload.window_seconds or settings.anomaly_window_seconds)
    with session_scope() as session:
        summary = anomaly.recompute_capability_scores(
            session,
            now=datetime.now(UTC),
            window=window,
            latency_z_threshold=settings.anomaly_latency_z_threshold,
            min_builds=settings.anomaly_min_builds,
            churn_threshold=settings.anomaly_churn_threshold,
        )
    return {"repositories": summary.repositories, "flagged": summary.flagged}

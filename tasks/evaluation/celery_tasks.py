"""The evaluation queue's Celery tasks: thin wrappers over ``tasks.evaluation.domain``."""

from __future__ import annotations

from typing import Any

from catalog.evaluation import (
    RecomputeAnomaliesPayload,
    RefreshCertificationPayload,
    SweepCertificationsPayload,
)
from kernel.context import JobContext
from tasks.evaluation import domain
from tasks.evaluation.suite import EvaluationEngineUnavailableError
from workers.base_task import DrydockTask, drydock_task

# Retried with backoff: the Docker engine unreachable. A suite that fails is an outcome (a
# failed evaluation, the certification revoked), not an error; a refusal by the host-trust gate,
# a missing image or tier is dead-lettered at once.


def refresh_certification(payload: RefreshCertificationPayload, ctx: JobContext) -> dict[str, Any]:
    return domain.refresh_certification(payload, ctx)


def sweep_certifications(payload: SweepCertificationsPayload, ctx: JobContext) -> dict[str, Any]:
    return domain.sweep_certifications(payload, ctx)


def recompute_anomalies(payload: RecomputeAnomaliesPayload, ctx: JobContext) -> dict[str, Any]:
    return domain.recompute_anomalies(payload, ctx)


REFRESH_CERTIFICATION: DrydockTask = drydock_task(
    "evaluation.refresh_certification", transient=(EvaluationEngineUnavailableError,)
)(refresh_certification)

SWEEP_CERTIFICATIONS: DrydockTask = drydock_task("evaluation.sweep_certifications")(
    sweep_certifications
)

RECOMPUTE_ANOMALIES: DrydockTask = drydock_task("evaluation.recompute_anomalies")(
    recompute_anomalies
)

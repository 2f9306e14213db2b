"""A run's provenance as rows: each step's log, and the signed Statement made when the run ends.

A container step writes its own log when it succeeds (it knows the image digest, the env it got,
its output digests and its pushes). Every other finished step (a job step, a failed or cancelled
one) gets a log made from its row when the run is sealed. Sealing happens once, in the advance
that finishes the run (succeeded, failed or cancelled): the Statement over the logs, signed with
the fleet's key, is stored on the run. A run resumed by ``retry`` is sealed again when it ends.
"""

from __future__ import annotations

import uuid
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import structlog
from sqlalchemy.orm import Session

from models import projects as project_store
from models import workflow_runs as store
from models.db import session_scope
from models.projects import ProjectNotFoundError
from models.workflow_runs import WorkflowRun, WorkflowStep
from tasks.workflows.provenance import (
    ProblemKind,
    ProvenanceProblem,
    RunFacts,
    run_statement,
    step_provenance,
)
from tasks.workflows.provenance_signing import (
    ProvenanceKeyError,
    ProvenanceVerification,
    fleet_builder_id,
    fleet_public_key_pem,
    fleet_signing_key,
    sign_statement,
    verify_provenance,
)

log = structlog.get_logger(__name__)


def step_log_from_row(step: WorkflowStep) -> dict[str, Any]:
    """The log of a step that did not write its own (see the module's doc)."""
    result = step.result if isinstance(step.result, dict) else None
    return step_provenance(
        run_id=str(step.run_id),
        step=step.name,
        kind=step.kind,
        spec=step.spec,
        result=result.get("result") if result and step.kind == "job" else None,
        commit_sha=step.commit_sha,
        pushes=step.pushes or [],
        state=step.state,
        attempts=step.attempts,
        started_at=step.started_at,
        finished_at=step.finished_at,
        runner=step.runner,
    )


def seal_run(session: Session, run: WorkflowRun, steps: Sequence[WorkflowStep]) -> None:
    """Give every finished step a log and sign the run's Statement over them (in the caller's
    transaction, under the run's lock). Without a fleet key the run is left unsigned, said in
    the log: provenance must not be what fails a run."""
    for step in steps:
        if step.provenance is None and step.finished_at is not None:
            step.provenance = step_log_from_row(step)
    logs = [step.provenance for step in steps if step.provenance is not None]
    repository_url = None
    if run.project is not None:
        try:
            repository_url = project_store.get_project(
                session, run.tenant, run.project
            ).repository_url
        except ProjectNotFoundError:
            repository_url = None
    try:
        key = fleet_signing_key()
    except ProvenanceKeyError as exc:
        log.warning("workflows.provenance.unsigned", run_id=str(run.id), error=str(exc))
        return
    facts = RunFacts(
        run_id=str(run.id),
        tenant=run.tenant,
        workflow_name=run.workflow_name,
        workflow_version=run.workflow_version,
        project=run.project,
        revision=run.revision,
        branch=run.branch,
        base_commit=run.base_commit,
        head_commit=run.head_commit,
        repository_url=repository_url,
        started_at=run.created_at,
        finished_at=run.finished_at,
        builder_id=fleet_builder_id(key),
    )
    run.provenance = sign_statement(run_statement(facts, logs), key)


@dataclass(frozen=True)
class RunProvenance:
    run_id: uuid.UUID
    state: str
    envelope: dict[str, Any] | None
    step_logs: dict[str, dict[str, Any]]

    def as_dict(self) -> dict[str, Any]:
        return {
            "run_id": str(self.run_id),
            "state": self.state,
            "envelope": self.envelope,
            "steps": self.step_logs,
            "public_key": fleet_public_key_pem(),
        }


def run_provenance(run_id: uuid.UUID, tenant: str | None = None) -> RunProvenance:
    """The run's envelope (None until it ends) and its steps' logs, as stored."""
    with session_scope() as session:
        run = store.get_run(session, run_id, tenant)
        return RunProvenance(
            run_id=run.id,
            state=run.state,
            envelope=run.provenance,
            step_logs={
                step.name: step.provenance
                for step in store.steps_of(session, run_id)
                if step.provenance is not None
            },
        )


def verify_run(provenance: RunProvenance) -> ProvenanceVerification:
    """Whether the stored envelope is the fleet's signature over exactly the stored logs."""
    if provenance.envelope is None:
        return ProvenanceVerification(
            ok=False,
            problems=[
                ProvenanceProblem(
                    ProblemKind.MALFORMED_ENVELOPE,
                    f"run {provenance.run_id} is {provenance.state}: it has no signed "
                    "provenance yet (a run is signed when it ends)",
                )
            ],
        )
    return verify_provenance(provenance.envelope, provenance.step_logs, fleet_signing_key())

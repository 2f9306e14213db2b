"""The loop that closes by itself: a quarantined asset whose class names a playbook gets a run of
it from Beat's remediation sweep, once (the one-active-run rule), waiting for an approval where
the asset is protected, and not again after that run failed."""

from __future__ import annotations

import uuid

from sqlalchemy import select
from sqlalchemy.orm import Session

from catalog.remediation import SweepRunsPayload
from models import trust
from models.db import session_scope
from models.remediation import RemediationRun
from models.trust import Move, TrustAsset, TrustAssetClass, TrustState
from tasks.remediation import requests, sweep
from tests.test_remediation import job_context, quarantined_asset, run_row, shell_playbook

S = TrustState


def class_with_playbook(name: str, playbook: str | None) -> None:
    with session_scope() as session:
        session.add(
            TrustAssetClass(name=name, evidence_ttl_seconds=3600, remediation_playbook=playbook)
        )


def runs_of(asset_id: uuid.UUID) -> list[RemediationRun]:
    with session_scope() as session:
        rows = session.scalars(
            select(RemediationRun).where(RemediationRun.asset_id == asset_id)
        ).all()
        session.expunge_all()
        return list(rows)


def sweep_requests() -> list[str]:
    requested: list[str] = sweep.sweep_runs(SweepRunsPayload(), job_context())["requested"]
    return requested


def test_a_quarantine_requests_the_class_playbook_once_by_itself(clean_state: None) -> None:
    class_with_playbook("vm-image", "fix")
    class_with_playbook("bare-metal", None)
    shell_playbook("fix", "true")
    plain = quarantined_asset(name="vm-a", asset_class="vm-image")
    guarded = quarantined_asset(name="vm-b", asset_class="vm-image", protected=True)
    unnamed = quarantined_asset(name="vm-c", asset_class="bare-metal")
    # A tenant without the playbook the class names: skipped, not an error.
    elsewhere = quarantined_asset(tenant="globex", name="vm-d", asset_class="vm-image")

    requested = sweep_requests()

    [plain_run] = runs_of(plain)
    [guarded_run] = runs_of(guarded)
    assert sorted(requested) == sorted([str(plain_run.id), str(guarded_run.id)])
    assert (plain_run.requested_by, plain_run.playbook_name) == ("auto:quarantine", "fix")
    assert plain_run.state == "queued" and plain_run.job_id is not None
    assert guarded_run.state == "pending_approval"  # protected: an approver still decides
    assert runs_of(unnamed) == [] and runs_of(elsewhere) == []

    # Swept again: the runs are active, nothing new is requested.
    assert sweep_requests() == []
    assert len(runs_of(plain)) == 1


def test_a_run_that_failed_is_not_requested_again_by_the_loop(clean_state: None) -> None:
    class_with_playbook("vm-image", "fix")
    shell_playbook("fix", "true")
    asset_id = quarantined_asset(name="vm-a", asset_class="vm-image")
    [first] = sweep_requests()
    requests.cancel_run(uuid.UUID(first), tenant="acme", actor="test", reason="by the test")

    # As a failed run leaves it: remediating, then back to quarantined for remediation_failed.
    def failed(_s: Session, _a: TrustAsset) -> list[Move]:
        return [
            Move(S.REMEDIATING, "remediation_started", "by the test"),
            Move(S.QUARANTINED, "remediation_failed", "by the test"),
        ]

    trust.transition(asset_id, failed, actor="test")
    assert sweep_requests() == []
    assert run_row(uuid.UUID(first)).state == "cancelled"

    # Quarantined afresh by new evidence: the loop tries again.
    def evidence_failed(_s: Session, _a: TrustAsset) -> list[Move]:
        return [
            Move(S.REMEDIATING, "remediation_started", "by the test"),
            Move(S.PENDING_ATTESTATION, "remediated", "by the test"),
            Move(S.QUARANTINED, "evidence_failed", "by the test"),
        ]

    trust.transition(asset_id, evidence_failed, actor="test")
    assert len(sweep_requests()) == 1

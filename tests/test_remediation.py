"""Remediation end to end: requests that collapse into one run, approval gates and their tokens,
playbooks run by a real worker in real sandboxes, artifacts, and the asset's way back through
attestation. (Each executor's own behaviour is tested in tests/test_remediation_*.py.)

One module for the run's whole life, since each stage's tests build on the fixtures of the last.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import threading
import time
import uuid
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
from sqlalchemy import func, select, text
from sqlalchemy.orm import Session

from catalog.remediation import RunPlaybookPayload, SweepRunsPayload
from dispatch.enqueue import enqueue
from kernel.context import JobContext, WorkerIdentity
from kernel.settings import get_settings
from models import remediation as store
from models import trust
from models.db import session_scope
from models.jobs import Job
from models.remediation import RemediationArtifact, RemediationAudit, RemediationRun
from models.trust import AssetKind, Move, TrustAsset, TrustState
from policy import approvals
from tasks.remediation import domain, playbook_store, requests, sweep, views
from tasks.remediation.playbooks import PlaybookDefinition
from testkit.tpm import SoftwareTpm
from tests.conftest import WorkerProcess, wait_for_job
from tests.test_attestation_samples import tpm_asset, verify_through_queue

S = TrustState
SECRET = "s3cr3t-api-key-value"
WORKER_ENV = {"DRYDOCK_REMEDIATION_SECRET_API_KEY": SECRET}


# ---- helpers ---------------------------------------------------------------------------------


def quarantined_asset(
    tenant: str = "acme",
    name: str = "vm-1",
    *,
    kind: AssetKind = AssetKind.VM,
    protected: bool = False,
    asset_class: str | None = None,
    ak: bytes | None = None,
) -> uuid.UUID:
    """An asset whose evidence failed: registered, attested, quarantined."""
    asset_id, _ = trust.register_asset(
        tenant=tenant,
        name=name,
        kind=kind,
        actor="test",
        asset_class=asset_class,
        attestation_key=ak,
    )
    move_to(asset_id, S.PENDING_ATTESTATION, S.QUARANTINED)
    if protected:
        requests.set_protection(tenant=tenant, asset=name, protected=True, actor="test")
    return asset_id


def move_to(asset_id: uuid.UUID, *states: TrustState) -> None:
    for state in states:

        def plan(_s: Session, _a: TrustAsset, to: TrustState = state) -> list[Move]:
            return [Move(to, "evidence_failed" if to is S.QUARANTINED else "test", "by the test")]

        trust.transition(asset_id, plan, actor="test")


def shell_playbook(
    name: str,
    *steps: str,
    tenant: str = "acme",
    timeout: int = 5,
    requires_approval: bool = False,
    **spec: Any,
) -> dict[str, Any]:
    definition = PlaybookDefinition(
        name=name,
        executor="shell",
        spec={"steps": [{"name": f"step-{i}", "run": run} for i, run in enumerate(steps)], **spec},
        timeout_seconds=timeout,
        requires_approval=requires_approval,
    )
    return playbook_store.create_playbook(definition, tenant=tenant, actor="test")


def asset_state(asset_id: uuid.UUID) -> str:
    with session_scope() as session:
        asset = session.get(TrustAsset, asset_id)
        assert asset is not None
        return asset.state


def run_row(run_id: uuid.UUID) -> RemediationRun:
    with session_scope() as session:
        run = session.get(RemediationRun, run_id)
        assert run is not None
        session.expunge(run)
        return run


def audit_actions(run_id: uuid.UUID) -> list[str]:
    with session_scope() as session:
        return [row.action for row in store.audit_trail(session, run_id)]


def wait_for_run(run_id: uuid.UUID, *states: str, timeout: float = 40) -> RemediationRun:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        run = run_row(run_id)
        if run.state in states:
            return run
        time.sleep(0.1)
    raise AssertionError(f"run {run_id} is {run_row(run_id).state}, not one of {states}")


def job_context() -> JobContext:
    """A job context for calling the task's handler in this process."""
    return JobContext(
        job_id=uuid.uuid4(), attempt=1, who=WorkerIdentity("test-host", os.getpid(), "remediation")
    )


def history(asset_id: uuid.UUID) -> list[tuple[str | None, str, str]]:
    with session_scope() as session:
        return [(r.from_state, r.to_state, r.cause) for r in trust.history(session, asset_id)]


@pytest.fixture
def remediation_worker(
    worker_factory: Callable[..., WorkerProcess], sandbox_image: str
) -> WorkerProcess:
    return worker_factory("remediation", env=WORKER_ENV)


# ---- requests --------------------------------------------------------------------------------


def test_fifty_concurrent_requests_collapse_into_exactly_one_run(clean_state: None) -> None:
    asset_id = quarantined_asset()
    shell_playbook("restart-agent", "echo restarting")
    barrier = threading.Barrier(50)
    outcomes: list[requests.RequestOutcome] = []
    errors: list[BaseException] = []

    def request(i: int) -> None:
        try:
            barrier.wait()
            outcomes.append(
                requests.request_run(
                    tenant="acme",
                    asset="vm-1",
                    playbook="restart-agent",
                    requested_by=f"service-{i}",
                    reason="agent crashed",
                )
            )
        except BaseException as exc:
            errors.append(exc)

    threads = [threading.Thread(target=request, args=(i,)) for i in range(50)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(60)
    assert not errors, errors
    assert len(outcomes) == 50
    # Every caller got the same run, and exactly one of them created it.
    assert len({outcome.run_id for outcome in outcomes}) == 1
    assert sum(outcome.created for outcome in outcomes) == 1
    run_id = outcomes[0].run_id
    with session_scope() as session:
        runs = session.scalar(
            select(func.count())
            .select_from(RemediationRun)
            .where(RemediationRun.asset_id == asset_id)
        )
        jobs = session.scalars(select(Job).where(Job.task_name == "remediation.run_playbook")).all()
    assert runs == 1
    # One job was sent for it, whoever's request sent it.
    assert len(jobs) == 1 and run_row(run_id).job_id == jobs[0].id
    actions = audit_actions(run_id)
    assert actions.count("requested") == 1 and actions.count("joined") == 49


def test_a_request_for_an_asset_that_is_not_distrusted_is_refused_with_the_reason(
    clean_state: None,
) -> None:
    asset_id, _ = trust.register_asset(tenant="acme", name="vm-ok", kind=AssetKind.VM, actor="t")
    shell_playbook("restart-agent", "echo restarting")
    with pytest.raises(store.RemediationRefusedError, match="vm-ok is unknown, not distrusted"):
        requests.request_run(
            tenant="acme", asset="vm-ok", playbook="restart-agent", requested_by="svc"
        )
    move_to(asset_id, S.PENDING_ATTESTATION, S.TRUSTED)
    with pytest.raises(store.RemediationRefusedError, match="trusted, not distrusted"):
        requests.request_run(
            tenant="acme", asset="vm-ok", playbook="restart-agent", requested_by="svc"
        )
    # A playbook for hosts only is refused for a VM, naming both.
    definition = PlaybookDefinition(
        name="host-only",
        executor="shell",
        spec={"steps": [{"name": "x", "run": "true"}]},
        timeout_seconds=5,
        asset_kinds=["host"],
    )
    playbook_store.create_playbook(definition, tenant="acme", actor="t")
    quarantined_asset(name="vm-bad")
    with pytest.raises(store.RemediationRefusedError, match=r"applies to host assets; .* is a vm"):
        requests.request_run(tenant="acme", asset="vm-bad", playbook="host-only", requested_by="s")
    with session_scope() as session:
        assert session.scalar(select(func.count()).select_from(RemediationRun)) == 0


# ---- approvals -------------------------------------------------------------------------------


def test_a_protected_asset_waits_for_approval_and_runs_once_approved(
    remediation_worker: WorkerProcess,
) -> None:
    asset_id = quarantined_asset(protected=True)
    shell_playbook(
        "rotate-keys",
        'echo "rotating with $API_KEY"; echo \'drydock-output {"rotated": 3}\'',
        secret_env={"API_KEY": "DRYDOCK_REMEDIATION_SECRET_API_KEY"},
    )
    outcome = requests.request_run(
        tenant="acme", asset="vm-1", playbook="rotate-keys", requested_by="alice", reason="leak"
    )
    assert outcome.state == "pending_approval" and outcome.job_id is None
    assert outcome.approval_reasons == ["asset acme/vm-1 is protected"]

    # A job sent without the approval is refused at once, audited, and the run keeps waiting.
    job = enqueue("remediation.run_playbook", {"run_id": str(outcome.run_id), "tenant": "acme"})
    dead = wait_for_job(job.id)
    assert dead.status == "dead_lettered" and dead.attempts == 1
    assert "waiting for approval" in (dead.error or "")
    assert run_row(outcome.run_id).state == "pending_approval"
    assert audit_actions(outcome.run_id)[-1] == "token_refused"

    # The requester cannot approve their own request.
    with pytest.raises(store.RemediationRefusedError, match="someone else must approve"):
        requests.approve_run(outcome.run_id, tenant="acme", approver="alice")
    approved = requests.approve_run(outcome.run_id, tenant="acme", approver="bob", reason="ok")
    grant = approvals.verify(
        approved.token, run_id=outcome.run_id, tenant="acme", key=approvals.signing_key()
    )
    assert grant.approver == "bob"
    assert approved.job_id is not None

    run = wait_for_run(outcome.run_id, "succeeded", "failed")
    assert run.state == "succeeded", run.error
    assert run.approved_by == "bob" and run.attempts == 1
    assert run.outputs == {"rotated": 3}
    assert asset_state(asset_id) == "pending_attestation"
    assert history(asset_id)[-2:] == [
        ("quarantined", "remediating", "remediation_started"),
        ("remediating", "pending_attestation", "remediation_succeeded"),
    ]
    with session_scope() as session:
        (artifact,) = session.scalars(
            select(RemediationArtifact).where(RemediationArtifact.run_id == outcome.run_id)
        ).all()
    # The secret reached the step and was redacted from what was kept.
    assert "rotating with [REDACTED]" in artifact.stdout
    assert SECRET not in artifact.stdout + json.dumps(artifact.outputs)
    assert artifact.ok and artifact.exit_code == 0
    actions = audit_actions(outcome.run_id)
    assert actions[:3] == ["requested", "token_refused", "approved"]
    assert actions[-2:] == ["started", "succeeded"]


def test_tokens_for_another_run_tampered_or_forged_are_refused_and_audited(
    clean_state: None,
) -> None:
    quarantined_asset(name="vm-a")
    quarantined_asset(name="vm-b")
    shell_playbook("fix", "true", requires_approval=True)
    run_a = requests.request_run(tenant="acme", asset="vm-a", playbook="fix", requested_by="al")
    run_b = requests.request_run(tenant="acme", asset="vm-b", playbook="fix", requested_by="al")
    assert run_a.state == run_b.state == "pending_approval"
    token_a = requests.approve_run(run_a.run_id, tenant="acme", approver="bo").token
    requests.approve_run(run_b.run_id, tenant="acme", approver="bo")

    def execute(run_id: uuid.UUID, token: str) -> None:
        payload = RunPlaybookPayload(run_id=run_id, tenant="acme", approval_token=token)
        domain.execute_run(payload, job_context())

    # Run A's token presented for run B.
    with pytest.raises(Exception, match=f"approves run {run_a.run_id}"):
        execute(run_b.run_id, token_a)
    # Run A's token with one character of its signature changed.
    head, _, signature = token_a.rpartition(".")
    flipped = signature[:-2] + ("A" if signature[-2] != "A" else "B") + signature[-1]
    with pytest.raises(Exception, match="tampered with or forged"):
        execute(run_a.run_id, f"{head}.{flipped}")
    # A token for run A signed with a key that is not the fleet's.
    grant = approvals.new_grant(run_a.run_id, "acme", "mallory", ttl_seconds=60, now=_now())
    with pytest.raises(Exception, match="tampered with or forged"):
        execute(run_a.run_id, approvals.mint(grant, b"not-the-fleet-key" * 2))
    # A genuine token for run A, but not the one its approval issued.
    reissued = approvals.new_grant(run_a.run_id, "acme", "bo", ttl_seconds=60, now=_now())
    with pytest.raises(Exception, match="not the one issued"):
        execute(run_a.run_id, approvals.mint(reissued, approvals.signing_key()))

    for run_id in (run_a.run_id, run_b.run_id):
        run = run_row(run_id)
        # Nothing ran: the runs wait for their genuine jobs.
        assert run.state == "queued" and run.attempts == 0
    with session_scope() as session:
        refusals = session.scalars(
            select(RemediationAudit).where(RemediationAudit.action == "token_refused")
        ).all()
    assert sorted(row.detail["problem"] for row in refusals) == [
        "forged",
        "forged",
        "other_run",
        "superseded",
    ]
    assert all(row.actor == "worker:test-host" for row in refusals)


def test_an_expired_approval_expires_the_run_and_an_unapproved_run_expires_too(
    clean_state: None, monkeypatch: pytest.MonkeyPatch
) -> None:
    quarantined_asset(name="vm-a")
    quarantined_asset(name="vm-b")
    shell_playbook("fix", "true", requires_approval=True)
    settings = get_settings()
    monkeypatch.setattr(settings, "remediation_approval_ttl_seconds", 1)
    monkeypatch.setattr(settings, "remediation_request_ttl_seconds", 1)
    run_a = requests.request_run(tenant="acme", asset="vm-a", playbook="fix", requested_by="al")
    run_b = requests.request_run(tenant="acme", asset="vm-b", playbook="fix", requested_by="al")
    token = requests.approve_run(run_a.run_id, tenant="acme", approver="bo").token
    time.sleep(2.1)

    payload = RunPlaybookPayload(run_id=run_a.run_id, tenant="acme", approval_token=token)
    with pytest.raises(Exception, match="expired"):
        domain.execute_run(payload, job_context())
    run = run_row(run_a.run_id)
    assert run.state == "expired" and run.attempts == 0
    assert "approval token" in (run.error or "")
    # Run B was never approved: approving it now is refused, and it expires.
    with pytest.raises(store.RemediationRefusedError, match="expired"):
        requests.approve_run(run_b.run_id, tenant="acme", approver="bo")
    assert run_row(run_b.run_id).state == "expired"
    assert audit_actions(run_b.run_id) == ["requested", "expired"]


def test_the_sweep_expires_only_runs_whose_wait_ran_out(
    clean_state: None, monkeypatch: pytest.MonkeyPatch
) -> None:
    quarantined_asset(name="vm-a")
    quarantined_asset(name="vm-b")
    shell_playbook("fix", "true", requires_approval=True)
    monkeypatch.setattr(get_settings(), "remediation_request_ttl_seconds", 1)
    due = requests.request_run(tenant="acme", asset="vm-a", playbook="fix", requested_by="al")
    monkeypatch.setattr(get_settings(), "remediation_request_ttl_seconds", 3600)
    waiting = requests.request_run(tenant="acme", asset="vm-b", playbook="fix", requested_by="al")
    time.sleep(1.2)
    swept = sweep.sweep_runs(SweepRunsPayload(), job_context())
    assert swept["expired"] == [str(due.run_id)]
    assert run_row(due.run_id).state == "expired"
    assert run_row(waiting.run_id).state == "pending_approval"
    # Swept again, nothing is left to do.
    assert sweep.sweep_runs(SweepRunsPayload(), job_context())["expired"] == []
    # The sweep reads waiting runs through the partial index, not the whole table.
    with session_scope() as session:
        session.execute(text("SET LOCAL enable_seqscan = off"))
        plan = "\n".join(
            session.scalars(
                text(
                    "EXPLAIN SELECT id FROM remediation_runs "
                    "WHERE state = 'pending_approval' AND approval_deadline <= now()"
                )
            )
        )
    assert "ix_remediation_runs_approval_deadline" in plan


def _now() -> Any:
    from datetime import UTC, datetime

    return datetime.now(UTC)


# ---- sandboxes, timeouts, failures -----------------------------------------------------------


def test_a_playbook_reaching_for_the_network_fails_inside_its_sandbox(
    remediation_worker: WorkerProcess,
) -> None:
    asset_id = quarantined_asset()
    shell_playbook(
        "phone-home",
        "echo ok > /scratch/note && cat /scratch/note",
        "nc -w 2 192.0.2.10 80 </dev/null",
        "echo never reached",
    )
    outcome = requests.request_run(
        tenant="acme", asset="vm-1", playbook="phone-home", requested_by="svc"
    )
    run = wait_for_run(outcome.run_id, "succeeded", "failed")
    assert run.state == "failed"
    assert "step 2 'step-1' failed" in (run.error or "")
    view = views.describe_run(outcome.run_id, tenant="acme")
    steps = view["artifacts"]
    assert [step["ok"] for step in steps] == [True, False]  # the third never ran
    assert steps[0]["stdout"].strip() == "ok"
    assert "Network is unreachable" in steps[1]["stderr"]
    # Failure leaves the asset quarantined, with the reason on the transition.
    assert asset_state(asset_id) == "quarantined"
    with session_scope() as session:
        last = trust.history(session, asset_id)[-1]
    assert last.cause == "remediation_failed" and "step 2" in last.detail


def test_a_playbook_writing_outside_its_scratch_dir_fails_and_the_host_is_untouched(
    remediation_worker: WorkerProcess,
) -> None:
    quarantined_asset()
    escape = Path("/etc/drydock-remediation-escape")
    shell_playbook("escape", f"echo pwned > {escape}")
    outcome = requests.request_run(tenant="acme", asset="vm-1", playbook="escape", requested_by="s")
    run = wait_for_run(outcome.run_id, "succeeded", "failed")
    assert run.state == "failed"
    (step,) = views.describe_run(outcome.run_id, tenant="acme")["artifacts"]
    assert "Read-only file system" in step["stderr"] and step["exit_code"] != 0
    assert not escape.exists()


def test_a_playbook_that_runs_past_its_timeout_is_stopped_and_failed(
    remediation_worker: WorkerProcess,
) -> None:
    asset_id = quarantined_asset()
    shell_playbook("hang", "echo started; sleep 60", timeout=2)
    outcome = requests.request_run(tenant="acme", asset="vm-1", playbook="hang", requested_by="s")
    run = wait_for_run(outcome.run_id, "succeeded", "failed")
    assert run.state == "failed" and "timed out" in (run.error or "")
    (step,) = views.describe_run(outcome.run_id, tenant="acme")["artifacts"]
    assert step["timed_out"] and "started" in step["stdout"]
    assert step["duration_ms"] < 30_000
    assert asset_state(asset_id) == "quarantined"


def test_an_unreachable_engine_is_retried_then_dead_lettered_and_the_run_fails(
    worker_factory: Callable[..., WorkerProcess], tmp_path: Path
) -> None:
    asset_id = quarantined_asset()
    worker_factory(
        "remediation-no-engine",
        env={"DRYDOCK_DOCKER_HOST": f"unix://{tmp_path}/no-such-docker.sock"},
    )
    shell_playbook("fix", "true")
    outcome = requests.request_run(tenant="acme", asset="vm-1", playbook="fix", requested_by="s")
    assert outcome.job_id is not None
    job = wait_for_job(outcome.job_id)
    assert job.status == "dead_lettered" and job.attempts == get_settings().retry_max_attempts
    # The dead-letter listener fails the run just after the job is recorded dead-lettered.
    run = wait_for_run(outcome.run_id, "failed")
    assert "Docker engine" in (run.error or "")
    assert run.attempts == job.attempts
    assert asset_state(asset_id) == "quarantined"
    assert history(asset_id)[-1] == ("remediating", "quarantined", "remediation_failed")


# ---- idempotency -----------------------------------------------------------------------------


def test_a_second_job_for_a_finished_run_runs_nothing(remediation_worker: WorkerProcess) -> None:
    quarantined_asset()
    shell_playbook("fix", "echo fixed")
    outcome = requests.request_run(tenant="acme", asset="vm-1", playbook="fix", requested_by="s")
    wait_for_run(outcome.run_id, "succeeded")
    again = enqueue("remediation.run_playbook", {"run_id": str(outcome.run_id), "tenant": "acme"})
    job = wait_for_job(again.id)
    assert job.status == "succeeded" and job.result["repeated"] is True
    with session_scope() as session:
        steps = session.scalar(select(func.count()).select_from(RemediationArtifact))
    assert steps == 1 and run_row(outcome.run_id).attempts == 1


def test_a_run_held_by_a_live_execution_is_not_run_beside_it(clean_state: None) -> None:
    quarantined_asset()
    shell_playbook("fix", "echo fixed")
    outcome = requests.request_run(tenant="acme", asset="vm-1", playbook="fix", requested_by="s")
    key = int.from_bytes(outcome.run_id.bytes[:8], "big", signed=True)
    # Another execution (this test's connection) holds the run.
    with session_scope() as session:
        session.execute(text("SELECT pg_advisory_lock(:key)"), {"key": key})
        payload = RunPlaybookPayload(run_id=outcome.run_id, tenant="acme")
        result = domain.execute_run(payload, job_context())
        session.execute(text("SELECT pg_advisory_unlock(:key)"), {"key": key})
    assert "another worker" in result["note"]
    run = run_row(outcome.run_id)
    assert run.state == "queued" and run.attempts == 0


# ---- closing the loop ------------------------------------------------------------------------


def test_a_replayed_quote_is_remediated_and_fresh_evidence_trusts_the_asset_again(
    fleet: WorkerProcess,
    remediation_worker: WorkerProcess,
    tpm_simulator: SoftwareTpm,
    evidence_requests: list[dict[str, Any]],
) -> None:
    ak = tpm_simulator.create_ak("ecc")
    banks = {"sha256": [0, 7]}
    first = tpm_simulator.quote(ak, bytes.fromhex("01" * 16), banks)
    reference = json.loads(first.pcrs)["sha256"]
    asset_id = tpm_asset("acme", "vm-tpm", AssetKind.VM, ak.pem, reference)

    def verify(quote: Any, nonce: bytes) -> str:
        return verify_through_queue(asset_id, quote, nonce)[1]

    assert verify(first, first.nonce) == "trusted"
    second = tpm_simulator.quote(ak, bytes.fromhex("02" * 16), banks)
    assert verify(second, second.nonce) == "trusted"
    assert verify(first, first.nonce) == "quarantined"  # a replay

    shell_playbook("reprovision", "echo reprovisioned")
    outcome = requests.request_run(
        tenant="acme", asset="vm-tpm", playbook="reprovision", requested_by="policy"
    )
    run = wait_for_run(outcome.run_id, "succeeded", "failed")
    assert run.state == "succeeded", run.error
    assert run.trust_context["state"] == "quarantined"
    assert run.trust_context["last_transition"]["cause"] == "evidence_failed"
    assert asset_state(asset_id) == "pending_attestation"
    nonce = run.evidence_nonce
    assert nonce is not None
    deadline = time.monotonic() + 10
    while not evidence_requests and time.monotonic() < deadline:
        time.sleep(0.1)
    assert evidence_requests == [
        {
            "asset_id": str(asset_id),
            "tenant": "acme",
            "asset": "vm-tpm",
            "run_id": str(outcome.run_id),
            "nonce": nonce,
            "requested_at": evidence_requests[0]["requested_at"],
        }
    ]
    # The asset's agent answers with a fresh quote carrying the nonce: trusted again.
    fresh = tpm_simulator.quote(ak, bytes.fromhex(nonce), banks)
    assert verify(fresh, bytes.fromhex(nonce)) == "trusted"
    assert [to for _, to, _ in history(asset_id)][-3:] == [
        "remediating",
        "pending_attestation",
        "trusted",
    ]


# ---- the operator's and the services' doors --------------------------------------------------


def drydock(*args: str, stdin: str | None = None) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "drydock.cli", *args],
        capture_output=True,
        text=True,
        input=stdin,
        timeout=60,
    )


def test_operators_define_playbooks_request_approve_and_read_runs_from_the_cli(
    clean_state: None, tmp_path: Path
) -> None:
    definition = tmp_path / "fix.yaml"
    definition.write_text(
        "name: fix-agent\nexecutor: shell\ntimeout_seconds: 5\nrequires_approval: true\n"
        "asset_kinds: [vm]\nspec:\n  steps:\n    - name: restart\n      run: echo restarted\n"
    )
    created = drydock("playbooks", "create", str(definition), "--tenant", "acme")
    assert created.returncode == 0, created.stderr
    assert "acme/fix-agent version 1" in created.stdout
    again = drydock("playbooks", "create", str(definition), "--tenant", "acme")
    assert "version 2" in again.stdout
    listed = drydock("playbooks", "list", "--tenant", "acme")
    assert "acme/fix-agent" in listed.stdout and "required" in listed.stdout
    shown = json.loads(
        drydock("playbooks", "show", "fix-agent", "--tenant", "acme", "--json").stdout
    )
    assert shown["versions"] == [1, 2] and shown["spec"]["steps"][0]["run"] == "echo restarted"

    # A bad definition is one line naming each problem by its path.
    definition.write_text("name: Bad Name\nexecutor: shell\ntimeout_seconds: 9999\nspec: {}\n")
    bad = drydock("playbooks", "create", str(definition), "--tenant", "acme")
    assert bad.returncode == 1 and bad.stderr.startswith("error: ")
    assert "name: String should match pattern" in bad.stderr
    assert "timeout_seconds: Value error, at most" in bad.stderr
    definition.write_text("name: ok\nexecutor: shell\ntimeout_seconds: 5\nspec: {steps: []}\n")
    empty = drydock("playbooks", "create", str(definition), "--tenant", "acme")
    assert "spec.steps" in empty.stderr

    quarantined_asset()
    requested = drydock(
        "remediation", "request", "vm-1", "fix-agent", "--tenant", "acme", "--by", "alice",
        "--reason", "agent wedged",
    )  # fmt: skip
    assert requested.returncode == 0, requested.stderr
    assert "pending_approval" in requested.stdout and "playbook fix-agent requires" in (
        requested.stdout
    )
    run_id = requested.stdout.split()[2].rstrip(":")
    # Another tenant's operator view does not find it.
    foreign = drydock("remediation", "show", run_id, "--tenant", "other")
    assert foreign.returncode == 1 and f"no remediation run {run_id}" in foreign.stderr
    approved = drydock(
        "remediation", "approve", run_id, "--tenant", "acme", "--by", "bob", "--reason", "go"
    )
    assert approved.returncode == 0, approved.stderr
    token = approved.stdout.strip().splitlines()[-1]
    assert (
        approvals.verify(
            token, run_id=uuid.UUID(run_id), tenant="acme", key=approvals.signing_key()
        ).approver
        == "bob"
    )
    shown_run = drydock("remediation", "show", run_id, "--tenant", "acme")
    assert "approved" in shown_run.stdout and "by bob: go" in shown_run.stdout
    listed_runs = drydock("remediation", "list", "--tenant", "acme", "--state", "queued")
    assert run_id in listed_runs.stdout
    cancelled = drydock("remediation", "cancel", run_id, "--reason", "fixed by hand")
    assert cancelled.returncode == 0 and run_row(uuid.UUID(run_id)).state == "cancelled"


def test_tenants_cannot_run_approve_or_read_each_others_remediation(clean_state: None) -> None:
    from fastapi.testclient import TestClient

    from catalog import CATALOG
    from drydock.api import app
    from models import tokens

    def token(name: str, tenant: str | None, *scopes: str) -> dict[str, str]:
        with session_scope() as session:
            _, plaintext = tokens.create_token(
                session, name=name, scopes=list(scopes), known_tasks=CATALOG,
                created_by="test", tenant=tenant,
            )  # fmt: skip
        return {"Authorization": f"Bearer {plaintext}"}

    everything = ("remediation.*",)
    acme = token("acme-svc", "acme", *everything)
    acme_approver = token("acme-lead", "acme", *everything)
    globex = token("globex-svc", "globex", *everything)
    operator = token("ops", None, "*")
    api = TestClient(app)
    quarantined_asset(tenant="acme", name="vm-1", protected=True)
    quarantined_asset(tenant="globex", name="vm-1")
    definition = {
        "name": "fix",
        "executor": "shell",
        "timeout_seconds": 5,
        "spec": {"steps": [{"name": "s", "run": "true"}]},
    }
    assert api.post("/v1/remediation/playbooks", json=definition, headers=acme).status_code == 201
    # A tenant token cannot write another tenant's playbooks.
    denied = api.post("/v1/remediation/playbooks?tenant=acme", json=definition, headers=globex)
    assert denied.status_code == 403
    bad_spec = {**definition, "spec": {"steps": [{"name": "s"}]}}
    refused = api.post("/v1/remediation/playbooks", json=bad_spec, headers=acme)
    assert refused.status_code == 422 and "spec.steps.0.run" in refused.text

    created = api.post(
        "/v1/remediation/runs", json={"asset": "vm-1", "playbook": "fix"}, headers=acme
    )
    assert created.status_code == 201, created.text
    run_id = created.json()["run_id"]
    joined = api.post(
        "/v1/remediation/runs", json={"asset": "vm-1", "playbook": "fix"}, headers=acme_approver
    )
    assert joined.status_code == 200 and joined.json()["run_id"] == run_id

    # Globex sees nothing of it: not the run, not its list, not its playbook; cannot approve it,
    # cannot run acme's playbook (globex has none of that name) nor send its job.
    assert api.get(f"/v1/remediation/runs/{run_id}", headers=globex).status_code == 404
    assert api.get("/v1/remediation/runs", headers=globex).json() == []
    assert api.get("/v1/remediation/playbooks", headers=globex).json() == []
    assert api.post(f"/v1/remediation/runs/{run_id}/approve", headers=globex).status_code == 404
    assert api.post(f"/v1/remediation/runs/{run_id}/cancel", headers=globex).status_code == 404
    other = api.post(
        "/v1/remediation/runs", json={"asset": "vm-1", "playbook": "fix"}, headers=globex
    )
    assert other.status_code == 404 and "no playbook fix" in other.text
    assert api.get("/v1/remediation/runs?tenant=acme", headers=globex).status_code == 403
    sent = api.post(
        "/v1/jobs/remediation.run_playbook", json={"run_id": run_id, "tenant": "acme"},
        headers=globex,
    )  # fmt: skip
    assert sent.status_code == 403

    # Acme's requester cannot approve; acme's lead can; the operator reads across tenants.
    mine = api.post(f"/v1/remediation/runs/{run_id}/approve", headers=acme)
    assert mine.status_code == 409 and "someone else" in mine.text
    approved = api.post(
        f"/v1/remediation/runs/{run_id}/approve", json={"reason": "ok"}, headers=acme_approver
    )
    assert approved.status_code == 200, approved.text
    assert approved.json()["approval_token"].count(".") == 2
    detail = api.get(f"/v1/remediation/runs/{run_id}", headers=operator).json()
    assert detail["state"] == "queued" and detail["approved_by"] == "api:acme-lead"
    assert [row["action"] for row in detail["audit"]] == ["requested", "joined", "approved"]
    assert {run["tenant"] for run in api.get("/v1/remediation/runs", headers=operator).json()} == {
        "acme"
    }
    # Approving needs its own permission.
    reader = token("acme-reader", "acme", "remediation.run_playbook")
    quarantined_asset(tenant="acme", name="vm-2", protected=True)
    pending = api.post(
        "/v1/remediation/runs", json={"asset": "vm-2", "playbook": "fix"}, headers=acme
    ).json()
    lacking = api.post(f"/v1/remediation/runs/{pending['run_id']}/approve", headers=reader)
    assert lacking.status_code == 403 and "remediation.approve" in lacking.text


# ---- every executor kind through the queue ---------------------------------------------------


def playbook(name: str, executor: str, spec: dict[str, Any], timeout: int = 5) -> None:
    definition = PlaybookDefinition.model_validate(
        {"name": name, "executor": executor, "spec": spec, "timeout_seconds": timeout}
    )
    playbook_store.create_playbook(definition, tenant="acme", actor="test")


def remediate(asset: str, name: str) -> dict[str, Any]:
    outcome = requests.request_run(tenant="acme", asset=asset, playbook=name, requested_by="svc")
    run = wait_for_run(outcome.run_id, "succeeded", "failed")
    view = views.describe_run(outcome.run_id, tenant="acme")
    assert run.state == "succeeded", (run.error, view["artifacts"])
    return view


def test_an_ansible_playbook_runs_against_the_assets_own_connection(
    worker_factory: Callable[..., WorkerProcess],
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    # ansible-playbook takes seconds to start: this worker's remediation time limit is longer
    # (and so is the longest playbook this process accepts).
    limits = {**get_settings().time_limits, "remediation": 25}
    monkeypatch.setitem(get_settings().time_limits, "remediation", 25)
    worker_factory(
        "remediation-ansible",
        env={
            "DRYDOCK_TIME_LIMITS": json.dumps(limits),
            # The test's target is this machine (no SSH server runs here).
            "DRYDOCK_REMEDIATION_ALLOW_LOCAL_ANSIBLE": "true",
        },
    )
    marker = tmp_path / "remediated"
    quarantined_asset(name="db-1", kind=AssetKind.HOST)
    requests.set_connection(
        tenant="acme",
        asset="db-1",
        connection={"ansible_connection": "local", "ansible_python_interpreter": sys.executable},
        actor="test",
    )
    plays = [
        {
            "gather_facts": False,
            "tasks": [
                {"name": "write marker", "copy": {"dest": str(marker), "content": "ok\n"}},
                {"name": "say where", "command": "echo {{ inventory_hostname }}"},
            ],
        }
    ]
    playbook("ansible-fix", "ansible", {"plays": plays}, timeout=15)
    view = remediate("db-1", "ansible-fix")
    assert marker.read_text() == "ok\n"
    steps = view["artifacts"]
    assert [step["name"] for step in steps] == ["write marker", "say where"]
    assert steps[1]["stdout"].strip() == "db-1"
    assert view["asset"]["state"] == "pending_attestation"


def test_a_libvirt_reboot_runs_on_the_assets_domain(
    worker_factory: Callable[..., WorkerProcess],
) -> None:
    worker_factory("remediation-libvirt")
    # The built-in test driver's one domain; the worker's own connection reboots it.
    quarantined_asset(name="test")
    playbook("reboot", "libvirt", {"actions": [{"action": "reboot"}]})
    view = remediate("test", "reboot")
    (step,) = view["artifacts"]
    assert step["name"] == "reboot" and step["outputs"]["after"]["state"] == "running"
    assert step["outputs"]["uri"] == "test:///default"


def test_a_kubernetes_cordon_reaches_the_api(
    worker_factory: Callable[..., WorkerProcess], kube_standin: Any, kubeconfig_file: Path
) -> None:
    worker_factory("remediation-kube", env={"DRYDOCK_KUBECONFIG": str(kubeconfig_file)})
    kube_standin.add_node("worker-7")
    quarantined_asset(name="node-a", kind=AssetKind.HOST)
    requests.set_connection(
        tenant="acme", asset="node-a", connection={"kubernetes_node": "worker-7"}, actor="test"
    )
    playbook("cordon", "kubernetes", {"actions": [{"action": "cordon"}]})
    view = remediate("node-a", "cordon")
    assert kube_standin.node("worker-7")["spec"]["unschedulable"] is True
    assert view["artifacts"][0]["outputs"]["changed"] is True


# ---- artifacts -------------------------------------------------------------------------------


def test_a_kept_step_is_capped_head_and_tail_with_secrets_gone_before_the_cut() -> None:
    from datetime import UTC, datetime

    from tasks.remediation.artifacts import kept_step
    from tasks.remediation.executors.base import StepResult

    secret = "hunter2-very-secret"
    # The secret sits right where the cut would split it.
    noisy = "a" * 3000 + secret + "b" * 3000 + "\nerror: the real reason\n"
    now = datetime.now(UTC)
    step = StepResult(
        name="noisy",
        ok=False,
        started_at=now,
        finished_at=now,
        exit_code=2,
        stdout=noisy,
        stderr=f"using {secret}",
        outputs={"password": "p4ssw0rd!", "note": f"with {secret}", "count": 3},
        error=f"failed using {secret}",
    )
    kept = kept_step(step, secrets=[secret], max_bytes=1024)
    assert kept["truncated"] and len(kept["stdout"].encode()) <= 1024
    assert kept["stdout_bytes"] == len(noisy.replace(secret, "[REDACTED]").encode())
    assert kept["stdout"].startswith("aaa") and kept["stdout"].endswith("the real reason\n")
    assert "bytes cut" in kept["stdout"]
    everything = json.dumps(kept, default=str)
    assert secret not in everything and "hunter2" not in everything
    assert "p4ssw0rd" not in everything
    assert kept["outputs"] == {"password": "[REDACTED]", "note": "with [REDACTED]", "count": 3}
    assert kept["stderr"] == "using [REDACTED]" and not kept["error"].count(secret)


def test_validating_playbooks_of_every_kind_loads_none_of_the_executors_libraries() -> None:
    # The API and the CLI validate every spec; the docker SDK, ansible-runner, libvirt and the
    # Kubernetes client load only in the worker that runs one.
    code = """
import sys
from tasks.remediation.playbooks import PlaybookDefinition
specs = {
    "shell": {"steps": [{"name": "a", "run": "true"}]},
    "container": {"image": "busybox", "steps": [{"name": "a", "command": ["true"]}]},
    "ansible": {"plays": [{"tasks": [{"name": "a", "ping": {}}]}]},
    "libvirt": {"actions": [{"action": "reboot"}]},
    "kubernetes": {"actions": [{"action": "cordon"}]},
}
for kind, spec in specs.items():
    PlaybookDefinition(name="p", executor=kind, spec=spec, timeout_seconds=5)
heavy = ("docker", "ansible", "ansible_runner", "libvirt", "kubernetes")
print(sorted(m for m in sys.modules if m.split(".")[0] in heavy))
"""
    checked = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, timeout=60
    )
    assert checked.returncode == 0, checked.stderr
    assert checked.stdout.strip() == "[]"

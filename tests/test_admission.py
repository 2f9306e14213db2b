"""Admission control at every enqueue, preemption of waiting jobs by a quarantine, the policy
context on every job's outcome, and `drydock policy watch`."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
import uuid
from collections.abc import Callable

import pytest
from fastapi.testclient import TestClient
from sqlalchemy import select

from dispatch.enqueue import enqueue
from models import policy as policy_store
from models.db import session_scope
from models.jobs import Job, JobEvent
from models.policy import PolicyDecision
from models.trust import TrustState
from policy import placement
from policy.admission import AdmissionRefusedError, issue_token
from tasks.remediation import requests
from tests.conftest import PRIVATE_QUEUE, WorkerProcess, wait_for_job
from tests.test_api import bearer
from tests.test_cli import assert_one_line_error, drydock
from tests.test_evaluation import asset_in
from tests.test_remediation import move_to

S = TrustState


def decisions_of(kind: str) -> list[PolicyDecision]:
    with session_scope() as session:
        rows = session.scalars(
            select(PolicyDecision).where(PolicyDecision.kind == kind).order_by(PolicyDecision.id)
        ).all()
        for row in rows:
            session.expunge(row)
        return list(rows)


def job_count() -> int:
    with session_scope() as session:
        return len(session.scalars(select(Job.id)).all())


def test_a_tenant_may_enqueue_only_the_task_kinds_its_rules_allow(fleet: WorkerProcess) -> None:
    with session_scope() as session:
        policy_store.set_tenant_rules(
            session, "acme", allowed_tasks=["attestation.*"], allowed_tiers=None, by="test"
        )

    with pytest.raises(AdmissionRefusedError) as refused:
        enqueue("builds.canary", {}, tenant="acme")

    assert "tenant acme may enqueue only attestation.*, not builds.canary" in str(refused.value)
    assert job_count() == 0  # nothing reached a queue or the outcome store
    [decision] = decisions_of("admission")
    assert (decision.allowed, decision.tenant) == (False, "acme")
    assert decision.id == refused.value.decision_id
    assert {g["gate"]: g["passed"] for g in decision.gates} == {
        "task_kind": False,
        "target_trust": True,
        "protected_target": True,
    }

    admitted = enqueue("attestation.canary", {}, tenant="acme")
    assert wait_for_job(admitted.id).status == "succeeded"
    # Another tenant, and an operator's job (no tenant), are not bound by acme's rules.
    assert wait_for_job(enqueue("builds.canary", {}, tenant="globex").id).status == "succeeded"
    assert wait_for_job(enqueue("builds.canary", {}).id).status == "succeeded"


def test_a_protected_target_needs_an_approval_token_for_that_task(fleet: WorkerProcess) -> None:
    asset_id = asset_in(S.TRUSTED, "acme", "node-1")
    requests.set_protection(tenant="acme", asset="node-1", protected=True, actor="test")

    with pytest.raises(AdmissionRefusedError) as refused:
        enqueue("evaluation.canary", {}, tenant="acme", target_asset="node-1")
    assert "acme/node-1 is protected: enqueueing evaluation.canary on it needs an approval" in (
        str(refused.value)
    )

    for_other_task = issue_token(
        asset_id=asset_id, task_pattern="builds.*", tenant="acme", approver="lead", ttl_seconds=60
    ).token
    with pytest.raises(AdmissionRefusedError) as wrong:
        enqueue(
            "evaluation.canary", {}, tenant="acme", target_asset="node-1",
            approval_token=for_other_task,
        )  # fmt: skip
    assert "approves builds.*, not evaluation.canary" in str(wrong.value)
    forged = for_other_task[:-4] + ("AAAA" if not for_other_task.endswith("AAAA") else "BBBB")
    with pytest.raises(AdmissionRefusedError) as tampered:
        enqueue("builds.canary", {}, tenant="acme", target_asset="node-1", approval_token=forged)
    assert "signature is not this fleet's" in str(tampered.value)
    assert job_count() == 0
    assert [d.allowed for d in decisions_of("admission")] == [False, False, False]

    approved = issue_token(
        asset_id=asset_id,
        task_pattern="evaluation.*",
        tenant="acme",
        approver="lead",
        ttl_seconds=60,
    ).token
    job = enqueue(
        "evaluation.canary", {}, tenant="acme", target_asset="node-1", approval_token=approved
    )
    done = wait_for_job(job.id)
    assert done.status == "succeeded"
    assert (done.tenant, done.target_asset_id) == ("acme", asset_id)
    context = done.policy_context
    assert context["allowed"] is True
    assert {"gate": "protected_target", "passed": True} in context["gates"]
    admitted = decisions_of("admission")[-1]
    assert (admitted.id, admitted.job_id, admitted.allowed) == (
        context["decision_id"],
        job.id,
        True,
    )
    protected = {g["gate"]: g["reason"] for g in admitted.gates}["protected_target"]
    assert protected == "acme/node-1 is protected; approval token valid"
    # The outcome event is the job's audit row: the worker that ran it and the policy context.
    with session_scope() as session:
        outcome = session.scalar(
            select(JobEvent).where(JobEvent.job_id == job.id, JobEvent.kind == "succeeded")
        )
        assert outcome is not None
        assert outcome.worker == fleet.hostname and outcome.worker_pid
        assert outcome.detail["policy"] == context


def test_admission_refusals_over_http_are_403_with_every_gate(fleet: WorkerProcess) -> None:
    from catalog import CATALOG
    from drydock.api import app
    from models import tokens

    asset_in(S.QUARANTINED, "acme", "node-2")
    with session_scope() as session:
        _, plaintext = tokens.create_token(
            session, name="acme-svc", scopes=["evaluation.*"], known_tasks=CATALOG,
            created_by="test", tenant="acme",
        )  # fmt: skip
    api = TestClient(app)

    answer = api.post(
        "/v1/jobs/evaluation.canary",
        json={},
        headers={**bearer(plaintext), "X-Drydock-Target-Asset": "node-2"},
    )

    assert answer.status_code == 403, answer.text
    body = answer.json()
    assert "target_trust: acme/node-2 is quarantined" in body["detail"]
    assert {g["gate"]: g["passed"] for g in body["gates"]}["target_trust"] is False
    with session_scope() as session:
        decision = session.get(PolicyDecision, body["decision_id"])
        assert decision is not None and decision.actor == "api:acme-svc"
        assert decision.tenant == "acme"
    assert job_count() == 0


def test_a_waiting_job_is_preempted_when_its_target_is_quarantined(
    worker_factory: Callable[..., WorkerProcess],
) -> None:
    asset_id = asset_in(S.TRUSTED, "acme", "node-3")
    # Nothing serves the remediation queue yet: the job waits there.
    waiting = enqueue(f"{PRIVATE_QUEUE}.canary", {}, tenant="acme", target_asset=str(asset_id))
    unbound = enqueue(f"{PRIVATE_QUEUE}.canary", {}, tenant="acme")

    move_to(asset_id, S.QUARANTINED)

    with session_scope() as session:
        job = session.get(Job, waiting.id)
        assert job is not None and job.status == "preempted"
        assert job.error is not None and "target asset acme/node-3 was quarantined" in job.error
        [event] = session.scalars(
            select(JobEvent).where(JobEvent.job_id == waiting.id, JobEvent.kind == "preempted")
        ).all()
        assert event.detail["policy"]["target_asset_id"] == str(asset_id)
    followed = subprocess.run(
        [sys.executable, "-m", "drydock.cli", "job", str(waiting.id), "--follow"],
        capture_output=True,
        text=True,
        env=os.environ.copy(),
        timeout=60,
    )
    assert followed.returncode == 3, followed.stderr
    assert "preempted before it ran: target asset acme/node-3 was quarantined" in followed.stdout
    [preemption] = decisions_of("preemption")
    assert (preemption.job_id, preemption.allowed) == (waiting.id, False)
    assert "evidence_failed" in preemption.summary

    # A worker receives the message later and runs nothing; the unbound job runs as usual.
    worker_factory("preempt")
    assert wait_for_job(unbound.id).status == "succeeded"
    with session_scope() as session:
        kinds = session.scalars(
            select(JobEvent.kind).where(JobEvent.job_id == waiting.id).order_by(JobEvent.id)
        ).all()
        assert kinds == ["enqueued", "preempted"]
        final = session.get(Job, waiting.id)
        assert final is not None and final.status == "preempted"


def test_policy_watch_streams_decisions_and_transitions(fleet: WorkerProcess) -> None:
    watcher = subprocess.Popen(
        [sys.executable, "-m", "drydock.cli", "policy", "watch", "--json"],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        env=os.environ.copy(),
        text=True,
    )
    try:
        assert watcher.stderr is not None and watcher.stdout is not None
        assert "watching decisions and transitions" in watcher.stderr.readline()
        asset_id = asset_in(S.TRUSTED, "acme", "node-4")
        with session_scope() as session:
            decided = placement.decide_placement(
                session,
                policy_store.PlacementRequest(
                    digest="sha256:" + "b" * 64, tier="standard", asset=str(asset_id),
                    tenant="acme",
                ),
                actor="test",
            )  # fmt: skip
            decision_id = decided.id
        seen: list[dict[str, object]] = []
        deadline = time.monotonic() + 20
        while time.monotonic() < deadline and not any(item["type"] == "decision" for item in seen):
            seen.append(json.loads(watcher.stdout.readline()))
    finally:
        watcher.terminate()
        watcher.wait(10)
    transitions = [i for i in seen if i["type"] == "transition"]
    assert [t["to_state"] for t in transitions] == ["unknown", "pending_attestation", "trusted"]
    [decision] = [i for i in seen if i["type"] == "decision"]
    assert decision["id"] == decision_id
    assert decision["allowed"] is False  # never evaluated
    assert decision["kind"] == "placement"


def test_enqueue_cli_refuses_with_the_reason(fleet: WorkerProcess) -> None:
    with session_scope() as session:
        policy_store.set_tenant_rules(
            session, "acme", allowed_tasks=[], allowed_tiers=None, by="test"
        )
    result = subprocess.run(
        [sys.executable, "-m", "drydock.cli", "enqueue", "builds.canary", "--tenant", "acme"],
        capture_output=True,
        text=True,
        env=os.environ.copy(),
        timeout=60,
    )
    assert result.returncode != 0
    assert "tenant acme may enqueue only (nothing), not builds.canary" in result.stderr
    assert job_count() == 0


def test_enqueue_with_an_unknown_target_is_refused(fleet: WorkerProcess) -> None:
    missing = uuid.uuid4()
    with pytest.raises(AdmissionRefusedError, match=f"no target asset {missing}"):
        enqueue("builds.canary", {}, target_asset=str(missing))
    # By name too: a target that names nothing is refused, never taken as no target.
    with pytest.raises(AdmissionRefusedError, match="no target asset acme/ghost"):
        enqueue("builds.canary", {}, target_asset="acme/ghost")
    assert job_count() == 0


def test_a_tenant_token_reads_only_its_tenant_jobs(fleet: WorkerProcess) -> None:
    from catalog import CATALOG
    from drydock.api import app
    from models import tokens

    def token(name: str, tenant: str | None) -> dict[str, str]:
        with session_scope() as session:
            _, plaintext = tokens.create_token(
                session, name=name, scopes=["builds.canary"], known_tasks=CATALOG,
                created_by="test", tenant=tenant,
            )  # fmt: skip
        return bearer(plaintext)

    acme, globex, operator = token("acme", "acme"), token("globex", "globex"), token("ops", None)
    api = TestClient(app)
    ids = {
        name: api.post("/v1/jobs/builds.canary", json={}, headers=headers).json()["id"]
        for name, headers in (("acme", acme), ("globex", globex))
    }

    listed = api.get("/v1/jobs", headers=acme).json()["jobs"]
    assert [j["id"] for j in listed] == [ids["acme"]]
    assert api.get(f"/v1/jobs/{ids['globex']}", headers=acme).status_code == 404
    assert api.get(f"/v1/jobs/{ids['acme']}", headers=acme).status_code == 200
    everyone = {j["id"] for j in api.get("/v1/jobs", headers=operator).json()["jobs"]}
    assert everyone == set(ids.values())


def test_a_replayed_job_is_admitted_again_for_its_tenant_and_target(fleet: WorkerProcess) -> None:
    from dispatch.enqueue import replay_dead_letter
    from models import job_reads

    asset_id = asset_in(S.TRUSTED, "acme", "node-3")
    dead = enqueue("builds.canary", {"fail_permanently": True}, target_asset=asset_id)
    assert wait_for_job(dead.id).status == "dead_lettered"
    # Since it died, its target was quarantined: the replay is refused like a new enqueue,
    # with the decision recorded, and the dead letter is left to replay later.
    move_to(asset_id, S.QUARANTINED)
    with pytest.raises(AdmissionRefusedError) as refused:
        replay_dead_letter(dead.id, by="alice")
    assert "quarantined" in str(refused.value)
    refusal = decisions_of("admission")[-1]
    assert (refusal.allowed, refusal.actor) == (False, "replay:alice")
    with session_scope() as session:
        letter = job_reads.get_dead_letter(session, dead.id)
        assert letter is not None and letter.replayed_at is None
        assert session.scalars(select(Job.id).where(Job.replay_of == dead.id)).all() == []

    # Trusted again: the replay is admitted, bound to the same target.
    move_to(asset_id, S.REMEDIATING, S.PENDING_ATTESTATION, S.TRUSTED)
    replayed = replay_dead_letter(dead.id, by="alice")
    row = wait_for_job(replayed.id, statuses=("dead_lettered",))
    assert row.target_asset_id == asset_id
    assert row.policy_context["allowed"] is True


def test_an_approval_token_is_recorded_admits_one_job_and_can_be_revoked(
    fleet: WorkerProcess,
) -> None:
    from concurrent.futures import ThreadPoolExecutor

    from typer.testing import CliRunner

    from drydock.cli import app as cli_app
    from models.admission_tokens import AdmissionToken

    asset_id = asset_in(S.TRUSTED, "acme", "node-4")
    requests.set_protection(tenant="acme", asset="node-4", protected=True, actor="test")
    issued = issue_token(
        asset_id=asset_id, task_pattern="builds.*", tenant="acme", approver="lead", ttl_seconds=60
    )
    with session_scope() as session:
        row = session.get(AdmissionToken, issued.id)
        assert row is not None
        assert (row.asset_id, row.tenant, row.task_pattern, row.approver) == (
            asset_id, "acme", "builds.*", "lead",
        )  # fmt: skip
        assert row.used_at is None and row.expires_at == issued.expires_at

    # Two enqueues racing with one token: one job is admitted, the other refused.
    def attempt(n: int) -> str:
        try:
            return str(
                enqueue(
                    "builds.canary", {"message": f"race {n}"}, tenant="acme",
                    target_asset="node-4", approval_token=issued.token,
                ).id
            )  # fmt: skip
        except AdmissionRefusedError as refused:
            return f"refused: {refused}"

    with ThreadPoolExecutor(2) as pool:
        outcomes = sorted(pool.map(attempt, range(2)))
    admitted = [o for o in outcomes if not o.startswith("refused")]
    assert len(admitted) == 1, outcomes
    assert f"already used by job {admitted[0]}" in outcomes[1]
    assert wait_for_job(uuid.UUID(admitted[0])).status == "succeeded"
    used = [d for d in decisions_of("admission") if d.allowed]
    assert used[-1].request["approval_token"] == {"id": issued.id}

    # Revoked (by its id, from the CLI) before it was used: it admits nothing.
    spare = issue_token(
        asset_id=asset_id, task_pattern="builds.*", tenant="acme", approver="lead", ttl_seconds=60
    )
    runner = CliRunner()
    result = runner.invoke(cli_app, ["admission", "revoke", spare.id, "--by", "security"])
    assert result.exit_code == 0, result.output
    assert f"revoked {spare.id} (by security" in result.stdout
    with pytest.raises(AdmissionRefusedError, match="it was revoked by security"):
        enqueue(
            "builds.canary", {}, tenant="acme", target_asset="node-4", approval_token=spare.token
        )
    unknown = drydock("admission", "revoke", "no-such-token", "--by", "security")
    assert_one_line_error(unknown, "no admission token no-such-token")


def test_a_token_whose_job_was_never_sent_admits_the_next_try(
    fleet: WorkerProcess, monkeypatch: pytest.MonkeyPatch
) -> None:
    from kombu.exceptions import OperationalError

    from kernel.errors import BrokerUnavailableError
    from workers.app import app

    asset_id = asset_in(S.TRUSTED, "acme", "node-5")
    requests.set_protection(tenant="acme", asset="node-5", protected=True, actor="test")
    issued = issue_token(
        asset_id=asset_id, task_pattern="builds.*", tenant="acme", approver="lead", ttl_seconds=60
    )

    def broker_down(*_: object, **__: object) -> None:
        raise OperationalError("connection refused")

    with monkeypatch.context() as patched:
        patched.setattr(app, "send_task", broker_down)
        with pytest.raises(BrokerUnavailableError):
            enqueue(
                "builds.canary", {}, tenant="acme", target_asset="node-5",
                approval_token=issued.token,
            )  # fmt: skip
    job = enqueue(
        "builds.canary", {}, tenant="acme", target_asset="node-5", approval_token=issued.token
    )
    assert wait_for_job(job.id).status == "succeeded"

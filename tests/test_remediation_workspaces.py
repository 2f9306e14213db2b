"""Remediation workspaces: a draft simulated against a sandbox replica (a pass, then a failing
edit), promoted through its gates into its scope, and the promotion loop giving each quarantined
asset in scope exactly one run of the new version, even when promotions race. Simulations are
shown not to touch the real target (a Kubernetes node, a libvirt domain, a file an ansible play
would write), and a protected lane refuses a promotion without an approval.
"""

from __future__ import annotations

import json
import threading
import time
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
from sqlalchemy import func, select

from catalog.remediation import SimulateWorkspacePayload
from kernel.settings import get_settings
from models import remediation as store
from models import remediation_workspaces as spaces
from models.db import session_scope
from models.jobs import Job
from models.remediation import RemediationRun
from models.stream import StreamEvent
from models.trust import AssetKind, TrustAsset, TrustAssetClass
from tasks.remediation import governance, promotion, requests, simulation, workspaces
from tasks.remediation.promotion import PromotionRefusedError
from tasks.remediation.workspaces import WorkspaceCreate, WorkspaceEdit, WorkspaceInvalidError
from tests.conftest import WorkerProcess
from tests.kube_standin import KubeStandIn
from tests.test_auto_remediation import runs_of
from tests.test_remediation import (
    SECRET,
    WORKER_ENV,
    audit_actions,
    drydock,
    job_context,
    quarantined_asset,
    shell_playbook,
)

TENANT = "acme"
CLASS = "vm-image"
AUTHOR = "operator:author"
APPROVER = "operator:lead"


# ---- helpers ---------------------------------------------------------------------------------


def scope_world(*, protected: bool = False, lanes: tuple[str, ...] = ("canary",)) -> None:
    """The asset class, the tenant's lanes (``canary`` protected or not) and playbook v1."""
    with session_scope() as session:
        session.add(TrustAssetClass(name=CLASS, evidence_ttl_seconds=3600))
    for lane in lanes:
        governance.put_lane(
            tenant=TENANT,
            name=lane,
            protected=protected and lane == "canary",
            description="",
            actor="test",
        )
    shell_playbook("fix-agent", "echo v1")


def asset_in(name: str, lane: str = "canary", *, quarantined: bool = True, **kw: Any) -> uuid.UUID:
    if quarantined:
        asset_id = quarantined_asset(name=name, asset_class=CLASS, **kw)
    else:
        from models import trust

        asset_id, _ = trust.register_asset(
            tenant=TENANT, name=name, kind=AssetKind.VM, actor="test", asset_class=CLASS
        )
    governance.set_asset_lane(tenant=TENANT, asset=name, lane=lane, actor="test")
    return asset_id


def shell_draft(*runs: str, **spec: Any) -> dict[str, Any]:
    return {
        "executor": "shell",
        "spec": {
            "steps": [{"name": f"step-{i}", "run": run} for i, run in enumerate(runs)],
            **spec,
        },
        "timeout_seconds": 5,
    }


def open_workspace(
    name: str,
    draft: dict[str, Any] | None = None,
    *,
    lane: str = "canary",
    names: tuple[str, ...] = (),
    active_runs: str = "relink",
    playbook: str = "fix-agent",
) -> dict[str, Any]:
    request = WorkspaceCreate.model_validate(
        {
            "name": name,
            "playbook": playbook,
            "draft": draft,
            "scope": {"asset_class": CLASS, "lane": lane, "names": list(names)},
            "active_runs": active_runs,
        }
    )
    return workspaces.create(request, tenant=TENANT, actor=AUTHOR)


def simulate_here(name: str) -> dict[str, Any]:
    """Start the workspace's simulation and run its job in this process (the job the start
    enqueued waits unconsumed: no worker listens in these tests)."""
    started = promotion.simulate(name, tenant=TENANT, actor=AUTHOR)
    workspace_id = uuid.UUID(workspaces.describe(name, tenant=TENANT)["id"])
    payload = SimulateWorkspacePayload(
        workspace_id=workspace_id, tenant=TENANT, simulation=started["simulation"]
    )
    simulation.run_simulation(payload, job_context())
    return workspaces.describe(name, tenant=TENANT)


def wait_for_state(name: str, *states: str, timeout: float = 60) -> dict[str, Any]:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        shown = workspaces.describe(name, tenant=TENANT)
        if shown["state"] in states:
            return shown
        time.sleep(0.2)
    raise AssertionError(f"workspace {name} is {shown['state']}, not one of {states}")


def actions(shown: dict[str, Any]) -> list[str]:
    return [event["action"] for event in shown["history"]]


def versions_of(playbook: str = "fix-agent") -> list[int]:
    with session_scope() as session:
        return [book.version for book in store.playbook_versions(session, TENANT, playbook)]


def active_version(asset_id: uuid.UUID, playbook: str = "fix-agent") -> int:
    with session_scope() as session:
        asset = session.get(TrustAsset, asset_id)
        assert asset is not None
        return spaces.playbook_for_asset(session, TENANT, playbook, asset).version


def workspace_stream(after: int = 0) -> list[dict[str, Any]]:
    with session_scope() as session:
        rows = session.scalars(
            select(StreamEvent)
            .where(StreamEvent.kind == "remediation.workspace", StreamEvent.id > after)
            .order_by(StreamEvent.id)
        ).all()
        return [dict(row.data) for row in rows]


def loop_here(name: str) -> dict[str, Any]:
    workspace_id = uuid.UUID(workspaces.describe(name, tenant=TENANT)["id"])
    return promotion.refresh_runs(workspace_id, TENANT, "test")


@pytest.fixture
def remediation_worker(
    worker_factory: Callable[..., WorkerProcess], sandbox_image: str
) -> WorkerProcess:
    return worker_factory("remediation", env=WORKER_ENV)


# ---- drafts ----------------------------------------------------------------------------------


def test_an_invalid_draft_is_refused_at_create_and_edit_with_every_problem_named(
    clean_state: None,
) -> None:
    scope_world()
    bad = {"executor": "shell", "spec": {"steps": [{"name": "s"}]}, "timeout_seconds": 0}
    with pytest.raises(WorkspaceInvalidError) as refused:
        open_workspace("bad", bad)
    named = {problem.field for problem in refused.value.problems}
    assert {"draft.spec.steps.0.run", "draft.timeout_seconds"} <= named
    # Nothing was stored: the name is free for a good draft, which starts at revision 1.
    assert open_workspace("bad", shell_draft("true"))["revision"] == 1
    with pytest.raises(WorkspaceInvalidError) as edit_refused:
        workspaces.edit(
            "bad",
            WorkspaceEdit.model_validate({"draft": {**bad, "executor": "nope"}}),
            tenant=TENANT,
            actor=AUTHOR,
        )
    assert "draft.executor" in {problem.field for problem in edit_refused.value.problems}
    assert workspaces.describe("bad", tenant=TENANT)["revision"] == 1
    # A scope naming a lane the tenant does not have is a conflict, named.
    with pytest.raises(spaces.WorkspaceConflictError, match="no lane 'prod'"):
        open_workspace("elsewhere", shell_draft("true"), lane="prod")


def test_a_draft_simulated_passes_then_a_failing_edit_fails_and_cannot_be_promoted(
    clean_state: None, remediation_worker: WorkerProcess
) -> None:
    scope_world()
    asset_in("vm-1")
    created = open_workspace(
        "agent-fix",
        shell_draft(
            'test "$DRYDOCK_SIMULATION" = 1 && echo "simulated with $API_KEY"',
            secret_env={"API_KEY": "DRYDOCK_REMEDIATION_SECRET_API_KEY"},
        ),
    )
    assert (created["state"], created["revision"], created["base_version"]) == ("draft", 1, 1)
    assert created["assets_in_scope"] == 1

    # Simulated by the remediation worker: passed, its step kept with the secret redacted.
    promotion.simulate("agent-fix", tenant=TENANT, actor=AUTHOR)
    passed = wait_for_state("agent-fix", "simulated_passed", "simulated_failed")
    assert passed["state"] == "simulated_passed", passed["simulation"]
    [step] = passed["simulation"]["steps"]
    assert step["ok"] and "simulated with" in step["stdout"]
    assert SECRET not in json.dumps(passed)
    assert passed["simulation"]["result"]["replica"]["name"] == "vm-1.replica"

    # An edit is a new revision, a draft again; an edit from a stale revision is refused.
    failing = shell_draft("echo checking", "echo broken >&2; exit 3")
    edited = workspaces.edit(
        "agent-fix",
        WorkspaceEdit.model_validate({"draft": failing, "expected_revision": 1}),
        tenant=TENANT,
        actor=AUTHOR,
    )
    assert (edited["state"], edited["revision"]) == ("draft", 2)
    with pytest.raises(spaces.WorkspaceConflictError, match="revision 2, not 1"):
        workspaces.edit(
            "agent-fix",
            WorkspaceEdit.model_validate({"active_runs": "finish", "expected_revision": 1}),
            tenant=TENANT,
            actor=AUTHOR,
        )
    # Revision 2 has not been simulated: the simulation of revision 1 does not count.
    with pytest.raises(PromotionRefusedError, match="revision 2 has not been simulated"):
        promotion.promote("agent-fix", tenant=TENANT, actor=AUTHOR)

    promotion.simulate("agent-fix", tenant=TENANT, actor=AUTHOR)
    failed = wait_for_state("agent-fix", "simulated_passed", "simulated_failed")
    assert failed["state"] == "simulated_failed"
    first, second = failed["simulation"]["steps"]
    assert first["ok"] and not second["ok"] and second["exit_code"] == 3
    assert "broken" in second["stderr"]
    assert "step 2 'step-1' failed" in failed["simulation"]["result"]["failure"]

    with pytest.raises(PromotionRefusedError) as refused:
        promotion.promote("agent-fix", tenant=TENANT, actor=AUTHOR, reason="ship it")
    gates = {gate.name.value: gate for gate in refused.value.gates}
    assert not gates["simulation"].passed and "failed" in gates["simulation"].reason
    assert gates["approval"].passed and gates["freeze"].passed
    shown = workspaces.describe("agent-fix", tenant=TENANT)
    recorded = [e for e in shown["history"] if e["action"] == "promotion_refused"][-1]
    assert {g["gate"]: g["passed"] for g in recorded["detail"]["gates"]} == {
        "simulation": False,
        "approval": True,
        "freeze": True,
    }
    assert actions(shown)[:4] == ["created", "simulation_started", "simulated", "edited"]
    # Nothing went live: v1 is still the only version, and no run was made.
    assert versions_of() == [1]
    with session_scope() as session:
        assert session.scalar(select(func.count()).select_from(RemediationRun)) == 0


# ---- promotion and its loop ------------------------------------------------------------------


def test_a_promotion_activates_the_draft_for_its_scope_and_refreshes_each_asset_once(
    clean_state: None, sandbox_image: str
) -> None:
    scope_world(lanes=("canary", "prod"))
    fresh = asset_in("vm-1")
    waiting = asset_in("vm-2")
    healthy = asset_in("vm-3", quarantined=False)
    other_lane = asset_in("vm-4", lane="prod")
    unselected = asset_in("db-1")
    # vm-2 already has a run of v1 queued (nobody consumes it here: it has not started).
    queued = requests.request_run(
        tenant=TENANT, asset="vm-2", playbook="fix-agent", requested_by="svc"
    )
    stream_start = max((e["event_id"] for e in workspace_stream()), default=0)

    open_workspace("agent-fix", shell_draft("echo v2"), names=("vm-*",))
    assert simulate_here("agent-fix")["state"] == "simulated_passed"
    done = promotion.promote("agent-fix", tenant=TENANT, actor=AUTHOR, reason="fixes the agent")
    assert (done["version"], done["previous_version"], done["state"]) == (2, None, "promoted")
    assert all(gate["passed"] for gate in done["gates"]), done["gates"]
    with session_scope() as session:
        loop_job = session.get(Job, uuid.UUID(done["loop_job_id"]))
        assert loop_job is not None and loop_job.task_name == promotion.REFRESH_TASK

    # The scope runs v2; assets outside it (another lane, a name the selector misses) keep v1,
    # which stays readable.
    assert [active_version(a) for a in (fresh, waiting, healthy)] == [2, 2, 2]
    assert active_version(other_lane) == 1 and active_version(unselected) == 1
    with session_scope() as session:
        old = store.get_playbook_or_none(session, TENANT, "fix-agent", 1)
        assert old is not None and old.spec["steps"][0]["run"] == "echo v1"
    with pytest.raises(spaces.WorkspaceConflictError, match="promoted already"):
        promotion.promote("agent-fix", tenant=TENANT, actor=AUTHOR)

    counts = loop_here("agent-fix")
    assert {k: counts[k] for k in ("created", "refreshed", "unaffected", "skipped")} == {
        "created": 1,
        "refreshed": 1,
        "unaffected": 1,
        "skipped": 0,
    }
    [created] = runs_of(fresh)
    assert (created.playbook_version, created.requested_by) == (2, "workspace:agent-fix")
    [relinked] = runs_of(waiting)
    assert relinked.id == queued.run_id and relinked.playbook_version == 2
    assert "relinked" in audit_actions(relinked.id)
    assert runs_of(healthy) == runs_of(other_lane) == runs_of(unselected) == []

    # The loop again (a redelivered job, the sweep): nothing new.
    again = loop_here("agent-fix")
    assert again["created"] == again["refreshed"] == 0
    assert len(runs_of(fresh)) == len(runs_of(waiting)) == 1

    shown = workspaces.describe("agent-fix", tenant=TENANT)
    loop_events = {e["asset_id"]: e["action"] for e in shown["history"] if e["asset_id"]}
    assert loop_events == {str(fresh): "run_created", str(waiting): "run_refreshed"}
    assert actions(shown)[-1] == "loop_finished" and shown["loop_finished_at"] is not None
    streamed = [e["action"] for e in workspace_stream(stream_start)]
    for action in ("promoted", "run_created", "run_refreshed", "loop_finished"):
        assert streamed.count(action) == 1, streamed


def test_runs_under_way_are_left_to_finish_as_the_workspace_says(
    clean_state: None, sandbox_image: str
) -> None:
    scope_world()
    asset_in("vm-1")
    waiting = asset_in("vm-2")
    queued = requests.request_run(
        tenant=TENANT, asset="vm-2", playbook="fix-agent", requested_by="svc"
    )
    open_workspace("careful", shell_draft("echo v2"), active_runs="finish")
    simulate_here("careful")
    promotion.promote("careful", tenant=TENANT, actor=AUTHOR)
    counts = loop_here("careful")
    assert (counts["created"], counts["skipped"], counts["refreshed"]) == (1, 1, 0)
    [kept] = runs_of(waiting)
    assert kept.id == queued.run_id and kept.playbook_version == 1
    skipped = [
        e
        for e in workspaces.describe("careful", tenant=TENANT)["history"]
        if e["action"] == "run_skipped"
    ]
    assert "active_runs: finish" in skipped[0]["detail"]["reason"]


def test_two_promotions_racing_leave_exactly_one_run_per_quarantined_asset(
    clean_state: None, sandbox_image: str
) -> None:
    scope_world()
    assets = [asset_in(f"vm-{i}") for i in range(8)]
    for name in ("first", "second"):
        open_workspace(name, shell_draft(f"echo {name}"))
        assert simulate_here(name)["state"] == "simulated_passed"
    barrier = threading.Barrier(3)
    outcomes: list[Any] = []

    def promote_and_loop(name: str) -> None:
        try:
            barrier.wait()
            promoted = promotion.promote(name, tenant=TENANT, actor=f"operator:{name}")
            outcomes.append(promoted["version"])
            outcomes.append(loop_here(name))
        except Exception as exc:  # every outcome is asserted below
            outcomes.append(exc)

    # Both workspaces promoted at once, one of them twice, each loop running as the other
    # promotion lands.
    threads = [
        threading.Thread(target=promote_and_loop, args=(name,))
        for name in ("first", "second", "first")
    ]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(120)
    errors = [o for o in outcomes if isinstance(o, Exception)]
    assert len(errors) == 1 and "promoted already" in str(errors[0]), outcomes
    assert sorted(o for o in outcomes if isinstance(o, int)) == [2, 3]
    assert versions_of() == [1, 2, 3]
    # Each asset: one run, of the scope's active version (the later promotion's).
    newest = active_version(assets[0])
    for asset_id in assets:
        runs = runs_of(asset_id)
        assert len(runs) == 1, runs
        assert runs[0].playbook_version == newest == active_version(asset_id)
    # Once more, both loops together (redelivered): still one run each.
    again = [threading.Thread(target=loop_here, args=(name,)) for name in ("first", "second")]
    for thread in again:
        thread.start()
    for thread in again:
        thread.join(60)
    assert all(len(runs_of(asset_id)) == 1 for asset_id in assets)
    created = sum(
        actions(workspaces.describe(name, tenant=TENANT)).count("run_created")
        for name in ("first", "second")
    )
    assert created == len(assets)


# ---- governance ------------------------------------------------------------------------------


def test_a_protected_lane_refuses_promotion_without_an_approval(
    clean_state: None, sandbox_image: str
) -> None:
    scope_world(protected=True)
    asset_in("vm-1")
    open_workspace("guarded", shell_draft("echo v2"))
    simulate_here("guarded")

    with pytest.raises(PromotionRefusedError) as unapproved:
        promotion.promote("guarded", tenant=TENANT, actor=AUTHOR)
    [approval] = [g for g in unapproved.value.gates if g.name.value == "approval"]
    assert not approval.passed and "lane canary is protected" in approval.reason
    with pytest.raises(spaces.WorkspaceConflictError, match="someone else must approve"):
        promotion.approve("guarded", tenant=TENANT, approver=AUTHOR)

    approved = promotion.approve("guarded", tenant=TENANT, approver=APPROVER, reason="reviewed")
    # Approved, but the token must be presented; a tampered one is refused.
    with pytest.raises(PromotionRefusedError, match="token must be presented"):
        promotion.promote("guarded", tenant=TENANT, actor=AUTHOR)
    with pytest.raises(PromotionRefusedError, match="does not approve this revision"):
        promotion.promote(
            "guarded", tenant=TENANT, actor=AUTHOR, approval_token=approved.token[:-4] + "AAAA"
        )
    # A freeze over the lane refuses it too, with the freeze's reason; lifted, it goes.
    freeze = governance.add_freeze(
        tenant=TENANT, lane="canary", asset_class=None, reason="holiday change freeze",
        starts_at=None, ends_at=None, actor="test",
    )  # fmt: skip
    with pytest.raises(PromotionRefusedError, match="holiday change freeze") as frozen:
        promotion.promote("guarded", tenant=TENANT, actor=AUTHOR, approval_token=approved.token)
    assert {g.name.value: g.passed for g in frozen.value.gates} == {
        "simulation": True,
        "approval": True,
        "freeze": False,
    }
    assert versions_of() == [1]
    governance.lift_freeze(uuid.UUID(freeze["id"]), tenant=TENANT, actor="test")
    done = promotion.promote("guarded", tenant=TENANT, actor=AUTHOR, approval_token=approved.token)
    assert done["version"] == 2
    [gate] = [g for g in done["gates"] if g["gate"] == "approval"]
    assert gate["passed"] and APPROVER in gate["reason"]
    refusals = actions(workspaces.describe("guarded", tenant=TENANT)).count("promotion_refused")
    assert refusals == 4


# ---- simulations never touch the real target -------------------------------------------------


@pytest.fixture
def kube_settings(kubeconfig_file: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[None]:
    monkeypatch.setattr(get_settings(), "kubeconfig", str(kubeconfig_file))
    yield


def test_a_kubernetes_simulation_is_a_server_side_dry_run_and_the_node_stays_schedulable(
    clean_state: None, kube_standin: KubeStandIn, kube_settings: None
) -> None:
    scope_world()
    kube_standin.add_node("worker-9")
    asset_in("node-a", kind=AssetKind.HOST)
    requests.set_connection(
        tenant=TENANT, asset="node-a", connection={"kubernetes_node": "worker-9"}, actor="test"
    )
    draft = {
        "executor": "kubernetes",
        "spec": {"actions": [{"action": "cordon"}]},
        "timeout_seconds": 5,
        "asset_kinds": ["host"],
    }
    open_workspace("cordon", draft, playbook="cordon-node")
    shown = simulate_here("cordon")
    assert shown["state"] == "simulated_passed", shown["simulation"]
    [step] = shown["simulation"]["steps"]
    assert step["ok"] and step["outputs"]["changed"] is True
    # The API answered the cordon as done, and kept nothing: the real node is schedulable.
    assert not kube_standin.node("worker-9")["spec"].get("unschedulable")
    writes = kube_standin.requests_to("PATCH", "/api/v1/nodes/worker-9")
    assert writes and all(r.query.get("dryRun") == "All" for r in writes)


def test_a_libvirt_simulation_runs_on_a_replica_and_the_real_domain_keeps_running(
    clean_state: None,
) -> None:
    import libvirt

    scope_world()
    # The built-in test driver's domain, which this process shares with the executor.
    asset_in("test")
    real = libvirt.open("test:///default")
    assert real.lookupByName("test").isActive()
    draft = {
        "executor": "libvirt",
        "spec": {"actions": [{"action": "shutdown"}]},
        "timeout_seconds": 5,
    }
    open_workspace("shutdown", draft, playbook="stop-vm")
    shown = simulate_here("shutdown")
    assert shown["state"] == "simulated_passed", shown["simulation"]
    [step] = shown["simulation"]["steps"]
    assert step["ok"] and step["outputs"]["uri"] != "test:///default"
    assert step["outputs"]["after"]["state"] != "running"
    assert real.lookupByName("test").isActive()
    real.close()


def test_an_ansible_simulation_runs_in_check_mode_with_a_diff_and_writes_nothing(
    clean_state: None, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setitem(get_settings().time_limits, "remediation", 25)
    scope_world()
    asset_in("db-1", kind=AssetKind.HOST)
    marker = tmp_path / "remediated"
    task: dict[str, Any] = {
        "name": "write marker",
        "copy": {"dest": str(marker), "content": "ok\n"},
    }
    plays = [{"gather_facts": False, "tasks": [task]}]
    draft: dict[str, Any] = {
        "executor": "ansible",
        "spec": {"plays": plays},
        "timeout_seconds": 15,
        "asset_kinds": ["host"],
    }
    open_workspace("marker", draft, playbook="write-marker")
    shown = simulate_here("marker")
    assert shown["state"] == "simulated_passed", shown["simulation"]
    [step] = shown["simulation"]["steps"]
    assert step["name"] == "write marker" and step["ok"]
    assert "ok" in (step["diff"] or "")
    assert not marker.exists()

    # A task that turns check mode off would run for real on the worker: refused, unrun.
    task["check_mode"] = False
    workspaces.edit(
        "marker",
        WorkspaceEdit.model_validate({"draft": {**draft, "spec": {"plays": plays}}}),
        tenant=TENANT,
        actor=AUTHOR,
    )
    refused = simulate_here("marker")
    assert refused["state"] == "simulated_failed"
    assert (
        "plays[0].tasks[0].check_mode sets check_mode" in refused["simulation"]["result"]["failure"]
    )
    assert not marker.exists()


# ---- the operator's doors --------------------------------------------------------------------


def test_operators_create_edit_show_list_and_abandon_workspaces_from_the_cli(
    clean_state: None, tmp_path: Path
) -> None:
    scope_world()
    asset_in("vm-1")
    draft = tmp_path / "draft.yaml"
    draft.write_text(
        "executor: shell\ntimeout_seconds: 5\n"
        "spec:\n  steps:\n    - name: fix\n      run: echo v2\n"
    )
    base = ["--tenant", TENANT]
    made = drydock(
        "remediation", "workspaces", "create", "agent-fix", *base, "--playbook", "fix-agent",
        "--asset-class", CLASS, "--lane", "canary", "--draft", str(draft), "--by", "alice",
    )  # fmt: skip
    assert made.returncode == 0, made.stderr
    assert "revision 1 (draft), 1 asset(s) in scope" in made.stdout
    draft.write_text("executor: shell\nspec:\n  steps:\n    - name: fix\n")
    bad = drydock("remediation", "workspaces", "edit", "agent-fix", *base, "--draft", str(draft))
    assert bad.returncode != 0 and "draft.spec.steps.0.run" in bad.stderr
    assert "Traceback" not in bad.stderr
    edited = drydock(
        "remediation", "workspaces", "edit", "agent-fix", *base, "--active-runs", "finish",
        "--expected-revision", "1",
    )  # fmt: skip
    assert edited.returncode == 0 and "revision 2" in edited.stdout, edited.stderr
    shown = drydock("remediation", "workspaces", "show", "agent-fix", *base)
    assert "workspace acme/agent-fix  draft" in shown.stdout
    assert "active runs: finish" in shown.stdout and "edited" in shown.stdout
    listed = drydock("remediation", "workspaces", "list", *base, "--state", "draft")
    assert "acme/agent-fix" in listed.stdout
    gone = drydock("remediation", "workspaces", "abandon", "agent-fix", *base, "--reason", "x")
    assert gone.returncode == 0 and "abandoned" in gone.stdout
    again = drydock("remediation", "workspaces", "abandon", "agent-fix", *base)
    assert again.returncode != 0 and "abandoned already" in again.stderr


def test_the_api_names_every_problem_and_refuses_promotion_with_each_gate(
    clean_state: None, sandbox_image: str
) -> None:
    from fastapi.testclient import TestClient

    from catalog import CATALOG
    from drydock.api import app
    from models import tokens

    with session_scope() as session:
        _, plaintext = tokens.create_token(
            session, name="ops", scopes=["remediation.*"], known_tasks=CATALOG, created_by="t",
            tenant=TENANT,
        )  # fmt: skip
    auth = {"Authorization": f"Bearer {plaintext}"}
    api = TestClient(app)
    scope_world()
    asset_in("vm-1")
    body: dict[str, Any] = {
        "name": "agent-fix",
        "playbook": "fix-agent",
        "scope": {"asset_class": CLASS, "lane": "canary"},
        "draft": {"executor": "shell", "spec": {"steps": [{"name": "s"}]}, "timeout_seconds": 0},
    }
    refused = api.post("/v1/remediation/workspaces", json=body, headers=auth)
    assert refused.status_code == 422
    places = {".".join(map(str, problem["loc"])) for problem in refused.json()["detail"]}
    assert {"body.draft.spec.steps.0.run", "body.draft.timeout_seconds"} <= places
    body["draft"] = shell_draft("echo v2")
    created = api.post("/v1/remediation/workspaces", json=body, headers=auth)
    assert created.status_code == 201, created.text
    unsimulated = api.post("/v1/remediation/workspaces/agent-fix/promote", headers=auth)
    assert unsimulated.status_code == 409 and "has not been simulated" in unsimulated.text
    simulate_here("agent-fix")
    promoted = api.post(
        "/v1/remediation/workspaces/agent-fix/promote", json={"reason": "go"}, headers=auth
    )
    assert promoted.status_code == 200, promoted.text
    assert promoted.json()["version"] == 2
    shown = api.get("/v1/remediation/workspaces/agent-fix", headers=auth).json()
    assert shown["state"] == "promoted" and shown["promoted_version"] == 2
    missing = api.get("/v1/remediation/workspaces/nope", headers=auth)
    assert missing.status_code == 404

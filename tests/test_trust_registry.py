"""The trust registry against a real PostgreSQL, Redis and worker: the lifecycle's edges, an
append-only history, optimistic locking under concurrent writers, live transitions, accelerator
posture, the libvirt inventory and the staleness sweep."""

from __future__ import annotations

import itertools
import json
import os
import subprocess
import sys
import threading
import uuid
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest
from sqlalchemy import select, text
from sqlalchemy.exc import DBAPIError
from sqlalchemy.orm import Session
from sqlalchemy.orm.exc import StaleDataError

from dispatch.enqueue import enqueue
from kernel.errors import PayloadInvalidError
from models import trust
from models.db import get_engine, session_scope
from models.jobs import Job
from models.trust import (
    AssetKind,
    AttestationVerdict,
    IllegalTransitionError,
    Move,
    TrustAsset,
    TrustAssetClass,
    TrustState,
    TrustTransition,
)
from tests.conftest import WorkerProcess, wait_for_job

S = TrustState


def new_asset(
    name: str = "vm-1", tenant: str = "acme", kind: AssetKind = AssetKind.VM, **kw: Any
) -> uuid.UUID:
    asset_id, created = trust.register_asset(
        tenant=tenant, name=name, kind=kind, actor="test", **kw
    )
    assert created
    return asset_id


def move_to(asset_id: uuid.UUID, *states: TrustState, cause: str = "test") -> None:
    for state in states:

        def plan(_session: Session, _asset: TrustAsset, to: TrustState = state) -> list[Move]:
            return [Move(to, cause)]

        trust.transition(asset_id, plan, actor="test")


def history_of(asset_id: uuid.UUID) -> list[TrustTransition]:
    with session_scope() as session:
        return trust.history(session, asset_id)


def assert_consistent(asset_id: uuid.UUID) -> list[TrustTransition]:
    """Every row follows the one before it along an allowed edge, in version order, and the
    asset stands where the last row left it."""
    rows = history_of(asset_id)
    assert rows[0].from_state is None and rows[0].to_state == S.UNKNOWN
    for before, after in itertools.pairwise(rows):
        assert after.seq > before.seq
        assert after.from_state == before.to_state
        assert S(after.to_state) in trust.ALLOWED_TRANSITIONS[S(after.from_state)]
    with session_scope() as session:
        asset = session.get(TrustAsset, asset_id)
        assert asset is not None
        assert asset.state == rows[-1].to_state
        assert asset.version >= rows[-1].seq
    return rows


def test_an_asset_moves_only_along_the_lifecycle_and_every_step_is_recorded(
    clean_state: None,
) -> None:
    asset_id = new_asset()
    with pytest.raises(IllegalTransitionError, match="cannot move from unknown to trusted"):
        move_to(asset_id, S.TRUSTED)
    move_to(asset_id, S.PENDING_ATTESTATION, S.TRUSTED, S.STALE, S.QUARANTINED)
    # Only remediation releases a quarantined asset.
    with pytest.raises(IllegalTransitionError, match="allowed from quarantined: remediating"):
        move_to(asset_id, S.PENDING_ATTESTATION)
    move_to(asset_id, S.REMEDIATING, S.PENDING_ATTESTATION, S.TRUSTED)
    rows = assert_consistent(asset_id)
    assert [row.to_state for row in rows] == [
        "unknown",
        "pending_attestation",
        "trusted",
        "stale",
        "quarantined",
        "remediating",
        "pending_attestation",
        "trusted",
    ]
    assert {row.actor for row in rows} == {"test"}


def test_history_is_append_only(clean_state: None) -> None:
    asset_id = new_asset()
    move_to(asset_id, S.PENDING_ATTESTATION)
    for statement in (
        "UPDATE trust_transitions SET to_state = 'trusted'",
        "DELETE FROM trust_transitions",
    ):
        with pytest.raises(DBAPIError, match="append-only"), get_engine().begin() as conn:
            conn.execute(text(statement))
    assert [row.to_state for row in history_of(asset_id)] == ["unknown", "pending_attestation"]


def test_a_writer_holding_an_old_version_cannot_overwrite(clean_state: None) -> None:
    asset_id = new_asset()
    with Session(get_engine()) as stale_reader:
        old = stale_reader.get(TrustAsset, asset_id)
        assert old is not None
        move_to(asset_id, S.PENDING_ATTESTATION)  # someone else moves it meanwhile
        old.state = S.QUARANTINED.value
        with pytest.raises(StaleDataError):
            stale_reader.flush()
    with session_scope() as session:
        asset = session.get(TrustAsset, asset_id)
        assert asset is not None and asset.state == S.PENDING_ATTESTATION


def test_twenty_concurrent_transitions_leave_one_consistent_history(clean_state: None) -> None:
    asset_id = new_asset()
    move_to(asset_id, S.PENDING_ATTESTATION, S.TRUSTED)
    # Each writer takes the asset one step round trusted -> stale -> pending -> trusted from
    # whatever state it finds: a writer that loses a race must re-read and re-decide.
    cycle = {S.TRUSTED: S.STALE, S.STALE: S.PENDING_ATTESTATION, S.PENDING_ATTESTATION: S.TRUSTED}
    start = threading.Barrier(20)
    errors: list[BaseException] = []
    done: list[trust.TransitionRecord] = []

    def writer() -> None:
        try:
            start.wait()
            done.extend(
                trust.transition(
                    asset_id,
                    lambda _s, asset: [Move(cycle[S(asset.state)], "race")],
                    actor=f"writer-{threading.get_ident()}",
                    attempts=60,
                )
            )
        except BaseException as exc:  # reported below
            errors.append(exc)

    threads = [threading.Thread(target=writer) for _ in range(20)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(60)
    assert not errors, errors
    assert len(done) == 20
    rows = assert_consistent(asset_id)
    raced = [row for row in rows if row.cause == "race"]
    assert len(raced) == 20
    assert sorted(record.seq for record in done) == [row.seq for row in raced]
    # 20 steps round a 3-cycle starting at trusted end two steps on: pending_attestation.
    assert rows[-1].to_state == S.PENDING_ATTESTATION


# ---- live transitions ------------------------------------------------------------------------


@pytest.fixture
def watcher() -> Iterator[Any]:
    started: list[subprocess.Popen[str]] = []

    def start(*args: str) -> subprocess.Popen[str]:
        proc = subprocess.Popen(
            [sys.executable, "-m", "drydock.cli", "trust", "watch", *args],
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
            env=os.environ.copy(),
        )
        started.append(proc)
        assert proc.stderr is not None
        ready = proc.stderr.readline()
        assert "watching transitions" in ready, ready + proc.stderr.read()
        return proc

    yield start
    for proc in started:
        proc.kill()
        proc.wait(10)


def read_until(proc: subprocess.Popen[str], needle: str, timeout: float = 20) -> list[str]:
    lines: list[str] = []
    found = threading.Event()

    def reader() -> None:
        assert proc.stdout is not None
        for line in proc.stdout:
            lines.append(line.rstrip("\n"))
            if needle in line:
                found.set()
                return

    threading.Thread(target=reader, daemon=True).start()
    assert found.wait(timeout), f"{needle!r} not seen; got {lines}"
    return lines


def set_class(name: str, **values: Any) -> None:
    with session_scope() as session:
        session.merge(TrustAssetClass(name=name, evidence_ttl_seconds=3600, **values))


def test_a_watcher_sees_what_a_worker_did_as_it_happens(fleet: WorkerProcess, watcher: Any) -> None:
    set_class("h100-secure", accelerator_min_driver="550.54", accelerator_require_cc=True)
    gpu = new_asset("gpu-0", kind=AssetKind.ACCELERATOR, asset_class="h100-secure")
    new_asset("gpu-9", tenant="other", kind=AssetKind.ACCELERATOR, asset_class="h100-secure")
    listening = watcher("--tenant", "acme")
    subscribed = watcher("--via", "redis")

    job = enqueue(
        "attestation.ingest_accelerator_posture",
        {"asset_id": str(gpu), "posture": posture(driver_version="535.104.05")},
    )
    seen = read_until(listening, "-> quarantined")
    assert any("acme/gpu-0 unknown -> pending_attestation" in line for line in seen)
    [line] = [line for line in seen if "-> quarantined" in line]
    assert "acme/gpu-0 pending_attestation -> quarantined (posture_failed:" in line
    assert "gate driver.minimum failed" in line and f"job {job.id}" in line
    assert f"by worker:{fleet.hostname}" in line
    assert (
        "acme/gpu-0 pending_attestation -> quarantined"
        in read_until(subscribed, "-> quarantined")[-1]
    )
    # The tenant filter: another tenant's transition reaches the Redis watcher, not this one.
    other = enqueue(
        "attestation.ingest_accelerator_posture",
        {
            "asset_id": str(find("other", "gpu-9")),
            "posture": posture(driver_version="550.54.15"),
        },
    )
    wait_for_job(other.id)
    read_until(subscribed, "other/gpu-9 pending_attestation -> trusted")
    move_to(gpu, S.REMEDIATING, cause="remediation_started")
    assert "acme/gpu-0 quarantined -> remediating" in read_until(listening, "remediating")[-1]


def find(tenant: str, name: str) -> uuid.UUID:
    with session_scope() as session:
        return trust.find_asset(session, f"{tenant}/{name}").id


# ---- accelerator posture ---------------------------------------------------------------------


def posture(**overrides: Any) -> dict[str, Any]:
    report = {
        "model": "NVIDIA H100 80GB HBM3",
        "driver_version": "550.54.15",
        "vbios_version": "96.00.74.00.1C",
        "ecc_enabled": True,
        "mig_mode": "disabled",
        "cc_mode": "on",
        "firmware": {"gsp": "550.54.15", "inforom": "G520.0200.00.05"},
    }
    return {**report, **overrides}


def test_accelerator_posture_moves_trust_and_names_the_failing_gate(fleet: WorkerProcess) -> None:
    set_class("tier-cc", accelerator_min_driver="550.54", accelerator_require_cc=True)
    gpu = new_asset("gpu-1", kind=AssetKind.ACCELERATOR, asset_class="tier-cc")

    good = enqueue(
        "attestation.ingest_accelerator_posture", {"asset_id": str(gpu), "posture": posture()}
    )
    assert wait_for_job(good.id).status == "succeeded"
    with session_scope() as session:
        asset = session.get(TrustAsset, gpu)
        assert asset is not None and asset.state == S.TRUSTED
        assert asset.posture is not None and asset.posture["driver_version"] == "550.54.15"
        assert asset.evidence_expires_at is not None

    bad = enqueue(
        "attestation.ingest_accelerator_posture",
        {"asset_id": str(gpu), "posture": posture(cc_mode="devtools")},
    )
    assert wait_for_job(bad.id).status == "succeeded"
    last = history_of(gpu)[-1]
    assert (last.from_state, last.to_state, last.cause) == (
        "trusted",
        "quarantined",
        "posture_failed",
    )
    assert last.evidence["failed_checks"] == ["cc_mode"]
    assert "gate cc_mode failed: confidential-computing mode is devtools" in last.detail
    assert last.job_id == bad.id
    with session_scope() as session:
        verdicts = session.scalars(
            select(AttestationVerdict).where(AttestationVerdict.asset_id == gpu)
        ).all()
        assert [v.verified for v in verdicts] == [True, False]
        assert {check["name"] for check in verdicts[1].checks} >= {"driver.minimum", "cc_mode"}


def test_a_malformed_posture_is_refused_at_enqueue_naming_the_fields(clean_state: None) -> None:
    gpu = new_asset("gpu-2", kind=AssetKind.ACCELERATOR)
    with pytest.raises(PayloadInvalidError) as refused:
        enqueue(
            "attestation.ingest_accelerator_posture",
            {
                "asset_id": str(gpu),
                "posture": posture(driver_version="latest", cc_mode="maybe", uptime=3),
            },
        )
    message = str(refused.value)
    assert "posture.driver_version" in message and "dotted numeric version" in message
    assert "posture.cc_mode" in message and "posture.uptime" in message
    with session_scope() as session:
        assert session.scalar(select(Job)) is None


def test_posture_for_an_asset_that_is_no_accelerator_is_dead_lettered(
    fleet: WorkerProcess,
) -> None:
    vm = new_asset("vm-7")
    job = enqueue(
        "attestation.ingest_accelerator_posture", {"asset_id": str(vm), "posture": posture()}
    )
    row = wait_for_job(job.id)
    assert row.status == "dead_lettered" and row.attempts == 1
    assert "is a vm, not an accelerator" in (row.error or "")
    assert [r.to_state for r in history_of(vm)] == ["unknown"]


# ---- VM inventory ----------------------------------------------------------------------------


def test_the_libvirt_inventory_links_domains_to_assets(fleet: WorkerProcess) -> None:
    import libvirt

    conn = libvirt.openReadOnly("test:///default")
    [domain] = conn.listAllDomains(0)
    domain_uuid, domain_name = uuid.UUID(domain.UUIDString()), domain.name()
    conn.close()
    # Registered by hand before the sync: linked by name, not registered twice.
    mine = new_asset(domain_name, tenant="acme")

    first = enqueue("attestation.sync_vm_inventory", {"tenant": "acme"})
    assert wait_for_job(first.id).status == "succeeded"
    again = enqueue("attestation.sync_vm_inventory", {"tenant": "acme"})
    assert wait_for_job(again.id).status == "succeeded"
    with session_scope() as session:
        assets = session.scalars(select(TrustAsset).where(TrustAsset.kind == "vm")).all()
        assert [a.id for a in assets] == [mine]
        [asset] = assets
        assert asset.libvirt_uuid == domain_uuid
        assert asset.libvirt_state == "running"
        assert asset.inventory_seen_at is not None and asset.inventory_missing_since is None
        results: list[dict[str, Any]] = [
            session.scalars(select(Job.result).where(Job.id == job_id)).one()
            for job_id in (first.id, again.id)
        ]
    assert results[0]["linked"] == [domain_name]
    assert results[1]["linked"] == [] and results[1]["added"] == []


def test_a_domain_nobody_registered_becomes_a_new_unknown_asset(fleet: WorkerProcess) -> None:
    set_class("cos-vm")
    job = enqueue("attestation.sync_vm_inventory", {"tenant": "ops", "asset_class": "cos-vm"})
    assert wait_for_job(job.id).status == "succeeded"
    with session_scope() as session:
        [asset] = session.scalars(select(TrustAsset)).all()
        assert (asset.tenant, asset.kind, asset.asset_class) == ("ops", "vm", "cos-vm")
        assert asset.state == S.UNKNOWN and asset.libvirt_uuid is not None
    [registered] = history_of(asset.id)
    assert registered.cause == "registered"


# ---- staleness -------------------------------------------------------------------------------


def test_the_staleness_sweep_touches_only_due_assets_through_its_index(
    clean_state: None,
) -> None:
    now = datetime.now(UTC)
    due = [new_asset(f"due-{i}") for i in range(3)]
    for asset_id in due:
        move_to(asset_id, S.PENDING_ATTESTATION, S.TRUSTED)
    with session_scope() as session:
        for asset_id in due:
            asset = session.get(TrustAsset, asset_id)
            assert asset is not None
            asset.evidence_expires_at = now - timedelta(minutes=1)
        # Many assets that are not due, inserted directly: only their versions matter here.
        session.add_all(
            TrustAsset(
                tenant="bulk",
                name=f"fresh-{i}",
                kind="vm",
                state=S.TRUSTED.value,
                evidence_expires_at=now + timedelta(hours=1 + i),
            )
            for i in range(300)
        )
    with get_engine().begin() as conn:
        conn.execute(text("ANALYZE trust_assets"))
        versions_before: dict[str, int] = dict(
            conn.execute(text("SELECT name, version FROM trust_assets WHERE tenant = 'bulk'")).all()
        )

    records = trust.expire_stale_evidence(datetime.now(UTC), actor="beat")

    assert sorted(r.asset for r in records) == ["due-0", "due-1", "due-2"]
    for asset_id in due:
        last = assert_consistent(asset_id)[-1]
        assert (last.to_state, last.cause) == ("stale", "evidence_expired")
    with get_engine().begin() as conn:
        versions_after: dict[str, int] = dict(
            conn.execute(text("SELECT name, version FROM trust_assets WHERE tenant = 'bulk'")).all()
        )
        # The due query is answered from the partial index over trusted rows' expiry.
        with Session(bind=conn) as session:
            query = (
                select(TrustAsset.id)
                .where(
                    TrustAsset.state == "trusted",
                    TrustAsset.evidence_expires_at <= datetime.now(UTC),
                )
                .order_by(TrustAsset.evidence_expires_at)
                .limit(500)
            )
            compiled = query.compile(bind=conn, compile_kwargs={"literal_binds": True})
            plan = "\n".join(row[0] for row in session.execute(text(f"EXPLAIN {compiled}")).all())
    assert versions_after == versions_before
    assert "ix_trust_assets_trusted_expiry" in plan, plan
    # A second sweep finds nothing left to do.
    assert trust.expire_stale_evidence(datetime.now(UTC), actor="beat") == []


def test_beat_runs_the_staleness_sweep_on_the_attestation_queue() -> None:
    from beat_schedules import beat_schedule
    from catalog import CATALOG
    from kernel.settings import Settings

    entry = beat_schedule(Settings(trust_staleness_interval_seconds=30))["trust-staleness"]
    assert entry["task"] in CATALOG and entry["options"]["queue"] == "attestation"
    assert entry["schedule"] == 30.0
    assert "trust-staleness" not in beat_schedule(Settings(trust_staleness_interval_seconds=0))


def test_the_sweep_as_a_job_moves_due_assets(fleet: WorkerProcess) -> None:
    asset_id = new_asset()
    move_to(asset_id, S.PENDING_ATTESTATION, S.TRUSTED)
    with session_scope() as session:
        asset = session.get(TrustAsset, asset_id)
        assert asset is not None
        asset.evidence_expires_at = datetime.now(UTC) - timedelta(seconds=1)
    job = enqueue("attestation.expire_stale_evidence", {})
    assert wait_for_job(job.id).status == "succeeded"
    last = history_of(asset_id)[-1]
    assert (last.to_state, last.actor) == ("stale", f"worker:{fleet.hostname}")


# ---- operators' commands ---------------------------------------------------------------------


def test_operators_register_classes_and_assets_and_read_their_history(clean_state: None) -> None:
    from typer.testing import CliRunner

    from drydock.cli import app as cli_app
    from tests.conftest import SAMPLES

    runner = CliRunner()
    ak = SAMPLES / "tpm" / "go-tpm-tools-gce-cos85-nonce9009" / "ak_pub.tpmt_public"
    result = runner.invoke(
        cli_app,
        ["trust", "class", "set", "cos-vm", "--ttl", "12h", "--pcr", "sha256:7=" + "ab" * 32],
    )
    assert result.exit_code == 0, result.output
    result = runner.invoke(
        cli_app,
        ["trust", "register", "vm-42", "--tenant", "acme", "--kind", "vm", "--class", "cos-vm",
         "--ak", str(ak)],
    )  # fmt: skip
    assert result.exit_code == 0 and "registered acme/vm-42" in result.output, result.output
    with session_scope() as session:
        row = session.get(TrustAssetClass, "cos-vm")
        assert row is not None and row.evidence_ttl_seconds == 12 * 3600
        assert row.tpm_pcrs == {"sha256": {"7": "ab" * 32}}
        asset = trust.find_asset(session, "acme/vm-42")
        assert asset.attestation_key == ak.read_bytes()
    move_to(asset.id, S.PENDING_ATTESTATION, cause="attestation_started")

    shown = runner.invoke(cli_app, ["trust", "show", "acme/vm-42"])
    assert shown.exit_code == 0, shown.output
    assert "state      pending_attestation" in shown.output
    assert "acme/vm-42 (new) -> unknown (registered: vm registered in class cos-vm)" in shown.output
    assert "acme/vm-42 unknown -> pending_attestation (attestation_started)" in shown.output
    as_json = json.loads(runner.invoke(cli_app, ["trust", "show", str(asset.id), "--json"]).stdout)
    assert [step["to_state"] for step in as_json["history"]] == ["unknown", "pending_attestation"]

    # Bad input is refused with what was wrong, and nothing changes.
    refused = runner.invoke(
        cli_app,
        ["trust", "register", "vm-43", "--tenant", "acme", "--kind", "vm", "--ak", __file__],
    )
    assert refused.exit_code != 0
    assert "ak:" in str(refused.exception) or "ak:" in refused.output
    refused = runner.invoke(cli_app, ["trust", "class", "set", "bad", "--pcr", "sha256:7=zz"])
    assert refused.exit_code != 0
    with session_scope() as session:
        assert session.get(TrustAssetClass, "bad") is None
        assert session.scalar(select(TrustAsset).where(TrustAsset.name == "vm-43")) is None

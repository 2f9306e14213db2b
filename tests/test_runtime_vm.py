"""The runtime's VM executor: a server in a VM on libvirt (the test driver, served by a libvirtd
of the tests' own so the worker and the test see one set of domains) that reaches ``running``
only once its evidence verifies, then is stopped by a quarantine.

The test is the VM's attestation agent, with the software TPM as its vTPM: it hears the evidence
request, enrols its attestation key and sends a quote of the nonce through the queue.
"""

from __future__ import annotations

import json
import time
import uuid
from typing import Any

import libvirt
import pytest
from fastapi.testclient import TestClient
from sqlalchemy import select

from dispatch.enqueue import enqueue
from drydock.api import app
from models import trust
from models.db import session_scope
from models.runtime import RuntimeInstance
from models.trust import AssetKind, TrustAsset, TrustAssetClass, TrustState
from models.trust_actions import move_by_operator
from tasks.runtime import servers
from testkit.libvirt_daemon import LibvirtDaemon
from testkit.tpm import SoftwareTpm
from tests.conftest import poll, wait_for_job
from tests.runtime_world import PROBE_PATH, TENANT, McpImages, history, instance_of
from tests.test_api import bearer, make_token
from tests.test_attestation_samples import verify_through_queue
from tests.test_cli import drydock
from tests.test_evaluation import asset_in

BANKS = {"sha256": [0, 7]}


class VmWorld:
    def __init__(self, images: McpImages, tpm: SoftwareTpm, daemon: LibvirtDaemon) -> None:
        self.tpm = tpm
        self.daemon = daemon
        self.ak = tpm.create_ak("ecc")
        reference = json.loads(tpm.quote(self.ak, b"reference", BANKS).pcrs)["sha256"]
        with session_scope() as session:
            session.merge(
                TrustAssetClass(
                    name="mcp-vm", evidence_ttl_seconds=3600, tpm_pcrs={"sha256": reference}
                )
            )
        asset_in(TrustState.TRUSTED, TENANT, "vm-host-1")
        servers.put_target(
            name="vm-host-1",
            backend="libvirt",
            asset=f"{TENANT}/vm-host-1",
            platforms=["linux/amd64"],
            isolation="vm",
            connection={"libvirt_uri": daemon.uri, "asset_class": "mcp-vm"},
            actor="test",
        )
        servers.add_server(tenant=TENANT, name="vault", repository=images.repository,
                           probe_path=PROBE_PATH, isolation="vm", actor="test")  # fmt: skip
        servers.add_release(
            tenant=TENANT, server="vault", digest=images.good, tier="standard", actor="test"
        )
        self.digest = images.good

    def launch(self) -> Any:
        return enqueue(
            "runtime.launch", {"tenant": TENANT, "server": "vault", "digest": self.digest}
        )

    def answer(self, request: dict[str, Any], nonce: str | None = None) -> str:
        """The VM's agent: enrol the AK, quote ``nonce`` (the one asked for unless given)."""
        asset_id = uuid.UUID(request["asset_id"])
        trust.register_asset(tenant=TENANT, name=request["asset"], kind=AssetKind.VM,
                             actor="vm-agent", attestation_key=self.ak.pem)  # fmt: skip
        quoted = bytes.fromhex(nonce or request["nonce"])
        quote = self.tpm.quote(self.ak, quoted, BANKS)
        return verify_through_queue(asset_id, quote, bytes.fromhex(request["nonce"]))[1]

    def domain(self, name: str) -> Any:
        connection = libvirt.open(self.daemon.uri)
        try:
            return connection.lookupByName(name)
        except libvirt.libvirtError:
            return None
        finally:
            connection.close()


@pytest.fixture
def vm_world(
    runtime_world: McpImages, tpm_simulator: SoftwareTpm, libvirt_daemon: LibvirtDaemon
) -> VmWorld:
    return VmWorld(runtime_world, tpm_simulator, libvirt_daemon)


def the_request(requests: list[dict[str, Any]]) -> dict[str, Any]:
    found: list[dict[str, Any]] = poll(lambda: list(requests), 20, "an evidence request")
    assert len(found) == 1, found
    return found[0]


def test_a_vm_runs_only_once_its_quote_verifies_shows_its_posture_and_a_quarantine_stops_it(
    vm_world: VmWorld, evidence_requests: list[dict[str, Any]]
) -> None:
    job = vm_world.launch()
    request = the_request(evidence_requests)
    with session_scope() as session:
        instance = session.scalar(
            select(RuntimeInstance).where(RuntimeInstance.launch_job_id == job.id)
        )
        assert instance is not None
        instance_id = instance.id
        # Asked, not yet answered: the VM runs, the instance is not serving.
        assert instance.state == "starting"
        assert instance.handle["nonce"] == request["nonce"]
        vm_asset = session.get(TrustAsset, uuid.UUID(request["asset_id"]))
        assert vm_asset is not None and vm_asset.state == "pending_attestation"
        assert (vm_asset.name, vm_asset.kind, vm_asset.asset_class) == (
            f"drydock-rt-{instance_id}",
            "vm",
            "mcp-vm",
        )
    domain = vm_world.domain(f"drydock-rt-{instance_id}")
    assert domain is not None and domain.state()[0] == libvirt.VIR_DOMAIN_RUNNING
    assert domain.UUIDString() == str(instance_id)
    xml = domain.XMLDesc()
    assert "<tpm model='tpm-crb'>" in xml and vm_world.digest in xml
    time.sleep(1)
    assert instance_of(job).state == "starting"

    assert vm_world.answer(request) == "trusted"
    done = wait_for_job(job.id, timeout=30)
    assert done.status == "succeeded", done.error
    running = instance_of(done)
    assert running.state == "running", running.reason
    assert running.health is not None and "trusted" in running.health["detail"]

    api = TestClient(app)
    acme = bearer(make_token("acme-ops", "runtime.*", tenant=TENANT))
    posture = api.get("/v1/servers/vault/vm", headers=acme)
    assert posture.status_code == 200, posture.text
    (vm,) = posture.json()["vms"]
    assert vm["instance_id"] == str(instance_id) and vm["state"] == "running"
    assert vm["vm"]["state"] == "trusted" and vm["host"]["state"] == "trusted"
    assert vm["last_verdict"]["verified"] and vm["last_verdict"]["answers_request"]
    other = bearer(make_token("globex-ops", "runtime.*", tenant="globex"))
    assert api.get("/v1/servers/vault/vm", headers=other).status_code == 404
    shown = drydock("runtime", "vm", "vault", "--tenant", TENANT)
    assert shown.returncode == 0, shown.stderr
    assert f"vm {TENANT}/drydock-rt-{instance_id}: trusted" in shown.stdout
    assert "evidence: tpm verified" in shown.stdout

    # The VM quarantined by an operator: the sweep (as Beat runs it) stops the instance.
    move_by_operator(uuid.UUID(request["asset_id"]), TrustState.QUARANTINED,
                     reason="suspicious", actor="operator:test", expected_version=None)  # fmt: skip
    sweep = wait_for_job(enqueue("runtime.enforce_trust", {}).id, timeout=30)
    assert sweep.status == "succeeded", sweep.error
    assert sweep.result["stopped"] == [
        {"instance_id": str(instance_id), "asset": f"{TENANT}/drydock-rt-{instance_id}"}
    ]
    assert history(instance_id)[-2:] == [
        ("running", "draining", "quarantined"),
        ("draining", "stopped", "stopped"),
    ]
    assert vm_world.domain(f"drydock-rt-{instance_id}") is None
    # Nothing left to stop: the next sweep stops nothing.
    again = wait_for_job(enqueue("runtime.enforce_trust", {}).id, timeout=30)
    assert again.result["stopped"] == []


def test_a_vm_whose_quote_fails_is_quarantined_and_its_launch_fails(
    vm_world: VmWorld, evidence_requests: list[dict[str, Any]]
) -> None:
    job = vm_world.launch()
    request = the_request(evidence_requests)
    # A quote of another nonce (a replayed or forged answer): the verdict fails.
    assert vm_world.answer(request, nonce="ab" * 16) == "quarantined"
    done = wait_for_job(job.id, timeout=30)
    assert done.status == "dead_lettered"
    failed = instance_of(done)
    assert failed.state == "failed"
    assert "was quarantined" in failed.reason
    assert ("starting", "failed", "probe_failed") in history(failed.id)
    assert vm_world.domain(f"drydock-rt-{failed.id}") is None

"""``/v1/trust`` over HTTP: assets, history and posture with tenant scoping, and operator moves
with optimistic concurrency (If-Match on the asset's version, 412 when it moved)."""

from __future__ import annotations

import uuid
from collections.abc import Iterator

import pytest
from fastapi.testclient import TestClient

from tests.conftest import WorkerProcess, wait_for_job
from tests.test_api import bearer, make_token
from tests.test_trust_registry import move_to, new_asset, posture, set_class

pytestmark = pytest.mark.fleet


@pytest.fixture
def api(fleet: WorkerProcess) -> Iterator[TestClient]:
    from drydock.api import app

    with TestClient(app) as client:
        yield client


def tenant_token(name: str, tenant: str, *scopes: str) -> str:
    return make_token(name, *scopes, tenant=tenant)


def test_assets_are_listed_and_read_within_the_tokens_tenant(api: TestClient) -> None:
    from models.trust import AssetKind, TrustState

    vm = new_asset("vm-1", tenant="acme")
    new_asset("gpu-1", tenant="acme", kind=AssetKind.ACCELERATOR)
    other = new_asset("vm-9", tenant="globex")
    move_to(vm, TrustState.PENDING_ATTESTATION)
    operator = bearer(make_token("ops", "trust.read"))
    acme = bearer(tenant_token("acme-reader", "acme", "trust.read"))

    listed = api.get("/v1/trust/assets", headers=operator)
    assert listed.status_code == 200, listed.text
    assert [(a["tenant"], a["name"]) for a in listed.json()] == [
        ("acme", "gpu-1"),
        ("acme", "vm-1"),
        ("globex", "vm-9"),
    ]
    pending = api.get("/v1/trust/assets?state=pending_attestation", headers=operator).json()
    assert [a["name"] for a in pending] == ["vm-1"]
    page = api.get("/v1/trust/assets?limit=1&offset=1", headers=operator).json()
    assert [a["name"] for a in page] == ["vm-1"]

    own = api.get("/v1/trust/assets", headers=acme).json()
    assert {a["tenant"] for a in own} == {"acme"} and len(own) == 2
    # Another tenant's asset is not there at all, and naming that tenant is refused.
    assert api.get(f"/v1/trust/assets/{other}", headers=acme).status_code == 404
    assert api.get(f"/v1/trust/assets/{other}/history", headers=acme).status_code == 404
    assert api.get("/v1/trust/assets?tenant=globex", headers=acme).status_code == 403

    one = api.get(f"/v1/trust/assets/{vm}", headers=acme)
    assert one.status_code == 200
    assert one.json()["state"] == "pending_attestation"
    assert one.headers["ETag"] == f'"{one.json()["version"]}"'
    history = api.get(f"/v1/trust/assets/{vm}/history", headers=acme).json()
    assert [(h["from_state"], h["to_state"]) for h in history] == [
        (None, "unknown"),
        ("unknown", "pending_attestation"),
    ]
    assert [h["seq"] for h in history] == sorted(h["seq"] for h in history)


def test_reading_needs_the_trust_read_scope(api: TestClient) -> None:
    vm = new_asset()
    jobs_only = bearer(make_token("jobs", "builds.*"))
    for path in ("", f"/{vm}", f"/{vm}/history", f"/{vm}/posture"):
        response = api.get(f"/v1/trust/assets{path}", headers=jobs_only)
        assert response.status_code == 403, path
        assert "trust.read" in response.json()["detail"]
    assert api.get(f"/v1/trust/assets/{vm}").status_code == 401
    assert (
        api.get("/v1/trust/assets/not-a-uuid", headers=bearer(make_token("r", "*"))).status_code
        == 422
    )


def test_a_move_applies_only_to_the_version_it_was_decided_on(api: TestClient) -> None:
    from models.trust import TrustState

    vm = new_asset()
    move_to(vm, TrustState.PENDING_ATTESTATION, TrustState.TRUSTED)
    ops = bearer(make_token("ops", "trust.read", "trust.transition"))
    read = api.get(f"/v1/trust/assets/{vm}", headers=ops)
    etag = read.headers["ETag"]

    # Meanwhile the asset moves (its evidence went stale): the operator's read is out of date.
    move_to(vm, TrustState.STALE)
    late = api.post(
        f"/v1/trust/assets/{vm}/transitions",
        json={"to_state": "quarantined", "reason": "suspicious"},
        headers={**ops, "If-Match": etag},
    )
    assert late.status_code == 412, late.text
    current = api.get(f"/v1/trust/assets/{vm}", headers=ops)
    assert late.headers["ETag"] == current.headers["ETag"] != etag
    assert late.json()["version"] == current.json()["version"]
    assert current.json()["state"] == "stale"  # nothing was written

    moved = api.post(
        f"/v1/trust/assets/{vm}/transitions",
        json={"to_state": "quarantined", "reason": "suspicious"},
        headers={**ops, "If-Match": current.headers["ETag"]},
    )
    assert moved.status_code == 200, moved.text
    body = moved.json()
    assert body["asset"]["state"] == "quarantined"
    assert moved.headers["ETag"] == f'"{body["asset"]["version"]}"'
    [transition] = body["transitions"]
    assert (transition["from_state"], transition["to_state"]) == ("stale", "quarantined")
    assert (transition["cause"], transition["detail"]) == ("operator_quarantine", "suspicious")
    assert transition["actor"] == "api:ops"

    # Replaying the same request (same If-Match) does not move it twice.
    again = api.post(
        f"/v1/trust/assets/{vm}/transitions",
        json={"to_state": "quarantined", "reason": "suspicious"},
        headers={**ops, "If-Match": current.headers["ETag"]},
    )
    assert again.status_code == 412
    history = api.get(f"/v1/trust/assets/{vm}/history", headers=ops).json()
    assert [h["to_state"] for h in history].count("quarantined") == 1


def test_a_move_needs_if_match_and_an_operators_edge(api: TestClient) -> None:
    from models.trust import TrustState

    vm = new_asset()
    ops = bearer(make_token("ops", "trust.read", "trust.transition"))
    reader = bearer(make_token("reader", "trust.read"))
    path = f"/v1/trust/assets/{vm}/transitions"
    quarantine = {"to_state": "quarantined"}

    assert api.post(path, json=quarantine, headers=reader).status_code == 403
    missing = api.post(path, json=quarantine, headers=ops)
    assert missing.status_code == 428 and "If-Match" in missing.json()["detail"]
    weak = api.post(path, json=quarantine, headers={**ops, "If-Match": 'W/"1"'})
    assert weak.status_code == 422
    assert weak.json()["detail"][0]["loc"] == ["header", "If-Match"]

    # Releasing a quarantine by hand is not an operator's move: remediation decides it.
    release = api.post(path, json={"to_state": "remediating"}, headers={**ops, "If-Match": "*"})
    assert release.status_code == 422
    assert release.json()["detail"][0]["loc"] == ["body", "to_state"]
    assert "quarantined" in release.json()["detail"][0]["msg"]
    # unknown -> quarantined is no edge of the lifecycle: 409 naming what is allowed.
    illegal = api.post(path, json=quarantine, headers={**ops, "If-Match": "*"})
    assert illegal.status_code == 409 and "pending_attestation" in illegal.json()["detail"]

    move_to(vm, TrustState.PENDING_ATTESTATION, TrustState.TRUSTED)
    reattest = api.post(
        path, json={"to_state": "pending_attestation"}, headers={**ops, "If-Match": "*"}
    )
    assert reattest.status_code == 200
    assert reattest.json()["transitions"][0]["cause"] == "operator_reattest"

    other = new_asset("vm-x", tenant="globex")
    acme_ops = bearer(tenant_token("acme-ops", "acme", "trust.transition"))
    hidden = api.post(
        f"/v1/trust/assets/{other}/transitions",
        json=quarantine,
        headers={**acme_ops, "If-Match": "*"},
    )
    assert hidden.status_code == 404


def test_posture_shows_the_newest_verdict_with_every_check(api: TestClient) -> None:
    from models.trust import AssetKind

    set_class("tier-cc", accelerator_min_driver="550.54", accelerator_require_cc=True)
    gpu = new_asset("gpu-1", kind=AssetKind.ACCELERATOR, asset_class="tier-cc")
    vm = new_asset("vm-1")
    ops = bearer(make_token("ops", "*"))

    fresh = api.get(f"/v1/trust/assets/{vm}/posture", headers=ops)
    assert fresh.status_code == 200
    assert fresh.json()["verdict"] is None and fresh.json()["asset"]["state"] == "unknown"

    sent = api.post(
        "/v1/jobs/attestation.ingest_accelerator_posture",
        json={"asset_id": str(gpu), "posture": posture(cc_mode="devtools")},
        headers=ops,
    )
    assert sent.status_code == 202, sent.text
    assert wait_for_job(uuid.UUID(sent.json()["id"])).status == "succeeded"

    body = api.get(f"/v1/trust/assets/{gpu}/posture", headers=ops).json()
    assert body["asset"]["state"] == "quarantined"
    assert body["accelerator"]["cc_mode"] == "devtools"
    verdict = body["verdict"]
    assert verdict["verified"] is False
    failed = [c["name"] for c in verdict["checks"] if c["outcome"] == "fail"]
    assert failed, verdict["checks"]
    assert any("cc" in name for name in failed), failed


def test_operators_move_assets_from_the_cli_on_the_version_they_saw(clean_state: None) -> None:
    from typer.testing import CliRunner

    from drydock.cli import app as cli_app
    from models.db import session_scope
    from models.trust import TrustAsset, TrustState

    vm = new_asset("vm-7")
    move_to(vm, TrustState.PENDING_ATTESTATION, TrustState.TRUSTED)
    runner = CliRunner()
    stale = runner.invoke(
        cli_app, ["trust", "move", "acme/vm-7", "--to", "quarantined", "--if-version", "1"]
    )
    assert stale.exit_code != 0
    assert "not 1" in str(stale.exception) or "not 1" in stale.output
    with session_scope() as session:
        asset = session.get(TrustAsset, vm)
        assert asset is not None and asset.state == "trusted"
        version = asset.version
    moved = runner.invoke(
        cli_app,
        ["trust", "move", "acme/vm-7", "--to", "quarantined", "--reason", "leak",
         "--if-version", str(version)],
    )  # fmt: skip
    assert moved.exit_code == 0, moved.output
    assert "acme/vm-7 trusted -> quarantined (operator_quarantine: leak)" in moved.output
    refused = runner.invoke(cli_app, ["trust", "move", "acme/vm-7", "--to", "trusted"])
    assert refused.exit_code != 0

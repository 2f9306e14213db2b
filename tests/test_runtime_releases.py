"""Promotions through checkpoints, rollouts that shift or roll back by themselves, and the
release history, against the real Docker engine and registry of the runtime world."""

from __future__ import annotations

import uuid
from datetime import UTC, datetime
from typing import Any

from fastapi.testclient import TestClient
from sqlalchemy import func, select

from catalog.runtime import RolloutPayload
from dispatch.enqueue import enqueue
from drydock.api import app
from kernel.context import JobContext, WorkerIdentity
from models.anomaly import CapabilityScore
from models.db import session_scope
from models.runtime import InstanceState, RuntimeInstance, RuntimeRelease
from models.runtime_releases import ReleaseChange, RuntimeRollout
from models.stream import StreamEvent
from models.trust import TrustAsset, TrustState
from models.trust_actions import move_by_operator
from tasks.runtime import promotions, rollouts, servers
from tasks.runtime.server_catalog import catalog_page
from tests.conftest import wait_for_job
from tests.runtime_world import TENANT, McpImages, certify, history, launch, seed_ledger
from tests.test_api import bearer, make_token
from tests.test_cli import drydock
from tests.test_evaluation import put_tier


def gates(result: dict[str, Any]) -> dict[str, bool]:
    return {c["gate"]: c["passed"] for c in result["checkpoints"]}


def promote(images: McpImages, tier: str, **extra: Any) -> dict[str, Any]:
    return promotions.promote(
        tenant=TENANT, server="echo", digest=images.good, tier=tier, actor="test", **extra
    )


def test_a_promotion_walks_every_checkpoint_and_records_each_reason(
    runtime_world: McpImages,
) -> None:
    put_tier("production", "true")
    promotions.put_rules("production", anomaly_threshold=3.0, protected=True,
                         analysis_seconds=5, actor="test")  # fmt: skip

    # Not certified there and no approval token: refused, both named, the others walked too.
    refused = promote(runtime_world, "production")
    assert refused["outcome"] == "refused"
    assert gates(refused) == {"certification": False, "host_trust": True,
                              "anomaly_score": True, "approval": False}  # fmt: skip
    assert "never evaluated at tier production" in refused["detail"]
    assert refused["release"] is None

    # Certified, but a token for another digest approves nothing here.
    certify(runtime_world.good, "production", runtime_world, evaluated_at=datetime.now(UTC))
    other = promotions.approve(tenant=TENANT, server="echo", digest=runtime_world.broken,
                               tier="production", approver="operator:alice")  # fmt: skip
    wrong = promote(runtime_world, "production", approval_token=other.token)
    assert gates(wrong)["approval"] is False and gates(wrong)["certification"] is True

    # An anomaly score over the tier's threshold refuses it whatever the token.
    token = promotions.approve(tenant=TENANT, server="echo", digest=runtime_world.good,
                               tier="production", approver="operator:alice").token  # fmt: skip
    now = datetime.now(UTC)
    with session_scope() as session:
        score = CapabilityScore(repository="file:///srv/echo-mcp.git", metric="build_latency",
                                value=4.2, flagged=True, detail={}, window_start=now,
                                computed_at=now)  # fmt: skip
        session.add(score)
    anomalous = promote(runtime_world, "production", approval_token=token)
    assert gates(anomalous) == {"certification": True, "host_trust": True,
                                "anomaly_score": False, "approval": True}  # fmt: skip
    assert "build_latency 4.2 over tier production's threshold 3" in anomalous["detail"]
    with session_scope() as session:
        session.query(CapabilityScore).delete()

    # Over HTTP: promoted, 201, and the release exists at the tier.
    api = TestClient(app)
    ops = bearer(make_token("acme-release", "runtime.promote", "runtime.read", tenant=TENANT))
    body = {"digest": runtime_world.good, "tier": "production", "approval_token": token}
    response = api.post("/v1/servers/echo/promotions", json=body, headers=ops)
    assert response.status_code == 201, response.text
    promoted = response.json()
    assert promoted["outcome"] == "promoted" and all(gates(promoted).values())
    assert promoted["release"]["tier"] == "production"
    assert promoted["checkpoints"][3]["reason"].startswith("approved by operator:alice")
    refused_http = api.post("/v1/servers/echo/promotions",
                            json={"digest": runtime_world.good, "tier": "production"},
                            headers=ops)  # fmt: skip
    assert refused_http.status_code == 409 and refused_http.json()["outcome"] == "refused"
    reader = bearer(make_token("acme-reader", "runtime.read", tenant=TENANT))
    assert api.post("/v1/servers/echo/promotions", json=body, headers=reader).status_code == 403

    # Every attempt is one history row, newest first, announced on the stream.
    page = api.get("/v1/servers/echo/history?kind=promotion", headers=reader).json()
    assert [c["outcome"] for c in page["items"]] == [
        "refused",
        "promoted",
        "refused",
        "refused",
        "refused",
    ]
    with session_scope() as session:
        announced = session.scalar(
            select(func.count()).select_from(StreamEvent)
            .where(StreamEvent.kind == "runtime.release")
        )  # fmt: skip
    assert announced == 5
    shown = drydock("releases", "history", "echo", "--tenant", TENANT, "--kind", "promotion")
    assert shown.returncode == 0, shown.stderr
    assert (
        "promotion promoted" in shown.stdout and "✗ certification: never evaluated" in shown.stdout
    )
    cli = drydock("releases", "promote", "echo", runtime_world.good, "--to", "production",
                  "--tenant", TENANT)  # fmt: skip
    assert cli.returncode == 1
    assert (
        "✓ certification" in cli.stdout and "✗ approval: tier production is protected" in cli.stdout
    )

    # The host quarantined: no trusted place to run it.
    with session_scope() as session:
        host_id = session.scalars(
            select(TrustAsset.id).where(TrustAsset.name == "docker-host-1")
        ).one()
    move_by_operator(host_id, TrustState.QUARANTINED, reason="test", actor="operator:test",
                     expected_version=None)  # fmt: skip
    untrusted = promote(runtime_world, "production", approval_token=token)
    assert gates(untrusted)["host_trust"] is False
    assert "docker-1 (quarantined)" in untrusted["detail"]


def release_at_standard(images: McpImages, digest: str) -> None:
    seed_ledger(digest)
    certify(digest, "standard", images, evaluated_at=datetime.now(UTC))
    servers.add_release(tenant=TENANT, server="echo", digest=digest, tier="standard", actor="t")


def rollout(digest: str, analysis_seconds: float) -> Any:
    job = enqueue(
        "runtime.rollout",
        {"tenant": TENANT, "server": "echo", "digest": digest, "tier": "standard",
         "analysis_seconds": analysis_seconds},
    )  # fmt: skip
    return wait_for_job(job.id, timeout=90)


def changes() -> list[tuple[str, str, str]]:
    with session_scope() as session:
        return [
            (c.kind, c.outcome, c.digest)
            for c in session.scalars(select(ReleaseChange).order_by(ReleaseChange.id))
        ]


def state_of(instance_id: str | uuid.UUID) -> str:
    with session_scope() as session:
        instance = session.get(RuntimeInstance, uuid.UUID(str(instance_id)))
        assert instance is not None
        return instance.state


def test_a_rollout_of_a_healthy_release_shifts_to_it_and_drains_the_old(
    runtime_world: McpImages,
) -> None:
    old = launch(runtime_world.good)
    assert old.status == "succeeded", old.error
    release_at_standard(runtime_world, runtime_world.v2)

    job = rollout(runtime_world.v2, analysis_seconds=2)
    assert job.status == "succeeded", job.error
    result = job.result
    assert result["state"] == "succeeded" and result["from_digest"] == runtime_world.good
    assert state_of(result["to_instance_id"]) == InstanceState.RUNNING.value
    assert state_of(old.result["instance_id"]) == InstanceState.STOPPED.value
    assert history(uuid.UUID(old.result["instance_id"]))[-2:] == [
        ("running", "draining", "rolled_out"),
        ("draining", "stopped", "stopped"),
    ]
    assert changes() == [("rollout", "started", runtime_world.v2),
                         ("rollout", "succeeded", runtime_world.v2)]  # fmt: skip
    standard = catalog_page(tenant=TENANT)["items"][0]["tiers"]["standard"]
    assert standard["digest"] == runtime_world.v2
    assert standard["instance"]["state"] == "running"


def test_a_rollout_whose_server_dies_in_the_analysis_window_rolls_back_once(
    runtime_world: McpImages,
) -> None:
    old = launch(runtime_world.good)
    assert old.status == "succeeded", old.error
    release_at_standard(runtime_world, runtime_world.dying)

    job = rollout(runtime_world.dying, analysis_seconds=20)
    assert job.status == "succeeded", job.error
    result = job.result
    assert result["state"] == "rolled_back", result
    # The old instance served throughout; the new one passed its launch probe, then died.
    assert state_of(old.result["instance_id"]) == InstanceState.RUNNING.value
    new_moves = history(uuid.UUID(result["to_instance_id"]))
    assert ("starting", "running", "probe_passed") in new_moves
    assert new_moves[-1][1] == "stopped"
    assert changes() == [("rollout", "started", runtime_world.dying),
                         ("rollback", "rolled_back", runtime_world.dying)]  # fmt: skip
    with session_scope() as session:
        rollback = session.scalars(
            select(ReleaseChange).where(ReleaseChange.kind == "rollback")
        ).one()
        assert rollback.from_digest == runtime_world.good
        assert rollback.checkpoints[0]["gate"] == "probe_analysis"
        assert "during the analysis" in rollback.checkpoints[0]["reason"]
        dying = session.scalars(
            select(RuntimeRelease).where(RuntimeRelease.digest == runtime_world.dying)
        ).one()
        assert dying.rolled_back_at is not None
    # The catalog shows the release before it again, though the rolled-back one is newer.
    standard = catalog_page(tenant=TENANT)["items"][0]["tiers"]["standard"]
    assert standard["digest"] == runtime_world.good
    assert standard["instance"]["state"] == "running"

    # A redelivery of the same job changes nothing: one rollback, ever.
    payload = RolloutPayload(tenant=TENANT, server="echo", digest=runtime_world.dying,
                             tier="standard", analysis_seconds=20)  # fmt: skip
    again = rollouts.rollout(payload, JobContext(job.id, 2, WorkerIdentity("test", 1, "runtime")))
    assert again == result
    assert len([c for c in changes() if c[0] == "rollback"]) == 1


def test_a_rollout_whose_release_fails_its_launch_probe_rolls_back(
    runtime_world: McpImages,
) -> None:
    old = launch(runtime_world.good)
    assert old.status == "succeeded", old.error

    shown = drydock("releases", "rollout", "echo", runtime_world.broken, "--tier", "standard",
                    "--tenant", TENANT, "--analysis-seconds", "1", "--wait")  # fmt: skip
    assert shown.returncode == 1, shown.stderr
    assert f"of {runtime_world.broken} from {runtime_world.good}: rolled_back" in shown.stdout
    assert state_of(old.result["instance_id"]) == InstanceState.RUNNING.value
    with session_scope() as session:
        rollout_row = session.scalars(select(RuntimeRollout)).one()
        assert rollout_row.state == "rolled_back"
        assert rollout_row.to_instance_id is not None
        assert session.get(RuntimeInstance, rollout_row.to_instance_id).state == "failed"  # type: ignore[union-attr]
    listed = drydock("releases", "history", "echo", "--tenant", TENANT)
    assert listed.returncode == 0, listed.stderr
    assert "rollback rolled_back" in listed.stdout
    assert "✗ probe_analysis: its launch failed: probe failed" in listed.stdout

"""``GET /v1/stream`` served by a real uvicorn over TCP, read by an SSE client that disconnects
and comes back with ``Last-Event-ID``: every event once, in order, none lost while it was away.
"""

from __future__ import annotations

import json
import threading
import time
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

import httpx
import pytest

from tests.conftest import WorkerProcess
from tests.test_api import bearer, make_token
from tests.test_api_trust import tenant_token
from tests.test_trust_registry import move_to, new_asset

pytestmark = pytest.mark.fleet


@dataclass(frozen=True)
class Event:
    id: int
    kind: str
    body: dict[str, Any]


class StreamReader:
    """An SSE client on one connection: reads events as they come, and can hang up."""

    def __init__(self, url: str, headers: dict[str, str], params: dict[str, Any]) -> None:
        self._client = httpx.Client(timeout=httpx.Timeout(5, read=30))
        self._response = self._client.send(
            self._client.build_request("GET", f"{url}/v1/stream", headers=headers, params=params),
            stream=True,
        )
        self.status_code = self._response.status_code
        self._lines = self._response.iter_lines()

    def take(self, count: int) -> list[Event]:
        events: list[Event] = []
        fields: dict[str, str] = {}
        while len(events) < count:
            line = next(self._lines)
            if line == "":
                if "data" in fields:
                    events.append(
                        Event(int(fields["id"]), fields["event"], json.loads(fields["data"]))
                    )
                fields = {}
            elif not line.startswith(":"):
                name, _, value = line.partition(":")
                fields[name] = value.removeprefix(" ")
        return events

    def close(self) -> None:
        self._response.close()
        self._client.close()


@pytest.fixture
def open_stream(api_url: str) -> Iterator[Any]:
    readers: list[StreamReader] = []

    def open_(headers: dict[str, str], **params: Any) -> StreamReader:
        reader = StreamReader(api_url, headers, params)
        readers.append(reader)
        return reader

    yield open_
    for reader in readers:
        reader.close()


def register(count: int, tenant: str = "acme") -> list[uuid.UUID]:
    return [new_asset(f"vm-{uuid.uuid4().hex[:8]}", tenant=tenant) for _ in range(count)]


def stored_ids() -> list[int]:
    from sqlalchemy import select

    from models.db import session_scope
    from models.stream import StreamEvent

    with session_scope() as session:
        return list(session.scalars(select(StreamEvent.id).order_by(StreamEvent.id)))


def test_a_client_that_disconnects_resumes_without_a_gap_or_a_repeat(
    fleet: WorkerProcess, open_stream: Any
) -> None:
    from models.trust import TrustState

    ops = bearer(make_token("ops", "trust.read", "policy.decide"))
    first = register(5)
    reader = open_stream(ops, last_event_id=0)
    assert reader.status_code == 200
    seen = reader.take(3)
    assert [e.kind for e in seen] == ["trust.transition"] * 3
    assert [e.body["data"]["asset_id"] for e in seen] == [str(a) for a in first[:3]]
    reader.close()  # the client goes away

    # While it is away: more registrations, and moves of one asset.
    later = register(3)
    move_to(first[0], TrustState.PENDING_ATTESTATION, TrustState.TRUSTED)

    resumed = open_stream({**ops, "Last-Event-ID": str(seen[-1].id)})
    rest = resumed.take(7)
    everything = seen + rest
    ids = [e.id for e in everything]
    assert ids == sorted(set(ids)), "an event was repeated or came out of order"
    assert ids == stored_ids(), "an event recorded while the client was away is missing"
    assert [e.body["data"]["asset_id"] for e in rest[:5]] == [str(a) for a in first[3:] + later]
    assert [e.body["data"]["to_state"] for e in rest[5:]] == ["pending_attestation", "trusted"]

    # And it stays live: what happens next arrives on the resumed connection.
    [live_asset] = register(1)
    [live] = resumed.take(1)
    assert live.id > ids[-1] and live.body["data"]["asset_id"] == str(live_asset)


def test_event_ids_follow_commit_order(fleet: WorkerProcess, open_stream: Any) -> None:
    """An id is taken when its transaction commits, not when it writes: a transaction that
    staged its event first but commits last gets the larger id, so a reader past an id never
    finds a smaller one appear behind it."""
    from models import stream
    from models.db import session_scope

    ops = bearer(make_token("ops", "trust.read", "policy.decide"))
    reader = open_stream(ops)
    slow_staged = threading.Event()

    def slow_writer() -> None:
        with session_scope() as session:
            stream.stage(session, stream.StreamEventKind.TRUST_TRANSITION, "acme", {"n": "slow"})
            slow_staged.set()
            time.sleep(1.5)  # still open while the fast one commits

    thread = threading.Thread(target=slow_writer)
    thread.start()
    slow_staged.wait(5)
    with session_scope() as session:
        stream.stage(session, stream.StreamEventKind.TRUST_TRANSITION, "acme", {"n": "fast"})
    thread.join()
    fast, slow = reader.take(2)
    assert (fast.body["data"], slow.body["data"]) == ({"n": "fast"}, {"n": "slow"})
    assert fast.id < slow.id


def test_a_rolled_back_transaction_leaves_no_event(fleet: WorkerProcess) -> None:
    from models import stream
    from models.db import session_scope

    with pytest.raises(RuntimeError), session_scope() as session:
        stream.stage(session, stream.StreamEventKind.TRUST_TRANSITION, "acme", {"n": 1})
        raise RuntimeError("the work failed")
    with session_scope() as session:
        stream.stage(session, stream.StreamEventKind.TRUST_TRANSITION, "acme", {"n": 2})
    with session_scope() as session:
        rows = stream.events_after(
            session, 0, stream.StreamFilter(kinds=list(stream.StreamEventKind))
        )
        assert [row.data for row in rows] == [{"n": 2}]


def test_each_token_sees_its_tenant_and_the_kinds_its_scopes_read(
    fleet: WorkerProcess, open_stream: Any
) -> None:
    from models.db import session_scope
    from models.policy import PlacementRequest
    from policy.placement import decide_placement

    acme = bearer(tenant_token("acme-trust", "acme", "trust.read"))
    operator = bearer(make_token("ops", "trust.read", "policy.decide"))
    acme_reader = open_stream(acme, last_event_id=0)
    operator_reader = open_stream(operator, last_event_id=0, kind="policy.decision")

    register(1, tenant="globex")
    [mine] = register(1, tenant="acme")
    with session_scope() as session:
        decision = decide_placement(
            session,
            PlacementRequest(
                digest="sha256:" + "0" * 64, tier="gold", asset=str(mine), tenant="acme"
            ),
            actor="test",
        )
        decision_id = decision.id

    [event] = acme_reader.take(1)
    assert event.kind == "trust.transition" and event.body["tenant"] == "acme"
    assert event.body["data"]["asset_id"] == str(mine)
    [decided] = operator_reader.take(1)
    assert decided.kind == "policy.decision" and decided.body["data"]["id"] == decision_id
    assert decided.body["data"]["allowed"] is False


def test_remediation_updates_are_streamed_with_the_runs_state(
    fleet: WorkerProcess, open_stream: Any
) -> None:
    from models.trust import TrustState
    from tasks.remediation import playbook_store, requests
    from tasks.remediation.playbooks import PlaybookDefinition

    vm = new_asset("vm-r")
    move_to(vm, TrustState.PENDING_ATTESTATION, TrustState.QUARANTINED)
    ops = bearer(make_token("ops", "remediation.run_playbook"))
    reader = open_stream(ops)
    definition = PlaybookDefinition(
        name="reimage",
        executor="shell",
        spec={"steps": [{"name": "noop", "run": "true"}]},
        timeout_seconds=5,
        requires_approval=True,
    )
    playbook_store.create_playbook(definition, tenant="acme", actor="test")
    outcome = requests.request_run(
        tenant="acme", asset=str(vm), playbook="reimage", reason="why", requested_by="test"
    )
    requests.reject_run(outcome.run_id, tenant="acme", actor="ops", reason="not now")
    requested, rejected = reader.take(2)
    assert {requested.kind, rejected.kind} == {"remediation.update"}
    assert requested.body["data"]["run_id"] == str(outcome.run_id)
    assert (requested.body["data"]["action"], requested.body["data"]["state"]) == (
        "requested",
        "pending_approval",
    )
    # Each update carries the state its decision left the run in.
    assert (rejected.body["data"]["action"], rejected.body["data"]["state"]) == (
        "rejected",
        "cancelled",
    )
    assert rejected.body["data"]["reason"] == "not now"


def test_refusals_are_clear_and_come_before_any_event(api_url: str, fleet: WorkerProcess) -> None:
    trust_only = bearer(make_token("trust-only", "trust.read"))
    nothing = bearer(make_token("jobs", "builds.*"))
    acme = bearer(tenant_token("acme-trust", "acme", "trust.read"))
    with httpx.Client(base_url=api_url, timeout=10) as client:
        assert client.get("/v1/stream").status_code == 401
        denied = client.get("/v1/stream", params={"kind": "policy.decision"}, headers=trust_only)
        assert denied.status_code == 403 and "policy.decide" in denied.json()["detail"]
        assert client.get("/v1/stream", headers=nothing).status_code == 403
        other = client.get("/v1/stream", params={"tenant": "globex"}, headers=acme)
        assert other.status_code == 403
        bad = client.get("/v1/stream", headers={**trust_only, "Last-Event-ID": "yesterday"})
        assert bad.status_code == 422
        assert bad.json()["detail"][0]["loc"] == ["header", "Last-Event-ID"]
        huge = client.get("/v1/stream", params={"last_event_id": "9" * 19}, headers=trust_only)
        assert huge.status_code == 422
        unknown = client.get("/v1/stream", params={"kind": "gossip"}, headers=trust_only)
        assert unknown.status_code == 422


def test_a_revoked_token_ends_its_stream(
    fleet: WorkerProcess, open_stream: Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    from drydock.api import stream as stream_api
    from models import tokens
    from models.db import session_scope

    monkeypatch.setattr(stream_api, "TOKEN_RECHECK_SECONDS", 0.2)
    reader = open_stream(bearer(make_token("short-lived", "trust.read")))
    with session_scope() as session:
        assert tokens.revoke_token(session, "short-lived")
    time.sleep(1)  # past the next check
    register(1)
    with pytest.raises(StopIteration):
        reader.take(1)  # the stream ends: no event reaches a revoked token

"""The ``libvirt`` executor, called in-process against libvirt's built-in ``test:///default``
driver: a real libvirt connection to a fake hypervisor.

That driver keeps its state per process and shares it between all connections of the process,
so each test defines a domain of its own through a connection of its own, runs the executor
(which opens its own connection), and observes the result through the test's connection: the
domain's state and reason, and the lifecycle events libvirt emits. Each domain is removed
afterwards (other tests of this process list the driver's domains).

What the driver really does, and so what is asserted: ``reboot`` restarts the domain in place,
emitting no event (no lifecycle event and no reboot event), and leaves it running with reason
``booted``, so a domain that was running for another reason (``unpaused``) shows the reboot;
with ``<on_reboot>destroy</on_reboot>`` it stops instead. ``shutdown``, ``destroy``, ``start``
and ``revert_snapshot`` change state at once and emit lifecycle events. ``reset`` changes
nothing visible (the virtual machine stays running) but is refused on a stopped domain.
"""

from __future__ import annotations

import threading
import time
import uuid
from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import Any

import pytest
from pydantic import ValidationError

from tasks.remediation.executors.base import (
    ExecutorUnavailableError,
    RunContext,
    StepResult,
    Target,
)
from tasks.remediation.executors.libvirt import LibvirtExecutor, LibvirtSpec

URI = "test:///default"


@dataclass
class Observer:
    """The test's own connection, recording every lifecycle and reboot event it is sent."""

    conn: Any
    events: list[tuple[str, str, str]] = field(default_factory=list)

    def events_of(self, name: str) -> list[tuple[str, str]]:
        return [(event, detail) for domain, event, detail in self.events if domain == name]


# virDomainEventType and the details this file meets (libvirt-domain.h).
EVENTS = {0: "defined", 1: "undefined", 2: "started", 3: "suspended", 4: "resumed", 5: "stopped"}
DETAILS = {
    "started": {0: "booted", 3: "from_snapshot"},
    "suspended": {0: "paused"},
    "resumed": {0: "unpaused"},
    "stopped": {0: "shutdown", 1: "destroyed"},
}


@pytest.fixture(scope="module")
def observer() -> Iterator[Observer]:
    import libvirt

    # Events need an event loop: libvirt's default one, run on a thread for this module. The
    # timer wakes it up regularly so that it notices when to stop.
    libvirt.virEventRegisterDefaultImpl()
    stop = threading.Event()
    timer = libvirt.virEventAddTimeout(100, lambda timer, opaque: None, None)

    def loop() -> None:
        while not stop.is_set():
            libvirt.virEventRunDefaultImpl()

    thread = threading.Thread(target=loop, name="libvirt-events", daemon=True)
    thread.start()
    conn = libvirt.open(URI)
    watcher = Observer(conn)

    def on_lifecycle(conn: Any, domain: Any, event: int, detail: int, opaque: Any) -> None:
        kind = EVENTS.get(event, str(event))
        watcher.events.append((domain.name(), kind, DETAILS.get(kind, {}).get(detail, str(detail))))

    def on_reboot(conn: Any, domain: Any, opaque: Any) -> None:
        watcher.events.append((domain.name(), "reboot", ""))

    callbacks = [
        conn.domainEventRegisterAny(
            None, libvirt.VIR_DOMAIN_EVENT_ID_LIFECYCLE, on_lifecycle, None
        ),
        conn.domainEventRegisterAny(None, libvirt.VIR_DOMAIN_EVENT_ID_REBOOT, on_reboot, None),
    ]
    yield watcher
    for callback in callbacks:
        conn.domainEventDeregisterAny(callback)
    conn.close()
    stop.set()
    thread.join(5)
    libvirt.virEventRemoveTimeout(timer)


@pytest.fixture
def domain(observer: Observer) -> Iterator[Any]:
    """A persistent domain of this test's own, running (booted), removed afterwards."""
    name = f"drydock-{uuid.uuid4().hex[:12]}"
    domain = observer.conn.defineXML(domain_xml(name))
    domain.create()
    yield domain
    if domain.isActive():
        domain.destroy()
    for snapshot in domain.listAllSnapshots(0):
        snapshot.delete(0)
    domain.undefine()


def domain_xml(name: str, on_reboot: str = "restart") -> str:
    return (
        f"<domain type='test'><name>{name}</name><memory>65536</memory>"
        f"<os><type>hvm</type></os><on_reboot>{on_reboot}</on_reboot></domain>"
    )


def state_of(domain: Any) -> tuple[str, str]:
    from tasks.remediation.executors.libvirt import _state_names

    found = _state_names(*domain.state(0))
    return found.state, found.reason


def run_actions(
    actions: list[dict[str, Any]],
    *,
    libvirt_uuid: uuid.UUID | None = None,
    name: str = "vm-1",
    connection: dict[str, Any] | None = None,
    timeout: float = 60,
    uri: str = URI,
) -> list[StepResult]:
    spec = LibvirtSpec.model_validate({"actions": actions})
    target = Target(
        asset_id=uuid.uuid4(),
        tenant="acme",
        name=name,
        kind="vm",
        libvirt_uuid=libvirt_uuid,
        connection=connection or {},
    )
    run = RunContext.starting_now(uuid.uuid4(), 1, timeout)
    return list(LibvirtExecutor(uri=uri, poll_seconds=0.05).execute(spec, target, run))


def uuid_of(domain: Any) -> uuid.UUID:
    return uuid.UUID(domain.UUIDString())


def settle(observer: Observer, name: str, last: tuple[str, str]) -> None:
    """Wait for the event the test's own setup caused last, then forget the setup's events."""
    deadline = time.monotonic() + 10
    while last not in observer.events_of(name):
        assert time.monotonic() < deadline, f"no {last} event for {name}"
        time.sleep(0.02)
    observer.events.clear()


def wait_for_events(observer: Observer, name: str, count: int) -> list[tuple[str, str]]:
    """The domain's events once ``count`` have arrived (they are delivered asynchronously)."""
    deadline = time.monotonic() + 10
    while len(observer.events_of(name)) < count and time.monotonic() < deadline:
        time.sleep(0.02)
    return observer.events_of(name)


def test_a_reboot_is_observed_through_the_driver(observer: Observer, domain: Any) -> None:
    # Paused and resumed: running, but not because it booted.
    domain.suspend()
    domain.resume()
    assert state_of(domain) == ("running", "unpaused")
    name = domain.name()
    settle(observer, name, ("resumed", "unpaused"))

    [step] = run_actions([{"action": "reboot", "wait_seconds": 5}], libvirt_uuid=uuid_of(domain))

    assert step.ok and step.name == "reboot" and step.error is None
    # Seen through the test's own connection: restarted in place, booted again.
    assert state_of(domain) == ("running", "booted")
    # The test driver's reboot emits no event: the first event after it is the next one
    # caused (events arrive in order).
    domain.suspend()
    assert wait_for_events(observer, name, 1) == [("suspended", "paused")]
    assert step.outputs["before"] == {"state": "running", "reason": "unpaused"}
    assert step.outputs["after"] == {"state": "running", "reason": "booted"}
    assert step.outputs["observed"] == ["running/unpaused", "running/booted"]
    assert step.outputs["reached_expected_state"] is True
    assert step.outputs["domain"] == name and step.outputs["uuid"] == domain.UUIDString()


def test_a_reboot_the_domain_turns_into_a_stop_fails_the_wait(observer: Observer) -> None:
    name = f"drydock-{uuid.uuid4().hex[:12]}"
    domain = observer.conn.defineXML(domain_xml(name, on_reboot="destroy"))
    domain.create()
    try:
        steps = run_actions(
            [{"action": "reboot", "wait_seconds": 0.5}, {"action": "start"}],
            libvirt_uuid=uuid_of(domain),
        )
        [step] = steps  # the start never ran

        assert not step.ok and not step.timed_out
        assert step.error == (
            f"domain '{name}' did not reach running within 0.5s after reboot "
            "(it is shutoff/shutdown)"
        )
        assert state_of(domain) == ("shutoff", "shutdown")
    finally:
        domain.undefine()


def test_the_time_limit_ends_a_wait(observer: Observer) -> None:
    name = f"drydock-{uuid.uuid4().hex[:12]}"
    domain = observer.conn.defineXML(domain_xml(name, on_reboot="destroy"))
    domain.create()
    try:
        [step] = run_actions(
            [{"action": "reboot", "wait_seconds": 600}], libvirt_uuid=uuid_of(domain), timeout=1
        )

        assert step.timed_out and not step.ok
        assert step.error == "timed out: the playbook's time limit of 1s ran out"
    finally:
        domain.undefine()


def test_reset_keeps_the_domain_running_and_is_refused_when_it_is_off(
    observer: Observer, domain: Any
) -> None:
    [reset] = run_actions([{"action": "reset"}], libvirt_uuid=uuid_of(domain))

    assert reset.ok
    assert reset.outputs["before"]["state"] == reset.outputs["after"]["state"] == "running"
    assert state_of(domain)[0] == "running"

    domain.destroy()
    [refused] = run_actions([{"action": "reset"}], libvirt_uuid=uuid_of(domain))

    assert not refused.ok
    assert refused.error == (
        f"reset of domain '{domain.name()}' refused by {URI}: Requested operation is not "
        "valid: domain is not running"
    )
    assert refused.outputs["before"] == {"state": "shutoff", "reason": "destroyed"}


def test_shutdown_then_start_with_waits(observer: Observer, domain: Any) -> None:
    name = domain.name()
    settle(observer, name, ("started", "booted"))

    off, on = run_actions(
        [
            {"action": "shutdown", "wait_seconds": 5},
            {"action": "start", "name": "boot-again", "wait_seconds": 5},
        ],
        name=name,
    )

    assert (off.name, off.ok, on.name, on.ok) == ("shutdown", True, "boot-again", True)
    assert off.outputs["after"] == {"state": "shutoff", "reason": "shutdown"}
    assert on.outputs["before"] == {"state": "shutoff", "reason": "shutdown"}
    assert on.outputs["after"] == {"state": "running", "reason": "booted"}
    assert wait_for_events(observer, name, 2) == [("stopped", "shutdown"), ("started", "booted")]
    assert state_of(domain) == ("running", "booted")


def test_destroy_stops_the_domain_at_once(observer: Observer, domain: Any) -> None:
    [step] = run_actions(
        [{"action": "destroy"}], connection={"libvirt_domain": domain.name()}, name="other"
    )

    assert step.ok and step.outputs["after"] == {"state": "shutoff", "reason": "destroyed"}
    assert state_of(domain) == ("shutoff", "destroyed")
    assert not domain.isActive()


def test_revert_snapshot_restores_the_domain(observer: Observer, domain: Any) -> None:
    name = domain.name()
    domain.snapshotCreateXML("<domainsnapshot><name>before-patch</name></domainsnapshot>", 0)
    domain.destroy()
    settle(observer, name, ("stopped", "destroyed"))

    [step] = run_actions(
        [{"action": "revert_snapshot", "snapshot": "before-patch", "wait_seconds": 5}],
        libvirt_uuid=uuid_of(domain),
    )

    assert step.ok and step.name == "revert_snapshot"
    assert step.outputs["expected_state"] == "running"  # the snapshot was taken running
    assert step.outputs["before"] == {"state": "shutoff", "reason": "destroyed"}
    assert step.outputs["after"] == {"state": "running", "reason": "from_snapshot"}
    assert state_of(domain) == ("running", "from_snapshot")
    assert wait_for_events(observer, name, 1) == [("started", "from_snapshot")]


def test_a_missing_snapshot_fails_and_later_actions_do_not_run(
    observer: Observer, domain: Any
) -> None:
    [step] = run_actions(
        [{"action": "revert_snapshot", "snapshot": "nope"}, {"action": "destroy"}],
        libvirt_uuid=uuid_of(domain),
    )

    assert not step.ok
    assert step.error == f"snapshot 'nope' of domain '{domain.name()}' not found"
    assert domain.isActive()


def test_an_action_the_driver_refuses_fails_its_step(observer: Observer, domain: Any) -> None:
    [step] = run_actions([{"action": "start"}], libvirt_uuid=uuid_of(domain))

    assert not step.ok and step.error is not None
    assert step.error.startswith(f"start of domain '{domain.name()}' refused by {URI}: ")
    assert "already running" in step.error


def test_a_missing_domain_fails_the_first_step(observer: Observer) -> None:
    missing = uuid.uuid4()
    [by_uuid] = run_actions([{"action": "reboot"}], libvirt_uuid=missing)
    [by_name] = run_actions([{"action": "shutdown"}, {"action": "start"}], name="vm-7")

    assert not by_uuid.ok and by_uuid.error == f"domain with UUID '{missing}' not found at {URI}"
    assert by_name.name == "shutdown" and not by_name.ok
    assert by_name.error == f"domain 'vm-7' not found at {URI}"


def test_an_unreachable_libvirt_is_unavailable(tmp_path: Any) -> None:
    uri = f"qemu+unix:///system?socket={tmp_path}/no-such.sock"
    with pytest.raises(ExecutorUnavailableError, match=r"cannot open libvirt at qemu\+unix"):
        run_actions([{"action": "reboot"}], uri=uri)


def test_the_uri_comes_from_the_settings() -> None:
    # The tests' conftest sets DRYDOCK_LIBVIRT_URI to the test driver.
    assert LibvirtExecutor().uri == URI


@pytest.mark.parametrize(
    ("actions", "message"),
    [
        ([], "at least one action"),
        ([{"action": "revert_snapshot"}], "revert_snapshot needs `snapshot`"),
        ([{"action": "reboot", "snapshot": "s"}], "`snapshot` is for revert_snapshot only"),
        ([{"action": "reboot"}, {"action": "reboot"}], "two actions are named 'reboot'"),
        ([{"action": "suspend"}], "Input should be 'reboot', 'reset'"),
        ([{"action": "reboot", "wait_seconds": 0}], "greater than 0"),
        ([{"action": "reboot", "wait_seconds": 7200}], "less than or equal to 3600"),
        ([{"action": "reboot", "name": "no spaces"}], "is not a step name"),
        ([{"action": "reboot", "force": True}], "Extra inputs are not permitted"),
        ([{"action": "start", "name": f"s{i}"} for i in range(51)], "at most 50 actions"),
    ],
)
def test_spec_validation_names_the_problem(actions: list[dict[str, Any]], message: str) -> None:
    with pytest.raises(ValidationError) as raised:
        LibvirtSpec.model_validate({"actions": actions})
    assert message in str(raised.value)

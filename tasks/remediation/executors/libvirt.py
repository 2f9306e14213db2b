"""The ``libvirt`` executor: power and snapshot actions on the target's domain.

The domain is the target's ``libvirt_uuid`` (set by the VM inventory), else the asset's
``libvirt_domain`` connection variable, else a domain named like the asset, at
``settings.libvirt_uri``. Each action is one step whose outputs are the domain's state (and its
reason, as libvirt names them: ``running``/``booted``, ``shutoff``/``destroyed``) before and
after, and the states seen in between.

Some actions complete inside libvirt's call (``start``, ``destroy``, ``reset``,
``revert_snapshot``); ``shutdown`` and ``reboot`` only ask the guest, which acts when it
does. An action's ``wait_seconds`` waits (polling) for the state the action leads to:
``shutoff`` after a shutdown or destroy, ``running`` after a start, reboot or reset, the
snapshot's own state after a revert. Without it the step ends when libvirt accepts the
request. A reboot that completes leaves the domain running, so only the hypervisor's events
(or the guest) show it happened; the step reports what the state shows.

Errors: libvirt unreachable (the connection cannot be opened or drops) raises
ExecutorUnavailableError; a domain or snapshot that does not exist, or an action the driver
refuses ("domain is not running"), fails the step. A single libvirt call cannot be interrupted,
so the time limit is checked between calls and while waiting.
"""

from __future__ import annotations

import contextlib
import dataclasses
import re
import tempfile
import time
import xml.etree.ElementTree as ET
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path
from typing import Any, ClassVar, Literal

from pydantic import Field, field_validator, model_validator

from tasks.remediation.executors.base import (
    ExecutorKind,
    ExecutorSpec,
    ExecutorUnavailableError,
    RunContext,
    StepResult,
    Target,
    utcnow,
)

MAX_ACTIONS = 50
STEP_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,63}$")
POLL_SECONDS = 0.25

Action = Literal["reboot", "reset", "shutdown", "start", "destroy", "revert_snapshot"]

# virDomainState and, per state, its reasons (libvirt-domain.h); a stable ABI.
DOMAIN_STATES: dict[int, tuple[str, tuple[str, ...]]] = {
    0: ("nostate", ("unknown",)),
    1: (
        "running",
        (
            "unknown",
            "booted",
            "migrated",
            "restored",
            "from_snapshot",
            "unpaused",
            "migration_canceled",
            "save_canceled",
            "wakeup",
            "crashed",
            "postcopy",
            "postcopy_failed",
        ),
    ),
    2: ("blocked", ("unknown",)),
    3: (
        "paused",
        (
            "unknown",
            "user",
            "migration",
            "save",
            "dump",
            "ioerror",
            "watchdog",
            "from_snapshot",
            "shutting_down",
            "snapshot",
            "crashed",
            "starting_up",
            "postcopy",
            "postcopy_failed",
            "api_error",
        ),
    ),
    4: ("shutdown", ("unknown", "user")),
    5: (
        "shutoff",
        (
            "unknown",
            "shutdown",
            "destroyed",
            "crashed",
            "migrated",
            "saved",
            "failed",
            "from_snapshot",
            "daemon",
        ),
    ),
    6: ("crashed", ("unknown", "panicked")),
    7: ("pmsuspended", ("unknown",)),
}
# A transient domain ceases to exist when it stops: that is its "shutoff".
GONE = "gone"
# The state each action leads to (revert_snapshot: the snapshot's, read from it).
EXPECTED_STATE: dict[str, str] = {
    "reboot": "running",
    "reset": "running",
    "shutdown": "shutoff",
    "start": "running",
    "destroy": "shutoff",
}


class LibvirtAction(ExecutorSpec):
    """One action on the target's domain; it is one step."""

    action: Action = Field(
        description=(
            "`reboot` and `shutdown` ask the guest (ACPI or agent); `reset` and `destroy` act "
            "on the virtual hardware at once; `start` boots a defined domain; "
            "`revert_snapshot` returns the domain to `snapshot`."
        )
    )
    name: str | None = Field(
        None,
        description=(
            "The step's name (letters, digits, `_.-`); defaults to the action. Needed when "
            "an action appears twice."
        ),
    )
    snapshot: str | None = Field(
        None,
        min_length=1,
        max_length=255,
        description="The snapshot `revert_snapshot` returns to (required by it, only by it).",
    )
    wait_seconds: float | None = Field(
        None,
        gt=0,
        le=3600,
        description=(
            "Wait up to this long for the domain to reach the state the action leads to (a "
            "step that does not get there fails); unset: do not wait."
        ),
    )

    @field_validator("name")
    @classmethod
    def _check_name(cls, name: str | None) -> str | None:
        if name is not None and not STEP_NAME.match(name):
            raise ValueError(
                f"{name!r} is not a step name: 1-64 letters, digits, `_`, `.` or `-`, starting "
                "with a letter or digit"
            )
        return name

    @field_validator("snapshot")
    @classmethod
    def _check_snapshot(cls, snapshot: str | None) -> str | None:
        if snapshot is not None and any(ord(char) < 32 or char == "/" for char in snapshot):
            raise ValueError(f"{snapshot!r} is not a snapshot name (control character or /)")
        return snapshot

    @model_validator(mode="after")
    def _snapshot_only_for_revert(self) -> LibvirtAction:
        if self.action == "revert_snapshot" and self.snapshot is None:
            raise ValueError("revert_snapshot needs `snapshot`: the snapshot to revert to")
        if self.action != "revert_snapshot" and self.snapshot is not None:
            raise ValueError(f"`snapshot` is for revert_snapshot only, not {self.action}")
        return self

    @property
    def step_name(self) -> str:
        return self.name or self.action


class LibvirtSpec(ExecutorSpec):
    """Power and snapshot actions on the target's libvirt domain, in order."""

    actions: list[LibvirtAction] = Field(
        description=f"The actions, in order (1 to {MAX_ACTIONS}); each is one step."
    )

    @field_validator("actions")
    @classmethod
    def _check_actions(cls, actions: list[LibvirtAction]) -> list[LibvirtAction]:
        if not actions:
            raise ValueError("at least one action is needed")
        if len(actions) > MAX_ACTIONS:
            raise ValueError(f"at most {MAX_ACTIONS} actions, not {len(actions)}")
        seen: set[str] = set()
        for action in actions:
            if action.step_name in seen:
                raise ValueError(
                    f"two actions are named {action.step_name!r}; give them distinct `name`s"
                )
            seen.add(action.step_name)
        return actions


@dataclass(frozen=True)
class DomainState:
    state: str
    reason: str

    def __str__(self) -> str:
        return f"{self.state}/{self.reason}"

    def as_output(self) -> dict[str, str]:
        return {"state": self.state, "reason": self.reason}


class LibvirtExecutor:
    kind: ClassVar[ExecutorKind] = ExecutorKind.LIBVIRT
    spec_model: ClassVar[type[ExecutorSpec]] = LibvirtSpec

    def __init__(self, uri: str | None = None, poll_seconds: float = POLL_SECONDS) -> None:
        """``uri`` overrides ``settings.libvirt_uri``."""
        if uri is None:
            from kernel.settings import get_settings

            uri = get_settings().libvirt_uri
        self.uri = uri
        self.poll_seconds = poll_seconds

    def execute(self, spec: LibvirtSpec, target: Target, run: RunContext) -> Iterator[StepResult]:
        if run.simulation:
            # A replica of the domain in a test driver of its own (a file-backed test:// URI is
            # private to the connection that opens it): the real hypervisor is never opened.
            with tempfile.TemporaryDirectory(prefix="drydock-libvirt-replica-") as directory:
                replica = LibvirtExecutor(_replica_uri(Path(directory), target), self.poll_seconds)
                yield from replica.execute(spec, target, dataclasses.replace(run, simulation=False))
            return
        import libvirt

        try:
            conn = libvirt.open(self.uri)
        except libvirt.libvirtError as exc:
            raise ExecutorUnavailableError(f"cannot open libvirt at {self.uri}: {exc}") from exc
        try:
            domain: Any = None
            for action in spec.actions:
                started_at = utcnow()
                if run.remaining() <= 0:
                    yield _timed_out(action, started_at, run)
                    return
                if domain is None:
                    domain, error = self._lookup(conn, target)
                    if domain is None:
                        yield _failed(action, started_at, error)
                        return
                step = self._act(conn, domain, action, run, started_at)
                yield step
                if not step.ok:
                    return
        finally:
            # A connection that already dropped has nothing left to release.
            with contextlib.suppress(libvirt.libvirtError):
                conn.close()

    def _lookup(self, conn: Any, target: Target) -> tuple[Any, str]:
        import libvirt

        if target.libvirt_uuid is not None:
            how, key = "with UUID", str(target.libvirt_uuid)
        else:
            how, key = "", str(target.connection.get("libvirt_domain") or target.name)
        try:
            if target.libvirt_uuid is not None:
                return conn.lookupByUUIDString(key), ""
            return conn.lookupByName(key), ""
        except libvirt.libvirtError as exc:
            self._raise_if_unavailable(conn, exc)
            if exc.get_error_code() == libvirt.VIR_ERR_NO_DOMAIN:
                return None, f"domain {how + ' ' if how else ''}{key!r} not found at {self.uri}"
            return None, f"looking up domain {key!r} at {self.uri} failed: {_message(exc)}"

    def _act(
        self, conn: Any, domain: Any, action: LibvirtAction, run: RunContext, started_at: datetime
    ) -> StepResult:
        import libvirt

        name = domain.name()
        before = self._state(conn, domain)
        expected = EXPECTED_STATE.get(action.action)
        try:
            if action.action == "reboot":
                domain.reboot(0)
            elif action.action == "reset":
                domain.reset(0)
            elif action.action == "shutdown":
                domain.shutdown()
            elif action.action == "start":
                domain.create()
            elif action.action == "destroy":
                domain.destroy()
            else:
                assert action.snapshot is not None  # the spec requires it
                try:
                    snapshot = domain.snapshotLookupByName(action.snapshot, 0)
                except libvirt.libvirtError as exc:
                    self._raise_if_unavailable(conn, exc)
                    if exc.get_error_code() == libvirt.VIR_ERR_NO_DOMAIN_SNAPSHOT:
                        return _failed(
                            action,
                            started_at,
                            f"snapshot {action.snapshot!r} of domain {name!r} not found",
                            before=before,
                        )
                    raise
                expected = _snapshot_state(snapshot.getXMLDesc(0))
                domain.revertToSnapshot(snapshot, 0)
        except libvirt.libvirtError as exc:
            self._raise_if_unavailable(conn, exc)
            return _failed(
                action,
                started_at,
                f"{action.action} of domain {name!r} refused by {self.uri}: {_message(exc)}",
                before=before,
            )
        observed = [before]
        after = self._state(conn, domain)
        if after != observed[-1]:
            observed.append(after)
        outputs: dict[str, Any] = {
            "domain": name,
            "uuid": domain.UUIDString(),
            "uri": self.uri,
            "before": before.as_output(),
            "expected_state": expected,
        }
        error = None
        timed_out = False
        if action.wait_seconds is not None and expected is not None:
            wait_until = time.monotonic() + action.wait_seconds
            while not _reached(after, expected):
                if run.remaining() <= 0:
                    timed_out = True
                    error = run.timeout_message()
                    break
                if time.monotonic() >= wait_until:
                    error = (
                        f"domain {name!r} did not reach {expected} within "
                        f"{action.wait_seconds:g}s after {action.action} (it is {after})"
                    )
                    break
                time.sleep(min(self.poll_seconds, run.remaining()))
                after = self._state(conn, domain)
                if after != observed[-1]:
                    observed.append(after)
        outputs.update(
            after=after.as_output(),
            reached_expected_state=expected is None or _reached(after, expected),
            observed=[str(state) for state in observed],
        )
        return StepResult(
            name=action.step_name,
            ok=error is None,
            started_at=started_at,
            finished_at=utcnow(),
            stdout=f"{action.action} {name}: {' -> '.join(map(str, observed))}\n",
            outputs=outputs,
            error=error,
            timed_out=timed_out,
        )

    def _state(self, conn: Any, domain: Any) -> DomainState:
        import libvirt

        try:
            code, reason_code = domain.state(0)
        except libvirt.libvirtError as exc:
            self._raise_if_unavailable(conn, exc)
            if exc.get_error_code() == libvirt.VIR_ERR_NO_DOMAIN:
                return DomainState(GONE, "undefined")
            raise ExecutorUnavailableError(
                f"libvirt at {self.uri} could not read the state of {domain.name()!r}: "
                f"{_message(exc)}"
            ) from exc
        return _state_names(code, reason_code)

    def _raise_if_unavailable(self, conn: Any, exc: Exception) -> None:
        """An error because libvirt itself is gone is not the action failing: retry later."""
        import libvirt

        try:
            alive = conn.isAlive() == 1
        except libvirt.libvirtError:
            alive = False
        if not alive:
            raise ExecutorUnavailableError(f"lost the libvirt connection to {self.uri}: {exc}")


def _replica_uri(directory: Path, target: Target) -> str:
    """A test-driver node holding one running domain named as the target's."""
    name = str(target.connection.get("libvirt_domain") or target.name)
    node = ET.Element("node")
    domain = ET.SubElement(node, "domain", type="test")
    ET.SubElement(domain, "name").text = name
    ET.SubElement(domain, "memory").text = "65536"
    ET.SubElement(domain, "vcpu").text = "1"
    ET.SubElement(ET.SubElement(domain, "os"), "type").text = "hvm"
    path = directory / "replica.xml"
    ET.ElementTree(node).write(path)
    return f"test://{path}"


def _state_names(code: int, reason_code: int) -> DomainState:
    state, reasons = DOMAIN_STATES.get(code, (f"state-{code}", ()))
    reason = reasons[reason_code] if 0 <= reason_code < len(reasons) else f"reason-{reason_code}"
    return DomainState(state, reason)


def _reached(state: DomainState, expected: str) -> bool:
    return state.state == expected or (expected == "shutoff" and state.state == GONE)


def _snapshot_state(snapshot_xml: str) -> str | None:
    """The domain state a snapshot holds (``running``, ``shutoff``...), if it says."""
    state = ET.fromstring(snapshot_xml).findtext("state")
    return state if state in {name for name, _ in DOMAIN_STATES.values()} else None


def _message(exc: Any) -> str:
    message = exc.get_error_message()
    return str(message or exc)


def _failed(
    action: LibvirtAction, started_at: datetime, error: str, before: DomainState | None = None
) -> StepResult:
    return StepResult(
        name=action.step_name,
        ok=False,
        started_at=started_at,
        finished_at=utcnow(),
        outputs={"before": before.as_output()} if before else {},
        error=error,
    )


def _timed_out(action: LibvirtAction, started_at: datetime, run: RunContext) -> StepResult:
    return StepResult(
        name=action.step_name,
        ok=False,
        started_at=started_at,
        finished_at=utcnow(),
        timed_out=True,
        error=run.timeout_message(),
    )

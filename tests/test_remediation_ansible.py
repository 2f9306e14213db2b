"""The ``ansible`` executor, called in-process: real ansible-runner driving the real
ansible-playbook installed next to the test's Python.

The target is this machine through ``ansible_connection: local`` (allowed here by the
executor's override; off by default), so the tasks' effects are files in a temporary directory.
"""

from __future__ import annotations

import random
import shutil
import sys
import time
import uuid
from collections.abc import Generator
from pathlib import Path
from typing import Any

import pytest
from pydantic import ValidationError

from drydock import localservers
from tasks.remediation.executors.ansible import AnsibleExecutor
from tasks.remediation.executors.ansible_spec import AnsibleSpec
from tasks.remediation.executors.base import (
    ExecutorUnavailableError,
    RunContext,
    StepResult,
    Target,
)
from tests.conftest import _missing

LOCAL = {"ansible_connection": "local", "ansible_python_interpreter": sys.executable}


@pytest.fixture(autouse=True)
def _ansible_installed() -> None:
    if shutil.which("ansible-playbook", path=str(Path(sys.executable).parent)) is None:
        _missing("ansible-playbook (ansible-core) next to the test's Python")


def target(connection: dict[str, Any] | None = None) -> Target:
    return Target(
        asset_id=uuid.uuid4(),
        tenant="acme",
        name="vm-1",
        kind="vm",
        connection=LOCAL if connection is None else connection,
    )


def run_playbook(
    tasks: list[dict[str, Any]],
    *,
    timeout: float = 120,
    connection: dict[str, Any] | None = None,
    allow_local: bool = True,
    **spec: Any,
) -> list[StepResult]:
    playbook = AnsibleSpec.model_validate(
        {"plays": [{"gather_facts": False, "tasks": tasks}], **spec}
    )
    run = RunContext.starting_now(uuid.uuid4(), 1, timeout)
    executor = AnsibleExecutor(allow_local=allow_local)
    return list(executor.execute(playbook, target(connection), run))


def test_each_task_is_a_step_with_its_result(tmp_path: Path) -> None:
    made = tmp_path / "remediated.txt"
    steps = run_playbook(
        [
            {
                "name": "write the marker",
                "copy": {
                    "dest": str(made),
                    "content": "{{ greeting }} {{ drydock_asset_name }} {{ drydock_tenant }}\n",
                },
            },
            {"name": "say hello", "command": "echo hello from ansible"},
            {"name": "who", "debug": {"msg": "{{ inventory_hostname }} in {{ rack }}"}},
            {
                "name": "report",
                "shell": """echo 'drydock-output {"rotated": 3}'; echo warn >&2""",
            },
        ],
        extra_vars={"greeting": "hi"},
        connection={**LOCAL, "rack": "r12"},
    )

    assert [s.name for s in steps] == ["write the marker", "say hello", "who", "report"]
    assert all(s.ok and s.error is None for s in steps)
    assert made.read_text() == "hi vm-1 acme\n"
    written, hello, who, report = steps
    assert written.outputs["changed"] is True
    assert written.outputs["dest"] == str(made) and written.outputs["state"] == "file"
    assert hello.exit_code == 0 and hello.stdout == "hello from ansible"
    assert hello.outputs["rc"] == 0 and hello.outputs["cmd"] == ["echo", "hello", "from", "ansible"]
    # The inventory's one host is the target, with the asset's connection variables.
    assert who.outputs["msg"] == "vm-1 in r12"
    assert report.stderr == "warn" and report.outputs["rotated"] == 3
    assert all(s.started_at <= s.finished_at for s in steps)


def test_a_failing_task_fails_its_step_and_ends_the_playbook(tmp_path: Path) -> None:
    never = tmp_path / "never"
    steps = run_playbook(
        [
            {"name": "fine", "command": "true"},
            {"name": "breaks", "shell": "echo 'disk is full' >&2; exit 3"},
            {"name": "after", "file": {"path": str(never), "state": "touch"}},
        ]
    )

    assert [(s.name, s.ok) for s in steps] == [("fine", True), ("breaks", False)]
    assert steps[1].exit_code == 3 and steps[1].error == "exit code 3"
    assert steps[1].stderr == "disk is full"
    assert not never.exists()


def test_a_fail_task_gives_its_message() -> None:
    [step] = run_playbook([{"name": "check", "fail": {"msg": "firmware 1.2 is vulnerable"}}])

    assert not step.ok and step.error == "firmware 1.2 is vulnerable"
    assert step.exit_code is None


def test_an_ignored_failure_is_a_passing_step_and_the_playbook_goes_on() -> None:
    steps = run_playbook(
        [
            {"name": "may fail", "command": "false", "ignore_errors": True},
            {"name": "goes on", "debug": {"msg": "still here"}},
        ]
    )

    assert [(s.name, s.ok) for s in steps] == [("may fail", True), ("goes on", True)]
    assert steps[0].outputs["failed"] is True and steps[0].outputs["ignored"] is True
    assert steps[1].outputs["msg"] == "still here"


def test_check_mode_changes_nothing(tmp_path: Path) -> None:
    made = tmp_path / "made"
    [step] = run_playbook(
        [{"name": "touch", "copy": {"dest": str(made), "content": "x"}}], check_mode=True
    )

    assert step.ok and step.outputs["changed"] is True
    assert not made.exists()


def test_local_connection_is_refused_unless_allowed(tmp_path: Path) -> None:
    made = tmp_path / "made"
    [step] = run_playbook(
        [{"name": "touch", "file": {"path": str(made), "state": "touch"}}], allow_local=False
    )

    assert not step.ok and step.name == "ansible-playbook"
    assert step.error is not None and "DRYDOCK_REMEDIATION_ALLOW_LOCAL_ANSIBLE" in step.error
    assert not made.exists()


def test_local_connection_follows_the_setting(monkeypatch: pytest.MonkeyPatch) -> None:
    from kernel.settings import get_settings

    monkeypatch.setenv("DRYDOCK_REMEDIATION_ALLOW_LOCAL_ANSIBLE", "true")
    get_settings.cache_clear()
    try:
        assert AnsibleExecutor().allow_local is True
    finally:
        monkeypatch.undo()
        get_settings.cache_clear()
    assert AnsibleExecutor().allow_local is False


def test_running_past_the_time_limit_stops_the_task_and_everything_it_started() -> None:
    # A duration no other process uses, to find the task's own `sleep` afterwards.
    duration = f"30.{random.randrange(10**6):06d}"
    steps = run_playbook(
        [{"name": "quick", "command": "true"}, {"name": "hangs", "command": f"sleep {duration}"}],
        timeout=4,
    )

    assert [(s.name, s.ok, s.timed_out) for s in steps] == [
        ("quick", True, False),
        ("hangs", False, True),
    ]
    assert steps[1].error == "timed out: the playbook's time limit of 4s ran out"
    wait_until_gone(f"sleep\0{duration}")


def test_a_caller_that_stops_reading_stops_the_playbook() -> None:
    duration = f"30.{random.randrange(10**6):06d}"
    playbook = AnsibleSpec.model_validate(
        {
            "plays": [
                {
                    "gather_facts": False,
                    "tasks": [
                        {"name": "first", "command": "true"},
                        {"name": "second", "command": f"sleep {duration}"},
                    ],
                }
            ]
        }
    )
    run = RunContext.starting_now(uuid.uuid4(), 1, 120)
    steps = AnsibleExecutor(allow_local=True).execute(playbook, target(), run)
    assert isinstance(steps, Generator)

    assert next(steps).name == "first"
    localservers.wait_for(
        lambda: any(f"sleep\0{duration}".encode() in c for c in _command_lines()),
        30,
        "the second task to start",
    )
    steps.close()  # what a task that is told to stop mid-run does
    wait_until_gone(f"sleep\0{duration}")


def wait_until_gone(command_line: str) -> None:
    """Wait (a while: a killed process takes a moment to go) until no process has this
    command line; fail if one still does."""
    deadline = time.monotonic() + 10
    while any(command_line.encode() in c for c in _command_lines()):
        assert time.monotonic() < deadline, f"{command_line!r} is still running"
        time.sleep(0.1)


def _command_lines() -> list[bytes]:
    lines = []
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            try:
                lines.append((entry / "cmdline").read_bytes())
            except OSError:
                continue
    return lines


def test_an_unreachable_host_fails_the_step() -> None:
    if shutil.which("ssh") is None:
        _missing("the ssh client")
    closed_port = localservers.free_port()
    [step] = run_playbook(
        [{"name": "ping", "ping": {}}],
        connection={
            "ansible_host": "127.0.0.1",
            "ansible_port": closed_port,
            "ansible_connection": "ssh",
            "ansible_user": "nobody",
        },
    )

    assert not step.ok and step.name == "ping"
    assert step.error is not None and step.error.startswith("host unreachable: ")
    assert "Connection refused" in step.error


def test_a_playbook_that_cannot_start_is_one_failed_step() -> None:
    playbook = AnsibleSpec.model_validate({"plays": [{"roles": ["no-such-role"]}]})
    run = RunContext.starting_now(uuid.uuid4(), 1, 60)
    [step] = AnsibleExecutor(allow_local=True).execute(playbook, target(), run)

    assert not step.ok and step.name == "ansible-playbook"
    assert step.error is not None and "the role 'no-such-role' was not found" in step.error
    assert "no-such-role" in step.stdout


def test_worker_secrets_and_ansible_cfg_stay_out(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("DRYDOCK_REMEDIATION_SECRET_DB", "hunter2")
    worker_cfg = tmp_path / "ansible.cfg"
    worker_cfg.write_text("[defaults]\ntimeout = 77\n")
    monkeypatch.setenv("ANSIBLE_CONFIG", str(worker_cfg))
    env_step, config_step = run_playbook(
        [
            {"name": "environment", "command": "env"},
            {"name": "config", "debug": {"msg": "{{ lookup('config', 'DEFAULT_TIMEOUT') }}"}},
        ]
    )

    assert env_step.ok and "PATH=" in env_step.stdout
    assert "hunter2" not in env_step.stdout and "DRYDOCK_" not in env_step.stdout
    # 10 is ansible's default; the worker's file says 77.
    assert config_step.ok and str(config_step.outputs["msg"]) == "10"


def test_no_ansible_playbook_means_unavailable(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("PATH", str(tmp_path))
    playbook = AnsibleSpec.model_validate({"plays": [{"tasks": [{"name": "x", "ping": {}}]}]})
    run = RunContext.starting_now(uuid.uuid4(), 1, 60)
    executor = AnsibleExecutor(allow_local=True, bin_dir=tmp_path)

    with pytest.raises(ExecutorUnavailableError, match="ansible-playbook is not installed"):
        list(executor.execute(playbook, target(), run))


@pytest.mark.parametrize(
    ("spec", "message"),
    [
        ({"plays": []}, "at least one play"),
        ({}, "plays\n  Field required"),
        ({"plays": [{"hosts": "db", "tasks": [{"name": "x", "ping": {}}]}]}, "remove `hosts`"),
        ({"plays": [{"name": "nothing"}]}, "a play needs `tasks`"),
        ({"plays": [{"tasks": [{"ping": {}}]}]}, "every task needs a `name`"),
        (
            {"plays": [{"tasks": [{"name": "x", "ping": {}}, {"name": "x", "ping": {}}]}]},
            "task name 'x' is already used by plays[0].tasks[0]",
        ),
        (
            {"plays": [{"tasks": [{"name": "x", "ping": {}, "delegate_to": "localhost"}]}]},
            "plays[0].tasks[0]: `delegate_to` runs the task on another host",
        ),
        (
            {"plays": [{"tasks": [{"block": [{"name": "x", "local_action": "ping"}]}]}]},
            "plays[0].tasks[0].block[0]: `local_action`",
        ),
        (
            {"plays": [{"connection": "local", "tasks": [{"name": "x", "ping": {}}]}]},
            "`connection` changes how the target is reached",
        ),
        (
            {"plays": [{"import_playbook": "other.yml"}]},
            "`import_playbook` is not a play keyword",
        ),
        (
            {"plays": [{"tasks": [{"block": [{"name": "x", "ping": {}}], "rescue": []}]}]},
            "`rescue` is not supported",
        ),
        (
            {
                "plays": [
                    {"vars": {"ansible_connection": "local"}, "tasks": [{"name": "x", "ping": {}}]}
                ]
            },
            "'ansible_connection': ansible_* variables",
        ),
        (
            {
                "plays": [{"tasks": [{"name": "x", "ping": {}}]}],
                "extra_vars": {"ansible_host": "10.0.0.9"},
            },
            "extra_vars: 'ansible_host'",
        ),
        (
            {
                "plays": [{"tasks": [{"name": "x", "ping": {}}]}],
                "extra_vars": {"drydock_run_id": 1},
            },
            "set by the executor",
        ),
        (
            {"plays": [{"tasks": [{"name": f"t{i}", "ping": {}} for i in range(51)]}]},
            "at most 50 tasks",
        ),
        (
            {"plays": [{"tasks": [{"name": "x", "ping": {}}]}], "inventory": "evil"},
            "inventory\n  Extra inputs are not permitted",
        ),
    ],
)
def test_spec_validation_names_the_problem(spec: dict[str, Any], message: str) -> None:
    with pytest.raises(ValidationError) as raised:
        AnsibleSpec.model_validate(spec)
    assert message in str(raised.value)


def test_a_valid_spec_round_trips_through_json() -> None:
    spec = AnsibleSpec.model_validate(
        {
            "plays": [
                {
                    "name": "patch",
                    "become": True,
                    "roles": [{"role": "patching", "vars": {"level": 2}}],
                    "tasks": [{"block": [{"name": "x", "ping": {}}], "when": "true"}],
                }
            ],
            "extra_vars": {"ticket": "OPS-1"},
            "check_mode": True,
        }
    )
    assert AnsibleSpec.model_validate_json(spec.model_dump_json()) == spec

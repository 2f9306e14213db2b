"""What the ansible executor accepts, checked when a playbook is stored: plays and tasks within
bounds, only the keywords Drydock can run safely (no local connection unless the worker allows
it, no keywords that reach outside the play), and variable names ansible will take."""

from __future__ import annotations

import re
from typing import Any

from pydantic import Field, field_validator

from tasks.remediation.executors.base import (
    ExecutorSpec,
)

MAX_PLAYS = 20

MAX_TASKS = 50

# Play keywords a remediation playbook may use. Left out on purpose: `hosts` (the executor sets
# it), `connection`/`remote_user`/`port` (the asset's connection variables decide), `vars_files`
# and `vars_prompt` (files on, or a prompt at, the worker), `serial`/`strategy`/`debugger`.
PLAY_KEYWORDS = frozenset(
    {
        "name",
        "tasks",
        "pre_tasks",
        "post_tasks",
        "handlers",
        "roles",
        "vars",
        "environment",
        "gather_facts",
        "gather_subset",
        "gather_timeout",
        "become",
        "become_user",
        "become_method",
        "become_flags",
        "check_mode",
        "diff",
        "ignore_errors",
        "module_defaults",
        "collections",
        "tags",
        "no_log",
        "timeout",
        "force_handlers",
        "any_errors_fatal",
    }
)

TASK_LISTS = ("pre_tasks", "tasks", "post_tasks", "handlers")

# Task and role keywords that would run a task somewhere other than the target.
ELSEWHERE_KEYWORDS = {
    "delegate_to": "runs the task on another host",
    "local_action": "runs the task on the worker",
    "connection": "changes how the target is reached",
    "remote_user": "changes who the target is reached as",
    "port": "changes how the target is reached",
}

# A failed task ends the run (one host): recovery blocks would run after a step already failed.
RECOVERY_KEYWORDS = ("rescue", "always")

VARIABLE_NAME = re.compile(r"^[A-Za-z_][A-Za-z0-9_]*$")

LOCAL_CONNECTIONS = frozenset({"local", "ansible.builtin.local"})


class AnsibleSpec(ExecutorSpec):
    """An inline Ansible playbook run against the target asset only."""

    plays: list[dict[str, Any]] = Field(
        description=(
            "The playbook: a list of plays, each a mapping with `tasks` (or `roles`, "
            "`pre_tasks`, `post_tasks`). Omit `hosts`: every play runs against the target "
            "asset. Every task needs a `name`, unique in the playbook; each task's result is "
            "one step."
        ),
    )
    extra_vars: dict[str, Any] = Field(
        default_factory=dict,
        description=(
            "Extra variables for every play. `ansible_*` names are not allowed (connection "
            "settings come from the asset); `drydock_run_id`, `drydock_asset_id`, "
            "`drydock_asset_name`, `drydock_asset_kind` and `drydock_tenant` are set by the "
            "executor."
        ),
    )
    check_mode: bool = Field(
        False, description="Run with `--check`: report what would change, change nothing."
    )
    become: bool = Field(
        False,
        description=(
            "Run every play with privilege escalation (`become: true`) unless the play sets "
            "`become` itself."
        ),
    )

    @field_validator("plays")
    @classmethod
    def _check_plays(cls, plays: list[dict[str, Any]]) -> list[dict[str, Any]]:
        if not plays:
            raise ValueError("a playbook needs at least one play")
        if len(plays) > MAX_PLAYS:
            raise ValueError(f"a playbook has at most {MAX_PLAYS} plays, not {len(plays)}")
        names: dict[str, str] = {}
        for index, play in enumerate(plays):
            _check_play(play, f"plays[{index}]", names)
        if len(names) > MAX_TASKS:
            raise ValueError(f"a playbook has at most {MAX_TASKS} tasks, not {len(names)}")
        return plays

    @field_validator("extra_vars")
    @classmethod
    def _check_extra_vars(cls, extra_vars: dict[str, Any]) -> dict[str, Any]:
        _check_variables(extra_vars, "extra_vars")
        reserved = sorted(name for name in extra_vars if name.startswith("drydock_"))
        if reserved:
            raise ValueError(f"extra_vars: {reserved} are set by the executor (drydock_*)")
        return extra_vars


def check_mode_overrides(value: Any, where: str = "plays") -> list[str]:
    """Where the plays set ``check_mode`` themselves (a play, block, task or role, at any
    depth). A simulation refuses them all: ``check_mode: false`` (or a template of it) runs a
    task for real even under ``--check``."""
    found: list[str] = []
    if isinstance(value, dict):
        for key, inner in value.items():
            at = f"{where}.{key}"
            if key == "check_mode":
                found.append(at)
            found += check_mode_overrides(inner, at)
    elif isinstance(value, list):
        for index, inner in enumerate(value):
            found += check_mode_overrides(inner, f"{where}[{index}]")
    return found


def _check_play(play: dict[str, Any], where: str, names: dict[str, str]) -> None:
    if "hosts" in play:
        raise ValueError(
            f"{where}: remove `hosts`; every play runs against the target asset, which the "
            "executor sets"
        )
    for keyword in play:
        if keyword in ELSEWHERE_KEYWORDS:
            raise ValueError(
                f"{where}: `{keyword}` {ELSEWHERE_KEYWORDS[keyword]}; how the target is reached "
                "comes from the asset's connection variables"
            )
        if keyword not in PLAY_KEYWORDS:
            raise ValueError(
                f"{where}: `{keyword}` is not a play keyword a remediation playbook may use "
                f"(allowed: {', '.join(sorted(PLAY_KEYWORDS))})"
            )
    if not any(play.get(key) for key in ("tasks", "roles", "pre_tasks", "post_tasks")):
        raise ValueError(f"{where}: a play needs `tasks` (or `roles`, `pre_tasks`, `post_tasks`)")
    _check_variables(play.get("vars"), f"{where}.vars")
    for key in TASK_LISTS:
        _check_tasks(play.get(key), f"{where}.{key}", names)
    roles = play.get("roles") or []
    if not isinstance(roles, list):
        raise ValueError(f"{where}.roles: must be a list")
    for index, role in enumerate(roles):
        if isinstance(role, dict):
            _check_task_keywords(role, f"{where}.roles[{index}]")
        elif not isinstance(role, str):
            raise ValueError(f"{where}.roles[{index}]: a role is a name or a mapping")


def _check_tasks(tasks: Any, where: str, names: dict[str, str]) -> None:
    if tasks is None:
        return
    if not isinstance(tasks, list):
        raise ValueError(f"{where}: must be a list of tasks")
    for index, task in enumerate(tasks):
        at = f"{where}[{index}]"
        if not isinstance(task, dict):
            raise ValueError(f"{at}: a task is a mapping")
        _check_task_keywords(task, at)
        if "block" in task:
            _check_tasks(task["block"], f"{at}.block", names)
            continue
        name = task.get("name")
        if not isinstance(name, str) or not name.strip():
            raise ValueError(f"{at}: every task needs a `name` (it names the task's step)")
        if name in names:
            raise ValueError(f"{at}: task name {name!r} is already used by {names[name]}")
        names[name] = at


def _check_task_keywords(task: dict[str, Any], where: str) -> None:
    for keyword in task:
        if keyword in ELSEWHERE_KEYWORDS:
            raise ValueError(
                f"{where}: `{keyword}` {ELSEWHERE_KEYWORDS[keyword]}; tasks run on the target "
                "asset only"
            )
        if keyword in RECOVERY_KEYWORDS:
            raise ValueError(
                f"{where}: `{keyword}` is not supported: a failed task ends the run; use "
                "`ignore_errors` or `failed_when` for a failure the playbook expects"
            )
    _check_variables(task.get("vars"), f"{where}.vars")


def _check_variables(variables: Any, where: str) -> None:
    if variables is None:
        return
    if not isinstance(variables, dict):
        raise ValueError(f"{where}: must be a mapping of variable names to values")
    for name in variables:
        if not isinstance(name, str) or not VARIABLE_NAME.match(name):
            raise ValueError(f"{where}: {name!r} is not a valid variable name")
        if name.startswith("ansible_"):
            raise ValueError(
                f"{where}: {name!r}: ansible_* variables decide how and where tasks run; they "
                "come from the asset's connection variables"
            )

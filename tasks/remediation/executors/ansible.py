"""The ``ansible`` executor: an inline playbook run by ansible-runner against the target alone.

Each run gets a private data directory (removed afterwards) holding the playbook, an inventory
of one host (the target: its name, with the asset's connection variables as host vars), a
generated ``ansible.cfg`` and the extra vars. ``ansible-playbook`` is the one installed next to
the worker's Python (``sys.executable``'s directory comes first on its PATH), so a worker run
from a virtualenv that is not on PATH still finds it.

Where tasks run is decided by the asset, not by the playbook: every play's ``hosts`` is set to
the target, and the spec refuses anything that would point a task elsewhere (``delegate_to``,
``local_action``, ``connection``, ``remote_user``, ``ansible_*`` variables). The asset's
``ansible_connection: local`` runs modules on the worker itself and is refused unless
``DRYDOCK_REMEDIATION_ALLOW_LOCAL_ANSIBLE`` is set. This keeps modules on the target; it is not
a sandbox for the playbook: Ansible evaluates templates and lookups (``lookup('pipe', ...)``)
on the controller, which is the worker, so playbooks stay trusted code behind approval. Only
the inline plays are checked: roles (found on the worker's roles path) and files pulled in with
``include_tasks``/``import_tasks`` are taken as they are.

Environment of ``ansible-playbook``: an allowlist of the worker's variables (PATH, HOME,
locale, proxies, ``SSH_AUTH_SOCK``, ``ANSIBLE_*``); never the worker's ``DRYDOCK_*`` settings
and secrets. No ``ansible.cfg`` of the host applies (``ANSIBLE_CONFIG`` names the generated
one). SSH host key checking stays on, though ansible-runner turns it off by default; an asset
that needs otherwise says so in its connection variables (``ansible_ssh_host_key_checking``).

Steps are the task results ansible reports (``runner_on_ok/failed/unreachable/skipped``), one
per task per run, yielded as they happen. A failure ends the playbook (there is one host), so
``block``'s ``rescue``/``always`` are refused rather than silently changing that. On timeout
the whole process tree of ``ansible-playbook`` is killed: ansible's workers and the SSH clients
they start run in sessions of their own, out of reach of ansible-runner's process-group kill.
"""

from __future__ import annotations

import contextlib
import difflib
import json
import os
import queue
import shutil
import signal
import sys
import tempfile
import threading
from collections.abc import Iterator, Mapping
from datetime import datetime
from pathlib import Path
from typing import Any, ClassVar

from tasks.remediation.executors.ansible_spec import (
    LOCAL_CONNECTIONS,
    AnsibleSpec,
    check_mode_overrides,
)
from tasks.remediation.executors.base import (
    ExecutorKind,
    ExecutorSpec,
    ExecutorUnavailableError,
    RunContext,
    StepResult,
    Target,
    parse_outputs,
    utcnow,
)

# Variables of the worker ansible-playbook may see; everything else (the worker's DRYDOCK_*
# settings and secrets above all) stays out.
ENV_ALLOWED = frozenset(
    {
        "PATH",
        "HOME",
        "USER",
        "LOGNAME",
        "LANG",
        "LANGUAGE",
        "TZ",
        "TMPDIR",
        "SSH_AUTH_SOCK",
        "http_proxy",
        "https_proxy",
        "no_proxy",
        "HTTP_PROXY",
        "HTTPS_PROXY",
        "NO_PROXY",
    }
)
# Prefixes of variables ansible-runner itself sets for ansible-playbook, and the operator's own
# Ansible settings (ANSIBLE_*) and locale.
ENV_ALLOWED_PREFIXES = ("ANSIBLE_", "AWX_", "RUNNER_", "ORIGINAL_STDOUT_CALLBACK", "LC_")

TASK_START_EVENTS = frozenset({"playbook_on_task_start", "playbook_on_handler_task_start"})
RESULT_EVENTS = frozenset(
    {"runner_on_ok", "runner_on_failed", "runner_on_unreachable", "runner_on_skipped"}
)
# Result keys that are carried elsewhere in the step (stdout/stderr) or are too big or too
# internal for its outputs.
SUMMARY_SKIPPED_KEYS = frozenset(
    {
        "stdout",
        "stderr",
        "stdout_lines",
        "stderr_lines",
        "invocation",
        "exception",
        "ansible_facts",
        "results",
        "diff",
    }
)
# How often ansible-runner checks whether to cancel (its default is every 5 s).
CANCEL_POLL_SECONDS = 0.25
RUNNER_STOP_SECONDS = 30.0
RUN_STEP_NAME = "ansible-playbook"
# The most of a step's diff kept in its outputs.
MAX_DIFF_CHARS = 64 * 1024


class AnsibleExecutor:
    kind: ClassVar[ExecutorKind] = ExecutorKind.ANSIBLE
    spec_model: ClassVar[type[ExecutorSpec]] = AnsibleSpec

    def __init__(self, allow_local: bool | None = None, bin_dir: Path | None = None) -> None:
        """``allow_local`` overrides ``settings.remediation_allow_local_ansible``; ``bin_dir``
        is where ``ansible-playbook`` is looked for first (default: next to the worker's
        Python)."""
        if allow_local is None:
            from kernel.settings import get_settings

            allow_local = get_settings().remediation_allow_local_ansible
        self.allow_local = allow_local
        self.bin_dir = bin_dir if bin_dir is not None else Path(sys.executable).parent

    def execute(self, spec: AnsibleSpec, target: Target, run: RunContext) -> Iterator[StepResult]:
        connection = str(target.connection.get("ansible_connection", ""))
        # A simulation's replica is the worker itself, in check mode, so the real host is never
        # contacted; a play that sets check_mode itself could run a task for real there.
        overrides = check_mode_overrides(spec.plays) if run.simulation else []
        if overrides:
            yield _refused(
                f"a simulation runs every task in check mode, and {', '.join(overrides)} "
                "sets check_mode itself: remove it to simulate this playbook"
            )
            return
        if connection in LOCAL_CONNECTIONS and not (self.allow_local or run.simulation):
            yield _refused(
                f"asset {target.name!r} has ansible_connection: {connection}, which runs the "
                "playbook's tasks on the worker itself; refused unless "
                "DRYDOCK_REMEDIATION_ALLOW_LOCAL_ANSIBLE=true"
            )
            return
        path = os.pathsep.join(filter(None, [str(self.bin_dir), os.environ.get("PATH")]))
        if shutil.which("ansible-playbook", path=path) is None:
            raise ExecutorUnavailableError(
                f"ansible-playbook is not installed next to {sys.executable} nor on PATH"
            )
        if run.remaining() <= 0:
            now = utcnow()
            yield StepResult(
                name=RUN_STEP_NAME,
                ok=False,
                started_at=now,
                finished_at=now,
                timed_out=True,
                error=run.timeout_message(),
            )
            return
        with tempfile.TemporaryDirectory(prefix="drydock-ansible-") as data_dir:
            session = _PlaybookSession(Path(data_dir), spec, target, run, path)
            try:
                yield from session.steps()
            finally:
                session.stop()


def _refused(error: str) -> StepResult:
    """The one step of a playbook refused before ansible starts."""
    now = utcnow()
    return StepResult(name=RUN_STEP_NAME, ok=False, started_at=now, finished_at=now, error=error)


class _PlaybookSession:
    """One ansible-runner run in a private data directory, read as a stream of events."""

    def __init__(
        self, data_dir: Path, spec: AnsibleSpec, target: Target, run: RunContext, path: str
    ) -> None:
        self.data_dir = data_dir
        self.run = run
        self.events: queue.Queue[dict[str, Any]] = queue.Queue()
        self.abandoned = threading.Event()
        self.timed_out = False
        self.failure: BaseException | None = None
        inventory, playbook, config = _write_private_data(data_dir, spec, target)
        import ansible_runner.interface

        self.runner = ansible_runner.interface.init_runner(
            private_data_dir=str(data_dir),
            playbook=playbook.name,
            inventory=str(inventory),
            extravars={**spec.extra_vars, **_drydock_vars(target, run)},
            cmdline="--check --diff"
            if run.simulation
            else ("--check" if spec.check_mode else None),
            envvars={
                "PATH": path,
                "ANSIBLE_CONFIG": str(config),
                "ANSIBLE_NOCOLOR": "True",
                "ANSIBLE_HOST_KEY_CHECKING": os.environ.get("ANSIBLE_HOST_KEY_CHECKING", "True"),
            },
            settings={"pexpect_timeout": CANCEL_POLL_SECONDS},
            quiet=True,
            event_handler=self._on_event,
            # Given explicitly also because without one ansible-runner installs SIGTERM and
            # SIGINT handlers of its own, which would take them from the Celery worker.
            cancel_callback=self._should_cancel,
        )
        self.runner.config.env = _allowed_env(self.runner.config.env)
        self.thread = threading.Thread(target=self._run, name="drydock-ansible", daemon=True)
        self.thread.start()

    def _run(self) -> None:
        try:
            self.runner.run()
        except BaseException as exc:
            self.failure = exc

    def _on_event(self, event: dict[str, Any]) -> bool:
        self.events.put(event)
        return True

    def _should_cancel(self) -> bool:
        if not self.abandoned.is_set() and self.run.remaining() > 0:
            return False
        if not self.abandoned.is_set():
            self.timed_out = True
        self.abandoned.set()
        _kill_process_tree(_runner_children(self.data_dir))
        return True

    def stop(self) -> None:
        """Cancel the run if it is still going (a step failed, the caller stopped reading) and
        wait for ansible-runner to wind up."""
        if self.thread.is_alive():
            self.abandoned.set()
            self.thread.join(RUNNER_STOP_SECONDS)

    def steps(self) -> Iterator[StepResult]:
        transcript: list[str] = []
        current: tuple[str, datetime] | None = None
        while True:
            try:
                event = self.events.get(timeout=0.1)
            except queue.Empty:
                if self.thread.is_alive():
                    continue
                if self.events.empty():
                    break
                continue
            text = event.get("stdout")
            if isinstance(text, str) and text:
                transcript.append(text.replace("\r\n", "\n").strip("\n"))
            kind = event.get("event")
            data = event.get("event_data") or {}
            if kind in TASK_START_EVENTS:
                current = (_task_name(data), utcnow())
            elif kind in RESULT_EVENTS:
                step = _step_from_result(str(kind), data, current)
                current = None
                yield step
                if not step.ok:
                    return
        if self.failure is not None:
            raise ExecutorUnavailableError(f"ansible-runner failed: {self.failure}")
        if self.timed_out:
            name, started_at = current or (RUN_STEP_NAME, utcnow())
            yield StepResult(
                name=name,
                ok=False,
                started_at=started_at,
                finished_at=utcnow(),
                timed_out=True,
                error=self.run.timeout_message(),
            )
        elif self.runner.status != "successful":
            # The playbook failed outside any task: it did not parse, a role is missing, ...
            output = "\n".join(transcript)
            yield StepResult(
                name=RUN_STEP_NAME,
                ok=False,
                started_at=current[1] if current else utcnow(),
                finished_at=utcnow(),
                exit_code=self.runner.rc,
                stdout=output,
                error=_playbook_error(output, self.runner.rc),
            )


def _write_private_data(
    data_dir: Path, spec: AnsibleSpec, target: Target
) -> tuple[Path, Path, Path]:
    """The inventory, playbook and ansible.cfg files of one run (JSON, which is YAML)."""
    (data_dir / "project").mkdir()
    (data_dir / "inventory").mkdir()
    (data_dir / "local-tmp").mkdir()
    inventory = data_dir / "inventory" / "hosts.json"
    host_vars = json.loads(json.dumps(dict(target.connection), default=str))
    inventory.write_text(json.dumps({"all": {"hosts": {target.name: host_vars}}}, indent=2))
    plays = []
    for play in spec.plays:
        # "all" is the target: it is the inventory's only host (and, unlike the asset's name,
        # can never be read as a host pattern).
        written = {"name": play.get("name", "remediation"), "hosts": "all", **play}
        if spec.become:
            written.setdefault("become", True)
        plays.append(written)
    playbook = data_dir / "project" / "playbook.yml"
    playbook.write_text(json.dumps(plays, indent=2))
    config = data_dir / "ansible.cfg"
    config.write_text(
        "# Generated per run: no ansible.cfg of the worker host applies.\n"
        "[defaults]\n"
        f"local_tmp = {data_dir / 'local-tmp'}\n"
        "retry_files_enabled = False\n"
        "interpreter_python = auto_silent\n"
    )
    return inventory, playbook, config


def _drydock_vars(target: Target, run: RunContext) -> dict[str, str]:
    return {
        "drydock_run_id": str(run.run_id),
        "drydock_asset_id": str(target.asset_id),
        "drydock_asset_name": target.name,
        "drydock_asset_kind": target.kind,
        "drydock_tenant": target.tenant,
    }


def _allowed_env(env: Mapping[str, str]) -> dict[str, str]:
    return {
        name: value
        for name, value in env.items()
        if name in ENV_ALLOWED or name.startswith(ENV_ALLOWED_PREFIXES)
    }


def _task_name(data: Mapping[str, Any]) -> str:
    name = data.get("task") or data.get("task_action") or "task"
    return str(name)


def _step_from_result(
    kind: str, data: Mapping[str, Any], current: tuple[str, datetime] | None
) -> StepResult:
    result = data.get("res")
    res: Mapping[str, Any] = result if isinstance(result, Mapping) else {}
    stdout = _text(res.get("stdout"))
    stderr = _text(res.get("stderr"))
    rc = res.get("rc")
    exit_code = rc if isinstance(rc, int) and not isinstance(rc, bool) else None
    msg = _text(res.get("msg"))
    ignored = bool(data.get("ignore_errors"))
    error = None
    if kind == "runner_on_unreachable":
        error = f"host unreachable: {msg or 'no reason given'}"
    elif kind == "runner_on_failed" and not ignored:
        if exit_code:
            detail = "" if msg in ("", "non-zero return code") else f": {msg}"
            error = f"exit code {exit_code}{detail}"
        else:
            error = msg or "task failed"
    outputs = {**parse_outputs(stdout), **_summary(res)}
    diff = _diff_text(res.get("diff"))
    if diff:
        outputs["diff"] = diff
    if kind == "runner_on_failed" and ignored:
        outputs.update(failed=True, ignored=True)
    started_at = _timestamp(data.get("start")) or (current[1] if current else utcnow())
    return StepResult(
        name=_task_name(data),
        ok=error is None,
        started_at=started_at,
        finished_at=_timestamp(data.get("end")) or utcnow(),
        exit_code=exit_code,
        stdout=stdout,
        stderr=stderr,
        outputs=outputs,
        error=error,
    )


def _summary(res: Mapping[str, Any]) -> dict[str, Any]:
    """The JSON-safe part of a module result: ``changed`` and its scalar (or list of scalars)
    keys, such as ``msg``, ``rc``, ``path``, ``state``, ``cmd``, ``warnings``."""
    summary: dict[str, Any] = {"changed": bool(res.get("changed", False))}
    for key, value in res.items():
        if key in SUMMARY_SKIPPED_KEYS or key.startswith("_ansible"):
            continue
        if _is_scalar(value) or (isinstance(value, list) and all(map(_is_scalar, value))):
            summary[key] = value
    results = res.get("results")
    if isinstance(results, list):
        summary["items"] = len(results)
    return summary


def _diff_text(diff: Any) -> str:
    """What a task would change (``--diff``), as unified diffs; capped at MAX_DIFF_CHARS."""
    parts = diff if isinstance(diff, list) else [diff] if isinstance(diff, Mapping) else []
    texts: list[str] = []
    for part in parts:
        if not isinstance(part, Mapping):
            continue
        if isinstance(part.get("prepared"), str):
            texts.append(part["prepared"])
        before, after = part.get("before"), part.get("after")
        if isinstance(before, str) and isinstance(after, str):
            texts.extend(
                difflib.unified_diff(
                    before.splitlines(keepends=True),
                    after.splitlines(keepends=True),
                    fromfile=str(part.get("before_header") or "before"),
                    tofile=str(part.get("after_header") or "after"),
                )
            )
        elif before is not None or after is not None:
            texts.append(
                f"- {json.dumps(before, default=str)}\n+ {json.dumps(after, default=str)}\n"
            )
    return "".join(texts)[:MAX_DIFF_CHARS]


def _is_scalar(value: Any) -> bool:
    return value is None or isinstance(value, str | int | float | bool)


def _text(value: Any) -> str:
    if value is None:
        return ""
    if isinstance(value, bytes):
        return value.decode(errors="replace")
    return value if isinstance(value, str) else json.dumps(value, default=str)


def _timestamp(value: Any) -> datetime | None:
    if not isinstance(value, str):
        return None
    try:
        return datetime.fromisoformat(value)
    except ValueError:
        return None


def _playbook_error(output: str, rc: int | None) -> str:
    for line in output.splitlines():
        if line.startswith("[ERROR]:") or line.startswith("ERROR!"):
            reason = line.split(":", 1)[1].strip() if line.startswith("[") else line[6:].strip()
            return f"ansible-playbook failed (exit code {rc}): {reason}"
    return f"ansible-playbook failed (exit code {rc})"


# ---- stopping ansible-playbook and everything it started ---------------------------------------


def _runner_children(data_dir: Path) -> list[int]:
    """The ansible-playbook process(es) this worker process started for ``data_dir`` (their
    command line names files in it)."""
    parents = _parent_pids()
    marker = str(data_dir).encode()
    found = []
    for pid, parent in parents.items():
        if parent != os.getpid():
            continue
        with contextlib.suppress(OSError):
            if marker in Path(f"/proc/{pid}/cmdline").read_bytes():
                found.append(pid)
    return found


def _kill_process_tree(roots: list[int]) -> None:
    """SIGKILL ``roots`` and all their descendants. Each is stopped first, parents before
    children, so nothing forks or escapes to init while the tree is being walked."""
    stopped: set[int] = set()
    for _ in range(10):
        tree = _descendants(roots, _parent_pids()) | set(roots)
        new = tree - stopped
        if not new:
            break
        for pid in sorted(new):
            _signal(pid, signal.SIGSTOP)
        stopped |= new
    for pid in stopped:
        _signal(pid, signal.SIGKILL)


def _parent_pids() -> dict[int, int]:
    parents = {}
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            stat = (entry / "stat").read_text()
        except OSError:
            continue
        # Fields after the command name, which is in parentheses and may hold anything.
        fields = stat[stat.rfind(")") + 2 :].split()
        parents[int(entry.name)] = int(fields[1])
    return parents


def _descendants(roots: list[int], parents: Mapping[int, int]) -> set[int]:
    children: dict[int, list[int]] = {}
    for pid, parent in parents.items():
        children.setdefault(parent, []).append(pid)
    found: set[int] = set()
    pending = list(roots)
    while pending:
        for child in children.get(pending.pop(), []):
            if child not in found:
                found.add(child)
                pending.append(child)
    return found


def _signal(pid: int, signum: signal.Signals) -> None:
    with contextlib.suppress(ProcessLookupError, PermissionError):
        os.kill(pid, signum)

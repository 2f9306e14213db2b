"""Agent providers: the providers file and its checks, a workflows worker refusing to start on
an unusable provider, and agent steps in the real sandbox on the session's Docker engine — the
shipped scripted agent applying its prompt's diff, a third-party CLI under the ``command``
provider's contract, fallback to the second provider, tokens scrubbed — and an agent step in a
run, committed and pushed."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import tempfile
import time
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

from tasks.workflows.agent_step import AgentStepError, parse_events, run_agent_step
from tasks.workflows.definitions import WorkflowAgentStep
from tasks.workflows.providers import (
    SCRIPTED_AGENT,
    AgentProvider,
    ProviderConfigError,
    parse_providers,
    provider_problems,
)
from tests import test_workflow_project_runs as project_runs

IMAGE = project_runs.STEP_IMAGE
TOKEN = "sk-agent-token-4e1d0c9b7a"
# The project runs' git remotes and edge settings, shared.
remotes = project_runs.remotes
git_schemes = project_runs.git_schemes
# The busybox step image, tagged as IMAGE.
agent_image = project_runs.step_image
PATCH = """Make the greeting friendlier.
```diff
--- a/greeting.txt
+++ b/greeting.txt
@@ -1 +1 @@
-hello
+hello, world
```
"""


@pytest.fixture
def workspace() -> Iterator[Path]:
    parent = Path(tempfile.mkdtemp(prefix="drydock-agent-ws-"))
    parent.chmod(0o755)
    path = parent / "checkout"
    path.mkdir()
    git = ["git", "-C", str(path), "-c", "user.name=t", "-c", "user.email=t@t"]
    subprocess.run(["git", "init", "-q", str(path)], check=True)
    (path / "greeting.txt").write_text("hello\n")
    subprocess.run([*git, "add", "."], check=True)
    subprocess.run([*git, "commit", "-qm", "seed"], check=True)
    yield path
    subprocess.run(["rm", "-rf", str(parent)], check=True)


def cli_script(directory: Path, body: str, name: str = "agent") -> Path:
    """A provider CLI of the test's: answers --version, then runs ``body`` (busybox sh)."""
    path = directory / name
    path.write_text(f'#!/bin/sh\nif [ "${{1:-}}" = --version ]; then echo 1; exit 0; fi\n{body}\n')
    path.chmod(0o755)
    return path


def agent_step(**fields: Any) -> WorkflowAgentStep:
    values: dict[str, Any] = {
        "kind": "agent",
        "name": "edit",
        "provider": "scripted",
        "model": "patch",
        "prompt": "x",
        "timeout_seconds": 60,
        **fields,
    }
    return WorkflowAgentStep.model_validate(values)


def scripted(**fields: Any) -> AgentProvider:
    return AgentProvider.model_validate(
        {"name": "scripted", "kind": "scripted", "image": IMAGE, "models": ["patch"], **fields}
    )


# ---- the providers file and its checks ------------------------------------------------------


def test_every_problem_of_a_providers_file_is_named_at_once() -> None:
    with pytest.raises(ProviderConfigError) as refused:
        parse_providers(
            {
                "providers": [
                    {"name": "a", "kind": "command", "image": IMAGE, "models": ["m"]},
                    {"name": "b", "kind": "scripted", "image": IMAGE, "fallback": "nope"},
                    {"name": "c", "kind": "telepathy", "image": IMAGE},
                    {"name": "d", "kind": "command", "cli": "relative/cli", "image": IMAGE},
                    {"name": "e", "kind": "scripted", "image": IMAGE, "fallback": "f"},
                    {"name": "f", "kind": "scripted", "image": IMAGE, "fallback": "e"},
                ]
            },
            "providers.yaml",
        )
    message = str(refused.value)
    assert "provider a: a command provider names its cli" in message
    assert "provider b: fallback 'nope' is no provider" in message
    assert "provider c: kind" in message
    assert "provider d: cli 'relative/cli' is not an absolute path" in message
    assert "fallbacks loop" in message
    with pytest.raises(ProviderConfigError, match="a list under 'providers'"):
        parse_providers(["not", "a", "mapping"], "p.yaml")


def test_provider_checks_name_a_missing_broken_or_tokenless_cli(tmp_path: Path) -> None:
    broken = tmp_path / "broken"
    broken.write_text("#!/bin/sh\necho 'no licence' >&2\nexit 3\n")
    broken.chmod(0o755)
    unexecutable = tmp_path / "plain"
    unexecutable.write_text("#!/bin/sh\n")
    good = cli_script(tmp_path, "exit 0", "good")
    providers = parse_providers(
        {
            "providers": [
                {"name": "gone", "kind": "command", "cli": "/nonexistent/agent", "image": IMAGE,
                 "models": ["m"], "token_env": "T_GONE"},
                {"name": "plain", "kind": "command", "cli": str(unexecutable), "image": IMAGE,
                 "models": ["m"], "token_required": False},
                {"name": "broken", "kind": "command", "cli": str(broken), "image": IMAGE,
                 "models": ["m"], "token_required": False},
                {"name": "tokenless", "kind": "command", "cli": str(good), "image": IMAGE,
                 "models": ["m"], "token_env": "AGENT_TOKEN_UNSET"},
                {"name": "modelless", "kind": "scripted", "image": IMAGE},
                {"name": "fine", "kind": "command", "cli": str(good), "image": IMAGE,
                 "models": ["m"], "token_env": "AGENT_TOKEN_SET"},
                {"name": "builtin", "kind": "scripted", "image": IMAGE, "models": ["patch"]},
            ]
        },
        "p.yaml",
    )  # fmt: skip
    problems = provider_problems(providers, environ={"AGENT_TOKEN_SET": "x"})
    assert problems == [
        "workflow agent provider gone: its CLI /nonexistent/agent does not exist",
        "workflow agent provider gone: its token T_GONE is not set",
        f"workflow agent provider plain: its CLI {unexecutable} is not executable",
        f"workflow agent provider broken: its CLI {broken} --version exited 3: no licence",
        "workflow agent provider tokenless: its token AGENT_TOKEN_UNSET is not set",
        "workflow agent provider modelless: it names no model",
    ]


def test_a_workflows_worker_refuses_to_start_with_an_unusable_provider(tmp_path: Path) -> None:
    providers = tmp_path / "providers.yaml"
    providers.write_text(
        "providers:\n"
        "  - {name: claude, kind: command, cli: /opt/none/claude, image: " + IMAGE + ",\n"
        "     models: [sonnet], token_env: DRYDOCK_TEST_NO_SUCH_TOKEN}\n"
    )
    env = {**os.environ, "DRYDOCK_WORKFLOW_AGENT_PROVIDERS_FILE": str(providers)}
    env.pop("DRYDOCK_TEST_NO_SUCH_TOKEN", None)
    started = time.monotonic()
    done = subprocess.run(
        [sys.executable, "-m", "drydock.cli", "worker", "-Q", "workflows", "-n", "refused@test"],
        env=env,
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert done.returncode != 0
    said = [line for line in done.stderr.splitlines() if line.strip()]
    assert len(said) == 1, done.stderr
    assert "workflow agent provider claude: its CLI /opt/none/claude does not exist" in said[0]
    assert "its token DRYDOCK_TEST_NO_SUCH_TOKEN is not set" in said[0]
    assert "celery@" not in done.stdout + done.stderr  # Celery never started
    assert time.monotonic() - started < 30
    # Another queue's worker does not need the providers: the same file does not stop it.
    from tasks.workflows.providers import check_worker_providers

    check_worker_providers(["builds"])


# ---- agent steps in the sandbox -------------------------------------------------------------


def test_the_scripted_agent_applies_its_prompts_diff_and_reports_usage(
    agent_image: str, workspace: Path
) -> None:
    outcome = run_agent_step(
        agent_step(),
        prompt=PATCH,
        providers={"scripted": scripted()},
        workspace=workspace,
        run_id=uuid.uuid4(),
        tokens={},
    )
    assert outcome.ok, (outcome.outcome.stderr, outcome.events)
    assert (workspace / "greeting.txt").read_text() == "hello, world\n"
    types = [event["type"] for event in outcome.events]
    assert types == ["start", "file", "usage", "result"]
    assert outcome.events[1]["path"] == "greeting.txt"
    diff = PATCH.split("```diff\n", 1)[1].split("```", 1)[0]
    assert outcome.usage == {"input_tokens": len(PATCH) // 4, "output_tokens": len(diff) // 4}
    meta = outcome.metadata()
    assert meta["provider"] == "scripted" and meta["model"] == "patch"
    assert meta["exit_code"] == 0 and meta["duration_seconds"] > 0
    assert SCRIPTED_AGENT.exists()


def test_a_diff_that_does_not_apply_fails_the_agent(agent_image: str, workspace: Path) -> None:
    outcome = run_agent_step(
        agent_step(),
        prompt=PATCH.replace("-hello\n", "-goodbye\n"),
        providers={"scripted": scripted()},
        workspace=workspace,
        run_id=uuid.uuid4(),
        tokens={},
    )
    assert not outcome.ok and outcome.outcome.exit_code == 1
    assert outcome.events[-1]["status"] == "error"
    assert (workspace / "greeting.txt").read_text() == "hello\n"


def test_a_failing_provider_falls_back_on_a_reset_workspace_with_tokens_scrubbed(
    agent_image: str, workspace: Path, tmp_path: Path
) -> None:
    # A third-party CLI under the command provider's contract: it reports the environment it
    # got, leaves a file behind and fails.
    flaky = cli_script(
        tmp_path,
        'echo "{\\"type\\":\\"env\\",\\"model\\":\\"$DRYDOCK_AGENT_MODEL\\",'
        '\\"prompt\\":\\"$DRYDOCK_AGENT_PROMPT_FILE\\",\\"ws\\":\\"$DRYDOCK_AGENT_WORKSPACE\\",'
        '\\"pwd\\":\\"$(pwd)\\",\\"argv\\":\\"$*\\"}"\n'
        'echo "token is $DRYDOCK_AGENT_TOKEN"\n'
        "echo junk > junk.txt\n"
        "exit 2",
    )
    providers = {
        "flaky": AgentProvider.model_validate(
            {
                "name": "flaky",
                "kind": "command",
                "cli": str(flaky),
                "image": IMAGE,
                "models": ["big"],
                "args": ["--model", "{model}", "--prompt", "{prompt_file}"],
                "token_env": "FLAKY_TOKEN",
                "fallback": "scripted",
            }
        ),
        "scripted": scripted(),
    }
    resets: list[bool] = []

    def reset() -> None:
        from adapters.git_workspace import reset_workspace

        resets.append((workspace / "junk.txt").exists())
        reset_workspace(workspace)

    outcome = run_agent_step(
        agent_step(provider="flaky", model="big"),
        prompt=PATCH,
        providers=providers,
        workspace=workspace,
        run_id=uuid.uuid4(),
        tokens={"flaky": TOKEN},
        reset_workspace=reset,
    )
    assert outcome.ok and outcome.provider == "scripted" and outcome.model == "patch"
    assert [(a.provider, a.exit_code) for a in outcome.attempts] == [("flaky", 2), ("scripted", 0)]
    assert resets == [True] and not (workspace / "junk.txt").exists()
    assert (workspace / "greeting.txt").read_text() == "hello, world\n"

    # What the first CLI got, and that its token never reached what is kept.
    first = run_agent_step(
        agent_step(provider="flaky", model="big"),
        prompt=PATCH,
        providers={"flaky": providers["flaky"].model_copy(update={"fallback": None})},
        workspace=workspace,
        run_id=uuid.uuid4(),
        tokens={"flaky": TOKEN},
    )
    env_event = first.events[0]
    assert env_event == {
        "type": "env",
        "model": "big",
        "prompt": "/opt/drydock/prompt/prompt.txt",
        "ws": "/workspace",
        "pwd": "/workspace",
        "argv": "--model big --prompt /opt/drydock/prompt/prompt.txt",
    }
    assert first.events[1] == {"type": "text", "text": "token is [REDACTED]"}
    assert TOKEN not in json.dumps(first.events) + first.outcome.stdout + first.outcome.stderr


def test_an_unknown_provider_or_model_is_named() -> None:
    with pytest.raises(AgentStepError, match="no agent provider 'ghost' here; configured: scr"):
        run_agent_step(
            agent_step(provider="ghost"), prompt="x", providers={"scripted": scripted()},
            workspace=Path("/tmp"), run_id="r", tokens={},
        )  # fmt: skip
    with pytest.raises(AgentStepError, match="serves no model 'gpt'"):
        run_agent_step(
            agent_step(model="gpt"), prompt="x", providers={"scripted": scripted()},
            workspace=Path("/tmp"), run_id="r", tokens={},
        )  # fmt: skip


def test_the_stream_is_parsed_as_json_lines_bounded() -> None:
    events, usage = parse_events(
        '{"type":"usage","input_tokens":3,"output_tokens":4}\nplain words\n[1]\n'
        '{"type":"usage","input_tokens":2,"output_tokens":true}\n'
    )
    assert usage == {"input_tokens": 5, "output_tokens": 4}
    assert events[1] == {"type": "text", "text": "plain words"}
    assert events[2] == {"type": "text", "text": "[1]"}
    many, _ = parse_events("x\n" * 5000)
    assert len(many) == 2000


# ---- in a run -------------------------------------------------------------------------------


@pytest.mark.fleet
def test_an_agent_step_in_a_run_is_committed_and_pushed(
    fleet: Any,
    worker_factory: Callable[..., Any],
    agent_image: str,
    git_schemes: None,
    tmp_path: Path,
    remotes: Any,
) -> None:
    from tests.test_workflow_project_runs import clone_back, make_project, start
    from tests.test_workflow_runs import define, steps, wait_for_run
    from workers.app import app as celery

    origin, _ = make_project(remotes, tmp_path)
    providers = tmp_path / "providers.json"
    providers.write_text(
        json.dumps(
            {
                "providers": [
                    {"name": "scripted", "kind": "scripted", "image": IMAGE, "models": ["patch"]}
                ]
            }
        )
    )
    env = {
        "DRYDOCK_GIT_ALLOWED_SCHEMES": '["git", "file"]',
        "DRYDOCK_WORKFLOW_AGENT_PROVIDERS_FILE": str(providers),
    }
    celery.control.cancel_consumer("workflows", destination=[fleet.hostname], reply=True)
    try:
        worker_factory("wf-agent", queues="workflows", concurrency=2, env=env)
        prompt = (
            "Run {{ run.id }} of {{ workflow.name }}: add a line to the README.\n"
            "```diff\n--- a/README\n+++ b/README\n@@ -1 +1,2 @@\n"
            " hello again\n+edited by an agent\n```\n"
        )
        define(
            "agentic",
            [{"name": "edit", "kind": "agent", "provider": "scripted", "model": "patch",
              "prompt": prompt, "timeout_seconds": 60}],
        )  # fmt: skip
        run_id = start("agentic")
        run = wait_for_run(run_id, "succeeded", "failed", timeout=120)
    finally:
        celery.control.add_consumer("workflows", destination=[fleet.hostname], reply=True)
    assert run["state"] == "succeeded", (run["error"], run["steps"])
    edit = steps(run)["edit"]
    assert edit["result"]["agent"]["provider"] == "scripted"
    assert [e["type"] for e in edit["result"]["log"]] == ["start", "file", "usage", "result"]
    checkout = clone_back(origin, f"drydock/runs/{run_id}", tmp_path)
    assert (checkout / "README").read_text() == "hello again\nedited by an agent\n"
    from tasks.workflows.run_provenance import run_provenance

    log = run_provenance(run_id).step_logs["edit"]
    assert log["agent"]["provider"] == "scripted" and log["agent"]["usage"]["input_tokens"] > 0

"""A workflow's ``agent`` step: its provider's CLI run in the step's sandbox on the workspace.

The sandbox is a container step's (``container_step``: the workspace at /workspace as its
owner, read-only root, no network unless the step asks and the runner grants it, limits, the
step's timeout, cancel), of the provider's image, with two read-only mounts besides: the CLI at
``/opt/drydock/agent/<name>`` and the rendered prompt at ``/opt/drydock/prompt/prompt.txt``. The
token travels as a secret (``DRYDOCK_AGENT_TOKEN``), so it is scrubbed from everything kept.

The CLI's stdout is read as JSON lines (a line that is no JSON object is kept as a ``text``
event) and becomes the step's log, bounded; ``usage`` events are summed into the step's token
usage. A provider that fails (non-zero exit, timeout, a sandbox that cannot start) hands over to
its ``fallback``, on the workspace put back as the step found it; a cancelled step does not.
"""

from __future__ import annotations

import json
import tempfile
import threading
import uuid
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from adapters.container_run import BindMount
from tasks.workflows.container_step import (
    ContainerStepError,
    StepOutcome,
    run_container_step,
)
from tasks.workflows.definitions import (
    _PROMPTS,
    WorkflowAgentStep,
    WorkflowContainerStep,
    WorkflowSecretRef,
)
from tasks.workflows.providers import AgentProvider, ProviderConfigError

AGENT_DIR = "/opt/drydock/agent"
PROMPT_DIR = "/opt/drydock/prompt"
PROMPT_FILE = f"{PROMPT_DIR}/prompt.txt"
TOKEN_SECRET = "drydock-agent-token"
MAX_EVENTS = 2000
MAX_OUTPUT_BYTES = 256 * 1024


class AgentStepError(ContainerStepError):
    """The step names a provider or a model this fleet does not have."""


@dataclass(frozen=True)
class AgentAttempt:
    provider: str
    model: str
    exit_code: int | None
    duration_seconds: float
    error: str | None
    usage: dict[str, int] | None

    def as_dict(self) -> dict[str, Any]:
        return {
            "provider": self.provider,
            "model": self.model,
            "exit_code": self.exit_code,
            "duration_seconds": round(self.duration_seconds, 3),
            "error": self.error,
            "usage": self.usage,
        }


@dataclass(frozen=True)
class AgentOutcome:
    outcome: StepOutcome
    provider: str
    model: str
    events: list[dict[str, Any]]
    usage: dict[str, int] | None
    attempts: list[AgentAttempt] = field(default_factory=list)
    token_values: tuple[str, ...] = ()

    @property
    def ok(self) -> bool:
        return self.outcome.ok

    def metadata(self) -> dict[str, Any]:
        """What provenance records of the agent (no event text)."""
        return {
            "provider": self.provider,
            "model": self.model,
            "duration_seconds": round(self.outcome.duration_seconds, 3),
            "exit_code": self.outcome.exit_code,
            "usage": self.usage,
            "events": len(self.events),
            "attempts": [attempt.as_dict() for attempt in self.attempts],
        }


def render_prompt(step: WorkflowAgentStep, variables: Mapping[str, Any]) -> str:
    """The step's prompt template rendered (sandboxed Jinja2, every variable must exist)."""
    return _PROMPTS.from_string(step.prompt).render(**variables)


def parse_events(text: str) -> tuple[list[dict[str, Any]], dict[str, int] | None]:
    """The JSON-lines stream as events (bounded) and the token usage they report."""
    events: list[dict[str, Any]] = []
    usage: dict[str, int] | None = None
    for line in text.splitlines():
        if not line.strip():
            continue
        try:
            event = json.loads(line)
        except ValueError:
            event = None
        if not isinstance(event, dict):
            event = {"type": "text", "text": line[:4000]}
        if event.get("type") == "usage":
            usage = usage or {"input_tokens": 0, "output_tokens": 0}
            for key in ("input_tokens", "output_tokens"):
                value = event.get(key)
                if isinstance(value, int) and not isinstance(value, bool):
                    usage[key] += value
        if len(events) < MAX_EVENTS:
            events.append(event)
    return events, usage


def provider_chain(
    step: WorkflowAgentStep, providers: Mapping[str, AgentProvider]
) -> list[tuple[AgentProvider, str]]:
    """(provider, model) in the order they are tried: the step's, then its fallbacks."""
    if step.provider not in providers:
        known = ", ".join(sorted(providers)) or "none (DRYDOCK_WORKFLOW_AGENT_PROVIDERS_FILE)"
        raise AgentStepError(
            f"step {step.name!r}: no agent provider {step.provider!r} here; configured: {known}"
        )
    first = providers[step.provider]
    if step.model not in first.models:
        raise AgentStepError(
            f"step {step.name!r}: provider {first.name} serves no model {step.model!r} "
            f"(it serves {', '.join(first.models)})"
        )
    chain = [(first, step.model)]
    current = first.fallback
    while current is not None and current in providers and len(chain) < len(providers):
        provider = providers[current]
        model = step.model if step.model in provider.models else provider.models[0]
        chain.append((provider, model))
        current = provider.fallback
    return chain


def run_agent_step(
    step: WorkflowAgentStep,
    *,
    prompt: str,
    providers: Mapping[str, AgentProvider],
    workspace: Path,
    run_id: uuid.UUID | str,
    tokens: Mapping[str, str],
    cancel: threading.Event | None = None,
    engine_address: str | None = None,
    network: str | None = None,
    reset_workspace: Callable[[], None] | None = None,
) -> AgentOutcome:
    """Run the step's provider (and its fallbacks, see the module's doc). ``tokens``: each
    provider's token by provider name (resolved by the caller). The last outcome, with every
    provider tried in ``attempts``."""
    chain = provider_chain(step, providers)
    attempts: list[AgentAttempt] = []
    last: AgentOutcome | None = None
    with tempfile.TemporaryDirectory(prefix="drydock-agent-prompt-") as directory:
        prompt_dir = Path(directory)
        prompt_dir.chmod(0o755)
        (prompt_dir / "prompt.txt").write_text(prompt, encoding="utf-8")
        (prompt_dir / "prompt.txt").chmod(0o644)
        for index, (provider, model) in enumerate(chain):
            if index and reset_workspace is not None:
                reset_workspace()
            token = tokens.get(provider.name)
            try:
                outcome = _run_provider(
                    step, provider, model, workspace, prompt_dir, run_id, token,
                    cancel=cancel, engine_address=engine_address, network=network,
                )  # fmt: skip
            except ContainerStepError as exc:
                attempts.append(AgentAttempt(provider.name, model, None, 0.0, str(exc), None))
                if index == len(chain) - 1:
                    raise
                continue
            events, usage = parse_events(outcome.stdout)
            attempts.append(
                AgentAttempt(
                    provider.name,
                    model,
                    outcome.exit_code,
                    outcome.duration_seconds,
                    outcome.error,
                    usage,
                )
            )
            last = AgentOutcome(
                outcome, provider.name, model, events, usage, list(attempts),
                (token,) if token else (),
            )  # fmt: skip
            if outcome.ok or outcome.cancelled:
                return last
    if last is None:
        raise ProviderConfigError(f"step {step.name!r}: no provider could run")
    return last


def _run_provider(
    step: WorkflowAgentStep,
    provider: AgentProvider,
    model: str,
    workspace: Path,
    prompt_dir: Path,
    run_id: uuid.UUID | str,
    token: str | None,
    *,
    cancel: threading.Event | None,
    engine_address: str | None,
    network: str | None,
) -> StepOutcome:
    cli = provider.cli_path
    cli_in_sandbox = f"{AGENT_DIR}/{cli.name}"
    env: dict[str, str | WorkflowSecretRef] = {
        **provider.env,
        "DRYDOCK_AGENT_PROMPT_FILE": PROMPT_FILE,
        "DRYDOCK_AGENT_MODEL": model,
        "DRYDOCK_AGENT_WORKSPACE": "/workspace",
    }
    secrets: dict[str, str] = {}
    if token:
        env["DRYDOCK_AGENT_TOKEN"] = WorkflowSecretRef(secret=TOKEN_SECRET)
        secrets[TOKEN_SECRET] = token
    sandbox = WorkflowContainerStep.model_construct(
        kind="container",
        name=step.name,
        needs=[],
        timeout_seconds=step.timeout_seconds,
        retries=0,
        description="",
        image=provider.image,
        command=provider.argv(cli_in_sandbox, model, PROMPT_FILE, "/workspace"),
        env=env,
        network=False,
    )
    return run_container_step(
        sandbox,
        workspace=workspace,
        env_secrets=secrets,
        run_id=run_id,
        step_name=step.name,
        cancel=cancel,
        engine_address=engine_address,
        network=network,
        max_output_bytes=MAX_OUTPUT_BYTES,
        extra_binds=[
            BindMount(cli.resolve(), cli_in_sandbox, read_only=True),
            BindMount(prompt_dir, PROMPT_DIR, read_only=True),
        ],
    )

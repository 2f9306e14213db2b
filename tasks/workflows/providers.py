"""Agent providers: what a workflow's ``agent`` step names, configured per fleet.

A provider is a CLI on the worker's host, run inside the step's sandbox (a container of the
provider's ``image``, the CLI bind-mounted read-only, the workspace at /workspace) under the
contract ``agent_cli/drydock-scripted-agent`` documents: the prompt in the file
``DRYDOCK_AGENT_PROMPT_FILE``, ``DRYDOCK_AGENT_MODEL``, ``DRYDOCK_AGENT_WORKSPACE``, the token (if
any) in ``DRYDOCK_AGENT_TOKEN``; JSON lines on stdout; exit 0 on success.

Two kinds: ``scripted`` is Drydock's own deterministic CLI (it applies the diff written in the
prompt; no token, runs offline), and ``command`` runs any third-party agent CLI with an argv
template (``{model}``, ``{prompt_file}``, ``{workspace}`` filled in). The token comes from the
worker's environment (``token_env``) or the tenant's secret directory (``token_secret``).

The file (DRYDOCK_WORKFLOW_AGENT_PROVIDERS_FILE, YAML or JSON)::

    providers:
      - name: scripted
        kind: scripted
        image: registry.example.com/tools/busybox:1
        models: [patch]
      - name: claude
        kind: command
        cli: /usr/local/bin/claude
        image: registry.example.com/agents/claude:1
        args: ["-p", "--model", "{model}", "--output-format", "stream-json",
               "--prompt-file", "{prompt_file}"]
        models: [claude-sonnet]
        token_env: ANTHROPIC_API_KEY
        fallback: scripted

A worker serving ``workflows`` checks every provider when it starts (:func:`check_worker_providers`)
and refuses to start, in one line, when one is unusable.
"""

from __future__ import annotations

import json
import os
import subprocess
from collections.abc import Mapping, Sequence
from functools import lru_cache
from pathlib import Path
from typing import Annotated, Any, Literal

import yaml
from pydantic import BaseModel, ConfigDict, Field, StringConstraints, ValidationError

from kernel.errors import DrydockError
from kernel.settings import Settings, get_settings
from tasks.workflows.definitions import PROVIDER_PATTERN

SCRIPTED_AGENT = Path(__file__).with_name("agent_cli") / "drydock-scripted-agent"
ARG_PLACEHOLDERS = ("{model}", "{prompt_file}", "{workspace}")


class ProviderConfigError(DrydockError):
    """The providers file cannot be read, or a provider in it cannot be used."""


class AgentProvider(BaseModel):
    model_config = ConfigDict(extra="forbid")

    name: Annotated[str, StringConstraints(pattern=f"^{PROVIDER_PATTERN}$")]
    kind: Literal["scripted", "command"]
    image: str = Field(min_length=1, max_length=512, description="The sandbox image it runs in.")
    cli: str | None = Field(
        None, description="Absolute path of its CLI on the worker's host (scripted: built in)."
    )
    args: list[Annotated[str, StringConstraints(max_length=4096)]] = Field(
        default_factory=list, max_length=64, description="argv after the CLI (command kind)."
    )
    models: list[Annotated[str, StringConstraints(min_length=1, max_length=200)]] = Field(
        default_factory=list, max_length=50
    )
    token_env: str | None = Field(None, pattern=r"^[A-Z_][A-Z0-9_]{0,99}$")
    token_secret: str | None = Field(None, pattern=r"^[a-z0-9][a-z0-9_.-]{0,99}$")
    token_required: bool | None = None
    env: dict[str, Annotated[str, StringConstraints(max_length=4096)]] = Field(
        default_factory=dict, max_length=50
    )
    fallback: str | None = Field(None, pattern=f"^{PROVIDER_PATTERN}$")

    @property
    def cli_path(self) -> Path:
        return Path(self.cli) if self.cli else SCRIPTED_AGENT

    @property
    def needs_token(self) -> bool:
        if self.token_required is not None:
            return self.token_required
        return self.kind == "command"

    def argv(self, cli_in_sandbox: str, model: str, prompt_file: str, workspace: str) -> list[str]:
        filled = {"{model}": model, "{prompt_file}": prompt_file, "{workspace}": workspace}
        out = [cli_in_sandbox]
        for arg in self.args:
            for placeholder, value in filled.items():
                arg = arg.replace(placeholder, value)
            out.append(arg)
        return out


def parse_providers(document: Any, source: str) -> dict[str, AgentProvider]:
    """The providers of a parsed file; ProviderConfigError naming every problem at once."""
    if not isinstance(document, Mapping) or not isinstance(document.get("providers"), list):
        raise ProviderConfigError(f"{source}: expected a mapping with a list under 'providers'")
    problems: list[str] = []
    providers: dict[str, AgentProvider] = {}
    for index, entry in enumerate(document["providers"]):
        label = entry.get("name") if isinstance(entry, Mapping) else None
        where = f"provider {label}" if isinstance(label, str) else f"providers.{index}"
        try:
            provider = AgentProvider.model_validate(entry)
        except ValidationError as exc:
            for error in exc.errors(include_url=False, include_input=False):
                loc = ".".join(str(p) for p in error["loc"]) or "(entry)"
                problems.append(f"{where}: {loc}: {error['msg']}")
            continue
        if provider.name in providers:
            problems.append(f"{where}: a second provider of that name")
        if provider.kind == "command" and not provider.cli:
            problems.append(f"{where}: a command provider names its cli")
        if provider.cli and not os.path.isabs(provider.cli):
            problems.append(f"{where}: cli {provider.cli!r} is not an absolute path")
        if provider.token_env and provider.token_secret:
            problems.append(f"{where}: token_env or token_secret, not both")
        providers[provider.name] = provider
    for provider in providers.values():
        if provider.fallback is not None and provider.fallback not in providers:
            problems.append(
                f"provider {provider.name}: fallback {provider.fallback!r} is no provider"
            )
    for provider in providers.values():
        seen = [provider.name]
        current = provider.fallback
        while current is not None and current in providers:
            if current in seen:
                problems.append(f"provider {provider.name}: fallbacks loop ({' -> '.join(seen)})")
                break
            seen.append(current)
            current = providers[current].fallback
    if problems:
        raise ProviderConfigError(f"{source}: " + "; ".join(dict.fromkeys(problems)))
    return providers


def load_providers(path: Path) -> dict[str, AgentProvider]:
    try:
        text = path.read_text(encoding="utf-8")
    except OSError as exc:
        raise ProviderConfigError(f"{path}: cannot be read ({exc.strerror})") from None
    try:
        document = json.loads(text) if path.suffix == ".json" else yaml.safe_load(text)
    except (ValueError, yaml.YAMLError) as exc:
        raise ProviderConfigError(f"{path}: not valid {path.suffix or 'YAML'}: {exc}") from None
    return parse_providers(document, str(path))


@lru_cache(maxsize=4)
def _cached(path: str, mtime: float) -> dict[str, AgentProvider]:
    return load_providers(Path(path))


def configured_providers(settings: Settings | None = None) -> dict[str, AgentProvider]:
    """The providers DRYDOCK_WORKFLOW_AGENT_PROVIDERS_FILE names (none when unset)."""
    path = (settings or get_settings()).workflow_agent_providers_file
    if not path:
        return {}
    try:
        mtime = os.stat(path).st_mtime
    except OSError as exc:
        raise ProviderConfigError(f"{path}: cannot be read ({exc.strerror})") from None
    return _cached(path, mtime)


def provider_problems(
    providers: Mapping[str, AgentProvider],
    *,
    environ: Mapping[str, str] | None = None,
    secrets_dir: str | None = None,
    timeout_seconds: float = 10.0,
) -> list[str]:
    """Why each provider cannot be used here: its CLI missing, not executable or not running
    (``--version`` must exit 0), its token missing, no model named. Empty: all usable."""
    env = os.environ if environ is None else environ
    problems: list[str] = []
    for provider in providers.values():
        where = f"workflow agent provider {provider.name}"
        cli = provider.cli_path
        if not cli.is_file():
            problems.append(f"{where}: its CLI {cli} does not exist")
        elif not os.access(cli, os.X_OK):
            problems.append(f"{where}: its CLI {cli} is not executable")
        else:
            problem = _runs(cli, timeout_seconds)
            if problem:
                problems.append(f"{where}: its CLI {cli} {problem}")
        if not provider.models:
            problems.append(f"{where}: it names no model")
        if provider.needs_token:
            if provider.token_env and not env.get(provider.token_env):
                problems.append(f"{where}: its token {provider.token_env} is not set")
            elif provider.token_secret and not secrets_dir:
                problems.append(
                    f"{where}: its token is secret {provider.token_secret!r} and "
                    "DRYDOCK_WORKFLOW_SECRETS_DIR is not set"
                )
            elif not provider.token_env and not provider.token_secret:
                problems.append(f"{where}: it needs a token: set token_env or token_secret")
    return problems


def _runs(cli: Path, timeout_seconds: float) -> str | None:
    try:
        done = subprocess.run(
            [str(cli), "--version"],
            capture_output=True,
            timeout=timeout_seconds,
            stdin=subprocess.DEVNULL,
            check=False,
        )
    except subprocess.TimeoutExpired:
        return f"did not answer --version within {timeout_seconds:g} s"
    except OSError as exc:
        return f"cannot be run ({exc.strerror})"
    if done.returncode != 0:
        said = (done.stderr or done.stdout).decode(errors="replace").strip().splitlines()
        return f"--version exited {done.returncode}" + (f": {said[-1][:200]}" if said else "")
    return None


def check_worker_providers(queues: Sequence[str], settings: Settings | None = None) -> None:
    """At a worker's start: when it serves ``workflows``, every configured provider must be
    usable. ProviderConfigError, one line, naming each that is not."""
    if "workflows" not in queues:
        return
    settings = settings or get_settings()
    if not settings.workflow_agent_providers_file:
        return
    providers = load_providers(Path(settings.workflow_agent_providers_file))
    problems = provider_problems(providers, secrets_dir=settings.workflow_secrets_dir)
    if problems:
        raise ProviderConfigError(
            "refusing to serve workflows: " + "; ".join(problems) + " (see "
            "DRYDOCK_WORKFLOW_AGENT_PROVIDERS_FILE)"
        )

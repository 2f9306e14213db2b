"""The compose stack (deploy/compose.yaml), as `docker compose config` resolves it.

No image can be pulled here, so the stack is not brought up; what is checked is what an
operator relies on: it validates, every queue has its own worker service, state survives
restarts, the schema is migrated once before anything else, every long-running service has a
health check, secrets come only from the environment, and every command the stack runs is one
the `drydock` CLI accepts.
"""

from __future__ import annotations

import os
import re
import shutil
import subprocess
from pathlib import Path
from typing import Any

import pytest
import typer
import typer.main
import yaml
from typer.core import TyperGroup

from drydock.cli import app
from kernel.settings import DEFAULT_TIME_LIMITS
from kernel.topology import WORK_QUEUES, parse_queue_list
from tests.conftest import _missing

COMPOSE_FILE = Path(__file__).parent.parent / "deploy" / "compose.yaml"
# Values no real deployment would use, so finding one in the file proves it was inlined.
SECRETS = {
    "REDIS_PASSWORD": "redis-pw-7f3a",
    "POSTGRES_PASSWORD": "pg-pw-91bc",
    "DRYDOCK_SECRET_KEY": "fernet-key-55d1",
    "DRYDOCK_REMEDIATION_SIGNING_KEY": "signing-key-a0e2",
    "FLOWER_BASIC_AUTH": "operator:flower-pw-3c44",
}


def compose_command() -> list[str]:
    docker = shutil.which("docker")
    if (
        docker
        and subprocess.run([docker, "compose", "version"], capture_output=True).returncode == 0
    ):
        return [docker, "compose"]
    legacy = shutil.which("docker-compose")
    if legacy:
        return [legacy]
    _missing("docker compose (the compose plugin or docker-compose)")
    raise AssertionError("unreachable")


def compose_config(env: dict[str, str]) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [*compose_command(), "-f", str(COMPOSE_FILE), "config"],
        env={"PATH": os.environ["PATH"], "HOME": os.environ.get("HOME", "/root"), **env},
        capture_output=True,
        text=True,
        timeout=60,
    )


@pytest.fixture(scope="module")
def stack() -> dict[str, Any]:
    result = compose_config(SECRETS)
    assert result.returncode == 0, result.stderr
    services: dict[str, Any] = yaml.safe_load(result.stdout)["services"]
    return services


def drydock_services(stack: dict[str, Any]) -> dict[str, Any]:
    return {name: s for name, s in stack.items() if s.get("image", "").startswith("drydock")}


def seconds(duration: str) -> float:
    """A compose duration (``62m``, ``1h2m0s``, ``30s``) in seconds."""
    units = {"h": 3600, "m": 60, "s": 1, "ms": 0.001}
    parts = re.findall(r"(\d+(?:\.\d+)?)(ms|h|m|s)", duration)
    assert parts and "".join(n + u for n, u in parts) == duration, duration
    return sum(float(n) * units[u] for n, u in parts)


def test_every_queue_has_its_own_worker_service_with_its_own_concurrency(
    stack: dict[str, Any],
) -> None:
    workers = {n: s for n, s in stack.items() if s.get("command", [None])[0] == "worker"}
    served: dict[str, str] = {}
    for name, service in workers.items():
        command = service["command"]
        queues = parse_queue_list(command[command.index("--queues") + 1])
        assert len(queues) == 1, f"{name} serves {queues}: one queue per service"
        assert "--concurrency" in command, f"{name} sets no concurrency"
        served[queues[0]] = name
    assert sorted(served) == sorted(WORK_QUEUES)  # and none serves dead_letter


def test_a_stopped_worker_gets_longer_than_its_queue_s_longest_job(stack: dict[str, Any]) -> None:
    for queue in WORK_QUEUES:
        service = stack[f"worker-{queue}"]
        grace = seconds(service["stop_grace_period"])
        assert grace > DEFAULT_TIME_LIMITS[queue], (queue, grace)


def test_queued_jobs_and_outcomes_survive_restarts(stack: dict[str, Any]) -> None:
    redis = stack["redis"]
    server = " ".join(redis["command"])
    assert "--appendonly yes" in server
    assert any(_target(v) == "/data" for v in _volumes(redis))
    postgres = stack["postgres"]
    assert any(_target(v) == "/var/lib/postgresql/data" for v in _volumes(postgres))
    assert any(_target(v) == "/var/lib/registry" for v in _volumes(stack["registry"]))


def _volumes(service: dict[str, Any]) -> list[Any]:
    return list(service.get("volumes", []))


def _target(volume: Any) -> str:
    if isinstance(volume, dict):
        return str(volume["target"])
    return str(volume).split(":")[1]


def test_the_schema_is_migrated_once_before_any_role_starts(stack: dict[str, Any]) -> None:
    migrate = stack["migrate"]
    assert migrate["command"] == ["migrate"]
    assert migrate["restart"] == "no"
    assert migrate["depends_on"]["postgres"]["condition"] == "service_healthy"
    for name, service in drydock_services(stack).items():
        if name == "migrate":
            continue
        condition = service["depends_on"]["migrate"]["condition"]
        assert condition == "service_completed_successfully", name


def test_every_long_running_service_has_a_health_check(stack: dict[str, Any]) -> None:
    for name, service in stack.items():
        if name == "migrate":
            continue
        check = service.get("healthcheck", {})
        assert check.get("test") and not check.get("disable"), name
    for queue in WORK_QUEUES:
        test = stack[f"worker-{queue}"]["healthcheck"]["test"]
        assert test == ["CMD", "drydock", "probe", "ready"]
    assert stack["beat"]["healthcheck"]["test"] == ["CMD", "drydock", "probe", "live"]


def test_one_beat_and_a_flower_that_demands_credentials(stack: dict[str, Any]) -> None:
    beat = [n for n, s in stack.items() if s.get("command") == ["beat"]]
    assert beat == ["beat"]
    assert stack["beat"].get("deploy", {}).get("replicas", 1) == 1
    flower = stack["flower"]
    assert flower["environment"]["DRYDOCK_FLOWER_BASIC_AUTH"] == SECRETS["FLOWER_BASIC_AUTH"]
    assert "--insecure-local" not in flower["command"]


def test_secrets_come_only_from_the_environment(stack: dict[str, Any]) -> None:
    text = COMPOSE_FILE.read_text()
    resolved = yaml.safe_dump(stack)
    for variable, value in SECRETS.items():
        assert value not in text
        assert value in resolved, f"{variable} is not used"
    for name in SECRETS:
        without = {k: v for k, v in SECRETS.items() if k != name}
        result = compose_config(without)
        assert result.returncode != 0, f"config accepted a stack without {name}"
        assert f"set {name} in deploy/.env" in result.stderr


def test_every_drydock_command_in_the_stack_is_one_the_cli_accepts(stack: dict[str, Any]) -> None:
    cli = typer.main.get_command(app)
    checked = 0
    for name, service in drydock_services(stack).items():
        parse(cli, service["command"], where=f"{name} command")
        test = service.get("healthcheck", {}).get("test", [])
        if test[:2] == ["CMD", "drydock"]:
            parse(cli, test[2:], where=f"{name} healthcheck")
        checked += 1
    assert checked == len(WORK_QUEUES) + 4  # workers, migrate, beat, flower, api


def parse(command: Any, args: list[str], *, where: str) -> None:
    """Parse ``args`` as the CLI would, down to the leaf command; fail on anything it rejects."""
    try:
        context = command.make_context("drydock", list(args))
        while isinstance(command, TyperGroup):
            rest = [*context._protected_args, *context.args]
            sub_name, sub, sub_args = command.resolve_command(context, rest)
            assert sub is not None and sub_name is not None
            command, context = sub, sub.make_context(sub_name, sub_args, parent=context)
    except typer.TyperException as exc:  # typer's own click raises these for bad usage
        pytest.fail(f"{where} {args}: {exc.format_message()}")

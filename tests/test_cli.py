"""The operator's command line: one clear line on error, useful output on success."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import uuid
from pathlib import Path

import pytest

from tests.conftest import WorkerProcess, wait_for_job

pytestmark = pytest.mark.fleet


def drydock(*args: str, env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "drydock.cli", *args],
        capture_output=True,
        text=True,
        env={**os.environ, "COLUMNS": "250", **(env or {})},
        timeout=60,
    )


def assert_one_line_error(result: subprocess.CompletedProcess[str], *fragments: str) -> None:
    assert result.returncode != 0
    assert "Traceback" not in result.stderr
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: "), result.stderr
    for fragment in fragments:
        assert fragment in lines[0]


def test_enqueue_then_inspect_the_job_and_its_timeline(fleet: WorkerProcess) -> None:
    result = drydock("enqueue", "builds.canary", "--json", '{"message": "from cli"}', "-k", "k1")
    assert result.returncode == 0, result.stderr
    job_id = uuid.UUID(result.stdout.split()[0])
    assert wait_for_job(job_id).status == "succeeded"

    again = drydock("enqueue", "builds.canary", "--json", '{"message": "from cli"}', "-k", "k1")
    assert str(job_id) in again.stdout and "nothing sent" in again.stdout

    listing = drydock("jobs", "--status", "succeeded", "--queue", "builds")
    assert str(job_id) in listing.stdout
    detail = drydock("job", str(job_id))
    assert detail.returncode == 0
    for word in ("enqueued", "started", "succeeded", "cli:", fleet.hostname):
        assert word in detail.stdout


def test_bad_input_gets_one_clear_line(fleet: WorkerProcess) -> None:
    assert_one_line_error(
        drydock("enqueue", "builds.canary", "--json", '{"mesage": 1}'),
        "invalid payload for builds.canary",
        "mesage: Extra inputs are not permitted",
    )
    assert_one_line_error(drydock("enqueue", "builds.canary", "--json", "{oops"), "not valid JSON")
    assert_one_line_error(drydock("enqueue", "bulds.canary"), "unknown task 'bulds.canary'")
    assert_one_line_error(drydock("job", "not-a-uuid"), "not a job id")
    assert_one_line_error(drydock("job", str(uuid.uuid4())), "no job")
    assert_one_line_error(drydock("jobs", "--status", "done"), "unknown status 'done'")
    assert_one_line_error(drydock("worker", "-Q", "bulds"), "unknown queue 'bulds'")
    assert_one_line_error(drydock("dlq", "replay", str(uuid.uuid4())), "no dead letter")
    assert_one_line_error(drydock("dlq", "purge", "--yes"), "say what to purge")


def test_unreachable_servers_and_bad_settings_are_named(clean_state: None) -> None:
    assert_one_line_error(
        drydock("enqueue", "builds.canary", env={"DRYDOCK_BROKER_URL": "redis://127.0.0.1:1/0"}),
        "could not send builds.canary to the broker",
        "nothing was recorded",
    )
    listing = drydock("jobs")
    assert "builds.canary" not in listing.stdout  # the unsent job was not left behind
    assert_one_line_error(
        drydock("jobs", env={"DRYDOCK_DATABASE_URL": "postgresql+psycopg://x@127.0.0.1:1/x"}),
        "cannot reach the database",
    )
    assert_one_line_error(
        drydock("jobs", env={"DRYDOCK_VISIBILITY_TIMEOUT": "5"}),
        "invalid settings",
        "visibility_timeout",
    )


def test_dead_letters_can_be_listed_shown_replayed_and_purged(fleet: WorkerProcess) -> None:
    sent = drydock("enqueue", "pushes.canary", "--json", '{"fail_permanently": true}')
    job_id = uuid.UUID(sent.stdout.split()[0])
    wait_for_job(job_id)

    listing = drydock("dlq", "list")
    assert str(job_id) in listing.stdout and "permanent_error" in listing.stdout
    shown = drydock("dlq", "show", str(job_id))
    assert "CanaryPermanentError: canary asked to fail permanently" in shown.stdout
    assert "Traceback" in shown.stdout  # the stored traceback, for the operator

    replayed = drydock("dlq", "replay", str(job_id), "--by", "carol")
    assert replayed.returncode == 0, replayed.stderr
    new_id = uuid.UUID(replayed.stdout.split()[2])
    assert wait_for_job(new_id).replay_of == job_id
    assert "carol" in drydock("dlq", "list", "--all").stdout
    assert str(job_id) not in drydock("dlq", "list").stdout  # replayed ones are hidden

    purged = drydock("dlq", "purge", "--all", "--yes")
    assert "purged 2 dead letter(s)" in purged.stdout  # the original and the failed replay


def test_schema_is_published_as_json_for_other_languages() -> None:
    everything = json.loads(drydock("schema").stdout)
    assert {
        "builds.canary",
        "pushes.canary",
        "attestation.canary",
        "remediation.canary",
        "evaluation.canary",
    } <= set(everything)
    one = json.loads(drydock("schema", "builds.canary").stdout)
    assert one["additionalProperties"] is False and "message" in one["properties"]


def test_migrate_reports_the_revision(migrated_db: str) -> None:
    from models.migrate import head_revision

    result = drydock("migrate")
    assert result.returncode == 0 and f"database at revision {head_revision()}" in result.stdout


def test_tokens_are_shown_once_listed_without_secrets_and_revoked(clean_state: None) -> None:
    from fastapi.testclient import TestClient

    from drydock.api import app

    created = drydock("tokens", "create", "--name", "ci-builds", "--scope", "builds.*")
    assert created.returncode == 0, created.stderr
    token = created.stdout.strip()
    assert token.startswith("ddk_") and len(created.stdout.splitlines()) == 1
    assert "shown once" in created.stderr

    listing = drydock("tokens", "list")
    assert "ci-builds" in listing.stdout and "builds.*" in listing.stdout
    assert token not in listing.stdout + listing.stderr

    with TestClient(app) as api:
        headers = {"Authorization": f"Bearer {token}"}
        assert api.get("/v1/tasks", headers=headers).status_code == 200
        revoked = drydock("tokens", "revoke", "ci-builds")
        assert revoked.returncode == 0, revoked.stderr
        assert api.get("/v1/tasks", headers=headers).status_code == 401

    assert_one_line_error(drydock("tokens", "revoke", "ci-builds"), "no active token")
    assert_one_line_error(
        drydock("tokens", "create", "--name", "x", "--scope", "bulids.*"),
        "scope 'bulids.*' matches no task",
    )
    assert_one_line_error(
        drydock("tokens", "create", "--name", "bad name", "--scope", "*"), "token name"
    )
    assert drydock("tokens", "create", "--name", "dup", "--scope", "*").returncode == 0
    assert_one_line_error(
        drydock("tokens", "create", "--name", "dup", "--scope", "*"), "already exists"
    )


def test_commands_find_a_running_local_fleet_only_while_it_runs(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from kernel.settings import Settings

    for name in ("DRYDOCK_BROKER_URL", "DRYDOCK_DATABASE_URL", "DRYDOCK_SECRET_KEY"):
        monkeypatch.delenv(name, raising=False)
    monkeypatch.chdir(tmp_path)
    (tmp_path / ".drydock").mkdir()
    fleet_file = tmp_path / ".drydock" / "fleet.json"
    description = {
        "supervisor_pid": os.getpid(),
        "broker_url": "redis://127.0.0.1:7777/0",
        "database_url": "postgresql+psycopg://drydock@127.0.0.1:7778/drydock",
        "secret_key": "k" * 43 + "=",
    }
    fleet_file.write_text(json.dumps(description))
    found = Settings()
    assert found.broker_url == "redis://127.0.0.1:7777/0"
    assert found.database_url.endswith(":7778/drydock")

    # The environment wins over the file.
    monkeypatch.setenv("DRYDOCK_BROKER_URL", "redis://elsewhere:6379/0")
    assert Settings().broker_url == "redis://elsewhere:6379/0"
    monkeypatch.delenv("DRYDOCK_BROKER_URL")

    # A file left by a `drydock up` that is gone is ignored.
    description["supervisor_pid"] = 2**22 + 1  # above pid_max: no such process
    fleet_file.write_text(json.dumps(description))
    assert Settings().broker_url == Settings.model_fields["broker_url"].default


def test_a_mistyped_option_gets_click_s_usage_error_and_exit_code_2() -> None:
    # Typer carries its own copy of click: its usage errors must still read as usage errors.
    result = drydock("worker", "--queues", "builds", "--concurency", "2")
    assert result.returncode == 2
    assert "No such option: --concurency (Possible options: --concurrency)" in result.stderr
    assert "worker --help' for help." in result.stderr
    assert "unexpected" not in result.stderr

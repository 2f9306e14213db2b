"""The operator's command line: one clear line on error, useful output on success."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import uuid

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
    result = drydock("migrate")
    assert result.returncode == 0 and "database at revision 0001" in result.stdout

"""Credential rotation against the real registry (htpasswd and token auth) and the Kubernetes
API stand-in (tests/kube_standin.py): probes, rotations through each provider, image-pull
secrets kept in step, the events left behind, and a push through the queue afterwards.

The rotation runs in-process here when it writes pull secrets (the session worker has no
kubeconfig for the stand-in), and through the pushes queue otherwise.

One module for rotation, its providers sharing the registry and stand-in fixtures.
"""

from __future__ import annotations

import base64
import json
import os
import subprocess
import sys
import uuid
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import httpx
import pytest
from sqlalchemy import select, update

from adapters import credentials as providers
from adapters.credentials import RegistryCredential, set_htpasswd_password
from adapters.kubernetes import KubernetesAdapter, KubernetesApiError
from beat_schedules import beat_schedule
from catalog.pushes import RotateCredentialsPayload, index_job_id
from dispatch.enqueue import enqueue
from kernel.errors import NotFoundError
from kernel.settings import Settings
from models import builds as ledger
from models import credentials as store
from models.builds import RegistryEvent
from models.credentials import (
    CredentialConfigError,
    CredentialEvent,
    PullSecretRef,
    RegistryCredentialRow,
)
from models.db import session_scope
from models.jobs import Job, JobEvent
from tasks.pushes.rotation import Probe, RotationReason, rotate_credentials, rotation_reason
from tests.conftest import TEST_BUILD_TIME_LIMIT, WorkerProcess, wait_for_job
from tests.kube_standin import KubeStandIn

ROTATED_USER = "drydock-rotated"
PULL_SECRET = PullSecretRef("ci", "registry-login")


@pytest.fixture
def no_credentials(clean_state: None) -> Iterator[None]:
    """No stored credentials (clean_state empties the events and jobs)."""
    with session_scope() as session:
        session.query(RegistryCredentialRow).delete()
    yield


def _settings(kubeconfig: Path | None = None) -> Settings:
    return Settings(kubeconfig=str(kubeconfig) if kubeconfig else None)


def _rotate(
    kubeconfig: Path | None = None, *, hosts: list[str] | None = None, force: bool = False
) -> dict[str, Any]:
    payload = RotateCredentialsPayload(hosts=hosts, force=force)
    result = rotate_credentials(payload, job_id=None, settings=_settings(kubeconfig))
    hosts_summary: dict[str, Any] = result["hosts"]
    return hosts_summary


def _manage_htpasswd(registry: Any, *, rotate_after: int | None = None, age: timedelta) -> str:
    """Drydock manages ROTATED_USER in the registry's htpasswd file, its password set ``age``
    ago (backdated in the database); the password issued."""
    with session_scope() as session:
        providers.store_htpasswd(session, registry.host, ROTATED_USER, registry.htpasswd_path)
    with session_scope() as session:
        store.set_rotation_policy(session, registry.host, rotate_after_seconds=rotate_after)
    _backdate(registry.host, age)
    issued = providers.credential_for(registry.host)
    assert issued is not None
    return issued.password


def _backdate(host: str, age: timedelta) -> None:
    with session_scope() as session:
        session.execute(
            update(RegistryCredentialRow)
            .where(RegistryCredentialRow.host == host)
            .values(updated_at=datetime.now(UTC) - age)
        )


def _registry_says(registry: Any, username: str, password: str) -> int:
    """The registry's own answer to ``GET /v2/`` with these credentials (the tests' client)."""
    response = httpx.get(
        f"http://{registry.host}/v2/", auth=(username, password), timeout=10, trust_env=False
    )
    return response.status_code


def _events(host: str | None = None) -> list[CredentialEvent]:
    with session_scope() as session:
        query = select(CredentialEvent).order_by(CredentialEvent.id)
        if host is not None:
            query = query.where(CredentialEvent.host == host)
        events = list(session.execute(query).scalars())
        for event in events:
            session.expunge(event)
    return events


def _kinds(host: str) -> list[str]:
    return [event.kind for event in _events(host)]


def _row(host: str) -> RegistryCredentialRow:
    with session_scope() as session:
        row = session.execute(
            select(RegistryCredentialRow).where(RegistryCredentialRow.host == host)
        ).scalar_one()
        session.expunge(row)
        return row


def _pull_secret_login(standin: KubeStandIn, host: str) -> RegistryCredential:
    """The login the kubelet would use from the pull secret, checked as it reads one."""
    secret = standin.secret(PULL_SECRET.namespace, PULL_SECRET.name)
    assert secret["type"] == "kubernetes.io/dockerconfigjson"
    entry = standin.docker_config(PULL_SECRET.namespace, PULL_SECRET.name)["auths"][host]
    assert base64.b64decode(entry["auth"]).decode() == f"{entry['username']}:{entry['password']}"
    return RegistryCredential(entry["username"], entry["password"])


def _assert_no_secret_recorded(*secrets: str) -> None:
    """No password in a credential event, a job row, a job event or registry telemetry."""
    with session_scope() as session:
        texts = [json.dumps(e.detail) for e in session.execute(select(CredentialEvent)).scalars()]
        texts += [
            json.dumps([j.payload, j.result, j.error])
            for j in session.execute(select(Job)).scalars()
        ]
        texts += [json.dumps(e.detail) for e in session.execute(select(JobEvent)).scalars()]
        texts += [json.dumps(e.detail) for e in session.execute(select(RegistryEvent)).scalars()]
    for secret in secrets:
        assert not [text for text in texts if secret in text]


# ---- deciding --------------------------------------------------------------------------------


def _summary(**changes: Any) -> store.CredentialSummary:
    now = datetime.now(UTC)
    fields: dict[str, Any] = {
        "host": "registry.test:5000",
        "provider": "htpasswd",
        "username": "robot",
        "config": {},
        "has_password": True,
        "updated_at": now - timedelta(days=2),
        "refreshed_at": None,
        "refresh_count": 0,
        **changes,
    }
    return store.CredentialSummary(**fields)


@pytest.mark.parametrize(
    ("summary", "probe", "force", "reason"),
    [
        (_summary(), Probe("accepted"), False, None),
        (_summary(rotate_after_seconds=86400), Probe("accepted"), False, RotationReason.AGE),
        (_summary(rotate_after_seconds=3 * 86400), Probe("accepted"), False, None),
        (_summary(), Probe("refused", 401, "auth_expired"), False, RotationReason.REFUSED),
        (_summary(), Probe("accepted"), True, RotationReason.FORCED),
        # A registry that could not be asked says nothing: age still counts, nothing else.
        (_summary(), Probe("failed", None, "network_or_timeout"), False, None),
        (_summary(rotate_after_seconds=60), Probe("failed"), False, RotationReason.AGE),
        (
            _summary(expires_at=datetime.now(UTC) + timedelta(hours=2)),
            Probe("accepted"),
            False,
            RotationReason.EXPIRING,
        ),
        (
            _summary(expires_at=datetime.now(UTC) + timedelta(days=3)),
            Probe("accepted"),
            False,
            None,
        ),
    ],
)
def test_what_makes_a_credential_due(
    summary: store.CredentialSummary, probe: Probe, force: bool, reason: RotationReason | None
) -> None:
    assert (
        rotation_reason(
            summary, probe, now=datetime.now(UTC), margin=timedelta(days=1), force=force
        )
        == reason
    )


def test_the_payload_checks_hosts_and_beat_runs_rotation_on_the_pushes_queue() -> None:
    payload = RotateCredentialsPayload(hosts=["Registry.Example.com:5000", "a.example"])
    assert payload.hosts == ["a.example", "registry.example.com:5000"]
    with pytest.raises(ValueError, match="registry host"):
        RotateCredentialsPayload(hosts=["https://registry.example.com/x"])

    entries = beat_schedule(Settings(credential_rotation_interval_seconds=600))
    assert entries["credential-rotation"]["task"] == "pushes.rotate_credentials"
    assert entries["credential-rotation"]["options"]["queue"] == "pushes"
    assert entries["credential-rotation"]["schedule"] == 600.0
    assert "credential-rotation" not in beat_schedule(
        Settings(credential_rotation_interval_seconds=0)
    )


def test_a_pull_secret_must_name_a_namespace_and_a_secret() -> None:
    assert PullSecretRef.parse("ci/registry-login") == PULL_SECRET
    for bad in ("registry-login", "CI/login", "ci/", "ci/login_1"):
        with pytest.raises(CredentialConfigError):
            PullSecretRef.parse(bad)


# ---- rotating --------------------------------------------------------------------------------


def test_a_due_htpasswd_credential_is_rotated_its_pull_secret_written_and_pushes_use_it(
    fleet: WorkerProcess,
    no_credentials: None,
    docker_engine: Any,
    git_repo_factory: Any,
    registry_server: Any,
    kube_standin: KubeStandIn,
    kubeconfig_file: Path,
) -> None:
    registry_server.start()
    host = registry_server.host
    old = _manage_htpasswd(registry_server, rotate_after=86400, age=timedelta(days=2))
    with session_scope() as session:
        store.set_rotation_policy(session, host, pull_secret=PULL_SECRET)

    summary = _rotate(kubeconfig_file)[host]

    assert summary == {
        "provider": "htpasswd",
        "probe": "accepted",
        "due": "age",
        "rotation": "rotated",
        "verified": "accepted",
        "pull_secret": "created",
    }
    new = providers.credential_for(host)
    assert new is not None and new.password != old
    # The registry itself: the old password is refused, the new one accepted.
    assert _registry_says(registry_server, ROTATED_USER, old) == 401
    assert _registry_says(registry_server, ROTATED_USER, new.password) == 200
    # The pull secret holds the new login, as the kubelet would read it.
    assert _pull_secret_login(kube_standin, host) == new
    assert _kinds(host) == [
        "probe_accepted",
        "rotated",
        "probe_accepted",
        "pull_secret_written",
    ]
    rotated = next(e for e in _events(host) if e.kind == "rotated")
    assert rotated.detail["reason"] == "age" and rotated.detail["previous_age_seconds"] >= 86400
    row = _row(host)
    assert row.probe_accepted is True and row.probed_at is not None

    # A push through the queue now uses the new password at once: no refusal, no refresh.
    repo = git_repo_factory()
    job = enqueue(
        "builds.build_image",
        {
            "repository_url": repo.url,
            "revision": repo.branch,
            "image": f"drydock-test/{uuid.uuid4().hex[:8]}",
            "push": {"registry": host, "repository": "mcp/rotated-ahead"},
        },
    )
    wait_for_job(job.id, ("succeeded",), timeout=TEST_BUILD_TIME_LIMIT * 3)
    with session_scope() as session:
        run = ledger.run_of_job(session, job.id)
        assert run is not None
        run_id = run.id
    wait_for_job(index_job_id(run_id), ("succeeded",), timeout=TEST_BUILD_TIME_LIMIT * 3)
    with session_scope() as session:
        run = ledger.run_of_job(session, job.id)
        assert run is not None and run.credential_outcome == "issued"
        kinds = [
            e.kind
            for e in session.execute(
                select(RegistryEvent).where(RegistryEvent.run_id == run_id)
            ).scalars()
        ]
    assert "push_succeeded" in kinds and "auth_refresh" not in kinds and "push_failed" not in kinds
    _assert_no_secret_recorded(old, new.password)
    assert new.password not in fleet.log() and old not in fleet.log()


def test_a_credential_that_is_not_due_is_only_probed(
    no_credentials: None, registry_server: Any
) -> None:
    registry_server.start()
    host = registry_server.host
    issued = _manage_htpasswd(registry_server, rotate_after=30 * 86400, age=timedelta(days=1))

    summary = _rotate(hosts=[host])[host]

    assert summary == {
        "provider": "htpasswd",
        "probe": "accepted",
        "due": None,
        "rotation": "not_due",
        "pull_secret": None,
    }
    assert providers.credential_for(host) == RegistryCredential(ROTATED_USER, issued)
    assert _kinds(host) == ["probe_accepted"]
    [probe] = _events(host)
    assert probe.detail["age_seconds"] >= 86400 and probe.detail["after_rotation"] is False
    assert probe.detail["username"] == ROTATED_USER and probe.job_id is None


def test_a_refused_credential_is_rotated_at_once(
    no_credentials: None, registry_server: Any
) -> None:
    registry_server.start()
    host = registry_server.host
    issued = _manage_htpasswd(registry_server, age=timedelta(minutes=5))
    # Someone changes the password on the registry, behind Drydock's back.
    set_htpasswd_password(registry_server.htpasswd_path, ROTATED_USER, "changed-elsewhere-5678")

    summary = _rotate(hosts=[host])[host]

    assert summary["probe"] == "refused" and summary["due"] == "refused"
    assert summary["rotation"] == "rotated" and summary["verified"] == "accepted"
    fresh = providers.credential_for(host)
    assert fresh is not None and fresh.password not in (issued, "changed-elsewhere-5678")
    assert _registry_says(registry_server, ROTATED_USER, fresh.password) == 200
    assert _kinds(host) == ["probe_refused", "rotated", "probe_accepted"]
    refused = _events(host)[0]
    assert refused.detail["status"] == 401 and refused.detail["error_kind"] == "auth_expired"
    assert _row(host).probe_accepted is True
    _assert_no_secret_recorded(issued, fresh.password, "changed-elsewhere-5678")


def test_a_rotation_never_replaces_a_password_twice_and_a_push_holding_the_old_one_gets_the_new(
    no_credentials: None, registry_server: Any
) -> None:
    registry_server.start()
    host = registry_server.host
    issued = _manage_htpasswd(registry_server, age=timedelta(minutes=5))
    seen = providers.current_credential(host)
    assert seen is not None and seen.credential.password == issued

    first = providers.rotate(host, seen_version=seen.version)
    assert first.rotated and first.credential.password != issued
    # A second rotation that had looked at the same (old) credential keeps the first's.
    second = providers.rotate(host, seen_version=seen.version)
    assert not second.rotated and second.credential == first.credential
    assert second.version == first.version
    # A push that read the old password before the rotation is refused, and its refresh (the
    # same row lock) hands it the new password rather than rotating again.
    assert providers.refresh_credential(host, RegistryCredential(ROTATED_USER, issued)) == (
        first.credential
    )
    assert _row(host).refresh_count == 0
    assert _registry_says(registry_server, ROTATED_USER, first.credential.password) == 200


def test_a_static_credential_cannot_be_rotated_and_says_who_must_act(
    no_credentials: None, registry_server: Any, token_registry_server: Any
) -> None:
    registry_server.start()
    with session_scope() as session:
        # Refused by the htpasswd registry; accepted by the token one (a token is fetched).
        store.store_static(session, registry_server.host, registry_server.username, "not-it")
        store.store_static(
            session,
            token_registry_server.host,
            token_registry_server.username,
            token_registry_server.password,
        )

    summaries = _rotate()

    refused = summaries[registry_server.host]
    assert (refused["probe"], refused["due"], refused["rotation"]) == (
        "refused",
        "refused",
        "unsupported",
    )
    accepted = summaries[token_registry_server.host]
    assert (accepted["probe"], accepted["rotation"]) == ("accepted", "not_due")
    assert _kinds(registry_server.host) == ["probe_refused", "rotation_unsupported"]
    unsupported = _events(registry_server.host)[1]
    assert "drydock registry login" in unsupported.detail["message"]
    assert providers.credential_for(registry_server.host) == RegistryCredential(
        registry_server.username, "not-it"
    )

    # Forced, the accepted one is unsupported too, and left as it was.
    forced = _rotate(hosts=[token_registry_server.host], force=True)
    assert forced[token_registry_server.host]["rotation"] == "unsupported"
    assert (
        providers.credential_for(token_registry_server.host) == token_registry_server.credential()
    )


def test_a_token_registry_refuses_a_wrong_password_at_its_token_service(
    no_credentials: None, token_registry_server: Any
) -> None:
    host = token_registry_server.host
    with session_scope() as session:
        store.store_static(session, host, token_registry_server.username, "wrong-password")
    assert _rotate(hosts=[host])[host]["probe"] == "refused"
    assert _row(host).probe_accepted is False


def _helper(directory: Path, username: str, secret: str, expires_at: datetime) -> list[str]:
    """A Docker credential helper answering with an ExpiresAt."""
    answer = {"Username": username, "Secret": secret, "ExpiresAt": expires_at.isoformat()}
    (directory / "answer.json").write_text(json.dumps(answer))
    script = directory / "docker-credential-expiring"
    script.write_text(f"#!/bin/sh\ncat > /dev/null\ncat {directory}/answer.json\n")
    script.chmod(0o755)
    return [str(script), "get"]


def test_a_helper_credential_expiring_soon_is_rotated_by_asking_the_helper_again(
    no_credentials: None, registry_server: Any, tmp_path: Path
) -> None:
    registry_server.start()
    host = registry_server.host
    user = "drydock-vault"
    soon = datetime.now(UTC) + timedelta(hours=1)
    set_htpasswd_password(registry_server.htpasswd_path, user, "vault-secret-1", rounds=5)
    with session_scope() as session:
        store.store_command(session, host, _helper(tmp_path, user, "vault-secret-1", soon))
    first = providers.credential_for(host)
    assert first is not None and first.expires_at == soon
    assert _row(host).expires_at == soon
    # The vault has the next secret ready (and the registry knows it), valid for a month.
    later = datetime.now(UTC) + timedelta(days=30)
    set_htpasswd_password(registry_server.htpasswd_path, user, "vault-secret-2", rounds=5)
    _helper(tmp_path, user, "vault-secret-2", later)

    summary = _rotate(hosts=[host])[host]

    # The probe was refused (the registry moved on), but the expiry would have been enough.
    assert summary["due"] in ("refused", "expiring") and summary["rotation"] == "rotated"
    assert providers.credential_for(host) == RegistryCredential(user, "vault-secret-2")
    assert _row(host).expires_at == later
    rotated = next(e for e in _events(host) if e.kind == "rotated")
    assert rotated.detail["expires_at"] == later.isoformat()


def test_an_expiring_helper_credential_the_registry_still_accepts_is_rotated_for_expiry(
    no_credentials: None, registry_server: Any, tmp_path: Path
) -> None:
    registry_server.start()
    host = registry_server.host
    user = "drydock-vault"
    set_htpasswd_password(registry_server.htpasswd_path, user, "vault-secret-3", rounds=5)
    soon = datetime.now(UTC) + timedelta(hours=1)
    with session_scope() as session:
        store.store_command(session, host, _helper(tmp_path, user, "vault-secret-3", soon))
    assert providers.credential_for(host) is not None

    summary = _rotate(hosts=[host])[host]

    assert (summary["probe"], summary["due"], summary["rotation"]) == (
        "accepted",
        "expiring",
        "rotated",
    )


def test_a_failing_kubernetes_api_records_pull_secret_failed_and_the_rotation_stands(
    no_credentials: None,
    registry_server: Any,
    kube_standin: KubeStandIn,
    kubeconfig_file: Path,
) -> None:
    registry_server.start()
    host = registry_server.host
    old = _manage_htpasswd(registry_server, rotate_after=3600, age=timedelta(hours=2))
    with session_scope() as session:
        store.set_rotation_policy(session, host, pull_secret=PULL_SECRET)
    kube_standin.fail(500, times=1, method="PUT")

    summary = _rotate(kubeconfig_file)[host]

    assert summary["rotation"] == "rotated" and summary["pull_secret"] == "failed"
    assert "answered 500" in summary["pull_secret_error"]
    new = providers.credential_for(host)
    assert new is not None and new.password != old
    assert _registry_says(registry_server, ROTATED_USER, new.password) == 200
    assert _kinds(host) == ["probe_accepted", "rotated", "probe_accepted", "pull_secret_failed"]
    failed = _events(host)[-1]
    assert failed.detail["namespace"] == "ci" and "500" in failed.detail["error"]
    assert (PULL_SECRET.namespace, PULL_SECRET.name) not in kube_standin.secrets

    # The next run finds the credential not due but the secret behind it, and writes it.
    again = _rotate(kubeconfig_file)[host]
    assert (again["rotation"], again["pull_secret"]) == ("not_due", "created")
    assert _pull_secret_login(kube_standin, host) == new
    # And once it holds the current password, it is left alone.
    third = _rotate(kubeconfig_file)[host]
    assert third["pull_secret"] == "in_step"
    assert len(kube_standin.requests_to("POST")) == 1
    _assert_no_secret_recorded(old, new.password)


def test_a_pull_secret_is_replaced_whole_and_one_of_another_type_is_refused(
    kube_standin: KubeStandIn, kubeconfig_file: Path
) -> None:
    adapter = KubernetesAdapter.from_config(str(kubeconfig_file))
    try:
        assert adapter.apply_image_pull_secret("ci", "login", "r.example", "u", "p1") == "created"
        assert adapter.apply_image_pull_secret("ci", "login", "r.example", "u", "p2") == "replaced"
        config = kube_standin.docker_config("ci", "login")
        assert config == {
            "auths": {
                "r.example": {
                    "username": "u",
                    "password": "p2",
                    "auth": base64.b64encode(b"u:p2").decode(),
                }
            }
        }
        kube_standin.add_secret("ci", "opaque", {"token": b"t"})
        with pytest.raises(KubernetesApiError) as refused:
            adapter.apply_image_pull_secret("ci", "opaque", "r.example", "u", "p3")
        assert refused.value.status == 422 and "immutable" in str(refused.value)
        assert "p3" not in str(refused.value)
    finally:
        adapter.close()
    puts = kube_standin.requests_to("PUT")
    assert all(r.content_type == "application/json" for r in puts)


def test_an_unknown_host_is_refused_before_anything_is_probed(no_credentials: None) -> None:
    with pytest.raises(NotFoundError, match=r"nowhere\.example"):
        _rotate(hosts=["nowhere.example"])
    assert _events() == []


# ---- through the queue and the command line --------------------------------------------------


def drydock(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "drydock.cli", *args],
        capture_output=True,
        text=True,
        env={**os.environ, "COLUMNS": "300"},
        timeout=60,
    )


def test_the_cli_sets_a_policy_and_the_queue_rotates_now(
    fleet: WorkerProcess, no_credentials: None, registry_server: Any
) -> None:
    registry_server.start()
    host = registry_server.host
    old = _manage_htpasswd(registry_server, age=timedelta(minutes=1))

    policy = drydock("registry", "rotation", host, "--every", "30d", "--pull-secret", "ci/login")
    assert policy.returncode == 0, policy.stderr
    assert "rotate every 30d" in policy.stdout and "pull secret ci/login" in policy.stdout
    row = _row(host)
    assert row.rotate_after_seconds == 30 * 86400 and row.pull_secret_name == "login"
    bad = drydock("registry", "rotation", host, "--pull-secret", "ci/Not_A_Name")
    assert bad.returncode != 0 and bad.stderr.startswith("error: ")
    cleared = drydock("registry", "rotation", host, "--no-pull-secret")
    assert cleared.returncode == 0 and "pull secret none" in cleared.stdout
    assert _row(host).rotate_after_seconds == 30 * 86400  # left as it was

    enqueued = drydock("registry", "rotate", host, "--force")
    assert enqueued.returncode == 0, enqueued.stderr
    job_id = uuid.UUID(enqueued.stdout.split()[0])
    job = wait_for_job(job_id, ("succeeded",))
    assert job.result["hosts"][host]["rotation"] == "rotated"
    assert {event.job_id for event in _events(host)} == {job_id}
    new = providers.credential_for(host)
    assert new is not None and _registry_says(registry_server, ROTATED_USER, new.password) == 200
    assert _registry_says(registry_server, ROTATED_USER, old) == 401

    listing = drydock("registry", "list")
    assert listing.returncode == 0
    line = next(line for line in listing.stdout.splitlines() if host in line)
    assert "30d" in line and "accepted" in line
    events = drydock("registry", "events", host)
    assert events.returncode == 0 and "rotated" in events.stdout and "forced" in events.stdout
    for secret in (old, new.password):
        assert secret not in listing.stdout + events.stdout
        assert secret not in fleet.log()
    _assert_no_secret_recorded(old, new.password)

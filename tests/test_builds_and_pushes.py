"""Builds and pushes end to end: real workers, a real Docker engine, buildah, a real registry
with htpasswd auth, and git repositories made by the tests.

Each test enqueues ``builds.build_image`` the way a producer does and reads what an operator
and the platform rely on: the job outcomes, the artifact ledger, the registry's own answers, and
the registry telemetry (every stored event is checked against its schema again here).
"""

from __future__ import annotations

import json
import os
import uuid
from typing import Any

import pytest
import redis
from sqlalchemy import select

from adapters import credentials as providers
from adapters.credentials import set_htpasswd_password
from adapters.image_index import index_children
from adapters.registry import RegistryClient
from catalog.pushes import index_job_id, push_job_id
from dispatch.enqueue import enqueue
from kernel.platforms import Platform
from models import builds as ledger
from models import credentials as credential_store
from models.builds import BuildPlatform, BuildRun, RegistryEvent
from models.credentials import RegistryCredentialRow
from models.db import session_scope
from models.evaluation import ImageCertification
from models.jobs import DeadLetter, Job, JobEvent
from tasks.pushes import telemetry
from tests.conftest import TEST_BUILD_TIME_LIMIT, WorkerProcess, wait_for_job

pytestmark = pytest.mark.fleet

BUILD_TIMEOUT = TEST_BUILD_TIME_LIMIT * 3
DRYDOCK_USER = "drydock-pusher"


@pytest.fixture
def build_fleet(
    fleet: WorkerProcess, docker_engine: Any, buildah_ready: Any, registry_server: Any
) -> WorkerProcess:
    """The session worker (builds and pushes queues) with an engine, buildah and a registry;
    no credentials, policies or certifications left by an earlier test."""
    registry_server.start()
    with session_scope() as session:
        for table in (RegistryCredentialRow, ImageCertification):
            session.query(table).delete()
    return fleet


def _build_payload(repo: Any, revision: str, **extra: Any) -> dict[str, Any]:
    return {
        "repository_url": repo.url,
        "revision": revision,
        "image": f"drydock-test/{uuid.uuid4().hex[:8]}",
        **extra,
    }


def _run_of(job_id: uuid.UUID) -> BuildRun:
    with session_scope() as session:
        run = ledger.run_of_job(session, job_id)
        assert run is not None, f"job {job_id} opened no build run"
        session.expunge(run)
        return run


def _platform_rows(run_id: uuid.UUID) -> dict[str, BuildPlatform]:
    with session_scope() as session:
        rows = ledger.platforms_of(session, run_id)
        for row in rows:
            session.expunge(row)
        return {row.platform: row for row in rows}


def _registry_events(run_id: uuid.UUID | None = None, job_id: uuid.UUID | None = None) -> list[Any]:
    with session_scope() as session:
        query = select(RegistryEvent).order_by(RegistryEvent.id)
        if run_id is not None:
            query = query.where(RegistryEvent.run_id == run_id)
        if job_id is not None:
            query = query.where(RegistryEvent.job_id == job_id)
        events = list(session.execute(query).scalars())
        for event in events:
            session.expunge(event)
    for event in events:
        # What was written still matches the schema of its kind and version.
        assert event.schema_version == telemetry.SCHEMA_VERSION
        assert telemetry.validated(event.kind, event.detail) == event.detail
        assert event.platform == event.detail["platform"]
    return events


def _kinds(events: list[Any], platform: str | None = None) -> list[str]:
    return [e.kind for e in events if platform is None or e.platform == platform]


def _client(registry: Any) -> RegistryClient:
    return RegistryClient(registry.host, registry.credential(), insecure=True, timeout=10)


def _config_architecture(client: RegistryClient, repository: str, digest: str) -> str:
    manifest = client.manifest(repository, digest)
    config = client.blob(repository, manifest.body["config"]["digest"])
    return str(json.loads(config)["architecture"])


def _wait_published(job_id: uuid.UUID) -> BuildRun:
    wait_for_job(job_id, ("succeeded",), timeout=BUILD_TIMEOUT)
    run = _run_of(job_id)
    wait_for_job(index_job_id(run.id), ("succeeded",), timeout=BUILD_TIMEOUT)
    return _run_of(job_id)


def test_two_platform_buildah_build_from_a_tag_is_published_as_one_index(
    build_fleet: WorkerProcess, git_repo_factory: Any, registry_server: Any
) -> None:
    repo = git_repo_factory()
    with session_scope() as session:
        providers.store_htpasswd(
            session, registry_server.host, DRYDOCK_USER, registry_server.htpasswd_path
        )
    job = enqueue(
        "builds.build_image",
        _build_payload(
            repo,
            repo.tag,
            backend="buildah",
            platforms=["linux/amd64", "linux/arm64"],
            push={"registry": registry_server.host, "repository": "mcp/two-arch"},
        ),
    )
    run = _wait_published(job.id)

    assert run.status == "published"
    assert run.commit == repo.tag_commit
    assert run.ref_kind == "tag"
    assert run.credential_outcome == "issued"
    rows = _platform_rows(run.id)
    assert set(rows) == {"linux/amd64", "linux/arm64"}
    assert all(row.status == "pushed" and row.digest for row in rows.values())

    # The registry holds one tag for the request: an OCI index whose manifests carry the right
    # architectures, and each child's config says the same.
    client = _client(registry_server)
    index = client.manifest("mcp/two-arch", repo.tag)
    assert index.media_type == "application/vnd.oci.image.index.v1+json"
    assert index.digest == run.index_digest
    children = dict((str(p), d) for p, d in index_children(index.body))
    assert children == {p: rows[p].digest for p in rows}
    for platform, digest in children.items():
        assert _config_architecture(client, "mcp/two-arch", digest) == Platform.parse(platform).arch

    events = _registry_events(run.id)
    for platform in rows:
        assert _kinds(events, platform) == [
            "tag_started",
            "tag_succeeded",
            "push_started",
            "push_succeeded",
        ]
    published = [e for e in events if e.kind == "index_published"]
    assert len(published) == 1 and published[0].detail["digest"] == run.index_digest


def test_docker_build_and_push_with_static_credentials(
    build_fleet: WorkerProcess, git_repo_factory: Any, registry_server: Any
) -> None:
    repo = git_repo_factory()
    with session_scope() as session:
        credential_store.store_static(
            session, registry_server.host, registry_server.username, registry_server.password
        )
    job = enqueue(
        "builds.build_image",
        _build_payload(
            repo,
            repo.branch,
            push={"registry": registry_server.host, "repository": "mcp/docker", "tag": "stable"},
        ),
    )
    run = _wait_published(job.id)
    assert run.backend == "docker" and run.ref_kind == "branch"
    assert run.commit == repo.head_commit
    row = _platform_rows(run.id)["linux/amd64"]
    client = _client(registry_server)
    assert row.pushed_ref is not None and row.digest is not None
    pushed = client.manifest("mcp/docker", row.pushed_ref.rsplit(":", 1)[1])
    assert pushed.digest == row.digest
    assert _config_architecture(client, "mcp/docker", row.digest) == "amd64"
    index = client.manifest("mcp/docker", "stable")
    assert [str(p) for p, _ in index_children(index.body)] == ["linux/amd64"]
    # Nothing of the password in the job rows, events or telemetry.
    _assert_secret_nowhere(registry_server.password, build_fleet)
    # /metrics counts the telemetry, and the layer bytes the push sent.
    with session_scope() as session:
        counted = ledger.registry_telemetry_counts(session)
    succeeded = [c for c in counted if c.kind == "push_succeeded" and c.platform == "linux/amd64"]
    assert row.bytes_sent is not None and row.bytes_sent > 0
    assert succeeded and succeeded[0].count >= 1 and succeeded[0].bytes >= row.bytes_sent
    # Sending the chord left no process subscribed to its members' result channels.
    broker = redis.Redis.from_url(os.environ["DRYDOCK_BROKER_URL"])
    assert broker.pubsub_channels("celery-task-meta-*") == []
    broker.close()


def test_docker_refuses_a_platform_it_cannot_build_before_building(
    build_fleet: WorkerProcess, git_repo_factory: Any
) -> None:
    repo = git_repo_factory()
    job = enqueue(
        "builds.build_image",
        _build_payload(repo, repo.branch, platforms=["linux/amd64", "linux/arm64"]),
    )
    row = wait_for_job(job.id, timeout=BUILD_TIMEOUT)
    assert row.status == "dead_lettered"
    assert row.attempts == 1
    assert row.error_class == "PlatformUnsupportedError"
    assert "linux/arm64" in row.error and "buildah" in row.error
    run = _run_of(job.id)
    assert run.status == "failed"
    assert _platform_rows(run.id) == {}  # nothing was built, not even the platform it could


def test_rebuilding_the_same_revision_hits_the_cache_and_no_cache_is_honoured(
    build_fleet: WorkerProcess, git_repo_factory: Any
) -> None:
    repo = git_repo_factory()
    payload = _build_payload(repo, repo.head_commit)

    def build(**extra: Any) -> BuildPlatform:
        job = enqueue("builds.build_image", {**payload, **extra})
        wait_for_job(job.id, ("succeeded",), timeout=BUILD_TIMEOUT)
        run = _run_of(job.id)
        assert run.ref_kind == "commit" and run.commit == repo.head_commit
        return _platform_rows(run.id)["linux/amd64"]

    cold = build()
    warm = build()
    assert warm.image_id == cold.image_id
    assert warm.steps_total and warm.steps_cached == warm.steps_total - 1  # all but FROM
    fresh = build(cache={"use_cache": False})
    assert fresh.steps_cached == 0


def test_a_broken_dockerfile_step_fails_at_once_with_the_step_and_its_log(
    build_fleet: WorkerProcess, git_repo_factory: Any
) -> None:
    repo = git_repo_factory()
    broken = repo.commit_broken_dockerfile()
    job = enqueue("builds.build_image", _build_payload(repo, broken))
    row = wait_for_job(job.id, timeout=BUILD_TIMEOUT)
    assert row.status == "dead_lettered"
    assert row.attempts == 1  # a failing step is not retried
    assert row.error_class == "BuildStepFailedError"
    assert "false" in row.error  # the step that failed
    run = _run_of(job.id)
    platform = _platform_rows(run.id)["linux/amd64"]
    assert platform.status == "failed" and platform.log_artifact_id is not None
    with session_scope() as session:
        log = ledger.get_artifact(session, platform.log_artifact_id)
        assert log is not None and b"false" in log.body


def test_a_password_changed_on_the_registry_is_refreshed_and_the_push_succeeds(
    build_fleet: WorkerProcess, git_repo_factory: Any, registry_server: Any
) -> None:
    repo = git_repo_factory()
    with session_scope() as session:
        providers.store_htpasswd(
            session, registry_server.host, DRYDOCK_USER, registry_server.htpasswd_path
        )
    issued = providers.credential_for(registry_server.host)
    assert issued is not None
    # Someone rotates the password on the registry, behind Drydock's back.
    set_htpasswd_password(registry_server.htpasswd_path, DRYDOCK_USER, "changed-elsewhere-1234")

    job = enqueue(
        "builds.build_image",
        _build_payload(
            repo, repo.tag, push={"registry": registry_server.host, "repository": "mcp/rotated"}
        ),
    )
    run = _wait_published(job.id)
    assert run.credential_outcome == "refreshed"
    push = wait_for_job(push_job_id(run.id, Platform.parse("linux/amd64")))
    assert push.attempts == 1  # refreshed and retried within the attempt

    events = _registry_events(run.id)
    assert _kinds(events, "linux/amd64") == [
        "tag_started",
        "tag_succeeded",
        "push_started",
        "push_failed",
        "auth_refresh",
        "push_retry",
        "push_started",
        "push_succeeded",
    ]
    failed = next(e for e in events if e.kind == "push_failed")
    assert failed.detail["error_kind"] == "auth_expired" and failed.detail["retryable"]
    refresh = next(e for e in events if e.kind == "auth_refresh")
    assert refresh.detail["outcome"] == "refreshed" and refresh.detail["provider"] == "htpasswd"

    fresh = providers.credential_for(registry_server.host)
    assert fresh is not None and fresh.password != issued.password
    with session_scope() as session:
        stored = session.execute(
            select(RegistryCredentialRow).where(RegistryCredentialRow.host == registry_server.host)
        ).scalar_one()
        assert stored.refresh_count == 1
        assert fresh.password not in (stored.sealed_password or "")  # encrypted at rest
    for secret in (issued.password, fresh.password):
        _assert_secret_nowhere(secret, build_fleet)


def test_a_stopped_registry_is_retried_then_dead_lettered_with_the_index_job(
    build_fleet: WorkerProcess, git_repo_factory: Any, registry_server: Any
) -> None:
    repo = git_repo_factory()
    registry_server.stop()
    job = enqueue(
        "builds.build_image",
        _build_payload(
            repo, repo.branch, push={"registry": registry_server.host, "repository": "mcp/down"}
        ),
    )
    wait_for_job(job.id, ("succeeded",), timeout=BUILD_TIMEOUT)
    run = _run_of(job.id)
    push = wait_for_job(push_job_id(run.id, Platform.parse("linux/amd64")), timeout=BUILD_TIMEOUT)
    assert push.status == "dead_lettered"
    assert push.attempts == 3  # DRYDOCK_RETRY_MAX_ATTEMPTS in the tests
    events = _registry_events(run.id)
    failures = [e for e in events if e.kind == "push_failed"]
    assert [e.detail["error_kind"] for e in failures] == ["network_or_timeout"] * 3
    retries = [e for e in events if e.kind == "push_retry"]
    assert [e.detail["attempt"] for e in retries] == [1, 2]
    assert all(e.detail["delay_seconds"] > 0 or e.detail["delay_seconds"] == 0 for e in retries)

    # The index the chord will never start is not left queued: it is a dead letter too, with
    # the reason, and so is the run.
    index = wait_for_job(index_job_id(run.id), ("dead_lettered",), timeout=10)
    assert "linux/amd64" in (index.error or "")
    with session_scope() as session:
        reasons = {
            letter.job_id: letter.reason for letter in session.execute(select(DeadLetter)).scalars()
        }
    assert reasons[push.id] == "retry_budget_exhausted"
    assert reasons[index.id] == "dependency_failed"
    assert _run_of(job.id).status == "failed"


def test_an_option_injection_url_is_refused_at_enqueue_and_at_the_task(
    build_fleet: WorkerProcess, tmp_path: Any
) -> None:
    from kernel.errors import PayloadInvalidError
    from workers.app import app

    marker = tmp_path / "pwned"
    evil = f"--upload-pack=touch {marker}"
    with pytest.raises(PayloadInvalidError, match="repository_url"):
        enqueue("builds.build_image", {"repository_url": evil, "revision": "main", "image": "x"})

    # A producer that skips enqueue still gets nothing run: dead-lettered at once.
    job_id = uuid.uuid4()
    app.send_task(
        "builds.build_image",
        kwargs={"repository_url": evil, "revision": "main", "image": "x"},
        task_id=str(job_id),
        queue="builds",
    )
    row = wait_for_job(job_id, timeout=BUILD_TIMEOUT)
    assert row.status == "dead_lettered" and row.attempts == 1
    assert "repository_url" in (row.error or "")
    assert not marker.exists()


def test_prune_dry_run_lists_then_prune_deletes_only_what_the_policy_lets_go(
    build_fleet: WorkerProcess, git_repo_factory: Any, registry_server: Any
) -> None:
    repo = git_repo_factory()
    with session_scope() as session:
        credential_store.store_static(
            session, registry_server.host, registry_server.username, registry_server.password
        )
    target = {"registry": registry_server.host, "repository": "mcp/pruned"}
    runs = {}
    for version in ("v1", "v2", "v3"):
        revision = repo.tag_new_commit(version)
        job = enqueue("builds.build_image", _build_payload(repo, revision, push=target))
        runs[version] = _wait_published(job.id)
    client = _client(registry_server)
    before = set(client.list_tags("mcp/pruned"))
    assert before == {f"{v}{suffix}" for v in runs for suffix in ("", "-linux-amd64")}

    # v1 is kept by pattern; v2's platform image has a live certification; v3 is the newest.
    v2_image = _platform_rows(runs["v2"].id)["linux/amd64"].digest
    assert v2_image is not None
    with session_scope() as session:
        ledger.set_retention_policy(
            session, registry_server.host, "mcp/pruned", keep_newest=2, keep_patterns=["v1"], by="t"
        )
        from datetime import UTC, datetime, timedelta

        session.add(
            ImageCertification(
                host=registry_server.host,
                repository="mcp/pruned",
                digest=v2_image,
                name="evaluation",
                expires_at=datetime.now(UTC) + timedelta(days=1),
            )
        )

    dry = enqueue("pushes.prune_tags", {**target, "dry_run": True})
    result = wait_for_job(dry.id, ("succeeded",), timeout=BUILD_TIMEOUT).result
    assert result["dry_run"] is True and result["deleted_digests"] == []
    assert {d["tag"] for d in result["delete"]} == {"v2"}
    assert result["delete_digests"] == [runs["v2"].index_digest]
    assert set(client.list_tags("mcp/pruned")) == before  # nothing went

    real = enqueue("pushes.prune_tags", {**target, "dry_run": False})
    result = wait_for_job(real.id, ("succeeded",), timeout=BUILD_TIMEOUT).result
    assert result["deleted_digests"] == [runs["v2"].index_digest]
    assert set(client.list_tags("mcp/pruned")) == before - {"v2"}
    deleted = [e for e in _registry_events(job_id=real.id) if e.kind == "tag_deleted"]
    assert [e.detail["tags"] for e in deleted] == [["v2"]]


def _assert_secret_nowhere(secret: str, worker: WorkerProcess) -> None:
    """A registry password is in no job row, event, dead letter, telemetry or worker log."""
    with session_scope() as session:
        texts = [
            json.dumps([j.payload, j.result, j.error])
            for j in session.execute(select(Job)).scalars()
        ]
        texts += [json.dumps(e.detail) for e in session.execute(select(JobEvent)).scalars()]
        texts += [json.dumps(e.detail) for e in session.execute(select(RegistryEvent)).scalars()]
        texts += [
            json.dumps([d.message, d.payload, d.traceback])
            for d in session.execute(select(DeadLetter)).scalars()
        ]
    assert not [t for t in texts if secret in t]
    assert secret not in worker.log()

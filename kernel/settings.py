"""The one typed settings object. Every knob is an environment variable prefixed ``DRYDOCK_``.

The README's configuration table is generated from this class's fields and descriptions, so a
setting documented there is a setting that exists here.
"""

from __future__ import annotations

import json
import os
from functools import lru_cache
from pathlib import Path
from typing import Annotated, Any, Literal

from pydantic import Field, SecretStr, model_validator
from pydantic.fields import FieldInfo
from pydantic_settings import (
    BaseSettings,
    PydanticBaseSettingsSource,
    SettingsConfigDict,
)

from kernel.topology import WORK_QUEUES

# Defaults per work queue, in seconds. Builds, remediation and workflow steps may run for an hour;
# attestation is a burst of short verifications.
DEFAULT_TIME_LIMITS: dict[str, int] = {
    "builds": 3600,
    "pushes": 1800,
    "attestation": 300,
    "remediation": 3600,
    "evaluation": 3600,
    "workflows": 3600,
    "runtime": 900,
}


# Seconds between a task's soft and hard time limits (for limits over a minute).
SOFT_LIMIT_GRACE_SECONDS = 30

# Written by `drydock up` into its state directory while it runs: the URLs of the servers it
# started, so that every other `drydock` command run from the same directory finds them.
LOCAL_FLEET_FILE = "fleet.json"
DEFAULT_STATE_DIR = ".drydock"


def local_fleet_file(state_dir: str | None = None) -> Path:
    directory = state_dir or os.environ.get("DRYDOCK_STATE_DIR") or DEFAULT_STATE_DIR
    return Path(directory).absolute() / LOCAL_FLEET_FILE


def read_local_fleet(state_dir: str | None = None) -> dict[str, Any] | None:
    """The running local fleet's description, or None when there is none (no file, or the
    `drydock up` that wrote it is gone)."""
    path = local_fleet_file(state_dir)
    try:
        fleet = json.loads(path.read_text())
        os.kill(int(fleet["supervisor_pid"]), 0)
    except (OSError, ValueError, KeyError, TypeError):
        return None
    return fleet if isinstance(fleet, dict) else None


class LocalFleetSource(PydanticBaseSettingsSource):
    """Lowest-priority settings: the broker, database and secret key of a local fleet started
    by `drydock up` in this directory. Environment variables always win."""

    def get_field_value(self, field: FieldInfo, field_name: str) -> tuple[Any, str, bool]:
        return None, field_name, False

    def __call__(self) -> dict[str, Any]:
        fleet = read_local_fleet()
        if fleet is None:
            return {}
        return {
            name: fleet[name]
            for name in ("broker_url", "database_url", "secret_key")
            if fleet.get(name)
        }


class Settings(BaseSettings):
    model_config = SettingsConfigDict(env_prefix="DRYDOCK_", extra="ignore")

    @classmethod
    def settings_customise_sources(
        cls,
        settings_cls: type[BaseSettings],
        init_settings: PydanticBaseSettingsSource,
        env_settings: PydanticBaseSettingsSource,
        dotenv_settings: PydanticBaseSettingsSource,
        file_secret_settings: PydanticBaseSettingsSource,
    ) -> tuple[PydanticBaseSettingsSource, ...]:
        return (
            init_settings,
            env_settings,
            dotenv_settings,
            LocalFleetSource(settings_cls),
            file_secret_settings,
        )

    broker_url: str = Field(
        "redis://127.0.0.1:6379/0", description="Redis URL of the Celery broker."
    )
    database_url: str = Field(
        "postgresql+psycopg://drydock@127.0.0.1:5432/drydock",
        description="SQLAlchemy URL of the PostgreSQL outcome store.",
    )
    secret_key: SecretStr | None = Field(
        None,
        description=(
            "Fernet key (`drydock keygen`) sealing the secret fields of stored payloads so that "
            "DLQ replay can restore them. Unset: secrets are redacted and not kept, and replaying "
            "a job that had any is refused."
        ),
    )
    visibility_timeout: Annotated[int, Field(gt=0)] = Field(
        7500,
        description=(
            "Seconds Redis waits for an unacknowledged message before redelivering it. Must "
            "exceed the longest task time limit plus the longest retry delay, or a slow job "
            "runs twice."
        ),
    )
    restore_sweep_seconds: Annotated[int, Field(ge=1)] = Field(
        60,
        description=(
            "How often each worker looks for messages whose visibility timeout has passed (a "
            "worker died holding them) and puts them back: a lost job returns after "
            "visibility_timeout plus up to this long."
        ),
    )
    time_limits: dict[str, int] = Field(
        default_factory=lambda: dict(DEFAULT_TIME_LIMITS),
        description="Hard time limit per work queue in seconds, as JSON.",
    )
    retry_max_attempts: Annotated[int, Field(ge=1, le=100)] = Field(
        5, description="Retry budget: attempts in all (first run included) for transient errors."
    )
    retry_base_seconds: Annotated[float, Field(gt=0)] = Field(
        2.0, description="Backoff multiplier: the first retry waits up to this long (full jitter)."
    )
    retry_max_seconds: Annotated[float, Field(gt=0)] = Field(
        600.0, description="Cap on a single retry delay."
    )
    worker_concurrency: Annotated[int, Field(ge=0)] = Field(
        0, description="Worker processes per `drydock worker`; 0 means one per CPU core."
    )
    canary_interval_seconds: Annotated[int, Field(ge=0)] = Field(
        300, description="Beat sends a canary to every queue this often; 0 turns it off."
    )
    heartbeat_seconds: Annotated[float, Field(gt=0, le=300)] = Field(
        10.0,
        description=(
            "How often each worker and Beat record a heartbeat in Redis. `/health/fleet` calls "
            "a worker or Beat lost after three heartbeats are missed."
        ),
    )
    heartbeat_file: str | None = Field(
        None,
        description=(
            "Where `drydock worker` and `drydock beat` also write each heartbeat, for "
            "`drydock probe` and `drydock drain` in the same container (the image sets "
            "`/tmp/drydock-heartbeat.json`). Unset: no file is written."
        ),
    )
    orphan_after_seconds: Annotated[float, Field(gt=0)] = Field(
        30.0,
        description=(
            "A worker silent this long (no heartbeat) is lost: the jobs it held go back to "
            "their queues at the next orphan sweep, instead of after the visibility timeout. "
            "Never less than two heartbeats (a smaller value counts as two)."
        ),
    )
    orphan_sweep_seconds: Annotated[float, Field(ge=0)] = Field(
        15.0,
        description=(
            "How often the workers look for jobs held by lost workers (one worker sweeps at a "
            "time); 0 turns the sweep off, leaving the visibility timeout alone."
        ),
    )
    worker_forget_seconds: Annotated[int, Field(ge=60)] = Field(
        3600,
        description=(
            "How long a lost worker's last heartbeat is kept (and reported as lost) before it "
            "is forgotten."
        ),
    )
    console_session_seconds: Annotated[int, Field(ge=60, le=7 * 86400)] = Field(
        8 * 3600,
        description=(
            "How long a console login lasts (its session, kept in Redis, ends then or at "
            "logout; a revoked token ends it at once)."
        ),
    )
    stuck_scan_hours: Annotated[int, Field(ge=1)] = Field(
        48,
        description=(
            "Health looks for stuck jobs among those enqueued this many hours back (the scan "
            "walks the enqueued_at index, so it stays cheap on a large table)."
        ),
    )
    health_peer_timeout_seconds: Annotated[float, Field(gt=0, le=30)] = Field(
        2.0,
        description=(
            "Longest health waits for each peer it probes (the Docker engine, registries, "
            "libvirt, the Kubernetes API); the probes run at the same time."
        ),
    )
    stream_poll_seconds: Annotated[float, Field(gt=0, le=10)] = Field(
        0.5,
        description=(
            "How often an open GET /v1/stream looks for new events when it has none to send "
            "(one indexed read per client; the longest an event waits to be served)."
        ),
    )
    stream_ping_seconds: Annotated[float, Field(gt=0, le=300)] = Field(
        15.0,
        description=(
            "Seconds between the comment lines GET /v1/stream sends while nothing happens, so "
            "proxies and clients keep an idle stream open."
        ),
    )
    state_dir: str = Field(
        DEFAULT_STATE_DIR,
        description=(
            "Where `drydock up` keeps its embedded Redis and PostgreSQL data, logs and local "
            "credentials, relative to the directory it runs in."
        ),
    )
    build_backend: Literal["docker", "buildah"] = Field(
        "docker",
        description=(
            "Builder backend of `builds.build_image` when a request names none: `docker` (the "
            "Engine API; the engine's native platform only) or `buildah` (daemonless, any "
            "platform whose steps need no emulation)."
        ),
    )
    docker_host: str | None = Field(
        None,
        description="Docker Engine API address (`unix:///run/docker.sock`); unset: DOCKER_HOST.",
    )
    buildah_root: str | None = Field(
        None, description="buildah's image storage (`--root`); unset: buildah's default."
    )
    buildah_runroot: str | None = Field(
        None, description="buildah's state directory (`--runroot`); unset: buildah's default."
    )
    buildah_storage_driver: str = Field(
        "vfs",
        description=(
            "buildah storage driver: `vfs` runs anywhere (pods and containers included); "
            "`overlay` is faster where the kernel allows it."
        ),
    )
    build_parallelism: Annotated[int, Field(ge=1, le=32)] = Field(
        2, description="Platforms of one build request built at the same time."
    )
    build_work_dir: str | None = Field(
        None,
        description=(
            "Where builds fetch their sources, one directory per job, removed afterwards; "
            "unset: `drydock-builds` in the system temporary directory."
        ),
    )
    git_allowed_schemes: list[str] = Field(
        default_factory=lambda: ["https", "ssh"],
        description=(
            "URL schemes `builds.build_image` may fetch from, as JSON (`file` only for trusted "
            "local repositories; `ext` and other transports are never allowed)."
        ),
    )
    git_timeout_seconds: Annotated[float, Field(gt=0)] = Field(
        300.0, description="Longest a source fetch may take before the build fails."
    )
    git_max_bytes: Annotated[int, Field(gt=0)] = Field(
        512 * 1024 * 1024, description="Largest a fetched source may grow on disk."
    )
    insecure_registries: list[str] = Field(
        default_factory=lambda: ["localhost", "127.0.0.1", "[::1]"],
        description=(
            "Registry hosts spoken to over plain HTTP, as JSON (loopback only by default, as "
            "the Docker engine does)."
        ),
    )
    registry_timeout_seconds: Annotated[float, Field(gt=0)] = Field(
        60.0, description="Timeout of one registry HTTP request."
    )
    attestation_roots_dir: str | None = Field(
        None,
        description=(
            "Directory of PEM or DER files holding more pinned roots SEV-SNP and TDX evidence "
            "may chain to, beside the built-in ones; only self-signed certificates in it count."
        ),
    )
    attestation_default_roots: bool = Field(
        True,
        description=(
            "Trust the built-in vendor roots (AMD's ARKs for Milan, Genoa and Turin, Intel's "
            "SGX Root CA), each pinned by its published SHA-256. Off: only the roots in "
            "DRYDOCK_ATTESTATION_ROOTS_DIR are trusted."
        ),
    )
    libvirt_uri: str = Field(
        "qemu:///system",
        description="libvirt connection `attestation.sync_vm_inventory` reads domains from.",
    )
    trust_staleness_interval_seconds: Annotated[float, Field(ge=0)] = Field(
        60.0,
        description=(
            "How often Beat moves trusted assets whose evidence has expired to `stale`; 0 turns "
            "the entry off."
        ),
    )
    trust_default_evidence_ttl_seconds: Annotated[int, Field(gt=0)] = Field(
        86400,
        description="How long verified evidence keeps an asset trusted when its class sets no TTL.",
    )
    remediation_sandbox_image: str = Field(
        "drydock/remediation-sandbox:latest",
        description=(
            "Image `shell` playbook steps run in (`drydock remediation sandbox build` makes one "
            "from a static busybox); `container` playbooks name their own."
        ),
    )
    remediation_allow_local_ansible: bool = Field(
        False,
        description=(
            "Let `ansible` playbooks use `ansible_connection: local`, which runs their tasks on "
            "the worker itself. Off in production: playbooks reach their target over SSH."
        ),
    )
    kubeconfig: str | None = Field(
        None,
        description=(
            "kubeconfig file of the Kubernetes API `kubernetes` playbooks act on and credential "
            "rotation writes image-pull secrets to; unset: the in-cluster service account, else "
            "~/.kube/config."
        ),
    )
    remediation_approval_ttl_seconds: Annotated[int, Field(gt=0)] = Field(
        3600,
        description=(
            "How long an approval token is valid: a run not started by then becomes `expired`."
        ),
    )
    remediation_request_ttl_seconds: Annotated[int, Field(gt=0)] = Field(
        86400,
        description="How long a run waits for approval before it becomes `expired`.",
    )
    remediation_signing_key: SecretStr | None = Field(
        None,
        description=(
            "Key signing approval tokens (HS256). Unset: derived from DRYDOCK_SECRET_KEY; with "
            "neither set, approvals are refused."
        ),
    )
    remediation_artifact_max_bytes: Annotated[int, Field(ge=1024)] = Field(
        65536,
        description=(
            "Most bytes of stdout and of stderr kept per playbook step (the head and the tail; "
            "the middle is cut and marked)."
        ),
    )
    remediation_expiry_interval_seconds: Annotated[float, Field(ge=0)] = Field(
        60.0,
        description=(
            "How often Beat expires runs whose approval wait or approval token ran out, sends "
            "unsent ones and requests runs for quarantined assets whose class names a "
            "playbook; 0 turns the entry off."
        ),
    )
    workflow_sweep_interval_seconds: Annotated[float, Field(ge=0)] = Field(
        30.0,
        description=(
            "How often Beat moves on workflow runs that nothing is moving: a step whose job was "
            "never sent, or was lost without an outcome the run heard of; 0 turns it off."
        ),
    )
    workflow_stuck_after_seconds: Annotated[float, Field(gt=0)] = Field(
        120.0,
        description=(
            "A running workflow step whose runner has not beaten its heartbeat (every 5 s) for "
            "this long is reported stuck by /health/workflows."
        ),
    )
    workflow_workspace_root: str | None = Field(
        None,
        description=(
            "Directory each workflow step's workspace is cloned under (removed when the step "
            "ends); unset: the system's temporary directory. The Docker engine running the "
            "steps must see the same path (it bind-mounts the workspace)."
        ),
    )
    workflow_step_network: str | None = Field(
        None,
        description=(
            "Engine network a workflow step that asks for network access joins (`host` on an "
            "engine without a bridge); unset: no step gets a network, and one asking fails."
        ),
    )
    workflow_secrets_dir: str | None = Field(
        None,
        description=(
            "Directory of workflow secrets, one file per secret at `<tenant>/<name>` (a mounted "
            "Kubernetes secret, say); a step's `{secret: name}` reads its tenant's file."
        ),
    )
    workflow_runner_name: str = Field(
        "Drydock Runner", max_length=200, description="Author and committer of step commits."
    )
    workflow_runner_email: str = Field(
        "runner@drydock.invalid", max_length=200, description="Their e-mail address."
    )
    workflow_remote_check_timeout_seconds: Annotated[float, Field(gt=0)] = Field(
        10.0,
        description="How long a run's start waits for each remote to answer `ls-remote`.",
    )
    workflow_agent_providers_file: str | None = Field(
        None,
        description=(
            "YAML or JSON file of the agent providers workflow `agent` steps may name; a "
            "worker serving `workflows` validates each at start and refuses to start on one "
            "that is not usable. Unset: no providers (agent steps fail)."
        ),
    )
    workflow_provenance_key_file: str | None = Field(
        None,
        description=(
            "PEM Ed25519 private key signing workflow runs' provenance (DSSE); unset: derived "
            "from DRYDOCK_SECRET_KEY."
        ),
    )
    runtime_probe_timeout_seconds: Annotated[float, Field(gt=0, le=600)] = Field(
        60.0,
        description=(
            "How long a launched MCP server has to answer its probe (the MCP `initialize` call "
            "or an HTTP GET) before the launch fails it."
        ),
    )
    runtime_attestation_timeout_seconds: Annotated[float, Field(gt=0, le=3600)] = Field(
        300.0,
        description=(
            "How long a VM the runtime launched has to attest (its evidence verified, its trust "
            "asset trusted) before the launch fails it."
        ),
    )
    runtime_trust_sweep_seconds: Annotated[float, Field(ge=0, le=3600)] = Field(
        15.0,
        description=(
            "How often Beat runs `runtime.enforce_trust`, which stops running instances whose "
            "host or VM asset is quarantined; 0: never."
        ),
    )
    runtime_anomaly_threshold: Annotated[float, Field(ge=0, le=1_000_000)] = Field(
        3.5,
        description=(
            "The anomaly score (each metric of the digest's repository) a promotion to a tier "
            "without its own rule (`drydock releases rules put`) must not exceed."
        ),
    )
    runtime_analysis_seconds: Annotated[float, Field(ge=0, le=3600)] = Field(
        30.0,
        description=(
            "How long a rollout to a tier without its own rule probes the new instance before "
            "shifting to it; a failed probe in that window rolls back. Keep the runtime queue's "
            "time limit above it and the probe timeout."
        ),
    )
    runtime_promotion_approval_ttl_seconds: Annotated[int, Field(ge=60, le=30 * 86400)] = Field(
        3600,
        description="How long an approval token for a promotion to a protected tier is valid.",
    )
    runtime_memory_mb: Annotated[int, Field(ge=16, le=262_144)] = Field(
        512, description="Memory limit of each server container the runtime launches (MiB)."
    )
    runtime_cpus: Annotated[float, Field(gt=0, le=64)] = Field(
        1.0, description="CPU limit of each server container the runtime launches."
    )
    runtime_pids: Annotated[int, Field(ge=8, le=65_536)] = Field(
        256, description="Process limit of each server container the runtime launches."
    )
    evaluation_host_asset: str | None = Field(
        None,
        description=(
            "Trust asset (id, or `tenant/name`) of the host this evaluation worker runs on: a "
            "suite runs only while it is trusted (a recorded policy gate); unset: none runs."
        ),
    )
    evaluation_cadence_interval_seconds: Annotated[float, Field(ge=0)] = Field(
        60.0,
        description=(
            "How often Beat enqueues refreshes of certifications inside their refresh window "
            "and marks expired ones stale; 0 turns the entry off."
        ),
    )
    evaluation_refresh_batch: Annotated[int, Field(gt=0)] = Field(
        1000,
        description=(
            "Most refreshes one cadence sweep enqueues; the rest wait for the next sweep, so a "
            "backlog never floods the evaluation queue at once."
        ),
    )
    anomaly_interval_seconds: Annotated[float, Field(ge=0)] = Field(
        300.0,
        description="How often Beat recomputes capability scores; 0 turns the entry off.",
    )
    anomaly_window_seconds: Annotated[int, Field(gt=0)] = Field(
        7 * 86400,
        description="The rolling window anomaly scores are computed over (builds, credentials).",
    )
    anomaly_latency_z_threshold: Annotated[float, Field(gt=0)] = Field(
        3.5,
        description=(
            "A repository's newest build latency is flagged above this robust z-score "
            "(0.6745 * (x - median) / MAD over the window)."
        ),
    )
    anomaly_min_builds: Annotated[int, Field(ge=2)] = Field(
        5,
        description="Builds a repository needs in the window before its latency is scored.",
    )
    anomaly_churn_threshold: Annotated[int, Field(ge=0)] = Field(
        3,
        description=(
            "A repository is flagged for credential churn above this many rotations and auth "
            "failures of its registry within the window."
        ),
    )
    credential_rotation_interval_seconds: Annotated[float, Field(ge=0)] = Field(
        3600.0,
        description=(
            "How often Beat probes every registry credential and rotates those due; 0 turns "
            "the entry off."
        ),
    )
    credential_rotation_margin_seconds: Annotated[int, Field(ge=0)] = Field(
        86400,
        description="A credential whose provider says it expires within this long is rotated.",
    )
    beat_lock_timeout_seconds: Annotated[float, Field(gt=0)] = Field(
        30.0,
        description=(
            "Beat's lock in Redis (celery-redbeat) expires this long after the Beat holding it "
            "stops renewing it; a second Beat waits on the lock and takes over after it."
        ),
    )
    max_payload_bytes: Annotated[int, Field(ge=1024, le=64 * 1024 * 1024)] = Field(
        1024 * 1024,
        description=(
            "The largest payload a job may carry, in bytes of its JSON form: refused by "
            "`enqueue` (PayloadTooLargeError), by the API (413) and by the worker (a dead letter)."
        ),
    )
    log_level: str = Field("INFO", description="Log level of workers and the CLI.")
    log_json: bool = Field(True, description="Log one JSON object per line (structlog).")
    extra_secret_fields: list[str] = Field(
        default_factory=list,
        description="More field names to redact, beyond password/token/secret/key-like names.",
    )
    flower_basic_auth: SecretStr | None = Field(
        None,
        description=(
            "Credentials of `drydock flower`, `user:password` pairs separated by commas (used "
            "when `--basic-auth` is not given). Unset: Flower refuses to start unless run with "
            "`--insecure-local`."
        ),
    )

    @model_validator(mode="after")
    def _check_timing(self) -> Settings:
        unknown = set(self.time_limits) - set(WORK_QUEUES)
        if unknown:
            raise ValueError(f"time_limits names unknown queues: {sorted(unknown)}")
        limits = {**DEFAULT_TIME_LIMITS, **self.time_limits}
        self.time_limits = limits
        longest = max(limits.values())
        if self.visibility_timeout <= longest + self.retry_max_seconds:
            raise ValueError(
                f"visibility_timeout ({self.visibility_timeout}s) must exceed the longest task "
                f"time limit ({longest}s) plus retry_max_seconds ({self.retry_max_seconds:g}s); "
                "otherwise Redis redelivers jobs that are still running or waiting to retry"
            )
        # Beat renews its lock once a tick and sleeps up to a heartbeat between ticks; the
        # second heartbeat is room for a slow tick before the lock lapses to another Beat.
        if self.beat_lock_timeout_seconds < 2 * self.heartbeat_seconds:
            raise ValueError(
                f"beat_lock_timeout_seconds ({self.beat_lock_timeout_seconds:g}s) must be at "
                f"least twice heartbeat_seconds ({self.heartbeat_seconds:g}s); otherwise Beat's "
                "lock lapses between ticks and another Beat fires too"
            )
        return self

    @property
    def orphan_after(self) -> float:
        """How long a worker may be silent before its jobs are given back: never under two
        heartbeats, or a live worker's jobs could be taken from it between two beats."""
        return max(self.orphan_after_seconds, 2 * self.heartbeat_seconds)

    @property
    def heartbeat_stale_seconds(self) -> float:
        """A heartbeat older than this means its worker or Beat is gone."""
        return self.heartbeat_seconds * 3

    def time_limit(self, queue: str) -> int:
        return self.time_limits[queue]

    def time_limits_for(self, queue: str) -> tuple[int, int]:
        """``(soft, hard)`` limits of a queue's tasks. At the soft limit the task is told to stop
        and is dead-lettered cleanly; at the hard limit its pool process is killed."""
        hard = self.time_limits[queue]
        soft = hard - SOFT_LIMIT_GRACE_SECONDS if hard > 60 else int(hard * 0.8)
        return max(1, soft), hard

    def work_budget_seconds(self, queue: str) -> int:
        """The longest a task's own timed work (a playbook, an evaluation suite) may be given:
        under the queue's soft time limit, with room left to record the outcome."""
        soft, _ = self.time_limits_for(queue)
        return max(1, soft - min(30, max(1, soft // 5)))


@lru_cache(maxsize=1)
def get_settings() -> Settings:
    return Settings()

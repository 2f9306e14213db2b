"""The outcome store: every job, every transition of it, and every dead letter."""

from __future__ import annotations

import uuid
from datetime import datetime
from enum import StrEnum
from typing import Any

from sqlalchemy import (
    BigInteger,
    CheckConstraint,
    DateTime,
    ForeignKey,
    Identity,
    Index,
    Integer,
    LargeBinary,
    PrimaryKeyConstraint,
    String,
    Text,
    UniqueConstraint,
    Uuid,
    func,
    text,
)
from sqlalchemy.dialects.postgresql import JSONB
from sqlalchemy.orm import Mapped, mapped_column

from models.base import Base


class JobStatus(StrEnum):
    QUEUED = "queued"
    RUNNING = "running"
    RETRYING = "retrying"
    SUCCEEDED = "succeeded"
    DEAD_LETTERED = "dead_lettered"
    # Cancelled before it ran: its target asset was quarantined while it waited in the queue.
    PREEMPTED = "preempted"


TERMINAL_STATUSES = (JobStatus.SUCCEEDED, JobStatus.DEAD_LETTERED, JobStatus.PREEMPTED)


class EventKind(StrEnum):
    ENQUEUED = "enqueued"
    STARTED = "started"
    PROGRESS = "progress"
    RETRY = "retry"
    SUCCEEDED = "succeeded"
    FAILED = "failed"
    DEAD_LETTERED = "dead_lettered"
    PREEMPTED = "preempted"


# A job has at most one of each of these: the database itself refuses a duplicated outcome.
OUTCOME_EVENT_KINDS = (
    EventKind.SUCCEEDED,
    EventKind.FAILED,
    EventKind.DEAD_LETTERED,
    EventKind.PREEMPTED,
)


def sql_in_list(column: str, values: tuple[StrEnum, ...]) -> str:
    """``column IN ('a', 'b')`` for a set of enum values, for constraints and raw statements."""
    return f"{column} IN ({', '.join(repr(v.value) for v in values)})"


class Job(Base):
    __tablename__ = "jobs"

    id: Mapped[uuid.UUID] = mapped_column(Uuid, primary_key=True, default=uuid.uuid4)
    task_name: Mapped[str] = mapped_column(String(200))
    queue: Mapped[str] = mapped_column(String(50))
    # Secret-looking fields are replaced by "[REDACTED]"; see kernel.redaction.
    payload: Mapped[dict[str, Any]] = mapped_column(JSONB)
    # Fernet token of the redacted values, present only when a fleet key is configured.
    sealed_secrets: Mapped[str | None] = mapped_column(Text)
    idempotency_key: Mapped[str | None] = mapped_column(String(200), unique=True)
    status: Mapped[str] = mapped_column(String(20), default=JobStatus.QUEUED.value)
    attempts: Mapped[int] = mapped_column(Integer, default=0, server_default="0")
    enqueued_by: Mapped[str | None] = mapped_column(String(200))
    replay_of: Mapped[uuid.UUID | None] = mapped_column(
        Uuid, ForeignKey("jobs.id", ondelete="SET NULL")
    )
    enqueued_at: Mapped[datetime] = mapped_column(
        DateTime(timezone=True), server_default=func.now()
    )
    started_at: Mapped[datetime | None] = mapped_column(DateTime(timezone=True))
    finished_at: Mapped[datetime | None] = mapped_column(DateTime(timezone=True))
    worker: Mapped[str | None] = mapped_column(String(200))
    worker_pid: Mapped[int | None] = mapped_column(Integer)
    result: Mapped[Any | None] = mapped_column(JSONB)
    error: Mapped[str | None] = mapped_column(Text)
    error_class: Mapped[str | None] = mapped_column(String(200))
    # Admission: the tenant the job acts for (the token's, or the payload's), the asset it is
    # bound to (a quarantine of that asset preempts it while it waits), and the admission
    # decision it passed (its id and gates), carried into the job's outcome event.
    tenant: Mapped[str | None] = mapped_column(String(100))
    target_asset_id: Mapped[uuid.UUID | None] = mapped_column(
        Uuid, ForeignKey("trust_assets.id", ondelete="SET NULL")
    )
    policy_context: Mapped[dict[str, Any] | None] = mapped_column(JSONB)

    # No index may cover a column that changes while a job runs (status, attempts, times):
    # then PostgreSQL updates the row in place (HOT, helped by the fillfactor) without touching
    # any index, twice for every job. Listings walk enqueued_at newest first and filter.
    __table_args__ = (
        CheckConstraint(sql_in_list("status", tuple(JobStatus)), name="status"),
        Index(None, "enqueued_at"),
        # Never changes once written, so it keeps updates HOT: a quarantine finds the asset's
        # waiting jobs through it.
        Index(None, "target_asset_id"),
        {"postgresql_with": {"fillfactor": 80}},
    )


class JobEvent(Base):
    __tablename__ = "job_events"

    # The key is (job_id, id): one index serves "this job's events in order" and the key both,
    # since every job writes at least two events and each index costs on every insert.
    job_id: Mapped[uuid.UUID] = mapped_column(
        Uuid, ForeignKey("jobs.id", ondelete="CASCADE"), primary_key=True
    )
    id: Mapped[int] = mapped_column(BigInteger, Identity(), primary_key=True)
    kind: Mapped[str] = mapped_column(String(20))
    attempt: Mapped[int] = mapped_column(Integer, default=0)
    at: Mapped[datetime] = mapped_column(DateTime(timezone=True), server_default=func.now())
    # For started: none; for outcomes: how long the attempt ran.
    latency_ms: Mapped[float | None]
    # For started: how long the message waited in its queue (or past its retry ETA).
    queue_wait_ms: Mapped[float | None]
    queue: Mapped[str | None] = mapped_column(String(50))
    worker: Mapped[str | None] = mapped_column(String(200))
    worker_pid: Mapped[int | None] = mapped_column(Integer)
    detail: Mapped[dict[str, Any]] = mapped_column(JSONB, default=dict, server_default="{}")

    __table_args__ = (
        PrimaryKeyConstraint("job_id", "id"),
        CheckConstraint(sql_in_list("kind", tuple(EventKind)), name="kind"),
        Index(
            "uq_job_events_one_outcome",
            "job_id",
            "kind",
            unique=True,
            postgresql_where=text(sql_in_list("kind", OUTCOME_EVENT_KINDS)),
        ),
    )


class DeadLetter(Base):
    __tablename__ = "dead_letters"

    id: Mapped[int] = mapped_column(BigInteger, primary_key=True, autoincrement=True)
    job_id: Mapped[uuid.UUID] = mapped_column(
        Uuid, ForeignKey("jobs.id", ondelete="CASCADE"), unique=True
    )
    task_name: Mapped[str] = mapped_column(String(200))
    queue: Mapped[str] = mapped_column(String(50))
    error_class: Mapped[str] = mapped_column(String(200))
    message: Mapped[str] = mapped_column(Text)
    traceback: Mapped[str | None] = mapped_column(Text)
    payload: Mapped[dict[str, Any]] = mapped_column(JSONB)
    attempts: Mapped[int] = mapped_column(Integer)
    reason: Mapped[str] = mapped_column(String(30))
    # A message refused before it could run (not readable, an unknown task, a payload that
    # cannot be stored): its body as it came, capped and redacted, and the id it carried.
    raw_body: Mapped[str | None] = mapped_column(Text)
    message_id: Mapped[str | None] = mapped_column(String(200))
    dead_lettered_at: Mapped[datetime] = mapped_column(
        DateTime(timezone=True), server_default=func.now()
    )
    replayed_at: Mapped[datetime | None] = mapped_column(DateTime(timezone=True))
    replayed_by: Mapped[str | None] = mapped_column(String(200))
    replay_job_id: Mapped[uuid.UUID | None] = mapped_column(
        Uuid, ForeignKey("jobs.id", ondelete="SET NULL")
    )

    __table_args__ = (Index(None, "dead_lettered_at"),)


class ApiToken(Base):
    """A bearer token of the HTTP API. Only its SHA-256 is stored: the token itself is shown
    once, when it is created."""

    __tablename__ = "api_tokens"

    id: Mapped[int] = mapped_column(BigInteger, primary_key=True, autoincrement=True)
    name: Mapped[str] = mapped_column(String(100))
    token_hash: Mapped[str] = mapped_column(String(64), unique=True)
    # Task-name patterns (fnmatch, e.g. "builds.*"): what the token may enqueue and read.
    scopes: Mapped[list[str]] = mapped_column(JSONB)
    # The tenant the token acts for: it sees and changes only that tenant's remediation
    # playbooks, runs and artifacts. None: an operator token, across tenants.
    tenant: Mapped[str | None] = mapped_column(String(100))
    created_at: Mapped[datetime] = mapped_column(DateTime(timezone=True), server_default=func.now())
    created_by: Mapped[str | None] = mapped_column(String(200))
    last_used_at: Mapped[datetime | None] = mapped_column(DateTime(timezone=True))
    revoked_at: Mapped[datetime | None] = mapped_column(DateTime(timezone=True))

    # A name is reused only once its previous token is revoked; revoked ones stay for audit.
    __table_args__ = (
        Index(
            "uq_api_tokens_active_name",
            "name",
            unique=True,
            postgresql_where=text("revoked_at IS NULL"),
        ),
    )


# --- Builds and pushes: the artifact ledger ------------------------------------------------------


class BuildStatus(StrEnum):
    FETCHING = "fetching"
    BUILDING = "building"
    # Every platform built; with a push target the pushes and the index follow.
    BUILT = "built"
    PUSHING = "pushing"
    # Pushed, and the multi-platform index published: the request's one tag exists.
    PUBLISHED = "published"
    FAILED = "failed"


class PlatformStatus(StrEnum):
    BUILDING = "building"
    BUILT = "built"
    PUSHING = "pushing"
    PUSHED = "pushed"
    FAILED = "failed"


class CredentialOutcome(StrEnum):
    """What the credential provider gave a build's push, recorded on the run."""

    NOT_NEEDED = "not_needed"  # no push target
    ANONYMOUS = "anonymous"  # the registry has no credentials configured in Drydock
    ISSUED = "issued"  # the provider gave credentials
    REFRESHED = "refreshed"  # the registry refused them; the provider's fresh ones worked
    REJECTED = "rejected"  # refused even after a refresh
    UNAVAILABLE = "unavailable"  # the provider could not give any


class BuildRun(Base):
    """One ``builds.build_image`` job: what was asked, what it resolved to, how it ended."""

    __tablename__ = "build_runs"

    id: Mapped[uuid.UUID] = mapped_column(Uuid, primary_key=True, default=uuid.uuid4)
    # One run per job: a redelivered or retried job continues its run instead of adding one.
    job_id: Mapped[uuid.UUID] = mapped_column(
        Uuid, ForeignKey("jobs.id", ondelete="CASCADE"), unique=True
    )
    # Never with credentials: a URL carrying them is refused (catalog.builds).
    repository_url: Mapped[str] = mapped_column(Text)
    revision: Mapped[str] = mapped_column(String(255))
    # The commit the revision resolved to when it was fetched.
    commit: Mapped[str | None] = mapped_column(String(64))
    ref_kind: Mapped[str | None] = mapped_column(String(10))
    image: Mapped[str] = mapped_column(String(255))
    backend: Mapped[str] = mapped_column(String(20))
    platforms: Mapped[list[str]] = mapped_column(JSONB)
    # {"registry", "repository", "tag"}: where the multi-platform tag goes; None: build only.
    push_target: Mapped[dict[str, Any] | None] = mapped_column(JSONB)
    status: Mapped[str] = mapped_column(String(20))
    error: Mapped[str | None] = mapped_column(Text)
    credential_outcome: Mapped[str | None] = mapped_column(String(20))
    index_digest: Mapped[str | None] = mapped_column(String(100))
    created_at: Mapped[datetime] = mapped_column(DateTime(timezone=True), server_default=func.now())
    fetch_ms: Mapped[float | None]
    build_ms: Mapped[float | None]
    built_at: Mapped[datetime | None] = mapped_column(DateTime(timezone=True))
    # Set once the push chord is sent, so a redelivered build never sends it twice.
    pushes_dispatched_at: Mapped[datetime | None] = mapped_column(DateTime(timezone=True))
    finished_at: Mapped[datetime | None] = mapped_column(DateTime(timezone=True))

    __table_args__ = (
        CheckConstraint(sql_in_list("status", tuple(BuildStatus)), name="status"),
        CheckConstraint(
            "credential_outcome IS NULL OR "
            + sql_in_list("credential_outcome", tuple(CredentialOutcome)),
            name="credential_outcome",
        ),
        Index(None, "created_at"),
        # The policy engine finds a digest's repository by its index digest (or a platform's).
        Index(
            "ix_build_runs_index_digest",
            "index_digest",
            postgresql_where=text("index_digest IS NOT NULL"),
        ),
    )


class BuildPlatform(Base):
    """One platform's image of a build run: built, then (with a push target) pushed."""

    __tablename__ = "build_platforms"

    id: Mapped[int] = mapped_column(BigInteger, primary_key=True, autoincrement=True)
    run_id: Mapped[uuid.UUID] = mapped_column(Uuid, ForeignKey("build_runs.id", ondelete="CASCADE"))
    platform: Mapped[str] = mapped_column(String(50))
    # The local per-platform tag, <image>:<revision>-<os>-<arch>.
    tag: Mapped[str] = mapped_column(String(400))
    status: Mapped[str] = mapped_column(String(20))
    image_id: Mapped[str | None] = mapped_column(String(100))
    size_bytes: Mapped[int | None] = mapped_column(BigInteger)
    steps_total: Mapped[int | None] = mapped_column(Integer)
    steps_cached: Mapped[int | None] = mapped_column(Integer)
    build_started_at: Mapped[datetime | None] = mapped_column(DateTime(timezone=True))
    build_ms: Mapped[float | None]
    error: Mapped[str | None] = mapped_column(Text)
    log_artifact_id: Mapped[int | None] = mapped_column(
        BigInteger, ForeignKey("artifacts.id", ondelete="SET NULL")
    )
    # Once pushed: the registry reference and manifest digest.
    pushed_ref: Mapped[str | None] = mapped_column(String(500))
    digest: Mapped[str | None] = mapped_column(String(100))
    bytes_sent: Mapped[int | None] = mapped_column(BigInteger)
    layers_pushed: Mapped[int | None] = mapped_column(Integer)
    layers_reused: Mapped[int | None] = mapped_column(Integer)
    push_ms: Mapped[float | None]
    pushed_at: Mapped[datetime | None] = mapped_column(DateTime(timezone=True))

    __table_args__ = (
        UniqueConstraint("run_id", "platform"),
        CheckConstraint(sql_in_list("status", tuple(PlatformStatus)), name="status"),
        Index(None, "digest"),
    )


class Artifact(Base):
    """A file a job produced and keeps (a build log, later remediation output), in the database
    so every worker and the API can read it without shared disks."""

    __tablename__ = "artifacts"

    id: Mapped[int] = mapped_column(BigInteger, primary_key=True, autoincrement=True)
    job_id: Mapped[uuid.UUID] = mapped_column(Uuid, ForeignKey("jobs.id", ondelete="CASCADE"))
    kind: Mapped[str] = mapped_column(String(50))
    name: Mapped[str] = mapped_column(String(200))
    content_type: Mapped[str] = mapped_column(String(100))
    # Bytes kept (the tail when the whole was over the cap), and whether anything was cut.
    size_bytes: Mapped[int] = mapped_column(BigInteger)
    truncated: Mapped[bool] = mapped_column(default=False)
    sha256: Mapped[str] = mapped_column(String(64))
    body: Mapped[bytes] = mapped_column(LargeBinary)
    created_at: Mapped[datetime] = mapped_column(DateTime(timezone=True), server_default=func.now())

    # A retried job replaces its artifact of the same kind and name instead of adding one.
    __table_args__ = (UniqueConstraint("job_id", "kind", "name"),)


class RegistryEventKind(StrEnum):
    TAG_STARTED = "tag_started"
    TAG_SUCCEEDED = "tag_succeeded"
    TAG_FAILED = "tag_failed"
    PUSH_STARTED = "push_started"
    PUSH_RETRY = "push_retry"
    PUSH_FAILED = "push_failed"
    PUSH_SUCCEEDED = "push_succeeded"
    AUTH_REFRESH = "auth_refresh"
    INDEX_PUBLISHED = "index_published"
    TAG_DELETED = "tag_deleted"


class RegistryEvent(Base):
    """Registry telemetry: one row per tag, push, retry, refresh. ``detail`` follows the schema
    of its kind and version in tasks.pushes.telemetry, checked before the row is written."""

    __tablename__ = "registry_events"

    id: Mapped[int] = mapped_column(BigInteger, Identity(), primary_key=True)
    job_id: Mapped[uuid.UUID] = mapped_column(Uuid, ForeignKey("jobs.id", ondelete="CASCADE"))
    run_id: Mapped[uuid.UUID | None] = mapped_column(
        Uuid, ForeignKey("build_runs.id", ondelete="SET NULL")
    )
    kind: Mapped[str] = mapped_column(String(30))
    schema_version: Mapped[int] = mapped_column(Integer)
    platform: Mapped[str | None] = mapped_column(String(50))
    at: Mapped[datetime] = mapped_column(DateTime(timezone=True), server_default=func.now())
    detail: Mapped[dict[str, Any]] = mapped_column(JSONB)

    __table_args__ = (
        CheckConstraint(sql_in_list("kind", tuple(RegistryEventKind)), name="kind"),
        Index(None, "job_id"),
        Index(None, "run_id"),
        Index(None, "at"),
    )


class CredentialProviderKind(StrEnum):
    STATIC = "static"
    HTPASSWD = "htpasswd"
    COMMAND = "command"


class RegistryCredentialRow(Base):
    """How Drydock gets credentials for one registry. Passwords are sealed with the fleet key
    (DRYDOCK_SECRET_KEY, Fernet) and never leave this table unsealed except into a push."""

    __tablename__ = "registry_credentials"

    id: Mapped[int] = mapped_column(BigInteger, primary_key=True, autoincrement=True)
    # The registry's host[:port], as image references name it ("registry.example.com:5000").
    host: Mapped[str] = mapped_column(String(255), unique=True)
    provider: Mapped[str] = mapped_column(String(20))
    username: Mapped[str | None] = mapped_column(String(255))
    # The last password issued (static: the one given; htpasswd: the one set; command: cached).
    sealed_password: Mapped[str | None] = mapped_column(Text)
    # Provider settings: {"htpasswd_path": ...} or {"command": [argv...]}. Never secrets.
    config: Mapped[dict[str, Any]] = mapped_column(JSONB, default=dict, server_default="{}")
    created_at: Mapped[datetime] = mapped_column(DateTime(timezone=True), server_default=func.now())
    updated_at: Mapped[datetime] = mapped_column(DateTime(timezone=True), server_default=func.now())
    refreshed_at: Mapped[datetime | None] = mapped_column(DateTime(timezone=True))
    refresh_count: Mapped[int] = mapped_column(Integer, default=0, server_default="0")
    # Rotation (Beat's credential-rotation): rotate once the password is this old (None: only
    # when it is refused or its provider says it expires), and when the provider's credential
    # expires (a helper may say so).
    rotate_after_seconds: Mapped[int | None] = mapped_column(Integer)
    expires_at: Mapped[datetime | None] = mapped_column(DateTime(timezone=True))
    # The Kubernetes image-pull secret (a dockerconfigjson Secret) kept in step with it.
    pull_secret_namespace: Mapped[str | None] = mapped_column(String(253))
    pull_secret_name: Mapped[str | None] = mapped_column(String(253))
    probed_at: Mapped[datetime | None] = mapped_column(DateTime(timezone=True))
    probe_accepted: Mapped[bool | None]

    __table_args__ = (
        CheckConstraint(sql_in_list("provider", tuple(CredentialProviderKind)), name="provider"),
    )


class RetentionPolicyRow(Base):
    """Which tags of a registry repository ``pushes.prune_tags`` keeps."""

    __tablename__ = "retention_policies"

    id: Mapped[int] = mapped_column(BigInteger, primary_key=True, autoincrement=True)
    host: Mapped[str] = mapped_column(String(255))
    repository: Mapped[str] = mapped_column(String(255))
    keep_newest: Mapped[int] = mapped_column(Integer)
    keep_patterns: Mapped[list[str]] = mapped_column(JSONB, default=list, server_default="[]")
    updated_at: Mapped[datetime] = mapped_column(DateTime(timezone=True), server_default=func.now())
    updated_by: Mapped[str | None] = mapped_column(String(200))

    __table_args__ = (
        UniqueConstraint("host", "repository"),
        CheckConstraint("keep_newest >= 0", name="keep_newest"),
    )


class ImageCertification(Base):
    """An evaluation certification bound to an image digest. Retention never deletes a digest
    with a live one (not revoked, not expired); the evaluation queue issues and refreshes them."""

    __tablename__ = "image_certifications"

    id: Mapped[int] = mapped_column(BigInteger, primary_key=True, autoincrement=True)
    host: Mapped[str] = mapped_column(String(255))
    repository: Mapped[str] = mapped_column(String(255))
    digest: Mapped[str] = mapped_column(String(100))
    name: Mapped[str] = mapped_column(String(200))
    issued_at: Mapped[datetime] = mapped_column(DateTime(timezone=True), server_default=func.now())
    expires_at: Mapped[datetime] = mapped_column(DateTime(timezone=True))
    revoked_at: Mapped[datetime | None] = mapped_column(DateTime(timezone=True))

    __table_args__ = (Index(None, "host", "repository", "digest"),)


class TrustState(StrEnum):
    """Where an asset stands. Moves only along ``models.trust.ALLOWED_TRANSITIONS``."""

    UNKNOWN = "unknown"
    PENDING_ATTESTATION = "pending_attestation"
    TRUSTED = "trusted"
    # Its evidence expired: it was trusted, nothing says it still is.
    STALE = "stale"
    # Verification failed or policy was breached; only remediation releases it.
    QUARANTINED = "quarantined"
    REMEDIATING = "remediating"


class AssetKind(StrEnum):
    VM = "vm"
    HOST = "host"
    ACCELERATOR = "accelerator"


class TrustAssetClass(Base):
    """Reference values and policy shared by a class of assets (a VM image, a host model, an
    accelerator tier): what their evidence must show, and how long it keeps them trusted."""

    __tablename__ = "trust_asset_classes"

    name: Mapped[str] = mapped_column(String(100), primary_key=True)
    evidence_ttl_seconds: Mapped[int] = mapped_column(Integer)
    # {"sha256": {"0": "<hex>", ...}, ...}: PCR values a TPM quote must report.
    tpm_pcrs: Mapped[dict[str, dict[str, str]]] = mapped_column(JSONB, default=dict)
    # Allowed SEV-SNP launch measurements and TDX MRTDs (hex); empty: none is allowed.
    snp_measurements: Mapped[list[str]] = mapped_column(JSONB, default=list)
    # {"bootloader": n, "tee": n, "snp": n, "microcode": n}: the lowest SNP TCB accepted.
    snp_min_tcb: Mapped[dict[str, int] | None] = mapped_column(JSONB)
    tdx_mr_td: Mapped[list[str]] = mapped_column(JSONB, default=list)
    # {"0": "<hex>", ...}: RTMR values a TDX quote must carry.
    tdx_rtmrs: Mapped[dict[str, str]] = mapped_column(JSONB, default=dict)
    tdx_accepted_tcb_statuses: Mapped[list[str]] = mapped_column(JSONB, default=list)
    allow_debug: Mapped[bool] = mapped_column(default=False)
    # Accelerator tier gates: the lowest driver version, and whether CC mode must be on.
    accelerator_min_driver: Mapped[str | None] = mapped_column(String(50))
    accelerator_require_cc: Mapped[bool] = mapped_column(default=False)
    accelerator_require_ecc: Mapped[bool] = mapped_column(default=False)
    updated_at: Mapped[datetime] = mapped_column(
        DateTime(timezone=True), server_default=func.now(), onupdate=func.now()
    )
    updated_by: Mapped[str | None] = mapped_column(String(200))

    __table_args__ = (CheckConstraint("evidence_ttl_seconds > 0", name="evidence_ttl_seconds"),)


class TrustAsset(Base):
    """A VM, host or accelerator of a tenant, and where it stands.

    ``version`` is the optimistic lock: SQLAlchemy adds ``AND version = <read>`` to every
    UPDATE and raises StaleDataError when another writer got there first (models.trust retries
    from a fresh read, so a lost race never overwrites)."""

    __tablename__ = "trust_assets"

    id: Mapped[uuid.UUID] = mapped_column(Uuid, primary_key=True, default=uuid.uuid4)
    tenant: Mapped[str] = mapped_column(String(100))
    name: Mapped[str] = mapped_column(String(200))
    kind: Mapped[str] = mapped_column(String(20))
    asset_class: Mapped[str | None] = mapped_column(
        String(100), ForeignKey("trust_asset_classes.name", ondelete="RESTRICT")
    )
    state: Mapped[str] = mapped_column(String(30), default=TrustState.UNKNOWN.value)
    version: Mapped[int] = mapped_column(Integer, nullable=False)
    # The registered TPM attestation key, as given (PEM, TPMT_PUBLIC or JWK); public, not secret.
    attestation_key: Mapped[bytes | None] = mapped_column(LargeBinary)
    # The newest accepted TPM quote's clock info: an older or equal one is a replay.
    tpm_reset_count: Mapped[int | None] = mapped_column(BigInteger)
    tpm_restart_count: Mapped[int | None] = mapped_column(BigInteger)
    tpm_clock: Mapped[int | None] = mapped_column(BigInteger)
    last_verified_at: Mapped[datetime | None] = mapped_column(DateTime(timezone=True))
    evidence_expires_at: Mapped[datetime | None] = mapped_column(DateTime(timezone=True))
    # The newest accelerator posture report, as validated.
    posture: Mapped[dict[str, Any] | None] = mapped_column(JSONB)
    # Linked libvirt domain (attestation.sync_vm_inventory).
    libvirt_uuid: Mapped[uuid.UUID | None] = mapped_column(Uuid, unique=True)
    libvirt_state: Mapped[str | None] = mapped_column(String(30))
    inventory_seen_at: Mapped[datetime | None] = mapped_column(DateTime(timezone=True))
    inventory_missing_since: Mapped[datetime | None] = mapped_column(DateTime(timezone=True))
    # Remediation on a protected asset always needs an approval.
    protected: Mapped[bool] = mapped_column(default=False, server_default=text("false"))
    # How playbooks reach it: ansible host vars (ansible_host, ansible_user, ...),
    # kubernetes_node, libvirt_domain. Not secret: credentials live with the workers.
    connection: Mapped[dict[str, Any]] = mapped_column(
        JSONB, default=dict, server_default=text("'{}'::jsonb")
    )
    created_at: Mapped[datetime] = mapped_column(DateTime(timezone=True), server_default=func.now())
    updated_at: Mapped[datetime] = mapped_column(
        DateTime(timezone=True), server_default=func.now(), onupdate=func.now()
    )

    __mapper_args__ = {"version_id_col": version}  # noqa: RUF012 (SQLAlchemy reads a dict)
    __table_args__ = (
        UniqueConstraint("tenant", "name"),
        CheckConstraint(sql_in_list("state", tuple(TrustState)), name="state"),
        CheckConstraint(sql_in_list("kind", tuple(AssetKind)), name="kind"),
        # The staleness sweep reads only trusted rows that are due, through this index.
        Index(
            "ix_trust_assets_trusted_expiry",
            "evidence_expires_at",
            postgresql_where=text("state = 'trusted'"),
        ),
    )


class TrustTransition(Base):
    """One change of an asset's state. Append-only: the database refuses UPDATE and DELETE
    (a trigger, see migration 0004), and (asset, seq) is unique, so history cannot fork."""

    __tablename__ = "trust_transitions"

    id: Mapped[int] = mapped_column(BigInteger, primary_key=True, autoincrement=True)
    asset_id: Mapped[uuid.UUID] = mapped_column(
        Uuid, ForeignKey("trust_assets.id", ondelete="RESTRICT")
    )
    # The asset's version once this transition was written: orders the history.
    seq: Mapped[int] = mapped_column(Integer)
    tenant: Mapped[str] = mapped_column(String(100))
    # None only for the row that registers the asset.
    from_state: Mapped[str | None] = mapped_column(String(30))
    to_state: Mapped[str] = mapped_column(String(30))
    cause: Mapped[str] = mapped_column(String(50))
    detail: Mapped[str] = mapped_column(Text, default="")
    # What moved it: a verdict id and its failed checks, a posture gate, a job.
    evidence: Mapped[dict[str, Any]] = mapped_column(JSONB, default=dict)
    actor: Mapped[str] = mapped_column(String(200))
    job_id: Mapped[uuid.UUID | None] = mapped_column(
        Uuid, ForeignKey("jobs.id", ondelete="SET NULL")
    )
    created_at: Mapped[datetime] = mapped_column(DateTime(timezone=True), server_default=func.now())

    __table_args__ = (
        UniqueConstraint("asset_id", "seq"),
        CheckConstraint(sql_in_list("to_state", tuple(TrustState)), name="to_state"),
        Index(None, "tenant", "created_at"),
    )


class AttestationVerdict(Base):
    """One verification of an asset's evidence (or accelerator posture): every check and the
    claims read. One per job: a redelivered job finds its verdict instead of judging again."""

    __tablename__ = "attestation_verdicts"

    id: Mapped[int] = mapped_column(BigInteger, primary_key=True, autoincrement=True)
    asset_id: Mapped[uuid.UUID] = mapped_column(
        Uuid, ForeignKey("trust_assets.id", ondelete="RESTRICT")
    )
    job_id: Mapped[uuid.UUID | None] = mapped_column(
        Uuid, ForeignKey("jobs.id", ondelete="SET NULL"), unique=True
    )
    kind: Mapped[str] = mapped_column(String(30))
    verified: Mapped[bool]
    summary: Mapped[str] = mapped_column(Text)
    checks: Mapped[list[dict[str, str]]] = mapped_column(JSONB)
    claims: Mapped[dict[str, Any]] = mapped_column(JSONB)
    nonce: Mapped[str | None] = mapped_column(String(200))
    # The time certificates and collateral were judged at (now, or the pinned time).
    judged_at: Mapped[datetime] = mapped_column(DateTime(timezone=True))
    created_at: Mapped[datetime] = mapped_column(DateTime(timezone=True), server_default=func.now())

    __table_args__ = (Index(None, "asset_id", "created_at"),)


# --- Remediation: playbooks, runs, their audit trail and artifacts --------------------------------


class ExecutorKind(StrEnum):
    """How a playbook acts: commands in a sandbox container (shell, container), an ansible
    playbook, libvirt domain actions, or Kubernetes node and deployment actions."""

    SHELL = "shell"
    CONTAINER = "container"
    ANSIBLE = "ansible"
    LIBVIRT = "libvirt"
    KUBERNETES = "kubernetes"


class RunState(StrEnum):
    PENDING_APPROVAL = "pending_approval"
    QUEUED = "queued"
    RUNNING = "running"
    SUCCEEDED = "succeeded"
    FAILED = "failed"
    CANCELLED = "cancelled"
    EXPIRED = "expired"


# A run in one of these holds its (tenant, asset, playbook): a second request joins it.
ACTIVE_RUN_STATES: tuple[RunState, ...] = (
    RunState.PENDING_APPROVAL,
    RunState.QUEUED,
    RunState.RUNNING,
)


class TenantPolicy(Base):
    """What a tenant requires of work on its assets."""

    __tablename__ = "tenant_policies"

    tenant: Mapped[str] = mapped_column(String(100), primary_key=True)
    # Every remediation of the tenant's assets needs an approval.
    remediation_requires_approval: Mapped[bool] = mapped_column(default=False)
    # Task-name patterns (``builds.*``) the tenant may enqueue; None: every task its tokens allow.
    allowed_tasks: Mapped[list[str] | None] = mapped_column(JSONB)
    # Evaluation tiers the tenant may place digests at; None: any tier.
    allowed_tiers: Mapped[list[str] | None] = mapped_column(JSONB)
    updated_at: Mapped[datetime] = mapped_column(
        DateTime(timezone=True), server_default=func.now(), onupdate=func.now()
    )
    updated_by: Mapped[str | None] = mapped_column(String(200))


class RemediationPlaybook(Base):
    """One version of a tenant's playbook. Versions are never changed: a new definition under
    the same name is the next version, and runs keep the version they ran."""

    __tablename__ = "remediation_playbooks"

    id: Mapped[uuid.UUID] = mapped_column(Uuid, primary_key=True, default=uuid.uuid4)
    tenant: Mapped[str] = mapped_column(String(100))
    name: Mapped[str] = mapped_column(String(100))
    version: Mapped[int] = mapped_column(Integer)
    executor: Mapped[str] = mapped_column(String(20))
    # Validated by the executor's spec model (tasks.remediation.playbooks) before it is stored.
    spec: Mapped[dict[str, Any]] = mapped_column(JSONB)
    timeout_seconds: Mapped[int] = mapped_column(Integer)
    requires_approval: Mapped[bool] = mapped_column(default=False)
    # Asset kinds (vm, host, accelerator) it may run against.
    asset_kinds: Mapped[list[str]] = mapped_column(JSONB)
    description: Mapped[str] = mapped_column(Text, default="")
    created_at: Mapped[datetime] = mapped_column(DateTime(timezone=True), server_default=func.now())
    created_by: Mapped[str | None] = mapped_column(String(200))

    __table_args__ = (
        UniqueConstraint("tenant", "name", "version"),
        CheckConstraint(sql_in_list("executor", tuple(ExecutorKind)), name="executor"),
        CheckConstraint("timeout_seconds > 0", name="timeout_seconds"),
        CheckConstraint("version > 0", name="version"),
    )


class RemediationRun(Base):
    """One request to run a playbook against an asset, from request to outcome.

    At most one run per (tenant, asset, playbook name) is active (pending approval, queued or
    running): the partial unique index ``uq_remediation_runs_active`` makes concurrent requests
    collapse into one run, whoever asks."""

    __tablename__ = "remediation_runs"

    id: Mapped[uuid.UUID] = mapped_column(Uuid, primary_key=True, default=uuid.uuid4)
    tenant: Mapped[str] = mapped_column(String(100))
    asset_id: Mapped[uuid.UUID] = mapped_column(
        Uuid, ForeignKey("trust_assets.id", ondelete="RESTRICT")
    )
    playbook_id: Mapped[uuid.UUID] = mapped_column(
        Uuid, ForeignKey("remediation_playbooks.id", ondelete="RESTRICT")
    )
    playbook_name: Mapped[str] = mapped_column(String(100))
    playbook_version: Mapped[int] = mapped_column(Integer)
    state: Mapped[str] = mapped_column(String(30))
    reason: Mapped[str] = mapped_column(Text, default="")
    requested_by: Mapped[str] = mapped_column(String(200))
    requested_at: Mapped[datetime] = mapped_column(
        DateTime(timezone=True), server_default=func.now()
    )
    # Why an approval is needed (the playbook, the asset, the tenant); [] when none is.
    approval_reasons: Mapped[list[str]] = mapped_column(JSONB, default=list)
    # A run still pending approval at this time expires.
    approval_deadline: Mapped[datetime | None] = mapped_column(DateTime(timezone=True))
    approved_by: Mapped[str | None] = mapped_column(String(200))
    approved_at: Mapped[datetime | None] = mapped_column(DateTime(timezone=True))
    # The approval token's expiry and id: a run not started by then expires.
    approval_expires_at: Mapped[datetime | None] = mapped_column(DateTime(timezone=True))
    approval_token_id: Mapped[str | None] = mapped_column(String(64))
    # The asset's trust state, newest transition and verdict when the run was requested.
    trust_context: Mapped[dict[str, Any]] = mapped_column(JSONB, default=dict)
    # Executions started (a worker lost mid-run, or an engine outage, means another).
    attempts: Mapped[int] = mapped_column(Integer, default=0)
    job_id: Mapped[uuid.UUID | None] = mapped_column(
        Uuid, ForeignKey("jobs.id", ondelete="SET NULL")
    )
    started_at: Mapped[datetime | None] = mapped_column(DateTime(timezone=True))
    finished_at: Mapped[datetime | None] = mapped_column(DateTime(timezone=True))
    # Why it failed, was cancelled or expired; the last transient error while queued.
    error: Mapped[str | None] = mapped_column(Text)
    # The steps' structured outputs, merged, once it finished.
    outputs: Mapped[dict[str, Any]] = mapped_column(JSONB, default=dict)
    # The challenge the asset's fresh evidence must carry after a successful run (hex).
    evidence_nonce: Mapped[str | None] = mapped_column(String(128))
    updated_at: Mapped[datetime] = mapped_column(
        DateTime(timezone=True), server_default=func.now(), onupdate=func.now()
    )

    __table_args__ = (
        Index(
            "uq_remediation_runs_active",
            "tenant",
            "asset_id",
            "playbook_name",
            unique=True,
            postgresql_where=text(sql_in_list("state", ACTIVE_RUN_STATES)),
        ),
        # One playbook at a time acts on an asset, whichever playbooks were requested.
        Index(
            "uq_remediation_runs_running_asset",
            "asset_id",
            unique=True,
            postgresql_where=text("state = 'running'"),
        ),
        CheckConstraint(sql_in_list("state", tuple(RunState)), name="state"),
        Index(None, "tenant", "requested_at"),
        Index(None, "asset_id", "requested_at"),
        # The expiry sweep reads only runs that wait, through these.
        Index(
            "ix_remediation_runs_approval_deadline",
            "approval_deadline",
            postgresql_where=text("state = 'pending_approval'"),
        ),
        Index(
            "ix_remediation_runs_approval_expiry",
            "approval_expires_at",
            postgresql_where=text("state = 'queued' AND approval_expires_at IS NOT NULL"),
        ),
        # Queued runs whose job could not be sent (the broker was down): the sweep sends them.
        Index(
            "ix_remediation_runs_unsent",
            "updated_at",
            postgresql_where=text("state = 'queued' AND job_id IS NULL"),
        ),
    )


class RemediationAuditAction(StrEnum):
    REQUESTED = "requested"
    # Another request for an asset and playbook that already had an active run.
    JOINED = "joined"
    APPROVED = "approved"
    REJECTED = "rejected"
    # An approval token presented to run it was forged, for another run, or expired.
    TOKEN_REFUSED = "token_refused"
    CANCELLED = "cancelled"
    EXPIRED = "expired"
    STARTED = "started"
    SUCCEEDED = "succeeded"
    FAILED = "failed"


class RemediationAudit(Base):
    """Every decision about a run: who, when, why. Append-only (a trigger refuses UPDATE and
    DELETE, see migration 0005)."""

    __tablename__ = "remediation_audit"

    id: Mapped[int] = mapped_column(BigInteger, primary_key=True, autoincrement=True)
    run_id: Mapped[uuid.UUID] = mapped_column(
        Uuid, ForeignKey("remediation_runs.id", ondelete="RESTRICT")
    )
    tenant: Mapped[str] = mapped_column(String(100))
    action: Mapped[str] = mapped_column(String(30))
    actor: Mapped[str] = mapped_column(String(200))
    reason: Mapped[str] = mapped_column(Text, default="")
    detail: Mapped[dict[str, Any]] = mapped_column(JSONB, default=dict)
    at: Mapped[datetime] = mapped_column(DateTime(timezone=True), server_default=func.now())

    __table_args__ = (
        CheckConstraint(sql_in_list("action", tuple(RemediationAuditAction)), name="action"),
        Index(None, "run_id", "id"),
    )


class RemediationArtifact(Base):
    """What one step of one attempt left: its output (capped, secrets redacted), exit code,
    structured outputs and timings. One row per (run, attempt, step)."""

    __tablename__ = "remediation_artifacts"

    id: Mapped[int] = mapped_column(BigInteger, primary_key=True, autoincrement=True)
    run_id: Mapped[uuid.UUID] = mapped_column(
        Uuid, ForeignKey("remediation_runs.id", ondelete="RESTRICT")
    )
    tenant: Mapped[str] = mapped_column(String(100))
    attempt: Mapped[int] = mapped_column(Integer)
    step_index: Mapped[int] = mapped_column(Integer)
    step_name: Mapped[str] = mapped_column(String(200))
    ok: Mapped[bool]
    timed_out: Mapped[bool] = mapped_column(default=False)
    exit_code: Mapped[int | None] = mapped_column(Integer)
    error: Mapped[str | None] = mapped_column(Text)
    stdout: Mapped[str] = mapped_column(Text, default="")
    stderr: Mapped[str] = mapped_column(Text, default="")
    # Sizes as produced, before the cap: more than kept means the middle was cut.
    stdout_bytes: Mapped[int] = mapped_column(Integer, default=0)
    stderr_bytes: Mapped[int] = mapped_column(Integer, default=0)
    truncated: Mapped[bool] = mapped_column(default=False)
    outputs: Mapped[dict[str, Any]] = mapped_column(JSONB, default=dict)
    started_at: Mapped[datetime] = mapped_column(DateTime(timezone=True))
    finished_at: Mapped[datetime] = mapped_column(DateTime(timezone=True))
    duration_ms: Mapped[float]

    __table_args__ = (UniqueConstraint("run_id", "attempt", "step_index"),)


# --- Evaluation, policy and Beat upkeep -----------------------------------------------------------


class CertificationStatus(StrEnum):
    # The newest passing evaluation of a (digest, tier), within its validity.
    ACTIVE = "active"
    # Replaced by a newer passing evaluation (``replaces_id`` on the newer row points here).
    SUPERSEDED = "superseded"
    # Nobody refreshed it before it expired: the policy engine denies it.
    STALE = "stale"
    # A later evaluation failed, or an operator revoked it.
    REVOKED = "revoked"
    # This evaluation failed; its evidence says which checks.
    FAILED = "failed"


class EvaluationTier(Base):
    """A tier of certification: the suite an image must pass for it and how long a pass lasts."""

    __tablename__ = "evaluation_tiers"

    name: Mapped[str] = mapped_column(String(100), primary_key=True)
    # tasks.evaluation.suite.SuiteSpec: the command run in the image, its files, result format.
    suite: Mapped[dict[str, Any]] = mapped_column(JSONB)
    # How long a passing evaluation certifies the digest.
    validity_seconds: Mapped[int] = mapped_column(Integer)
    # How long before expiry Beat enqueues the refresh.
    refresh_window_seconds: Mapped[int] = mapped_column(Integer)
    description: Mapped[str] = mapped_column(Text, default="")
    updated_at: Mapped[datetime] = mapped_column(
        DateTime(timezone=True), server_default=func.now(), onupdate=func.now()
    )
    updated_by: Mapped[str | None] = mapped_column(String(200))

    __table_args__ = (
        CheckConstraint("validity_seconds > 0", name="validity_positive"),
        CheckConstraint(
            "refresh_window_seconds >= 0 AND refresh_window_seconds < validity_seconds",
            name="window_inside_validity",
        ),
    )


class EvaluationCertification(Base):
    """One evaluation of an image digest at a tier: its per-check evidence and what it
    certifies, until when. Rows of one (digest, tier) form a lineage through ``replaces_id``."""

    __tablename__ = "evaluation_certifications"

    id: Mapped[uuid.UUID] = mapped_column(Uuid, primary_key=True, default=uuid.uuid4)
    digest: Mapped[str] = mapped_column(String(100))
    tier: Mapped[str] = mapped_column(
        String(100), ForeignKey("evaluation_tiers.name", ondelete="RESTRICT")
    )
    # Where the image is pulled from for its evaluations.
    host: Mapped[str] = mapped_column(String(255))
    repository: Mapped[str] = mapped_column(String(255))
    status: Mapped[str] = mapped_column(String(20))
    # Per-check results: [{"name", "status", "message", "duration_ms"}].
    evidence: Mapped[list[dict[str, Any]]] = mapped_column(JSONB, default=list)
    summary: Mapped[str] = mapped_column(Text, default="")
    evaluated_at: Mapped[datetime] = mapped_column(DateTime(timezone=True))
    # Set on a pass: the certification holds from issued_at to expires_at, and Beat enqueues
    # its refresh from refresh_at (expires_at less the tier's window).
    issued_at: Mapped[datetime | None] = mapped_column(DateTime(timezone=True))
    expires_at: Mapped[datetime | None] = mapped_column(DateTime(timezone=True))
    refresh_at: Mapped[datetime | None] = mapped_column(DateTime(timezone=True))
    cadence_seconds: Mapped[int] = mapped_column(Integer)
    replaces_id: Mapped[uuid.UUID | None] = mapped_column(
        Uuid, ForeignKey("evaluation_certifications.id", ondelete="RESTRICT")
    )
    # The job whose evaluation this is.
    job_id: Mapped[uuid.UUID | None] = mapped_column(
        Uuid, ForeignKey("jobs.id", ondelete="SET NULL")
    )
    # The refresh Beat enqueued for this certification: set once, so a second sweep skips it.
    refresh_job_id: Mapped[uuid.UUID | None] = mapped_column(Uuid)
    refresh_requested_at: Mapped[datetime | None] = mapped_column(DateTime(timezone=True))
    revoked_at: Mapped[datetime | None] = mapped_column(DateTime(timezone=True))
    reason: Mapped[str] = mapped_column(Text, default="")
    updated_at: Mapped[datetime] = mapped_column(
        DateTime(timezone=True), server_default=func.now(), onupdate=func.now()
    )

    __table_args__ = (
        CheckConstraint(sql_in_list("status", tuple(CertificationStatus)), name="status"),
        CheckConstraint(
            "status <> 'active' OR (issued_at IS NOT NULL AND expires_at IS NOT NULL "
            "AND refresh_at IS NOT NULL)",
            name="active_has_validity",
        ),
        # One live certification per digest and tier.
        Index(
            "uq_evaluation_certifications_active",
            "digest",
            "tier",
            unique=True,
            postgresql_where=text("status = 'active'"),
        ),
        # One evaluation per job: a redelivered refresh finds its row instead of adding one.
        Index("uq_evaluation_certifications_job", "job_id", unique=True),
        Index(None, "digest", "tier", "evaluated_at"),
        # The cadence sweep reads only due rows, through these.
        Index(
            "ix_evaluation_certifications_refresh_due",
            "refresh_at",
            postgresql_where=text("status = 'active' AND refresh_job_id IS NULL"),
        ),
        Index(
            "ix_evaluation_certifications_expiry",
            "expires_at",
            postgresql_where=text("status = 'active'"),
        ),
        # Claimed refreshes, for finding claims whose job was never sent.
        Index(
            "ix_evaluation_certifications_refresh_claimed",
            "refresh_requested_at",
            postgresql_where=text("status = 'active' AND refresh_job_id IS NOT NULL"),
        ),
    )


class PolicyDecisionKind(StrEnum):
    # May this digest at this tier be placed on this asset for this tenant?
    PLACEMENT = "placement"
    # May this job be enqueued?
    ADMISSION = "admission"
    # May this evaluation worker run a suite on its host?
    EVALUATION_HOST = "evaluation_host"
    # A waiting job cancelled because its target asset was quarantined.
    PREEMPTION = "preemption"


class PolicyDecision(Base):
    """Every decision the policy engine made: the request, each gate with its reason, and the
    outcome. Append-only by use."""

    __tablename__ = "policy_decisions"

    id: Mapped[int] = mapped_column(BigInteger, Identity(), primary_key=True)
    kind: Mapped[str] = mapped_column(String(30))
    allowed: Mapped[bool]
    tenant: Mapped[str | None] = mapped_column(String(100))
    # The request as decided (digest, tier, asset, task name...).
    request: Mapped[dict[str, Any]] = mapped_column(JSONB)
    # [{"gate", "passed", "reason"}], in the order the engine checked them.
    gates: Mapped[list[dict[str, Any]]] = mapped_column(JSONB)
    # The failing gates' reasons joined, or "allowed".
    summary: Mapped[str] = mapped_column(Text)
    # The job decided about (admitted, refused before it existed: None, or preempted).
    job_id: Mapped[uuid.UUID | None] = mapped_column(Uuid)
    actor: Mapped[str] = mapped_column(String(200))
    decided_at: Mapped[datetime] = mapped_column(DateTime(timezone=True), server_default=func.now())

    __table_args__ = (
        CheckConstraint(sql_in_list("kind", tuple(PolicyDecisionKind)), name="kind"),
        Index(None, "decided_at"),
        Index(None, "tenant", "decided_at"),
        Index(None, "job_id"),
    )


class CapabilityMetric(StrEnum):
    # Robust z-score of the newest build's latency against the rolling median/MAD.
    BUILD_LATENCY = "build_latency"
    # Credential rotations and registry auth failures within the window.
    CREDENTIAL_CHURN = "credential_churn"
    # Expected platforms not built within the window.
    MISSING_ARCHITECTURES = "missing_architectures"


class CapabilityScore(Base):
    """Anomaly scores per repository, recomputed by Beat from the build ledger and read by the
    policy engine's anomaly gate."""

    __tablename__ = "capability_scores"

    # The build's repository URL, as long as build_runs allows.
    repository: Mapped[str] = mapped_column(Text)
    metric: Mapped[str] = mapped_column(String(40))
    value: Mapped[float]
    # Over the metric's threshold at recomputation: the anomaly gate fails on it.
    flagged: Mapped[bool]
    detail: Mapped[dict[str, Any]] = mapped_column(JSONB, default=dict)
    window_start: Mapped[datetime] = mapped_column(DateTime(timezone=True))
    computed_at: Mapped[datetime] = mapped_column(DateTime(timezone=True))

    __table_args__ = (
        PrimaryKeyConstraint("repository", "metric"),
        CheckConstraint(sql_in_list("metric", tuple(CapabilityMetric)), name="metric"),
    )


class CredentialEventKind(StrEnum):
    # The registry accepted the stored credential.
    PROBE_ACCEPTED = "probe_accepted"
    # The registry refused it, or could not be asked.
    PROBE_REFUSED = "probe_refused"
    PROBE_FAILED = "probe_failed"
    ROTATED = "rotated"
    ROTATION_FAILED = "rotation_failed"
    # Its provider cannot rotate it (static): an operator must.
    ROTATION_UNSUPPORTED = "rotation_unsupported"
    # The Kubernetes image-pull secret now holds the new credential.
    PULL_SECRET_WRITTEN = "pull_secret_written"
    PULL_SECRET_FAILED = "pull_secret_failed"


class CredentialEvent(Base):
    """Every probe and rotation of a registry credential. ``detail`` never holds a secret."""

    __tablename__ = "credential_events"

    id: Mapped[int] = mapped_column(BigInteger, Identity(), primary_key=True)
    host: Mapped[str] = mapped_column(String(255))
    kind: Mapped[str] = mapped_column(String(30))
    detail: Mapped[dict[str, Any]] = mapped_column(JSONB, default=dict)
    job_id: Mapped[uuid.UUID | None] = mapped_column(
        Uuid, ForeignKey("jobs.id", ondelete="SET NULL")
    )
    at: Mapped[datetime] = mapped_column(DateTime(timezone=True), server_default=func.now())

    __table_args__ = (
        CheckConstraint(sql_in_list("kind", tuple(CredentialEventKind)), name="kind"),
        Index(None, "host", "at"),
        Index(None, "kind", "at"),
    )

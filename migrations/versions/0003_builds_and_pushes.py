"""build ledger, artifacts, registry telemetry, credentials, retention, certifications

Revision ID: 0003
Revises: 0002
Create Date: 2026-11-21 07:50:43.937881
"""

from __future__ import annotations

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op
from sqlalchemy.dialects import postgresql

revision: str = "0003"
down_revision: str | None = "0002"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    op.create_table(
        "image_certifications",
        sa.Column("id", sa.BigInteger(), autoincrement=True, nullable=False),
        sa.Column("host", sa.String(length=255), nullable=False),
        sa.Column("repository", sa.String(length=255), nullable=False),
        sa.Column("digest", sa.String(length=100), nullable=False),
        sa.Column("name", sa.String(length=200), nullable=False),
        sa.Column(
            "issued_at", sa.DateTime(timezone=True), server_default=sa.text("now()"), nullable=False
        ),
        sa.Column("expires_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("revoked_at", sa.DateTime(timezone=True), nullable=True),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_image_certifications")),
    )
    op.create_index(
        op.f("ix_image_certifications_host_repository_digest"),
        "image_certifications",
        ["host", "repository", "digest"],
        unique=False,
    )
    op.create_table(
        "registry_credentials",
        sa.Column("id", sa.BigInteger(), autoincrement=True, nullable=False),
        sa.Column("host", sa.String(length=255), nullable=False),
        sa.Column("provider", sa.String(length=20), nullable=False),
        sa.Column("username", sa.String(length=255), nullable=True),
        sa.Column("sealed_password", sa.Text(), nullable=True),
        sa.Column(
            "config", postgresql.JSONB(astext_type=sa.Text()), server_default="{}", nullable=False
        ),
        sa.Column(
            "created_at",
            sa.DateTime(timezone=True),
            server_default=sa.text("now()"),
            nullable=False,
        ),
        sa.Column(
            "updated_at",
            sa.DateTime(timezone=True),
            server_default=sa.text("now()"),
            nullable=False,
        ),
        sa.Column("refreshed_at", sa.DateTime(timezone=True), nullable=True),
        sa.Column("refresh_count", sa.Integer(), server_default="0", nullable=False),
        sa.CheckConstraint(
            "provider IN ('static', 'htpasswd', 'command')",
            name=op.f("ck_registry_credentials_provider"),
        ),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_registry_credentials")),
        sa.UniqueConstraint("host", name=op.f("uq_registry_credentials_host")),
    )
    op.create_table(
        "retention_policies",
        sa.Column("id", sa.BigInteger(), autoincrement=True, nullable=False),
        sa.Column("host", sa.String(length=255), nullable=False),
        sa.Column("repository", sa.String(length=255), nullable=False),
        sa.Column("keep_newest", sa.Integer(), nullable=False),
        sa.Column(
            "keep_patterns",
            postgresql.JSONB(astext_type=sa.Text()),
            server_default="[]",
            nullable=False,
        ),
        sa.Column(
            "updated_at",
            sa.DateTime(timezone=True),
            server_default=sa.text("now()"),
            nullable=False,
        ),
        sa.Column("updated_by", sa.String(length=200), nullable=True),
        sa.CheckConstraint("keep_newest >= 0", name=op.f("ck_retention_policies_keep_newest")),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_retention_policies")),
        sa.UniqueConstraint(
            "host", "repository", name=op.f("uq_retention_policies_host_repository")
        ),
    )
    op.create_table(
        "artifacts",
        sa.Column("id", sa.BigInteger(), autoincrement=True, nullable=False),
        sa.Column("job_id", sa.Uuid(), nullable=False),
        sa.Column("kind", sa.String(length=50), nullable=False),
        sa.Column("name", sa.String(length=200), nullable=False),
        sa.Column("content_type", sa.String(length=100), nullable=False),
        sa.Column("size_bytes", sa.BigInteger(), nullable=False),
        sa.Column("truncated", sa.Boolean(), nullable=False),
        sa.Column("sha256", sa.String(length=64), nullable=False),
        sa.Column("body", sa.LargeBinary(), nullable=False),
        sa.Column(
            "created_at",
            sa.DateTime(timezone=True),
            server_default=sa.text("now()"),
            nullable=False,
        ),
        sa.ForeignKeyConstraint(
            ["job_id"], ["jobs.id"], name=op.f("fk_artifacts_job_id_jobs"), ondelete="CASCADE"
        ),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_artifacts")),
        sa.UniqueConstraint("job_id", "kind", "name", name=op.f("uq_artifacts_job_id_kind_name")),
    )
    op.create_table(
        "build_runs",
        sa.Column("id", sa.Uuid(), nullable=False),
        sa.Column("job_id", sa.Uuid(), nullable=False),
        sa.Column("repository_url", sa.Text(), nullable=False),
        sa.Column("revision", sa.String(length=255), nullable=False),
        sa.Column("commit", sa.String(length=64), nullable=True),
        sa.Column("ref_kind", sa.String(length=10), nullable=True),
        sa.Column("image", sa.String(length=255), nullable=False),
        sa.Column("backend", sa.String(length=20), nullable=False),
        sa.Column("platforms", postgresql.JSONB(astext_type=sa.Text()), nullable=False),
        sa.Column("push_target", postgresql.JSONB(astext_type=sa.Text()), nullable=True),
        sa.Column("status", sa.String(length=20), nullable=False),
        sa.Column("error", sa.Text(), nullable=True),
        sa.Column("credential_outcome", sa.String(length=20), nullable=True),
        sa.Column("index_digest", sa.String(length=100), nullable=True),
        sa.Column(
            "created_at",
            sa.DateTime(timezone=True),
            server_default=sa.text("now()"),
            nullable=False,
        ),
        sa.Column("fetch_ms", sa.Double(), nullable=True),
        sa.Column("build_ms", sa.Double(), nullable=True),
        sa.Column("built_at", sa.DateTime(timezone=True), nullable=True),
        sa.Column("pushes_dispatched_at", sa.DateTime(timezone=True), nullable=True),
        sa.Column("finished_at", sa.DateTime(timezone=True), nullable=True),
        sa.CheckConstraint(
            "credential_outcome IS NULL OR credential_outcome IN ('not_needed', 'anonymous', "
            "'issued', 'refreshed', 'rejected', 'unavailable')",
            name=op.f("ck_build_runs_credential_outcome"),
        ),
        sa.CheckConstraint(
            "status IN ('fetching', 'building', 'built', 'pushing', 'published', 'failed')",
            name=op.f("ck_build_runs_status"),
        ),
        sa.ForeignKeyConstraint(
            ["job_id"], ["jobs.id"], name=op.f("fk_build_runs_job_id_jobs"), ondelete="CASCADE"
        ),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_build_runs")),
        sa.UniqueConstraint("job_id", name=op.f("uq_build_runs_job_id")),
    )
    op.create_index(op.f("ix_build_runs_created_at"), "build_runs", ["created_at"], unique=False)
    op.create_table(
        "build_platforms",
        sa.Column("id", sa.BigInteger(), autoincrement=True, nullable=False),
        sa.Column("run_id", sa.Uuid(), nullable=False),
        sa.Column("platform", sa.String(length=50), nullable=False),
        sa.Column("tag", sa.String(length=400), nullable=False),
        sa.Column("status", sa.String(length=20), nullable=False),
        sa.Column("image_id", sa.String(length=100), nullable=True),
        sa.Column("size_bytes", sa.BigInteger(), nullable=True),
        sa.Column("steps_total", sa.Integer(), nullable=True),
        sa.Column("steps_cached", sa.Integer(), nullable=True),
        sa.Column("build_started_at", sa.DateTime(timezone=True), nullable=True),
        sa.Column("build_ms", sa.Double(), nullable=True),
        sa.Column("error", sa.Text(), nullable=True),
        sa.Column("log_artifact_id", sa.BigInteger(), nullable=True),
        sa.Column("pushed_ref", sa.String(length=500), nullable=True),
        sa.Column("digest", sa.String(length=100), nullable=True),
        sa.Column("bytes_sent", sa.BigInteger(), nullable=True),
        sa.Column("layers_pushed", sa.Integer(), nullable=True),
        sa.Column("layers_reused", sa.Integer(), nullable=True),
        sa.Column("push_ms", sa.Double(), nullable=True),
        sa.Column("pushed_at", sa.DateTime(timezone=True), nullable=True),
        sa.CheckConstraint(
            "status IN ('building', 'built', 'pushing', 'pushed', 'failed')",
            name=op.f("ck_build_platforms_status"),
        ),
        sa.ForeignKeyConstraint(
            ["log_artifact_id"],
            ["artifacts.id"],
            name=op.f("fk_build_platforms_log_artifact_id_artifacts"),
            ondelete="SET NULL",
        ),
        sa.ForeignKeyConstraint(
            ["run_id"],
            ["build_runs.id"],
            name=op.f("fk_build_platforms_run_id_build_runs"),
            ondelete="CASCADE",
        ),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_build_platforms")),
        sa.UniqueConstraint("run_id", "platform", name=op.f("uq_build_platforms_run_id_platform")),
    )
    op.create_index(op.f("ix_build_platforms_digest"), "build_platforms", ["digest"], unique=False)
    op.create_table(
        "registry_events",
        sa.Column("id", sa.BigInteger(), sa.Identity(always=False), nullable=False),
        sa.Column("job_id", sa.Uuid(), nullable=False),
        sa.Column("run_id", sa.Uuid(), nullable=True),
        sa.Column("kind", sa.String(length=30), nullable=False),
        sa.Column("schema_version", sa.Integer(), nullable=False),
        sa.Column("platform", sa.String(length=50), nullable=True),
        sa.Column(
            "at", sa.DateTime(timezone=True), server_default=sa.text("now()"), nullable=False
        ),
        sa.Column("detail", postgresql.JSONB(astext_type=sa.Text()), nullable=False),
        sa.CheckConstraint(
            "kind IN ('tag_started', 'tag_succeeded', 'tag_failed', 'push_started', 'push_retry', "
            "'push_failed', 'push_succeeded', 'auth_refresh', 'index_published', 'tag_deleted')",
            name=op.f("ck_registry_events_kind"),
        ),
        sa.ForeignKeyConstraint(
            ["job_id"], ["jobs.id"], name=op.f("fk_registry_events_job_id_jobs"), ondelete="CASCADE"
        ),
        sa.ForeignKeyConstraint(
            ["run_id"],
            ["build_runs.id"],
            name=op.f("fk_registry_events_run_id_build_runs"),
            ondelete="SET NULL",
        ),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_registry_events")),
    )
    op.create_index(op.f("ix_registry_events_at"), "registry_events", ["at"], unique=False)
    op.create_index(op.f("ix_registry_events_job_id"), "registry_events", ["job_id"], unique=False)
    op.create_index(op.f("ix_registry_events_run_id"), "registry_events", ["run_id"], unique=False)


def downgrade() -> None:
    op.drop_index(op.f("ix_registry_events_run_id"), table_name="registry_events")
    op.drop_index(op.f("ix_registry_events_job_id"), table_name="registry_events")
    op.drop_index(op.f("ix_registry_events_at"), table_name="registry_events")
    op.drop_table("registry_events")
    op.drop_index(op.f("ix_build_platforms_digest"), table_name="build_platforms")
    op.drop_table("build_platforms")
    op.drop_index(op.f("ix_build_runs_created_at"), table_name="build_runs")
    op.drop_table("build_runs")
    op.drop_table("artifacts")
    op.drop_table("retention_policies")
    op.drop_table("registry_credentials")
    op.drop_index(
        op.f("ix_image_certifications_host_repository_digest"), table_name="image_certifications"
    )
    op.drop_table("image_certifications")

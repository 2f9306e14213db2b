"""Evaluation certifications, policy decisions, admission on jobs, credential rotation, anomaly
scores; jobs may end preempted.

Revision ID: 0006
Revises: 0005
Create Date: 2026-11-21 10:25:47.533155
"""

from __future__ import annotations

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op
from sqlalchemy.dialects import postgresql

revision: str = "0006"
down_revision: str | None = "0005"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

JOB_STATUSES_OLD = "'queued', 'running', 'retrying', 'succeeded', 'dead_lettered'"
JOB_STATUSES_NEW = JOB_STATUSES_OLD + ", 'preempted'"
EVENT_KINDS_OLD = (
    "'enqueued', 'started', 'progress', 'retry', 'succeeded', 'failed', 'dead_lettered'"
)
EVENT_KINDS_NEW = EVENT_KINDS_OLD + ", 'preempted'"
OUTCOME_KINDS_OLD = "'succeeded', 'failed', 'dead_lettered'"
OUTCOME_KINDS_NEW = OUTCOME_KINDS_OLD + ", 'preempted'"


def upgrade() -> None:
    op.create_table(
        "capability_scores",
        sa.Column("repository", sa.Text(), nullable=False),
        sa.Column("metric", sa.String(length=40), nullable=False),
        sa.Column("value", sa.Double(), nullable=False),
        sa.Column("flagged", sa.Boolean(), nullable=False),
        sa.Column("detail", postgresql.JSONB(astext_type=sa.Text()), nullable=False),
        sa.Column("window_start", sa.DateTime(timezone=True), nullable=False),
        sa.Column("computed_at", sa.DateTime(timezone=True), nullable=False),
        sa.CheckConstraint(
            "metric IN ('build_latency', 'credential_churn', 'missing_architectures')",
            name=op.f("ck_capability_scores_metric"),
        ),
        sa.PrimaryKeyConstraint("repository", "metric", name=op.f("pk_capability_scores")),
    )
    op.create_table(
        "evaluation_tiers",
        sa.Column("name", sa.String(length=100), nullable=False),
        sa.Column("suite", postgresql.JSONB(astext_type=sa.Text()), nullable=False),
        sa.Column("validity_seconds", sa.Integer(), nullable=False),
        sa.Column("refresh_window_seconds", sa.Integer(), nullable=False),
        sa.Column("description", sa.Text(), nullable=False),
        sa.Column(
            "updated_at",
            sa.DateTime(timezone=True),
            server_default=sa.text("now()"),
            nullable=False,
        ),
        sa.Column("updated_by", sa.String(length=200), nullable=True),
        sa.CheckConstraint(
            "refresh_window_seconds >= 0 AND refresh_window_seconds < validity_seconds",
            name=op.f("ck_evaluation_tiers_window_inside_validity"),
        ),
        sa.CheckConstraint(
            "validity_seconds > 0", name=op.f("ck_evaluation_tiers_validity_positive")
        ),
        sa.PrimaryKeyConstraint("name", name=op.f("pk_evaluation_tiers")),
    )
    op.create_table(
        "policy_decisions",
        sa.Column("id", sa.BigInteger(), sa.Identity(always=False), nullable=False),
        sa.Column("kind", sa.String(length=30), nullable=False),
        sa.Column("allowed", sa.Boolean(), nullable=False),
        sa.Column("tenant", sa.String(length=100), nullable=True),
        sa.Column("request", postgresql.JSONB(astext_type=sa.Text()), nullable=False),
        sa.Column("gates", postgresql.JSONB(astext_type=sa.Text()), nullable=False),
        sa.Column("summary", sa.Text(), nullable=False),
        sa.Column("job_id", sa.Uuid(), nullable=True),
        sa.Column("actor", sa.String(length=200), nullable=False),
        sa.Column(
            "decided_at",
            sa.DateTime(timezone=True),
            server_default=sa.text("now()"),
            nullable=False,
        ),
        sa.CheckConstraint(
            "kind IN ('placement', 'admission', 'evaluation_host', 'preemption')",
            name=op.f("ck_policy_decisions_kind"),
        ),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_policy_decisions")),
    )
    op.create_index(
        op.f("ix_policy_decisions_decided_at"), "policy_decisions", ["decided_at"], unique=False
    )
    op.create_index(
        op.f("ix_policy_decisions_job_id"), "policy_decisions", ["job_id"], unique=False
    )
    op.create_index(
        op.f("ix_policy_decisions_tenant_decided_at"),
        "policy_decisions",
        ["tenant", "decided_at"],
        unique=False,
    )
    op.create_table(
        "credential_events",
        sa.Column("id", sa.BigInteger(), sa.Identity(always=False), nullable=False),
        sa.Column("host", sa.String(length=255), nullable=False),
        sa.Column("kind", sa.String(length=30), nullable=False),
        sa.Column("detail", postgresql.JSONB(astext_type=sa.Text()), nullable=False),
        sa.Column("job_id", sa.Uuid(), nullable=True),
        sa.Column(
            "at", sa.DateTime(timezone=True), server_default=sa.text("now()"), nullable=False
        ),
        sa.CheckConstraint(
            "kind IN ('probe_accepted', 'probe_refused', 'probe_failed', 'rotated', "
            "'rotation_failed', 'rotation_unsupported', 'pull_secret_written', "
            "'pull_secret_failed')",
            name=op.f("ck_credential_events_kind"),
        ),
        sa.ForeignKeyConstraint(
            ["job_id"],
            ["jobs.id"],
            name=op.f("fk_credential_events_job_id_jobs"),
            ondelete="SET NULL",
        ),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_credential_events")),
    )
    op.create_index(
        op.f("ix_credential_events_host_at"), "credential_events", ["host", "at"], unique=False
    )
    op.create_index(
        op.f("ix_credential_events_kind_at"), "credential_events", ["kind", "at"], unique=False
    )
    op.create_table(
        "evaluation_certifications",
        sa.Column("id", sa.Uuid(), nullable=False),
        sa.Column("digest", sa.String(length=100), nullable=False),
        sa.Column("tier", sa.String(length=100), nullable=False),
        sa.Column("host", sa.String(length=255), nullable=False),
        sa.Column("repository", sa.String(length=255), nullable=False),
        sa.Column("status", sa.String(length=20), nullable=False),
        sa.Column("evidence", postgresql.JSONB(astext_type=sa.Text()), nullable=False),
        sa.Column("summary", sa.Text(), nullable=False),
        sa.Column("evaluated_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("issued_at", sa.DateTime(timezone=True), nullable=True),
        sa.Column("expires_at", sa.DateTime(timezone=True), nullable=True),
        sa.Column("refresh_at", sa.DateTime(timezone=True), nullable=True),
        sa.Column("cadence_seconds", sa.Integer(), nullable=False),
        sa.Column("replaces_id", sa.Uuid(), nullable=True),
        sa.Column("job_id", sa.Uuid(), nullable=True),
        sa.Column("refresh_job_id", sa.Uuid(), nullable=True),
        sa.Column("refresh_requested_at", sa.DateTime(timezone=True), nullable=True),
        sa.Column("revoked_at", sa.DateTime(timezone=True), nullable=True),
        sa.Column("reason", sa.Text(), nullable=False),
        sa.Column(
            "updated_at",
            sa.DateTime(timezone=True),
            server_default=sa.text("now()"),
            nullable=False,
        ),
        sa.CheckConstraint(
            "status <> 'active' OR (issued_at IS NOT NULL AND expires_at IS NOT NULL "
            "AND refresh_at IS NOT NULL)",
            name=op.f("ck_evaluation_certifications_active_has_validity"),
        ),
        sa.CheckConstraint(
            "status IN ('active', 'superseded', 'stale', 'revoked', 'failed')",
            name=op.f("ck_evaluation_certifications_status"),
        ),
        sa.ForeignKeyConstraint(
            ["job_id"],
            ["jobs.id"],
            name=op.f("fk_evaluation_certifications_job_id_jobs"),
            ondelete="SET NULL",
        ),
        sa.ForeignKeyConstraint(
            ["replaces_id"],
            ["evaluation_certifications.id"],
            name=op.f("fk_evaluation_certifications_replaces_id_evaluation_certifications"),
            ondelete="RESTRICT",
        ),
        sa.ForeignKeyConstraint(
            ["tier"],
            ["evaluation_tiers.name"],
            name=op.f("fk_evaluation_certifications_tier_evaluation_tiers"),
            ondelete="RESTRICT",
        ),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_evaluation_certifications")),
    )
    op.create_index(
        op.f("ix_evaluation_certifications_digest_tier_evaluated_at"),
        "evaluation_certifications",
        ["digest", "tier", "evaluated_at"],
        unique=False,
    )
    op.create_index(
        "ix_evaluation_certifications_expiry",
        "evaluation_certifications",
        ["expires_at"],
        unique=False,
        postgresql_where=sa.text("status = 'active'"),
    )
    op.create_index(
        "ix_evaluation_certifications_refresh_claimed",
        "evaluation_certifications",
        ["refresh_requested_at"],
        unique=False,
        postgresql_where=sa.text("status = 'active' AND refresh_job_id IS NOT NULL"),
    )
    op.create_index(
        "ix_evaluation_certifications_refresh_due",
        "evaluation_certifications",
        ["refresh_at"],
        unique=False,
        postgresql_where=sa.text("status = 'active' AND refresh_job_id IS NULL"),
    )
    op.create_index(
        "uq_evaluation_certifications_active",
        "evaluation_certifications",
        ["digest", "tier"],
        unique=True,
        postgresql_where=sa.text("status = 'active'"),
    )
    op.create_index(
        "uq_evaluation_certifications_job", "evaluation_certifications", ["job_id"], unique=True
    )
    op.create_index(
        "ix_build_runs_index_digest",
        "build_runs",
        ["index_digest"],
        unique=False,
        postgresql_where=sa.text("index_digest IS NOT NULL"),
    )
    op.add_column("jobs", sa.Column("tenant", sa.String(length=100), nullable=True))
    op.add_column("jobs", sa.Column("target_asset_id", sa.Uuid(), nullable=True))
    op.add_column(
        "jobs", sa.Column("policy_context", postgresql.JSONB(astext_type=sa.Text()), nullable=True)
    )
    op.create_index(op.f("ix_jobs_target_asset_id"), "jobs", ["target_asset_id"], unique=False)
    op.create_foreign_key(
        op.f("fk_jobs_target_asset_id_trust_assets"),
        "jobs",
        "trust_assets",
        ["target_asset_id"],
        ["id"],
        ondelete="SET NULL",
    )
    op.add_column(
        "registry_credentials", sa.Column("rotate_after_seconds", sa.Integer(), nullable=True)
    )
    op.add_column(
        "registry_credentials", sa.Column("expires_at", sa.DateTime(timezone=True), nullable=True)
    )
    op.add_column(
        "registry_credentials",
        sa.Column("pull_secret_namespace", sa.String(length=253), nullable=True),
    )
    op.add_column(
        "registry_credentials", sa.Column("pull_secret_name", sa.String(length=253), nullable=True)
    )
    op.add_column(
        "registry_credentials", sa.Column("probed_at", sa.DateTime(timezone=True), nullable=True)
    )
    op.add_column("registry_credentials", sa.Column("probe_accepted", sa.Boolean(), nullable=True))
    op.add_column(
        "tenant_policies",
        sa.Column("allowed_tasks", postgresql.JSONB(astext_type=sa.Text()), nullable=True),
    )
    op.add_column(
        "tenant_policies",
        sa.Column("allowed_tiers", postgresql.JSONB(astext_type=sa.Text()), nullable=True),
    )
    # A job cancelled before it ran (its target asset was quarantined) ends "preempted", with a
    # "preempted" outcome event.
    op.drop_constraint(op.f("ck_jobs_status"), "jobs", type_="check")
    op.create_check_constraint("status", "jobs", f"status IN ({JOB_STATUSES_NEW})")
    op.drop_constraint(op.f("ck_job_events_kind"), "job_events", type_="check")
    op.create_check_constraint("kind", "job_events", f"kind IN ({EVENT_KINDS_NEW})")
    op.drop_index("uq_job_events_one_outcome", table_name="job_events")
    op.create_index(
        "uq_job_events_one_outcome",
        "job_events",
        ["job_id", "kind"],
        unique=True,
        postgresql_where=sa.text(f"kind IN ({OUTCOME_KINDS_NEW})"),
    )


def downgrade() -> None:
    op.execute("DELETE FROM job_events WHERE kind = 'preempted'")
    op.execute("UPDATE jobs SET status = 'dead_lettered' WHERE status = 'preempted'")
    op.drop_index("uq_job_events_one_outcome", table_name="job_events")
    op.create_index(
        "uq_job_events_one_outcome",
        "job_events",
        ["job_id", "kind"],
        unique=True,
        postgresql_where=sa.text(f"kind IN ({OUTCOME_KINDS_OLD})"),
    )
    op.drop_constraint(op.f("ck_job_events_kind"), "job_events", type_="check")
    op.create_check_constraint("kind", "job_events", f"kind IN ({EVENT_KINDS_OLD})")
    op.drop_constraint(op.f("ck_jobs_status"), "jobs", type_="check")
    op.create_check_constraint("status", "jobs", f"status IN ({JOB_STATUSES_OLD})")
    op.drop_column("tenant_policies", "allowed_tiers")
    op.drop_column("tenant_policies", "allowed_tasks")
    op.drop_column("registry_credentials", "probe_accepted")
    op.drop_column("registry_credentials", "probed_at")
    op.drop_column("registry_credentials", "pull_secret_name")
    op.drop_column("registry_credentials", "pull_secret_namespace")
    op.drop_column("registry_credentials", "expires_at")
    op.drop_column("registry_credentials", "rotate_after_seconds")
    op.drop_constraint(op.f("fk_jobs_target_asset_id_trust_assets"), "jobs", type_="foreignkey")
    op.drop_index(op.f("ix_jobs_target_asset_id"), table_name="jobs")
    op.drop_column("jobs", "policy_context")
    op.drop_column("jobs", "target_asset_id")
    op.drop_column("jobs", "tenant")
    op.drop_index("uq_evaluation_certifications_job", table_name="evaluation_certifications")
    op.drop_index(
        "uq_evaluation_certifications_active",
        table_name="evaluation_certifications",
        postgresql_where=sa.text("status = 'active'"),
    )
    op.drop_index(
        "ix_evaluation_certifications_refresh_claimed", table_name="evaluation_certifications"
    )
    op.drop_index(
        "ix_evaluation_certifications_refresh_due",
        table_name="evaluation_certifications",
        postgresql_where=sa.text("status = 'active' AND refresh_job_id IS NULL"),
    )
    op.drop_index(
        "ix_evaluation_certifications_expiry",
        table_name="evaluation_certifications",
        postgresql_where=sa.text("status = 'active'"),
    )
    op.drop_index(
        op.f("ix_evaluation_certifications_digest_tier_evaluated_at"),
        table_name="evaluation_certifications",
    )
    op.drop_table("evaluation_certifications")
    op.drop_index(op.f("ix_credential_events_kind_at"), table_name="credential_events")
    op.drop_index(op.f("ix_credential_events_host_at"), table_name="credential_events")
    op.drop_table("credential_events")
    op.drop_index(op.f("ix_policy_decisions_tenant_decided_at"), table_name="policy_decisions")
    op.drop_index(op.f("ix_policy_decisions_job_id"), table_name="policy_decisions")
    op.drop_index(op.f("ix_policy_decisions_decided_at"), table_name="policy_decisions")
    op.drop_table("policy_decisions")
    op.drop_table("evaluation_tiers")
    op.drop_table("capability_scores")
    op.drop_index("ix_build_runs_index_digest", table_name="build_runs")

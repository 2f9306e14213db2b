"""remediation: playbooks, runs (one active per asset and playbook), audit, artifacts;
tenant policies; token tenants; asset protection and connection variables

Revision ID: 0005
Revises: 0004
Create Date: 2026-11-21 09:31:34.911425
"""

from __future__ import annotations

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op
from sqlalchemy.dialects import postgresql

revision: str = "0005"
down_revision: str | None = "0004"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


# The audit trail of remediation decisions is append-only, like trust_transitions.
APPEND_ONLY_FUNCTION = """
CREATE FUNCTION remediation_audit_append_only() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    RAISE EXCEPTION 'remediation_audit is append-only: % refused', TG_OP
        USING ERRCODE = 'insufficient_privilege';
END
$$
"""
APPEND_ONLY_TRIGGER = """
CREATE TRIGGER remediation_audit_append_only
BEFORE UPDATE OR DELETE ON remediation_audit
FOR EACH ROW EXECUTE FUNCTION remediation_audit_append_only()
"""


def upgrade() -> None:
    op.create_table(
        "remediation_playbooks",
        sa.Column("id", sa.Uuid(), nullable=False),
        sa.Column("tenant", sa.String(length=100), nullable=False),
        sa.Column("name", sa.String(length=100), nullable=False),
        sa.Column("version", sa.Integer(), nullable=False),
        sa.Column("executor", sa.String(length=20), nullable=False),
        sa.Column("spec", postgresql.JSONB(astext_type=sa.Text()), nullable=False),
        sa.Column("timeout_seconds", sa.Integer(), nullable=False),
        sa.Column("requires_approval", sa.Boolean(), nullable=False),
        sa.Column("asset_kinds", postgresql.JSONB(astext_type=sa.Text()), nullable=False),
        sa.Column("description", sa.Text(), nullable=False),
        sa.Column(
            "created_at",
            sa.DateTime(timezone=True),
            server_default=sa.text("now()"),
            nullable=False,
        ),
        sa.Column("created_by", sa.String(length=200), nullable=True),
        sa.CheckConstraint(
            "executor IN ('shell', 'container', 'ansible', 'libvirt', 'kubernetes')",
            name=op.f("ck_remediation_playbooks_executor"),
        ),
        sa.CheckConstraint(
            "timeout_seconds > 0", name=op.f("ck_remediation_playbooks_timeout_seconds")
        ),
        sa.CheckConstraint("version > 0", name=op.f("ck_remediation_playbooks_version")),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_remediation_playbooks")),
        sa.UniqueConstraint(
            "tenant", "name", "version", name=op.f("uq_remediation_playbooks_tenant_name_version")
        ),
    )
    op.create_table(
        "tenant_policies",
        sa.Column("tenant", sa.String(length=100), nullable=False),
        sa.Column("remediation_requires_approval", sa.Boolean(), nullable=False),
        sa.Column(
            "updated_at",
            sa.DateTime(timezone=True),
            server_default=sa.text("now()"),
            nullable=False,
        ),
        sa.Column("updated_by", sa.String(length=200), nullable=True),
        sa.PrimaryKeyConstraint("tenant", name=op.f("pk_tenant_policies")),
    )
    op.create_table(
        "remediation_runs",
        sa.Column("id", sa.Uuid(), nullable=False),
        sa.Column("tenant", sa.String(length=100), nullable=False),
        sa.Column("asset_id", sa.Uuid(), nullable=False),
        sa.Column("playbook_id", sa.Uuid(), nullable=False),
        sa.Column("playbook_name", sa.String(length=100), nullable=False),
        sa.Column("playbook_version", sa.Integer(), nullable=False),
        sa.Column("state", sa.String(length=30), nullable=False),
        sa.Column("reason", sa.Text(), nullable=False),
        sa.Column("requested_by", sa.String(length=200), nullable=False),
        sa.Column(
            "requested_at",
            sa.DateTime(timezone=True),
            server_default=sa.text("now()"),
            nullable=False,
        ),
        sa.Column("approval_reasons", postgresql.JSONB(astext_type=sa.Text()), nullable=False),
        sa.Column("approval_deadline", sa.DateTime(timezone=True), nullable=True),
        sa.Column("approved_by", sa.String(length=200), nullable=True),
        sa.Column("approved_at", sa.DateTime(timezone=True), nullable=True),
        sa.Column("approval_expires_at", sa.DateTime(timezone=True), nullable=True),
        sa.Column("approval_token_id", sa.String(length=64), nullable=True),
        sa.Column("trust_context", postgresql.JSONB(astext_type=sa.Text()), nullable=False),
        sa.Column("attempts", sa.Integer(), nullable=False),
        sa.Column("job_id", sa.Uuid(), nullable=True),
        sa.Column("started_at", sa.DateTime(timezone=True), nullable=True),
        sa.Column("finished_at", sa.DateTime(timezone=True), nullable=True),
        sa.Column("error", sa.Text(), nullable=True),
        sa.Column("outputs", postgresql.JSONB(astext_type=sa.Text()), nullable=False),
        sa.Column("evidence_nonce", sa.String(length=128), nullable=True),
        sa.Column(
            "updated_at",
            sa.DateTime(timezone=True),
            server_default=sa.text("now()"),
            nullable=False,
        ),
        sa.CheckConstraint(
            "state IN ('pending_approval', 'queued', 'running', 'succeeded', 'failed', "
            "'cancelled', 'expired')",
            name=op.f("ck_remediation_runs_state"),
        ),
        sa.ForeignKeyConstraint(
            ["asset_id"],
            ["trust_assets.id"],
            name=op.f("fk_remediation_runs_asset_id_trust_assets"),
            ondelete="RESTRICT",
        ),
        sa.ForeignKeyConstraint(
            ["job_id"],
            ["jobs.id"],
            name=op.f("fk_remediation_runs_job_id_jobs"),
            ondelete="SET NULL",
        ),
        sa.ForeignKeyConstraint(
            ["playbook_id"],
            ["remediation_playbooks.id"],
            name=op.f("fk_remediation_runs_playbook_id_remediation_playbooks"),
            ondelete="RESTRICT",
        ),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_remediation_runs")),
    )
    op.create_index(
        "ix_remediation_runs_approval_deadline",
        "remediation_runs",
        ["approval_deadline"],
        unique=False,
        postgresql_where=sa.text("state = 'pending_approval'"),
    )
    op.create_index(
        "ix_remediation_runs_approval_expiry",
        "remediation_runs",
        ["approval_expires_at"],
        unique=False,
        postgresql_where=sa.text("state = 'queued' AND approval_expires_at IS NOT NULL"),
    )
    op.create_index(
        op.f("ix_remediation_runs_asset_id_requested_at"),
        "remediation_runs",
        ["asset_id", "requested_at"],
        unique=False,
    )
    op.create_index(
        op.f("ix_remediation_runs_tenant_requested_at"),
        "remediation_runs",
        ["tenant", "requested_at"],
        unique=False,
    )
    op.create_index(
        "uq_remediation_runs_running_asset",
        "remediation_runs",
        ["asset_id"],
        unique=True,
        postgresql_where=sa.text("state = 'running'"),
    )
    op.create_index(
        "ix_remediation_runs_unsent",
        "remediation_runs",
        ["updated_at"],
        unique=False,
        postgresql_where=sa.text("state = 'queued' AND job_id IS NULL"),
    )
    op.create_index(
        "uq_remediation_runs_active",
        "remediation_runs",
        ["tenant", "asset_id", "playbook_name"],
        unique=True,
        postgresql_where=sa.text("state IN ('pending_approval', 'queued', 'running')"),
    )
    op.create_table(
        "remediation_artifacts",
        sa.Column("id", sa.BigInteger(), autoincrement=True, nullable=False),
        sa.Column("run_id", sa.Uuid(), nullable=False),
        sa.Column("tenant", sa.String(length=100), nullable=False),
        sa.Column("attempt", sa.Integer(), nullable=False),
        sa.Column("step_index", sa.Integer(), nullable=False),
        sa.Column("step_name", sa.String(length=200), nullable=False),
        sa.Column("ok", sa.Boolean(), nullable=False),
        sa.Column("timed_out", sa.Boolean(), nullable=False),
        sa.Column("exit_code", sa.Integer(), nullable=True),
        sa.Column("error", sa.Text(), nullable=True),
        sa.Column("stdout", sa.Text(), nullable=False),
        sa.Column("stderr", sa.Text(), nullable=False),
        sa.Column("stdout_bytes", sa.Integer(), nullable=False),
        sa.Column("stderr_bytes", sa.Integer(), nullable=False),
        sa.Column("truncated", sa.Boolean(), nullable=False),
        sa.Column("outputs", postgresql.JSONB(astext_type=sa.Text()), nullable=False),
        sa.Column("started_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("finished_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("duration_ms", sa.Double(), nullable=False),
        sa.ForeignKeyConstraint(
            ["run_id"],
            ["remediation_runs.id"],
            name=op.f("fk_remediation_artifacts_run_id_remediation_runs"),
            ondelete="RESTRICT",
        ),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_remediation_artifacts")),
        sa.UniqueConstraint(
            "run_id",
            "attempt",
            "step_index",
            name=op.f("uq_remediation_artifacts_run_id_attempt_step_index"),
        ),
    )
    op.create_table(
        "remediation_audit",
        sa.Column("id", sa.BigInteger(), autoincrement=True, nullable=False),
        sa.Column("run_id", sa.Uuid(), nullable=False),
        sa.Column("tenant", sa.String(length=100), nullable=False),
        sa.Column("action", sa.String(length=30), nullable=False),
        sa.Column("actor", sa.String(length=200), nullable=False),
        sa.Column("reason", sa.Text(), nullable=False),
        sa.Column("detail", postgresql.JSONB(astext_type=sa.Text()), nullable=False),
        sa.Column(
            "at", sa.DateTime(timezone=True), server_default=sa.text("now()"), nullable=False
        ),
        sa.CheckConstraint(
            "action IN ('requested', 'joined', 'approved', 'rejected', 'token_refused', "
            "'cancelled', 'expired', 'started', 'succeeded', 'failed')",
            name=op.f("ck_remediation_audit_action"),
        ),
        sa.ForeignKeyConstraint(
            ["run_id"],
            ["remediation_runs.id"],
            name=op.f("fk_remediation_audit_run_id_remediation_runs"),
            ondelete="RESTRICT",
        ),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_remediation_audit")),
    )
    op.create_index(
        op.f("ix_remediation_audit_run_id_id"), "remediation_audit", ["run_id", "id"], unique=False
    )
    op.execute(APPEND_ONLY_FUNCTION)
    op.execute(APPEND_ONLY_TRIGGER)
    op.add_column("api_tokens", sa.Column("tenant", sa.String(length=100), nullable=True))
    op.add_column(
        "trust_assets",
        sa.Column("protected", sa.Boolean(), server_default=sa.text("false"), nullable=False),
    )
    op.add_column(
        "trust_assets",
        sa.Column(
            "connection",
            postgresql.JSONB(astext_type=sa.Text()),
            server_default=sa.text("'{}'::jsonb"),
            nullable=False,
        ),
    )


def downgrade() -> None:
    op.drop_column("trust_assets", "connection")
    op.drop_column("trust_assets", "protected")
    op.drop_column("api_tokens", "tenant")
    op.execute("DROP TRIGGER remediation_audit_append_only ON remediation_audit")
    op.execute("DROP FUNCTION remediation_audit_append_only()")
    op.drop_index(op.f("ix_remediation_audit_run_id_id"), table_name="remediation_audit")
    op.drop_table("remediation_audit")
    op.drop_table("remediation_artifacts")
    op.drop_index("ix_remediation_runs_unsent", table_name="remediation_runs")
    op.drop_index("uq_remediation_runs_running_asset", table_name="remediation_runs")
    op.drop_index(
        "uq_remediation_runs_active",
        table_name="remediation_runs",
        postgresql_where=sa.text("state IN ('pending_approval', 'queued', 'running')"),
    )
    op.drop_index(op.f("ix_remediation_runs_tenant_requested_at"), table_name="remediation_runs")
    op.drop_index(op.f("ix_remediation_runs_asset_id_requested_at"), table_name="remediation_runs")
    op.drop_index(
        "ix_remediation_runs_approval_expiry",
        table_name="remediation_runs",
        postgresql_where=sa.text("state = 'queued' AND approval_expires_at IS NOT NULL"),
    )
    op.drop_index(
        "ix_remediation_runs_approval_deadline",
        table_name="remediation_runs",
        postgresql_where=sa.text("state = 'pending_approval'"),
    )
    op.drop_table("remediation_runs")
    op.drop_table("tenant_policies")
    op.drop_table("remediation_playbooks")

"""Remediation workspaces: drafts with their scope, simulations' steps and history (append-only,
announced as ``remediation.workspace``); lanes and freezes; the activations promotions make; an
asset's lane; a playbook version made by a promotion (``scoped``).

Revision ID: 0019
Revises: 0018
Create Date: 2026-12-06 04:20:00.000000
"""

from __future__ import annotations

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op
from sqlalchemy import Text
from sqlalchemy.dialects import postgresql

revision: str = "0019"
down_revision: str | None = "0018"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

OLD_KINDS = (
    "kind IN ('trust.transition', 'policy.decision', 'remediation.update', 'workflow.event', "
    "'runtime.instance', 'runtime.release')"
)
NEW_KINDS = (
    "kind IN ('trust.transition', 'policy.decision', 'remediation.update', "
    "'remediation.workspace', 'workflow.event', 'runtime.instance', 'runtime.release')"
)

OLD_AUDIT_ACTIONS = (
    "action IN ('requested', 'joined', 'approved', 'rejected', 'token_refused', 'cancelled', "
    "'expired', 'started', 'succeeded', 'failed')"
)
NEW_AUDIT_ACTIONS = (
    "action IN ('requested', 'joined', 'approved', 'rejected', 'token_refused', 'cancelled', "
    "'expired', 'started', 'relinked', 'succeeded', 'failed')"
)


def upgrade() -> None:
    op.create_table(
        "remediation_freezes",
        sa.Column("id", sa.Uuid(), nullable=False),
        sa.Column("tenant", sa.String(length=100), nullable=False),
        sa.Column("lane", sa.String(length=100), nullable=True),
        sa.Column("asset_class", sa.String(length=100), nullable=True),
        sa.Column("reason", sa.Text(), nullable=False),
        sa.Column("starts_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("ends_at", sa.DateTime(timezone=True), nullable=True),
        sa.Column("created_by", sa.String(length=200), nullable=False),
        sa.Column(
            "created_at",
            sa.DateTime(timezone=True),
            server_default=sa.text("now()"),
            nullable=False,
        ),
        sa.Column("lifted_at", sa.DateTime(timezone=True), nullable=True),
        sa.Column("lifted_by", sa.String(length=200), nullable=True),
        sa.CheckConstraint(
            "ends_at IS NULL OR ends_at > starts_at", name=op.f("ck_remediation_freezes_window")
        ),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_remediation_freezes")),
    )
    op.create_index(
        op.f("ix_remediation_freezes_tenant_starts_at"),
        "remediation_freezes",
        ["tenant", "starts_at"],
        unique=False,
    )
    op.create_table(
        "remediation_lanes",
        sa.Column("tenant", sa.String(length=100), nullable=False),
        sa.Column("name", sa.String(length=100), nullable=False),
        sa.Column("protected", sa.Boolean(), nullable=False),
        sa.Column("description", sa.Text(), nullable=False),
        sa.Column(
            "updated_at",
            sa.DateTime(timezone=True),
            server_default=sa.text("now()"),
            nullable=False,
        ),
        sa.Column("updated_by", sa.String(length=200), nullable=True),
        sa.PrimaryKeyConstraint("tenant", "name", name=op.f("pk_remediation_lanes")),
    )
    op.create_table(
        "remediation_workspaces",
        sa.Column("id", sa.Uuid(), nullable=False),
        sa.Column("tenant", sa.String(length=100), nullable=False),
        sa.Column("name", sa.String(length=100), nullable=False),
        sa.Column("playbook_name", sa.String(length=100), nullable=False),
        sa.Column("base_playbook_id", sa.Uuid(), nullable=True),
        sa.Column("base_version", sa.Integer(), nullable=True),
        sa.Column("draft", postgresql.JSONB(astext_type=Text()), nullable=False),
        sa.Column("revision", sa.Integer(), nullable=False),
        sa.Column("scope_asset_class", sa.String(length=100), nullable=False),
        sa.Column("scope_lane", sa.String(length=100), nullable=False),
        sa.Column("scope_selector", postgresql.JSONB(astext_type=Text()), nullable=False),
        sa.Column("active_runs", sa.String(length=20), nullable=False),
        sa.Column("state", sa.String(length=30), nullable=False),
        sa.Column("version", sa.Integer(), nullable=False),
        sa.Column("simulation", sa.Integer(), nullable=False),
        sa.Column("simulated_revision", sa.Integer(), nullable=True),
        sa.Column("simulation_job_id", sa.Uuid(), nullable=True),
        sa.Column("simulation_result", postgresql.JSONB(astext_type=Text()), nullable=False),
        sa.Column("approved_revision", sa.Integer(), nullable=True),
        sa.Column("approved_by", sa.String(length=200), nullable=True),
        sa.Column("approved_at", sa.DateTime(timezone=True), nullable=True),
        sa.Column("promoted_playbook_id", sa.Uuid(), nullable=True),
        sa.Column("promoted_at", sa.DateTime(timezone=True), nullable=True),
        sa.Column("promoted_by", sa.String(length=200), nullable=True),
        sa.Column("loop_finished_at", sa.DateTime(timezone=True), nullable=True),
        sa.Column("reason", sa.Text(), nullable=False),
        sa.Column("created_by", sa.String(length=200), nullable=False),
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
        sa.CheckConstraint(
            "active_runs IN ('relink', 'finish')",
            name=op.f("ck_remediation_workspaces_active_runs"),
        ),
        sa.CheckConstraint(
            "state IN ('draft', 'simulating', 'simulated_passed', 'simulated_failed', "
            "'approved', 'promoted', 'abandoned')",
            name=op.f("ck_remediation_workspaces_state"),
        ),
        sa.CheckConstraint("revision > 0", name=op.f("ck_remediation_workspaces_revision")),
        sa.ForeignKeyConstraint(
            ["base_playbook_id"],
            ["remediation_playbooks.id"],
            name=op.f("fk_remediation_workspaces_base_playbook_id_remediation_playbooks"),
            ondelete="RESTRICT",
        ),
        sa.ForeignKeyConstraint(
            ["promoted_playbook_id"],
            ["remediation_playbooks.id"],
            name=op.f("fk_remediation_workspaces_promoted_playbook_id_remediation_playbooks"),
            ondelete="RESTRICT",
        ),
        sa.ForeignKeyConstraint(
            ["scope_asset_class"],
            ["trust_asset_classes.name"],
            name=op.f("fk_remediation_workspaces_scope_asset_class_trust_asset_classes"),
            ondelete="RESTRICT",
        ),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_remediation_workspaces")),
        sa.UniqueConstraint("tenant", "name", name=op.f("uq_remediation_workspaces_tenant_name")),
    )
    op.create_index(
        "ix_remediation_workspaces_loop_pending",
        "remediation_workspaces",
        ["promoted_at"],
        unique=False,
        postgresql_where=sa.text("state = 'promoted' AND loop_finished_at IS NULL"),
    )
    op.create_table(
        "remediation_activations",
        sa.Column("id", sa.Uuid(), nullable=False),
        sa.Column("tenant", sa.String(length=100), nullable=False),
        sa.Column("playbook_name", sa.String(length=100), nullable=False),
        sa.Column("asset_class", sa.String(length=100), nullable=False),
        sa.Column("lane", sa.String(length=100), nullable=False),
        sa.Column("selector_key", sa.Text(), nullable=False),
        sa.Column("selector", postgresql.JSONB(astext_type=Text()), nullable=False),
        sa.Column("playbook_id", sa.Uuid(), nullable=False),
        sa.Column("playbook_version", sa.Integer(), nullable=False),
        sa.Column("previous_playbook_id", sa.Uuid(), nullable=True),
        sa.Column("workspace_id", sa.Uuid(), nullable=False),
        sa.Column(
            "activated_at",
            sa.DateTime(timezone=True),
            server_default=sa.text("now()"),
            nullable=False,
        ),
        sa.Column("activated_by", sa.String(length=200), nullable=False),
        sa.ForeignKeyConstraint(
            ["playbook_id"],
            ["remediation_playbooks.id"],
            name=op.f("fk_remediation_activations_playbook_id_remediation_playbooks"),
            ondelete="RESTRICT",
        ),
        sa.ForeignKeyConstraint(
            ["previous_playbook_id"],
            ["remediation_playbooks.id"],
            name=op.f("fk_remediation_activations_previous_playbook_id_remediation_playbooks"),
            ondelete="RESTRICT",
        ),
        sa.ForeignKeyConstraint(
            ["workspace_id"],
            ["remediation_workspaces.id"],
            name=op.f("fk_remediation_activations_workspace_id_remediation_workspaces"),
            ondelete="RESTRICT",
        ),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_remediation_activations")),
        sa.UniqueConstraint(
            "tenant",
            "playbook_name",
            "asset_class",
            "lane",
            "selector_key",
            name=op.f(
                "uq_remediation_activations_tenant_playbook_name_asset_class_lane_selector_key"
            ),
        ),
    )
    op.create_table(
        "remediation_simulation_steps",
        sa.Column("id", sa.BigInteger(), autoincrement=True, nullable=False),
        sa.Column("workspace_id", sa.Uuid(), nullable=False),
        sa.Column("simulation", sa.Integer(), nullable=False),
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
        sa.Column("outputs", postgresql.JSONB(astext_type=Text()), nullable=False),
        sa.Column("started_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("finished_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("duration_ms", sa.Float(), nullable=False),
        sa.ForeignKeyConstraint(
            ["workspace_id"],
            ["remediation_workspaces.id"],
            name=op.f("fk_remediation_simulation_steps_workspace_id_remediation_workspaces"),
            ondelete="RESTRICT",
        ),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_remediation_simulation_steps")),
        sa.UniqueConstraint(
            "workspace_id",
            "simulation",
            "step_index",
            name=op.f("uq_remediation_simulation_steps_workspace_id_simulation_step_index"),
        ),
    )
    op.create_table(
        "remediation_workspace_events",
        sa.Column("id", sa.BigInteger(), autoincrement=True, nullable=False),
        sa.Column("workspace_id", sa.Uuid(), nullable=False),
        sa.Column("tenant", sa.String(length=100), nullable=False),
        sa.Column("action", sa.String(length=30), nullable=False),
        sa.Column("actor", sa.String(length=200), nullable=False),
        sa.Column("revision", sa.Integer(), nullable=False),
        sa.Column("asset_id", sa.Uuid(), nullable=True),
        sa.Column("detail", postgresql.JSONB(astext_type=Text()), nullable=False),
        sa.Column(
            "at", sa.DateTime(timezone=True), server_default=sa.text("now()"), nullable=False
        ),
        sa.CheckConstraint(
            "action IN ('created', 'edited', 'simulation_started', 'simulated', 'approved', "
            "'promotion_refused', 'promoted', 'run_created', 'run_refreshed', 'run_skipped', "
            "'loop_finished', 'abandoned')",
            name=op.f("ck_remediation_workspace_events_action"),
        ),
        sa.ForeignKeyConstraint(
            ["workspace_id"],
            ["remediation_workspaces.id"],
            name=op.f("fk_remediation_workspace_events_workspace_id_remediation_workspaces"),
            ondelete="RESTRICT",
        ),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_remediation_workspace_events")),
    )
    op.create_index(
        op.f("ix_remediation_workspace_events_workspace_id_id"),
        "remediation_workspace_events",
        ["workspace_id", "id"],
        unique=False,
    )
    op.create_index(
        "uq_remediation_workspace_events_loop_asset",
        "remediation_workspace_events",
        ["workspace_id", "asset_id"],
        unique=True,
        postgresql_where=sa.text("action IN ('run_created', 'run_refreshed', 'run_skipped')"),
    )
    op.add_column(
        "remediation_playbooks",
        sa.Column("scoped", sa.Boolean(), server_default=sa.text("false"), nullable=False),
    )
    op.add_column("trust_assets", sa.Column("lane", sa.String(length=100), nullable=True))
    op.execute(
        """
        CREATE FUNCTION remediation_workspace_events_append_only() RETURNS trigger
        LANGUAGE plpgsql AS $$
        BEGIN
            RAISE EXCEPTION 'remediation_workspace_events is append-only: % refused', TG_OP;
        END;
        $$;
        CREATE TRIGGER remediation_workspace_events_append_only
            BEFORE UPDATE OR DELETE ON remediation_workspace_events
            FOR EACH ROW EXECUTE FUNCTION remediation_workspace_events_append_only();
        """
    )
    op.drop_constraint(op.f("ck_stream_events_kind"), "stream_events", type_="check")
    op.create_check_constraint(op.f("ck_stream_events_kind"), "stream_events", NEW_KINDS)
    op.drop_constraint(op.f("ck_remediation_audit_action"), "remediation_audit", type_="check")
    op.create_check_constraint(
        op.f("ck_remediation_audit_action"), "remediation_audit", NEW_AUDIT_ACTIONS
    )


def downgrade() -> None:
    op.execute(
        """
        ALTER TABLE stream_events DISABLE TRIGGER stream_events_append_only;
        DELETE FROM stream_events WHERE kind = 'remediation.workspace';
        ALTER TABLE stream_events ENABLE TRIGGER stream_events_append_only;
        """
    )
    op.drop_constraint(op.f("ck_stream_events_kind"), "stream_events", type_="check")
    op.create_check_constraint(op.f("ck_stream_events_kind"), "stream_events", OLD_KINDS)
    op.execute(
        """
        ALTER TABLE remediation_audit DISABLE TRIGGER remediation_audit_append_only;
        DELETE FROM remediation_audit WHERE action = 'relinked';
        ALTER TABLE remediation_audit ENABLE TRIGGER remediation_audit_append_only;
        """
    )
    op.drop_constraint(op.f("ck_remediation_audit_action"), "remediation_audit", type_="check")
    op.create_check_constraint(
        op.f("ck_remediation_audit_action"), "remediation_audit", OLD_AUDIT_ACTIONS
    )
    op.execute(
        "DROP TRIGGER remediation_workspace_events_append_only ON remediation_workspace_events"
    )
    op.execute("DROP FUNCTION remediation_workspace_events_append_only()")
    op.drop_column("trust_assets", "lane")
    op.drop_column("remediation_playbooks", "scoped")
    op.drop_index(
        "uq_remediation_workspace_events_loop_asset",
        table_name="remediation_workspace_events",
        postgresql_where=sa.text("action IN ('run_created', 'run_refreshed', 'run_skipped')"),
    )
    op.drop_index(
        op.f("ix_remediation_workspace_events_workspace_id_id"),
        table_name="remediation_workspace_events",
    )
    op.drop_table("remediation_workspace_events")
    op.drop_table("remediation_simulation_steps")
    op.drop_table("remediation_activations")
    op.drop_index(
        "ix_remediation_workspaces_loop_pending",
        table_name="remediation_workspaces",
        postgresql_where=sa.text("state = 'promoted' AND loop_finished_at IS NULL"),
    )
    op.drop_table("remediation_workspaces")
    op.drop_table("remediation_lanes")
    op.drop_index(op.f("ix_remediation_freezes_tenant_starts_at"), table_name="remediation_freezes")
    op.drop_table("remediation_freezes")

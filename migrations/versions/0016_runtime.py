"""The runtime: MCP servers, their releases, targets, instances and each instance's history
(append-only), announced on the event stream as ``runtime.instance``.

Revision ID: 0016
Revises: 0015
Create Date: 2026-12-04 12:30:00.000000
"""

from __future__ import annotations

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op
from sqlalchemy.dialects import postgresql

revision: str = "0016"
down_revision: str | None = "0015"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

OLD_KINDS = (
    "kind IN ('trust.transition', 'policy.decision', 'remediation.update', 'workflow.event')"
)
NEW_KINDS = (
    "kind IN ('trust.transition', 'policy.decision', 'remediation.update', 'workflow.event', "
    "'runtime.instance')"
)
LIVE = "state IN ('pending', 'starting', 'running', 'blocked')"
STATES = "state IN ('pending', 'starting', 'running', 'draining', 'stopped', 'failed', 'blocked')"


def upgrade() -> None:
    op.create_table(
        "runtime_servers",
        sa.Column("id", sa.Uuid(), primary_key=True),
        sa.Column("tenant", sa.String(length=100), nullable=False),
        sa.Column("name", sa.String(length=100), nullable=False),
        sa.Column("repository", sa.String(length=400), nullable=False),
        sa.Column("description", sa.Text(), nullable=False),
        sa.Column("probe_kind", sa.String(length=10), nullable=False),
        sa.Column("probe_path", sa.String(length=200), nullable=False),
        sa.Column("isolation", sa.String(length=20), nullable=False),
        sa.Column("confidential", sa.Boolean(), nullable=False),
        sa.Column("accelerator", sa.String(length=100), nullable=True),
        sa.Column(
            "created_at", sa.DateTime(timezone=True), server_default=sa.func.now(), nullable=False
        ),
        sa.Column("created_by", sa.String(length=200), nullable=True),
        sa.UniqueConstraint("tenant", "name", name=op.f("uq_runtime_servers_tenant_name")),
        sa.CheckConstraint(
            "probe_kind IN ('mcp', 'http')", name=op.f("ck_runtime_servers_probe_kind")
        ),
        sa.CheckConstraint(
            "isolation IN ('container', 'vm')", name=op.f("ck_runtime_servers_isolation")
        ),
    )
    op.create_table(
        "runtime_releases",
        sa.Column("id", sa.Uuid(), primary_key=True),
        sa.Column(
            "server_id",
            sa.Uuid(),
            sa.ForeignKey(
                "runtime_servers.id",
                name=op.f("fk_runtime_releases_server_id_runtime_servers"),
                ondelete="CASCADE",
            ),
            nullable=False,
        ),
        sa.Column("digest", sa.String(length=100), nullable=False),
        sa.Column("tier", sa.String(length=100), nullable=False),
        sa.Column("platforms", postgresql.JSONB(), nullable=False),
        sa.Column(
            "created_at", sa.DateTime(timezone=True), server_default=sa.func.now(), nullable=False
        ),
        sa.Column("created_by", sa.String(length=200), nullable=True),
        sa.UniqueConstraint(
            "server_id", "digest", "tier", name=op.f("uq_runtime_releases_server_id_digest_tier")
        ),
    )
    op.create_table(
        "runtime_targets",
        sa.Column("name", sa.String(length=100), primary_key=True),
        sa.Column("backend", sa.String(length=20), nullable=False),
        sa.Column(
            "asset_id",
            sa.Uuid(),
            sa.ForeignKey(
                "trust_assets.id",
                name=op.f("fk_runtime_targets_asset_id_trust_assets"),
                ondelete="RESTRICT",
            ),
            nullable=False,
        ),
        sa.Column("platforms", postgresql.JSONB(), nullable=False),
        sa.Column("isolation", sa.String(length=20), nullable=False),
        sa.Column("confidential", sa.Boolean(), nullable=False),
        sa.Column("accelerators", postgresql.JSONB(), nullable=False),
        sa.Column("priority", sa.Integer(), nullable=False),
        sa.Column("connection", postgresql.JSONB(), nullable=False),
        sa.Column("enabled", sa.Boolean(), nullable=False),
        sa.Column(
            "created_at", sa.DateTime(timezone=True), server_default=sa.func.now(), nullable=False
        ),
        sa.Column("updated_by", sa.String(length=200), nullable=True),
        sa.CheckConstraint(
            "backend IN ('docker', 'kubernetes', 'libvirt')",
            name=op.f("ck_runtime_targets_backend"),
        ),
        sa.CheckConstraint(
            "isolation IN ('container', 'vm')", name=op.f("ck_runtime_targets_isolation")
        ),
    )
    op.create_table(
        "runtime_instances",
        sa.Column("id", sa.Uuid(), primary_key=True),
        sa.Column(
            "release_id",
            sa.Uuid(),
            sa.ForeignKey(
                "runtime_releases.id",
                name=op.f("fk_runtime_instances_release_id_runtime_releases"),
                ondelete="CASCADE",
            ),
            nullable=False,
        ),
        sa.Column(
            "server_id",
            sa.Uuid(),
            sa.ForeignKey(
                "runtime_servers.id",
                name=op.f("fk_runtime_instances_server_id_runtime_servers"),
                ondelete="CASCADE",
            ),
            nullable=False,
        ),
        sa.Column("tenant", sa.String(length=100), nullable=False),
        sa.Column("target", sa.String(length=100), nullable=True),
        sa.Column("backend", sa.String(length=20), nullable=True),
        sa.Column("asset_id", sa.Uuid(), nullable=True),
        sa.Column("state", sa.String(length=20), nullable=False),
        sa.Column("version", sa.Integer(), nullable=False),
        sa.Column("reason", sa.Text(), nullable=False),
        sa.Column(
            "decision_id",
            sa.BigInteger(),
            sa.ForeignKey(
                "policy_decisions.id",
                name=op.f("fk_runtime_instances_decision_id_policy_decisions"),
                ondelete="SET NULL",
            ),
            nullable=True,
        ),
        sa.Column("handle", postgresql.JSONB(), nullable=False),
        sa.Column("endpoint", sa.String(length=400), nullable=True),
        sa.Column("health", postgresql.JSONB(), nullable=True),
        sa.Column("log_tail", sa.Text(), nullable=True),
        sa.Column("launch_job_id", sa.Uuid(), nullable=True),
        sa.Column(
            "created_at", sa.DateTime(timezone=True), server_default=sa.func.now(), nullable=False
        ),
        sa.Column(
            "updated_at", sa.DateTime(timezone=True), server_default=sa.func.now(), nullable=False
        ),
        sa.CheckConstraint(STATES, name=op.f("ck_runtime_instances_state")),
    )
    op.create_index(
        "uq_runtime_instances_live_release",
        "runtime_instances",
        ["release_id"],
        unique=True,
        postgresql_where=sa.text(LIVE),
    )
    op.create_index(
        op.f("ix_runtime_instances_server_id_created_at"),
        "runtime_instances",
        ["server_id", "created_at"],
    )
    op.create_table(
        "runtime_instance_history",
        sa.Column("id", sa.BigInteger(), sa.Identity(), primary_key=True),
        sa.Column(
            "instance_id",
            sa.Uuid(),
            sa.ForeignKey(
                "runtime_instances.id",
                name=op.f("fk_runtime_instance_history_instance_id_runtime_instances"),
                ondelete="CASCADE",
            ),
            nullable=False,
        ),
        sa.Column("seq", sa.Integer(), nullable=False),
        sa.Column("from_state", sa.String(length=20), nullable=True),
        sa.Column("to_state", sa.String(length=20), nullable=False),
        sa.Column("cause", sa.String(length=60), nullable=False),
        sa.Column("detail", sa.Text(), nullable=False),
        sa.Column("actor", sa.String(length=200), nullable=False),
        sa.Column("job_id", sa.Uuid(), nullable=True),
        sa.Column("at", sa.DateTime(timezone=True), server_default=sa.func.now(), nullable=False),
        sa.UniqueConstraint(
            "instance_id", "seq", name=op.f("uq_runtime_instance_history_instance_id_seq")
        ),
    )
    # Append-only, but a deleted server takes its instances' history with it (the cascade).
    op.execute(
        """
        CREATE FUNCTION runtime_instance_history_append_only() RETURNS trigger AS $$
        BEGIN
            RAISE EXCEPTION 'runtime_instance_history is append-only';
        END;
        $$ LANGUAGE plpgsql;
        CREATE TRIGGER runtime_instance_history_append_only
            BEFORE UPDATE ON runtime_instance_history
            FOR EACH ROW EXECUTE FUNCTION runtime_instance_history_append_only();
        """
    )
    op.drop_constraint(op.f("ck_stream_events_kind"), "stream_events", type_="check")
    op.create_check_constraint(op.f("ck_stream_events_kind"), "stream_events", NEW_KINDS)


def downgrade() -> None:
    op.execute(
        """
        ALTER TABLE stream_events DISABLE TRIGGER stream_events_append_only;
        DELETE FROM stream_events WHERE kind = 'runtime.instance';
        ALTER TABLE stream_events ENABLE TRIGGER stream_events_append_only;
        """
    )
    op.drop_constraint(op.f("ck_stream_events_kind"), "stream_events", type_="check")
    op.create_check_constraint(op.f("ck_stream_events_kind"), "stream_events", OLD_KINDS)
    op.execute("DROP TRIGGER runtime_instance_history_append_only ON runtime_instance_history")
    op.execute("DROP FUNCTION runtime_instance_history_append_only()")
    op.drop_table("runtime_instance_history")
    op.drop_index(op.f("ix_runtime_instances_server_id_created_at"), table_name="runtime_instances")
    op.drop_index("uq_runtime_instances_live_release", table_name="runtime_instances")
    op.drop_table("runtime_instances")
    op.drop_table("runtime_targets")
    op.drop_table("runtime_releases")
    op.drop_table("runtime_servers")

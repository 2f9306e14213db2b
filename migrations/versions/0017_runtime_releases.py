"""How releases move: tier promotion rules, rollouts, the release history (append-only,
announced as ``runtime.release``), and the mark a rolled-back release carries.

Revision ID: 0017
Revises: 0016
Create Date: 2026-12-05 12:30:00.000000
"""

from __future__ import annotations

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op
from sqlalchemy.dialects import postgresql

revision: str = "0017"
down_revision: str | None = "0016"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

OLD_KINDS = (
    "kind IN ('trust.transition', 'policy.decision', 'remediation.update', 'workflow.event', "
    "'runtime.instance')"
)
NEW_KINDS = (
    "kind IN ('trust.transition', 'policy.decision', 'remediation.update', 'workflow.event', "
    "'runtime.instance', 'runtime.release')"
)


def _server_fk(table: str) -> sa.Column[sa.Uuid[object]]:
    return sa.Column(
        "server_id",
        sa.Uuid(),
        sa.ForeignKey(
            "runtime_servers.id",
            name=op.f(f"fk_{table}_server_id_runtime_servers"),
            ondelete="CASCADE",
        ),
        nullable=False,
    )


def upgrade() -> None:
    op.add_column(
        "runtime_releases", sa.Column("rolled_back_at", sa.DateTime(timezone=True), nullable=True)
    )
    op.create_table(
        "runtime_tier_rules",
        sa.Column(
            "tier",
            sa.String(length=100),
            sa.ForeignKey(
                "evaluation_tiers.name",
                name=op.f("fk_runtime_tier_rules_tier_evaluation_tiers"),
                ondelete="CASCADE",
            ),
            primary_key=True,
        ),
        sa.Column("anomaly_threshold", sa.Float(), nullable=False),
        sa.Column("protected", sa.Boolean(), nullable=False),
        sa.Column("analysis_seconds", sa.Float(), nullable=False),
        sa.Column(
            "updated_at", sa.DateTime(timezone=True), server_default=sa.func.now(), nullable=False
        ),
        sa.Column("updated_by", sa.String(length=200), nullable=True),
    )
    op.create_table(
        "runtime_rollouts",
        sa.Column("id", sa.Uuid(), primary_key=True),
        _server_fk("runtime_rollouts"),
        sa.Column("tier", sa.String(length=100), nullable=False),
        sa.Column("job_id", sa.Uuid(), nullable=False),
        sa.Column(
            "to_release_id",
            sa.Uuid(),
            sa.ForeignKey(
                "runtime_releases.id",
                name=op.f("fk_runtime_rollouts_to_release_id_runtime_releases"),
                ondelete="CASCADE",
            ),
            nullable=False,
        ),
        sa.Column(
            "from_release_id",
            sa.Uuid(),
            sa.ForeignKey(
                "runtime_releases.id",
                name=op.f("fk_runtime_rollouts_from_release_id_runtime_releases"),
                ondelete="CASCADE",
            ),
            nullable=True,
        ),
        sa.Column("from_instance_id", sa.Uuid(), nullable=True),
        sa.Column("to_instance_id", sa.Uuid(), nullable=True),
        sa.Column("state", sa.String(length=20), nullable=False),
        sa.Column("analysis_seconds", sa.Float(), nullable=False),
        sa.Column("reason", sa.Text(), nullable=False),
        sa.Column("actor", sa.String(length=200), nullable=False),
        sa.Column(
            "created_at", sa.DateTime(timezone=True), server_default=sa.func.now(), nullable=False
        ),
        sa.Column("finished_at", sa.DateTime(timezone=True), nullable=True),
        sa.UniqueConstraint("job_id", name=op.f("uq_runtime_rollouts_job_id")),
        sa.CheckConstraint(
            "state IN ('running', 'succeeded', 'rolled_back', 'failed')",
            name=op.f("ck_runtime_rollouts_state"),
        ),
    )
    op.create_index(
        "uq_runtime_rollouts_running",
        "runtime_rollouts",
        ["server_id", "tier"],
        unique=True,
        postgresql_where=sa.text("state = 'running'"),
    )
    op.create_table(
        "runtime_release_history",
        sa.Column("id", sa.BigInteger(), sa.Identity(), primary_key=True),
        _server_fk("runtime_release_history"),
        sa.Column("tenant", sa.String(length=100), nullable=False),
        sa.Column("kind", sa.String(length=20), nullable=False),
        sa.Column("outcome", sa.String(length=20), nullable=False),
        sa.Column("tier", sa.String(length=100), nullable=False),
        sa.Column("digest", sa.String(length=100), nullable=False),
        sa.Column("from_digest", sa.String(length=100), nullable=True),
        sa.Column(
            "rollout_id",
            sa.Uuid(),
            sa.ForeignKey(
                "runtime_rollouts.id",
                name=op.f("fk_runtime_release_history_rollout_id_runtime_rollouts"),
                ondelete="CASCADE",
            ),
            nullable=True,
        ),
        sa.Column("checkpoints", postgresql.JSONB(), nullable=False),
        sa.Column("detail", sa.Text(), nullable=False),
        sa.Column("actor", sa.String(length=200), nullable=False),
        sa.Column("job_id", sa.Uuid(), nullable=True),
        sa.Column("at", sa.DateTime(timezone=True), server_default=sa.func.now(), nullable=False),
        sa.CheckConstraint(
            "kind IN ('promotion', 'rollout', 'rollback')",
            name=op.f("ck_runtime_release_history_kind"),
        ),
        sa.CheckConstraint(
            "outcome IN ('promoted', 'refused', 'started', 'succeeded', 'rolled_back', 'failed')",
            name=op.f("ck_runtime_release_history_outcome"),
        ),
    )
    op.create_index(
        op.f("ix_runtime_release_history_server_id_at"),
        "runtime_release_history",
        ["server_id", "at"],
    )
    op.create_index(
        "uq_runtime_release_history_rollout_step",
        "runtime_release_history",
        ["rollout_id", "kind", "outcome"],
        unique=True,
        postgresql_where=sa.text("rollout_id IS NOT NULL"),
    )
    # Append-only, but a deleted server takes its history with it (the cascade).
    op.execute(
        """
        CREATE FUNCTION runtime_release_history_append_only() RETURNS trigger AS $$
        BEGIN
            RAISE EXCEPTION 'runtime_release_history is append-only';
        END;
        $$ LANGUAGE plpgsql;
        CREATE TRIGGER runtime_release_history_append_only
            BEFORE UPDATE ON runtime_release_history
            FOR EACH ROW EXECUTE FUNCTION runtime_release_history_append_only();
        """
    )
    op.drop_constraint(op.f("ck_stream_events_kind"), "stream_events", type_="check")
    op.create_check_constraint(op.f("ck_stream_events_kind"), "stream_events", NEW_KINDS)


def downgrade() -> None:
    op.execute(
        """
        ALTER TABLE stream_events DISABLE TRIGGER stream_events_append_only;
        DELETE FROM stream_events WHERE kind = 'runtime.release';
        ALTER TABLE stream_events ENABLE TRIGGER stream_events_append_only;
        """
    )
    op.drop_constraint(op.f("ck_stream_events_kind"), "stream_events", type_="check")
    op.create_check_constraint(op.f("ck_stream_events_kind"), "stream_events", OLD_KINDS)
    op.execute("DROP TRIGGER runtime_release_history_append_only ON runtime_release_history")
    op.execute("DROP FUNCTION runtime_release_history_append_only()")
    op.drop_index("uq_runtime_release_history_rollout_step", table_name="runtime_release_history")
    op.drop_index(
        op.f("ix_runtime_release_history_server_id_at"), table_name="runtime_release_history"
    )
    op.drop_table("runtime_release_history")
    op.drop_index("uq_runtime_rollouts_running", table_name="runtime_rollouts")
    op.drop_table("runtime_rollouts")
    op.drop_table("runtime_tier_rules")
    op.drop_column("runtime_releases", "rolled_back_at")

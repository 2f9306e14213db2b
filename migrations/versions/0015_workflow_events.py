"""Workflow runs' timelines (``workflow_events``, append-only), announced on the event stream.

Revision ID: 0015
Revises: 0014
Create Date: 2026-12-04 04:15:00.000000
"""

from __future__ import annotations

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op
from sqlalchemy.dialects import postgresql

revision: str = "0015"
down_revision: str | None = "0014"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

OLD_KINDS = "kind IN ('trust.transition', 'policy.decision', 'remediation.update')"
NEW_KINDS = (
    "kind IN ('trust.transition', 'policy.decision', 'remediation.update', 'workflow.event')"
)


def upgrade() -> None:
    op.create_table(
        "workflow_events",
        sa.Column("id", sa.BigInteger(), sa.Identity(), primary_key=True),
        sa.Column(
            "run_id",
            sa.Uuid(),
            sa.ForeignKey("workflow_runs.id", name=op.f("fk_workflow_events_run_id_workflow_runs")),
            nullable=False,
        ),
        sa.Column("tenant", sa.String(length=100), nullable=False),
        sa.Column("type", sa.String(length=40), nullable=False),
        sa.Column("step", sa.String(length=63), nullable=True),
        sa.Column("runner", sa.String(length=200), nullable=True),
        sa.Column("data", postgresql.JSONB(), nullable=False),
        sa.Column("at", sa.DateTime(timezone=True), server_default=sa.func.now(), nullable=False),
    )
    op.create_index(op.f("ix_workflow_events_run_id_id"), "workflow_events", ["run_id", "id"])
    op.execute(
        """
        CREATE FUNCTION workflow_events_append_only() RETURNS trigger AS $$
        BEGIN
            RAISE EXCEPTION 'workflow_events is append-only';
        END;
        $$ LANGUAGE plpgsql;
        CREATE TRIGGER workflow_events_append_only BEFORE UPDATE OR DELETE ON workflow_events
            FOR EACH ROW EXECUTE FUNCTION workflow_events_append_only();
        """
    )
    op.drop_constraint(op.f("ck_stream_events_kind"), "stream_events", type_="check")
    op.create_check_constraint(op.f("ck_stream_events_kind"), "stream_events", NEW_KINDS)


def downgrade() -> None:
    op.execute(
        """
        ALTER TABLE stream_events DISABLE TRIGGER stream_events_append_only;
        DELETE FROM stream_events WHERE kind = 'workflow.event';
        ALTER TABLE stream_events ENABLE TRIGGER stream_events_append_only;
        """
    )
    op.drop_constraint(op.f("ck_stream_events_kind"), "stream_events", type_="check")
    op.create_check_constraint(op.f("ck_stream_events_kind"), "stream_events", OLD_KINDS)
    op.execute("DROP TRIGGER workflow_events_append_only ON workflow_events")
    op.execute("DROP FUNCTION workflow_events_append_only()")
    op.drop_index(op.f("ix_workflow_events_run_id_id"), table_name="workflow_events")
    op.drop_table("workflow_events")

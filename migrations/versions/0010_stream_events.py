"""The event stream's stored history (GET /v1/stream resumes from it).

Revision ID: 0010
Revises: 0009
Create Date: 2026-12-03 16:10:00.000000
"""

from __future__ import annotations

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op
from sqlalchemy.dialects import postgresql

revision: str = "0010"
down_revision: str | None = "0009"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    op.create_table(
        "stream_events",
        sa.Column("id", sa.BigInteger(), sa.Identity(), primary_key=True),
        sa.Column("kind", sa.String(length=40), nullable=False),
        sa.Column("tenant", sa.String(length=100), nullable=True),
        sa.Column("data", postgresql.JSONB(), nullable=False),
        sa.Column("at", sa.DateTime(timezone=True), server_default=sa.func.now(), nullable=False),
        sa.CheckConstraint(
            "kind IN ('trust.transition', 'policy.decision', 'remediation.update')",
            name=op.f("ck_stream_events_kind"),
        ),
    )
    op.create_index(op.f("ix_stream_events_tenant_id"), "stream_events", ["tenant", "id"])
    # Append-only, like the histories it follows.
    op.execute(
        """
        CREATE FUNCTION stream_events_append_only() RETURNS trigger AS $$
        BEGIN
            RAISE EXCEPTION 'stream_events is append-only';
        END $$ LANGUAGE plpgsql;
        CREATE TRIGGER stream_events_append_only BEFORE UPDATE OR DELETE ON stream_events
            FOR EACH ROW EXECUTE FUNCTION stream_events_append_only();
        """
    )


def downgrade() -> None:
    op.execute("DROP TRIGGER stream_events_append_only ON stream_events")
    op.execute("DROP FUNCTION stream_events_append_only()")
    op.drop_index(op.f("ix_stream_events_tenant_id"), table_name="stream_events")
    op.drop_table("stream_events")

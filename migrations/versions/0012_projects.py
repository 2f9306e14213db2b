"""Projects and their git remotes (the clone source and push targets of workflow runs), and
the ``push`` policy decision kind (protected-branch pushes).

Revision ID: 0012
Revises: 0011
Create Date: 2026-12-03 17:30:00.000000
"""

from __future__ import annotations

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op
from sqlalchemy.dialects import postgresql

revision: str = "0012"
down_revision: str | None = "0011"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

KINDS_OLD = "'placement', 'admission', 'evaluation_host', 'preemption'"
KINDS_NEW = KINDS_OLD + ", 'push'"


def upgrade() -> None:
    op.create_table(
        "projects",
        sa.Column("id", sa.Uuid(), nullable=False),
        sa.Column("tenant", sa.String(length=100), nullable=False),
        sa.Column("name", sa.String(length=100), nullable=False),
        sa.Column("repository_url", sa.Text(), nullable=False),
        sa.Column("default_branch", sa.String(length=255), nullable=False),
        sa.Column(
            "created_at",
            sa.DateTime(timezone=True),
            server_default=sa.text("now()"),
            nullable=False,
        ),
        sa.Column("created_by", sa.String(length=200), nullable=True),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_projects")),
        sa.UniqueConstraint("tenant", "name", name=op.f("uq_projects_tenant_name")),
    )
    op.create_table(
        "project_remotes",
        sa.Column("id", sa.Uuid(), nullable=False),
        sa.Column("project_id", sa.Uuid(), nullable=False),
        sa.Column("name", sa.String(length=100), nullable=False),
        sa.Column("url", sa.Text(), nullable=False),
        sa.Column("credential_ref", sa.String(length=100), nullable=True),
        sa.Column("protected_branches", postgresql.JSONB(astext_type=sa.Text()), nullable=False),
        sa.Column("last_checked_at", sa.DateTime(timezone=True), nullable=True),
        sa.Column("last_check_ok", sa.Boolean(), nullable=True),
        sa.Column("last_check_latency_ms", sa.Float(), nullable=True),
        sa.Column("last_check_error", sa.Text(), nullable=True),
        sa.ForeignKeyConstraint(
            ["project_id"],
            ["projects.id"],
            name=op.f("fk_project_remotes_project_id_projects"),
            ondelete="CASCADE",
        ),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_project_remotes")),
        sa.UniqueConstraint("project_id", "name", name=op.f("uq_project_remotes_project_id_name")),
    )
    op.drop_constraint(op.f("ck_policy_decisions_kind"), "policy_decisions", type_="check")
    op.create_check_constraint("kind", "policy_decisions", f"kind IN ({KINDS_NEW})")


def downgrade() -> None:
    op.execute("DELETE FROM policy_decisions WHERE kind = 'push'")
    op.drop_constraint(op.f("ck_policy_decisions_kind"), "policy_decisions", type_="check")
    op.create_check_constraint("kind", "policy_decisions", f"kind IN ({KINDS_OLD})")
    op.drop_table("project_remotes")
    op.drop_table("projects")

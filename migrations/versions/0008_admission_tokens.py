"""Admission approval tokens as rows: issued, used once, revocable.

Revision ID: 0008
Revises: 0007
Create Date: 2026-12-03 14:15:00.000000
"""

from __future__ import annotations

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0008"
down_revision: str | None = "0007"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    op.create_table(
        "admission_tokens",
        sa.Column("id", sa.String(length=64), nullable=False),
        sa.Column("asset_id", sa.Uuid(), nullable=False),
        sa.Column("tenant", sa.String(length=100), nullable=False),
        sa.Column("task_pattern", sa.String(length=200), nullable=False),
        sa.Column("approver", sa.String(length=200), nullable=False),
        sa.Column("issued_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("expires_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("used_at", sa.DateTime(timezone=True), nullable=True),
        sa.Column("used_by_job_id", sa.Uuid(), nullable=True),
        sa.Column("revoked_at", sa.DateTime(timezone=True), nullable=True),
        sa.Column("revoked_by", sa.String(length=200), nullable=True),
        sa.ForeignKeyConstraint(
            ["asset_id"],
            ["trust_assets.id"],
            name=op.f("fk_admission_tokens_asset_id_trust_assets"),
            ondelete="CASCADE",
        ),
        sa.ForeignKeyConstraint(
            ["used_by_job_id"],
            ["jobs.id"],
            name=op.f("fk_admission_tokens_used_by_job_id_jobs"),
            ondelete="SET NULL",
        ),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_admission_tokens")),
    )
    op.create_index(
        op.f("ix_admission_tokens_tenant_issued_at"),
        "admission_tokens",
        ["tenant", "issued_at"],
    )
    op.create_index(
        op.f("ix_admission_tokens_used_by_job_id"), "admission_tokens", ["used_by_job_id"]
    )


def downgrade() -> None:
    op.drop_index(op.f("ix_admission_tokens_used_by_job_id"), table_name="admission_tokens")
    op.drop_index(op.f("ix_admission_tokens_tenant_issued_at"), table_name="admission_tokens")
    op.drop_table("admission_tokens")

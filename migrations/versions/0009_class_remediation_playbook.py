"""An asset class may name the playbook that remediates its quarantined assets by itself.

Revision ID: 0009
Revises: 0008
Create Date: 2026-12-03 14:20:00.000000
"""

from __future__ import annotations

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0009"
down_revision: str | None = "0008"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    op.add_column(
        "trust_asset_classes",
        sa.Column("remediation_playbook", sa.String(length=100), nullable=True),
    )


def downgrade() -> None:
    op.drop_column("trust_asset_classes", "remediation_playbook")

"""Dead letters of messages the fleet could not run: the raw body and the id they carried.

Revision ID: 0007
Revises: 0006
Create Date: 2026-12-03 09:50:00.000000
"""

from __future__ import annotations

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0007"
down_revision: str | None = "0006"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    op.add_column("dead_letters", sa.Column("raw_body", sa.Text(), nullable=True))
    op.add_column("dead_letters", sa.Column("message_id", sa.String(length=200), nullable=True))


def downgrade() -> None:
    op.drop_column("dead_letters", "message_id")
    op.drop_column("dead_letters", "raw_body")

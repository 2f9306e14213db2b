"""Workflow runs on a project's code: the run's project, revision, branch and commits; each
step's commit, pushes, runner and heartbeat; each step's provenance log and the run's signed
provenance (a DSSE envelope).

Revision ID: 0014
Revises: 0013
Create Date: 2026-12-03 19:20:00.000000
"""

from __future__ import annotations

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op
from sqlalchemy.dialects import postgresql

revision: str = "0014"
down_revision: str | None = "0013"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

RUN_COLUMNS = (
    ("project", sa.String(length=100)),
    ("revision", sa.String(length=255)),
    ("branch", sa.String(length=255)),
    ("base_commit", sa.String(length=64)),
    ("head_commit", sa.String(length=64)),
    ("push_decision_id", sa.Integer()),
    ("provenance", postgresql.JSONB(astext_type=sa.Text())),
)
STEP_COLUMNS = (
    ("commit_sha", sa.String(length=64)),
    ("pushes", postgresql.JSONB(astext_type=sa.Text())),
    ("runner", sa.String(length=200)),
    ("heartbeat_at", sa.DateTime(timezone=True)),
    ("provenance", postgresql.JSONB(astext_type=sa.Text())),
)


def upgrade() -> None:
    for name, column_type in RUN_COLUMNS:
        op.add_column("workflow_runs", sa.Column(name, column_type, nullable=True))
    for name, column_type in STEP_COLUMNS:
        op.add_column("workflow_steps", sa.Column(name, column_type, nullable=True))


def downgrade() -> None:
    for name, _ in reversed(STEP_COLUMNS):
        op.drop_column("workflow_steps", name)
    for name, _ in reversed(RUN_COLUMNS):
        op.drop_column("workflow_runs", name)

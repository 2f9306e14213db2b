"""trust registry: asset classes, assets (optimistic lock), append-only transitions, verdicts

Revision ID: 0004
Revises: 0003
Create Date: 2026-11-21 08:50:33.747475
"""

from __future__ import annotations

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op
from sqlalchemy.dialects import postgresql

revision: str = "0004"
down_revision: str | None = "0003"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


APPEND_ONLY_FUNCTION = """
CREATE FUNCTION trust_transitions_append_only() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    RAISE EXCEPTION 'trust_transitions is append-only: % refused', TG_OP
        USING ERRCODE = 'insufficient_privilege';
END
$$
"""
APPEND_ONLY_TRIGGER = """
CREATE TRIGGER trust_transitions_append_only
BEFORE UPDATE OR DELETE ON trust_transitions
FOR EACH ROW EXECUTE FUNCTION trust_transitions_append_only()
"""


def upgrade() -> None:
    op.create_table(
        "trust_asset_classes",
        sa.Column("name", sa.String(length=100), nullable=False),
        sa.Column("evidence_ttl_seconds", sa.Integer(), nullable=False),
        sa.Column("tpm_pcrs", postgresql.JSONB(astext_type=sa.Text()), nullable=False),
        sa.Column("snp_measurements", postgresql.JSONB(astext_type=sa.Text()), nullable=False),
        sa.Column("snp_min_tcb", postgresql.JSONB(astext_type=sa.Text()), nullable=True),
        sa.Column("tdx_mr_td", postgresql.JSONB(astext_type=sa.Text()), nullable=False),
        sa.Column("tdx_rtmrs", postgresql.JSONB(astext_type=sa.Text()), nullable=False),
        sa.Column(
            "tdx_accepted_tcb_statuses", postgresql.JSONB(astext_type=sa.Text()), nullable=False
        ),
        sa.Column("allow_debug", sa.Boolean(), nullable=False),
        sa.Column("accelerator_min_driver", sa.String(length=50), nullable=True),
        sa.Column("accelerator_require_cc", sa.Boolean(), nullable=False),
        sa.Column("accelerator_require_ecc", sa.Boolean(), nullable=False),
        sa.Column(
            "updated_at",
            sa.DateTime(timezone=True),
            server_default=sa.text("now()"),
            nullable=False,
        ),
        sa.Column("updated_by", sa.String(length=200), nullable=True),
        sa.CheckConstraint(
            "evidence_ttl_seconds > 0", name=op.f("ck_trust_asset_classes_evidence_ttl_seconds")
        ),
        sa.PrimaryKeyConstraint("name", name=op.f("pk_trust_asset_classes")),
    )
    op.create_table(
        "trust_assets",
        sa.Column("id", sa.Uuid(), nullable=False),
        sa.Column("tenant", sa.String(length=100), nullable=False),
        sa.Column("name", sa.String(length=200), nullable=False),
        sa.Column("kind", sa.String(length=20), nullable=False),
        sa.Column("asset_class", sa.String(length=100), nullable=True),
        sa.Column("state", sa.String(length=30), nullable=False),
        sa.Column("version", sa.Integer(), nullable=False),
        sa.Column("attestation_key", sa.LargeBinary(), nullable=True),
        sa.Column("tpm_reset_count", sa.BigInteger(), nullable=True),
        sa.Column("tpm_restart_count", sa.BigInteger(), nullable=True),
        sa.Column("tpm_clock", sa.BigInteger(), nullable=True),
        sa.Column("last_verified_at", sa.DateTime(timezone=True), nullable=True),
        sa.Column("evidence_expires_at", sa.DateTime(timezone=True), nullable=True),
        sa.Column("posture", postgresql.JSONB(astext_type=sa.Text()), nullable=True),
        sa.Column("libvirt_uuid", sa.Uuid(), nullable=True),
        sa.Column("libvirt_state", sa.String(length=30), nullable=True),
        sa.Column("inventory_seen_at", sa.DateTime(timezone=True), nullable=True),
        sa.Column("inventory_missing_since", sa.DateTime(timezone=True), nullable=True),
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
            "kind IN ('vm', 'host', 'accelerator')", name=op.f("ck_trust_assets_kind")
        ),
        sa.CheckConstraint(
            "state IN ('unknown', 'pending_attestation', 'trusted', 'stale', "
            "'quarantined', 'remediating')",
            name=op.f("ck_trust_assets_state"),
        ),
        sa.ForeignKeyConstraint(
            ["asset_class"],
            ["trust_asset_classes.name"],
            name=op.f("fk_trust_assets_asset_class_trust_asset_classes"),
            ondelete="RESTRICT",
        ),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_trust_assets")),
        sa.UniqueConstraint("libvirt_uuid", name=op.f("uq_trust_assets_libvirt_uuid")),
        sa.UniqueConstraint("tenant", "name", name=op.f("uq_trust_assets_tenant_name")),
    )
    op.create_index(
        "ix_trust_assets_trusted_expiry",
        "trust_assets",
        ["evidence_expires_at"],
        unique=False,
        postgresql_where=sa.text("state = 'trusted'"),
    )
    op.create_table(
        "attestation_verdicts",
        sa.Column("id", sa.BigInteger(), autoincrement=True, nullable=False),
        sa.Column("asset_id", sa.Uuid(), nullable=False),
        sa.Column("job_id", sa.Uuid(), nullable=True),
        sa.Column("kind", sa.String(length=30), nullable=False),
        sa.Column("verified", sa.Boolean(), nullable=False),
        sa.Column("summary", sa.Text(), nullable=False),
        sa.Column("checks", postgresql.JSONB(astext_type=sa.Text()), nullable=False),
        sa.Column("claims", postgresql.JSONB(astext_type=sa.Text()), nullable=False),
        sa.Column("nonce", sa.String(length=200), nullable=True),
        sa.Column("judged_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column(
            "created_at",
            sa.DateTime(timezone=True),
            server_default=sa.text("now()"),
            nullable=False,
        ),
        sa.ForeignKeyConstraint(
            ["asset_id"],
            ["trust_assets.id"],
            name=op.f("fk_attestation_verdicts_asset_id_trust_assets"),
            ondelete="RESTRICT",
        ),
        sa.ForeignKeyConstraint(
            ["job_id"],
            ["jobs.id"],
            name=op.f("fk_attestation_verdicts_job_id_jobs"),
            ondelete="SET NULL",
        ),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_attestation_verdicts")),
        sa.UniqueConstraint("job_id", name=op.f("uq_attestation_verdicts_job_id")),
    )
    op.create_index(
        op.f("ix_attestation_verdicts_asset_id_created_at"),
        "attestation_verdicts",
        ["asset_id", "created_at"],
        unique=False,
    )
    op.create_table(
        "trust_transitions",
        sa.Column("id", sa.BigInteger(), autoincrement=True, nullable=False),
        sa.Column("asset_id", sa.Uuid(), nullable=False),
        sa.Column("seq", sa.Integer(), nullable=False),
        sa.Column("tenant", sa.String(length=100), nullable=False),
        sa.Column("from_state", sa.String(length=30), nullable=True),
        sa.Column("to_state", sa.String(length=30), nullable=False),
        sa.Column("cause", sa.String(length=50), nullable=False),
        sa.Column("detail", sa.Text(), nullable=False),
        sa.Column("evidence", postgresql.JSONB(astext_type=sa.Text()), nullable=False),
        sa.Column("actor", sa.String(length=200), nullable=False),
        sa.Column("job_id", sa.Uuid(), nullable=True),
        sa.Column(
            "created_at",
            sa.DateTime(timezone=True),
            server_default=sa.text("now()"),
            nullable=False,
        ),
        sa.CheckConstraint(
            "to_state IN ('unknown', 'pending_attestation', 'trusted', 'stale', "
            "'quarantined', 'remediating')",
            name=op.f("ck_trust_transitions_to_state"),
        ),
        sa.ForeignKeyConstraint(
            ["asset_id"],
            ["trust_assets.id"],
            name=op.f("fk_trust_transitions_asset_id_trust_assets"),
            ondelete="RESTRICT",
        ),
        sa.ForeignKeyConstraint(
            ["job_id"],
            ["jobs.id"],
            name=op.f("fk_trust_transitions_job_id_jobs"),
            ondelete="SET NULL",
        ),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_trust_transitions")),
        sa.UniqueConstraint("asset_id", "seq", name=op.f("uq_trust_transitions_asset_id_seq")),
    )
    op.create_index(
        op.f("ix_trust_transitions_tenant_created_at"),
        "trust_transitions",
        ["tenant", "created_at"],
        unique=False,
    )
    # History is evidence: once written, a transition is never changed or removed.
    op.execute(APPEND_ONLY_FUNCTION)
    op.execute(APPEND_ONLY_TRIGGER)


def downgrade() -> None:
    op.execute("DROP TRIGGER IF EXISTS trust_transitions_append_only ON trust_transitions")
    op.execute("DROP FUNCTION IF EXISTS trust_transitions_append_only()")
    op.drop_index(op.f("ix_trust_transitions_tenant_created_at"), table_name="trust_transitions")
    op.drop_table("trust_transitions")
    op.drop_index(
        op.f("ix_attestation_verdicts_asset_id_created_at"), table_name="attestation_verdicts"
    )
    op.drop_table("attestation_verdicts")
    op.drop_index(
        "ix_trust_assets_trusted_expiry",
        table_name="trust_assets",
        postgresql_where=sa.text("state = 'trusted'"),
    )
    op.drop_table("trust_assets")
    op.drop_table("trust_asset_classes")

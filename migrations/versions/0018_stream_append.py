"""The stream's commit-time append in one round trip: ``drydock_stream_append`` sends the
notices staged beside the events, takes the append lock, inserts the events in their staged
order and announces the newest id on ``drydock_stream`` (``models.stream``).

Revision ID: 0018
Revises: 0017
Create Date: 2026-12-05 22:40:00.000000
"""

from __future__ import annotations

from collections.abc import Sequence

from alembic import op

revision: str = "0018"
down_revision: str | None = "0017"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

# The stream's append lock: "Drydock" + 1, a key no other advisory lock of Drydock's uses.
APPEND_LOCK = 0x44_72_79_64_6F_63_6B_01


def upgrade() -> None:
    op.execute(
        f"""
        CREATE FUNCTION drydock_stream_append(events jsonb, notices jsonb) RETURNS bigint
        LANGUAGE plpgsql AS $$
        DECLARE
            newest bigint;
        BEGIN
            -- notices: [[channel, payload], ...]; delivered on commit, like any NOTIFY.
            PERFORM pg_notify(notice->>0, notice->>1) FROM jsonb_array_elements(notices) AS notice;
            IF jsonb_array_length(events) = 0 THEN
                RETURN NULL;
            END IF;
            -- Taken before the first id is: see models.stream for why readers need it.
            PERFORM pg_advisory_xact_lock({APPEND_LOCK});
            WITH appended AS (
                INSERT INTO stream_events (kind, tenant, data)
                SELECT event->>'kind', event->>'tenant', event->'data'
                  FROM jsonb_array_elements(events) WITH ORDINALITY AS staged(event, n)
                 ORDER BY n
                RETURNING id
            )
            SELECT max(id) INTO newest FROM appended;
            PERFORM pg_notify('drydock_stream', newest::text);
            RETURN newest;
        END
        $$
        """
    )


def downgrade() -> None:
    op.execute("DROP FUNCTION drydock_stream_append(jsonb, jsonb)")

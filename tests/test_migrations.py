"""The migration chain builds exactly the schema the models declare, and unwinds cleanly."""

from __future__ import annotations

import os

from alembic.autogenerate import compare_metadata
from alembic.migration import MigrationContext
from sqlalchemy import create_engine, inspect, pool, text

from models.base import Base
from models.migrate import current_revision, downgrade, head_revision, upgrade


def _scratch_url(server_url: str, name: str) -> str:
    admin = create_engine(server_url.rsplit("/", 1)[0] + "/postgres", isolation_level="AUTOCOMMIT")
    with admin.connect() as conn:
        conn.execute(text(f"DROP DATABASE IF EXISTS {name}"))
        conn.execute(text(f"CREATE DATABASE {name}"))
    admin.dispose()
    return server_url.rsplit("/", 1)[0] + f"/{name}"


def test_upgrade_matches_models_and_downgrade_removes_everything(postgres_server: str) -> None:
    url = _scratch_url(os.environ["DRYDOCK_DATABASE_URL"], "drydock_migrations")
    upgrade("head", url=url)
    assert current_revision(url) == head_revision()

    engine = create_engine(url, poolclass=pool.NullPool)
    with engine.connect() as conn:
        diff = compare_metadata(
            MigrationContext.configure(conn, opts={"compare_type": True}), Base.metadata
        )
    assert diff == [], f"migrations and models disagree: {diff}"

    downgrade("base", url=url)
    assert current_revision(url) is None
    assert set(inspect(engine).get_table_names()) <= {"alembic_version"}

    upgrade("head", url=url)
    assert {"jobs", "job_events", "dead_letters"} <= set(inspect(engine).get_table_names())
    engine.dispose()

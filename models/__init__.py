"""The outcome store: per domain, its tables beside the queries that read and write them.

Importing any part imports them all: tables refer to each other's by foreign key, which
SQLAlchemy resolves only among the tables registered on ``models.base.Base.metadata``, and
Alembic compares the whole schema.
"""

from models import (  # noqa: F401
    admission_tokens,
    anomaly,
    builds,
    credentials,
    evaluation,
    jobs,
    policy,
    projects,
    remediation,
    remediation_workspaces,
    runtime,
    runtime_releases,
    stream,
    tokens,
    trust,
    workflow_events,
    workflow_runs,
    workflows,
)

"""Payloads of the workflows queue's tasks."""

from __future__ import annotations

import uuid

from pydantic import Field

from catalog.remediation import APPROVAL_TOKEN_PATTERN
from kernel.payload import Payload

# Step names as workflow definitions allow them (tasks.workflows.definitions).
STEP_NAME_PATTERN = r"^[a-z0-9][a-z0-9_-]{0,62}$"
WORKFLOW_NAME_PATTERN = r"^[a-z0-9][a-z0-9_.-]{0,99}$"
PROJECT_NAME_PATTERN = r"^[a-z0-9][a-z0-9_.-]{0,99}$"
# A step's retries (0 to 10) plus room for deliveries lost with their workers.
MAX_STEP_DELIVERIES = 21


class StartRunPayload(Payload):
    tenant: str = Field(min_length=1, max_length=100, description="The workflow's tenant.")
    workflow: str = Field(pattern=WORKFLOW_NAME_PATTERN, description="The workflow's name.")
    version: int | None = Field(
        None, ge=1, le=2**31 - 1, description="Its version; none: the newest."
    )
    reason: str = Field("", max_length=2000, description="Why: kept with the run.")
    project: str | None = Field(
        None,
        pattern=PROJECT_NAME_PATTERN,
        description=(
            "The tenant's project whose code the run works on: its container and agent steps "
            "get a workspace cloned from the project's repository, and every step's commit is "
            "pushed to each of its remotes. Needed by a workflow with such steps."
        ),
    )
    revision: str | None = Field(
        None,
        max_length=255,
        description="Branch, tag or commit the workspace starts from; none: the default branch.",
    )
    branch: str | None = Field(
        None,
        max_length=255,
        description="The branch the run commits and pushes to; none: drydock/runs/<run id>.",
    )
    approval_token: str | None = Field(
        None,
        max_length=4096,
        pattern=APPROVAL_TOKEN_PATTERN,
        description=(
            "An admission approval token for git.push:<project>/<remote>/<branch>, needed when "
            "the branch is protected on a remote (`drydock admission approve`)."
        ),
    )


class SweepWorkflowRunsPayload(Payload):
    limit: int = Field(500, ge=1, le=10_000, description="Runs moved on per sweep, at most.")


class RunStepPayload(Payload):
    run_id: uuid.UUID = Field(description="The workflow run.")
    step: str = Field(pattern=STEP_NAME_PATTERN, description="The step of the run to execute.")
    deliveries: int = Field(
        1,
        ge=1,
        le=MAX_STEP_DELIVERIES,
        description="Deliveries this job may take: the step's retries plus worker losses.",
    )

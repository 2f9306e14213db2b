"""Payloads of the remediation queue's tasks."""

from __future__ import annotations

import uuid

from pydantic import Field

from kernel.payload import Payload

# A JWT: three base64url parts. Checked for shape here (at enqueue and at the task); its
# signature, run and expiry are judged by the task, which audits every refusal.
APPROVAL_TOKEN_PATTERN = r"^[A-Za-z0-9_-]+\.[A-Za-z0-9_-]+\.[A-Za-z0-9_-]*$"


class RunPlaybookPayload(Payload):
    run_id: uuid.UUID = Field(description="The remediation run to execute.")
    tenant: str = Field(
        min_length=1, max_length=100, description="The run's tenant; another tenant's is refused."
    )
    approval_token: str | None = Field(
        None,
        max_length=4096,
        pattern=APPROVAL_TOKEN_PATTERN,
        description=(
            "The signed approval token `drydock remediation approve` (or the API) issued for "
            "this run; required when the run needs approval."
        ),
    )


class SweepRunsPayload(Payload):
    limit: int = Field(500, ge=1, le=10_000, description="Most runs handled in one sweep.")


class SimulateWorkspacePayload(Payload):
    workspace_id: uuid.UUID = Field(description="The workspace whose draft to simulate.")
    tenant: str = Field(
        min_length=1, max_length=100, description="The workspace's tenant; another's is refused."
    )
    simulation: int = Field(
        ge=1,
        le=1_000_000,
        description="The simulation this job runs: a job of an older one does nothing.",
    )


class RefreshWorkspaceRunsPayload(Payload):
    workspace_id: uuid.UUID = Field(description="The promoted workspace whose runs to refresh.")
    tenant: str = Field(
        min_length=1, max_length=100, description="The workspace's tenant; another's is refused."
    )

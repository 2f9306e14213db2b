"""What the response bodies share: they are read from the rows (and the store's records) by
pydantic, never copied field by field.

A body declares ``from_attributes`` (``RowBody``) and is made with ``Body.model_validate(row)``.
What a body shows beyond a row's own columns (a URL, a renamed column, related rows) is given
with ``RowView``: the row, with those few attributes added or replaced.
"""

from __future__ import annotations

import uuid
from datetime import UTC, datetime
from typing import Annotated, Any

from fastapi import Response
from pydantic import AfterValidator, BaseModel, ConfigDict, Field

from dispatch.enqueue import EnqueuedJob


class RowBody(BaseModel):
    """A response body read from the attributes of a row (or any record object)."""

    model_config = ConfigDict(from_attributes=True)


class RowView:
    """``row`` read with ``extra`` attributes added, or in place of its own."""

    def __init__(self, row: object, /, **extra: Any) -> None:
        self.__dict__.update(extra)
        self._row = row

    def __getattr__(self, name: str) -> Any:
        # Only for what ``extra`` did not give: the row's own attribute.
        return getattr(self._row, name)


def _in_utc(moment: datetime) -> datetime:
    return moment.astimezone(UTC)


# A moment shown in UTC ("...Z"), whatever time zone the database session returned it in.
UTCDateTime = Annotated[datetime, AfterValidator(_in_utc)]


class EnqueuedJobBody(RowBody):
    id: uuid.UUID
    task_name: str
    queue: str
    status: str
    created: bool = Field(
        description="False when the Idempotency-Key was already used: this is the first job, "
        "and nothing new was sent."
    )
    url: str


def enqueued_body(job: EnqueuedJob, response: Response) -> EnqueuedJobBody:
    """The job as enqueued (or found by its Idempotency-Key), its URL also in ``Location``."""
    url = f"/v1/jobs/{job.id}"
    response.headers["Location"] = url
    return EnqueuedJobBody.model_validate(RowView(job, url=url))

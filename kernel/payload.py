"""The base of every task payload model."""

from __future__ import annotations

from pydantic import BaseModel, ConfigDict


class Payload(BaseModel):
    # extra="forbid": a typo in a field name is an error, not a silently ignored option.
    model_config = ConfigDict(extra="forbid", frozen=True, str_strip_whitespace=False)

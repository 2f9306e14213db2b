"""A playbook as a tenant defines it: validated here, by the executor's own spec model, before
it is stored, so a run never meets a spec it cannot read."""

from __future__ import annotations

from typing import Annotated, Any

from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator, model_validator

from kernel.errors import field_problems, list_problems
from kernel.settings import get_settings
from models.trust import AssetKind
from tasks.remediation.executors import spec_model_for
from tasks.remediation.executors.base import ExecutorKind, ExecutorSpec

NAME_PATTERN = r"[a-z0-9][a-z0-9_.-]{0,99}"


def max_timeout_seconds() -> int:
    """The longest a playbook may run: under the remediation queue's soft time limit, with
    room left to record the outcome before Celery stops the task."""
    return get_settings().work_budget_seconds("remediation")


class PlaybookDefinition(BaseModel):
    """What `drydock playbooks create` reads (YAML or JSON) and the API accepts."""

    model_config = ConfigDict(extra="forbid")

    name: Annotated[str, Field(pattern=f"^{NAME_PATTERN}$")] = Field(
        description="Lower-case letters, digits, '_', '.', '-'; versions share a name."
    )
    executor: ExecutorKind = Field(
        description="shell, container, ansible, libvirt or kubernetes: how the playbook acts."
    )
    spec: dict[str, Any] = Field(description="The executor's spec; see the README.")
    timeout_seconds: int = Field(
        ge=1, description="Longest the whole playbook may run before it is stopped and failed."
    )
    requires_approval: bool = Field(
        False, description="Every run needs an approval, whatever the asset and tenant."
    )
    asset_kinds: list[AssetKind] = Field(
        default_factory=lambda: list(AssetKind),
        min_length=1,
        description="Kinds of asset it may run against (vm, host, accelerator).",
    )
    description: str = Field("", max_length=2000)

    @field_validator("asset_kinds")
    @classmethod
    def _distinct(cls, kinds: list[AssetKind]) -> list[AssetKind]:
        return list(dict.fromkeys(kinds))

    @field_validator("timeout_seconds")
    @classmethod
    def _fits_queue(cls, value: int) -> int:
        longest = max_timeout_seconds()
        if value > longest:
            raise ValueError(
                f"at most {longest}s: the remediation queue's time limit "
                "(DRYDOCK_TIME_LIMITS) must leave room to record the outcome"
            )
        return value

    @model_validator(mode="after")
    def _spec_valid(self) -> PlaybookDefinition:
        self.parsed_spec()
        return self

    def parsed_spec(self) -> ExecutorSpec:
        return parse_spec(self.executor, self.spec)


class PlaybookSpecError(ValueError):
    pass


def parse_spec(kind: ExecutorKind, spec: dict[str, Any]) -> ExecutorSpec:
    """The spec as its executor's model, or ValueError naming every problem by path."""
    try:
        return spec_model_for(kind).model_validate(spec)
    except ValidationError as exc:
        problems = list_problems(field_problems(exc, whole="(spec)", prefix="spec."))
        raise PlaybookSpecError(f"invalid {kind.value} spec: {problems}") from None

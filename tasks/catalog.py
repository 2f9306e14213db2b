"""Every task Drydock runs, by name, with its payload model.

Producers validate against this catalog without importing any task code; workers refuse to
register a task that is not listed here, so the published schemas are always the ones enforced.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from tasks.canary.payloads import CanaryPayload
from workers.errors import UnknownTaskError
from workers.payload import Payload
from workers.queues import WORK_QUEUES, queue_for_task


@dataclass(frozen=True)
class TaskSpec:
    name: str
    payload: type[Payload]
    summary: str

    @property
    def queue(self) -> str:
        return queue_for_task(self.name)

    def json_schema(self) -> dict[str, Any]:
        schema = self.payload.model_json_schema()
        schema["title"] = self.name
        schema["description"] = self.summary
        return schema


def _specs() -> list[TaskSpec]:
    specs = [
        TaskSpec(
            name=f"{queue}.canary",
            payload=CanaryPayload,
            summary=f"Proves the {queue} queue is served end to end; can rehearse failures.",
        )
        for queue in WORK_QUEUES
    ]
    return specs


CATALOG: dict[str, TaskSpec] = {spec.name: spec for spec in _specs()}


def spec_for(task_name: str) -> TaskSpec:
    try:
        return CATALOG[task_name]
    except KeyError:
        raise UnknownTaskError(task_name, list(CATALOG)) from None

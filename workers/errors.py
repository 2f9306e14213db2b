"""Errors a producer, an operator or a task can meet. Each says what went wrong in one line."""

from __future__ import annotations

from dataclasses import dataclass

from pydantic import ValidationError


class DrydockError(Exception):
    """Base of every error Drydock raises on purpose."""


class UnknownTaskError(DrydockError):
    def __init__(self, task_name: str, known: list[str]) -> None:
        super().__init__(f"unknown task {task_name!r}; known tasks: {', '.join(sorted(known))}")
        self.task_name = task_name


@dataclass(frozen=True)
class FieldProblem:
    field: str
    problem: str

    def as_dict(self) -> dict[str, str]:
        return {"field": self.field, "problem": self.problem}


class PayloadInvalidError(DrydockError):
    """A payload its task's model refuses. Never retried: the same input fails the same way."""

    def __init__(self, task_name: str, problems: list[FieldProblem]) -> None:
        listed = "; ".join(f"{p.field}: {p.problem}" for p in problems)
        super().__init__(f"invalid payload for {task_name}: {listed}")
        self.task_name = task_name
        self.problems = problems

    @classmethod
    def from_validation(cls, task_name: str, exc: ValidationError) -> PayloadInvalidError:
        # include_input=False: the offending value may be a secret, and must not be echoed.
        problems = [
            FieldProblem(
                field=".".join(str(part) for part in err["loc"]) or "(payload)",
                problem=err["msg"],
            )
            for err in exc.errors(include_input=False, include_url=False)
        ]
        return cls(task_name, problems)


class BrokerUnavailableError(DrydockError):
    """The job could not be handed to Redis; it was not recorded, so it can be sent again."""


class TransientError(DrydockError):
    """Base for errors that may succeed on a later attempt. Tasks declare which ones they retry."""


class NotFoundError(DrydockError):
    pass


class ReplayRefusedError(DrydockError):
    pass


class DeadLetteredError(DrydockError):
    """Raised from a task after its job was dead-lettered, so Celery and Flower show a failure
    whose message is already redacted."""

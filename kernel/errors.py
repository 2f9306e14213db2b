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


def field_problems(
    exc: ValidationError, *, whole: str = "(payload)", prefix: str = ""
) -> list[FieldProblem]:
    """Each problem pydantic found, by its dotted path (``whole`` for the value itself)."""
    # include_input=False: the offending value may be a secret, and must not be echoed.
    return [
        FieldProblem(
            field=prefix + (".".join(str(part) for part in err["loc"]) or whole),
            problem=err["msg"],
        )
        for err in exc.errors(include_input=False, include_url=False)
    ]


def list_problems(problems: list[FieldProblem]) -> str:
    """``field: problem; field: problem``, as every error message shows them."""
    return "; ".join(f"{p.field}: {p.problem}" for p in problems)


class PayloadInvalidError(DrydockError):
    """A payload its task's model refuses. Never retried: the same input fails the same way."""

    def __init__(self, task_name: str, problems: list[FieldProblem]) -> None:
        super().__init__(f"invalid payload for {task_name}: {list_problems(problems)}")
        self.task_name = task_name
        self.problems = problems

    @classmethod
    def from_validation(cls, task_name: str, exc: ValidationError) -> PayloadInvalidError:
        return cls(task_name, field_problems(exc))


class PayloadTooLargeError(DrydockError):
    """A payload over ``DRYDOCK_MAX_PAYLOAD_BYTES`` (its JSON form). Never retried."""

    def __init__(self, task_name: str, size_bytes: int, limit_bytes: int) -> None:
        super().__init__(
            f"payload for {task_name} is {size_bytes} bytes as JSON, over the limit of "
            f"{limit_bytes} bytes (DRYDOCK_MAX_PAYLOAD_BYTES); pass large data by reference "
            "(a URL, a repository, a registry) instead"
        )
        self.task_name = task_name
        self.size_bytes = size_bytes
        self.limit_bytes = limit_bytes


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

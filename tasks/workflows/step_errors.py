"""How a workflow step's attempt ends when it does not succeed; the runner and each kind's
executor share them."""

from __future__ import annotations

from kernel.errors import DrydockError, TransientError


class StepAttemptFailedError(TransientError):
    """One attempt of a step failed. Tried again while the step's retries last, unless
    ``final``: running it again cannot help (a refused credential, a missing image), so the step
    fails now."""

    def __init__(self, message: str, *, final: bool = False) -> None:
        super().__init__(message)
        self.final = final


class StepFailedError(DrydockError):
    """A step failed with its retries spent: the run fails; the step's job is dead-lettered."""


class StepStoppedError(Exception):
    """The run is stopping (cancelled, or another step failed): this step stops too."""

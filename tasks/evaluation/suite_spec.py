"""A tier's evaluation suite as written: its image, command, files (under ``/eval``), where
results land (``/results``), its environment and limits; checked whole at ``put_tier`` time,
every problem named by its path."""

from __future__ import annotations

import re
from collections.abc import Mapping
from typing import Annotated, Any, Literal

from pydantic import AfterValidator, BaseModel, ConfigDict, Field, ValidationError, field_validator

from kernel.errors import DrydockError, FieldProblem, field_problems, list_problems

EVAL_DIR = "/eval"

RESULTS_DIR = "/results"

# The suite's files are code a person wrote into a tier, not data.
MAX_FILES_BYTES = 256 * 1024

MAX_PATH_LENGTH = 1024

MAX_ARGS = 256

MAX_COMMAND_BYTES = 64 * 1024

_ENV_NAME = re.compile(r"[A-Za-z_][A-Za-z0-9_]*")

# Drydock sets these itself (the digest, the tier, the image); a suite may not pass off its own.
_RESERVED_ENV_PREFIX = "DRYDOCK_"


class SuiteSpecError(DrydockError):
    """A suite its model refuses; the message lists every problem by path."""

    def __init__(self, problems: list[FieldProblem]) -> None:
        super().__init__(f"invalid evaluation suite: {list_problems(problems)}")
        self.problems = problems


def _relative_path_problem(path: str) -> str | None:
    if not path:
        return "empty"
    if len(path) > MAX_PATH_LENGTH:
        return f"longer than {MAX_PATH_LENGTH} characters"
    if "\0" in path:
        return "contains a NUL character"
    if path.startswith("/"):
        return "must be relative (to /eval), not absolute"
    parts = path.split("/")
    if any(part in ("", ".", "..") for part in parts):
        return "must be a plain relative path: no '..', '.', empty parts or trailing '/'"
    return None


def _check_file_path(path: str) -> str:
    problem = _relative_path_problem(path)
    if problem is not None:
        raise ValueError(f"a file path {problem}")
    return path


FilePath = Annotated[str, AfterValidator(_check_file_path)]


class SuiteSpec(BaseModel):
    """What an evaluation tier runs in the image under test."""

    model_config = ConfigDict(extra="forbid")

    command: list[str] = Field(
        min_length=1,
        description=(
            "The argv run in the image under test, executed directly (no shell unless it names "
            "one); the first item is the program. Check scripts are under /eval."
        ),
    )
    files: dict[FilePath, str] = Field(
        default_factory=dict,
        description=(
            "Files placed under /eval before the suite starts: relative path -> text "
            f"(executable, owned by root); {MAX_FILES_BYTES // 1024} KiB in all at most."
        ),
    )
    results: Literal["jsonl", "junit"] = Field(
        "jsonl",
        description=(
            "How the suite reports its checks: `jsonl`, one JSON object per line of standard "
            'output ({"check": "tls", "status": "pass"}), or `junit`, a JUnit XML report at '
            "junit_path."
        ),
    )
    junit_path: str = Field(
        f"{RESULTS_DIR}/junit.xml",
        description=(
            f"Where a `junit` suite writes its report: an absolute path under {RESULTS_DIR} "
            "(writable by any user), read after the suite exits."
        ),
    )
    timeout_seconds: Annotated[int, Field(ge=1, le=3600)] = Field(
        description="Seconds the suite may run before it is killed (and the run timed out)."
    )
    memory_mb: Annotated[int, Field(ge=16, le=65536)] = Field(
        256, description="Memory limit of the suite's container in MiB (no swap beyond it)."
    )
    cpus: Annotated[float, Field(ge=0.1, le=64)] = Field(
        1.0, description="CPU limit of the suite's container, in CPUs (0.5 = half of one)."
    )
    pids_limit: Annotated[int, Field(ge=8, le=32768)] = Field(
        256, description="Most processes and threads the suite's container may have at once."
    )
    env: dict[str, str] = Field(
        default_factory=dict,
        description="Environment variables of the suite (not DRYDOCK_*, which Drydock sets).",
    )

    @field_validator("command")
    @classmethod
    def _check_command(cls, command: list[str]) -> list[str]:
        if not command[0]:
            raise ValueError("the command needs a program to run as its first item")
        if len(command) > MAX_ARGS:
            raise ValueError(f"at most {MAX_ARGS} arguments, not {len(command)}")
        if sum(len(arg.encode()) for arg in command) > MAX_COMMAND_BYTES:
            raise ValueError(f"the command is longer than {MAX_COMMAND_BYTES} bytes")
        if any("\0" in arg for arg in command):
            raise ValueError("an argument contains a NUL character")
        return command

    @field_validator("files")
    @classmethod
    def _check_files(cls, files: dict[str, str]) -> dict[str, str]:
        total = sum(len(path.encode()) + len(content.encode()) for path, content in files.items())
        if total > MAX_FILES_BYTES:
            raise ValueError(f"the files come to {total} bytes; at most {MAX_FILES_BYTES} in all")
        for path in files:
            parts = path.split("/")
            for end in range(1, len(parts)):
                parent = "/".join(parts[:end])
                if parent in files:
                    raise ValueError(f"{parent!r} is both a file and the directory of {path!r}")
        return files

    @field_validator("junit_path")
    @classmethod
    def _check_junit_path(cls, junit_path: str) -> str:
        prefix = RESULTS_DIR + "/"
        inside = junit_path[len(prefix) :] if junit_path.startswith(prefix) else None
        if inside is None or _relative_path_problem(inside) is not None:
            raise ValueError(
                f"the JUnit report's path is an absolute file path under {RESULTS_DIR}, "
                f"e.g. {RESULTS_DIR}/junit.xml, with no '..'"
            )
        return junit_path

    @field_validator("env")
    @classmethod
    def _check_env(cls, env: dict[str, str]) -> dict[str, str]:
        for name, value in env.items():
            if not _ENV_NAME.fullmatch(name):
                raise ValueError(
                    f"{name!r} is not an environment variable name (letters, digits and '_', "
                    "not starting with a digit)"
                )
            if name.upper().startswith(_RESERVED_ENV_PREFIX):
                raise ValueError(
                    f"{name!r} is reserved: Drydock sets the DRYDOCK_* variables a suite sees"
                )
            if "\0" in value:
                raise ValueError(f"the value of {name} contains a NUL character")
        return env


def parse_suite_spec(raw: Mapping[str, Any]) -> SuiteSpec:
    """The suite as a SuiteSpec, or SuiteSpecError naming every problem by its path."""
    try:
        return SuiteSpec.model_validate(dict(raw))
    except ValidationError as exc:
        raise SuiteSpecError(field_problems(exc, whole="(suite)")) from None

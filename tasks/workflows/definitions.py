"""A workflow definition as a tenant writes it (YAML or JSON): a DAG of named steps, each a
container, an agent or a Drydock job, validated whole before it is stored so that a run never
meets a definition it cannot read.

Every problem is named at its place (``steps.2.needs.0``), all at once: the graph (unique step
names, ``needs`` naming steps, no cycles) is checked on the document as given, beside the
steps' own checks, so a bad image in one step does not hide a cycle between others.

No secret is kept in a definition (it is stored and shown in clear): an environment value whose
name looks secret must be a reference (``{"secret": "<name>"}``) that the runner resolves, and a
job payload, a command or a prompt that carries a credential is refused.

Pure: no Celery, no database. The runner (a later slice) reads ``execution_order``.
"""

from __future__ import annotations

import json
import re
from collections.abc import Callable, Iterator, Mapping, Sequence
from typing import Annotated, Any, Literal

import jinja2
import jinja2.meta
import jinja2.sandbox
from pydantic import (
    BaseModel,
    ConfigDict,
    Field,
    StringConstraints,
    ValidationError,
    ValidationInfo,
    ValidatorFunctionWrapHandler,
    field_validator,
    model_validator,
)
from pydantic_core import InitErrorDetails, PydanticCustomError

from adapters.image_reference import ImageReference
from catalog import CATALOG
from kernel.redaction import is_secret_name, scrub_embedded
from kernel.settings import get_settings
from kernel.storable import NUL_PROBLEM, nul_problems

# A workflow's name: versions share it.
NAME_PATTERN = r"[a-z0-9][a-z0-9_.-]{0,99}"
# A step's name goes into commit messages, branch and file names and log lines of later runs:
# lower-case letters, digits, '-' and '_' only, starting with a letter or digit.
STEP_NAME_PATTERN = r"[a-z0-9][a-z0-9_-]{0,62}"
ENV_NAME_PATTERN = r"[A-Za-z_][A-Za-z0-9_]{0,127}"
SECRET_NAME_PATTERN = r"[A-Za-z0-9][A-Za-z0-9_.-]{0,99}"
PROVIDER_PATTERN = r"[a-z][a-z0-9_-]{0,39}"
TASK_PATTERN = r"[a-z][a-z0-9_]*\.[a-z0-9_]+"

MAX_STEPS = 200
MAX_COMMAND_ARGS = 256
MAX_ARG_LENGTH = 8192
MAX_ENV_ENTRIES = 100
MAX_ENV_VALUE_LENGTH = 8192
MAX_PROMPT_LENGTH = 65536
MAX_RETRIES = 10
# The longest one step may run. A constant, not a queue's setting: a stored definition must not
# turn invalid when an operator changes a time limit. One hour is the longest default task time
# limit (builds, remediation, evaluation), which keeps a step that runs as one task within the
# visibility-timeout rule (README, "Queues and timing") at the default settings.
MAX_STEP_TIMEOUT_SECONDS = 3600
DEFAULT_STEP_TIMEOUT_SECONDS = 600
# A workflow never starts workflows: a job step that did could recurse without end.
WORKFLOW_TASK_PREFIX = "workflows."
# What a prompt template may refer to; the runner provides these (a later slice). A name outside
# them would be undefined at run time, so it is refused now.
PROMPT_VARIABLES = frozenset({"workflow", "run", "step", "steps", "workspace"})
STEP_KINDS = ("container", "agent", "job")

StepName = Annotated[str, StringConstraints(pattern=f"^{STEP_NAME_PATTERN}$")]

_PROMPTS = jinja2.sandbox.SandboxedEnvironment(
    undefined=jinja2.StrictUndefined, autoescape=False, extensions=()
)


class WorkflowSecretRef(BaseModel):
    """A secret the runner resolves when the step starts; only its name is stored."""

    model_config = ConfigDict(extra="forbid")

    secret: Annotated[str, StringConstraints(pattern=f"^{SECRET_NAME_PATTERN}$")] = Field(
        description="The name of a secret of the workflow's tenant."
    )


EnvValue = Annotated[str, StringConstraints(max_length=MAX_ENV_VALUE_LENGTH)] | WorkflowSecretRef


class WorkflowStepBase(BaseModel):
    model_config = ConfigDict(extra="forbid")

    name: StepName = Field(
        description="Unique in the workflow; lower-case letters, digits, '-', '_' (1 to 63)."
    )
    needs: list[StepName] = Field(
        default_factory=list,
        max_length=MAX_STEPS,
        description="Steps that must succeed before this one starts.",
    )
    timeout_seconds: int = Field(
        DEFAULT_STEP_TIMEOUT_SECONDS,
        ge=1,
        le=MAX_STEP_TIMEOUT_SECONDS,
        description="Longest the step may run (each attempt) before it is stopped and failed.",
    )
    retries: int = Field(
        0, ge=0, le=MAX_RETRIES, description="Attempts after the first when the step fails."
    )
    description: str = Field("", max_length=2000)

    @field_validator("needs")
    @classmethod
    def _distinct_needs(cls, needs: list[str]) -> list[str]:
        return list(dict.fromkeys(needs))


class WorkflowContainerStep(WorkflowStepBase):
    """A command in a container of an image, the workflow's workspace mounted at /workspace."""

    kind: Literal["container"]
    image: str = Field(
        max_length=512,
        description="registry/repository:tag or registry/repository@sha256:… (a digest pins it).",
    )
    command: list[Annotated[str, StringConstraints(max_length=MAX_ARG_LENGTH)]] = Field(
        min_length=1,
        max_length=MAX_COMMAND_ARGS,
        description="The argv, run in /workspace (no shell unless it names one).",
    )
    env: dict[str, EnvValue] = Field(
        default_factory=dict,
        max_length=MAX_ENV_ENTRIES,
        description="Variables: a value, or {secret: name}; secret-looking names need the latter.",
    )
    network: bool = Field(
        False, description="Ask for network access (the runner's policy must allow it too)."
    )

    @field_validator("image")
    @classmethod
    def _image_parses(cls, image: str) -> str:
        reference = ImageReference.parse(image)
        if reference.tag is None and reference.digest is None:
            raise ValueError(
                f"image {image!r} names no tag or digest: add one (:1.2 or @sha256:…); "
                "Drydock never assumes latest"
            )
        return image

    @field_validator("command")
    @classmethod
    def _command_clear(cls, command: list[str]) -> list[str]:
        problems = [
            ((index,), "carries a credential: pass it in a secret reference env variable instead")
            for index, arg in enumerate(command)
            if scrub_embedded(arg) != arg
        ]
        _raise_problems(problems)
        return command

    @field_validator("env")
    @classmethod
    def _env_clear(
        cls, env: dict[str, str | WorkflowSecretRef]
    ) -> dict[str, str | WorkflowSecretRef]:
        problems = list(env_problems(env))
        _raise_problems(problems)
        return env


class WorkflowAgentStep(WorkflowStepBase):
    """A model of a provider given a prompt, rendered from a template, in the workspace."""

    kind: Literal["agent"]
    provider: Annotated[str, StringConstraints(pattern=f"^{PROVIDER_PATTERN}$")] = Field(
        description="The agent provider's name (lower-case letters, digits, '-', '_')."
    )
    model: Annotated[str, StringConstraints(min_length=1, max_length=200)] = Field(
        description="The provider's model name."
    )
    prompt: Annotated[str, StringConstraints(min_length=1, max_length=MAX_PROMPT_LENGTH)] = Field(
        description="A Jinja2 template (sandboxed) over " + ", ".join(sorted(PROMPT_VARIABLES))
    )

    @field_validator("model")
    @classmethod
    def _model_named(cls, model: str) -> str:
        if not model.strip():
            raise ValueError("name the provider's model")
        return model

    @field_validator("prompt")
    @classmethod
    def _prompt_parses(cls, prompt: str) -> str:
        problem = prompt_problem(prompt)
        if problem:
            raise ValueError(problem)
        return prompt


class WorkflowJobStep(WorkflowStepBase):
    """A Drydock task, enqueued as a child job of the run and awaited."""

    kind: Literal["job"]
    task: Annotated[str, StringConstraints(pattern=f"^{TASK_PATTERN}$", max_length=200)] = Field(
        description="A catalog task (drydock schema), not a workflow task."
    )
    payload: dict[str, Any] = Field(
        default_factory=dict,
        description="The task's payload, validated by its schema (payload.<task>) now.",
    )

    @field_validator("task")
    @classmethod
    def _task_known(cls, task: str) -> str:
        if task.startswith(WORKFLOW_TASK_PREFIX):
            raise ValueError(f"{task}: a workflow cannot start workflow tasks")
        if task not in CATALOG:
            raise ValueError(f"unknown task {task!r}; known tasks: {', '.join(sorted(CATALOG))}")
        return task

    @field_validator("payload")
    @classmethod
    def _payload_valid(cls, payload: dict[str, Any], info: ValidationInfo) -> dict[str, Any]:
        task = info.data.get("task")
        if task is None:
            return payload  # the task's own problem is named; its payload cannot be judged
        problems = list(payload_secret_problems(payload))
        tenant = (info.context or {}).get("tenant")
        named = payload.get("tenant")
        if tenant is not None and named is not None and named != tenant:
            problems.append((("tenant",), f"names tenant {named!r}; the workflow is {tenant}'s"))
        try:
            CATALOG[task].payload.model_validate(payload)
        except ValidationError as exc:
            raise _validation_error(
                [*_as_details(problems), *_relocated(exc, lambda loc, kind: loc)]
            ) from None
        _raise_problems(problems)
        return payload


Step = Annotated[
    WorkflowContainerStep | WorkflowAgentStep | WorkflowJobStep, Field(discriminator="kind")
]


RESERVED_NAMES = frozenset({"runs"})


class WorkflowDefinition(BaseModel):
    """What `drydock workflows create` reads (YAML or JSON) and POST /v1/workflows accepts."""

    model_config = ConfigDict(extra="forbid")

    name: Annotated[str, StringConstraints(pattern=f"^{NAME_PATTERN}$")] = Field(
        description="Lower-case letters, digits, '_', '.', '-'; versions share a name."
    )
    description: str = Field("", max_length=2000)
    steps: list[Step] = Field(
        min_length=1,
        max_length=MAX_STEPS,
        description="The DAG: each step starts when every step it needs has succeeded.",
    )

    @field_validator("name")
    @classmethod
    def _not_reserved(cls, name: str) -> str:
        # /v1/workflows/runs lists runs: a workflow of that name could not be read over HTTP.
        if name in RESERVED_NAMES:
            raise ValueError(f"{name!r} is reserved (the API's /v1/workflows/{name}); pick another")
        return name

    @model_validator(mode="wrap")
    @classmethod
    def _every_problem_at_once(
        cls, data: Any, handler: ValidatorFunctionWrapHandler
    ) -> WorkflowDefinition:
        """The steps' own problems and the graph's, together, each at its place."""
        found = list(_as_details(document_problems(data)))
        try:
            definition: WorkflowDefinition = handler(data)
        except ValidationError as exc:
            raise _validation_error([*_relocated(exc, _step_place), *found]) from None
        if found:
            raise _validation_error(found)
        return definition

    def execution_order(self) -> list[str]:
        """Step names in an order that runs each after what it needs (ties: as written)."""
        return topological_order({step.name: step.needs for step in self.steps})


def parse_definition(
    document: Any, *, tenant: str | None = None, strict: bool = False
) -> WorkflowDefinition:
    """The document as a definition (strict: JSON types as the schema states them, as the API
    reads bodies), its job payloads checked against ``tenant``; ValidationError otherwise."""
    context = {"tenant": tenant}
    if strict:
        return WorkflowDefinition.model_validate_json(
            json.dumps(document), strict=True, context=context
        )
    return WorkflowDefinition.model_validate(document, context=context)


# ---- checks ----------------------------------------------------------------------------------

Loc = tuple[str | int, ...]
Problem = tuple[Loc, str]


def env_problems(env: Mapping[str, object]) -> Iterator[Problem]:
    secret_names = get_settings().extra_secret_fields
    for name, value in env.items():
        if not _matches(ENV_NAME_PATTERN, name):
            yield (
                (name,),
                "not an environment variable's name: letters, digits and '_', 1 to 128, "
                "not starting with a digit",
            )
        elif isinstance(value, str) and is_secret_name(name, secret_names):
            yield (
                (name,),
                f"{name} looks secret and a definition is stored in clear: use a secret "
                'reference, {"secret": "<name>"}',
            )
        elif isinstance(value, str) and scrub_embedded(value) != value:
            yield (name,), 'carries a credential: use a secret reference, {"secret": "<name>"}'


def payload_secret_problems(payload: Any, path: Loc = ()) -> Iterator[Problem]:
    """Where a job payload carries a secret: a secret-looking field with a value, or a value
    holding a credential (a URL's password, a bearer value)."""
    secret_names = get_settings().extra_secret_fields
    if isinstance(payload, Mapping):
        for key, child in payload.items():
            where = (*path, str(key))
            if is_secret_name(str(key), secret_names) and child not in (None, ""):
                yield where, "looks secret and a definition is stored in clear: leave it out"
            else:
                yield from payload_secret_problems(child, where)
    elif isinstance(payload, list):
        for index, child in enumerate(payload):
            yield from payload_secret_problems(child, (*path, index))
    elif isinstance(payload, str) and scrub_embedded(payload) != payload:
        yield path, "carries a credential and a definition is stored in clear: leave it out"


def prompt_problem(prompt: str) -> str | None:
    """Why the prompt is not a template the runner can render, or None."""
    if scrub_embedded(prompt) != prompt:
        return "carries a credential and a definition is stored in clear: leave it out"
    try:
        # Compiling, not only parsing: unknown filters and tests are refused too.
        _PROMPTS.from_string(prompt)
        names = jinja2.meta.find_undeclared_variables(_PROMPTS.parse(prompt))
    except jinja2.TemplateSyntaxError as exc:
        return f"not a template: line {exc.lineno}: {exc.message}"
    except jinja2.TemplateError as exc:
        return f"not a template: {exc.message}"
    unknown = sorted(names - PROMPT_VARIABLES)
    if unknown:
        return (
            f"refers to {', '.join(unknown)}: a prompt may use only "
            f"{', '.join(sorted(PROMPT_VARIABLES))}"
        )
    return None


def document_problems(data: Any) -> list[Problem]:
    """What the whole document gets wrong beyond each field: its size, NUL characters, and its
    graph (step names unique, ``needs`` naming steps, no cycle). Read tolerantly from the
    document as given: what is not a step name here is named by the steps' own checks."""
    if not isinstance(data, Mapping):
        return []
    problems: list[Problem] = [
        (_loc_of(problem.field), NUL_PROBLEM) for problem in nul_problems(data, whole="")
    ]
    try:
        size = len(json.dumps(data))
    except (TypeError, ValueError):
        size = 0
    limit = get_settings().max_payload_bytes
    if size > limit:
        problems.append(((), f"{size} bytes as JSON, over {limit} (DRYDOCK_MAX_PAYLOAD_BYTES)"))
    steps = data.get("steps")
    if isinstance(steps, list):
        problems += graph_problems(steps)
    return problems


def graph_problems(steps: Sequence[Any]) -> list[Problem]:
    problems: list[Problem] = []
    first_index: dict[str, int] = {}
    needs: dict[str, list[str]] = {}
    for index, step in enumerate(steps):
        name = step.get("name") if isinstance(step, Mapping) else None
        if not isinstance(name, str):
            continue
        if name in first_index:
            problems.append(
                (
                    ("steps", index, "name"),
                    f"another step is named {name} (steps.{first_index[name]})",
                )
            )
            continue
        first_index[name] = index
        given = step.get("needs")
        needs[name] = [n for n in given if isinstance(n, str)] if isinstance(given, list) else []
    known = _listing(first_index)
    for index, step in enumerate(steps):
        given = step.get("needs") if isinstance(step, Mapping) else None
        if not isinstance(given, list):
            continue
        for position, needed in enumerate(given):
            # A name that is no step name at all is named by the step's own check.
            named = isinstance(needed, str) and _matches(STEP_NAME_PATTERN, needed)
            if named and needed not in first_index:
                problems.append(
                    (("steps", index, "needs", position), f"no step is named {needed} ({known})")
                )
    for cycle in cycles(needs):
        where = ("steps", first_index[cycle[0]], "needs")
        if len(cycle) == 1:
            problems.append((where, f"{cycle[0]} needs itself"))
        else:
            path = " -> ".join([*cycle, cycle[0]])
            problems.append((where, f"a cycle: {path} (each needs the next)"))
    return problems


def cycles(needs: Mapping[str, Sequence[str]]) -> list[list[str]]:
    """One cycle (its steps in order) per strongly connected group of steps that needs itself,
    found with Tarjan's algorithm, iteratively (200 steps deep would be near Python's limit)."""
    edges = {name: [n for n in wanted if n in needs] for name, wanted in needs.items()}
    index_of: dict[str, int] = {}
    low: dict[str, int] = {}
    on_stack: set[str] = set()
    stack: list[str] = []
    groups: list[list[str]] = []
    for root in edges:
        if root in index_of:
            continue
        work: list[tuple[str, int]] = [(root, 0)]
        while work:
            node, child = work.pop()
            if child == 0:
                index_of[node] = low[node] = len(index_of)
                stack.append(node)
                on_stack.add(node)
            if child < len(edges[node]):
                work.append((node, child + 1))
                nxt = edges[node][child]
                if nxt not in index_of:
                    work.append((nxt, 0))
                elif nxt in on_stack:
                    low[node] = min(low[node], index_of[nxt])
                continue
            if work:
                parent = work[-1][0]
                low[parent] = min(low[parent], low[node])
            if low[node] == index_of[node]:
                group = []
                while True:
                    member = stack.pop()
                    on_stack.discard(member)
                    group.append(member)
                    if member == node:
                        break
                if len(group) > 1 or node in edges[node]:
                    groups.append(group)
    order = {name: position for position, name in enumerate(needs)}
    return sorted(
        (_cycle_in(sorted(group, key=order.__getitem__), edges) for group in groups),
        key=lambda cycle: order[cycle[0]],
    )


def _cycle_in(group: list[str], edges: Mapping[str, Sequence[str]]) -> list[str]:
    """A cycle through the group's first step, along needs within the group."""
    members = set(group)
    start = group[0]
    if start in edges[start]:
        return [start]
    came_from: dict[str, str] = {}
    frontier = [start]
    while frontier:
        following = []
        for node in frontier:
            for nxt in edges[node]:
                if nxt == start:
                    path = [node]
                    while path[-1] != start:
                        path.append(came_from[path[-1]])
                    return path[::-1]
                if nxt in members and nxt not in came_from:
                    came_from[nxt] = node
                    following.append(nxt)
        frontier = following
    return group  # unreachable for a strongly connected group


def topological_order(needs: Mapping[str, Sequence[str]]) -> list[str]:
    """Kahn's algorithm, taking the earliest written step whose needs are met each time."""
    position = {name: index for index, name in enumerate(needs)}
    waiting = {name: {n for n in wanted if n in needs} for name, wanted in needs.items()}
    done: list[str] = []
    while waiting:
        ready = [name for name, wanted in waiting.items() if not wanted]
        if not ready:
            raise ValueError(f"a cycle among {', '.join(waiting)}")
        chosen = min(ready, key=position.__getitem__)
        done.append(chosen)
        del waiting[chosen]
        for wanted in waiting.values():
            wanted.discard(chosen)
    return done


# ---- problems as pydantic errors -------------------------------------------------------------


def _matches(pattern: str, text: str) -> bool:
    return re.fullmatch(pattern, text) is not None


def _listing(names: Mapping[str, int], shown: int = 20) -> str:
    if not names:
        return "no step has a valid name"
    listed = list(names)
    more = f", and {len(listed) - shown} more" if len(listed) > shown else ""
    return "steps: " + ", ".join(listed[:shown]) + more


def _loc_of(field: str) -> Loc:
    return tuple(int(part) if part.isdigit() else part for part in field.split(".") if part)


def _as_details(problems: Sequence[Problem]) -> Iterator[InitErrorDetails]:
    for loc, message in problems:
        # "Value error, ": what pydantic says of a validator's ValueError; the API's contract
        # test tells validator refusals (rules the schema cannot state) by it.
        yield InitErrorDetails(
            type=PydanticCustomError("value_error", f"Value error, {message}"), loc=loc, input=None
        )


def _relocated(
    exc: ValidationError, place: Callable[[Loc, str], Loc]
) -> Iterator[InitErrorDetails]:
    for error in exc.errors(include_url=False):
        yield InitErrorDetails(
            type=PydanticCustomError(error["type"], error["msg"]),
            loc=place(tuple(error["loc"]), error["type"]),
            input=error.get("input"),
        )


def _step_place(loc: Loc, kind: str) -> Loc:
    """``steps.0.container.image`` (pydantic names the union's member) as ``steps.0.image``;
    a missing or unknown kind at ``steps.0.kind`` rather than at the step."""
    if len(loc) == 2 and loc[0] == "steps" and kind.startswith("union_tag_"):
        return (*loc, "kind")
    if len(loc) >= 3 and loc[0] == "steps" and loc[2] in STEP_KINDS:
        return (*loc[:2], *loc[3:])
    return loc


def _validation_error(details: Sequence[InitErrorDetails]) -> ValidationError:
    """One error of every problem, the definition's own first, then step by step."""

    def by_step(detail: InitErrorDetails) -> tuple[int, int]:
        loc = detail["loc"]
        if len(loc) >= 2 and loc[0] == "steps" and isinstance(loc[1], int):
            return (1, loc[1])
        return (0, 0)

    return ValidationError.from_exception_data("WorkflowDefinition", sorted(details, key=by_step))


def _raise_problems(problems: Sequence[Problem]) -> None:
    if problems:
        raise _validation_error(list(_as_details(problems)))

"""Provenance of workflow runs: a log per step, and one signed in-toto Statement per run.

Each step's **log** says what the step was given and what it did: its inputs (the definition's
step), the image and the digest it resolved to, the argv, the *names* of the environment it
got, an agent's stream metadata, its outputs (exit code, sizes and sha256 of stdout/stderr, not
their text), the commit it made on the base it started from, and each push with its result.

The run's **Statement** (in-toto Statement v1, SLSA provenance v1 predicate) names the commits
the run produced as its subjects, its workflow, project, revision and branch as the build's
parameters, the repository at the base commit and the images as resolved dependencies, and
every step log as a byproduct *by digest* (sha256 of its canonical JSON). The Statement is what
the fleet signs (``provenance_signing``, a DSSE envelope); the logs stay plain rows, and
changing any byte of any of them no longer matches the signed digest, so one signature covers
them all without the logs having to be embedded in, or re-signed with, the Statement.

Environment **values** are never recorded, only names (and, for a secret reference, the
secret's name): a plain value may still be sensitive and a secret's value must never leave the
step. Job payloads are redacted by field name as everywhere in Drydock, URLs lose their
passwords, and as a last guard every secret value the runner resolved for the step is scrubbed
from every string of the log.

Pure: no Celery, no database. :func:`check_statement` compares a Statement with the logs it
names; the signature is checked by ``provenance_signing.verify_provenance``.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from enum import StrEnum
from typing import Any

from pydantic import BaseModel, ConfigDict

from adapters.git_inputs import redact_url
from kernel.redaction import redact, scrub_embedded, scrub_text

STATEMENT_TYPE = "https://in-toto.io/Statement/v1"
SLSA_PROVENANCE_TYPE = "https://slsa.dev/provenance/v1"
BUILD_TYPE = "https://drydock.dev/workflow-run/v1"
STEP_LOG_TYPE = "https://drydock.dev/workflow-step-log/v1"
DEFAULT_BUILDER_ID = "https://drydock.dev/fleet"
# Annotations tying each subject back to what produced it, so a verifier need not parse names.
STEP_ANNOTATION = "drydock.step"
REF_ANNOTATION = "drydock.ref"
BYPRODUCT_PREFIX = "steps/"
BYPRODUCT_SUFFIX = ".json"


# ---- canonical bytes ------------------------------------------------------------------------


def canonical_json(value: Any) -> bytes:
    """Sorted keys, no whitespace, UTF-8: the same log gives the same bytes wherever it was
    stored (PostgreSQL's JSONB keeps neither key order nor spacing)."""
    return json.dumps(
        value, sort_keys=True, separators=(",", ":"), ensure_ascii=False, allow_nan=False
    ).encode("utf-8")


def step_log_digest(log: Mapping[str, Any]) -> str:
    """The sha256 (hex) of a step log's canonical bytes: what its byproduct entry names."""
    return hashlib.sha256(canonical_json(log)).hexdigest()


def byproduct_name(step: str) -> str:
    return f"{BYPRODUCT_PREFIX}{step}{BYPRODUCT_SUFFIX}"


# ---- step logs ------------------------------------------------------------------------------


class EnvEntry(BaseModel):
    """One variable a step was given: its name, and where its value came from (never it)."""

    model_config = ConfigDict(extra="forbid")

    name: str
    # "value": written in the definition; "ref": the tenant's secret named by ``ref``.
    source: str
    ref: str | None = None


class ImageProvenance(BaseModel):
    model_config = ConfigDict(extra="forbid")

    reference: str
    # sha256:<hex> the reference resolved to when the step ran; None: not resolved.
    digest: str | None


class StreamDigest(BaseModel):
    model_config = ConfigDict(extra="forbid")

    # As produced by the step (before the runner's cap), when known.
    bytes: int | None
    # Of the text as the runner kept it (scrubbed, capped); None: no stream.
    sha256: str | None


class StepOutputs(BaseModel):
    model_config = ConfigDict(extra="forbid")

    exit_code: int | None
    stdout: StreamDigest
    stderr: StreamDigest
    # A job step's result (redacted), by digest: the result itself is on the child job.
    result_sha256: str | None


class CommitProvenance(BaseModel):
    model_config = ConfigDict(extra="forbid")

    base: str | None
    sha: str | None
    # True when the step changed nothing (no commit, no subject in the Statement).
    skipped: bool


class PushProvenance(BaseModel):
    model_config = ConfigDict(extra="forbid")

    remote: str
    branch: str | None
    status: str
    failure: str | None
    error: str | None
    attempts: int | None


class StepProvenance(BaseModel):
    """The provenance log of one step, as stored and as digested into the run's Statement."""

    model_config = ConfigDict(extra="forbid")

    type: str = STEP_LOG_TYPE
    run_id: str
    step: str
    kind: str
    state: str | None
    attempts: int | None
    inputs: dict[str, Any]
    image: ImageProvenance | None
    command: list[str] | None
    env: list[EnvEntry]
    agent: dict[str, Any] | None
    outputs: StepOutputs
    commit: CommitProvenance
    pushes: list[PushProvenance]
    started_at: str | None
    finished_at: str | None
    runner: str | None


def step_provenance(
    *,
    run_id: str,
    step: str,
    kind: str,
    spec: Mapping[str, Any],
    secrets: Sequence[str] = (),
    image_digest: str | None = None,
    command: Sequence[str] | None = None,
    env_names: Sequence[str] | None = None,
    agent: Mapping[str, Any] | None = None,
    exit_code: int | None = None,
    stdout: str | None = None,
    stderr: str | None = None,
    stdout_bytes: int | None = None,
    stderr_bytes: int | None = None,
    result: Any = None,
    base_commit: str | None = None,
    commit_sha: str | None = None,
    pushes: Sequence[Mapping[str, Any]] = (),
    state: str | None = None,
    attempts: int | None = None,
    started_at: datetime | str | None = None,
    finished_at: datetime | str | None = None,
    runner: str | None = None,
) -> dict[str, Any]:
    """The step's log as a JSON-ready dict, to be stored as it is (see the module's doc).

    ``spec``: the step as the run took it (``WorkflowStep.spec``). ``secrets``: every secret
    value the step was given (its resolved references), scrubbed from every string of the log.
    ``command`` and ``env_names`` default to the spec's; ``env_names`` adds names the runner
    set itself (``HOME``). ``agent``: provider, model, duration_seconds, exit_code, usage, as
    the agent's stream reported them. ``stdout``/``stderr``: the text as kept, hashed only.
    """
    secret_values = _scrub_list(secrets)
    spec_env = spec.get("env")
    env = _env_entries(spec_env if isinstance(spec_env, Mapping) else {}, env_names)
    image = spec.get("image")
    log = StepProvenance(
        run_id=str(run_id),
        step=step,
        kind=kind,
        state=state,
        attempts=attempts,
        inputs=_inputs(spec),
        image=(
            ImageProvenance(reference=str(image), digest=image_digest)
            if isinstance(image, str)
            else None
        ),
        command=[str(arg) for arg in command] if command is not None else _spec_command(spec),
        env=env,
        agent=_agent(agent) if agent is not None else None,
        outputs=StepOutputs(
            exit_code=exit_code,
            stdout=_stream(stdout, stdout_bytes, secret_values),
            stderr=_stream(stderr, stderr_bytes, secret_values),
            result_sha256=(
                hashlib.sha256(canonical_json(redact(result))).hexdigest()
                if result is not None
                else None
            ),
        ),
        commit=CommitProvenance(base=base_commit, sha=commit_sha, skipped=commit_sha is None),
        pushes=[_push(entry) for entry in pushes],
        started_at=_timestamp(started_at),
        finished_at=_timestamp(finished_at),
        runner=runner,
    )
    scrubbed: dict[str, Any] = _scrub(log.model_dump(mode="json"), secret_values)
    return scrubbed


def _inputs(spec: Mapping[str, Any]) -> dict[str, Any]:
    """The step's definition without env values: names and secret references stay."""
    inputs: dict[str, Any] = {key: value for key, value in spec.items() if key != "env"}
    env = spec.get("env")
    if isinstance(env, Mapping):
        inputs["env"] = [entry.model_dump() for entry in _env_entries(env, None)]
    if "payload" in inputs:
        inputs["payload"] = redact(inputs["payload"])
    return inputs


def _env_entries(env: Mapping[str, Any], received: Sequence[str] | None) -> list[EnvEntry]:
    entries: dict[str, EnvEntry] = {}
    for name, value in env.items():
        ref = value.get("secret") if isinstance(value, Mapping) else None
        if ref is not None:
            entries[str(name)] = EnvEntry(name=str(name), source="ref", ref=str(ref))
        else:
            entries[str(name)] = EnvEntry(name=str(name), source="value")
    for name in received or ():
        # Set by the runner, not the definition (HOME): its name is all that is told.
        entries.setdefault(name, EnvEntry(name=name, source="runner"))
    return [entries[name] for name in sorted(entries)]


def _spec_command(spec: Mapping[str, Any]) -> list[str] | None:
    command = spec.get("command")
    return [str(arg) for arg in command] if isinstance(command, list) else None


_AGENT_FIELDS = ("provider", "model", "duration_seconds", "exit_code", "stop_reason")


def _agent(agent: Mapping[str, Any]) -> dict[str, Any]:
    """An agent's stream metadata: the known fields as given, usage as numbers only (counts a
    provider names ``input_tokens`` would be taken for secrets by a redaction by name), and
    anything else redacted by field name."""
    known = {name: agent[name] for name in _AGENT_FIELDS if name in agent}
    usage = agent.get("usage")
    if isinstance(usage, Mapping):
        known["usage"] = {
            str(key): value
            for key, value in usage.items()
            if isinstance(value, int | float) and not isinstance(value, bool)
        }
    rest = {k: v for k, v in agent.items() if k not in _AGENT_FIELDS and k != "usage"}
    if rest:
        known["other"] = redact(rest)
    return known


def _stream(text: str | None, size: int | None, secrets: Sequence[str]) -> StreamDigest:
    if text is None:
        return StreamDigest(bytes=size, sha256=None)
    kept = scrub_text(text, secrets)
    return StreamDigest(
        bytes=size if size is not None else len(text.encode("utf-8")),
        sha256=hashlib.sha256(kept.encode("utf-8")).hexdigest(),
    )


def _push(entry: Mapping[str, Any]) -> PushProvenance:
    attempts = entry.get("attempts")
    return PushProvenance(
        remote=redact_url(str(entry.get("remote", ""))),
        branch=_optional_text(entry.get("branch")),
        status=str(entry.get("status", "")),
        failure=_optional_text(entry.get("failure")),
        error=_optional_text(entry.get("error")),
        attempts=attempts if isinstance(attempts, int) else None,
    )


def _optional_text(value: Any) -> str | None:
    return None if value is None else str(value)


def _timestamp(value: datetime | str | None) -> str | None:
    """RFC 3339 in UTC, as SLSA's timestamps are."""
    if value is None or isinstance(value, str):
        return value
    if value.tzinfo is None:
        value = value.replace(tzinfo=UTC)
    return value.astimezone(UTC).isoformat().replace("+00:00", "Z")


def _scrub_list(secrets: Sequence[str]) -> list[str]:
    # Longest first, so a secret containing another is replaced whole.
    return sorted({s for s in secrets if s}, key=len, reverse=True)


def _scrub(value: Any, secrets: Sequence[str]) -> Any:
    """Every string (keys too) with the secret values and embedded credentials replaced."""
    if isinstance(value, str):
        return scrub_text(value, secrets)
    if isinstance(value, Mapping):
        return {_scrub(str(k), secrets): _scrub(v, secrets) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [_scrub(item, secrets) for item in value]
    return value


# ---- the run's statement --------------------------------------------------------------------


@dataclass(frozen=True)
class RunFacts:
    """What the Statement says of the run itself (``WorkflowRun``'s columns, plus the
    project's repository URL and the run's times)."""

    run_id: str
    tenant: str
    workflow_name: str
    workflow_version: int
    project: str | None = None
    revision: str | None = None
    branch: str | None = None
    base_commit: str | None = None
    head_commit: str | None = None
    repository_url: str | None = None
    started_at: datetime | str | None = None
    finished_at: datetime | str | None = None
    builder_id: str = DEFAULT_BUILDER_ID


def run_statement(
    run: RunFacts, steps: Sequence[Mapping[str, Any]], secrets: Sequence[str] = ()
) -> dict[str, Any]:
    """The run's in-toto Statement over its step logs (as :func:`step_provenance` made them,
    in the run's order). Sign it with ``provenance_signing.sign_statement``."""
    repository = _repository_uri(run)
    statement = {
        "_type": STATEMENT_TYPE,
        "subject": _subjects(run, steps, repository),
        "predicateType": SLSA_PROVENANCE_TYPE,
        "predicate": {
            "buildDefinition": {
                "buildType": BUILD_TYPE,
                "externalParameters": {
                    "workflow": {"name": run.workflow_name, "version": run.workflow_version},
                    "project": run.project,
                    "revision": run.revision,
                    "branch": run.branch,
                },
                "internalParameters": {"tenant": run.tenant},
                "resolvedDependencies": _dependencies(run, steps, repository),
            },
            "runDetails": {
                "builder": {"id": run.builder_id},
                "metadata": {
                    "invocationId": str(run.run_id),
                    "startedOn": _timestamp(run.started_at),
                    "finishedOn": _timestamp(run.finished_at),
                },
                "byproducts": [
                    {
                        "name": byproduct_name(str(log["step"])),
                        "digest": {"sha256": step_log_digest(log)},
                        "mediaType": "application/json",
                    }
                    for log in steps
                ],
            },
        },
    }
    # The logs were scrubbed when made; the run's own strings (a URL) are scrubbed here. The
    # byproduct digests are of the logs as given, so they are computed before and kept.
    scrubbed: dict[str, Any] = _scrub(statement, _scrub_list(secrets))
    return scrubbed


def _repository_uri(run: RunFacts) -> str | None:
    if run.repository_url:
        return "git+" + scrub_embedded(redact_url(run.repository_url))
    return run.project


def _subjects(
    run: RunFacts, steps: Sequence[Mapping[str, Any]], repository: str | None
) -> list[dict[str, Any]]:
    prefix = run.project or f"workflow-run/{run.run_id}"
    commits = _step_commits(steps)
    subjects: list[dict[str, Any]] = [
        {
            "name": f"{prefix}/{step}",
            "digest": {"gitCommit": sha},
            "annotations": {STEP_ANNOTATION: step},
        }
        for sha, step in commits
    ]
    made = {sha for sha, _ in commits}
    # The branch's head as the run left it, when the run made it (not the base it started at).
    if run.head_commit and run.head_commit != run.base_commit and run.head_commit in made:
        ref = f"refs/heads/{run.branch}" if run.branch else "HEAD"
        subjects.append(
            {
                "name": f"{repository or prefix}@{ref}",
                "digest": {"gitCommit": run.head_commit},
                "annotations": {REF_ANNOTATION: ref},
            }
        )
    return subjects


def _step_commits(steps: Sequence[Mapping[str, Any]]) -> list[tuple[str, str]]:
    """(commit, step) of every step that made a commit, in the logs' order."""
    found = []
    for log in steps:
        commit = log.get("commit")
        sha = commit.get("sha") if isinstance(commit, Mapping) else None
        if isinstance(sha, str) and sha:
            found.append((sha, str(log.get("step"))))
    return found


def _dependencies(
    run: RunFacts, steps: Sequence[Mapping[str, Any]], repository: str | None
) -> list[dict[str, Any]]:
    dependencies: list[dict[str, Any]] = []
    if repository and run.base_commit:
        dependencies.append(
            {"name": "repository", "uri": repository, "digest": {"gitCommit": run.base_commit}}
        )
    seen: set[tuple[str, str | None]] = set()
    for log in steps:
        image = log.get("image")
        if not isinstance(image, Mapping) or (image["reference"], image["digest"]) in seen:
            continue
        seen.add((image["reference"], image["digest"]))
        entry: dict[str, Any] = {"name": f"image:{log['step']}", "uri": image["reference"]}
        algorithm, _, value = str(image["digest"] or "").partition(":")
        if value:
            entry["digest"] = {algorithm: value}
        dependencies.append(entry)
    return dependencies


# ---- checking a statement against its logs --------------------------------------------------


class ProblemKind(StrEnum):
    """Why provenance does not verify, as the CLI and the API name it."""

    MALFORMED_ENVELOPE = "malformed_envelope"
    WRONG_PAYLOAD_TYPE = "wrong_payload_type"
    WRONG_KEY = "wrong_key"
    BAD_SIGNATURE = "bad_signature"
    NOT_A_STATEMENT = "not_a_statement"
    STEP_LOG_DIGEST_MISMATCH = "step_log_digest_mismatch"
    STEP_LOG_MISSING = "step_log_missing"
    STEP_LOG_UNLISTED = "step_log_unlisted"
    STEP_LOG_OTHER_RUN = "step_log_other_run"
    SUBJECT_MISMATCH = "subject_mismatch"


@dataclass(frozen=True)
class ProvenanceProblem:
    kind: ProblemKind
    message: str
    step: str | None = None

    def as_dict(self) -> dict[str, Any]:
        return {"kind": self.kind.value, "step": self.step, "message": self.message}


def check_statement(
    statement: Any, step_logs: Mapping[str, Mapping[str, Any]]
) -> list[ProvenanceProblem]:
    """What is wrong between a Statement and the step logs (by step name) it should name:
    nothing raises, whatever either holds."""
    if not _is_statement(statement):
        return [
            ProvenanceProblem(
                ProblemKind.NOT_A_STATEMENT,
                f"the payload is not an in-toto Statement v1 with a {SLSA_PROVENANCE_TYPE} "
                "predicate",
            )
        ]
    problems: list[ProvenanceProblem] = []
    predicate = statement["predicate"]
    run_id = str(predicate["runDetails"].get("metadata", {}).get("invocationId"))
    listed = _listed_digests(predicate["runDetails"]["byproducts"])
    for step, digest in listed.items():
        log = step_logs.get(step)
        if log is None:
            problems.append(
                ProvenanceProblem(
                    ProblemKind.STEP_LOG_MISSING,
                    f"step {step}: its log is named by the statement but missing",
                    step,
                )
            )
            continue
        try:
            actual = step_log_digest(log)
        except (TypeError, ValueError):
            actual = None
        if actual != digest:
            problems.append(
                ProvenanceProblem(
                    ProblemKind.STEP_LOG_DIGEST_MISMATCH,
                    f"step {step}: its log has sha256 {actual}, the statement says {digest} "
                    "(the log was changed after it was signed)",
                    step,
                )
            )
        elif str(log.get("run_id")) != run_id or log.get("step") != step:
            problems.append(
                ProvenanceProblem(
                    ProblemKind.STEP_LOG_OTHER_RUN,
                    f"step {step}: its log is of run {log.get('run_id')} step "
                    f"{log.get('step')}, not of run {run_id} step {step}",
                    step,
                )
            )
    for step in sorted(set(step_logs) - set(listed)):
        problems.append(
            ProvenanceProblem(
                ProblemKind.STEP_LOG_UNLISTED,
                f"step {step}: a log the statement does not name",
                step,
            )
        )
    problems += _subject_problems(statement["subject"], step_logs)
    return problems


def _is_statement(statement: Any) -> bool:
    if not isinstance(statement, Mapping):
        return False
    predicate = statement.get("predicate")
    details = predicate.get("runDetails") if isinstance(predicate, Mapping) else None
    return (
        statement.get("_type") == STATEMENT_TYPE
        and statement.get("predicateType") == SLSA_PROVENANCE_TYPE
        and isinstance(statement.get("subject"), list)
        and isinstance(details, Mapping)
        and isinstance(details.get("byproducts"), list)
        and isinstance(details.get("metadata", {}), Mapping)
    )


def _listed_digests(byproducts: list[Any]) -> dict[str, str | None]:
    listed: dict[str, str | None] = {}
    for entry in byproducts:
        if not isinstance(entry, Mapping):
            continue
        name, digest = str(entry.get("name", "")), entry.get("digest")
        if name.startswith(BYPRODUCT_PREFIX) and name.endswith(BYPRODUCT_SUFFIX):
            step = name[len(BYPRODUCT_PREFIX) : -len(BYPRODUCT_SUFFIX)]
            listed[step] = digest.get("sha256") if isinstance(digest, Mapping) else None
    return listed


def _subject_problems(
    subjects: list[Any], step_logs: Mapping[str, Mapping[str, Any]]
) -> list[ProvenanceProblem]:
    """Subjects must be exactly the logs' commits, and the head one of them."""
    made = {step: sha for sha, step in _step_commits(list(step_logs.values()))}
    claimed: dict[str, str | None] = {}
    heads: list[str | None] = []
    for subject in subjects:
        if not isinstance(subject, Mapping):
            continue
        digest = subject.get("digest")
        sha = digest.get("gitCommit") if isinstance(digest, Mapping) else None
        annotations = subject.get("annotations")
        annotations = annotations if isinstance(annotations, Mapping) else {}
        if STEP_ANNOTATION in annotations:
            claimed[str(annotations[STEP_ANNOTATION])] = sha
        else:
            heads.append(sha)
    problems = [
        ProvenanceProblem(
            ProblemKind.SUBJECT_MISMATCH,
            f"step {step}: the statement's subject is commit {claimed.get(step)}, its log's "
            f"commit is {made.get(step)}",
            step,
        )
        for step in sorted(set(made) | set(claimed))
        if claimed.get(step) != made.get(step)
    ]
    problems += [
        ProvenanceProblem(
            ProblemKind.SUBJECT_MISMATCH,
            f"the branch head subject {sha} is no commit of the run's step logs",
        )
        for sha in heads
        if sha not in made.values()
    ]
    return problems


__all__ = [
    "ProblemKind",
    "ProvenanceProblem",
    "RunFacts",
    "StepProvenance",
    "canonical_json",
    "check_statement",
    "run_statement",
    "step_log_digest",
    "step_provenance",
]

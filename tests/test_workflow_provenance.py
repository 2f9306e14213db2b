"""Workflow run provenance: per-step logs, the run's in-toto Statement signed as a DSSE
envelope with the fleet's key, and verification naming what was tampered with. Pure: no
servers."""

from __future__ import annotations

import base64
import copy
import hashlib
import json
import random
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
from cryptography.fernet import Fernet
from cryptography.hazmat.primitives.asymmetric import rsa
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
from cryptography.hazmat.primitives.serialization import (
    Encoding,
    NoEncryption,
    PrivateFormat,
)

from kernel.redaction import scrub_text
from kernel.settings import Settings, get_settings
from policy.approvals import signing_key as approvals_signing_key
from tasks.workflows.provenance import (
    ProblemKind,
    RunFacts,
    canonical_json,
    run_statement,
    step_log_digest,
    step_provenance,
)
from tasks.workflows.provenance_signing import (
    PAYLOAD_TYPE,
    ProvenanceKeyError,
    ProvenanceKeyUnavailableError,
    fleet_public_key_pem,
    fleet_signing_key,
    key_id,
    sign_statement,
    verify_provenance,
)

RUN_ID = "6f1c1c43-5a0e-4b7e-9d55-0c3f3e2b8a10"
BASE = "1" * 40
LINT_COMMIT = "2" * 40
REVIEW_COMMIT = "3" * 40
IMAGE = "registry.example.com/tools/lint:1.4"
IMAGE_DIGEST = "sha256:" + "d" * 64
# What the runner resolved the step's secret reference to, and echoed back by a careless step.
SECRET = "ghp_Zq81secretvalueXy7"
# A plain env value: not secret by its name, still never recorded.
PLAIN_ENV_VALUE = "plain-env-value-7c1d"
REPO_PASSWORD = "repo-pass-4411"
REPO_URL = f"https://drydock:{REPO_PASSWORD}@git.example.com/acme/api.git"

LINT_SPEC: dict[str, Any] = {
    "kind": "container",
    "name": "lint",
    "needs": [],
    "image": IMAGE,
    "command": ["ruff", "check", "--fix", "."],
    "env": {"RUFF_MODE": PLAIN_ENV_VALUE, "GITHUB_TOKEN": {"secret": "github-token"}},
    "network": False,
    "timeout_seconds": 600,
    "retries": 0,
    "description": "",
}
REVIEW_SPEC: dict[str, Any] = {
    "kind": "agent",
    "name": "review",
    "needs": ["lint"],
    "provider": "anthropic",
    "model": "claude-sonnet",
    "prompt": "Review the changes of {{ run.id }}",
    "timeout_seconds": 600,
    "retries": 1,
    "description": "",
}
NOTIFY_SPEC: dict[str, Any] = {
    "kind": "job",
    "name": "notify",
    "needs": ["review"],
    "task": "builds.canary",
    # Refused in a stored definition; here as the last guard's proof, should one get through.
    "payload": {"message": "done", "token": SECRET},
    "timeout_seconds": 600,
    "retries": 0,
    "description": "",
}


def run_logs(run_id: str = RUN_ID) -> dict[str, dict[str, Any]]:
    lint = step_provenance(
        run_id=run_id,
        step="lint",
        kind="container",
        spec=LINT_SPEC,
        secrets=[SECRET],
        image_digest=IMAGE_DIGEST,
        env_names=["HOME", "RUFF_MODE", "GITHUB_TOKEN"],
        exit_code=0,
        stdout=f"fixed 3 files\nusing token {SECRET}\n",
        stderr="",
        stdout_bytes=4096,
        stderr_bytes=0,
        base_commit=BASE,
        commit_sha=LINT_COMMIT,
        pushes=[
            {
                "remote": REPO_URL,
                "branch": "drydock/run-1",
                "status": "pushed",
                "failure": None,
                "error": None,
                "attempts": 1,
            },
            {
                "remote": "https://mirror.example.com/acme/api.git",
                "branch": "drydock/run-1",
                "status": "failed",
                "failure": "auth",
                "error": f"remote: invalid credential {SECRET}",
                "attempts": 3,
            },
        ],
        state="succeeded",
        attempts=1,
        started_at="2026-12-03T19:00:00Z",
        finished_at="2026-12-03T19:00:40Z",
        runner="worker-a",
    )
    review = step_provenance(
        run_id=run_id,
        step="review",
        kind="agent",
        spec=REVIEW_SPEC,
        secrets=[SECRET],
        agent={
            "provider": "anthropic",
            "model": "claude-sonnet",
            "duration_seconds": 41.5,
            "exit_code": 0,
            "usage": {"input_tokens": 1200, "output_tokens": 300, "note": SECRET},
            "session_token": SECRET,
        },
        exit_code=0,
        stdout="review written",
        base_commit=LINT_COMMIT,
        commit_sha=REVIEW_COMMIT,
        state="succeeded",
        attempts=1,
        runner="worker-b",
    )
    notify = step_provenance(
        run_id=run_id,
        step="notify",
        kind="job",
        spec=NOTIFY_SPEC,
        secrets=[SECRET],
        result={"message": "done", "token": SECRET},
        base_commit=REVIEW_COMMIT,
        commit_sha=None,
        state="succeeded",
        attempts=1,
        runner="worker-a",
    )
    return {"lint": lint, "review": review, "notify": notify}


def run_facts(run_id: str = RUN_ID) -> RunFacts:
    return RunFacts(
        run_id=run_id,
        tenant="acme",
        workflow_name="lint-and-review",
        workflow_version=3,
        project="api",
        revision="main",
        branch="drydock/run-1",
        base_commit=BASE,
        head_commit=REVIEW_COMMIT,
        repository_url=REPO_URL,
        started_at="2026-12-03T19:00:00Z",
        finished_at="2026-12-03T19:02:00Z",
    )


@pytest.fixture
def fleet_key() -> Ed25519PrivateKey:
    return Ed25519PrivateKey.generate()


@pytest.fixture
def signed(
    fleet_key: Ed25519PrivateKey,
) -> tuple[dict[str, Any], dict[str, dict[str, Any]], dict[str, Any]]:
    logs = run_logs()
    statement = run_statement(run_facts(), list(logs.values()), secrets=[SECRET])
    return statement, logs, sign_statement(statement, fleet_key)


def kinds(result: Any) -> list[ProblemKind]:
    return [problem.kind for problem in result.problems]


def payload_of(envelope: dict[str, Any]) -> dict[str, Any]:
    loaded: dict[str, Any] = json.loads(base64.b64decode(envelope["payload"]))
    return loaded


def with_payload(envelope: dict[str, Any], statement: dict[str, Any]) -> dict[str, Any]:
    changed = copy.deepcopy(envelope)
    changed["payload"] = base64.b64encode(canonical_json(statement)).decode()
    return changed


# ---- the happy path -------------------------------------------------------------------------


def test_a_three_step_run_verifies_with_the_fleet_key_and_its_public_pem(
    signed: tuple[dict[str, Any], dict[str, dict[str, Any]], dict[str, Any]],
    fleet_key: Ed25519PrivateKey,
) -> None:
    statement, logs, envelope = signed
    assert envelope["payloadType"] == PAYLOAD_TYPE
    assert [s["keyid"] for s in envelope["signatures"]] == [key_id(fleet_key)]
    assert payload_of(envelope) == statement

    result = verify_provenance(envelope, logs, fleet_key.public_key())
    assert result.ok, result.problems
    assert result.statement == statement
    # A verifier outside the fleet holds only the PEM.
    public_pem = fleet_key.public_key().public_bytes(
        Encoding.PEM,
        __import__(
            "cryptography"
        ).hazmat.primitives.serialization.PublicFormat.SubjectPublicKeyInfo,
    )
    assert verify_provenance(envelope, logs, public_pem).ok


def test_logs_read_back_from_storage_in_another_key_order_still_verify(
    signed: tuple[dict[str, Any], dict[str, dict[str, Any]], dict[str, Any]],
    fleet_key: Ed25519PrivateKey,
) -> None:
    _, logs, envelope = signed

    def shuffled(value: Any, rng: random.Random) -> Any:
        if isinstance(value, dict):
            items = list(value.items())
            rng.shuffle(items)
            return {k: shuffled(v, rng) for k, v in items}
        if isinstance(value, list):
            return [shuffled(v, rng) for v in value]
        return value

    rng = random.Random(5)
    stored = {
        name: json.loads(json.dumps(shuffled(log, rng), indent=2)) for name, log in logs.items()
    }
    assert verify_provenance(envelope, stored, fleet_key).ok


def test_the_statement_names_the_run_its_commits_and_each_log_by_digest(
    signed: tuple[dict[str, Any], dict[str, dict[str, Any]], dict[str, Any]],
) -> None:
    statement, logs, _ = signed
    assert statement["_type"] == "https://in-toto.io/Statement/v1"
    assert statement["predicateType"] == "https://slsa.dev/provenance/v1"

    subjects = {s["name"]: s["digest"]["gitCommit"] for s in statement["subject"]}
    assert subjects == {
        "api/lint": LINT_COMMIT,
        "api/review": REVIEW_COMMIT,
        "git+https://drydock:[REDACTED]@git.example.com/acme/api.git@refs/heads/drydock/run-1": (
            REVIEW_COMMIT
        ),
    }

    build = statement["predicate"]["buildDefinition"]
    assert build["externalParameters"]["workflow"] == {"name": "lint-and-review", "version": 3}
    assert build["externalParameters"]["branch"] == "drydock/run-1"
    assert build["internalParameters"] == {"tenant": "acme"}
    dependencies = {d["uri"]: d.get("digest") for d in build["resolvedDependencies"]}
    assert dependencies == {
        "git+https://drydock:[REDACTED]@git.example.com/acme/api.git": {"gitCommit": BASE},
        IMAGE: {"sha256": "d" * 64},
    }

    details = statement["predicate"]["runDetails"]
    assert details["metadata"]["invocationId"] == RUN_ID
    byproducts = {b["name"]: b["digest"]["sha256"] for b in details["byproducts"]}
    assert byproducts == {
        f"steps/{name}.json": hashlib.sha256(canonical_json(log)).hexdigest()
        for name, log in logs.items()
    }


def test_a_step_that_changed_nothing_is_logged_skipped_and_is_no_subject(
    signed: tuple[dict[str, Any], dict[str, dict[str, Any]], dict[str, Any]],
) -> None:
    statement, logs, _ = signed
    assert logs["notify"]["commit"] == {"base": REVIEW_COMMIT, "sha": None, "skipped": True}
    assert logs["lint"]["commit"]["skipped"] is False
    assert not [s for s in statement["subject"] if "notify" in s["name"]]


def test_a_run_that_committed_nothing_has_no_head_subject() -> None:
    logs = run_logs()
    for log in logs.values():
        log["commit"] = {"base": BASE, "sha": None, "skipped": True}
    facts = run_facts()
    unchanged = RunFacts(**{**facts.__dict__, "head_commit": BASE})
    assert run_statement(unchanged, list(logs.values()))["subject"] == []


# ---- what never gets in ---------------------------------------------------------------------


def test_env_values_and_secret_values_are_in_no_log_and_not_in_the_statement(
    signed: tuple[dict[str, Any], dict[str, dict[str, Any]], dict[str, Any]],
) -> None:
    statement, logs, envelope = signed
    everything = [canonical_json(log) for log in logs.values()]
    everything += [canonical_json(statement), json.dumps(envelope).encode()]
    for text in everything:
        for secret in (SECRET, PLAIN_ENV_VALUE, REPO_PASSWORD):
            assert secret.encode() not in text

    lint = logs["lint"]
    # The names (and the secret reference by name) are told, with where each came from.
    assert lint["env"] == [
        {"name": "GITHUB_TOKEN", "source": "ref", "ref": "github-token"},
        {"name": "HOME", "source": "runner", "ref": None},
        {"name": "RUFF_MODE", "source": "value", "ref": None},
    ]
    assert lint["inputs"]["command"] == LINT_SPEC["command"]
    assert lint["image"] == {"reference": IMAGE, "digest": IMAGE_DIGEST}
    # stdout is only hashed, and the hash is of the text as kept (scrubbed), not as echoed.
    echoed = f"fixed 3 files\nusing token {SECRET}\n"
    assert lint["outputs"]["stdout"] == {
        "bytes": 4096,
        "sha256": hashlib.sha256(scrub_text(echoed, [SECRET]).encode()).hexdigest(),
    }
    assert [p["status"] for p in lint["pushes"]] == ["pushed", "failed"]
    assert lint["pushes"][1]["failure"] == "auth"

    assert logs["notify"]["inputs"]["payload"]["message"] == "done"
    review_agent = logs["review"]["agent"]
    assert review_agent["usage"] == {"input_tokens": 1200, "output_tokens": 300}
    assert review_agent["model"] == "claude-sonnet"


def test_a_secret_value_given_is_scrubbed_from_every_string_of_the_log() -> None:
    # A secret in a place no redaction by name would catch: a description, an argv entry.
    spec = {**LINT_SPEC, "description": f"uses {SECRET}", "command": ["echo", SECRET]}
    log = step_provenance(run_id=RUN_ID, step="lint", kind="container", spec=spec, secrets=[SECRET])
    assert SECRET.encode() not in canonical_json(log)
    assert log["command"] == ["echo", "[REDACTED]"]


# ---- tampering ------------------------------------------------------------------------------

Tamper = Callable[
    [dict[str, Any], dict[str, dict[str, Any]], dict[str, Any], Ed25519PrivateKey],
    tuple[dict[str, Any], dict[str, dict[str, Any]]],
]


def _change_log_field(st: Any, logs: Any, env: Any, key: Any) -> Any:
    logs["lint"]["outputs"]["exit_code"] = 1
    return env, logs


def _change_payload(st: Any, logs: Any, env: Any, key: Any) -> Any:
    changed = payload_of(env)
    changed["predicate"]["buildDefinition"]["externalParameters"]["branch"] = "main"
    return with_payload(env, changed), logs


def _change_signature(st: Any, logs: Any, env: Any, key: Any) -> Any:
    sig = bytearray(base64.b64decode(env["signatures"][0]["sig"]))
    sig[7] ^= 0x01
    env["signatures"][0]["sig"] = base64.b64encode(bytes(sig)).decode()
    return env, logs


def _change_subject_and_resign(st: Any, logs: Any, env: Any, key: Any) -> Any:
    # Even signed anew (by whoever holds the key), subjects must be the logs' commits.
    changed = copy.deepcopy(st)
    changed["subject"][0]["digest"]["gitCommit"] = "9" * 40
    return sign_statement(changed, key), logs


def _drop_log(st: Any, logs: Any, env: Any, key: Any) -> Any:
    del logs["review"]
    return env, logs


def _add_log(st: Any, logs: Any, env: Any, key: Any) -> Any:
    logs["deploy"] = {**logs["notify"], "step": "deploy"}
    return env, logs


def _sign_with_another_key(st: Any, logs: Any, env: Any, key: Any) -> Any:
    return sign_statement(st, Ed25519PrivateKey.generate()), logs


@pytest.mark.parametrize(
    ("tamper", "expected", "step"),
    [
        (_change_log_field, ProblemKind.STEP_LOG_DIGEST_MISMATCH, "lint"),
        (_change_payload, ProblemKind.BAD_SIGNATURE, None),
        (_change_signature, ProblemKind.BAD_SIGNATURE, None),
        (_change_subject_and_resign, ProblemKind.SUBJECT_MISMATCH, "lint"),
        (_drop_log, ProblemKind.STEP_LOG_MISSING, "review"),
        (_add_log, ProblemKind.STEP_LOG_UNLISTED, "deploy"),
        (_sign_with_another_key, ProblemKind.WRONG_KEY, None),
    ],
    ids=["log-field", "payload", "signature", "subject", "missing-log", "extra-log", "other-key"],
)
def test_tampering_fails_verification_naming_the_problem(
    signed: tuple[dict[str, Any], dict[str, dict[str, Any]], dict[str, Any]],
    fleet_key: Ed25519PrivateKey,
    tamper: Tamper,
    expected: ProblemKind,
    step: str | None,
) -> None:
    statement, logs, envelope = signed
    envelope, logs = tamper(statement, logs, envelope, fleet_key)
    result = verify_provenance(envelope, logs, fleet_key.public_key())
    assert not result.ok
    named = [p for p in result.problems if p.kind == expected]
    assert named, result.problems
    assert named[0].step == step
    if step is not None:
        assert step in named[0].message


def test_a_tampered_log_is_the_only_problem_named(
    signed: tuple[dict[str, Any], dict[str, dict[str, Any]], dict[str, Any]],
    fleet_key: Ed25519PrivateKey,
) -> None:
    _, logs, envelope = signed
    logs["review"]["agent"]["model"] = "another-model"
    result = verify_provenance(envelope, logs, fleet_key)
    assert kinds(result) == [ProblemKind.STEP_LOG_DIGEST_MISMATCH]
    assert result.problems[0].step == "review"


def test_a_subject_changed_without_the_key_fails_both_ways(
    signed: tuple[dict[str, Any], dict[str, dict[str, Any]], dict[str, Any]],
    fleet_key: Ed25519PrivateKey,
) -> None:
    statement, logs, envelope = signed
    changed = copy.deepcopy(statement)
    changed["subject"][1]["digest"]["gitCommit"] = "8" * 40
    result = verify_provenance(with_payload(envelope, changed), logs, fleet_key)
    assert set(kinds(result)) == {ProblemKind.BAD_SIGNATURE, ProblemKind.SUBJECT_MISMATCH}


def test_a_log_of_another_run_is_named() -> None:
    key = Ed25519PrivateKey.generate()
    logs = run_logs()
    logs["notify"] = run_logs("another-run")["notify"]
    envelope = sign_statement(run_statement(run_facts(), list(logs.values())), key)
    result = verify_provenance(envelope, logs, key)
    assert kinds(result) == [ProblemKind.STEP_LOG_OTHER_RUN]
    assert result.problems[0].step == "notify"


def test_a_signed_payload_that_is_no_statement_is_named() -> None:
    key = Ed25519PrivateKey.generate()
    envelope = sign_statement({"hello": "world"}, key)
    assert kinds(verify_provenance(envelope, {}, key)) == [ProblemKind.NOT_A_STATEMENT]


@pytest.mark.parametrize(
    "envelope",
    [
        [],
        {},
        {"payload": "not base64!", "payloadType": PAYLOAD_TYPE, "signatures": []},
        {"payload": "e30=", "payloadType": PAYLOAD_TYPE, "signatures": [{"sig": "AA=="}]},
        {"payload": "e30=", "payloadType": PAYLOAD_TYPE, "signatures": "x"},
    ],
    ids=["a-list", "empty", "bad-base64", "signature-without-keyid", "signatures-not-a-list"],
)
def test_garbage_envelopes_are_reported_not_raised(envelope: Any) -> None:
    key = Ed25519PrivateKey.generate()
    result = verify_provenance(envelope, run_logs(), key)
    assert not result.ok
    assert kinds(result) == [ProblemKind.MALFORMED_ENVELOPE]


def test_verifying_leaves_the_callers_envelope_as_it_was(
    signed: tuple[dict[str, Any], dict[str, dict[str, Any]], dict[str, Any]],
    fleet_key: Ed25519PrivateKey,
) -> None:
    _, logs, envelope = signed
    before = copy.deepcopy(envelope)
    verify_provenance(envelope, logs, fleet_key)
    assert envelope == before
    assert verify_provenance(envelope, logs, fleet_key).ok


def test_another_payload_type_is_named(
    signed: tuple[dict[str, Any], dict[str, dict[str, Any]], dict[str, Any]],
    fleet_key: Ed25519PrivateKey,
) -> None:
    _, logs, envelope = signed
    envelope["payloadType"] = "application/json"
    # The type is signed too (DSSE's PAE): changing it breaks the signature as well.
    assert set(kinds(verify_provenance(envelope, logs, fleet_key))) == {
        ProblemKind.WRONG_PAYLOAD_TYPE,
        ProblemKind.BAD_SIGNATURE,
    }


# ---- the fleet's key ------------------------------------------------------------------------


@pytest.fixture
def clean_settings(monkeypatch: pytest.MonkeyPatch) -> Iterator[pytest.MonkeyPatch]:
    monkeypatch.delenv("DRYDOCK_WORKFLOW_PROVENANCE_KEY_FILE", raising=False)
    get_settings.cache_clear()
    try:
        yield monkeypatch
    finally:
        monkeypatch.undo()
        get_settings.cache_clear()


def test_the_key_file_is_used_when_set(tmp_path: Path, clean_settings: pytest.MonkeyPatch) -> None:
    key = Ed25519PrivateKey.generate()
    path = tmp_path / "provenance.pem"
    path.write_bytes(key.private_bytes(Encoding.PEM, PrivateFormat.PKCS8, NoEncryption()))
    clean_settings.setenv("DRYDOCK_WORKFLOW_PROVENANCE_KEY_FILE", str(path))
    get_settings.cache_clear()

    assert key_id(fleet_signing_key()) == key_id(key)
    envelope = sign_statement(run_statement(run_facts(), list(run_logs().values())), key)
    assert verify_provenance(envelope, run_logs(), fleet_public_key_pem()).ok


def test_the_key_is_derived_from_the_secret_key_the_same_in_every_process(
    clean_settings: pytest.MonkeyPatch,
) -> None:
    secret = Fernet.generate_key().decode()
    clean_settings.setenv("DRYDOCK_SECRET_KEY", secret)
    get_settings.cache_clear()
    first = fleet_signing_key()
    get_settings.cache_clear()
    assert key_id(fleet_signing_key()) == key_id(first)
    assert key_id(fleet_signing_key(Settings(secret_key=secret))) == key_id(first)

    other = fleet_signing_key(Settings(secret_key=Fernet.generate_key().decode()))
    assert key_id(other) != key_id(first)
    # Its own derivation: not the remediation approvals' key from the same secret.
    seed = first.private_bytes(Encoding.Raw, PrivateFormat.Raw, NoEncryption())
    assert seed != approvals_signing_key(Settings(secret_key=secret, remediation_signing_key=None))


def test_no_key_configured_says_what_to_set(clean_settings: pytest.MonkeyPatch) -> None:
    settings = Settings(secret_key=None, workflow_provenance_key_file=None)
    with pytest.raises(ProvenanceKeyUnavailableError) as raised:
        fleet_signing_key(settings)
    assert "DRYDOCK_WORKFLOW_PROVENANCE_KEY_FILE" in str(raised.value)
    assert "DRYDOCK_SECRET_KEY" in str(raised.value)


def test_a_key_file_that_holds_no_ed25519_key_is_refused_by_name(tmp_path: Path) -> None:
    not_pem = tmp_path / "notes.txt"
    not_pem.write_text("hello")
    rsa_pem = tmp_path / "rsa.pem"
    rsa_pem.write_bytes(
        rsa.generate_private_key(public_exponent=65537, key_size=2048).private_bytes(
            Encoding.PEM, PrivateFormat.PKCS8, NoEncryption()
        )
    )
    for path, why in [
        (tmp_path / "absent.pem", "cannot be read"),
        (not_pem, "no unencrypted PEM private key"),
        (rsa_pem, "not an Ed25519 key"),
    ]:
        with pytest.raises(ProvenanceKeyError, match=why) as raised:
            fleet_signing_key(Settings(workflow_provenance_key_file=str(path)))
        assert str(path) in str(raised.value)


def test_step_log_digest_is_of_the_canonical_bytes() -> None:
    log = run_logs()["lint"]
    assert canonical_json({"b": [1, {"d": "é", "c": None}], "a": 1}) == (
        '{"a":1,"b":[1,{"c":null,"d":"é"}]}'.encode()
    )
    assert step_log_digest(log) == hashlib.sha256(canonical_json(log)).hexdigest()

"""Workflow definitions: validated whole (every problem at its place, all at once), stored as
versions of a tenant's workflow, and read back from the CLI and over HTTP, per tenant."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from pydantic import ValidationError

from kernel.errors import field_problems
from tasks.workflows.definitions import (
    MAX_STEP_TIMEOUT_SECONDS,
    MAX_STEPS,
    WorkflowDefinition,
    cycles,
    parse_definition,
)

DIGEST = "sha256:" + "a" * 64

VALID_YAML = f"""
name: build-and-review
description: lint, review and build
steps:
  - name: lint
    kind: container
    image: registry.example.com/tools/lint@{DIGEST}
    command: [ruff, check, .]
    env:
      RUFF_CACHE_DIR: /workspace/.cache
      GITHUB_TOKEN: {{secret: github-token}}
  - name: review
    kind: agent
    needs: [lint]
    provider: anthropic
    model: claude-sonnet
    prompt: |
      Review the changes of {{{{ workflow.name }}}} in {{{{ workspace }}}}.
      {{% for name in steps %}}- {{{{ name | upper }}}}{{% endfor %}}
    timeout_seconds: 1200
    retries: 2
  - name: build
    kind: job
    needs: [review, lint]
    task: builds.canary
    payload: {{message: built}}
"""


def problems_of(document: Any, **kwargs: Any) -> dict[str, str]:
    """Each problem's place and message (without pydantic's "Value error, ")."""
    with pytest.raises(ValidationError) as caught:
        parse_definition(document, **kwargs)
    found: dict[str, str] = {}
    for problem in field_problems(caught.value, whole="(definition)"):
        message = problem.problem.removeprefix("Value error, ")
        found[problem.field] = (
            f"{found[problem.field]} | {message}" if problem.field in found else message
        )
    return found


def container(name: str, **extra: Any) -> dict[str, Any]:
    return {
        "name": name,
        "kind": "container",
        "image": "r.example/a:1",
        "command": ["true"],
    } | extra


# ---- validation, without a store ---------------------------------------------------------------


def test_yaml_and_json_definitions_parse_with_defaults_and_an_order() -> None:
    import yaml

    document = yaml.safe_load(VALID_YAML)
    definition = parse_definition(document, tenant="acme")
    assert definition.execution_order() == ["lint", "review", "build"]
    lint = definition.model_dump(mode="json")["steps"][0]
    assert lint["network"] is False and lint["timeout_seconds"] == 600 and lint["retries"] == 0
    assert lint["env"]["GITHUB_TOKEN"] == {"secret": "github-token"}
    # The same as JSON, read strictly as the API reads bodies.
    again = parse_definition(json.loads(json.dumps(document)), strict=True)
    assert again == definition


def test_every_problem_is_named_at_its_place_all_at_once() -> None:
    found = problems_of(
        {
            "name": "Not A Name",
            "steps": [
                container("fetch", image="no-registry/app", needs=["ghost", "Not Valid"]),
                container("fetch", command=[]),
                container("Bad Name", timeout_seconds=MAX_STEP_TIMEOUT_SECONDS + 1, retries=11),
                {
                    "name": "ask",
                    "kind": "agent",
                    "provider": "Open AI",
                    "model": " ",
                    "prompt": "{{ steps | nosuchfilter }}",
                },
                {"name": "tpl", "kind": "agent", "provider": "p", "model": "m", "prompt": "{% if"},
                {
                    "name": "vars",
                    "kind": "agent",
                    "provider": "p",
                    "model": "m",
                    "prompt": "{{ x }}",
                },
                {"name": "odd", "kind": "robot"},
                {"name": "nokind"},
                container("untagged", image="r.example/app"),
                container("argv", command=["true", 3]),
            ],
        }
    )
    assert found["name"].startswith("String should match pattern")
    assert "must start with the registry host" in found["steps.0.image"]
    assert found["steps.0.needs.0"].startswith("no step is named ghost (steps: fetch, ")
    # A needed name that is no step name is named once, by the pattern it breaks.
    assert found["steps.0.needs.1"].startswith("String should match pattern")
    assert found["steps.1.name"] == "another step is named fetch (steps.0)"
    assert "at least 1 item" in found["steps.1.command"]
    assert found["steps.2.name"].startswith("String should match pattern")
    assert "less than or equal to 3600" in found["steps.2.timeout_seconds"]
    assert "less than or equal to 10" in found["steps.2.retries"]
    assert found["steps.3.provider"].startswith("String should match pattern")
    assert found["steps.3.model"] == "name the provider's model"
    assert "No filter named 'nosuchfilter'" in found["steps.3.prompt"]
    assert found["steps.4.prompt"].startswith("not a template: line 1:")
    assert found["steps.5.prompt"].startswith("refers to x: a prompt may use only run, step, ")
    assert "does not match any of the expected tags" in found["steps.6.kind"]
    assert "Unable to extract tag" in found["steps.7.kind"]
    assert "names no tag or digest" in found["steps.8.image"]
    assert found["steps.9.command.1"] == "Input should be a valid string"
    # Listed in order: the definition's own, then step by step.
    assert next(iter(found)) == "name"


def test_a_cycle_is_named_by_its_steps_and_a_self_need_as_such() -> None:
    found = problems_of(
        {
            "name": "loops",
            "steps": [
                container("a", needs=["c"]),
                container("b", needs=["a"]),
                container("c", needs=["b"]),
                container("d", needs=["d"]),
                container("e", needs=["a"]),
            ],
        }
    )
    assert found == {
        "steps.0.needs": "a cycle: a -> c -> b -> a (each needs the next)",
        "steps.3.needs": "d needs itself",
    }
    # Two cycles sharing no step are both named; a long chain is no cycle.
    assert cycles({"x": ["y"], "y": ["x"], "p": ["q"], "q": ["p"]}) == [["x", "y"], ["p", "q"]]
    chain = {f"s{i}": [f"s{i - 1}"] if i else [] for i in range(MAX_STEPS)}
    assert cycles(chain) == []


def test_sizes_are_bounded() -> None:
    found = problems_of(
        {
            "name": "big",
            "steps": [container(f"s{i}") for i in range(MAX_STEPS + 1)],
        }
    )
    assert "at most 200 items" in found["steps"]
    found = problems_of({"name": "none", "steps": []})
    assert "at least 1 item" in found["steps"]
    found = problems_of(
        {
            "name": "wide",
            "steps": [
                container("s", command=["x"] * 257, env={f"V{i}": "v" for i in range(101)}),
                {
                    "name": "p",
                    "kind": "agent",
                    "provider": "p",
                    "model": "m",
                    "prompt": "x" * 65537,
                },
            ],
        }
    )
    assert "at most 256 items" in found["steps.0.command"]
    assert "at most 100 items" in found["steps.0.env"]
    assert "at most 65536 characters" in found["steps.1.prompt"]


def test_job_steps_name_known_tasks_and_their_payload_problems() -> None:
    found = problems_of(
        {
            "name": "jobs",
            "steps": [
                {"name": "a", "kind": "job", "task": "builds.nope"},
                {"name": "b", "kind": "job", "task": "workflows.run"},
                {"name": "c", "kind": "job", "task": "builds.canary", "payload": {"mesage": "x"}},
                {
                    "name": "d",
                    "kind": "job",
                    "task": "builds.canary",
                    "payload": {"sleep_seconds": "soon"},
                },
                {"name": "e", "kind": "job", "task": "builds.nope", "payload": {"x": 1}},
            ],
        }
    )
    assert found["steps.0.task"].startswith("unknown task 'builds.nope'; known tasks: ")
    assert "builds.build_image" in found["steps.0.task"]
    assert found["steps.1.task"] == "workflows.run: a workflow cannot start workflow tasks"
    assert found["steps.2.payload.mesage"] == "Extra inputs are not permitted"
    assert found["steps.3.payload.sleep_seconds"].startswith("Input should be a valid number")
    # A payload of an unknown task cannot be judged: only the task is named.
    assert "steps.4.payload" not in " ".join(found)


def test_no_secret_is_stored_in_a_definition() -> None:
    found = problems_of(
        {
            "name": "secrets",
            "steps": [
                container(
                    "env",
                    env={
                        "API_KEY": "abc",
                        "db_password": "hunter2",
                        "DATABASE_URL": "postgresql://u:pw@db/x",
                        "PLAIN": "fine",
                        "NPM_TOKEN": {"secret": "npm"},
                        "1BAD": "x",
                    },
                    command=["curl", "-H", "Authorization: Bearer abcdefghijklmnop", "x"],
                ),
                {
                    "name": "run",
                    "kind": "job",
                    "task": "remediation.run_playbook",
                    "payload": {
                        "run_id": "5f0c0000-0000-4000-8000-000000000000",
                        "tenant": "acme",
                        "approval_token": "eyJ",
                    },
                },
                {
                    "name": "other",
                    "kind": "job",
                    "task": "remediation.run_playbook",
                    "payload": {"run_id": "5f0c0000-0000-4000-8000-000000000000", "tenant": "x"},
                },
            ],
        },
        tenant="acme",
    )
    secret_reference = 'use a secret reference, {"secret": "<name>"}'
    assert found["steps.0.env.API_KEY"].endswith(secret_reference)
    assert "looks secret" in found["steps.0.env.API_KEY"]
    assert found["steps.0.env.db_password"].endswith(secret_reference)
    assert found["steps.0.env.DATABASE_URL"].startswith("carries a credential")
    assert "letters, digits and '_'" in found["steps.0.env.1BAD"]
    assert found["steps.0.command.2"].startswith("carries a credential")
    assert "looks secret" in found["steps.1.payload.approval_token"]
    assert found["steps.2.payload.tenant"] == "names tenant 'x'; the workflow is acme's"
    assert not {"steps.0.env.PLAIN", "steps.0.env.NPM_TOKEN"} & set(found)
    # The values never appear in what is said about them.
    assert "hunter2" not in json.dumps(found) and "abcdefghijklmnop" not in json.dumps(found)


# ---- the store, the CLI and the API ------------------------------------------------------------


@pytest.fixture
def empty_store(clean_state: None) -> Iterator[None]:
    # clean_state (tests/conftest.py) empties workflow_definitions with the other tables.
    yield


def drydock(*args: str, stdin: str | None = None) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "drydock.cli", *args],
        capture_output=True,
        text=True,
        input=stdin,
        env={**os.environ, "COLUMNS": "250"},
        timeout=60,
    )


def test_definitions_become_versions_from_the_cli(empty_store: None, tmp_path: Path) -> None:
    definition = tmp_path / "wf.yaml"
    definition.write_text(VALID_YAML)
    created = drydock("workflows", "create", str(definition), "--tenant", "acme")
    assert created.returncode == 0, created.stderr
    assert "workflow acme/build-and-review version 1 (3 steps)" in created.stdout
    as_json = tmp_path / "wf.json"
    document = parse_definition(__import__("yaml").safe_load(VALID_YAML)).model_dump(mode="json")
    as_json.write_text(json.dumps(document))
    again = drydock("workflows", "create", str(as_json), "--tenant", "acme", "--by", "alice")
    assert "version 2" in again.stdout, again.stderr
    other = drydock("workflows", "create", "-", "--tenant", "globex", stdin=VALID_YAML)
    assert "globex/build-and-review version 1" in other.stdout, other.stderr

    listed = drydock("workflows", "list", "--tenant", "acme")
    assert "acme/build-and-review" in listed.stdout and "globex" not in listed.stdout
    assert "agent, container, job" in listed.stdout
    everyone = drydock("workflows", "list")
    assert "acme/build-and-review" in everyone.stdout and "globex/build" in everyone.stdout

    shown = json.loads(
        drydock("workflows", "show", "build-and-review", "--tenant", "acme", "--json").stdout
    )
    assert shown["versions"] == [1, 2] and shown["version"] == 2
    assert shown["created_by"] == "alice" and shown["order"] == ["lint", "review", "build"]
    assert shown["definition"]["steps"][0]["env"]["GITHUB_TOKEN"] == {"secret": "github-token"}
    assert shown["digest"].startswith("sha256:")
    first = json.loads(
        drydock(
            "workflows", "show", "build-and-review", "--tenant", "acme", "--version", "1", "--json"
        ).stdout
    )
    assert first["version"] == 1 and first["digest"] == shown["digest"]  # the same definition
    text = drydock("workflows", "show", "build-and-review", "--tenant", "acme").stdout
    assert "review  agent: anthropic/claude-sonnet after lint" in text

    missing = drydock("workflows", "show", "build-and-review", "--tenant", "nobody")
    assert missing.returncode == 1 and "Traceback" not in missing.stderr
    assert missing.stderr.strip() == "error: tenant nobody has no workflow build-and-review"

    # A bad definition: one line per problem, each at its place; nothing stored.
    definition.write_text(
        "name: bad\nsteps:\n  - {name: a, kind: container, image: nohost, command: [x], "
        "needs: [b]}\n  - {name: b, kind: container, image: r.io/x:1, command: [x], needs: [a]}\n"
        "  - {name: c, kind: container, image: r.io/x:1, command: [x], env: {TOKEN: t}}\n"
    )
    bad = drydock("workflows", "create", str(definition), "--tenant", "acme")
    assert bad.returncode == 1 and "Traceback" not in bad.stderr
    lines = bad.stderr.strip().splitlines()
    assert lines[0] == f"error: {definition}: invalid workflow definition, 3 problems:"
    assert lines[1].startswith("  steps.0.image: invalid image reference 'nohost'")
    assert lines[2] == "  steps.0.needs: a cycle: a -> b -> a (each needs the next)"
    assert lines[3].startswith("  steps.2.env.TOKEN: TOKEN looks secret")
    assert "bad" not in drydock("workflows", "list").stdout
    unreadable = drydock("workflows", "create", str(tmp_path / "none.yaml"), "--tenant", "acme")
    assert unreadable.returncode == 1 and unreadable.stderr.startswith("error: cannot read")
    definition.write_text("- just\n- a list\n")
    listed_doc = drydock("workflows", "create", str(definition), "--tenant", "acme")
    assert "expected a mapping" in listed_doc.stderr


def _token(name: str, tenant: str | None, *scopes: str) -> dict[str, str]:
    from tests.test_api import bearer, make_token

    return bearer(make_token(name, *scopes, tenant=tenant))


def test_workflows_over_http_per_tenant(empty_store: None) -> None:
    import yaml
    from fastapi.testclient import TestClient

    from drydock.api import app

    api = TestClient(app)
    scopes = ("workflows.define", "workflows.read", "builds.*")
    acme = _token("acme-ci", "acme", *scopes)
    globex = _token("globex-ci", "globex", *scopes)
    reader = _token("acme-reader", "acme", "workflows.read")
    no_builds = _token("acme-nobuilds", "acme", "workflows.define")
    operator = _token("ops", None, "*")
    document = yaml.safe_load(VALID_YAML)

    created = api.post("/v1/workflows", json=document, headers=acme)
    assert created.status_code == 201, created.text
    body = created.json()
    assert (body["tenant"], body["name"], body["version"]) == ("acme", "build-and-review", 1)
    assert body["order"] == ["lint", "review", "build"] and body["steps"] == 3
    assert api.post("/v1/workflows", json=document, headers=acme).json()["version"] == 2
    # An operator names the tenant, in the query or beside the definition.
    assert api.post("/v1/workflows", json=document, headers=operator).status_code == 403
    by_query = api.post("/v1/workflows?tenant=initech", json=document, headers=operator)
    assert by_query.status_code == 201 and by_query.json()["tenant"] == "initech"
    in_body = api.post("/v1/workflows", json={**document, "tenant": "initech"}, headers=operator)
    assert in_body.status_code == 201 and in_body.json()["version"] == 2
    both = api.post("/v1/workflows?tenant=a", json={**document, "tenant": "b"}, headers=operator)
    assert both.status_code == 403
    # A tenant token defines its own tenant's only, needs the scope, and may name only tasks
    # it could enqueue.
    assert api.post("/v1/workflows?tenant=acme", json=document, headers=globex).status_code == 403
    assert api.post("/v1/workflows", json=document, headers=reader).status_code == 403
    refused = api.post("/v1/workflows", json=document, headers=no_builds)
    assert refused.status_code == 403 and "may not enqueue builds.canary (step build)" in (
        refused.text
    )

    # Reads: each tenant sees its own; another tenant's is 404, as if it did not exist.
    assert [w["tenant"] for w in api.get("/v1/workflows", headers=reader).json()] == ["acme"]
    assert api.get("/v1/workflows", headers=globex).json() == []
    assert api.get("/v1/workflows?tenant=acme", headers=globex).status_code == 403
    shown = api.get("/v1/workflows/build-and-review", headers=reader)
    assert shown.status_code == 200 and shown.json()["versions"] == [1, 2]
    assert shown.json()["definition"]["steps"][1]["prompt"].startswith("Review the changes")
    first = api.get("/v1/workflows/build-and-review?version=1", headers=reader)
    assert first.json()["version"] == 1
    assert api.get("/v1/workflows/build-and-review", headers=globex).status_code == 404
    assert api.get("/v1/workflows/build-and-review?version=9", headers=reader).status_code == 404
    everyone = api.get("/v1/workflows", headers=operator).json()
    assert {(w["tenant"], w["version"]) for w in everyone} == {("acme", 2), ("initech", 2)}
    assert api.get("/v1/workflows", headers=no_builds).status_code == 403

    # 422: the API's problem format, one entry per problem, each placed in the body.
    bad = {
        "name": "bad",
        "steps": [
            container("a", needs=["b", "nobody"], env={"SECRET": "x"}),
            container("b", needs=["a"], timeout_seconds="60"),
        ],
    }
    answer = api.post("/v1/workflows", json=bad, headers=acme)
    assert answer.status_code == 422
    problems = {tuple(p["loc"]): p["msg"] for p in answer.json()["detail"]}
    assert problems[("body", "steps", 0, "env", "SECRET")].startswith("Value error, SECRET looks")
    assert problems[("body", "steps", 0, "needs", 1)].startswith("Value error, no step is named")
    assert problems[("body", "steps", 0, "needs")] == (
        "Value error, a cycle: a -> b -> a (each needs the next)"
    )
    # Strict JSON: "60" is not an integer.
    assert problems[("body", "steps", 1, "timeout_seconds")] == "Input should be a valid integer"
    assert "steps.0.env.SECRET" in answer.json()["message"]
    for empty in (b"", b"[]"):
        nothing = api.post(
            "/v1/workflows", content=empty, headers={**acme, "Content-Type": "application/json"}
        )
        assert nothing.status_code == 422 and nothing.json()["detail"][0]["loc"] == ["body"]
    bad_tenant = api.post("/v1/workflows", json={**document, "tenant": 5}, headers=operator)
    assert bad_tenant.status_code == 422
    assert bad_tenant.json()["detail"][0]["loc"] == ["body", "tenant"]


def test_the_openapi_document_publishes_the_definition_schema() -> None:
    from drydock.api import app

    document = app.openapi()
    body = document["paths"]["/v1/workflows"]["post"]["requestBody"]
    assert body["required"] is True
    ref = body["content"]["application/json"]["schema"]["$ref"]
    components = document["components"]["schemas"]
    published = components[ref.rsplit("/", 1)[1]]
    assert {"name", "steps", "tenant"} <= set(published["properties"])
    steps = published["properties"]["steps"]
    assert steps["maxItems"] == MAX_STEPS and steps["minItems"] == 1
    assert steps["items"]["discriminator"]["propertyName"] == "kind"
    container_step = components["WorkflowContainerStep"]
    assert container_step["properties"]["network"]["default"] is False
    timeout = container_step["properties"]["timeout_seconds"]
    assert timeout["maximum"] == MAX_STEP_TIMEOUT_SECONDS
    assert set(components["WorkflowJobStep"]["required"]) >= {"name", "kind", "task"}
    # The model's own schema is what is published, names aside.
    assert (
        WorkflowDefinition.model_json_schema()["properties"].keys()
        <= published["properties"].keys()
    )
    for path in ("/v1/workflows", "/v1/workflows/{name}"):
        assert "get" in document["paths"][path]

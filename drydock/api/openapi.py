"""The OpenAPI document, made to say exactly what the API accepts and answers.

FastAPI writes most of it from the routes; this adds what it cannot know:

- each task's route (``POST /v1/jobs/<task>``) takes that task's payload schema, required when
  the payload has required fields;
- a playbook's ``spec`` is the schema of its executor's spec (one alternative per executor);
- every string a request carries refuses NUL, every number stays within ±(2^63 - 1), and free
  JSON (``data``, a spec's values) is ``StorableJSON``: what the edge (``drydock.api.edge``)
  accepts;
- the statuses every route can answer: 401 (token), 413/415/422 (bodies, parameters), 503
  (store or broker unreachable), with the API's problem format for 422.
"""

from __future__ import annotations

import copy
from collections.abc import Iterator
from typing import Any

from fastapi import FastAPI
from fastapi.openapi.utils import get_openapi
from pydantic import BaseModel

from catalog import CATALOG
from drydock.api.edge import MAX_NUMBER
from drydock.api.errors import ErrorBody, ProblemBody
from drydock.api.inputs import NO_NUL
from drydock.api.stream import StreamEventBody
from drydock.api.workflows import publish as publish_workflows
from tasks.remediation.executors import spec_model_for
from tasks.remediation.executors.base import ExecutorKind
from tasks.remediation.playbooks import PlaybookDefinition, max_timeout_seconds

REF = "#/components/schemas/{model}"
STORABLE_JSON = "StorableJSON"
# String formats whose every valid value is free of NUL on its own.
_NUL_FREE_FORMATS = {"uuid", "date-time", "date", "time", "duration", "ipv4", "ipv6"}
# "base64" is pydantic's name, not a JSON Schema format: readers would take any string.
BASE64_PATTERN = r"^(?:[A-Za-z0-9+/]{4})*(?:[A-Za-z0-9+/]{2}==|[A-Za-z0-9+/]{3}=)?$"
# Escapes through which a pattern could admit a NUL character (with `.` outside a class and
# negated classes); a pattern without any of them only admits the characters it lists.
_NUL_ADMITTING_ESCAPES = ("W", "S", "D", "x00", "0", "u0000", "x{0")
# Keywords that say nothing about a value: a schema of only these admits any JSON.
_ANNOTATIONS = {
    "title",
    "description",
    "default",
    "examples",
    "deprecated",
    "readOnly",
    "writeOnly",
}
_STORE_FREE_PATHS = {"/health/live"}


def build(app: FastAPI, description: str) -> dict[str, Any]:
    schema = get_openapi(
        title=app.title,
        version=app.version,
        summary=app.summary,
        description=description,
        routes=app.routes,
    )
    components: dict[str, Any] = schema.setdefault("components", {}).setdefault("schemas", {})
    for model in (ErrorBody, ProblemBody, StreamEventBody):
        _add_model(components, model)
    components[STORABLE_JSON] = _storable_json()
    _publish_payloads(schema, components)
    _publish_playbooks(schema, components)
    publish_workflows(schema, components, REF)
    for path, method, operation in _operations(schema):
        _declare_statuses(path, method, operation)
        for parameter in operation.get("parameters", []):
            _not_null(parameter["schema"])
            if parameter["in"] == "header" and parameter["name"] == "If-Match":
                # Optional to FastAPI only so that its absence is the 428 it is, not a 422.
                parameter["required"] = True
    for name in _request_schema_names(schema, components):
        _make_storable(components[name])
    for unused in ("HTTPValidationError", "ValidationError"):
        components.pop(unused, None)
    return schema


def _operations(schema: dict[str, Any]) -> Iterator[tuple[str, str, dict[str, Any]]]:
    for path, item in schema["paths"].items():
        for method, operation in item.items():
            yield path, method, operation


def _add_model(components: dict[str, Any], model: type[BaseModel]) -> str:
    definition = model.model_json_schema(ref_template=REF)
    for name, nested in definition.pop("$defs", {}).items():
        components.setdefault(name, nested)
    components[model.__name__] = definition
    return model.__name__


def _ref(name: str) -> dict[str, str]:
    return {"$ref": REF.format(model=name)}


def _json(name: str, description: str) -> dict[str, Any]:
    return {"description": description, "content": {"application/json": {"schema": _ref(name)}}}


def _storable_json() -> dict[str, Any]:
    return {
        "description": "Any JSON value whose strings and keys hold no NUL character and whose "
        f"numbers lie within ±{MAX_NUMBER}.",
        "anyOf": [
            {"type": "string", "pattern": NO_NUL},
            {"type": "number", "minimum": -MAX_NUMBER, "maximum": MAX_NUMBER},
            {"type": "boolean"},
            {"type": "null"},
            {"type": "array", "items": _ref(STORABLE_JSON)},
            {
                "type": "object",
                "propertyNames": {"pattern": NO_NUL},
                "additionalProperties": _ref(STORABLE_JSON),
            },
        ],
    }


# ---- the payloads of POST /v1/jobs/<task> ------------------------------------------------------


def _publish_payloads(schema: dict[str, Any], components: dict[str, Any]) -> None:
    for spec in sorted(CATALOG.values(), key=lambda s: s.name):
        payload = spec.payload.model_json_schema(ref_template=REF)
        for name, definition in payload.pop("$defs", {}).items():
            components.setdefault(name, definition)
        payload["title"] = spec.name
        payload["description"] = spec.summary
        key = "payload." + spec.name
        components[key] = payload
        operation = schema["paths"][f"/v1/jobs/{spec.name}"]["post"]
        operation["requestBody"] = {
            # A payload whose fields all have defaults may be sent as no body at all ({}).
            "required": bool(payload.get("required")),
            "description": f"The payload of {spec.name}.",
            "content": {"application/json": {"schema": _ref(key)}},
        }


# ---- playbooks: the spec of each executor ------------------------------------------------------


def _publish_playbooks(schema: dict[str, Any], components: dict[str, Any]) -> None:
    # The route reads its body itself (strictly, spec first): FastAPI does not see the model.
    _add_model(components, PlaybookDefinition)
    schema["paths"]["/v1/remediation/playbooks"]["post"]["requestBody"] = {
        "required": True,
        "content": {"application/json": {"schema": _ref("PlaybookDefinition")}},
    }
    base = components["PlaybookDefinition"]
    # The model's own validator refuses longer ones: a limit that depends on the settings.
    base["properties"]["timeout_seconds"]["maximum"] = max_timeout_seconds()
    alternatives = []
    mapping = {}
    for kind in ExecutorKind:
        spec_name = _add_model(components, spec_model_for(kind))
        variant = copy.deepcopy(base)
        variant["title"] = f"PlaybookDefinition ({kind.value})"
        variant["properties"]["executor"] = {"type": "string", "const": kind.value}
        variant["properties"]["spec"] = {**_ref(spec_name), "description": f"A {kind} spec."}
        name = f"PlaybookDefinition.{kind.value}"
        components[name] = variant
        alternatives.append(_ref(name))
        mapping[kind.value] = REF.format(model=name)
    components["PlaybookDefinition"] = {
        "title": "PlaybookDefinition",
        "description": base.get("description", ""),
        "oneOf": alternatives,
        "discriminator": {"propertyName": "executor", "mapping": mapping},
    }
    _publish_drafts(components)


def _publish_drafts(components: dict[str, Any]) -> None:
    """A workspace's draft is a playbook definition without its name (the workspace's
    playbook names it): each variant again, less ``name``, in place of the free object the
    workspace bodies declare (tasks.remediation.workspaces checks it with the same models)."""
    alternatives = []
    mapping = {}
    for kind in ExecutorKind:
        draft = copy.deepcopy(components[f"PlaybookDefinition.{kind.value}"])
        draft["title"] = f"PlaybookDraft ({kind.value})"
        draft["properties"].pop("name")
        draft["required"] = [field for field in draft.get("required", []) if field != "name"]
        name = f"PlaybookDraft.{kind.value}"
        components[name] = draft
        alternatives.append(_ref(name))
        mapping[kind.value] = REF.format(model=name)
    components["PlaybookDraft"] = {
        "title": "PlaybookDraft",
        "oneOf": alternatives,
        "discriminator": {"propertyName": "executor", "mapping": mapping},
    }
    for body in ("WorkspaceCreateBody", "WorkspaceEditBody"):
        draft_property = components[body]["properties"]["draft"]
        description = draft_property.get("description", "")
        components[body]["properties"]["draft"] = {
            "anyOf": [_ref("PlaybookDraft"), {"type": "null"}],
            "description": description,
        }


def _not_null(schema: dict[str, Any]) -> None:
    """A parameter is absent or has a value: ``str | None`` means optional, not ``null``, which
    a query or a header can only carry as the text "null" (an asset named null, say)."""
    branches = schema.get("anyOf")
    if not isinstance(branches, list):
        return
    kept = [branch for branch in branches if branch != {"type": "null"}]
    if len(kept) == 1:
        del schema["anyOf"]
        schema.update(kept[0])
    else:
        schema["anyOf"] = kept


# ---- statuses every route shares ---------------------------------------------------------------


def _declare_statuses(path: str, method: str, operation: dict[str, Any]) -> None:
    responses: dict[str, Any] = operation.setdefault("responses", {})
    if operation.get("security"):
        responses.setdefault("401", _json("ErrorBody", "Missing, invalid or revoked token."))
    if method == "post":
        responses.setdefault(
            "413",
            _json("ErrorBody", "The body is over DRYDOCK_MAX_PAYLOAD_BYTES (plus framing)."),
        )
        responses.setdefault("415", _json("ErrorBody", "The body is not JSON."))
    if method == "post" or operation.get("parameters"):
        responses["422"] = _json(
            "ProblemBody", "Invalid input: one entry per problem, each with its location."
        )
    if path not in _STORE_FREE_PATHS:
        responses.setdefault(
            "503",
            _json("ErrorBody", "The store or the broker is unreachable; retry after Retry-After."),
        )


# ---- request schemas hold only what the store can keep -----------------------------------------


def _request_schema_names(schema: dict[str, Any], components: dict[str, Any]) -> set[str]:
    """Every component a request body refers to, directly or through others."""
    pending = [
        body["content"]["application/json"]["schema"]
        for _, _, operation in _operations(schema)
        if (body := operation.get("requestBody"))
    ]
    seen: set[str] = set()
    while pending:
        node = pending.pop()
        if isinstance(node, dict):
            ref = node.get("$ref")
            if isinstance(ref, str) and ref.startswith("#/components/schemas/"):
                name = ref.rsplit("/", 1)[1]
                if name not in seen:
                    seen.add(name)
                    pending.append(components[name])
            pending.extend(node.values())
        elif isinstance(node, list):
            pending.extend(node)
    seen.discard(STORABLE_JSON)
    return seen


def _is_any(node: dict[str, Any]) -> bool:
    return set(node) <= _ANNOTATIONS


def _make_storable(node: Any) -> None:
    """Constrain a request schema in place to what the edge accepts (see the module's doc)."""
    if isinstance(node, list):
        for item in node:
            _make_storable(item)
        return
    if not isinstance(node, dict) or "$ref" in node:
        return  # a referenced component is made storable on its own
    if _is_any(node):
        node.update(_ref(STORABLE_JSON))
        return
    kinds = node.get("type")
    types = {kinds} if isinstance(kinds, str) else set(kinds or ())
    if "string" in types and "enum" not in node and "const" not in node:
        _nul_free_string(node)
    if types & {"integer", "number"}:
        node["minimum"] = max(node.get("minimum", -MAX_NUMBER), -MAX_NUMBER)
        node["maximum"] = min(node.get("maximum", MAX_NUMBER), MAX_NUMBER)
    if "object" in types or "properties" in node:
        extra = node.get("additionalProperties", True)
        if extra is not False:
            node["propertyNames"] = {"pattern": NO_NUL}
            if extra is True or extra == {}:
                node["additionalProperties"] = _ref(STORABLE_JSON)
    for key in ("properties", "$defs"):
        for child in node.get(key, {}).values():
            _make_storable(child)
    for key in ("items", "additionalProperties", "anyOf", "oneOf", "allOf", "prefixItems"):
        if key in node:
            _make_storable(node[key])


def _nul_free_string(node: dict[str, Any]) -> None:
    pattern = node.get("pattern")
    if pattern is None and node.get("format") == "base64":
        node["pattern"] = BASE64_PATTERN
    elif pattern is None:
        if node.get("format") not in _NUL_FREE_FORMATS:
            node["pattern"] = NO_NUL
    elif _may_admit_nul(pattern):
        node.setdefault("allOf", []).append({"pattern": NO_NUL})


def _may_admit_nul(pattern: str) -> bool:
    """Conservatively: whether ``pattern`` could match a string holding NUL."""
    in_class = False
    index = 0
    while index < len(pattern):
        char = pattern[index]
        if char == "\\":
            if pattern.startswith(_NUL_ADMITTING_ESCAPES, index + 1):
                return True
            index += 2
            continue
        if in_class:
            in_class = char != "]"
        elif char == "[":
            in_class = True
            if pattern.startswith("^", index + 1):
                return True
        elif char == ".":
            return True
        index += 1
    return False

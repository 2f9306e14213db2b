"""Can a payload be kept? Bounded in size, and free of what PostgreSQL cannot store.

Every door checks the same rule, so a payload is refused with the same words wherever it comes
in: ``enqueue`` (``PayloadTooLargeError`` or ``PayloadInvalidError``), the HTTP API (413 or
422) and the worker, for a message that skipped both (a dead letter on its first delivery).

PostgreSQL's text and JSONB cannot hold the NUL character (``\\u0000``); left unchecked, it
fails the insert of the job's row with a database error instead of naming the field.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import orjson

from kernel.errors import FieldProblem, PayloadInvalidError, PayloadTooLargeError

NUL_PROBLEM = "must not contain the NUL character (\\u0000)"
# orjson writes NUL as this escape; a payload whose JSON lacks it has no NUL anywhere.
_NUL_ESCAPE = b"\\u0000"


def payload_json(payload: Mapping[str, Any]) -> bytes:
    """The payload's JSON form, whose length is what the size limit counts."""
    return orjson.dumps(payload, option=orjson.OPT_NON_STR_KEYS)


def check_storable(task_name: str, payload: Mapping[str, Any], *, limit_bytes: int) -> None:
    """Raise ``PayloadTooLargeError`` when the payload's JSON exceeds ``limit_bytes``, and
    ``PayloadInvalidError`` naming every field (or key) that holds a NUL character."""
    try:
        encoded = payload_json(payload)
    except orjson.JSONEncodeError as exc:  # nested past orjson's depth limit, say
        raise PayloadInvalidError(
            task_name, [FieldProblem("(payload)", f"cannot be encoded as JSON: {exc}")]
        ) from None
    if len(encoded) > limit_bytes:
        raise PayloadTooLargeError(task_name, len(encoded), limit_bytes)
    if _NUL_ESCAPE in encoded:
        problems = nul_problems(payload)
        if problems:
            raise PayloadInvalidError(task_name, problems)


def nul_problems(value: Any, *, whole: str = "(payload)") -> list[FieldProblem]:
    """One problem per field path whose name or value holds a NUL character."""
    found: list[FieldProblem] = []

    def walk(node: Any, path: tuple[str, ...]) -> None:
        if isinstance(node, str):
            if "\x00" in node:
                found.append(FieldProblem(".".join(path) or whole, NUL_PROBLEM))
        elif isinstance(node, Mapping):
            for key, child in node.items():
                name = str(key)
                if "\x00" in name:
                    shown = name.replace("\x00", "\\u0000")
                    where = ".".join((*path, shown))
                    found.append(FieldProblem(where, f"field name {NUL_PROBLEM}"))
                    continue
                walk(child, (*path, name))
        elif isinstance(node, list | tuple):
            for index, child in enumerate(node):
                walk(child, (*path, str(index)))

    walk(value, ())
    return found

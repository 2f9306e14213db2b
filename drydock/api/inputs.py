"""What the HTTP API accepts as input: bounded, NUL-free text, and the shared parameters.

Every string a caller sends may end up in PostgreSQL, whose text and JSONB cannot hold the NUL
character; every one is also bounded, so no filter or header can grow without limit. The bounds
are declared on the parameters themselves, so the OpenAPI document states exactly what the API
accepts and FastAPI refuses the rest with the API's 422 problem format (``drydock.api.errors``).
"""

from __future__ import annotations

import json
from typing import Annotated, Any, TypeVar

from fastapi import Header, Query, Request
from pydantic import BaseModel, ConfigDict, StringConstraints, model_validator

from tasks.remediation.playbooks import NAME_PATTERN

ModelT = TypeVar("ModelT", bound=BaseModel)

# Any text but NUL. Written with \x00 so that PostgreSQL, the Rust regex engine pydantic uses,
# Python's re and ECMAScript (the OpenAPI reader's dialect) all read it the same way.
NO_NUL = r"^[^\x00]*$"
NUL_CLASS = r"\x00"


def _whitespace_class() -> str:
    # Exactly the characters str.strip() removes: a name "without padding" is checked with strip()
    # in the store, so the published pattern must agree with it character for character.
    codes = [c for c in range(0x3001) if chr(c).isspace()]
    runs: list[list[int]] = []
    for code in codes:
        if runs and runs[-1][-1] == code - 1:
            runs[-1].append(code)
        else:
            runs.append([code])
    return "".join(
        f"\\u{run[0]:04x}" + (f"-\\u{run[-1]:04x}" if len(run) > 1 else "") for run in runs
    )


_SPACE = _whitespace_class()
# 1 to 100 characters, not starting or ending with whitespace, no NUL: what a tenant may be.
TENANT_PATTERN = f"^[^{NUL_CLASS}{_SPACE}](?:[^{NUL_CLASS}]{{0,98}}[^{NUL_CLASS}{_SPACE}])?$"
# Header values: visible ASCII, with spaces inside only (HTTP trims them at the ends anyway).
HEADER_TEXT_PATTERN = r"^[!-~](?:[ -~]*[!-~])?$"

MAX_TENANT_LENGTH = 100
# An asset is named by its id, its name within the tenant, or tenant/name.
MAX_ASSET_REF_LENGTH = 301
MAX_FILTER_LENGTH = 200
MAX_REASON_LENGTH = 2000
MAX_IDEMPOTENCY_KEY_LENGTH = 200
MAX_APPROVAL_TOKEN_LENGTH = 4096
# The longest page a listing returns.
MAX_PAGE = 500
# The largest offset a listing accepts: deeper than this is a purge, not a page.
MAX_OFFSET = 1_000_000
# Playbook versions are a PostgreSQL integer.
MAX_VERSION = 2**31 - 1

TenantName = Annotated[
    str,
    StringConstraints(min_length=1, max_length=MAX_TENANT_LENGTH, pattern=TENANT_PATTERN),
]
AssetRef = Annotated[
    str, StringConstraints(min_length=1, max_length=MAX_ASSET_REF_LENGTH, pattern=NO_NUL)
]
FilterText = Annotated[str, StringConstraints(max_length=MAX_FILTER_LENGTH, pattern=NO_NUL)]
ReasonText = Annotated[str, StringConstraints(max_length=MAX_REASON_LENGTH, pattern=NO_NUL)]
PlaybookName = Annotated[str, StringConstraints(pattern=f"^{NAME_PATTERN}$")]

TenantQuery = Annotated[
    TenantName | None,
    Query(description="Operator tokens: the tenant. Tenant tokens: their own, or omitted."),
]

IdempotencyKeyHeader = Annotated[
    str | None,
    Header(
        alias="Idempotency-Key",
        max_length=MAX_IDEMPOTENCY_KEY_LENGTH,
        pattern=HEADER_TEXT_PATTERN,
        description="Send the same key again to get the first job back instead of a new one "
        "(1 to 200 visible ASCII characters).",
    ),
]
TargetAssetHeader = Annotated[
    str | None,
    Header(
        alias="X-Drydock-Target-Asset",
        max_length=MAX_ASSET_REF_LENGTH,
        pattern=HEADER_TEXT_PATTERN,
        description=(
            "Bind the job to an asset (id, or name within the tenant): its quarantine "
            "preempts the job while it waits; a protected asset needs an approval token."
        ),
    ),
]
ApprovalHeader = Annotated[
    str | None,
    Header(
        alias="X-Drydock-Approval",
        max_length=MAX_APPROVAL_TOKEN_LENGTH,
        # Not the token's own pattern: admission reads the token and refuses a bad one (403).
        pattern=HEADER_TEXT_PATTERN,
        description="An approval token (POST /v1/admission/approvals) for a protected target.",
    ),
]


async def json_bytes(request: Request) -> bytes:
    """The request's body as sent. The edge (``drydock.api.edge``) has already refused bodies
    that are too large, not JSON, or hold what the store cannot keep."""
    return await request.body()


def json_value(raw: bytes, *, missing: Any) -> Any:
    """The body's JSON value (``missing`` when there is none), its integral numbers as ints."""
    return integral_floats_as_ints(json.loads(raw)) if raw else missing


def strictly(model: type[ModelT], value: Any) -> ModelT:
    """``value`` as ``model``, validated in strict JSON mode: a body must have the JSON types
    its published schema states (``true``, not ``1``; ``5``, not ``"5"``); the errors are raised
    as they are, for the caller to place."""
    return model.model_validate_json(json.dumps(value), strict=True)


def integral_floats_as_ints(value: Any) -> Any:
    """``5.0`` as ``5``, at any depth: to JSON (and its Schema's ``integer``) they are one
    number, while strict validation would refuse the first for an int field."""
    if isinstance(value, float) and value.is_integer():
        return int(value)
    if isinstance(value, dict):
        return {key: integral_floats_as_ints(child) for key, child in value.items()}
    if isinstance(value, list):
        return [integral_floats_as_ints(child) for child in value]
    return value


class JSONBody(BaseModel):
    """A request body FastAPI validates: strict, as ``strictly`` validates the others."""

    model_config = ConfigDict(strict=True)

    @model_validator(mode="before")
    @classmethod
    def _json_integers(cls, data: Any) -> Any:
        return integral_floats_as_ints(data)

"""Registry telemetry is checked against its versioned schema before anything is written."""

from __future__ import annotations

import pytest

from models.builds import RegistryEventKind
from tasks.pushes import telemetry

DIGEST = "sha256:" + "ab" * 32


def test_every_event_kind_has_a_published_schema() -> None:
    published = telemetry.json_schemas()
    assert published["schema_version"] == telemetry.SCHEMA_VERSION
    assert set(published["events"]) == {kind.value for kind in RegistryEventKind}
    for schema in published["events"].values():
        assert "platform" in schema["required"]


def test_a_valid_event_comes_back_in_its_json_form() -> None:
    detail = telemetry.validated(
        RegistryEventKind.PUSH_RETRY,
        {
            "platform": "linux/arm64",
            "target": "127.0.0.1:5000/mcp/app:v1-linux-arm64",
            "attempt": 2,
            "delay_seconds": 1.5,
            "error_kind": "server_error",
        },
    )
    assert detail["error_kind"] == "server_error" and detail["attempt"] == 2


@pytest.mark.parametrize(
    ("kind", "fields", "problem"),
    [
        # A field the schema does not know is a typo in the emitting code.
        (
            RegistryEventKind.TAG_STARTED,
            {"platform": None, "source": "a", "target": "b", "x": 1},
            "x",
        ),
        # A digest that is not one.
        (
            RegistryEventKind.PUSH_SUCCEEDED,
            {
                "platform": "linux/amd64",
                "target": "t",
                "digest": "latest",
                "bytes": 1,
                "layers_pushed": 1,
                "layers_reused": 0,
                "duration_ms": 3.0,
            },
            "digest",
        ),
        # An error kind outside the classification.
        (
            RegistryEventKind.PUSH_FAILED,
            {
                "platform": "linux/amd64",
                "target": "t",
                "attempt": 1,
                "error_kind": "oops",
                "retryable": True,
                "error": "x",
            },
            "error_kind",
        ),
        # The platform must always be said, even when it is null.
        (
            RegistryEventKind.INDEX_PUBLISHED,
            {"target": "t", "digest": DIGEST, "platforms": ["a"]},
            "platform",
        ),
    ],
)
def test_an_event_that_breaks_its_schema_is_refused(
    kind: RegistryEventKind, fields: dict[str, object], problem: str
) -> None:
    with pytest.raises(telemetry.TelemetrySchemaError, match=problem):
        telemetry.validated(kind, fields)


def test_an_unknown_kind_is_refused() -> None:
    with pytest.raises(telemetry.TelemetrySchemaError, match="no schema"):
        telemetry.validated("push_exploded", {"platform": None})

"""Secrets are found at any depth, replaced, sealed and restorable, and scrubbed from text."""

from __future__ import annotations

from typing import Any

import pytest
from hypothesis import given
from hypothesis import strategies as st

from workers.redaction import (
    REDACTED,
    SealError,
    new_key,
    redact,
    restore_secrets,
    scrub_text,
    seal,
    secret_strings,
    split_secrets,
    unseal,
)

PAYLOAD = {
    "repo": "https://example.test/r.git",
    "registry": {"username": "bot", "password": "hunter2-pw", "api_key": "k-123456"},
    "build_args": [{"name": "X", "github_token": "ghp_abcdef"}],
    "idempotency_key": "not-a-secret",
    "cache_key": "not-a-secret-either",
}


def test_secret_looking_fields_are_redacted_at_any_depth() -> None:
    redacted = redact(PAYLOAD)
    assert redacted["registry"] == {"username": "bot", "password": REDACTED, "api_key": REDACTED}
    assert redacted["build_args"][0]["github_token"] == REDACTED
    assert redacted["repo"] == PAYLOAD["repo"]
    assert redacted["idempotency_key"] == "not-a-secret"
    assert redacted["cache_key"] == "not-a-secret-either"


def test_extra_secret_fields_from_settings_are_redacted_too() -> None:
    assert redact({"pin": "1234"}, extra=["PIN"]) == {"pin": REDACTED}


def test_sealed_secrets_restore_the_original_payload() -> None:
    redacted, secrets = split_secrets(PAYLOAD)
    key = new_key()
    token = seal(secrets, key)
    assert "hunter2-pw" not in token
    assert restore_secrets(redacted, unseal(token, key)) == PAYLOAD


def test_a_wrong_key_cannot_open_sealed_secrets() -> None:
    token = seal({"/password": "x"}, new_key())
    with pytest.raises(SealError, match="DRYDOCK_SECRET_KEY"):
        unseal(token, new_key())


def test_secret_values_are_scrubbed_from_free_text() -> None:
    _, secrets = split_secrets(PAYLOAD)
    text = "login failed for bot with hunter2-pw at registry (key k-123456)"
    scrubbed = scrub_text(text, secret_strings(secrets))
    assert "hunter2-pw" not in scrubbed and "k-123456" not in scrubbed
    assert "login failed for bot" in scrubbed


json_values = st.recursive(
    st.none() | st.booleans() | st.integers() | st.text(max_size=8),
    lambda children: (
        st.lists(children, max_size=3)
        | st.dictionaries(
            st.sampled_from(["a", "b", "token", "password", "x/y", "t~0", "items"]),
            children,
            max_size=4,
        )
    ),
    max_leaves=20,
)


@given(json_values)
def test_split_then_restore_is_the_identity(value: Any) -> None:
    redacted, secrets = split_secrets(value)
    assert restore_secrets(redacted, secrets) == value

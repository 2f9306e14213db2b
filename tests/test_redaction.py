"""Secrets are found at any depth, replaced, sealed and restorable, and scrubbed from text."""

from __future__ import annotations

from typing import Any

import pytest
from hypothesis import given
from hypothesis import strategies as st

from kernel.redaction import (
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


# The rule, as a table: names a producer uses for secrets, and names that only look close.
SECRET_NAMES = [
    "password",
    "Password",
    "passwd",
    "pwd",
    "passphrase",
    "password_confirmation",
    "passwordHash",
    "new-password",
    "secret",
    "client_secret",
    "token",
    "refresh_token",
    "api_key",
    "apiKey",
    "x-api-key",
    "private_key",
    "access_key",
    "signing_key",
    "ssh_key",
    "id_rsa",
    "id_ed25519",
    "credentials",
    "authorization",
    "Authorization",
    "proxy-authorization",
    "cookie",
    "auth",
    "basic_auth",
    "authHeader",
    "x-auth-token",
    "jwt",
    "bearer",
    "dsn",
    "sentry_dsn",
    "databaseDsn",
    "connection_string",
    "connectionString",
    "conn_str",
    "kubeconfig",
    "kube_config",
]
NOT_SECRET_NAMES = [
    "author",
    "authority",
    "oauth_url",
    "message",
    "tenant",
    "repository_url",
    "revision",
    "idempotency_key",
    "cache_key",
    "description",
    "dsname",
]


@pytest.mark.parametrize("name", SECRET_NAMES)
def test_common_secret_names_are_redacted(name: str) -> None:
    redacted, secrets = split_secrets({"outer": {name: "s3cr3t-value"}, "kept": "visible"})
    assert redacted == {"outer": {name: REDACTED}, "kept": "visible"}
    assert list(secrets.values()) == ["s3cr3t-value"]


@pytest.mark.parametrize("name", NOT_SECRET_NAMES)
def test_names_that_only_look_close_are_kept(name: str) -> None:
    assert redact({name: "plain"}) == {name: "plain"}


@pytest.mark.parametrize(
    ("value", "shown"),
    [
        ("postgresql://u:pw-123@db.internal/app", "postgresql://u:[REDACTED]@db.internal/app"),
        ("redis://:hunter2@cache:6379/0", "redis://:[REDACTED]@cache:6379/0"),
        ("https://bot:ghp_abc123@git.example/r.git", "https://bot:[REDACTED]@git.example/r.git"),
        ("Bearer eyJhbGciOiJIUzI1NiJ9.e30.sig", "Bearer [REDACTED]"),
        ("Basic dXNlcjpwYXNzd29yZA==", "Basic [REDACTED]"),
        ("https://git.example/r.git", "https://git.example/r.git"),
        ("mailto:someone@example.test", "mailto:someone@example.test"),
        ("Bearer short", "Bearer short"),
    ],
)
def test_credentials_inside_values_are_redacted_whatever_the_field(value: str, shown: str) -> None:
    payload = {"repository_url": value, "build_args": [value]}
    redacted, secrets = split_secrets(payload)
    assert redacted == {"repository_url": shown, "build_args": [shown]}
    # The original is kept sealed for a replay, and restored exactly.
    assert restore_secrets(redacted, secrets) == payload


def test_url_passwords_and_bearer_values_are_scrubbed_from_free_text() -> None:
    text = "clone of https://bot:tok-9f8e7d@git.example/r.git failed; sent Bearer abcdefgh12345"
    scrubbed = scrub_text(text, [])
    assert "tok-9f8e7d" not in scrubbed and "abcdefgh12345" not in scrubbed
    assert "https://bot:[REDACTED]@git.example/r.git" in scrubbed


def test_text_that_is_not_json_is_redacted_by_pattern() -> None:
    from kernel.redaction import redact_text

    text = '{"password": "p4ss-word", "dsn": "postgresql://u:p@h/d", "message": "hi"'
    shown = redact_text(text)
    assert "p4ss-word" not in shown and ":p@" not in shown and '"message": "hi"' in shown
    assert redact_text("token=abc123 user=bob") == "token=[REDACTED] user=bob"
    assert redact_text('[[], {"api_key": "k"}, {}]') == '[[], {"api_key": "[REDACTED]"}, {}]'

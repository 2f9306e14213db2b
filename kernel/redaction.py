"""Keeping secrets out of rows, events, logs, the DLQ and Flower.

A field is secret when its name looks like one (password, token, api_key, auth, dsn, ...), at
any depth. A value is partly secret when it carries a credential of its own whatever its field's
name: the password of a URL (``postgresql://u:pw@h/db``) or an ``Authorization``-style value
(``Bearer …``). Stored payloads keep the shape with the secret replaced by ``REDACTED``; the
original values are, if a fleet key is configured, sealed with Fernet so that a dead-letter
replay can restore them. Error messages are scrubbed of the payload's secret values, and of
URL passwords and bearer values, before they are stored.
"""

from __future__ import annotations

import json
import re
from collections.abc import Iterable, Mapping
from functools import lru_cache
from typing import Any

from cryptography.fernet import Fernet, InvalidToken

REDACTED = "[REDACTED]"

_SECRET_NAME = re.compile(
    r"pass(word|wd|phrase)?$|^pwd$|secret|token|api[_-]?key|private[_-]?key|access[_-]?key|"
    r"signing[_-]?key|ssh[_-]?key|credential|authorization|cookie|passw(or)?d|kube[_-]?config|"
    r"connection[_-]?string|conn[_-]?str$|id[_-](rsa|dsa|ecdsa|ed25519)",
    re.IGNORECASE,
)
# Words that make a name secret only as a whole word ("auth" but not "author", "dsn" but not
# "dsname"): the name is split at non-letters and camelCase humps first.
_SECRET_WORDS = frozenset({"auth", "jwt", "bearer", "dsn", "otp"})
_WORD_BOUNDARY = re.compile(r"[^A-Za-z0-9]+|(?<=[a-z0-9])(?=[A-Z])")
# scheme://user:PASSWORD@host — the password of any URL, in any value or text.
_URL_PASSWORD = re.compile(r"(?P<head>\b[A-Za-z][A-Za-z0-9+.-]*://[^\s:/?#@]*:)[^\s@/?#]+(?=@)")
# An Authorization-style value: a scheme word, then the credential.
_AUTH_VALUE = re.compile(
    r"(?P<head>\b(?:Bearer|Basic|Digest|Token|Negotiate)\s+)[A-Za-z0-9._~+/=-]{8,}", re.IGNORECASE
)
# Shorter values are too likely to occur by chance in unrelated text to be scrubbed from it.
_MIN_SCRUB_LENGTH = 4


class SealError(Exception):
    """Sealed secrets could not be opened (wrong or missing key, or tampered data)."""


def is_secret_name(name: str, extra: Iterable[str] = ()) -> bool:
    return _is_secret_name(name, frozenset(e.lower() for e in extra))


@lru_cache(maxsize=4096)
def _is_secret_name(name: str, extra: frozenset[str]) -> bool:
    # Field names repeat endlessly (every job, every log line): decide each one once.
    if _SECRET_NAME.search(name) or name.lower() in extra:
        return True
    return any(word.lower() in _SECRET_WORDS for word in _WORD_BOUNDARY.split(name))


def scrub_embedded(text: str) -> str:
    """``text`` with the credentials it carries itself replaced: URL passwords and
    Authorization-style values (``Bearer …``, ``Basic …``)."""
    if "://" in text and "@" in text:
        text = _URL_PASSWORD.sub(lambda m: m.group("head") + REDACTED, text)
    if " " in text or "\t" in text:
        text = _AUTH_VALUE.sub(lambda m: m.group("head") + REDACTED, text)
    return text


def split_secrets(value: Any, extra: Iterable[str] = ()) -> tuple[Any, dict[str, Any]]:
    """Return ``(redacted copy, {json-pointer: secret value})``."""
    extra_names = frozenset(e.lower() for e in extra)
    found: dict[str, Any] = {}

    def walk(node: Any, path: tuple[str, ...]) -> Any:
        if isinstance(node, str):
            scrubbed = scrub_embedded(node)
            if scrubbed != node:
                found[_pointer(path)] = node
            return scrubbed
        if isinstance(node, Mapping):
            out: dict[str, Any] = {}
            for key, child in node.items():
                name = str(key)
                if _is_secret_name(name, extra_names) and child not in (None, ""):
                    found[_pointer((*path, name))] = child
                    out[key] = REDACTED
                elif isinstance(child, Mapping | list | tuple | str):
                    out[key] = walk(child, (*path, name))
                else:
                    out[key] = child
            return out
        if isinstance(node, list | tuple):
            return [walk(child, (*path, str(i))) for i, child in enumerate(node)]
        return node

    return walk(value, ()), found


def redact(value: Any, extra: Iterable[str] = ()) -> Any:
    return split_secrets(value, extra)[0]


def restore_secrets(redacted: Any, secrets: Mapping[str, Any]) -> Any:
    """Put sealed secret values back at their pointers in a redacted payload (a copy)."""
    restored = json.loads(json.dumps(redacted))
    for pointer, secret in secrets.items():
        if pointer == "":
            # The value itself was a string carrying a credential.
            return secret
        parts = [_unescape(p) for p in pointer.split("/")[1:]]
        node = restored
        for part in parts[:-1]:
            node = node[int(part)] if isinstance(node, list) else node[part]
        last = parts[-1]
        if isinstance(node, list):
            node[int(last)] = secret
        else:
            node[last] = secret
    return restored


def secret_strings(secrets: Mapping[str, Any]) -> list[str]:
    """Every string inside the secret values, longest first, for scrubbing free text."""
    strings: list[str] = []

    def collect(node: Any) -> None:
        if isinstance(node, str) and len(node) >= _MIN_SCRUB_LENGTH:
            strings.append(node)
        elif isinstance(node, Mapping):
            for child in node.values():
                collect(child)
        elif isinstance(node, list | tuple):
            for child in node:
                collect(child)
        elif (
            isinstance(node, int | float)
            and not isinstance(node, bool)
            and len(str(node)) >= _MIN_SCRUB_LENGTH
        ):
            strings.append(str(node))

    for value in secrets.values():
        collect(value)
    return sorted(set(strings), key=len, reverse=True)


def scrub_text(text: str, secrets: Iterable[str]) -> str:
    for secret in secrets:
        text = text.replace(secret, REDACTED)
    return scrub_embedded(text)


# In text that is not JSON: "name": "value" and name=value pairs whose name is secret.
_QUOTED_PAIR = re.compile(r'"(?P<name>[^"\\]{1,100})"\s*:\s*"(?P<value>(?:[^"\\]|\\.)*)"')
_BARE_PAIR = re.compile(r"(?P<name>[A-Za-z_][A-Za-z0-9_.-]{0,99})=(?P<value>[^\s&;,]+)")


def redact_text(text: str, extra: Iterable[str] = ()) -> str:
    """A message body as text, redacted: as JSON when it parses (secret fields at any depth),
    else by pattern (``"name": "value"`` and ``name=value`` pairs with secret names, URL
    passwords, bearer values). For bodies the fleet could not read, shown to operators."""
    extra_names = frozenset(e.lower() for e in extra)
    try:
        parsed = json.loads(text)
    except ValueError:
        parsed = None
    else:
        return json.dumps(redact(parsed, extra_names), ensure_ascii=False)

    def pair(match: re.Match[str]) -> str:
        if not _is_secret_name(match.group("name"), extra_names):
            return match.group(0)
        offset = match.start()
        start, end = match.start("value") - offset, match.end("value") - offset
        return match.group(0)[:start] + REDACTED + match.group(0)[end:]

    text = _QUOTED_PAIR.sub(pair, text)
    text = _BARE_PAIR.sub(pair, text)
    return scrub_embedded(text)


def seal(secrets: Mapping[str, Any], key: str) -> str:
    return Fernet(key.encode()).encrypt(json.dumps(dict(secrets)).encode()).decode()


def unseal(token: str, key: str) -> dict[str, Any]:
    try:
        data = Fernet(key.encode()).decrypt(token.encode())
    except (InvalidToken, ValueError) as exc:
        raise SealError(
            "sealed secrets cannot be opened with DRYDOCK_SECRET_KEY (wrong key?)"
        ) from exc
    loaded: dict[str, Any] = json.loads(data)
    return loaded


def new_key() -> str:
    return Fernet.generate_key().decode()


def _pointer(path: tuple[str, ...]) -> str:
    return "".join(f"/{_escape(p)}" for p in path)


def _escape(part: str) -> str:
    return part.replace("~", "~0").replace("/", "~1")


def _unescape(part: str) -> str:
    return part.replace("~1", "/").replace("~0", "~")

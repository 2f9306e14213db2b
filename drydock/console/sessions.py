"""Console logins: an API token exchanged for a session, and the CSRF token of its forms.

The session id (random, 256 bits) is the only thing the browser holds, in a cookie that is
``HttpOnly`` (no script reads it), ``SameSite=Strict`` (no other site's page sends it) and
``Secure`` when the console is served over HTTPS. Redis keeps, under the id's SHA-256 and for
``DRYDOCK_CONSOLE_SESSION_SECONDS``, the token's database id (never the token itself) and the
session's CSRF token; every request reads the token row again, so a revoked token ends its
sessions at once. Every state-changing form carries the CSRF token and is refused without it.
"""

from __future__ import annotations

import functools
import hashlib
import hmac
import json
import secrets
from dataclasses import dataclass

import redis

from kernel.settings import get_settings
from models import tokens
from models.db import session_scope
from workers.heartbeat import redis_client

COOKIE = "drydock_console"
_KEY_PREFIX = "drydock:console:session:"


@dataclass(frozen=True)
class ConsoleSession:
    caller: tokens.Caller
    csrf: str


@functools.cache
def _pooled(broker_url: str) -> redis.Redis[bytes]:
    return redis_client(get_settings())


def _redis() -> redis.Redis[bytes]:
    # One pool per broker: a page reads its session on every request.
    return _pooled(get_settings().broker_url)


def _key(session_id: str) -> str:
    return _KEY_PREFIX + hashlib.sha256(session_id.encode()).hexdigest()


def open_session(token: str) -> str | None:
    """A new session id for a valid, unrevoked token; None for any other."""
    with session_scope() as session:
        token_id = tokens.token_id_of(session, token.strip())
    if token_id is None:
        return None
    session_id = secrets.token_urlsafe(32)
    record = {"token_id": token_id, "csrf": secrets.token_urlsafe(32)}
    _redis().set(_key(session_id), json.dumps(record), ex=get_settings().console_session_seconds)
    return session_id


def read_session(session_id: str | None) -> ConsoleSession | None:
    """The session a cookie names, while it lasts and its token is unrevoked."""
    if not session_id or len(session_id) > 100:
        return None
    stored = _redis().get(_key(session_id))
    if stored is None:
        return None
    record = json.loads(stored)
    with session_scope() as session:
        caller = tokens.caller_by_id(session, int(record["token_id"]))
    if caller is None:
        return None
    return ConsoleSession(caller=caller, csrf=str(record["csrf"]))


def close_session(session_id: str | None) -> None:
    if not session_id:
        return
    _redis().delete(_key(session_id))


def csrf_matches(session: ConsoleSession, presented: str | None) -> bool:
    return presented is not None and hmac.compare_digest(session.csrf, presented)

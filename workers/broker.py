"""The broker transport: kombu's Redis transport, made to survive whatever sits in a queue.

Producers in other languages push to the Redis lists directly. Stock, an item that is not JSON
raises ``JSONDecodeError`` inside the worker's consumer loop, and an item that is JSON but not a
kombu envelope (no ``properties``, no ``delivery_tag``, a body its encoding cannot decode)
raises while kombu builds the message: either way the worker dies, and the item, already popped
from the list, is gone.

Here every item popped from a queue is checked for the envelope shape kombu relies on. One that
does not have it is replaced by a well-formed envelope carrying the raw item (capped) and why it
was refused, under the ``drydock-unreadable`` header: from then on it is a message like any
other (it enters the unacknowledged set, so a worker dying now gives it back), and the
worker's consumer (``workers.intake``) dead-letters it on this first delivery.
"""

from __future__ import annotations

import base64
import binascii
import uuid
from typing import Any

from kombu.transport import redis as kombu_redis
from kombu.transport.virtual import Empty
from kombu.utils import json as kombu_json
from kombu.utils.encoding import bytes_to_str

# Header of a replacement envelope: why the original item could not be read.
UNREADABLE_HEADER = "drydock-unreadable"
# Header of a replacement envelope: the original item, as text, capped.
UNREADABLE_RAW_HEADER = "drydock-unreadable-raw"
# How much of an unreadable item is kept for the operator: enough to recognise the producer.
RAW_KEEP_BYTES = 16 * 1024


def read_item(raw: bytes | str, queue: str) -> dict[str, Any]:
    """The envelope of an item popped from ``queue``: the item itself when it has the shape
    kombu's Redis transport needs, else a replacement that carries it (see the module)."""
    text = raw if isinstance(raw, str) else raw.decode("utf-8", errors="replace")
    try:
        # kombu's own JSON reading (its typed values included), as the stock transport does.
        envelope = kombu_json.loads(text)
    except Exception as exc:  # anything at all: a worker must never die of an item's content
        return unreadable_envelope(text, queue, f"the message is not valid JSON ({exc})"[:500])
    problem = envelope_problem(envelope)
    if problem is not None:
        return unreadable_envelope(text, queue, problem)
    assert isinstance(envelope, dict)
    return envelope


def envelope_problem(envelope: Any) -> str | None:
    """What keeps a decoded item from being a kombu message, or None."""
    if not isinstance(envelope, dict):
        return f"the message is a JSON {_json_type(envelope)}, not a message envelope (an object)"
    properties = envelope.get("properties")
    if not isinstance(properties, dict):
        return "the message envelope has no 'properties' object"
    if not isinstance(properties.get("delivery_tag"), str) or not properties["delivery_tag"]:
        return "the message envelope's properties have no 'delivery_tag' string"
    delivery = properties.get("delivery_info")
    if not isinstance(delivery, dict) or not all(
        isinstance(delivery.get(key), str) for key in ("exchange", "routing_key")
    ):
        return (
            "the message envelope's properties have no 'delivery_info' with exchange and "
            "routing_key strings"
        )
    priority = properties.get("priority", 0)
    if priority is not None and (isinstance(priority, bool) or not isinstance(priority, int)):
        return "the message envelope's priority is not an integer"
    headers = envelope.get("headers")
    if headers is not None and not isinstance(headers, dict):
        return "the message envelope's headers are not an object"
    body = envelope.get("body")
    if body is not None and not isinstance(body, str):
        return "the message envelope's body is not a string"
    encoding = properties.get("body_encoding")
    if encoding is None or (isinstance(encoding, str) and encoding.lower() == "utf-8"):
        return None
    if encoding != "base64":
        return f"the message body's encoding {encoding!r} is not base64 or utf-8"
    if body:
        try:
            base64.b64decode(body, validate=True)
        except (binascii.Error, ValueError):
            return "the message body is not valid base64, as its body_encoding says"
    return None


def unreadable_envelope(text: str, queue: str, problem: str) -> dict[str, Any]:
    """A well-formed envelope standing for an item that could not be read. Its delivery tag
    is new and kept with it, so a redelivery of it is recognised as the same message."""
    kept = capped_text(text, RAW_KEEP_BYTES)
    return {
        "body": "",
        "content-type": "application/json",
        "content-encoding": "utf-8",
        "headers": {UNREADABLE_HEADER: problem, UNREADABLE_RAW_HEADER: kept},
        "properties": {
            "delivery_tag": str(uuid.uuid4()),
            "delivery_info": {"exchange": queue, "routing_key": queue},
            "body_encoding": "base64",
            "priority": 0,
        },
    }


# kombu's stubs describe the abstract channel, not the Redis one's private attributes.
_RedisChannel: Any = kombu_redis.Channel
_RedisTransport: Any = kombu_redis.Transport


def capped_text(text: str, limit_bytes: int) -> str:
    """At most ``limit_bytes`` of ``text`` (UTF-8), saying so when it was cut."""
    encoded = text.encode("utf-8", errors="replace")
    if len(encoded) <= limit_bytes:
        return text
    kept = encoded[:limit_bytes].decode("utf-8", errors="ignore")
    return f"{kept} … [capped: {len(encoded)} bytes in all]"


class GuardedChannel(_RedisChannel):  # type: ignore[misc]
    """kombu's Redis channel, reading each popped item with ``read_item``.

    ``_brpop_read`` and ``_get`` are kombu 5.7's, but for that one call (kombu decodes the item
    inline, with no hook): keep them in step when kombu is upgraded (tests/test_poison.py
    pushes every kind of bad item and fails if one stops a worker).
    """

    def _brpop_read(self, **options: Any) -> bool:
        try:
            try:
                dest__item = self.client.parse_response(self.client.connection, "BRPOP", **options)
            except self.connection_errors:
                # if there's a ConnectionError, disconnect so the next
                # iteration will reconnect automatically.
                self.client.connection.disconnect()
                raise
            if dest__item:
                dest, item = dest__item
                dest = bytes_to_str(dest).rsplit(self.sep, 1)[0]
                self._queue_cycle.rotate(dest)
                self.connection._deliver(read_item(item, dest), dest)
                return True
            raise Empty()
        finally:
            self._in_poll = None
            self._flush_brpop_reauth()

    def _get(self, queue: str, timeout: float | None = None) -> dict[str, Any]:
        with self.conn_or_acquire() as client:
            for pri in self.priority_steps:
                item = client.rpop(self._q_for_pri(queue, pri))
                if item:
                    self._maybe_update_queues_expire(client, queue)
                    return read_item(item, queue)
            self._maybe_update_queues_expire(client, queue)
            raise Empty()


class GuardedRedisTransport(_RedisTransport):  # type: ignore[misc]
    """The Redis transport every Drydock connection uses (``broker_transport``)."""

    Channel = GuardedChannel


def _json_type(value: Any) -> str:
    if isinstance(value, str):
        return "string"
    if isinstance(value, list):
        return "array"
    if isinstance(value, bool):
        return "boolean"
    if isinstance(value, int | float):
        return "number"
    return "null" if value is None else type(value).__name__

"""Is a launched server serving? The MCP ``initialize`` call, or a plain HTTP GET.

The MCP probe speaks the streamable HTTP transport as a client does first: a POST of the
JSON-RPC ``initialize`` request (``Accept: application/json, text/event-stream``), answered
either with the JSON-RPC response as ``application/json`` or as the first ``data:`` event of a
``text/event-stream``. It passes when the response is a result (not an error) for the request's
id that names a protocol version and the server. An HTTP probe passes on any 2xx to a GET.

A probe that cannot connect yet, times out or gets an unexpected answer fails with the reason;
the launch calls it again until the server answers or its probe time runs out.
"""

from __future__ import annotations

import json
import time
import urllib.error
import urllib.request
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

from models.runtime import ProbeKind

MCP_PROTOCOL_VERSION = "2025-06-18"
# One probe's own timeout; the launch's probe time bounds the sum.
REQUEST_TIMEOUT_SECONDS = 3.0
MAX_RESPONSE_BYTES = 256 * 1024


@dataclass(frozen=True)
class ProbeResult:
    ok: bool
    detail: str
    ms: float

    def as_json(self) -> dict[str, Any]:
        return {
            "ok": self.ok,
            "detail": self.detail,
            "ms": round(self.ms, 1),
            "at": datetime.now(UTC).isoformat(),
        }


def probe(endpoint: str, kind: ProbeKind, path: str) -> ProbeResult:
    url = endpoint.rstrip("/") + "/" + path.lstrip("/")
    began = time.monotonic()
    try:
        ok, detail = _mcp(url) if kind is ProbeKind.MCP else _http(url)
    except urllib.error.HTTPError as exc:
        ok, detail = False, f"{url} answered HTTP {exc.code}"
    except (urllib.error.URLError, OSError) as exc:
        reason = getattr(exc, "reason", exc)
        ok, detail = False, f"{url} did not answer: {reason}"
    return ProbeResult(ok, detail, (time.monotonic() - began) * 1000)


def _http(url: str) -> tuple[bool, str]:
    with urllib.request.urlopen(url, timeout=REQUEST_TIMEOUT_SECONDS) as response:
        return True, f"GET {url}: HTTP {response.status}"


def initialize_request() -> dict[str, Any]:
    """The MCP ``initialize`` request the probe sends."""
    return {
        "jsonrpc": "2.0",
        "id": 1,
        "method": "initialize",
        "params": {
            "protocolVersion": MCP_PROTOCOL_VERSION,
            "capabilities": {},
            "clientInfo": {"name": "drydock-probe", "version": "1"},
        },
    }


# The headers a streamable HTTP client sends with it.
INITIALIZE_HEADERS = {
    "Content-Type": "application/json",
    "Accept": "application/json, text/event-stream",
}


def judge_initialize(content_type: str, body: str, where: str) -> tuple[bool, str]:
    """Whether the answer to ``initialize_request`` (``where``: who answered, for the
    detail) is an MCP server's."""
    message = _sse_message(body) if content_type == "text/event-stream" else body
    try:
        answer = json.loads(message)
    except ValueError:
        return False, f"initialize at {where}: the answer is not JSON ({message[:100]!r})"
    return _judge(answer, where)


def _mcp(url: str) -> tuple[bool, str]:
    request = urllib.request.Request(
        url,
        data=json.dumps(initialize_request()).encode(),
        headers=INITIALIZE_HEADERS,
        method="POST",
    )
    with urllib.request.urlopen(request, timeout=REQUEST_TIMEOUT_SECONDS) as response:
        content_type = response.headers.get_content_type()
        body = response.read(MAX_RESPONSE_BYTES).decode("utf-8", "replace")
    return judge_initialize(content_type, body, url)


def _sse_message(body: str) -> str:
    """The data of the first event of an event stream."""
    lines: list[str] = []
    for line in body.splitlines():
        if line.startswith("data:"):
            lines.append(line[5:].lstrip())
        elif not line and lines:
            break
    return "\n".join(lines)


def _judge(answer: Any, url: str) -> tuple[bool, str]:
    if not isinstance(answer, dict) or answer.get("jsonrpc") != "2.0" or answer.get("id") != 1:
        return False, f"initialize at {url}: not a JSON-RPC 2.0 response to the request"
    if "error" in answer:
        error = answer["error"] if isinstance(answer["error"], dict) else {}
        return False, f"initialize at {url} was refused: {error.get('message', answer['error'])}"
    result = answer.get("result")
    if not isinstance(result, dict):
        return False, f"initialize at {url}: no result"
    version = result.get("protocolVersion")
    info = result.get("serverInfo")
    if not isinstance(version, str) or not isinstance(info, dict) or not info.get("name"):
        return False, f"initialize at {url}: the result names no protocol version or server"
    return True, f"MCP {version}, server {info.get('name')} {info.get('version', '')}".strip()

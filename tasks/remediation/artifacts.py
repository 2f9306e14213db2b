"""What is kept of a step: its output capped and with every secret taken out.

Secrets are scrubbed before the cap is applied, so a secret can never be cut in two and
survive in part. Outputs are redacted by field name (as payloads are) and scrubbed by value.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from typing import Any

from kernel.redaction import redact, scrub_text
from tasks.remediation.executors.base import StepResult


@dataclass(frozen=True)
class KeptText:
    text: str
    # Bytes as produced (after scrubbing), before the cap.
    size: int
    truncated: bool


def cap_text(text: str, max_bytes: int) -> KeptText:
    """At most ``max_bytes`` of UTF-8: the head and the tail, the middle replaced by a marker
    saying how much was cut (the end of a log is where the error usually is)."""
    raw = text.encode()
    if len(raw) <= max_bytes:
        return KeptText(text, len(raw), False)
    cut = len(raw) - max_bytes
    marker = f"\n[... {cut} bytes cut: the step wrote {len(raw)} bytes ...]\n".encode()
    keep = max(0, max_bytes - len(marker))
    head = raw[: keep // 2].decode(errors="ignore")
    tail = raw[len(raw) - (keep - keep // 2) :].decode(errors="ignore")
    return KeptText(head + marker.decode() + tail, len(raw), True)


def _scrub_value(value: Any, secrets: Sequence[str]) -> Any:
    if isinstance(value, str):
        return scrub_text(value, secrets)
    if isinstance(value, dict):
        return {str(key): _scrub_value(child, secrets) for key, child in value.items()}
    if isinstance(value, list | tuple):
        return [_scrub_value(child, secrets) for child in value]
    return value


def kept_step(
    step: StepResult,
    *,
    secrets: Sequence[str],
    max_bytes: int,
    extra_secret_fields: Iterable[str] = (),
) -> dict[str, Any]:
    """The artifact columns of a step: output scrubbed then capped, outputs redacted."""
    stdout = cap_text(scrub_text(step.stdout, secrets), max_bytes)
    stderr = cap_text(scrub_text(step.stderr, secrets), max_bytes)
    outputs = _scrub_value(redact(step.outputs, extra_secret_fields), secrets)
    return {
        "step_name": scrub_text(step.name, secrets)[:200],
        "ok": step.ok,
        "timed_out": step.timed_out,
        "exit_code": step.exit_code,
        "error": scrub_text(step.error, secrets)[:4000] if step.error else None,
        "stdout": stdout.text,
        "stderr": stderr.text,
        "stdout_bytes": stdout.size,
        "stderr_bytes": stderr.size,
        "truncated": stdout.truncated or stderr.truncated,
        "outputs": outputs,
        "started_at": step.started_at,
        "finished_at": step.finished_at,
        "duration_ms": round(step.duration_ms, 3),
    }

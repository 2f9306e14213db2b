"""Per-check results of an evaluation suite, read from what the suite reported. Pure: no I/O.

A suite reports its checks in one of two formats (``SuiteSpec.results``):

- ``jsonl``: one JSON object per line of its standard output, e.g.
  ``{"check": "tls", "status": "fail", "message": "expected TLS 1.3"}``. Lines that are not
  JSON objects (plain log output) are ignored, and so are JSON objects that name no check and
  no status (structured log lines). An object that is half a check (a ``check`` without a
  ``status``, a ``status`` without a ``check``/``name``, an unknown status), and a line that
  starts like an object but is not valid JSON, is a *problem*: the suite meant to report
  something and what it reported cannot be trusted.
- ``junit``: a JUnit XML report (``<testsuites>``/``<testsuite>`` of ``<testcase>``
  elements), as most test runners write one.

Parsers never raise on bad input: what they could not read becomes a problem string (which
fails the run), never the content of the offending line, which the run's output tail keeps.
"""

from __future__ import annotations

import json
import math
from dataclasses import dataclass
from typing import Any, Literal
from xml.etree.ElementTree import Element, ParseError

import defusedxml
import defusedxml.ElementTree

CheckStatus = Literal["passed", "failed", "error", "skipped"]
CHECK_STATUSES: tuple[CheckStatus, ...] = ("passed", "failed", "error", "skipped")

# The words a suite may use for each status (case-insensitive).
_STATUS_WORDS: dict[str, CheckStatus] = {
    "pass": "passed",
    "passed": "passed",
    "ok": "passed",
    "fail": "failed",
    "failed": "failed",
    "error": "error",
    "skip": "skipped",
    "skipped": "skipped",
}

# A certification record keeps every check; these bound what one suite can make it hold.
MAX_CHECKS = 10_000
MAX_CHECK_NAME_LENGTH = 200
MAX_MESSAGE_LENGTH = 2_000
# A JUnit report larger than this is refused rather than parsed.
MAX_JUNIT_BYTES = 8 * 1024 * 1024
# Problems past this many are counted, not listed.
MAX_PROBLEMS = 50


@dataclass(frozen=True)
class CheckResult:
    name: str
    status: CheckStatus
    message: str = ""
    duration_ms: float | None = None

    def as_json(self) -> dict[str, Any]:
        return {
            "name": self.name,
            "status": self.status,
            "message": self.message,
            "duration_ms": self.duration_ms,
        }


class _Problems:
    """Problem strings, capped at MAX_PROBLEMS, the rest counted in a last one."""

    def __init__(self) -> None:
        self.listed: list[str] = []
        self.unlisted = 0

    def add(self, problem: str) -> None:
        if len(self.listed) < MAX_PROBLEMS:
            self.listed.append(problem)
        else:
            self.unlisted += 1

    def done(self) -> list[str]:
        if self.unlisted:
            return [*self.listed, f"{self.unlisted} more problems not listed"]
        return self.listed


def _clip(text: str, limit: int) -> str:
    return text if len(text) <= limit else text[: limit - 1] + "…"


def _duration_ms(value: Any, scale: float) -> float | None:
    """A non-negative finite number times ``scale``, else None."""
    if isinstance(value, bool) or not isinstance(value, int | float | str):
        return None
    try:
        number = float(value)
    except ValueError:
        return None
    if not math.isfinite(number) or number < 0:
        return None
    return number * scale


def parse_json_lines(text: str) -> tuple[list[CheckResult], list[str]]:
    """The checks a ``jsonl`` suite printed, and the problems found (by line number).

    A check is a JSON object with ``check`` (or ``name``) and ``status``; ``status`` is one of
    pass/passed/ok, fail/failed, error, skip/skipped (any case). Optional: ``message`` (text)
    and ``duration_ms`` (or ``duration`` in seconds)."""
    checks: list[CheckResult] = []
    problems = _Problems()
    for number, raw in enumerate(text.splitlines(), start=1):
        line = raw.strip()
        if not line.startswith("{"):
            continue
        try:
            value = json.loads(line)
        except ValueError:
            problems.add(f"line {number}: starts like a JSON object but is not valid JSON")
            continue
        if not isinstance(value, dict):
            continue
        has_check = "check" in value
        if not has_check and "status" not in value:
            # A structured log line, not a check.
            continue
        name = value.get("check") if has_check else value.get("name")
        status_word = value.get("status")
        if name is None:
            problems.add(f'line {number}: a check result needs a "check" name')
            continue
        if status_word is None:
            problems.add(f'line {number}: a check result needs a "status"')
            continue
        if not isinstance(name, str) or not name.strip():
            problems.add(f"line {number}: a check's name must be non-empty text")
            continue
        status = _STATUS_WORDS.get(status_word.lower()) if isinstance(status_word, str) else None
        if status is None:
            problems.add(
                f"line {number}: unknown status for check {_clip(name, 60)!r} (one of pass, "
                "fail, error, skip)"
            )
            continue
        if len(checks) >= MAX_CHECKS:
            problems.add(f"more than {MAX_CHECKS} checks: the rest were not read")
            break
        message = value.get("message", "")
        if "duration_ms" in value:
            duration = _duration_ms(value["duration_ms"], 1.0)
        else:
            duration = _duration_ms(value.get("duration"), 1000.0)
        checks.append(
            CheckResult(
                name=_clip(name.strip(), MAX_CHECK_NAME_LENGTH),
                status=status,
                message=_clip(
                    message if isinstance(message, str) else str(message), MAX_MESSAGE_LENGTH
                ),
                duration_ms=duration,
            )
        )
    return checks, problems.done()


def _local_name(element: Element) -> str:
    """The tag without an XML namespace (``{ns}testcase`` -> ``testcase``)."""
    return element.tag.rpartition("}")[2] if isinstance(element.tag, str) else ""


_JUNIT_OUTCOMES: dict[str, CheckStatus] = {
    "failure": "failed",
    "error": "error",
    "skipped": "skipped",
}


def _outcome(testcase: Element) -> tuple[CheckStatus, str]:
    for child in testcase:
        status = _JUNIT_OUTCOMES.get(_local_name(child))
        if status is not None:
            said = child.get("message") or (child.text or "").strip()
            return status, _clip(said, MAX_MESSAGE_LENGTH)
    return "passed", ""


def parse_junit(xml: bytes) -> tuple[list[CheckResult], list[str]]:
    """The test cases of a JUnit XML report as checks (named ``classname.name``): a
    ``failure`` child fails it, ``error`` errors it, ``skipped`` skips it, none passes it.

    Entity declarations are refused (no "billion laughs"), as is a report over
    MAX_JUNIT_BYTES; a malformed report is a problem, never an exception."""
    if len(xml) > MAX_JUNIT_BYTES:
        return [], [f"the JUnit report is larger than {MAX_JUNIT_BYTES} bytes: not read"]
    try:
        root = defusedxml.ElementTree.fromstring(xml)
    except defusedxml.DefusedXmlException:
        return [], ["the JUnit report declares entities or external references: refused"]
    except ParseError as exc:
        return [], [f"the JUnit report is not well-formed XML ({exc})"]
    if _local_name(root) not in ("testsuites", "testsuite"):
        return [], [
            f"not a JUnit report: the root element is <{_clip(_local_name(root), 60)}>, not "
            "<testsuites> or <testsuite>"
        ]
    checks: list[CheckResult] = []
    problems = _Problems()
    for testcase in root.iter():
        if _local_name(testcase) != "testcase":
            continue
        name = (testcase.get("name") or "").strip()
        if not name:
            problems.add("a <testcase> has no name")
            continue
        if len(checks) >= MAX_CHECKS:
            problems.add(f"more than {MAX_CHECKS} test cases: the rest were not read")
            break
        classname = (testcase.get("classname") or "").strip()
        status, message = _outcome(testcase)
        checks.append(
            CheckResult(
                name=_clip(f"{classname}.{name}" if classname else name, MAX_CHECK_NAME_LENGTH),
                status=status,
                message=message,
                duration_ms=_duration_ms(testcase.get("time"), 1000.0),
            )
        )
    return checks, problems.done()

"""Evaluation suites: the result parsers (pure), the suite spec, and ``run_suite`` against the
session's real Docker engine pulling a busybox image by digest from the tests' real registry.

What a person relies on: a suite's checks come back as reported (JSON lines or JUnit), a failing
or half-reported check fails the run and says why, the suite runs without network in a
locked-down container that is always removed, a suite that runs too long is killed, and an image
that cannot be had or an engine that cannot be reached are told apart (permanent vs retried).

One module for the suite, from its parsers to a run, sharing the engine and registry fixtures.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import docker
import pytest

from adapters.credentials import RegistryCredential
from tasks.evaluation.results import (
    MAX_JUNIT_BYTES,
    CheckResult,
    parse_json_lines,
    parse_junit,
)
from tasks.evaluation.suite import (
    OUTPUT_TAIL_BYTES,
    SUITE_LABEL,
    EvaluationEngineUnavailableError,
    EvaluationImageUnavailableError,
    EvaluationRegistryUnavailableError,
    SuiteRun,
    run_suite,
)
from tasks.evaluation.suite_spec import MAX_FILES_BYTES, SuiteSpec, SuiteSpecError, parse_suite_spec
from testkit.docker_engine import DockerEngine
from testkit.registry import RegistryServer
from tests.evaluation_images import EvaluationImage, engine_has, forget_evaluation_image

# --- the parsers (pure) -----------------------------------------------------------------------


def test_json_lines_are_checks_whatever_the_status_word_and_other_output_is_ignored() -> None:
    output = "\n".join(
        [
            "starting the suite",
            json.dumps({"check": "tls", "status": "PASS", "duration_ms": 12.5}),
            json.dumps({"check": "dns", "status": "fail", "message": "no AAAA record"}),
            json.dumps({"name": "config", "status": "ok", "duration": 0.25}),
            json.dumps({"check": "fips", "status": "skipped", "message": "not a FIPS build"}),
            json.dumps({"check": "disk", "status": "error", "message": "df: not found"}),
            "  " + json.dumps({"check": "passed-too", "status": "passed"}) + "  ",
            # A structured log line names no check and no status: not a check, not a problem.
            json.dumps({"level": "info", "msg": "halfway"}),
            "[1, 2, 3]",
            "done",
        ]
    )
    checks, problems = parse_json_lines(output)
    assert problems == []
    assert checks == [
        CheckResult("tls", "passed", "", 12.5),
        CheckResult("dns", "failed", "no AAAA record"),
        CheckResult("config", "passed", "", 250.0),
        CheckResult("fips", "skipped", "not a FIPS build"),
        CheckResult("disk", "error", "df: not found"),
        CheckResult("passed-too", "passed"),
    ]
    assert checks[1].as_json() == {
        "name": "dns",
        "status": "failed",
        "message": "no AAAA record",
        "duration_ms": None,
    }


def test_half_reported_checks_and_broken_json_lines_are_problems_by_line_number() -> None:
    secret_looking = "tok-3f9a-do-not-echo"
    output = "\n".join(
        [
            json.dumps({"check": "tls", "status": "pass"}),
            json.dumps({"check": "dns"}),
            json.dumps({"status": "fail"}),
            json.dumps({"check": "ntp", "status": "maybe"}),
            json.dumps({"check": "", "status": "pass"}),
            '{"check": "cut", "status": "pa',
            "{" + secret_looking,
        ]
    )
    checks, problems = parse_json_lines(output)
    assert checks == [CheckResult("tls", "passed")]
    assert problems == [
        'line 2: a check result needs a "status"',
        'line 3: a check result needs a "check" name',
        "line 4: unknown status for check 'ntp' (one of pass, fail, error, skip)",
        "line 5: a check's name must be non-empty text",
        "line 6: starts like a JSON object but is not valid JSON",
        "line 7: starts like a JSON object but is not valid JSON",
    ]
    # Problems say where, never what: the output tail keeps the line itself.
    assert not any(secret_looking in problem for problem in problems)


JUNIT_REPORT = b"""<?xml version="1.0" encoding="UTF-8"?>
<testsuites name="image checks" tests="5" failures="1" errors="1" skipped="1">
  <testsuite name="network" tests="3">
    <testcase classname="network" name="tls" time="0.012"/>
    <testcase classname="network" name="dns" time="1.5">
      <failure message="expected an AAAA record" type="AssertionError">traceback here</failure>
    </testcase>
    <testcase classname="network" name="proxy"><skipped message="no proxy configured"/></testcase>
  </testsuite>
  <testsuite name="files">
    <testcase name="no-setuid"><error>find: permission denied</error></testcase>
    <testcase classname="files" name="ownership" time="bogus"/>
  </testsuite>
</testsuites>
"""


def test_junit_test_cases_are_checks_named_by_class_and_name() -> None:
    checks, problems = parse_junit(JUNIT_REPORT)
    assert problems == []
    assert checks == [
        CheckResult("network.tls", "passed", "", 12.0),
        CheckResult("network.dns", "failed", "expected an AAAA record", 1500.0),
        CheckResult("network.proxy", "skipped", "no proxy configured"),
        CheckResult("no-setuid", "error", "find: permission denied"),
        CheckResult("files.ownership", "passed"),
    ]
    # A lone <testsuite> is a report too.
    single, problems = parse_junit(b'<testsuite><testcase name="only"/></testsuite>')
    assert (single, problems) == ([CheckResult("only", "passed")], [])


@pytest.mark.parametrize(
    ("report", "problem"),
    [
        (
            b'<?xml version="1.0"?><!DOCTYPE lolz [<!ENTITY lol "lol">'
            b'<!ENTITY lol2 "&lol;&lol;&lol;&lol;&lol;&lol;&lol;&lol;&lol;&lol;">]>'
            b'<testsuite><testcase name="&lol2;"/></testsuite>',
            "declares entities",
        ),
        (
            b'<?xml version="1.0"?><!DOCTYPE t [<!ENTITY x SYSTEM "file:///etc/passwd">]>'
            b'<testsuite><testcase name="&x;"/></testsuite>',
            "declares entities",
        ),
        (b"<testsuite><testcase name='a'></testsuite>", "not well-formed XML"),
        (b"", "not well-formed XML"),
        (b"<html><testcase name='a'/></html>", "root element is <html>"),
        (b" " * (MAX_JUNIT_BYTES + 1), f"larger than {MAX_JUNIT_BYTES} bytes"),
    ],
    ids=["entity-expansion", "external-entity", "malformed", "empty", "not-junit", "too-large"],
)
def test_a_junit_report_that_cannot_be_trusted_is_a_problem_not_an_exception(
    report: bytes, problem: str
) -> None:
    checks, problems = parse_junit(report)
    assert checks == []
    assert len(problems) == 1 and problem in problems[0]


def test_a_nameless_junit_test_case_is_a_problem() -> None:
    checks, problems = parse_junit(b'<testsuite><testcase/><testcase name="b"/></testsuite>')
    assert checks == [CheckResult("b", "passed")]
    assert problems == ["a <testcase> has no name"]


# --- the suite spec and a run's verdict (pure) ------------------------------------------------


def test_a_minimal_suite_gets_the_documented_defaults() -> None:
    suite = parse_suite_spec({"command": ["/eval/check"], "timeout_seconds": 30})
    assert suite.results == "jsonl"
    assert suite.junit_path == "/results/junit.xml"
    assert (suite.memory_mb, suite.cpus, suite.pids_limit) == (256, 1.0, 256)
    assert suite.files == {} and suite.env == {}


def test_an_invalid_suite_names_every_problem_by_path() -> None:
    with pytest.raises(SuiteSpecError) as raised:
        parse_suite_spec(
            {
                "command": [],
                "files": {"../escape.sh": "x", "/etc/passwd": "x", "ok/./x": "x"},
                "results": "tap",
                "junit_path": "/tmp/junit.xml",
                "timeout_seconds": 0,
                "memory_mb": 1,
                "env": {"DRYDOCK_DIGEST": "sha256:forged", "1BAD": "x"},
                "network": "host",
            }
        )
    error = raised.value
    fields = {problem.field for problem in error.problems}
    assert {
        "command",
        "files.../escape.sh.[key]",
        "files./etc/passwd.[key]",
        "files.ok/./x.[key]",
        "results",
        "junit_path",
        "timeout_seconds",
        "memory_mb",
        "env",
        "network",
    } <= fields
    message = str(error)
    assert message.startswith("invalid evaluation suite: ")
    assert "junit_path: " in message and "under /results" in message
    assert "must be relative (to /eval)" in message
    assert "network: Extra inputs are not permitted" in message


def test_suite_files_are_capped_and_a_file_cannot_also_be_a_directory() -> None:
    with pytest.raises(SuiteSpecError, match=f"at most {MAX_FILES_BYTES} in all"):
        parse_suite_spec(
            {"command": ["x"], "timeout_seconds": 5, "files": {"big": "x" * MAX_FILES_BYTES}}
        )
    with pytest.raises(SuiteSpecError, match="'lib' is both a file and the directory"):
        parse_suite_spec(
            {"command": ["x"], "timeout_seconds": 5, "files": {"lib": "x", "lib/a.sh": "y"}}
        )
    with pytest.raises(SuiteSpecError, match="reserved: Drydock sets the DRYDOCK_"):
        parse_suite_spec({"command": ["x"], "timeout_seconds": 5, "env": {"drydock_tier": "x"}})


def _run(checks: list[CheckResult], **fields: Any) -> SuiteRun:
    values: dict[str, Any] = {
        "checks": tuple(checks),
        "exit_code": 0,
        "timed_out": False,
        "duration_ms": 1234.0,
        "output_tail": "",
        "image_id": "sha256:" + "0" * 64,
        "problems": (),
        **fields,
    }
    return SuiteRun(**values)


def test_a_run_passes_only_when_it_exited_0_with_checks_none_failing_and_no_problems() -> None:
    good = [CheckResult("tls", "passed"), CheckResult("fips", "skipped", "n/a")]
    assert _run(good).passed
    assert _run(good).summary() == "2 checks: 1 passed, 1 skipped"
    assert not _run(good, exit_code=1).passed
    assert _run(good, exit_code=1).summary() == "2 checks: 1 passed, 1 skipped; exit 1"
    assert not _run([]).passed
    assert _run([]).summary() == "no check results (exit 0)"
    assert not _run(good, problems=('line 3: a check result needs a "status"',)).passed
    assert not _run(good, timed_out=True, exit_code=None, duration_ms=3004.0).passed
    assert _run(good, timed_out=True, exit_code=None, duration_ms=3004.0).summary() == (
        "timed out after 3s"
    )
    failing = [
        *good,
        CheckResult("dns", "failed", "expected an AAAA record\nmore detail"),
        CheckResult("disk", "error"),
    ]
    assert not _run(failing).passed
    assert _run(failing, problems=("p1", "p2")).summary() == (
        "4 checks: 1 passed, 1 failed, 1 error, 1 skipped "
        "(dns: expected an AAAA record; disk); 2 problems: p1"
    )


# --- run_suite on the real engine and registry ------------------------------------------------


@pytest.fixture
def engine(docker_engine: DockerEngine) -> Iterator[Any]:
    client = docker.DockerClient(base_url=docker_engine.url)
    yield client
    client.close()


def suite_containers(engine: Any) -> list[Any]:
    """Every evaluation container on the engine, running or not."""
    found: list[Any] = engine.containers.list(all=True, filters={"label": SUITE_LABEL})
    return found


def run(
    image: EvaluationImage,
    docker_engine: DockerEngine,
    registry_server: RegistryServer,
    **suite: Any,
) -> SuiteRun:
    suite.setdefault("timeout_seconds", 20)
    return run_suite(
        image.reference,
        parse_suite_spec(suite),
        docker_host=docker_engine.url,
        credential=registry_server.credential(),
        extra_env={"DRYDOCK_DIGEST": image.digest, "DRYDOCK_TIER": "gold"},
    )


def jsonl(check: str, status: str, message: str = "") -> str:
    """A shell line printing one check result."""
    return f"printf '%s\\n' '{json.dumps({'check': check, 'status': status, 'message': message})}'"


CHECKS_SCRIPT = "\n".join(
    [
        "set -u",
        'test "$DRYDOCK_DIGEST" = "$EXPECTED_DIGEST" && '
        + jsonl("digest", "pass")
        + " || "
        + jsonl("digest", "fail", "wrong digest"),
        'test "$(id -u)" = 65534 && ' + jsonl("runs-as-nobody", "pass"),
        '. /eval/lib/common.sh && test "$COMMON" = loaded && ' + jsonl("helpers", "pass"),
        "echo 'plain log output, not a check'",
        "echo 'to stderr' >&2",
    ]
)


def test_a_passing_suite_pulls_the_image_by_digest_and_reports_its_checks(
    evaluation_image: EvaluationImage,
    docker_engine: DockerEngine,
    registry_server: RegistryServer,
    engine: Any,
) -> None:
    forget_evaluation_image(docker_engine.url, evaluation_image)
    result = run(
        evaluation_image,
        docker_engine,
        registry_server,
        command=["sh", "/eval/checks.sh"],
        files={"checks.sh": CHECKS_SCRIPT, "lib/common.sh": "COMMON=loaded\n"},
        env={"EXPECTED_DIGEST": evaluation_image.digest},
    )
    assert [(check.name, check.status) for check in result.checks] == [
        ("digest", "passed"),
        ("runs-as-nobody", "passed"),
        ("helpers", "passed"),
    ], result.output_tail
    assert result.exit_code == 0 and not result.timed_out
    assert result.problems == ()
    assert result.passed
    assert result.summary() == "3 checks: 3 passed"
    # Both streams, in the order the engine logged them (not always the order printed).
    assert "plain log output, not a check\n" in result.output_tail
    assert "to stderr\n" in result.output_tail
    # Pulled with the credential, by digest, and the image id is the engine's.
    assert engine_has(docker_engine.url, evaluation_image)
    assert result.image_id == engine.images.get(evaluation_image.reference).id
    assert suite_containers(engine) == []


def test_a_failing_check_fails_the_run_and_the_summary_says_which(
    evaluation_image: EvaluationImage,
    docker_engine: DockerEngine,
    registry_server: RegistryServer,
    engine: Any,
) -> None:
    script = "\n".join(
        [jsonl("tls", "pass"), jsonl("dns", "fail", "expected an AAAA record"), "exit 1"]
    )
    result = run(
        evaluation_image,
        docker_engine,
        registry_server,
        command=["sh", "-c", script],
    )
    assert [check.status for check in result.checks] == ["passed", "failed"]
    assert result.exit_code == 1
    assert not result.passed
    assert result.summary() == "2 checks: 1 passed, 1 failed (dns: expected an AAAA record); exit 1"
    assert suite_containers(engine) == []


JUNIT_SCRIPT = """\
cat > /results/junit.xml <<'EOF'
<testsuites>
  <testsuite name="image">
    <testcase classname="image" name="entrypoint" time="0.5"/>
    <testcase classname="image" name="no-shell-history">
      <failure message="found /root/.ash_history"/>
    </testcase>
  </testsuite>
</testsuites>
EOF
echo wrote the report
"""


def test_junit_results_are_read_from_the_report_after_the_suite_exits(
    evaluation_image: EvaluationImage,
    docker_engine: DockerEngine,
    registry_server: RegistryServer,
    engine: Any,
) -> None:
    result = run(
        evaluation_image,
        docker_engine,
        registry_server,
        command=["/eval/junit.sh"],
        files={"junit.sh": "#!/bin/sh\n" + JUNIT_SCRIPT},
        results="junit",
    )
    assert result.checks == (
        CheckResult("image.entrypoint", "passed", "", 500.0),
        CheckResult("image.no-shell-history", "failed", "found /root/.ash_history"),
    ), result.output_tail
    assert result.exit_code == 0 and result.problems == ()
    assert not result.passed
    assert "wrote the report" in result.output_tail
    # A report elsewhere under /results, all passing: a pass.
    nested = run(
        evaluation_image,
        docker_engine,
        registry_server,
        command=[
            "sh",
            "-c",
            "mkdir /results/out && echo '<testsuite><testcase name=\"ok\"/></testsuite>' "
            "> /results/out/report.xml",
        ],
        results="junit",
        junit_path="/results/out/report.xml",
    )
    assert nested.checks == (CheckResult("ok", "passed"),)
    assert nested.passed
    assert suite_containers(engine) == []


def test_a_junit_suite_that_writes_no_report_is_a_problem(
    evaluation_image: EvaluationImage, docker_engine: DockerEngine, registry_server: RegistryServer
) -> None:
    result = run(
        evaluation_image, docker_engine, registry_server, command=["true"], results="junit"
    )
    assert result.checks == () and result.exit_code == 0
    assert result.problems == ("the suite wrote no JUnit report at /results/junit.xml",)
    assert not result.passed


def test_a_suite_over_its_time_is_killed_and_the_run_timed_out(
    evaluation_image: EvaluationImage,
    docker_engine: DockerEngine,
    registry_server: RegistryServer,
    engine: Any,
) -> None:
    result = run(
        evaluation_image,
        docker_engine,
        registry_server,
        command=["sh", "-c", jsonl("early", "pass") + "; echo about to hang; exec sleep 600"],
        timeout_seconds=1,
    )
    assert result.timed_out
    assert result.exit_code is None
    assert not result.passed
    assert result.summary().startswith("timed out after ")
    # What it reported before it was killed is kept for the record.
    assert result.checks == (CheckResult("early", "passed"),)
    assert "about to hang" in result.output_tail
    assert suite_containers(engine) == []


def test_a_suite_has_no_network_not_even_to_the_registry_on_the_host(
    evaluation_image: EvaluationImage, docker_engine: DockerEngine, registry_server: RegistryServer
) -> None:
    script = "\n".join(
        [
            f"if nc -w 2 127.0.0.1 {registry_server.port} </dev/null; then "
            + jsonl("registry-unreachable", "fail", "connected to the registry")
            + "; else "
            + jsonl("registry-unreachable", "pass")
            + "; fi",
            # Only the loopback interface exists.
            'test "$(ls /sys/class/net)" = lo && ' + jsonl("loopback-only", "pass"),
        ]
    )
    result = run(evaluation_image, docker_engine, registry_server, command=["sh", "-c", script])
    assert [(check.name, check.status) for check in result.checks] == [
        ("registry-unreachable", "passed"),
        ("loopback-only", "passed"),
    ], result.output_tail
    assert result.passed


LOCKDOWN_SCRIPT = r"""
status() { grep "^$1:" /proc/self/status | tr -d ' \t' | cut -d: -f2; }
printf '{"check": "caps", "status": "pass", "message": "%s"}\n' "$(status CapEff)"
printf '{"check": "nnp", "status": "pass", "message": "%s"}\n' "$(status NoNewPrivs)"
memory=$(cat /sys/fs/cgroup/memory.max 2>/dev/null ||
    cat /sys/fs/cgroup/memory/memory.limit_in_bytes)
printf '{"check": "memory", "status": "pass", "message": "%s"}\n' "$memory"
pids=$(cat /sys/fs/cgroup/pids.max 2>/dev/null || cat /sys/fs/cgroup/pids/pids.max)
printf '{"check": "pids", "status": "pass", "message": "%s"}\n' "$pids"
ls -ldn /eval /results | while read -r mode links owner rest; do
    printf '{"check": "mode", "status": "pass", "message": "%s %s"}\n' "$mode" "$owner"
done
if echo nope > /eval/tampered 2>/dev/null; then
    printf '{"check": "eval-read-only", "status": "fail"}\n'
fi
"""


def test_the_suite_container_is_locked_down_with_the_suites_limits(
    evaluation_image: EvaluationImage, docker_engine: DockerEngine, registry_server: RegistryServer
) -> None:
    result = run(
        evaluation_image,
        docker_engine,
        registry_server,
        command=["sh", "-c", LOCKDOWN_SCRIPT],
        memory_mb=64,
        pids_limit=32,
    )
    seen = {check.name: check.message for check in result.checks}
    assert result.passed, result.output_tail
    assert seen["caps"] == "0000000000000000"
    assert seen["nnp"] == "1"
    assert seen["memory"] == str(64 * 1024 * 1024)
    assert seen["pids"] == "32"
    modes = [check.message for check in result.checks if check.name == "mode"]
    assert modes == ["drwxr-xr-x 0", "drwxrwxrwt 0"]


def test_output_that_is_not_trustworthy_becomes_problems_and_fails_the_run(
    evaluation_image: EvaluationImage, docker_engine: DockerEngine, registry_server: RegistryServer
) -> None:
    script = "\n".join(
        [
            jsonl("tls", "pass"),
            'echo \'{"check": "dns"}\'',
            'echo \'{"check": "cut off\'',
            "head -c 300 /bin/busybox | tr -d '\\000'",
            "echo",
            'i=0; while [ $i -lt 300 ]; do echo "filler line $i"; i=$((i+1)); done',
            "echo last line",
        ]
    )
    result = run(evaluation_image, docker_engine, registry_server, command=["sh", "-c", script])
    assert result.checks == (CheckResult("tls", "passed"),)
    assert result.exit_code == 0
    assert result.problems == (
        'line 2: a check result needs a "status"',
        "line 3: starts like a JSON object but is not valid JSON",
    )
    assert not result.passed
    assert result.summary() == (
        '1 check: 1 passed; 2 problems: line 2: a check result needs a "status"'
    )
    # The record keeps the end of the output, capped.
    assert len(result.output_tail.encode()) <= OUTPUT_TAIL_BYTES
    assert result.output_tail.endswith("filler line 299\nlast line\n")


def test_a_command_the_image_lacks_is_a_failed_run_not_an_exception(
    evaluation_image: EvaluationImage,
    docker_engine: DockerEngine,
    registry_server: RegistryServer,
    engine: Any,
) -> None:
    result = run(evaluation_image, docker_engine, registry_server, command=["/no/such/program"])
    assert not result.passed
    assert result.checks == ()
    assert len(result.problems) == 1
    assert result.problems[0].startswith("the suite's container did not start: ")
    assert "no such file" in result.problems[0].lower()
    assert result.summary().startswith("no check results (did not run); 1 problem: ")
    assert suite_containers(engine) == []


def test_a_digest_the_registry_does_not_have_is_a_permanent_error(
    evaluation_image: EvaluationImage, docker_engine: DockerEngine, registry_server: RegistryServer
) -> None:
    missing = evaluation_image._replace(
        digest="sha256:" + hashlib.sha256(b"never pushed").hexdigest()
    )
    with pytest.raises(EvaluationImageUnavailableError, match=f"cannot pull {missing.reference}"):
        run(missing, docker_engine, registry_server, command=["true"])
    with pytest.raises(EvaluationImageUnavailableError, match="not an image by digest"):
        run_suite(
            f"{evaluation_image.host}/{evaluation_image.repository}:latest",
            parse_suite_spec({"command": ["true"], "timeout_seconds": 5}),
            docker_host=docker_engine.url,
            credential=None,
        )


def test_a_refused_pull_is_a_permanent_error_that_shows_no_password(
    evaluation_image: EvaluationImage, docker_engine: DockerEngine, registry_server: RegistryServer
) -> None:
    forget_evaluation_image(docker_engine.url, evaluation_image)
    suite = parse_suite_spec({"command": ["true"], "timeout_seconds": 5})
    wrong = RegistryCredential(registry_server.username, "wrong-password-7c1e")
    with pytest.raises(EvaluationImageUnavailableError, match="refused the credentials") as raised:
        run_suite(
            evaluation_image.reference, suite, docker_host=docker_engine.url, credential=wrong
        )
    assert "wrong-password-7c1e" not in str(raised.value)
    with pytest.raises(EvaluationImageUnavailableError, match="needs credentials"):
        run_suite(evaluation_image.reference, suite, docker_host=docker_engine.url, credential=None)
    assert not engine_has(docker_engine.url, evaluation_image)


def test_a_registry_that_is_down_is_retried_not_a_verdict_on_the_image(
    evaluation_image: EvaluationImage, docker_engine: DockerEngine, registry_server: RegistryServer
) -> None:
    forget_evaluation_image(docker_engine.url, evaluation_image)
    suite = parse_suite_spec({"command": ["true"], "timeout_seconds": 5})
    with (
        registry_server.stopped(),
        pytest.raises(EvaluationRegistryUnavailableError, match="could not serve") as raised,
    ):
        run_suite(
            evaluation_image.reference,
            suite,
            docker_host=docker_engine.url,
            credential=registry_server.credential(),
        )
    # Retried as the engine being unreachable is.
    assert isinstance(raised.value, EvaluationEngineUnavailableError)


def test_an_unreachable_engine_is_a_transient_error(tmp_path: Path) -> None:
    suite = SuiteSpec(command=["true"], timeout_seconds=5)
    with pytest.raises(EvaluationEngineUnavailableError, match="cannot be reached"):
        run_suite(
            "127.0.0.1:5000/evaluation/busybox@sha256:" + "a" * 64,
            suite,
            docker_host=f"unix://{tmp_path}/no-such-docker.sock",
            credential=None,
        )

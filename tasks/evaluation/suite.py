"""Evaluation suites: a command run in the image under test, on the Docker engine, whose
per-check results decide a certification.

A suite (``SuiteSpec``, stored in ``evaluation_tiers.suite``) is an argv, the check scripts it
needs (``files``), how it reports its checks (``jsonl`` on standard output or a ``junit`` XML
file) and its limits. ``run_suite`` runs it against one image digest:

- the image is the engine's own copy when it has that digest, else it is pulled by digest with
  exactly the credential given (the engine's stored logins are never used);
- one container, locked down whatever the image: no network (``network_mode=none``), every
  capability dropped, ``no-new-privileges``, memory (no swap beyond it), CPU and process limits,
  running as the image's own user with the image's working directory;
- the suite's files are in ``/eval`` (read-only to the suite's user: mode 0755, owned by root)
  and ``/results`` is an empty directory anyone may write (mode 1777), both put into the
  created container before it starts. Both are in the container's own writable layer rather
  than a tmpfs and a read-only root: a tmpfs is mounted only while the container runs, so a
  JUnit report written there would be gone by the time it can be read, and the engine refuses
  to copy files into a read-only root. The layer goes with the container;
- the environment is the image's, then the suite's ``env``, then ``extra_env`` (the caller's
  ``DRYDOCK_*`` variables, which a suite's ``env`` may not set);
- at ``timeout_seconds`` after it started the container is killed and the run is timed out;
  the container is removed however the run ends (labels ``io.drydock.evaluation.*`` find any an
  engine crash left behind).

A failing suite is a result, not an exception: a check that fails, a command that is not in the
image, output that cannot be read all make a ``SuiteRun`` that did not pass, with its problems.
Exceptions are for what the suite never got to: the engine unreachable
(``EvaluationEngineUnavailableError``, retried) and an image that cannot be had
(``EvaluationImageUnavailableError``, permanent; ``EvaluationRegistryUnavailableError``, a
registry down or busy, retried).

The docker SDK is imported inside functions: a tier's suite is validated (``parse_suite_spec``)
by producers that must not need the SDK loaded.
"""

from __future__ import annotations

import contextlib
import io
import tarfile
import time
from collections import Counter, deque
from collections.abc import Iterator, Mapping
from dataclasses import dataclass
from types import MappingProxyType
from typing import Any

from adapters import docker_engine, image_pull
from adapters.credentials import RegistryCredential
from adapters.docker_engine import DockerEngineUnavailableError
from kernel.errors import DrydockError, TransientError
from tasks.evaluation.results import (
    CHECK_STATUSES,
    MAX_JUNIT_BYTES,
    CheckResult,
    parse_json_lines,
    parse_junit,
)
from tasks.evaluation.suite_spec import EVAL_DIR, RESULTS_DIR, SuiteSpec

# What standard output a jsonl suite may print: read up to this, the rest is a problem.
MAX_STDOUT_BYTES = 4 * 1024 * 1024
# The end of the combined output kept with the run, for the record.
OUTPUT_TAIL_BYTES = 4 * 1024
_OUTPUT_TAIL_LINES = 200

LABEL_PREFIX = "io.drydock.evaluation."
SUITE_LABEL = LABEL_PREFIX + "suite"
IMAGE_LABEL = LABEL_PREFIX + "image"

_NO_ENV: Mapping[str, str] = MappingProxyType({})


# --- errors -----------------------------------------------------------------------------------


class EvaluationEngineUnavailableError(TransientError):
    """The Docker engine cannot be reached (or went away mid-run): another attempt may have it.
    Never counted as the image failing its suite."""


class EvaluationRegistryUnavailableError(EvaluationEngineUnavailableError):
    """The registry could not serve the pull now (unreachable, 5xx, rate limited): retried like
    an unreachable engine, as the next attempt may well get the image."""


class EvaluationImageUnavailableError(DrydockError):
    """The image cannot be had: no such digest in its repository, or the registry refused the
    pull (no or wrong credentials). Permanent: the same pull fails the same way."""


# --- the spec ---------------------------------------------------------------------------------


# --- a run ------------------------------------------------------------------------------------


@dataclass(frozen=True)
class SuiteRun:
    checks: tuple[CheckResult, ...]
    # None: the suite did not exit by itself (timed out) or never started.
    exit_code: int | None
    timed_out: bool
    # From the container's start to its exit (or its kill).
    duration_ms: float
    # The end of the combined standard output and error, for the record.
    output_tail: str
    image_id: str
    # What could not be read or run: each one fails the run.
    problems: tuple[str, ...]

    @property
    def passed(self) -> bool:
        """Exited 0 in time, reported at least one check, none failed or errored (skipped ones
        do not count against it), and nothing was wrong with what it reported."""
        return (
            not self.timed_out
            and self.exit_code == 0
            and bool(self.checks)
            and not any(check.status in ("failed", "error") for check in self.checks)
            and not self.problems
        )

    def summary(self) -> str:
        """One line for a certification's record, e.g. ``5 checks: 4 passed, 1 failed (tls:
        expected TLS 1.3)``, ``timed out after 3s``, ``no check results (exit 0)``."""
        if self.timed_out:
            text = f"timed out after {self.duration_ms / 1000:.0f}s"
        elif not self.checks:
            ran = f"exit {self.exit_code}" if self.exit_code is not None else "did not run"
            text = f"no check results ({ran})"
        else:
            counts = Counter(check.status for check in self.checks)
            tally = ", ".join(
                f"{counts[status]} {status}" for status in CHECK_STATUSES if counts[status]
            )
            total = len(self.checks)
            text = f"{total} check{'s' if total != 1 else ''}: {tally}"
            bad = [check for check in self.checks if check.status in ("failed", "error")]
            if bad:
                named = [
                    f"{check.name}: {_short(check.message)}" if check.message else check.name
                    for check in bad[:3]
                ]
                if len(bad) > 3:
                    named.append(f"{len(bad) - 3} more")
                text += f" ({'; '.join(named)})"
            if self.exit_code not in (0, None):
                text += f"; exit {self.exit_code}"
        if self.problems:
            count = len(self.problems)
            text += f"; {count} problem{'s' if count != 1 else ''}: {_short(self.problems[0])}"
        return text


def _short(text: str, limit: int = 120) -> str:
    line = text.strip().splitlines()[0] if text.strip() else ""
    return line if len(line) <= limit else line[: limit - 1] + "…"


def run_suite(
    image_ref: str,
    suite: SuiteSpec,
    *,
    docker_host: str | None,
    credential: RegistryCredential | None,
    extra_env: Mapping[str, str] = _NO_ENV,
) -> SuiteRun:
    """Run ``suite`` in the image ``image_ref`` (``host/repository@sha256:...``) on the Docker
    engine at ``docker_host`` (unset: DRYDOCK_DOCKER_HOST, else DOCKER_HOST, else the default
    socket), pulling it with ``credential`` when the engine does not have it."""
    with _evaluation_pull_errors():
        image_pull.split_digest_reference(image_ref)
    address = docker_engine.engine_address(docker_host)
    with _evaluation_engine_errors():
        client = docker_engine.connect(address)
    try:
        with _evaluation_engine_errors(), docker_engine.engine_errors(address):
            with _evaluation_pull_errors():
                image_id = image_pull.ensure_image(client, image_ref, credential)
            environment = {**suite.env, **extra_env}
            return _run_container(client, image_id, image_ref, suite, environment)
    finally:
        client.close()


@contextlib.contextmanager
def _evaluation_engine_errors() -> Iterator[None]:
    """The engine adapter says an unreachable engine with its own error; here it is the
    evaluation's."""
    try:
        yield
    except DockerEngineUnavailableError as exc:
        raise EvaluationEngineUnavailableError(str(exc)) from None


@contextlib.contextmanager
def _evaluation_pull_errors() -> Iterator[None]:
    """The pull's errors, as the evaluation's: retried like an unreachable engine, or permanent."""
    try:
        yield
    except image_pull.RegistryUnavailableError as exc:
        raise EvaluationRegistryUnavailableError(str(exc)) from None
    except image_pull.ImageUnavailableError as exc:
        raise EvaluationImageUnavailableError(str(exc)) from None


def _suite_archive(files: Mapping[str, str]) -> bytes:
    """A tar of /eval (the suite's files, 0755, root's) and an empty /results anyone may write,
    extracted at the container's root."""
    now = time.time()
    buffer = io.BytesIO()

    def add(name: str, mode: int, data: bytes | None = None) -> None:
        info = tarfile.TarInfo(name)
        info.mode = mode
        info.mtime = now
        if data is None:
            info.type = tarfile.DIRTYPE
            archive.addfile(info)
        else:
            info.size = len(data)
            archive.addfile(info, io.BytesIO(data))

    with tarfile.open(fileobj=buffer, mode="w", format=tarfile.PAX_FORMAT) as archive:
        add(EVAL_DIR.lstrip("/"), 0o755)
        add(RESULTS_DIR.lstrip("/"), 0o1777)
        made: set[str] = set()
        for path, content in sorted(files.items()):
            parts = path.split("/")
            for end in range(1, len(parts)):
                directory = "/".join(parts[:end])
                if directory not in made:
                    made.add(directory)
                    add(f"{EVAL_DIR.lstrip('/')}/{directory}", 0o755)
            add(f"{EVAL_DIR.lstrip('/')}/{path}", 0o755, content.encode())
    return buffer.getvalue()


def _run_container(
    client: Any,
    image_id: str,
    image_ref: str,
    suite: SuiteSpec,
    environment: Mapping[str, str],
) -> SuiteRun:
    import docker.errors

    def not_run(problem: str) -> SuiteRun:
        return SuiteRun(
            checks=(),
            exit_code=None,
            timed_out=False,
            duration_ms=0.0,
            output_tail="",
            image_id=image_id,
            problems=(problem,),
        )

    try:
        container = client.containers.create(
            image_id,
            command=list(suite.command),
            environment=dict(environment),
            labels={SUITE_LABEL: "true", IMAGE_LABEL: image_ref},
            network_mode="none",
            privileged=False,
            cap_drop=["ALL"],
            security_opt=["no-new-privileges"],
            mem_limit=f"{suite.memory_mb}m",
            # Equal to mem_limit: no swap on top of the memory limit.
            memswap_limit=f"{suite.memory_mb}m",
            nano_cpus=round(suite.cpus * 1e9),
            pids_limit=suite.pids_limit,
            # The output is read back from the logs: json-file, whatever the engine's default
            # driver (syslog, none) is, as those cannot be read back.
            log_config={"type": "json-file", "config": {}},
        )
    except docker.errors.ImageNotFound:
        raise EvaluationImageUnavailableError(
            f"the engine's image of {image_ref} went away before the suite could run"
        ) from None
    except docker.errors.APIError as exc:
        return not_run(
            f"the Docker engine refused the suite's container: {docker_engine.explain(exc)}"
        )
    try:
        try:
            container.put_archive("/", _suite_archive(suite.files))
        except docker.errors.APIError as exc:
            return not_run(
                f"the suite's files could not be put in /eval: {docker_engine.explain(exc)}"
            )
        started = time.monotonic()
        try:
            container.start()
        except docker.errors.APIError as exc:
            # E.g. the program is not in the image ("executable file not found").
            return not_run(f"the suite's container did not start: {docker_engine.explain(exc)}")
        exit_code = docker_engine.wait_for_exit(container, started + suite.timeout_seconds)
        duration_ms = (time.monotonic() - started) * 1000
        timed_out = exit_code is None
        if timed_out:
            docker_engine.kill_container(container)
        problems: list[str] = []
        checks: list[CheckResult] = []
        if suite.results == "jsonl":
            stdout, truncated = _read_stdout(container)
            checks, found = parse_json_lines(stdout)
            if truncated:
                problems.append(
                    f"the suite printed more than {MAX_STDOUT_BYTES} bytes: the rest was not read"
                )
            problems.extend(found)
        elif not timed_out:
            report, problem = _read_file(container, suite.junit_path)
            if report is not None:
                checks, found = parse_junit(report)
                problems.extend(found)
            if problem is not None:
                problems.append(problem)
        if exit_code is not None and exit_code != 0:
            container.reload()
            if container.attrs.get("State", {}).get("OOMKilled"):
                problems.append(f"killed for going over its memory limit of {suite.memory_mb} MiB")
        return SuiteRun(
            checks=tuple(checks),
            exit_code=exit_code,
            timed_out=timed_out,
            duration_ms=duration_ms,
            output_tail=_output_tail(container),
            image_id=image_id,
            problems=tuple(problems),
        )
    finally:
        docker_engine.remove_container(
            container,
            log_action="evaluation.suite.remove_failed",
            message="an evaluation suite container could not be removed",
        )


def _read_stdout(container: Any) -> tuple[str, bool]:
    """The suite's standard output, up to MAX_STDOUT_BYTES (cut at the last whole line), and
    whether there was more."""
    kept = bytearray()
    truncated = False
    stream = container.logs(stdout=True, stderr=False, stream=True, follow=False)
    try:
        for chunk in stream:
            kept += chunk
            if len(kept) > MAX_STDOUT_BYTES:
                truncated = True
                del kept[MAX_STDOUT_BYTES:]
                # A line cut half-way is not a line the suite printed.
                del kept[kept.rfind(b"\n") + 1 :]
                break
    finally:
        close = getattr(stream, "close", None)
        if close is not None:
            close()
    return docker_engine.decode(bytes(kept)), truncated


def _output_tail(container: Any) -> str:
    """The last OUTPUT_TAIL_BYTES of standard output and error, interleaved in the order the
    engine logged them (lines of the two streams printed close together may swap)."""
    tail: deque[bytes] = deque()
    size = 0
    stream = container.logs(
        stdout=True, stderr=True, stream=True, follow=False, tail=_OUTPUT_TAIL_LINES
    )
    try:
        for chunk in stream:
            tail.append(chunk)
            size += len(chunk)
            while size - len(tail[0]) >= OUTPUT_TAIL_BYTES:
                size -= len(tail.popleft())
    finally:
        close = getattr(stream, "close", None)
        if close is not None:
            close()
    return docker_engine.decode(b"".join(tail)[-OUTPUT_TAIL_BYTES:])


def _read_file(container: Any, path: str) -> tuple[bytes | None, str | None]:
    """The file at ``path`` in the stopped container, or why it cannot be had."""
    import docker.errors

    try:
        chunks, stat = container.get_archive(path)
    except docker.errors.NotFound:
        return None, f"the suite wrote no JUnit report at {path}"
    if int(stat.get("size") or 0) > MAX_JUNIT_BYTES:
        return None, f"the JUnit report at {path} is larger than {MAX_JUNIT_BYTES} bytes: not read"
    # The tar around one file: its headers and padding are a few KiB at most.
    limit = MAX_JUNIT_BYTES + 64 * 1024
    archived = bytearray()
    for chunk in chunks:
        archived += chunk
        if len(archived) > limit:
            return None, f"the JUnit report at {path} is larger than {MAX_JUNIT_BYTES} bytes"
    try:
        with tarfile.open(fileobj=io.BytesIO(bytes(archived))) as archive:
            member = archive.next()
            if member is None or not member.isfile():
                return None, f"{path} is not a file: the JUnit report must be one"
            extracted = archive.extractfile(member)
            assert extracted is not None
            return extracted.read(), None
    except tarfile.TarError as exc:
        return None, f"the JUnit report at {path} could not be copied out: {exc}"

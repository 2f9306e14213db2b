"""``drydock flower``: a real Flower process over real HTTP, against the real fleet.

It must refuse to run without credentials (unless ``--insecure-local``, which binds 127.0.0.1
only), answer 401 without them, list the live workers and Drydock's finished tasks by name and
queue, export Prometheus metrics, and never show or log a secret.
"""

from __future__ import annotations

import contextlib
import os
import signal
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
import pytest
from pydantic import SecretStr

from drydock import localservers
from drydock.flower import ENV_VAR, FlowerConfigError, parse_basic_auth, plan_flower
from kernel.settings import Settings
from tests.conftest import WorkerProcess, poll, wait_for_job

pytestmark = pytest.mark.fleet

# A password with a colon in it: only the first colon separates the user.
OPERATOR = ("op", "pa:ss-42")
VIEWER = ("viewer", "v-pw-77")
CREDENTIALS = ",".join(f"{user}:{password}" for user, password in (OPERATOR, VIEWER))
SECRET_VALUE = "s3cr3t-value"


@dataclass
class FlowerProcess:
    proc: subprocess.Popen[bytes]
    log_path: Path
    url: str

    def log(self) -> str:
        return self.log_path.read_text(errors="replace")

    def stop(self, sig: signal.Signals = signal.SIGTERM) -> int:
        """Signal Flower and wait for it; its exit status."""
        if self.proc.poll() is None:
            self.proc.send_signal(sig)
            try:
                self.proc.wait(15)
            except subprocess.TimeoutExpired:
                with contextlib.suppress(ProcessLookupError):
                    os.killpg(self.proc.pid, signal.SIGKILL)
                self.proc.wait(5)
                raise AssertionError(f"flower ignored {sig.name}:\n{self.log()[-2000:]}") from None
        return self.proc.returncode


def drydock_flower(
    tmp_path: Path, *args: str, env: dict[str, str] | None = None
) -> tuple[subprocess.Popen[bytes], Path]:
    """Start ``drydock flower`` with the tests' settings (and no credentials unless in ``env``);
    the process and the file collecting its output."""
    log_path = tmp_path / f"flower-{time.monotonic_ns()}.log"
    environment = {k: v for k, v in os.environ.items() if k != ENV_VAR}
    with open(log_path, "wb") as log:
        proc = subprocess.Popen(
            [sys.executable, "-m", "drydock.cli", "flower", *args],
            stdout=log,
            stderr=subprocess.STDOUT,
            start_new_session=True,
            env={**environment, **(env or {})},
        )
    return proc, log_path


def start_flower(
    tmp_path: Path, *args: str, env: dict[str, str] | None = None, prefix: str = ""
) -> FlowerProcess:
    port = localservers.free_port()
    proc, log_path = drydock_flower(tmp_path, "--port", str(port), *args, env=env)
    flower = FlowerProcess(proc, log_path, f"http://127.0.0.1:{port}{prefix}")

    def answers() -> bool:
        if proc.poll() is not None:
            raise RuntimeError(f"flower exited with {proc.returncode}:\n{flower.log()[-2000:]}")
        return httpx.get(f"{flower.url}/healthcheck", timeout=2).status_code == 200

    try:
        localservers.wait_for(answers, 30, "flower")
    except (localservers.ServerUnavailableError, RuntimeError):
        flower.stop()
        raise
    return flower


@pytest.fixture
def flower(fleet: WorkerProcess, tmp_path: Path) -> Iterator[tuple[FlowerProcess, WorkerProcess]]:
    """``drydock flower`` with two users from DRYDOCK_FLOWER_BASIC_AUTH, after the fleet."""
    server = start_flower(tmp_path, env={ENV_VAR: CREDENTIALS})
    try:
        yield server, fleet
    finally:
        assert server.stop() == 0, server.log()[-2000:]
        assert server.proc.poll() is not None


def listed_workers(
    http: httpx.Client, auth: httpx.BasicAuth, *hostnames: str
) -> dict[str, Any] | None:
    """``/api/workers`` as Flower serves it unasked (no ``refresh``), once it holds each of
    ``hostnames`` with its queues and tasks; else None."""
    response = http.get("/api/workers", auth=auth)
    assert response.status_code == 200, response.text
    workers: dict[str, Any] = response.json()
    complete = all(
        {"stats", "active_queues", "registered"} <= set(workers.get(name, {})) for name in hostnames
    )
    return workers if complete else None


def sample(metrics: str, name: str, **labels: str) -> float:
    """The value of the Prometheus sample ``name`` with these labels (others may be present)."""
    for line in metrics.splitlines():
        series, _, value = line.rpartition(" ")
        if series.startswith(name + "{") and all(
            f'{key}="{wanted}"' in series for key, wanted in labels.items()
        ):
            return float(value)
    raise AssertionError(f"no {name} sample with {labels} in:\n{metrics}")


def test_flower_shows_the_fleet_and_drydock_tasks_to_authenticated_users_only(
    flower: tuple[FlowerProcess, WorkerProcess],
) -> None:
    from dispatch.enqueue import enqueue

    server, worker = flower
    auth = httpx.BasicAuth(*OPERATOR)
    with httpx.Client(base_url=server.url, timeout=10) as http:
        # No credentials, wrong ones, or a real user with another's password: 401 everywhere.
        for path in ("/", "/workers", "/tasks", "/api/workers", "/api/tasks", "/api/task/types"):
            assert http.get(path).status_code == 401, path
            assert http.get(path, auth=("op", "wrong")).status_code == 401, path
            assert http.get(path, auth=(VIEWER[0], OPERATOR[1])).status_code == 401, path
        assert http.get("/").headers["www-authenticate"].startswith("Basic")
        # Every configured user gets in.
        for user in (OPERATOR, VIEWER):
            assert http.get("/", auth=user).status_code == 200

        # Flower learns of tasks from events only: wait until the worker's heartbeats reach it,
        # which proves it is subscribed, before sending anything.
        def worker_online() -> bool:
            metrics = http.get("/metrics").text
            return f'flower_worker_online{{worker="{worker.hostname}"}} 1.0' in metrics

        poll(worker_online, 15, "the worker's heartbeat did not reach Flower")

        # The worker list needs no ?refresh=1: Drydock's Flower inspects until every live
        # worker has answered.
        workers = poll(lambda: listed_workers(http, auth, worker.hostname), 15, "no worker")
        served = {queue["name"] for queue in workers[worker.hostname]["active_queues"]}
        assert {"builds", "pushes", "attestation", "evaluation"} <= served
        assert "builds.canary" in workers[worker.hostname]["registered"]
        status = http.get("/api/workers", params={"status": "1"}, auth=auth).json()
        assert status[worker.hostname] is True

        plain = enqueue("builds.canary", {"message": "seen by flower"})
        secret = enqueue("builds.canary", {"data": {"api_token": SECRET_VALUE, "note": "x"}})
        for job in (plain, secret):
            assert wait_for_job(job.id).status == "succeeded"

        def finished() -> dict[str, Any] | None:
            tasks = http.get("/api/tasks", auth=auth).json()
            done = [tasks.get(str(job.id), {}).get("state") for job in (plain, secret)]
            return tasks if done == ["SUCCESS", "SUCCESS"] else None

        tasks = poll(finished, 15, "Flower did not show both jobs as SUCCESS")
        # The workers page lists the live worker, and only live workers.
        listed = http.get("/workers", params={"json": "1"}, auth=auth).json()["data"]
        assert worker.hostname in {row["hostname"] for row in listed}
        assert all(row["status"] for row in listed), listed
        task = tasks[str(plain.id)]  # the Celery task id is the Drydock job id
        assert task["name"] == "builds.canary"
        assert task["routing_key"] == "builds"  # the queue
        assert task["worker"] == worker.hostname
        assert "seen by flower" in task["kwargs"]
        by_name = http.get("/api/tasks", params={"taskname": "builds.canary"}, auth=auth).json()
        assert {str(plain.id), str(secret.id)} <= set(by_name)
        info = http.get(f"/api/task/info/{secret.id}", auth=auth).json()
        assert info["state"] == "SUCCESS" and "[REDACTED]" in info["kwargs"]
        assert "api_token" in info["kwargs"] and "note" in info["kwargs"]
        types = http.get("/api/task/types", auth=auth).json()["task-types"]
        assert "builds.canary" in types
        # The tasks page shows the queue (the routing key) and the redacted arguments.
        page = http.get("/tasks", auth=auth).text
        assert "Routing Key" in page and "kwargs" in page

        # The secret is nowhere Flower serves it.
        for path in ("/api/tasks", f"/api/task/info/{secret.id}", f"/task/{secret.id}", "/metrics"):
            response = http.get(path, auth=auth)
            assert response.status_code == 200, path
            assert SECRET_VALUE not in response.text, path

        # Prometheus metrics: Flower 2.2 serves them to anyone who reaches the port.
        metrics = http.get("/metrics")
        assert metrics.status_code == 200
        assert metrics.headers["content-type"].startswith("text/plain")
        on_worker = {"worker": worker.hostname, "task": "builds.canary"}
        assert sample(metrics.text, "flower_events_total", type="task-succeeded", **on_worker) >= 2
        assert sample(metrics.text, "flower_task_runtime_seconds_count", **on_worker) >= 2

    # Neither Flower's log nor its command line (which `ps` shows to every local user) holds a
    # password or the secret.
    command_line = Path(f"/proc/{server.proc.pid}/cmdline").read_bytes().decode()
    log = server.log()
    assert "builds.canary" in log  # the registered Drydock tasks
    for text in (log, command_line):
        for password in (OPERATOR[1], VIEWER[1], SECRET_VALUE):
            assert password not in text


def test_flower_lists_workers_that_start_after_it_without_being_asked_to_refresh(
    flower: tuple[FlowerProcess, WorkerProcess],
    worker_factory: Callable[..., WorkerProcess],
) -> None:
    """Flower 2.2 inspects the workers once, when it starts: a worker that starts later (as
    under `drydock up`, where Flower starts with the workers) used to be missing from
    /api/workers until someone asked for ``?refresh=1``. Drydock's Flower inspects again."""
    server, shared = flower
    auth = httpx.BasicAuth(*OPERATOR)
    with httpx.Client(base_url=server.url, timeout=10) as http:
        late = worker_factory("flower-late", queues="remediation")
        started = time.monotonic()
        workers = poll(
            lambda: listed_workers(http, auth, late.hostname, shared.hostname),
            20,
            "the worker started after Flower is not in /api/workers",
        )
        served = {queue["name"] for queue in workers[late.hostname]["active_queues"]}
        assert served == {"remediation"}
        assert "remediation.canary" in workers[late.hostname]["registered"]
        assert workers[late.hostname]["stats"]["pid"] == late.pid
        # Within a few of Flower's checks, not at its periodic refresh (REFRESH_SECONDS).
        assert time.monotonic() - started < 20

        # The same worker name, restarted on another queue: the list follows the new process.
        late.stop()
        again = worker_factory("flower-late", queues="remediation,evaluation")
        assert again.hostname == late.hostname

        def restarted() -> dict[str, Any] | None:
            workers = listed_workers(http, auth, again.hostname)
            if workers is None or workers[again.hostname]["stats"]["pid"] != again.pid:
                return None
            return workers

        workers = poll(restarted, 20, "the restarted worker's new process is not listed")
        served = {queue["name"] for queue in workers[again.hostname]["active_queues"]}
        assert served == {"remediation", "evaluation"}


def test_flower_refuses_to_start_without_credentials(tmp_path: Path) -> None:
    port = localservers.free_port()
    cases: list[tuple[list[str], dict[str, str], str]] = [
        ([], {}, "--insecure-local"),
        ([], {ENV_VAR: "  "}, "--basic-auth USER:PASSWORD"),
        (["--basic-auth", "alice"], {}, "not USER:PASSWORD"),
        (["--basic-auth", "alice:"], {}, "empty password"),
        (["--basic-auth", ":hunter2x"], {}, "empty user name"),
        (["--basic-auth", "a:b,,c:d"], {}, "entry 2 of --basic-auth is empty"),
        ([], {ENV_VAR: "bob:pw1,carol"}, f"entry 2 of {ENV_VAR}"),
        (["--insecure-local", "--address", "0.0.0.0"], {}, "127.0.0.1 only"),
        (["--insecure-local"], {ENV_VAR: "a:hunter2x"}, "use one or the other"),
    ]
    for args, env, fragment in cases:
        proc, log_path = drydock_flower(tmp_path, "--port", str(port), *args, env=env)
        assert proc.wait(30) != 0, args
        output = log_path.read_text()
        lines = output.strip().splitlines()
        assert len(lines) == 1 and lines[0].startswith("error: "), output
        assert fragment in lines[0], (fragment, lines[0])
        assert "hunter2x" not in output and "pw1" not in output
    # Nothing was left listening.
    with pytest.raises(httpx.ConnectError):
        httpx.get(f"http://127.0.0.1:{port}/", timeout=2)


def test_insecure_local_serves_the_ui_on_loopback_only(redis_server: str, tmp_path: Path) -> None:
    server = start_flower(
        tmp_path,
        "--insecure-local",
        "--url-prefix",
        "/flower/",
        prefix="/flower",
        # Flower's own variables cannot widen what runs.
        env={"FLOWER_ADDRESS": "0.0.0.0", "FLOWER_UNAUTHENTICATED_API": "true"},
    )
    try:
        assert server.log().startswith("Flower for the Drydock fleet at")
        assert "NO authentication" in server.log()
        with httpx.Client(base_url=server.url, timeout=10) as http:
            assert http.get("/").status_code == 200
            assert http.get("/tasks").status_code == 200
            assert "flower_" in http.get("/metrics").text
            # Flower keeps its HTTP API closed without authentication.
            assert http.get("/api/workers").status_code == 401
        listening = subprocess.run(
            ["ss", "-Hltnp"], capture_output=True, text=True, check=False
        ).stdout
        port = server.url.rsplit(":", 1)[1].split("/")[0]
        mine = [line for line in listening.splitlines() if f":{port} " in line]
        if mine:  # ss may be missing; the bind address is then checked by the line above
            assert all("127.0.0.1:" in line for line in mine), mine
    finally:
        # Ctrl-C stops it as cleanly as SIGTERM.
        assert server.stop(signal.SIGINT) == 0, server.log()[-2000:]


def test_credentials_are_checked_and_kept_out_of_the_command_line() -> None:
    credentials = parse_basic_auth(["alice:a:1", " bob:b2 , carol:c3"], "--basic-auth")
    assert credentials.users == ("alice", "bob", "carol")
    assert credentials.secret.get_secret_value() == "alice:a:1,bob:b2,carol:c3"
    assert "a:1" not in repr(credentials)
    with pytest.raises(FlowerConfigError, match="no USER:PASSWORD pair"):
        parse_basic_auth([], "--basic-auth")

    settings = Settings(flower_basic_auth=SecretStr("env:from-env"))
    plan = plan_flower(port=6000, address="0.0.0.0", url_prefix="/ops/", settings=settings)
    assert plan.users == ("env",)
    assert plan.env == {"FLOWER_BASIC_AUTH": "env:from-env"}
    assert not any("from-env" in arg for arg in plan.argv)
    assert "from-env" not in repr(plan) and "from-env" not in plan.describe()
    assert plan.argv[0] == "flower"
    assert {"--address=0.0.0.0", "--port=6000", "--url_prefix=ops"} <= set(plan.argv)
    assert plan.url == "http://0.0.0.0:6000/ops/"
    # The flag wins over the setting.
    assert plan_flower(basic_auth=["x:y"], settings=settings).users == ("x",)
    insecure = plan_flower(insecure_local=True, settings=Settings(flower_basic_auth=None))
    assert insecure.env == {} and not insecure.authenticated
    assert "--address=127.0.0.1" in insecure.argv

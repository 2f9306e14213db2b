"""The fleet across hosts: Redis, PostgreSQL and two workers each on a test host of its own.

The hosts are network namespaces cabled to one switch (``tests.netns``); the test process is a
client on the same switch. Jobs go from the client through Redis to both workers and their
outcomes into PostgreSQL, all over the network. Pulling one worker's cable while it runs a job
is the failure a single machine cannot show: the worker does not die, its connections are not
closed, it simply goes silent. Redis still holds the job as delivered to it; once its heartbeat
is older than DRYDOCK_ORPHAN_AFTER_SECONDS, the other worker's orphan sweep puts the job back
and runs it, long before the visibility timeout would; when the cut
worker's cable is plugged back in, whatever it still tries to record about its stale attempt is
refused. One outcome, recorded by the worker that could be reached.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
import uuid
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest
import redis
from sqlalchemy import Engine, create_engine, pool, select
from sqlalchemy.orm import Session

from drydock import localservers
from kernel.topology import WORK_QUEUES
from models.jobs import Job, JobEvent
from models.migrate import upgrade
from tests import netns
from tests.conftest import WorkerProcess, _missing
from workers.heartbeat_file import read_local_heartbeat

pytestmark = pytest.mark.fleet

# Short limits so that a lost job comes back within seconds. The rule the settings enforce:
# the visibility timeout exceeds the longest time limit plus the longest retry delay. It is
# set far past the orphan threshold, so the job can only come back by the orphan sweep.
TIME_LIMIT = 5
RETRY_MAX_SECONDS = 1
VISIBILITY_TIMEOUT = 60
ORPHAN_AFTER_SECONDS = 3
# A job long enough to be caught mid-run, short enough to finish well within the soft limit.
SLOW_JOB_SECONDS = 2.0
# The events of a job whose first worker was lost and whose second finished it.
ONE_REDELIVERY_ONE_OUTCOME = [("enqueued", 0), ("started", 1), ("started", 2), ("succeeded", 2)]


@dataclass
class MultihostFleet:
    network: netns.Network
    broker_url: str
    database_url: str
    workdir: Path
    engine: Engine
    workers: dict[str, WorkerProcess] = field(default_factory=dict)

    def fleet_env(self) -> dict[str, str]:
        """The environment of every process of this fleet (workers and the client)."""
        return {
            **os.environ,
            "DRYDOCK_BROKER_URL": self.broker_url,
            "DRYDOCK_DATABASE_URL": self.database_url,
            "DRYDOCK_TIME_LIMITS": json.dumps(dict.fromkeys(WORK_QUEUES, TIME_LIMIT)),
            "DRYDOCK_RETRY_MAX_SECONDS": str(RETRY_MAX_SECONDS),
            "DRYDOCK_VISIBILITY_TIMEOUT": str(VISIBILITY_TIMEOUT),
            "DRYDOCK_RESTORE_SWEEP_SECONDS": "1",
            "DRYDOCK_ORPHAN_AFTER_SECONDS": str(ORPHAN_AFTER_SECONDS),
            "DRYDOCK_ORPHAN_SWEEP_SECONDS": "1",
        }

    def heartbeat_file(self, hostname: str) -> Path:
        """Where the worker ``hostname`` writes its heartbeat (``DRYDOCK_HEARTBEAT_FILE``)."""
        return self.workdir / f"{hostname}.heartbeat"

    def enqueue(self, jobs: list[tuple[str, dict[str, Any]]]) -> list[uuid.UUID]:
        """Enqueue from the client host with ``dispatch.enqueue.enqueue`` (in a process of its
        own: this process's settings belong to the session's single-machine fleet)."""
        script = (
            "import json, sys\n"
            "from dispatch.enqueue import enqueue\n"
            "jobs = json.loads(sys.argv[1])\n"
            "print(json.dumps([str(enqueue(name, payload).id) for name, payload in jobs]))\n"
        )
        done = subprocess.run(
            [sys.executable, "-c", script, json.dumps(jobs)],
            env=self.fleet_env(),
            capture_output=True,
            text=True,
            timeout=60,
        )
        assert done.returncode == 0, done.stderr[-3000:]
        return [uuid.UUID(job_id) for job_id in json.loads(done.stdout.splitlines()[-1])]

    def job(self, job_id: uuid.UUID) -> Job:
        with Session(self.engine, expire_on_commit=False) as session:
            job = session.get(Job, job_id)
            assert job is not None, f"job {job_id} is not in the outcome store"
            return job

    def events(self, job_id: uuid.UUID) -> list[JobEvent]:
        """The job's events but its progress reports, oldest first."""
        with Session(self.engine, expire_on_commit=False) as session:
            return list(
                session.execute(
                    select(JobEvent)
                    .where(JobEvent.job_id == job_id, JobEvent.kind != "progress")
                    .order_by(JobEvent.id)
                ).scalars()
            )

    def wait_for_job(self, job_id: uuid.UUID, statuses: tuple[str, ...], timeout: float) -> Job:
        deadline = time.monotonic() + timeout
        while True:
            job = self.job(job_id)
            if job.status in statuses:
                return job
            if time.monotonic() > deadline:
                logs = {name: worker.log()[-3000:] for name, worker in self.workers.items()}
                raise AssertionError(
                    f"job {job_id} is {job.status}, not {statuses}, after {timeout}s; {logs}"
                )
            time.sleep(0.05)


def wait_until(
    check: Callable[[], bool],
    timeout: float,
    what: str,
    details: Callable[[], str] = lambda: "",
) -> None:
    deadline = time.monotonic() + timeout
    while not check():
        assert time.monotonic() < deadline, f"{what}: not within {timeout}s\n{details()}"
        time.sleep(0.05)


def start_worker_on(host: netns.Host, fleet: MultihostFleet) -> WorkerProcess:
    """``drydock worker`` on the remediation queue, one job at a time, on ``host``."""
    hostname = f"worker@{host.namespace}"
    log_path = fleet.workdir / f"{host.namespace}.log"
    options = ["-Q", "remediation", "--concurrency=1", f"--hostname={hostname}", "--loglevel=INFO"]
    with open(log_path, "wb") as log:
        proc = subprocess.Popen(
            host.command([sys.executable, "-m", "drydock.cli", "worker", *options]),
            stdout=log,
            stderr=subprocess.STDOUT,
            start_new_session=True,
            # A heartbeat file each: in a container it is the container's own /tmp.
            env={
                **fleet.fleet_env(),
                "DRYDOCK_HEARTBEAT_FILE": str(fleet.heartbeat_file(hostname)),
            },
        )
    return WorkerProcess(proc, log_path, hostname)


def workers_ready(fleet: MultihostFleet) -> bool:
    for worker in fleet.workers.values():
        if worker.proc.poll() is not None:
            raise AssertionError(f"{worker.hostname} exited:\n{worker.log()[-3000:]}")
    return all("ready." in worker.log() for worker in fleet.workers.values())


@pytest.fixture(scope="module")
def multihost() -> Iterator[MultihostFleet]:
    why = netns.networking_unavailable()
    if why is not None:
        _missing(why)
    if not localservers.redis_available():
        _missing("redis-server")
    if not localservers.postgres_available():
        _missing("PostgreSQL (initdb, pg_ctl)")
    # Named like the session's own directory, so CI's last-resort cleanup finds its processes.
    workdir = Path(tempfile.mkdtemp(prefix="drydock-tests-multihost-"))
    stops: list[Callable[[], None]] = []
    try:
        network = netns.Network()
    except netns.NetworkUnavailableError as exc:
        shutil.rmtree(workdir)
        _missing(f"a test network of namespaces ({exc})")
    try:
        redis_host = network.add_host("redis", 2)
        postgres_host = network.add_host("postgres", 3)
        worker_hosts = [network.add_host("w1", 11), network.add_host("w2", 12)]
        broker_url, stop_redis = netns.start_redis_on(redis_host, workdir / "redis")
        stops.append(stop_redis)
        database_url, stop_postgres = netns.start_postgres_on(postgres_host, workdir / "pg")
        stops.append(stop_postgres)
        upgrade("head", url=database_url)
        engine = create_engine(database_url, poolclass=pool.NullPool)
        stops.append(engine.dispose)
        fleet = MultihostFleet(network, broker_url, database_url, workdir, engine)
        for host in worker_hosts:
            worker = start_worker_on(host, fleet)
            fleet.workers[host.port] = worker
            # Killed, not warm-shut-down, at the end: the whole fleet is thrown away.
            stops.append(worker.kill)
        wait_until(lambda: workers_ready(fleet), 60, "both workers started")
        yield fleet
    finally:
        for stop in reversed(stops):
            try:
                stop()
            except Exception as exc:
                print(f"warning: stopping part of the multi-host fleet failed: {exc}")
        network.teardown()
        shutil.rmtree(workdir, ignore_errors=True)


def test_jobs_flow_from_a_client_through_redis_to_workers_on_two_hosts(
    multihost: MultihostFleet,
) -> None:
    job_ids = multihost.enqueue(
        [("remediation.canary", {"sleep_seconds": 0.3, "message": f"job {n}"}) for n in range(6)]
    )
    rows = [multihost.wait_for_job(job_id, ("succeeded",), 30) for job_id in job_ids]
    assert [result_of(row)["message"] for row in rows] == [f"job {n}" for n in range(6)]
    assert all(row.attempts == 1 for row in rows)
    # One job at a time each: both hosts' workers took some.
    assert {row.worker for row in rows} == {w.hostname for w in multihost.workers.values()}


def test_a_worker_cut_off_mid_job_gives_it_back_to_the_other_and_it_completes_once(
    multihost: MultihostFleet,
) -> None:
    [job_id] = multihost.enqueue(
        [("remediation.canary", {"sleep_seconds": SLOW_JOB_SECONDS, "message": "cut"})]
    )
    running = multihost.wait_for_job(job_id, ("running",), 30)
    # Whichever worker took it has its cable cut; the other must finish it.
    [cut_name] = [name for name, w in multihost.workers.items() if w.hostname == running.worker]
    [other_worker] = [w for name, w in multihost.workers.items() if name != cut_name]
    cut_worker = multihost.workers[cut_name]
    cut_host = multihost.network.hosts[cut_name]
    multihost.network.cut(cut_host)
    caught = multihost.job(job_id)
    assert (caught.status, caught.attempts) == ("running", 1), "the job ended before the cut"
    try:
        done = multihost.wait_for_job(
            job_id, ("succeeded", "dead_lettered"), ORPHAN_AFTER_SECONDS + 20
        )
    finally:
        multihost.network.restore(cut_host)
        restored_at = time.time()
    assert done.status == "succeeded"
    assert done.worker == other_worker.hostname
    assert done.attempts == 2 and result_of(done)["attempt"] == 2
    events = multihost.events(job_id)
    assert [(e.kind, e.attempt) for e in events] == ONE_REDELIVERY_ONE_OUTCOME
    first, second = events[1], events[2]
    assert first.worker == cut_worker.hostname and second.worker == other_worker.hostname
    # It came back because the other worker's orphan sweep gave the silent worker's delivery
    # back once its heartbeat was old enough, not because the attempt failed and was retried
    # (no retry or failure events), and not at the visibility timeout.
    waited = (second.at - first.at).total_seconds()
    assert ORPHAN_AFTER_SECONDS - 0.5 <= waited < VISIBILITY_TIMEOUT - 10
    assert "job.orphan_requeued" in other_worker.log()

    # Cable back in: the cut worker's connections come back to life and its stale attempt, long
    # past its time limit, ends in whichever way the timing gives (the handler returns, its soft
    # or hard time limit stops it, or its store write fails and it hands the message back).
    # Wait until the worker reaches Redis again and holds no job, as its heartbeat file says.
    wait_until(
        lambda: rejoined_holding_nothing(multihost, cut_worker, since=restored_at),
        60,
        f"{cut_worker.hostname} back with nothing held",
        lambda: cut_worker.log()[-3000:],
    )
    # Whatever it tried to record was refused by the job's status guard: one outcome, still.
    assert [(e.kind, e.attempt) for e in multihost.events(job_id)] == ONE_REDELIVERY_ONE_OUTCOME
    again = multihost.job(job_id)
    assert (again.status, again.worker, again.attempts) == ("succeeded", other_worker.hostname, 2)
    # Each worker's own account: the rescuer recorded the outcome, the cut worker recorded none.
    assert recorded_outcomes(other_worker, job_id) == ["job.succeeded"]
    assert recorded_outcomes(cut_worker, job_id) == []
    # And Redis holds nothing more of the job: no copy queued or waiting to be redelivered.
    broker = redis.Redis.from_url(multihost.broker_url)
    try:
        wait_until(lambda: broker.hlen("unacked") == 0, 10, "no unacknowledged message left")
        assert broker.llen("remediation") == 0
    finally:
        broker.close()


def result_of(job: Job) -> dict[str, Any]:
    assert isinstance(job.result, dict), job.result
    return job.result


def worker_log_lines(worker: WorkerProcess, job_id: uuid.UUID) -> list[str]:
    return [line for line in worker.log().splitlines() if str(job_id) in line]


def rejoined_holding_nothing(fleet: MultihostFleet, worker: WorkerProcess, since: float) -> bool:
    """The worker's heartbeat file, written after ``since``: it reached Redis and holds no job
    (the file ``drydock probe`` and ``drydock drain`` read)."""
    try:
        beat = read_local_heartbeat(str(fleet.heartbeat_file(worker.hostname)))
    except ValueError:
        return False
    return beat.written_at > since and beat.broker_ok and beat.held == 0


def recorded_outcomes(worker: WorkerProcess, job_id: uuid.UUID) -> list[str]:
    """The outcomes the worker's log says it recorded for the job: ``job.succeeded`` and
    ``job.dead_lettered`` are logged only when the write took effect (a refused success is
    ``job.outcome_already_recorded``; a refused dead letter logs nothing)."""
    events = [
        json.loads(line).get("event")
        for line in worker_log_lines(worker, job_id)
        if line.startswith("{")
    ]
    return [event for event in events if event in ("job.succeeded", "job.dead_lettered")]

"""The operator console in a real browser: Debian's chromium, driven by Playwright, against the
API served by uvicorn and a real worker. Every test fails on a console error of the page, and
writes a screenshot of each page it visits under its temporary directory."""

from __future__ import annotations

import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest

from catalog import CATALOG
from dispatch.enqueue import enqueue
from models import job_reads, tokens
from models.db import session_scope
from tests.conftest import WorkerProcess, wait_for_job

CHROMIUM = "/usr/bin/chromium"
CHROMIUM_FLAGS = [
    "--no-sandbox",
    "--disable-gpu",
    "--disable-background-networking",
    "--disable-component-update",
    "--no-first-run",
]
SECRET = "sk-console-secret-4242"


def api_token(name: str, scopes: list[str], tenant: str | None = None) -> str:
    with session_scope() as session:
        _, plaintext = tokens.create_token(
            session, name=name, scopes=scopes, known_tasks=CATALOG, created_by="test",
            tenant=tenant,
        )  # fmt: skip
    return plaintext


@pytest.fixture(scope="session")
def browser() -> Iterator[Any]:
    from playwright.sync_api import sync_playwright

    if not Path(CHROMIUM).exists():
        pytest.fail(f"{CHROMIUM} is missing: scripts/install-system-deps installs chromium")
    with sync_playwright() as playwright:
        launched = playwright.chromium.launch(
            executable_path=CHROMIUM, headless=True, args=CHROMIUM_FLAGS
        )
        yield launched
        launched.close()


class Console:
    """One browser context on the console: its page, the errors it logged, its screenshots."""

    def __init__(self, context: Any, base: str, shots: Path) -> None:
        self.context = context
        self.base = base
        self.shots = shots
        self.page = context.new_page()
        self.errors: list[str] = []
        self.page.on("console", lambda m: self.errors.append(m.text) if m.type == "error" else None)
        self.page.on("pageerror", lambda exc: self.errors.append(str(exc)))

    def go(self, path: str) -> Any:
        return self.page.goto(self.base + path)

    def shot(self, name: str) -> None:
        self.page.screenshot(path=str(self.shots / f"{name}.png"), full_page=True)

    def log_in(self, token: str) -> None:
        self.go("/console/login")
        self.page.fill("input[name=token]", token)
        self.page.click("button[type=submit]")


@pytest.fixture
def console(browser: Any, api_url: str, clean_state: None, tmp_path: Path) -> Iterator[Console]:
    context = browser.new_context()
    shots = tmp_path / "screenshots"
    shots.mkdir()
    opened = Console(context, api_url, shots)
    yield opened
    context.close()
    assert not opened.errors, f"the pages logged errors: {opened.errors}"


def test_logging_in_exchanges_a_token_for_a_strict_httponly_session(console: Console) -> None:
    operator = api_token("ops", ["*"])
    console.go("/console/jobs")
    # Not logged in: the login page, which brings the page asked for after.
    assert console.page.url.startswith(f"{console.base}/console/login?next=/console/jobs")
    console.page.fill("input[name=token]", "ddk_not-a-token")
    console.page.click("button[type=submit]")
    assert "not valid" in console.page.inner_text("[role=alert]")
    console.shot("login-refused")
    console.page.fill("input[name=token]", operator)
    console.page.click("button[type=submit]")
    console.page.wait_for_url(f"{console.base}/console/jobs")
    [cookie] = console.context.cookies()
    assert cookie["httpOnly"] and cookie["sameSite"] == "Strict"
    # The browser holds a session id, never the token.
    assert operator not in cookie["value"]
    console.go("/console/")
    assert console.page.inner_text("#verdict").startswith("Fleet ")
    assert "builds" in console.page.inner_text("table")
    console.shot("overview")
    console.page.click("header button[type=submit]")  # log out
    console.page.wait_for_url(f"{console.base}/console/login")
    console.go("/console/jobs")
    assert "/console/login" in console.page.url


def test_an_operator_enqueues_a_job_and_watches_it_succeed_on_its_page(
    console: Console, session_worker: WorkerProcess
) -> None:
    console.log_in(api_token("ops", ["*"]))
    console.go("/console/jobs")
    console.page.select_option("select[name=task_name]", "builds.canary")
    console.page.fill(
        "textarea[name=payload]",
        '{"message": "from the console", "sleep_seconds": 1, '
        f'"data": {{"api_token": "{SECRET}"}}}}',
    )
    console.shot("jobs")
    console.page.click("form.enqueue button[type=submit]")
    console.page.wait_for_url(f"{console.base}/console/jobs/*")
    job_id = uuid.UUID(console.page.url.rsplit("/", 1)[1])
    # The page refreshes itself until the job is done.
    console.page.wait_for_selector("#status.succeeded", timeout=30_000)
    assert "from the console" in console.page.inner_text("#result")
    timeline = console.page.inner_text("#timeline")
    assert "enqueued" in timeline and "succeeded" in timeline
    assert SECRET not in console.page.content()
    console.shot("job")
    with session_scope() as session:
        job = job_reads.get_job(session, job_id)
        assert job is not None and job.enqueued_by == "console:ops"
    # A bad payload is refused on the form, with the reason, and nothing is enqueued.
    console.go("/console/jobs")
    console.page.select_option("select[name=task_name]", "builds.canary")
    console.page.fill("textarea[name=payload]", '{"sleep_seconds": -3}')
    console.page.click("form.enqueue button[type=submit]")
    assert "sleep_seconds" in console.page.inner_text("[role=alert]")
    assert console.page.input_value("textarea[name=payload]") == '{"sleep_seconds": -3}'
    console.shot("enqueue-refused")


def test_an_operator_replays_one_dead_letter_and_purges_another(
    console: Console, session_worker: WorkerProcess
) -> None:
    failed = enqueue("builds.canary", {"fail_permanently": True, "message": "replay me"})
    purged = enqueue("builds.canary", {"fail_permanently": True, "message": "purge me"})
    for job in (failed, purged):
        wait_for_job(job.id, ("dead_lettered",))
    console.log_in(api_token("ops", ["*"]))
    console.go("/console/dead-letters")
    assert str(failed.id)[:8] in console.page.inner_text("#dead-letters")
    console.shot("dead-letters")
    console.page.click(f"a[href='/console/dead-letters/{failed.id}']")
    console.shot("dead-letter")
    console.page.click("#replay")
    console.page.wait_for_url(f"{console.base}/console/jobs/*")
    replay_id = uuid.UUID(console.page.url.rsplit("/", 1)[1])
    assert replay_id != failed.id and str(failed.id) in console.page.inner_text("dl")
    with session_scope() as session:
        letter = job_reads.get_dead_letter(session, failed.id)
        assert letter is not None and letter.replay_job_id == replay_id
        assert letter.replayed_by == "console:ops"

    # Purging asks for the job's id typed out; a wrong one purges nothing.
    console.go(f"/console/dead-letters/{purged.id}")
    console.page.fill("input[name=confirm]", "yes")
    console.page.click("#purge")
    assert "confirm by typing the job's id" in console.page.inner_text("[role=alert]")
    console.page.fill("input[name=confirm]", str(purged.id))
    console.page.click("#purge")
    console.page.wait_for_url(f"{console.base}/console/dead-letters")
    assert str(purged.id)[:8] not in console.page.inner_text("#dead-letters")
    with session_scope() as session:
        assert job_reads.get_dead_letter(session, purged.id) is None


def test_forms_without_the_sessions_csrf_token_or_from_another_origin_are_refused(
    api_url: str, clean_state: None, session_worker: WorkerProcess
) -> None:
    failed = enqueue("builds.canary", {"fail_permanently": True})
    wait_for_job(failed.id, ("dead_lettered",))
    with httpx.Client(base_url=api_url, follow_redirects=False) as client:
        logged_in = client.post("/console/login", data={"token": api_token("ops", ["*"])})
        assert logged_in.status_code == 303
        replay = f"/console/dead-letters/{failed.id}/replay"
        assert client.post(replay, data={"confirm": "no csrf"}).status_code == 403
        assert client.post(replay, data={"csrf": "guess"}).status_code == 403
        page = client.get(f"/console/dead-letters/{failed.id}").text
        csrf = page.split('name="csrf" value="', 1)[1].split('"', 1)[0]
        other_site = client.post(
            replay, data={"csrf": csrf}, headers={"Origin": "http://evil.example"}
        )
        assert other_site.status_code == 403 and "is not the console" in other_site.text
    with session_scope() as session:
        letter = job_reads.get_dead_letter(session, failed.id)
        assert letter is not None and letter.replayed_at is None


def test_a_tenant_token_sees_only_its_tenants_jobs_and_dead_letters(
    api_url: str, clean_state: None, session_worker: WorkerProcess
) -> None:
    mine = enqueue("builds.canary", {"fail_permanently": True}, tenant="acme")
    theirs = enqueue("builds.canary", {"fail_permanently": True}, tenant="globex")
    for job in (mine, theirs):
        wait_for_job(job.id, ("dead_lettered",))
    token = api_token("acme", ["builds.*"], "acme")
    with httpx.Client(base_url=api_url, follow_redirects=False) as client:
        # The API too: another tenant's dead letters are neither listed nor shown.
        bearer = {"Authorization": f"Bearer {token}"}
        listed_letters = client.get("/v1/dead-letters", headers=bearer).json()
        assert [letter["job_id"] for letter in listed_letters] == [str(mine.id)]
        assert client.get(f"/v1/dead-letters/{theirs.id}", headers=bearer).status_code == 404
        client.post("/console/login", data={"token": token})
        letters = client.get("/console/dead-letters").text
        assert str(mine.id)[:8] in letters and str(theirs.id)[:8] not in letters
        assert client.get(f"/console/dead-letters/{theirs.id}").status_code == 404
        listed = client.get("/console/jobs").text
        assert str(mine.id)[:8] in listed and str(theirs.id)[:8] not in listed
        assert client.get(f"/console/jobs/{theirs.id}").status_code == 404
        assert client.get(f"/console/jobs/{mine.id}").status_code == 200
        assert client.get("/console/jobs/not-a-job").status_code == 404
        bad_filter = client.get("/console/jobs?status=nope")
        assert bad_filter.status_code == 422 and "status: one of" in bad_filter.text


def test_a_trust_transition_appears_on_the_registry_page_without_a_reload(
    console: Console,
) -> None:
    from models import trust
    from models.trust import AssetKind, TrustState
    from tests.test_remediation import move_to

    asset_id, _ = trust.register_asset(tenant="acme", name="vm-7", kind=AssetKind.VM, actor="t")
    console.log_in(api_token("ops", ["*"]))
    console.go("/console/trust")
    row = f"tr[data-asset='{asset_id}'] .state"
    assert console.page.inner_text(row) == "unknown"
    # A reload would drop this mark: the page must change in place.
    console.page.evaluate("window.drydockMark = 'unreloaded'")
    move_to(asset_id, TrustState.PENDING_ATTESTATION, TrustState.QUARANTINED)
    console.page.wait_for_selector(f"tr[data-asset='{asset_id}'] .state.quarantined")
    live = console.page.inner_text("#live")
    assert "acme/vm-7 pending_attestation -> quarantined (evidence_failed" in live
    assert console.page.evaluate("window.drydockMark") == "unreloaded"
    console.shot("trust")
    console.page.click(f"a[href='/console/trust/{asset_id}']")
    history = console.page.inner_text("#history")
    assert (
        "pending_attestation → quarantined" in history
        and "unknown → pending_attestation" in history
    )
    console.shot("asset")


def test_a_workflow_runs_dag_steps_and_verified_provenance_are_shown(
    console: Console, session_worker: WorkerProcess, worker_factory: Any
) -> None:
    from tasks.workflows import run_operations, store
    from tasks.workflows.definitions import parse_definition
    from tests.conftest import poll

    # The steps run on the shared worker's workflows queue; their children on a worker of
    # their own (a step waits for its child, so they must not share slots).
    worker_factory("console-children", queues="remediation", concurrency=2)

    def step(name: str, *needs: str) -> dict[str, Any]:
        return {
            "name": name, "kind": "job", "needs": list(needs), "task": "remediation.canary",
            "payload": {"message": name}, "timeout_seconds": 60,
        }  # fmt: skip

    steps = [
        step("fetch"),
        step("lint", "fetch"),
        step("test", "fetch"),
        step("ship", "lint", "test"),
    ]
    definition = parse_definition({"name": "release", "steps": steps}, tenant="acme")
    store.create_definition(definition, tenant="acme", actor="test")
    run_id = run_operations.request_run(
        tenant="acme", workflow="release", version=None, reason="test", requested_by="test"
    )
    from models.workflow_runs import RunNotFoundError

    def succeeded() -> bool:
        try:
            return bool(run_operations.run_view(run_id)["state"] == "succeeded")
        except RunNotFoundError:  # its start job has not written it yet
            return False

    poll(succeeded, 90, "the run to succeed")
    console.log_in(api_token("ops", ["*"]))
    console.go("/console/workflows")
    console.shot("workflow-runs")
    console.page.click(f"a[href='/console/workflows/{run_id}']")
    assert console.page.inner_text("#run-state") == "succeeded"
    # The DAG: fetch first, lint and test beside each other, ship last.
    columns = console.page.eval_on_selector_all(
        "#dag .dag-column",
        "cols => cols.map(c => [...c.querySelectorAll('[data-step]')].map(s => s.dataset.step))",
    )
    assert columns == [["fetch"], ["lint", "test"], ["ship"]]
    assert console.page.inner_text("#verification").startswith("Signed provenance verifies")
    console.page.click("#step-ship .step-log summary")
    assert str(run_id) in console.page.inner_text("#step-ship .step-log pre")
    timeline = console.page.inner_text("#run-timeline")
    assert "run.started" in timeline and "step.started ship" in timeline
    console.shot("workflow-run")


# ---- policy, catalog, charts -----------------------------------------------------------------


def test_policy_decisions_show_every_gate_and_the_catalog_each_tier(
    console: Console, api_url: str
) -> None:
    from kernel.decisions import Decision, Gate, GateName
    from models import policy
    from models.policy import PolicyDecisionKind
    from models.runtime import RuntimeRelease, RuntimeServer

    with session_scope() as session:
        policy.record_decision(
            session,
            PolicyDecisionKind.PLACEMENT,
            Decision.of([
                Gate(GateName.CERTIFICATION, True, "certified at standard until tomorrow"),
                Gate(GateName.TARGET_TRUST, False, "host-1 is quarantined: evidence failed"),
            ]),
            request={"digest": "sha256:" + "ab" * 32},
            tenant="acme",
            actor="test",
        )  # fmt: skip
        server = RuntimeServer(
            tenant="acme", name="echo", repository="registry.test/acme/echo", probe_kind="mcp",
            probe_path="/mcp", isolation="container", confidential=False, description="",
            created_by="test",
        )  # fmt: skip
        session.add(server)
        session.flush()
        session.add(
            RuntimeRelease(
                server_id=server.id, tier="standard", digest="sha256:" + "cd" * 32,
                platforms=["linux/amd64"], created_by="test",
            )
        )  # fmt: skip
    token = api_token("acme", ["*"], "acme")
    console.log_in(token)
    console.go("/console/policy")
    decisions = console.page.inner_text("#decisions")
    assert "placement: denied" in decisions
    assert "host-1 is quarantined: evidence failed" in decisions and "FAILED" in decisions
    console.shot("policy")
    console.go("/console/catalog")
    catalog = console.page.inner_text("#catalog")
    assert "acme/echo" in catalog and "standard" in catalog and "not running" in catalog
    assert "sha256:cdcdcdcdcdcd" in catalog
    console.shot("catalog")
    console.page.click("a[href='/console/catalog/acme/echo']")
    assert "No promotion, rollout or rollback yet" in console.page.inner_text("#history")
    console.shot("server-history")
    with httpx.Client(base_url=api_url, follow_redirects=False) as client:
        client.post("/console/login", data={"token": token})
        assert client.get("/console/policy?kind=nope").status_code == 422
        assert "acme/echo" not in client.get("/console/catalog?tier=edge").text
        assert client.get("/console/catalog/globex/echo").status_code == 404


def test_job_intervals_count_what_waited_and_how_long_jobs_took(clean_state: None) -> None:
    from datetime import UTC, datetime, timedelta

    from models.console_series import job_intervals
    from models.jobs import Job

    start = datetime(2026, 12, 1, 12, 0, tzinfo=UTC)
    minute = timedelta(minutes=1)

    def job(enqueued: int, started: int | None, finished: int | None, tenant: str = "acme") -> Job:
        return Job(
            id=uuid.uuid4(), task_name="builds.canary", queue="builds", payload={},
            status="succeeded" if finished is not None else "queued", tenant=tenant,
            enqueued_at=start + enqueued * minute,
            started_at=start + started * minute if started is not None else None,
            finished_at=start + finished * minute if finished is not None else None,
        )  # fmt: skip

    with session_scope() as session:
        session.add_all([
            job(0, 1, 2),  # waited through the first interval, took 2 minutes
            job(0, 3, 4),  # waited through three intervals, took 4 minutes
            job(1, None, None),  # still waiting
            job(1, 2, 3, tenant="globex"),  # another tenant's
        ])  # fmt: skip
    with session_scope() as session:
        intervals = job_intervals(
            session, since=start, until=start + 4 * minute, step_seconds=60, tenant="acme",
            task_names=None,
        )  # fmt: skip
    assert [i.waiting for i in intervals] == [2, 2, 2, 1]
    assert [i.enqueued for i in intervals] == [2, 1, 0, 0]
    assert [i.finished for i in intervals] == [0, 0, 1, 0]
    assert intervals[2].p50_ms == 2 * 60_000
    assert intervals[0].p50_ms is None


def test_the_charts_page_draws_queue_depth_latency_and_build_latency_per_repository(
    console: Console, session_worker: WorkerProcess
) -> None:
    from datetime import UTC, datetime, timedelta

    from models.anomaly import CapabilityScore
    from models.builds import BuildRun
    from models.jobs import Job

    for n in range(3):
        wait_for_job(enqueue("builds.canary", {"message": f"chart {n}"}).id)
    now = datetime.now(UTC)
    repository = "https://git.example/acme/slow-builds.git"
    with session_scope() as session:
        for n, build_ms in enumerate((1200.0, 1300.0, 9800.0)):
            job_id = uuid.uuid4()
            # The builds' jobs, from before the window (their own counts are not the point).
            long_ago = now - timedelta(days=2)
            session.add(Job(id=job_id, task_name="builds.build_image", queue="builds",
                            payload={}, status="succeeded", enqueued_at=long_ago,
                            finished_at=long_ago))  # fmt: skip
            session.flush()
            session.add(
                BuildRun(
                    job_id=job_id, repository_url=repository, revision="main", image="acme/x",
                    backend="docker", platforms=["linux/amd64"], status="built",
                    created_at=now - timedelta(minutes=30 - n), build_ms=build_ms,
                )
            )  # fmt: skip
        session.add(
            CapabilityScore(
                repository=repository, metric="build_latency", value=7.5, flagged=True,
                detail={}, window_start=now - timedelta(days=1), computed_at=now,
            )
        )  # fmt: skip
    console.log_in(api_token("ops", ["*"]))
    console.go("/console/charts")
    assert "3 job(s) enqueued, 3 finished" in console.page.inner_text(".windows")
    for section in ("#queue-depth", "#job-latency", "#build-latency"):
        assert console.page.locator(f"{section} svg.chart").count() == 1, section
    assert console.page.locator("#build-latency polyline").count() == 1
    row = console.page.inner_text("#repositories")
    assert "slow-builds" in row and "7.50 · over its threshold" in row and "9800 ms" in row
    console.shot("charts")
    console.go("/console/charts?window=24h")
    assert console.page.locator("#queue-depth svg.chart").count() == 1

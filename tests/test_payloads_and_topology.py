"""Validation at the edge, the published schemas, routing, and the settings' timing rule."""

from __future__ import annotations

import json
from datetime import UTC, datetime, timedelta

import pytest
from pydantic import ValidationError

from catalog import CATALOG, spec_for
from catalog.canary import CanaryPayload
from dispatch.enqueue import validate_payload
from kernel.errors import PayloadInvalidError, UnknownTaskError
from kernel.settings import Settings
from kernel.topology import WORK_QUEUES, parse_queue_list, prefetch_for, queue_for_task
from tasks.canary.domain import CanaryPermanentError, CanaryTransientError, run_canary


def test_every_queue_has_a_canary_routed_to_it() -> None:
    for queue in WORK_QUEUES:
        assert spec_for(f"{queue}.canary").queue == queue


def test_a_typo_in_a_field_name_is_refused_naming_the_field() -> None:
    with pytest.raises(PayloadInvalidError) as caught:
        validate_payload("builds.canary", {"mesage": "hi"})
    assert [p.field for p in caught.value.problems] == ["mesage"]
    assert "mesage: Extra inputs are not permitted" in str(caught.value)


def test_a_bad_value_names_the_field_and_the_problem_but_not_the_value() -> None:
    with pytest.raises(PayloadInvalidError) as caught:
        validate_payload("pushes.canary", {"sleep_seconds": "hunter2-secret"})
    message = str(caught.value)
    assert message.startswith("invalid payload for pushes.canary: sleep_seconds:")
    assert "hunter2-secret" not in message


def test_unknown_tasks_are_refused_with_the_known_ones_listed() -> None:
    with pytest.raises(UnknownTaskError, match=r"builds\.canary"):
        spec_for("builds.cannary")


def test_schemas_are_published_for_every_task_and_refuse_extra_fields() -> None:
    for name, spec in CATALOG.items():
        schema = json.loads(json.dumps(spec.json_schema()))
        assert schema["title"] == name
        assert schema["additionalProperties"] is False
        assert set(schema["properties"]) == set(spec.payload.model_fields)


def test_task_names_route_by_prefix_and_nothing_else() -> None:
    assert queue_for_task("attestation.verify_evidence") == "attestation"
    for bad in ("canary", "nosuch.canary", "builds.", ".canary"):
        with pytest.raises(ValueError, match="queue"):
            queue_for_task(bad)


def test_workers_refuse_unknown_queues_and_the_dead_letter_queue() -> None:
    assert parse_queue_list("builds, pushes") == ["builds", "pushes"]
    with pytest.raises(ValueError, match="unknown queue 'bulds'"):
        parse_queue_list("bulds")
    with pytest.raises(ValueError, match="parking lot"):
        parse_queue_list("dead_letter")
    # Long-running queues take one message at a time.
    assert prefetch_for(["builds"]) == 1
    assert prefetch_for(["attestation", "builds"]) == 1


def test_visibility_timeout_must_outlast_the_longest_job(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("DRYDOCK_TIME_LIMITS")
    with pytest.raises(ValidationError, match="visibility_timeout"):
        Settings(visibility_timeout=3600, time_limits={"builds": 3600}, retry_max_seconds=60)
    ok = Settings(visibility_timeout=4000, time_limits={"builds": 3600}, retry_max_seconds=60)
    assert ok.time_limit("builds") == 3600
    assert ok.time_limit("attestation") == 300  # defaults fill the rest


def test_time_limits_for_unknown_queues_are_refused() -> None:
    with pytest.raises(ValidationError, match="unknown queues"):
        Settings(time_limits={"bulds": 10})


def test_canary_domain_rehearses_each_failure_mode() -> None:
    noop = lambda pct, msg: None  # noqa: E731
    with pytest.raises(CanaryTransientError):
        run_canary(CanaryPayload(fail_attempts=2), 2, noop)
    assert run_canary(CanaryPayload(fail_attempts=2), 3, noop)["attempt"] == 3
    with pytest.raises(CanaryPermanentError):
        run_canary(CanaryPayload(fail_permanently=True), 1, noop)
    later = datetime.now(UTC) + timedelta(hours=1)
    with pytest.raises(CanaryTransientError, match="outage"):
        run_canary(CanaryPayload(fail_until=later), 1, noop)


def test_canary_reports_progress_while_it_works() -> None:
    seen: list[float] = []
    run_canary(
        CanaryPayload(sleep_seconds=2.5), 1, lambda pct, msg: seen.append(pct), sleep=lambda s: None
    )
    assert seen == [40.0, 80.0, 100.0]


def test_a_blank_or_oversized_idempotency_key_is_refused_before_anything_is_recorded() -> None:
    from dispatch.enqueue import enqueue

    for key in ("", "   ", "k" * 201):
        with pytest.raises(PayloadInvalidError, match="idempotency_key: must be 1 to 200"):
            enqueue("builds.canary", {}, idempotency_key=key)

"""The software TPM of the TPM attestation tests: fixtures around :class:`testkit.tpm.SoftwareTpm`
(swtpm driven with tpm2-tools; ``bench/attestation.py`` uses it too).

``software_tpm`` (session: one swtpm process) and ``tpm_simulator`` (per test: the same TPM after
a TPM Reset, so PCRs are back to their power-on values and no transient object is loaded). Without
swtpm or tpm2-tools the tests skip locally and fail in CI (``CI`` set).
"""

from __future__ import annotations

import json
import threading
from collections.abc import Iterator
from typing import Any

import pytest
import redis

from models.trust import EVIDENCE_REQUEST_CHANNEL
from testkit.tpm import SoftwareTpm, missing_tools


@pytest.fixture(scope="session")
def software_tpm() -> Iterator[SoftwareTpm]:
    """One swtpm for the session; tests take ``tpm_simulator`` instead."""
    from tests.conftest import _missing

    missing = missing_tools()
    if missing:
        # Skips locally, fails in CI (CI set), like every other server the tests need.
        _missing(f"swtpm/tpm2-tools ({', '.join(missing)}; Debian: swtpm swtpm-tools tpm2-tools)")
    with SoftwareTpm.start() as tpm:
        yield tpm


@pytest.fixture
def tpm_simulator(software_tpm: SoftwareTpm) -> SoftwareTpm:
    """The session's TPM just after a TPM Reset: PCRs at their power-on values, nothing loaded,
    resetCount one higher than any earlier test saw."""
    software_tpm.reset()
    return software_tpm


@pytest.fixture
def evidence_requests(redis_server: str) -> Iterator[list[dict[str, Any]]]:
    """Every message on the evidence request channel while the test runs, as an agent gets
    them."""
    received: list[dict[str, Any]] = []
    client = redis.Redis.from_url(redis_server)
    pubsub = client.pubsub()
    pubsub.subscribe(EVIDENCE_REQUEST_CHANNEL)
    stop = threading.Event()

    def listen() -> None:
        while not stop.is_set():
            message = pubsub.get_message(timeout=0.2)
            if message and message["type"] == "message":
                received.append(json.loads(message["data"]))

    thread = threading.Thread(target=listen, daemon=True)
    thread.start()
    yield received
    stop.set()
    thread.join(5)
    pubsub.close()
    client.close()

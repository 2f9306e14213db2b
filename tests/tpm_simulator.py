"""The software TPM of the TPM attestation tests: fixtures around :class:`testkit.tpm.SoftwareTpm`
(swtpm driven with tpm2-tools; ``bench/attestation.py`` uses it too).

``software_tpm`` (session: one swtpm process) and ``tpm_simulator`` (per test: the same TPM after
a TPM Reset, so PCRs are back to their power-on values and no transient object is loaded). Without
swtpm or tpm2-tools the tests skip locally and fail in CI (``CI`` set).
"""

from __future__ import annotations

from collections.abc import Iterator

import pytest

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

"""What every verifier returns: a verdict made of named checks, each passed, failed or skipped
with a reason a person can act on.

The verifiers are pure (bytes in, verdict out) so the Celery task and ``drydock attest verify``
share them, and they raise :class:`EvidenceFormatError` only for input that cannot be read at
all (truncated, oversized, the wrong structure); anything readable but wrong is a failed check.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass, field
from enum import StrEnum
from typing import Any

from kernel.errors import DrydockError

# No real evidence comes near this: quotes are a few KiB, SNP reports 1184 bytes, TDX quotes with
# their certificate chains about 5 KiB (8 KiB buffers), collateral JSON about 16 KiB.
MAX_EVIDENCE_BYTES = 64 * 1024


class EvidenceKind(StrEnum):
    TPM = "tpm"
    SEV_SNP = "sev-snp"
    TDX = "tdx"
    # An Azure confidential VM: HCL report (SEV-SNP report + runtime claims) and a vTPM quote.
    AZURE_CVM = "azure-cvm"
    # Not evidence in the cryptographic sense: a GPU's self-reported posture judged by policy.
    ACCELERATOR_POSTURE = "accelerator-posture"


class EvidenceFormatError(DrydockError):
    """Evidence that cannot be parsed: truncated, oversized, the wrong magic or structure.

    ``part`` names the input ("quote", "vcek", "collateral.tcb_info"); the message says what was
    expected and what was found, never a traceback."""

    def __init__(self, part: str, problem: str) -> None:
        super().__init__(f"{part}: {problem}")
        self.part = part
        self.problem = problem


class Outcome(StrEnum):
    PASSED = "pass"
    FAILED = "fail"
    # Not applicable or not asked for (no reference values given, no collateral supplied).
    SKIPPED = "skip"


@dataclass(frozen=True)
class Check:
    name: str
    outcome: Outcome
    reason: str

    @classmethod
    def passed(cls, name: str, reason: str) -> Check:
        return cls(name, Outcome.PASSED, reason)

    @classmethod
    def failed(cls, name: str, reason: str) -> Check:
        return cls(name, Outcome.FAILED, reason)

    @classmethod
    def skipped(cls, name: str, reason: str) -> Check:
        return cls(name, Outcome.SKIPPED, reason)

    @classmethod
    def judged(cls, name: str, ok: bool, passed: str, failed: str) -> Check:
        return cls(name, Outcome.PASSED if ok else Outcome.FAILED, passed if ok else failed)

    def as_dict(self) -> dict[str, str]:
        return {"name": self.name, "outcome": self.outcome.value, "reason": self.reason}


@dataclass
class Verdict:
    """Every check a verifier ran, in the order it ran them, and the claims it read.

    ``claims`` are the parsed, JSON-ready fields of the evidence (hex strings, ints), which the
    trust registry keeps with the verdict. ``counters`` is TPM-only: the clock info the registry
    stores to refuse a replayed quote next time."""

    kind: EvidenceKind
    checks: list[Check] = field(default_factory=list)
    claims: dict[str, Any] = field(default_factory=dict)

    def add(self, check: Check) -> Check:
        self.checks.append(check)
        return check

    def extend(self, checks: Iterable[Check]) -> None:
        self.checks.extend(checks)

    @property
    def verified(self) -> bool:
        """True only when no check failed and at least one passed."""
        outcomes = [check.outcome for check in self.checks]
        return Outcome.FAILED not in outcomes and Outcome.PASSED in outcomes

    @property
    def failures(self) -> list[Check]:
        return [check for check in self.checks if check.outcome is Outcome.FAILED]

    def summary(self) -> str:
        if self.verified:
            return f"{self.kind.value} evidence verified ({len(self.checks)} checks)"
        failed = self.failures
        if not failed:
            return f"{self.kind.value} evidence not verified: no check passed"
        names = ", ".join(check.name for check in failed)
        return f"{self.kind.value} evidence not verified: {names} failed"

    def as_dict(self) -> dict[str, Any]:
        return {
            "kind": self.kind.value,
            "verified": self.verified,
            "summary": self.summary(),
            "checks": [check.as_dict() for check in self.checks],
            "claims": self.claims,
        }


def require_size(
    part: str, data: bytes, *, minimum: int = 1, maximum: int = MAX_EVIDENCE_BYTES
) -> None:
    """Refuse input outside ``[minimum, maximum]`` bytes with an :class:`EvidenceFormatError`."""
    if len(data) < minimum:
        raise EvidenceFormatError(
            part, f"truncated: {len(data)} bytes, at least {minimum} expected"
        )
    if len(data) > maximum:
        raise EvidenceFormatError(part, f"oversized: {len(data)} bytes, at most {maximum} accepted")


def check_nonce_binding(name: str, report_data: bytes, nonce: bytes | None) -> Check:
    """SEV-SNP and TDX carry 64 bytes of report data chosen by the guest. Drydock's convention:
    the guest puts the verifier's nonce there, zero-padded to 64 bytes (what ``snpguest`` and
    the TDX quote tools do with a nonce shorter than the field)."""
    if nonce is None:
        return Check.skipped(name, "no nonce was given, so freshness was not checked")
    size = len(report_data)
    if len(nonce) > size:
        return Check.failed(name, f"the nonce is {len(nonce)} bytes; report data holds {size}")
    expected = nonce + bytes(size - len(nonce))
    return Check.judged(
        name,
        report_data == expected,
        f"report data is the nonce {nonce.hex()} (zero-padded)",
        f"report data {report_data.hex()} does not carry the nonce {nonce.hex()}: "
        "the evidence was made for another challenge (a replay, or the wrong nonce)",
    )

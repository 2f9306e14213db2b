"""TPM quote verification rate: Drydock's in-process verifier against ``tpm2_checkquote``.

    python bench/attestation.py [--quotes 200] [--checkquote-quotes 100] [--seconds 2]
                                [--alg rsa|ecc] [--pcrs 0-23] [--cpu N]

It starts its own software TPM (swtpm, through testkit/tpm.py) in a temporary
directory and stops it when it ends. It creates an attestation key and makes ``--quotes`` real
quotes of the SHA-256 bank (``--pcrs``, the whole bank by default, as cloud vTPMs quote), each with
its own nonce, then, pinned to one CPU:

1. **in-process**: ``verify_tpm_quote`` over those quotes, round after round for at least
   ``--seconds``, the way the attestation task calls it: the AK as the PEM the registry holds, the
   nonce, reference values for PCRs 0-7 and the previous quote's counters (every check runs);
2. **tpm2_checkquote**: one ``tpm2_checkquote -u ak.pem -m msg -s sig -f pcrs -g sha256 -q nonce``
   process per quote (the first ``--checkquote-quotes``), the usual way to verify a quote from a
   script. It checks less (signature, nonce, PCR digest; no reference values or replay).

Targets: in-process at least 2,000 verifications/s on one core and at least 20 times the
tpm2_checkquote rate. Every verification must succeed; a failure ends the run.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from evidence.tpm import (  # noqa: E402
    TpmCounters,
    TpmEvidence,
    TpmReference,
    verify_tpm_quote,
)
from evidence.verdict import Verdict  # noqa: E402
from testkit.tpm import AttestationKey, SoftwareTpm, TpmQuote  # noqa: E402

TARGET_RATE = 2000.0
TARGET_RATIO = 20.0


@dataclass(frozen=True)
class Job:
    """One verification as the attestation task would run it."""

    evidence: TpmEvidence
    nonce: bytes
    last_counters: TpmCounters | None


@dataclass(frozen=True)
class Rate:
    label: str
    verifications: int
    seconds: float

    @property
    def per_second(self) -> float:
        return self.verifications / self.seconds


def parse_pcrs(text: str) -> list[int]:
    """``0-23`` or ``0,1,7``."""
    if "-" in text:
        first, last = text.split("-", 1)
        return list(range(int(first), int(last) + 1))
    return [int(index) for index in text.split(",")]


def make_quotes(
    tpm: SoftwareTpm, alg: str, pcrs: list[int], count: int
) -> tuple[AttestationKey, list[TpmQuote]]:
    ak = tpm.create_ak("ecc" if alg == "ecc" else "rsa")
    quotes = [tpm.quote(ak, f"bench-{i:06d}".encode(), {"sha256": pcrs}) for i in range(count)]
    return ak, quotes


def make_jobs(quotes: list[TpmQuote], ak_pem: bytes) -> tuple[list[Job], TpmReference]:
    """The verifications to time, each quote judged against the counters of the one before it
    (as the registry would), with reference values for PCRs 0-7 taken from the first quote.
    Each is checked once untimed, so a failure shows here and not as a fast wrong rate."""
    values = json.loads(quotes[0].pcrs)["sha256"]
    reference = TpmReference(
        pcrs={"sha256": {int(i): bytes.fromhex(v) for i, v in values.items() if int(i) < 8}}
    )
    jobs = []
    last: TpmCounters | None = None
    for quote in quotes:
        job = Job(TpmEvidence(quote.quote, quote.signature, quote.pcrs, ak_pem), quote.nonce, last)
        verdict = verify(job, reference)
        if not verdict.verified:
            raise SystemExit(f"a bench quote did not verify: {verdict.as_dict()}")
        last = TpmCounters.from_claims(verdict.claims)
        jobs.append(job)
    return jobs, reference


def verify(job: Job, reference: TpmReference) -> Verdict:
    return verify_tpm_quote(
        job.evidence,
        nonce=job.nonce,
        reference=reference,
        last_counters=job.last_counters,
        at=datetime.now(UTC),
    )


def time_in_process(jobs: list[Job], reference: TpmReference, seconds: float) -> Rate:
    done = 0
    started = time.perf_counter()
    while True:
        for job in jobs:
            verify(job, reference)
        done += len(jobs)
        elapsed = time.perf_counter() - started
        if elapsed >= seconds:
            return Rate("in-process verify_tpm_quote", done, elapsed)


def time_checkquote(quotes: list[TpmQuote], ak_pem_path: Path) -> Rate:
    started = time.perf_counter()
    for quote in quotes:
        result = subprocess.run(
            [
                "tpm2_checkquote",
                "-u",
                str(ak_pem_path),
                "-m",
                str(quote.message_path),
                "-s",
                str(quote.signature_path),
                "-f",
                str(quote.pcrs_path),
                "-g",
                quote.hash,
                "-q",
                quote.nonce.hex(),
            ],
            capture_output=True,
        )
        if result.returncode != 0:
            raise SystemExit(f"tpm2_checkquote refused a bench quote: {result.stderr.decode()}")
    return Rate("tpm2_checkquote per quote", len(quotes), time.perf_counter() - started)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--quotes", type=int, default=200)
    parser.add_argument("--checkquote-quotes", type=int, default=100)
    parser.add_argument("--seconds", type=float, default=2.0)
    parser.add_argument("--alg", choices=["rsa", "ecc"], default="rsa")
    parser.add_argument("--pcrs", default="0-23", help="SHA-256 PCRs to quote: 0-23 or 0,1,7")
    parser.add_argument("--cpu", type=int, help="CPU to pin to (default: the first allowed)")
    args = parser.parse_args()

    cpu = args.cpu if args.cpu is not None else min(os.sched_getaffinity(0))
    pcrs = parse_pcrs(args.pcrs)
    with SoftwareTpm.start() as tpm:
        started = time.perf_counter()
        ak, quotes = make_quotes(tpm, args.alg, pcrs, args.quotes)
        made = time.perf_counter() - started
        jobs, reference = make_jobs(quotes, ak.pem)

        # One core for both: tpm2_checkquote's processes inherit the affinity.
        os.sched_setaffinity(0, {cpu})
        in_process = time_in_process(jobs, reference, args.seconds)
        checkquote = time_checkquote(quotes[: args.checkquote_quotes], ak.pem_path)

    ratio = in_process.per_second / checkquote.per_second
    print(
        f"\n{len(quotes)} quotes ({args.alg} AK, sha256 PCRs {args.pcrs}) made by swtpm in "
        f"{made:.1f} s; timed on CPU {cpu}"
    )
    print("  method                          verifications  seconds   per second")
    for rate in (in_process, checkquote):
        print(
            f"  {rate.label:<30}  {rate.verifications:>13,}  {rate.seconds:7.2f}"
            f"  {rate.per_second:11,.0f}"
        )
    rate_ok = in_process.per_second >= TARGET_RATE
    ratio_ok = ratio >= TARGET_RATIO
    print(
        f"  in-process {in_process.per_second:,.0f}/s "
        f"(target ≥ {TARGET_RATE:,.0f}/s: {'met' if rate_ok else 'MISSED'})"
    )
    print(
        f"  ratio {ratio:.1f}x tpm2_checkquote "
        f"(target ≥ {TARGET_RATIO:.0f}x: {'met' if ratio_ok else 'MISSED'})"
    )
    return 0 if rate_ok and ratio_ok else 1


if __name__ == "__main__":
    sys.exit(main())

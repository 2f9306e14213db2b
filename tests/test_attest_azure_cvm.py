"""Azure confidential-VM evidence: a real Azure SNP report with its runtime claims and VCEK
(Constellation's test data, in its HCL report) verified against the built-in AMD roots; Azure's
own HCL report layout (kinvolk's az-cvm-vtpm test report, padded NV index and all); and, since
no public sample carries a quote by its HCLAkPub, the whole chain SNP -> runtime claims -> AK ->
quote built here for real: a test AMD PKI signs the SNP report, swtpm makes the quote.

What each kind of tampering fails, truncation and garbling as a format error, and the kind
through ``drydock attest verify``, the payload and the attestation queue.
"""

from __future__ import annotations

import base64
import hashlib
import json
import os
import struct
from collections.abc import Iterator
from dataclasses import replace
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pytest
from cryptography import x509
from cryptography.hazmat.primitives.asymmetric import rsa
from cryptography.hazmat.primitives.serialization import Encoding, PublicFormat
from pydantic import ValidationError
from sqlalchemy import select
from typer.testing import CliRunner

from catalog.attestation import VerifyEvidencePayload
from dispatch.enqueue import enqueue
from drydock.cli import app as cli_app
from evidence.azure_cvm import (
    CLAIMS_OFFSET,
    AzureCvmEvidence,
    parse_hcl_report,
    split_certificates,
    verify_azure_cvm,
)
from evidence.sev_snp import SnpPolicy, SnpTcb
from evidence.tpm import TpmCounters, TpmReference
from evidence.vendor_roots import with_vendor_roots
from evidence.verdict import EvidenceFormatError, Outcome, Verdict
from models import trust
from models.db import session_scope
from models.trust import AssetKind, AttestationVerdict, TrustAsset, TrustAssetClass
from testkit import azure_cvm as built
from testkit.tpm import AttestationKey, SoftwareTpm, TpmQuote
from tests.conftest import WorkerProcess, wait_for_job

DATA = Path(__file__).parent / "data" / "attestation" / "azure-cvm"
CONSTELLATION = DATA / "constellation-milan"
KINVOLK = DATA / "kinvolk-azure-cvm-tooling" / "hcl-report-snp.bin"
# Inside the VCEK's validity (2023-08-30 .. 2030-08-30).
REAL_AT = datetime(2024, 1, 1, tzinfo=UTC)
HW = 32  # the hardware report's offset in the HCL report
PEM, SPKI = Encoding.PEM, PublicFormat.SubjectPublicKeyInfo

SNP_CHECKS = [
    "snp.version",
    "snp.signature_algorithm",
    "snp.signature",
    "snp.signing_key",
    "snp.vcek_chain.signature[0]",
    "snp.vcek_chain.signature[1]",
    "snp.vcek_chain.root",
    "snp.vcek_chain.validity[0]",
    "snp.vcek_chain.validity[1]",
    "snp.vcek_chain.validity[2]",
    "snp.product",
    "snp.vcek_tcb",
    "snp.chip_id",
    "snp.measurement",
    "snp.debug",
    "snp.vmpl",
    "snp.tcb.minimum",
]
QUOTE_CHECKS = [
    "quote.magic",
    "quote.type",
    "quote.signature",
    "quote.nonce",
    "quote.pcr_selection",
    "quote.pcr_digest",
    "quote.pcr_reference",
    "quote.replay",
]
HEAD = ["hcl_report_format", *SNP_CHECKS, "runtime_data_binding", "attestation_key"]


def real_evidence(hcl_report: bytes | None = None) -> AzureCvmEvidence:
    return AzureCvmEvidence(
        hcl_report=(CONSTELLATION / "hcl-report.bin").read_bytes()
        if hcl_report is None
        else hcl_report,
        vcek=(CONSTELLATION / "vcek.cert").read_bytes(),
        chain=(CONSTELLATION / "certchain.pem").read_bytes(),
    )


def judge(
    evidence: AzureCvmEvidence,
    *,
    roots: list[x509.Certificate] | None = None,
    nonce: bytes | None = None,
    snp_policy: SnpPolicy | None = None,
    reference: TpmReference | None = None,
    last_counters: TpmCounters | None = None,
    at: datetime = REAL_AT,
    registered_ak: bytes | None = None,
) -> Verdict:
    return verify_azure_cvm(
        evidence,
        roots=with_vendor_roots([], use_defaults=True) if roots is None else roots,
        nonce=nonce,
        snp_policy=snp_policy or SnpPolicy(),
        tpm_reference=reference or TpmReference(),
        last_counters=last_counters,
        at=at,
        registered_ak=registered_ak,
    )


def outcomes(verdict: Verdict) -> dict[str, Outcome]:
    return {check.name: check.outcome for check in verdict.checks}


def failed(verdict: Verdict) -> set[str]:
    return {check.name for check in verdict.failures}


def flipped(data: bytes, offset: int) -> bytes:
    edited = bytearray(data)
    edited[offset] ^= 0x01
    return bytes(edited)


# --- the real Azure sample --------------------------------------------------------------------


def test_real_sample_verifies_against_the_built_in_amd_roots() -> None:
    verdict = judge(real_evidence())
    assert verdict.verified, verdict.as_dict()
    assert [check.name for check in verdict.checks] == [*HEAD, "quote"]
    skipped = {name for name, outcome in outcomes(verdict).items() if outcome is Outcome.SKIPPED}
    assert skipped == {"snp.measurement", "snp.vmpl", "snp.tcb.minimum", "quote"}
    claims = verdict.claims
    assert claims["hcl"]["report_type"] == "snp" and claims["hcl"]["hash_type"] == "sha256"
    assert claims["runtime_claims"]["key_ids"] == ["HCLAkPub"]
    assert claims["runtime_claims"]["vm_configuration"]["vmUniqueId"] == (
        "B6C98C3B-4EC7-4DA6-BD2F-7D98D20D7B75"
    )
    assert claims["snp"]["reported_tcb"]["snp"] == 6
    assert claims["snp"]["report_data"].startswith("0ccc0895ef2f2c3b")


def test_real_sample_without_the_built_in_roots_fails_the_root() -> None:
    verdict = judge(real_evidence(), roots=[])
    assert failed(verdict) == {"snp.vcek_chain.root"}


def test_real_sample_measurement_and_tcb_policy_apply() -> None:
    # The sample's own launch measurement passes, another fails.
    measurement = bytes.fromhex(judge(real_evidence()).claims["snp"]["measurement"])
    ok = judge(real_evidence(), snp_policy=SnpPolicy(measurements=frozenset({measurement})))
    assert outcomes(ok)["snp.measurement"] is Outcome.PASSED
    other = judge(real_evidence(), snp_policy=SnpPolicy(measurements=frozenset({bytes(48)})))
    assert failed(other) == {"snp.measurement"}
    minimum = judge(
        real_evidence(),
        snp_policy=SnpPolicy(min_tcb=SnpTcb(bootloader=2, tee=0, snp=8, microcode=93)),
    )
    assert failed(minimum) == {"snp.tcb.minimum"}


def test_flipped_snp_report_byte_fails_the_snp_signature() -> None:
    data = (CONSTELLATION / "hcl-report.bin").read_bytes()
    verdict = judge(real_evidence(flipped(data, HW + 0x90)))  # the launch measurement
    assert "snp.signature" in failed(verdict)
    assert outcomes(verdict)["runtime_data_binding"] is Outcome.PASSED


def test_edited_runtime_claims_fail_the_binding_and_nothing_else() -> None:
    data = (CONSTELLATION / "hcl-report.bin").read_bytes()
    at = data.index(b"B6C98C3B")
    edited = data[:at] + b"C6C98C3B" + data[at + 8 :]
    verdict = judge(real_evidence(edited))
    assert failed(verdict) == {"runtime_data_binding"}


def test_a_nonce_without_a_quote_fails_quote() -> None:
    verdict = judge(real_evidence(), nonce=b"fresh")
    assert failed(verdict) == {"quote"}
    assert "can be replayed" in next(c.reason for c in verdict.checks if c.name == "quote")


def test_kinvolk_hcl_report_reads_as_azure_writes_it() -> None:
    data = KINVOLK.read_bytes()
    report = parse_hcl_report(data)
    assert len(data) == 2048 and report.report_size == 1819  # the NV index pads it
    assert report.hash_name == "sha256"
    assert report.runtime_claims["vm-configuration"]["vmUniqueId"] == (
        "BAEFD3E1-184B-4C4C-AB88-0BDAD260505F"
    )
    # The certificates shipped beside it in az-cvm-vtpm are another chip's (PROVENANCE.md): the
    # chain holds to AMD's ARK but the report is not that VCEK's, while its own claims bind.
    bundle = (DATA / "kinvolk-azure-cvm-tooling" / "certs.pem").read_bytes()
    vcek, chain = split_certificates(bundle)
    verdict = judge(AzureCvmEvidence(data, vcek, chain))
    assert failed(verdict) == {"snp.signature", "snp.chip_id"}
    assert outcomes(verdict)["runtime_data_binding"] is Outcome.PASSED
    assert outcomes(verdict)["snp.vcek_chain.root"] is Outcome.PASSED


# --- format errors ----------------------------------------------------------------------------


@pytest.mark.parametrize("length", [0, 3, 31, 32, 600, HW + 1184, CLAIMS_OFFSET - 1, 1300, 1819])
def test_truncated_hcl_report_is_a_format_error(length: int) -> None:
    data = (CONSTELLATION / "hcl-report.bin").read_bytes()
    with pytest.raises(EvidenceFormatError) as refused:
        judge(real_evidence(data[:length]))
    assert refused.value.part == "hcl_report"
    assert "truncated" in refused.value.problem


def _with(data: bytes, offset: int, value: int) -> bytes:
    return data[:offset] + struct.pack("<I", value) + data[offset + 4 :]


@pytest.mark.parametrize(
    ("edit", "message"),
    [
        (lambda d: b"HCLB" + d[4:], "not the HCLA signature"),
        (lambda d: _with(d, 8, 1000), "smaller than its parts"),
        (lambda d: _with(d, CLAIMS_OFFSET - 20, 10), "runtime data header says 10 bytes"),
        (lambda d: _with(d, CLAIMS_OFFSET - 12, 4), "type 4 (tdx)"),
        (lambda d: d[:CLAIMS_OFFSET] + b"[" + d[CLAIMS_OFFSET + 1 :], "not JSON"),
    ],
    ids=["magic", "report-size", "data-size", "tdx", "claims-json"],
)
def test_garbled_hcl_report_is_a_specific_format_error(edit: Any, message: str) -> None:
    data = (CONSTELLATION / "hcl-report.bin").read_bytes()
    with pytest.raises(EvidenceFormatError) as refused:
        parse_hcl_report(edit(data))
    assert message in str(refused.value)


def test_unknown_hash_type_fails_the_binding() -> None:
    data = _with((CONSTELLATION / "hcl-report.bin").read_bytes(), CLAIMS_OFFSET - 8, 9)
    verdict = judge(real_evidence(data))
    assert failed(verdict) == {"runtime_data_binding"}


def test_report_data_beyond_the_hash_must_be_zero() -> None:
    ak = rsa.generate_private_key(public_exponent=65537, key_size=2048).public_key()
    claims = built.runtime_claims(ak.public_bytes(PEM, SPKI))
    pki = built.built_pki()
    # Validly signed, the hash in front, but something of the guest's own behind it.
    report_data = hashlib.sha256(claims).digest() + b"extra"
    report = built.hcl_report(built.snp_report(pki.vcek_key, report_data), claims)
    evidence = AzureCvmEvidence(report, pki.vcek_pem, pki.chain_pem)
    verdict = judge(evidence, roots=[pki.ark], at=built.BUILT_AT)
    assert failed(verdict) == {"runtime_data_binding"}
    assert outcomes(verdict)["snp.signature"] is Outcome.PASSED


# --- the whole chain, built: test AMD PKI + swtpm quote ---------------------------------------


NONCE = bytes.fromhex("5f1d0c0ffee0")
BANKS = {"sha256": [0, 1, 7]}


def built_evidence(
    report: bytes, quote: TpmQuote, *, signature: bytes | None = None
) -> AzureCvmEvidence:
    pki = built.built_pki()
    return AzureCvmEvidence(
        hcl_report=report,
        vcek=pki.vcek_pem,
        chain=pki.chain_pem,
        quote=quote.quote,
        signature=signature or quote.signature,
        pcrs=quote.pcrs,
    )


def judge_built(evidence: AzureCvmEvidence, **options: Any) -> Verdict:
    options.setdefault("nonce", NONCE)
    return judge(evidence, roots=[built.built_pki().ark], at=built.BUILT_AT, **options)


@pytest.fixture
def cvm(tpm_simulator: SoftwareTpm) -> tuple[SoftwareTpm, AttestationKey, bytes, TpmQuote]:
    ak = tpm_simulator.create_ak("rsa")
    report = built.azure_cvm_report(ak.pem)
    quote = tpm_simulator.quote(ak, NONCE, BANKS)
    return tpm_simulator, ak, report, quote


@pytest.mark.parametrize(
    ("alg", "options", "signature_format"),
    [("rsa", {}, "tss"), ("rsa", {}, "plain"), ("ecc", {"curve": "p256"}, "plain")],
)
def test_built_chain_verifies_end_to_end(
    tpm_simulator: SoftwareTpm, alg: Any, options: dict[str, Any], signature_format: Any
) -> None:
    ak = tpm_simulator.create_ak(alg, **options)
    quote = tpm_simulator.quote(ak, NONCE, BANKS, signature_format=signature_format)
    reference = TpmReference(
        pcrs={"sha256": {0: bytes.fromhex(json.loads(quote.pcrs)["sha256"]["0"])}}
    )
    verdict = judge_built(
        built_evidence(built.azure_cvm_report(ak.pem), quote),
        reference=reference,
        registered_ak=ak.tpmt_public,
    )
    assert verdict.verified, verdict.as_dict()
    assert [check.name for check in verdict.checks] == [*HEAD, *QUOTE_CHECKS]
    assert outcomes(verdict)["quote.pcr_reference"] is Outcome.PASSED
    assert verdict.claims["quote"]["extra_data"] == NONCE.hex()
    assert TpmCounters.from_claims(verdict.claims) is not None


def test_built_quote_by_another_ak_fails_the_quote_signature(
    cvm: tuple[SoftwareTpm, AttestationKey, bytes, TpmQuote],
) -> None:
    tpm, _, _, quote = cvm
    # A validly signed report whose claims name another AK than the one that signed the quote.
    other = tpm.create_ak("rsa")
    verdict = judge_built(built_evidence(built.azure_cvm_report(other.pem), quote))
    assert failed(verdict) == {"quote.signature"}


def test_built_wrong_nonce_fails_the_quote_nonce(
    cvm: tuple[SoftwareTpm, AttestationKey, bytes, TpmQuote],
) -> None:
    _, _, report, quote = cvm
    verdict = judge_built(built_evidence(report, quote), nonce=b"another challenge")
    assert failed(verdict) == {"quote.nonce"}


def test_built_pcr_reference_mismatch_fails(
    cvm: tuple[SoftwareTpm, AttestationKey, bytes, TpmQuote],
) -> None:
    _, _, report, quote = cvm
    reference = TpmReference(pcrs={"sha256": {7: b"\xff" * 32}})
    verdict = judge_built(built_evidence(report, quote), reference=reference)
    assert failed(verdict) == {"quote.pcr_reference"}


def test_built_ak_other_than_the_registered_one_fails_attestation_key(
    cvm: tuple[SoftwareTpm, AttestationKey, bytes, TpmQuote],
) -> None:
    tpm, _, report, quote = cvm
    registered = tpm.create_ak("ecc")
    verdict = judge_built(built_evidence(report, quote), registered_ak=registered.pem)
    assert "attestation_key" in failed(verdict)
    assert outcomes(verdict)["quote"] is Outcome.FAILED


def test_built_swapped_ak_in_the_claims_fails_the_binding(
    cvm: tuple[SoftwareTpm, AttestationKey, bytes, TpmQuote],
) -> None:
    tpm, _, report, quote = cvm
    # The AK in the claims replaced by another without re-signing: the SNP report no longer
    # binds the claims, and the quote is not the new AK's.
    other = tpm.create_ak("rsa")
    claims = built.runtime_claims(other.pem)
    original = parse_hcl_report(report)
    swapped = built.hcl_report(original.hardware_report, claims)
    verdict = judge_built(built_evidence(swapped, quote))
    assert failed(verdict) == {"runtime_data_binding", "quote.signature"}


def test_built_replayed_quote_fails_replay(
    cvm: tuple[SoftwareTpm, AttestationKey, bytes, TpmQuote],
) -> None:
    _, _, report, quote = cvm
    first = judge_built(built_evidence(report, quote))
    counters = TpmCounters.from_claims(first.claims)
    assert counters is not None
    verdict = judge_built(built_evidence(report, quote), last_counters=counters)
    assert failed(verdict) == {"quote.replay"}


def test_built_claims_without_hclakpub_fail_attestation_key(
    cvm: tuple[SoftwareTpm, AttestationKey, bytes, TpmQuote],
) -> None:
    _, _, _, quote = cvm
    claims = json.dumps({"keys": [], "vm-configuration": {}}).encode()
    report = built.azure_cvm_report(b"", claims=claims)
    verdict = judge_built(built_evidence(report, quote))
    assert failed(verdict) == {"attestation_key", "quote"}


def test_a_partial_quote_is_a_format_error(
    cvm: tuple[SoftwareTpm, AttestationKey, bytes, TpmQuote],
) -> None:
    _, _, report, quote = cvm
    with pytest.raises(EvidenceFormatError) as refused:
        judge_built(replace(built_evidence(report, quote), pcrs=None))
    assert refused.value.part == "pcrs"


# --- drydock attest verify --------------------------------------------------------------------


def cli(*arguments: str) -> tuple[int, Any]:
    result = CliRunner().invoke(cli_app, ["attest", "verify", "azure-cvm", "--json", *arguments])
    return result.exit_code, json.loads(result.stdout)


def real_arguments(report: Path) -> list[str]:
    return [
        "--hcl-report",
        str(report),
        "--vcek",
        str(CONSTELLATION / "vcek.cert"),
        "--chain",
        str(CONSTELLATION / "certchain.pem"),
        "--at",
        "2024-01-01T00:00:00Z",
    ]


def test_cli_real_sample_verifies_with_no_root_and_tampering_does_not(tmp_path: Path) -> None:
    code, verdict = cli(*real_arguments(CONSTELLATION / "hcl-report.bin"))
    assert code == 0, verdict
    assert verdict["kind"] == "azure-cvm" and verdict["verified"] is True

    tampered = tmp_path / "tampered.bin"
    tampered.write_bytes(flipped((CONSTELLATION / "hcl-report.bin").read_bytes(), HW + 0x20))
    code, verdict = cli(*real_arguments(tampered))
    assert code == 1
    assert "snp.signature" in {c["name"] for c in verdict["checks"] if c["outcome"] == "fail"}

    truncated = tmp_path / "truncated.bin"
    truncated.write_bytes((CONSTELLATION / "hcl-report.bin").read_bytes()[:1000])
    code, verdict = cli(*real_arguments(truncated))
    assert code == 2 and verdict["usable"] is False
    assert verdict["error"].startswith("hcl_report: truncated")


def test_cli_built_chain_with_a_vcek_bundle_and_a_root(
    cvm: tuple[SoftwareTpm, AttestationKey, bytes, TpmQuote], tmp_path: Path
) -> None:
    _, _, report, quote = cvm
    pki = built.built_pki()
    (tmp_path / "hcl.bin").write_bytes(report)
    (tmp_path / "certs.pem").write_bytes(pki.vcek_pem + pki.chain_pem)
    (tmp_path / "ark.pem").write_bytes(pki.ark_pem)
    arguments = [
        "--hcl-report", str(tmp_path / "hcl.bin"),
        "--vcek", str(tmp_path / "certs.pem"),
        "--quote", str(quote.message_path),
        "--signature", str(quote.signature_path),
        "--pcrs", str(tmp_path / "pcrs.json"),
        "--root", str(tmp_path / "ark.pem"),
        "--at", built.BUILT_AT.isoformat(),
    ]  # fmt: skip
    (tmp_path / "pcrs.json").write_bytes(quote.pcrs)
    code, verdict = cli(*arguments, "--nonce", NONCE.hex())
    assert code == 0, verdict
    code, verdict = cli(*arguments, "--nonce", "00")
    assert code == 1
    assert {c["name"] for c in verdict["checks"] if c["outcome"] == "fail"} == {"quote.nonce"}
    code, verdict = cli(*arguments[:4], "--quote", str(quote.message_path))
    assert code == 2 and "--signature, --pcrs missing" in verdict["error"]


# --- the payload and the attestation queue ----------------------------------------------------


def payload(asset_id: Any, report: bytes, quote: TpmQuote, nonce: bytes) -> dict[str, Any]:
    pki = built.built_pki()
    return {
        "asset_id": str(asset_id),
        "nonce": nonce.hex(),
        "verify_at": built.BUILT_AT.isoformat(),
        "evidence": {
            "kind": "azure-cvm",
            "hcl_report": base64.b64encode(report).decode(),
            "vcek": base64.b64encode(pki.vcek_pem).decode(),
            "chain": base64.b64encode(pki.chain_pem).decode(),
            "quote": base64.b64encode(quote.quote).decode(),
            "signature": base64.b64encode(quote.signature).decode(),
            "pcrs": json.loads(quote.pcrs),
        },
    }


def test_payload_parses_each_part_and_refuses_a_truncated_report(
    cvm: tuple[SoftwareTpm, AttestationKey, bytes, TpmQuote],
) -> None:
    _, _, report, quote = cvm
    good = VerifyEvidencePayload.model_validate(payload("8c3e" * 8, report, quote, NONCE))
    assert good.evidence.kind == "azure-cvm"
    bad = payload("8c3e" * 8, report[:1500], quote, NONCE)
    with pytest.raises(ValidationError) as refused:
        VerifyEvidencePayload.model_validate(bad)
    assert "hcl_report: truncated" in str(refused.value)
    no_quote = payload("8c3e" * 8, report, quote, NONCE)
    del no_quote["evidence"]["quote"]
    with pytest.raises(ValidationError, match="quote"):
        VerifyEvidencePayload.model_validate(no_quote)


@pytest.fixture
def test_ark_pinned() -> Iterator[None]:
    """The test ARK among the roots the worker reads (DRYDOCK_ATTESTATION_ROOTS_DIR), for this
    test only."""
    path = Path(os.environ["DRYDOCK_ATTESTATION_ROOTS_DIR"]) / "drydock-test-azure-ark.pem"
    path.write_bytes(built.built_pki().ark_pem)
    yield
    path.unlink()


def test_built_chain_through_the_attestation_queue(
    fleet: WorkerProcess,
    cvm: tuple[SoftwareTpm, AttestationKey, bytes, TpmQuote],
    test_ark_pinned: None,
) -> None:
    _, _, report, quote = cvm
    reference = {"sha256": {"7": json.loads(quote.pcrs)["sha256"]["7"]}}
    with session_scope() as session:
        session.merge(
            TrustAssetClass(
                name="azure-cvm",
                evidence_ttl_seconds=3600,
                tpm_pcrs=reference,
                snp_measurements=[built.MEASUREMENT.hex()],
            )
        )
    asset_id, _ = trust.register_asset(
        tenant="lab", name="cvm-1", kind=AssetKind.VM, asset_class="azure-cvm", actor="test"
    )

    def verify(quote: TpmQuote, nonce: bytes) -> tuple[AttestationVerdict, str]:
        job = enqueue("attestation.verify_evidence", payload(asset_id, report, quote, nonce))
        assert wait_for_job(job.id).status == "succeeded"
        with session_scope() as session:
            verdict = session.scalar(
                select(AttestationVerdict).where(AttestationVerdict.job_id == job.id)
            )
            asset = session.get(TrustAsset, asset_id)
            assert verdict is not None and asset is not None
            return verdict, asset.state

    verdict, state = verify(quote, NONCE)
    assert verdict.verified, verdict.checks
    assert verdict.kind == "azure-cvm"
    checks = {check["name"]: check["outcome"] for check in verdict.checks}
    assert checks["snp.measurement"] == "pass" and checks["quote.pcr_reference"] == "pass"
    # Judged at its pinned (past) time, the evidence has already expired: stale, not trusted.
    assert state == "stale"
    # The same quote again is older than the one accepted: the replay mark held.
    verdict, state = verify(quote, NONCE)
    failures = {check["name"] for check in verdict.checks if check["outcome"] == "fail"}
    assert failures == {"quote.replay"}
    assert state == "quarantined"

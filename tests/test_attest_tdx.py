"""Intel TDX quote verification: the real vendor samples judged as their PROVENANCE.md says, the
byte edits go-tdx-guest rejects, collateral through dcap-qvl, a v5 (TDX 1.5) quote built here
with our own PCK chain, and fuzzing of the parser and the verifier.

One module for one verifier: every check it makes has its sample and its forgery here.
"""

from __future__ import annotations

import hashlib
import json
import shutil
import struct
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import dcap_qvl  # type: ignore[import-untyped, unused-ignore]
import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.hazmat.primitives.asymmetric.utils import decode_dss_signature
from cryptography.hazmat.primitives.serialization import Encoding, PublicFormat
from cryptography.x509.oid import NameOID
from hypothesis import given, settings
from hypothesis import strategies as st

from evidence.certs import load_certificate, load_certificates
from evidence.tdx import (
    INTEL_QE_VENDOR_ID,
    TdxEvidence,
    TdxPolicy,
    collateral_from_directory,
    parse_quote,
    verify_tdx_quote,
)
from evidence.verdict import (
    MAX_EVIDENCE_BYTES,
    EvidenceFormatError,
    Outcome,
    Verdict,
)

SAMPLES = Path(__file__).parent / "data" / "attestation-samples" / "tdx"
SPR = SAMPLES / "go-tdx-guest-spr-v4"
PHALA = SAMPLES / "phala-dcap-qvl-v4-uptodate"
TRUSTEE = SAMPLES / "trustee-v4-debug-td"
GCP = SAMPLES / "go-tdx-guest-gcp-v4-ccel"
PHALA_QUOTE = (PHALA / "quote.dat").read_bytes()
PHALA_COLLATERAL = (PHALA / "collateral.json").read_bytes()

# Pinned verification times (PROVENANCE.md): go-tdx-guest's own test time for the SPR quote;
# one second before the earliest nextUpdate of the Phala collateral; the trustee and GCP quotes'
# commit dates, inside their PCK certificates' windows (2023-02-07.., 2024-07-02..).
SPR_TIME = datetime(2023, 7, 1, 1, 0, tzinfo=UTC)
PHALA_TIME = datetime(2025, 7, 19, 10, 0, 34, tzinfo=UTC)
TRUSTEE_TIME = datetime(2024, 7, 3, tzinfo=UTC)
GCP_TIME = datetime(2024, 8, 29, tzinfo=UTC)

# The Intel SGX TCB Signing certificate as Intel issued it in 2018 (valid 2018-05-21 ..
# 2025-05-21): the same key and serial as the 2025 re-issue in the SPR folder's
# intel_tcb_signing_chain.pem, which is not valid yet at the SPR quote's time. Intel PCS sent
# this one in the TCB-Info-Issuer-Chain header in 2023 (public; e.g. in
# Phala-Network/dcap-qvl's and go-tdx-guest's test collateral of that period).
# test_period_tcb_signing_certificate_is_intels pins that it is Intel's key, signed by the root.
TCB_SIGNING_2018_PEM = b"""-----BEGIN CERTIFICATE-----
MIICizCCAjKgAwIBAgIUfjiC1ftVKUpASY5FhAPpFJG99FUwCgYIKoZIzj0EAwIw
aDEaMBgGA1UEAwwRSW50ZWwgU0dYIFJvb3QgQ0ExGjAYBgNVBAoMEUludGVsIENv
cnBvcmF0aW9uMRQwEgYDVQQHDAtTYW50YSBDbGFyYTELMAkGA1UECAwCQ0ExCzAJ
BgNVBAYTAlVTMB4XDTE4MDUyMTEwNTAxMFoXDTI1MDUyMTEwNTAxMFowbDEeMBwG
A1UEAwwVSW50ZWwgU0dYIFRDQiBTaWduaW5nMRowGAYDVQQKDBFJbnRlbCBDb3Jw
b3JhdGlvbjEUMBIGA1UEBwwLU2FudGEgQ2xhcmExCzAJBgNVBAgMAkNBMQswCQYD
VQQGEwJVUzBZMBMGByqGSM49AgEGCCqGSM49AwEHA0IABENFG8xzydWRfK92bmGv
P+mAh91PEyV7Jh6FGJd5ndE9aBH7R3E4A7ubrlh/zN3C4xvpoouGlirMba+W2lju
ypajgbUwgbIwHwYDVR0jBBgwFoAUImUM1lqdNInzg7SVUr9QGzknBqwwUgYDVR0f
BEswSTBHoEWgQ4ZBaHR0cHM6Ly9jZXJ0aWZpY2F0ZXMudHJ1c3RlZHNlcnZpY2Vz
LmludGVsLmNvbS9JbnRlbFNHWFJvb3RDQS5kZXIwHQYDVR0OBBYEFH44gtX7VSlK
QEmORYQD6RSRvfRVMA4GA1UdDwEB/wQEAwIGwDAMBgNVHRMBAf8EAjAAMAoGCCqG
SM49BAMCA0cAMEQCIB9C8wOAN/ImxDtGACV246KcqjagZOR0kyctyBrsGGJVAiAj
ftbrNGsGU8YH211dRiYNoPPu19Zp/ze8JmhujB0oBw==
-----END CERTIFICATE-----
"""


def intel_root() -> list[x509.Certificate]:
    return load_certificates("root", (SPR / "intel_sgx_root_ca.pem").read_bytes())


def outcome(verdict: Verdict, name: str) -> Outcome:
    return next(check.outcome for check in verdict.checks if check.name == name)


def reason(verdict: Verdict, name: str) -> str:
    return next(check.reason for check in verdict.checks if check.name == name)


def failed_names(verdict: Verdict) -> list[str]:
    return [check.name for check in verdict.failures]


def verify(
    quote: bytes,
    *,
    at: datetime,
    collateral: bytes | None = None,
    nonce: bytes | None = None,
    policy: TdxPolicy | None = None,
    roots: list[x509.Certificate] | None = None,
) -> Verdict:
    return verify_tdx_quote(
        TdxEvidence(quote, collateral),
        roots=intel_root() if roots is None else roots,
        nonce=nonce,
        policy=policy or TdxPolicy(),
        at=at,
    )


def phala_collateral(**changes: Any) -> bytes:
    document = json.loads(PHALA_COLLATERAL)
    for key, value in changes.items():
        if value is None:
            del document[key]
        else:
            document[key] = value
    return json.dumps(document).encode()


def flipped(data: bytes, offset: int, value: int) -> bytes:
    edited = bytearray(data)
    edited[offset] = value
    return bytes(edited)


# --- the real samples --------------------------------------------------------------------------


@dataclass(frozen=True)
class Sample:
    folder: Path
    at: datetime
    mr_td: str
    report_data: str
    fmspc: str
    trailing_bytes: int
    debug: bool


SAMPLE_TABLE = [
    Sample(
        SPR,
        SPR_TIME,
        "6363b8043668a3ad953278e10389574d326c6749fb78aa810ecd9336923db86f22fc00b8dcd404bc10d5e119d7215cbb",
        "6c62dec1b8191749a31dab490be532a35944dea47caef1f980863993d9899545"
        "eb7406a38d1eed313b987a467dacead6f0c87a6d766c66f6f29f8acb281f1113",
        "50806f000000",
        39,
        False,
    ),
    Sample(
        PHALA,
        PHALA_TIME,
        "91eb2b44d141d4ece09f0c75c2c53d247a3c68edd7fafe8a3520c942a604a407de03ae6dc5f87f27428b2538873118b7",
        "9a9d48e7f6799642d3d1b34e1e5e1742d4bb02dd6ddd551862c1211d35c304f9"
        "eca3efdbb481601c163cf52493d6e44aed55d51ec39b7e518fadb92c2b523f20",
        "b0c06f000000",
        70,
        False,
    ),
    Sample(
        TRUSTEE,
        TRUSTEE_TIME,
        "705ee9381b8633a9fbe532b52345e8433343d2868959f57889d84ca377c395b689cac1599ccea1b7d420483a9ce5f031",
        "7c71fe2c86eff65a7cf8dbc22b3275689fd0464a267baced1bf94fc1324656ae"
        "b755da3d44d098c0c87382f3a5f85b45c8a28fee1d3bdb38342bf96671501429",
        "50806f000000",
        0,
        True,
    ),
    Sample(
        GCP,
        GCP_TIME,
        "dae67181d3d65e073ad8f95b7907d5e927bfe9761c9ff3e9b89734a45d8954dba41394c7717cb2735396c1d04231f94a",
        "00" * 64,
        "00806f050000",
        3065,
        False,
    ),
]


@pytest.mark.parametrize("sample", SAMPLE_TABLE, ids=lambda sample: sample.folder.name)
def test_sample_quote_verifies_without_collateral(sample: Sample) -> None:
    verdict = verify(
        (sample.folder / "quote.dat").read_bytes(),
        at=sample.at,
        nonce=bytes.fromhex(sample.report_data),
        policy=TdxPolicy(allow_debug=sample.debug),
        roots=load_certificates("root", (sample.folder / "intel_sgx_root_ca.pem").read_bytes()),
    )

    assert verdict.verified, verdict.as_dict()
    passed = [check.name for check in verdict.checks if check.outcome is Outcome.PASSED]
    for name in ("header", "quote_signature", "qe_report_signature", "qe_binding", "nonce"):
        assert name in passed
    assert "pck_chain.root" in passed
    assert outcome(verdict, "collateral.tcb_status") is Outcome.SKIPPED
    claims = verdict.claims
    assert claims["header"]["version"] == 4
    assert claims["td_report"]["mr_td"] == sample.mr_td
    assert claims["td_report"]["report_data"] == sample.report_data
    assert claims["td_attributes"]["debug"] is sample.debug
    assert claims["trailing_bytes"] == sample.trailing_bytes
    assert claims["pck"]["fmspc"] == sample.fmspc
    json.dumps(verdict.as_dict())  # JSON-ready, as the trust registry stores it


def test_check_names_are_stable_and_ordered() -> None:
    verdict = verify((SPR / "quote.dat").read_bytes(), at=SPR_TIME)

    assert [check.name for check in verdict.checks] == [
        "header",
        "quote_signature",
        "qe_report_signature",
        "qe_binding",
        "pck_chain.signature[0]",
        "pck_chain.signature[1]",
        "pck_chain.root",
        "pck_chain.validity[0]",
        "pck_chain.validity[1]",
        "pck_chain.validity[2]",
        "nonce",
        "debug",
        "mr_td",
        "rtmrs",
        "mr_seam",
        "collateral.verified",
        "collateral.tcb_status",
    ]
    assert "no collateral" in reason(verdict, "collateral.verified")


def test_spr_quote_fails_validity_in_2053() -> None:
    verdict = verify((SPR / "quote.dat").read_bytes(), at=datetime(2053, 7, 1, 1, tzinfo=UTC))

    assert not verdict.verified
    assert outcome(verdict, "pck_chain.validity[0]") is Outcome.FAILED
    assert "expired at 2029-09-20T13:20:31Z" in reason(verdict, "pck_chain.validity[0]")
    assert outcome(verdict, "quote_signature") is Outcome.PASSED


# go-tdx-guest's TestNegativeVerification edits (offset, value) and what must break.
@pytest.mark.parametrize(
    ("offset", "value", "failing"),
    [
        (0x1E, 0x32, "quote_signature"),  # header (user data)
        (0x3C, 0x32, "quote_signature"),  # TD report body
        (0xB77, 0x32, "pck_chain.signature[0]"),  # the PCK leaf's signature
        (0xF5F, 0x32, "pck_chain.signature[1]"),  # the Platform CA's signature
        (0x1329, 0x32, "pck_chain.root"),  # the embedded root is no longer Intel's
    ],
)
def test_spr_signed_byte_edits_fail_the_right_check(offset: int, value: int, failing: str) -> None:
    quote = flipped((SPR / "quote.dat").read_bytes(), offset, value)

    verdict = verify(quote, at=SPR_TIME)

    assert not verdict.verified
    assert failing in failed_names(verdict)
    if failing == "quote_signature":
        assert failed_names(verdict) == ["quote_signature"]


@pytest.mark.parametrize(
    ("offset", "value", "part", "message"),
    [
        (0x00, 3, "quote.header", "quote version 3 is not a TDX quote"),
        (0x278, 0x10, "quote.signature_data", "declares 0x1045 bytes but 0xf8a remain"),
        (0x1343, 0x32, "quote.pck_chain", "3 certificates begin but 2 are complete"),
    ],
)
def test_spr_structural_byte_edits_are_format_errors(
    offset: int, value: int, part: str, message: str
) -> None:
    quote = flipped((SPR / "quote.dat").read_bytes(), offset, value)

    with pytest.raises(EvidenceFormatError) as error:
        verify(quote, at=SPR_TIME)

    assert error.value.part == part
    assert message in error.value.problem


def test_trustee_debug_td_fails_debug_unless_allowed() -> None:
    quote = (TRUSTEE / "quote.dat").read_bytes()

    strict = verify(quote, at=TRUSTEE_TIME)
    lenient = verify(quote, at=TRUSTEE_TIME, policy=TdxPolicy(allow_debug=True))

    assert failed_names(strict) == ["debug"]
    assert "debug mode" in reason(strict, "debug")
    assert lenient.verified
    assert "allowed by the policy" in reason(lenient, "debug")


def test_trustee_claims_match_trustees_expected_claims() -> None:
    expected = json.loads((TRUSTEE / "parse_tdx_claims_expected.json").read_text())
    claims = verify((TRUSTEE / "quote.dat").read_bytes(), at=TRUSTEE_TIME).claims
    # trustee's names for the same fields
    renamed = {"mrsigner_seam": "mr_signer_seam", "tcb_svn": "tee_tcb_svn"}
    renamed |= {f"rtmr_{index}": f"rtmr{index}" for index in range(4)}

    body = expected["quote"]["body"]
    assert len(body) == 15
    for name, value in body.items():
        assert claims["td_report"][renamed.get(name, name)] == value, name
    header = expected["quote"]["header"]
    assert claims["header"]["qe_vendor_id"] == header["vendor_id"]
    assert claims["header"]["user_data"] == header["user_data"]
    assert claims["header"]["version"] == int.from_bytes(bytes.fromhex(header["version"]), "little")
    assert claims["header"]["tee_type"] == int.from_bytes(
        bytes.fromhex(header["tee_type"]), "little"
    )
    assert claims["td_attributes"] == expected["td_attributes"]
    assert claims["td_report"]["report_data"] == expected["report_data"]
    # Ours is the PCK extension's value in DER order (what dcap-qvl reads); trustee's claim
    # lists the same 16 bytes reversed.
    instance = bytes.fromhex(claims["pck"]["platform_instance_id"])
    assert instance[::-1].hex() == expected["platform_instance_id"]


def test_gcp_quote_binds_the_zero_nonce_and_rejects_another() -> None:
    quote = (GCP / "quote.dat").read_bytes()
    nonce = (GCP / "nonce.bin").read_bytes()

    good = verify(quote, at=GCP_TIME, nonce=nonce)
    wrong = verify(quote, at=GCP_TIME, nonce=b"\x01" * 32)

    assert good.verified
    assert good.claims["trailing_bytes"] == 3065
    assert failed_names(wrong) == ["nonce"]
    assert "does not carry the nonce" in reason(wrong, "nonce")


def test_wrong_root_fails_pck_chain_root() -> None:
    other_root, _ = make_ca("Someone Else's Root CA", None)

    verdict = verify(PHALA_QUOTE, at=PHALA_TIME, roots=[other_root])

    assert "pck_chain.root" in failed_names(verdict)
    assert "does not chain to a pinned root (Someone Else's Root CA)" in reason(
        verdict, "pck_chain.root"
    )


def test_no_roots_configured_is_a_failure_not_a_pass() -> None:
    verdict = verify(PHALA_QUOTE, at=PHALA_TIME, roots=[])

    assert "no trusted root is configured" in reason(verdict, "pck_chain.root")
    assert not verdict.verified


def test_reference_values_pass_and_fail_by_name() -> None:
    quote = (GCP / "quote.dat").read_bytes()
    parsed = parse_quote(quote).body
    other = b"\x11" * 48
    matching = TdxPolicy(
        mr_td=frozenset({parsed.mr_td, other}),
        rtmrs={0: parsed.rtmrs[0], 3: bytes(48)},
        mr_seam=frozenset({parsed.mr_seam}),
    )
    wrong = TdxPolicy(
        mr_td=frozenset({other}), rtmrs={1: parsed.rtmrs[1], 2: other}, mr_seam=frozenset({other})
    )

    good = verify(quote, at=GCP_TIME, policy=matching)
    bad = verify(quote, at=GCP_TIME, policy=wrong)

    assert good.verified
    for name in ("mr_td", "rtmrs", "mr_seam"):
        assert outcome(good, name) is Outcome.PASSED
    assert failed_names(bad) == ["mr_td", "rtmrs", "mr_seam"]
    assert f"MRTD {parsed.mr_td.hex()} is not one of the 1 allowed" in reason(bad, "mr_td")
    assert reason(bad, "rtmrs") == f"RTMR2 expected {other.hex()} found {parsed.rtmrs[2].hex()}"


@pytest.mark.parametrize("sample", SAMPLE_TABLE, ids=lambda sample: sample.folder.name)
def test_parser_agrees_with_dcap_qvl(sample: Sample) -> None:
    assert_parser_agrees_with_dcap_qvl((sample.folder / "quote.dat").read_bytes())


def assert_parser_agrees_with_dcap_qvl(quote: bytes) -> None:
    ours = parse_quote(quote)
    theirs = dcap_qvl.parse_quote(quote)
    header, report = theirs.header, theirs.report
    # (the binding's 1.5 class does not subclass its 1.0 class at run time, as its stub says)
    assert isinstance(report, dcap_qvl.TdReport10 | dcap_qvl.TdReport15)

    assert ours.header.version == header.version
    assert ours.header.attestation_key_type == header.attestation_key_type
    assert ours.header.tee_type == header.tee_type
    assert ours.header.qe_vendor_id == bytes(header.qe_vendor_id)
    assert ours.header.user_data == bytes(header.user_data)
    assert ours.body.mr_td == bytes(report.mr_td)
    assert ours.body.mr_seam == bytes(report.mr_seam)
    assert ours.body.td_attributes == bytes(report.td_attributes)
    assert ours.body.xfam == bytes(report.xfam)
    assert ours.body.tee_tcb_svn == bytes(report.tee_tcb_svn)
    assert ours.body.report_data == bytes(report.report_data)
    rtmrs = (report.rt_mr0, report.rt_mr1, report.rt_mr2, report.rt_mr3)
    assert ours.body.rtmrs == tuple(bytes(rtmr) for rtmr in rtmrs)
    assert isinstance(report, dcap_qvl.TdReport15) is (ours.body_type == 3)
    if isinstance(report, dcap_qvl.TdReport15):
        assert ours.body.tee_tcb_svn2 == bytes(report.tee_tcb_svn2)
        assert ours.body.mr_servicetd == bytes(report.mr_service_td)
    their_chain = theirs.cert_chain_pem_bytes()
    assert their_chain is not None
    assert ours.pck_chain.strip(b"\0") == bytes(their_chain).strip(b"\0")


# --- collateral ----------------------------------------------------------------------------------


def test_phala_quote_with_collateral_is_up_to_date() -> None:
    verdict = verify(
        PHALA_QUOTE,
        at=PHALA_TIME,
        collateral=PHALA_COLLATERAL,
    )

    assert verdict.verified, verdict.as_dict()
    assert outcome(verdict, "collateral.verified") is Outcome.PASSED
    assert reason(verdict, "collateral.tcb_status") == "TCB status UpToDate"
    assert verdict.claims["tcb_status"] == "UpToDate"
    assert verdict.claims["advisory_ids"] == []


def test_tcb_status_outside_the_accepted_set_fails_naming_it() -> None:
    policy = TdxPolicy(accepted_tcb_statuses=frozenset({"SWHardeningNeeded"}))

    verdict = verify(
        PHALA_QUOTE,
        at=PHALA_TIME,
        collateral=PHALA_COLLATERAL,
        policy=policy,
    )

    assert failed_names(verdict) == ["collateral.tcb_status"]
    assert "TCB status UpToDate is not accepted by the policy (SWHardeningNeeded)" in reason(
        verdict, "collateral.tcb_status"
    )


def test_collateral_past_its_next_update_fails_verified() -> None:
    verdict = verify(
        PHALA_QUOTE,
        at=PHALA_TIME + timedelta(seconds=2),
        collateral=PHALA_COLLATERAL,
    )

    assert failed_names(verdict) == ["collateral.verified"]
    assert "CrlExpired" in reason(verdict, "collateral.verified")
    assert "pin the time" in reason(verdict, "collateral.verified")
    assert outcome(verdict, "collateral.tcb_status") is Outcome.SKIPPED


def tampered_hex(key: str, index: int) -> dict[str, str]:
    value = bytearray.fromhex(json.loads(PHALA_COLLATERAL)[key])
    value[index] ^= 0x01
    return {key: value.hex()}


@pytest.mark.parametrize(
    ("change", "message"),
    [
        (
            {
                "tcb_info": json.loads(PHALA_COLLATERAL)["tcb_info"].replace(
                    '"UpToDate"', '"OutOfDate"', 1
                )
            },
            "Signature is invalid for tcb_info",
        ),
        (tampered_hex("qe_identity_signature", 3), "Signature is invalid for qe_identity"),
        (tampered_hex("pck_crl", -5), "InvalidCrlSignatureForPublicKey"),
        (tampered_hex("root_ca_crl", -5), "InvalidCrlSignatureForPublicKey"),
    ],
    ids=["tcb_info", "qe_identity_signature", "pck_crl", "root_ca_crl"],
)
def test_tampered_collateral_fails_verified(change: dict[str, str], message: str) -> None:
    verdict = verify(PHALA_QUOTE, at=PHALA_TIME, collateral=phala_collateral(**change))

    assert failed_names(verdict) == ["collateral.verified"]
    assert message in reason(verdict, "collateral.verified")


def test_collateral_is_not_judged_when_the_chain_has_no_pinned_root() -> None:
    other_root, _ = make_ca("Someone Else's Root CA", None)

    verdict = verify(
        PHALA_QUOTE,
        at=PHALA_TIME,
        collateral=PHALA_COLLATERAL,
        roots=[other_root],
    )

    assert "does not reach a pinned root" in reason(verdict, "collateral.verified")
    assert outcome(verdict, "collateral.verified") is Outcome.FAILED


def test_collateral_from_directory_keeps_the_signed_bytes() -> None:
    collateral = json.loads(collateral_from_directory(SPR))

    tcb_response = (SPR / "tcbinfo_50806f000000.json").read_text()
    qe_response = (SPR / "qe_identity.json").read_text()
    assert f'{{"tcbInfo":{collateral["tcb_info"]},"signature"' in tcb_response
    assert f'{{"enclaveIdentity":{collateral["qe_identity"]},"signature"' in qe_response
    assert collateral["tcb_info_signature"] == json.loads(tcb_response)["signature"]
    assert bytes.fromhex(collateral["pck_crl"]) == (SPR / "pck_platform_crl.der").read_bytes()
    assert bytes.fromhex(collateral["root_ca_crl"]) == (SPR / "root_ca_crl.der").read_bytes()
    chain = (SPR / "intel_tcb_signing_chain.pem").read_text()
    assert collateral["tcb_info_issuer_chain"] == collateral["qe_identity_issuer_chain"] == chain
    assert collateral["pck_crl_issuer_chain"] == ""


def test_collateral_from_directory_reads_pretty_printed_responses(tmp_path: Path) -> None:
    for file in SPR.iterdir():
        shutil.copy(file, tmp_path)
    signed = '{ "id" : "TD_QE",\n  "version": 2 }'
    (tmp_path / "qe_identity.json").write_text(
        f'{{\n  "enclaveIdentity" :  {signed} ,\n  "signature": "abcd"\n}}\n'
    )

    collateral = json.loads(collateral_from_directory(tmp_path))

    assert collateral["qe_identity"] == signed
    assert collateral["qe_identity_signature"] == "abcd"


def test_spr_collateral_as_shipped_is_refused_for_its_signing_certificate_date() -> None:
    # The folder's TCB Signing certificate is Intel's 2025 re-issue, not valid in 2023.
    verdict = verify(
        (SPR / "quote.dat").read_bytes(), at=SPR_TIME, collateral=collateral_from_directory(SPR)
    )

    assert failed_names(verdict) == ["collateral.verified"]
    assert "CertNotValidYet" in reason(verdict, "collateral.verified")
    assert "pin the time" in reason(verdict, "collateral.verified")


def test_spr_collateral_finds_no_matching_tcb_level(tmp_path: Path) -> None:
    for file in SPR.iterdir():
        shutil.copy(file, tmp_path)
    root_pem = (SPR / "intel_sgx_root_ca.pem").read_bytes()
    (tmp_path / "intel_tcb_signing_chain.pem").write_bytes(TCB_SIGNING_2018_PEM + root_pem)

    verdict = verify(
        (SPR / "quote.dat").read_bytes(),
        at=SPR_TIME,
        collateral=collateral_from_directory(tmp_path),
    )

    # PROVENANCE.md: the PCK's SGX components [3,3,2,2,2,1,0,2] are below every TCB level.
    assert failed_names(verdict) == ["collateral.verified"]
    assert "No matching TCB level found" in reason(verdict, "collateral.verified")
    assert "below every level" in reason(verdict, "collateral.verified")


def test_period_tcb_signing_certificate_is_intels() -> None:
    period = load_certificate("tcb_signing", TCB_SIGNING_2018_PEM)
    shipped = load_certificates("chain", (SPR / "intel_tcb_signing_chain.pem").read_bytes())[0]

    period.verify_directly_issued_by(intel_root()[0])
    spki = (Encoding.DER, PublicFormat.SubjectPublicKeyInfo)
    assert period.public_key().public_bytes(*spki) == shipped.public_key().public_bytes(*spki)
    assert period.serial_number == shipped.serial_number


@pytest.mark.parametrize(
    ("missing", "part"),
    [
        ("qe_identity.json", "collateral.qe_identity"),
        ("tcbinfo_50806f000000.json", "collateral.tcb_info"),
        ("pck_platform_crl.der", "collateral.pck_crl"),
        ("intel_tcb_signing_chain.pem", "collateral.tcb_info_issuer_chain"),
    ],
)
def test_collateral_directory_missing_a_file(tmp_path: Path, missing: str, part: str) -> None:
    for file in SPR.iterdir():
        if file.name != missing:
            shutil.copy(file, tmp_path)

    with pytest.raises(EvidenceFormatError) as error:
        collateral_from_directory(tmp_path)

    assert error.value.part == part


@pytest.mark.parametrize(
    ("collateral", "part", "message"),
    [
        (b"{not json", "collateral", "not JSON"),
        (b"[]", "collateral", "expected a JSON object"),
        (phala_collateral(tcb_info=None), "collateral.tcb_info", "found missing"),
        (phala_collateral(pck_crl="zz"), "collateral.pck_crl", "expected hex"),
        (phala_collateral(qe_identity="[1]"), "collateral.qe_identity", "signed JSON object"),
        (phala_collateral(root_ca_crl=7), "collateral.root_ca_crl", "found a int"),
        (
            phala_collateral(tcb_info_issuer_chain="nope"),
            "collateral.tcb_info_issuer_chain",
            "not a readable X.509 certificate",
        ),
        (b" " * (MAX_EVIDENCE_BYTES + 1), "collateral", "oversized"),
    ],
)
def test_unreadable_collateral_is_a_format_error(
    collateral: bytes, part: str, message: str
) -> None:
    with pytest.raises(EvidenceFormatError) as error:
        verify(PHALA_QUOTE, at=PHALA_TIME, collateral=collateral)

    assert error.value.part == part
    assert message in error.value.problem


# --- a v5 quote built here (no public v5 sample exists) ------------------------------------------

NOT_BEFORE = datetime(2025, 1, 1, tzinfo=UTC)
BUILT_TIME = datetime(2026, 1, 1, tzinfo=UTC)


def make_ca(
    name: str,
    issuer: tuple[x509.Certificate, ec.EllipticCurvePrivateKey] | None,
    *,
    ca: bool = True,
) -> tuple[x509.Certificate, ec.EllipticCurvePrivateKey]:
    key = ec.generate_private_key(ec.SECP256R1())
    subject = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, name)])
    issuer_name, signing_key = (subject, key) if issuer is None else (issuer[0].subject, issuer[1])
    certificate = (
        x509.CertificateBuilder()
        .subject_name(subject)
        .issuer_name(issuer_name)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(NOT_BEFORE)
        .not_valid_after(NOT_BEFORE + timedelta(days=3650))
        .add_extension(x509.BasicConstraints(ca=ca, path_length=None), critical=True)
        .sign(signing_key, hashes.SHA256())
    )
    return certificate, key


@dataclass(frozen=True)
class Platform:
    root: x509.Certificate
    pck_chain_pem: bytes
    pck_key: ec.EllipticCurvePrivateKey


@pytest.fixture(scope="module")
def platform() -> Platform:
    root = make_ca("Test SGX Root CA", None)
    platform_ca = make_ca("Test SGX PCK Platform CA", root)
    pck = make_ca("Test SGX PCK Certificate", platform_ca, ca=False)
    chain = b"".join(cert.public_bytes(Encoding.PEM) for cert in (pck[0], platform_ca[0], root[0]))
    return Platform(root[0], chain + b"\0", pck[1])


def raw_signature(key: ec.EllipticCurvePrivateKey, message: bytes) -> bytes:
    r, s = decode_dss_signature(key.sign(message, ec.ECDSA(hashes.SHA256())))
    return r.to_bytes(32, "big") + s.to_bytes(32, "big")


@dataclass(frozen=True)
class QuoteSpec:
    version: int = 5
    body_type: int = 3
    td_attributes: bytes = bytes.fromhex("0000001000000000")
    report_data: bytes = bytes(range(64))
    qe_vendor_id: bytes = INTEL_QE_VENDOR_ID
    qe_auth_data: bytes = bytes(range(32))
    bind_attestation_key: bool = True


def td_body(spec: QuoteSpec) -> bytes:
    fields = [
        bytes.fromhex("06010300000000000000000000000000"),  # tee_tcb_svn
        b"\x5b" * 48,  # mr_seam
        bytes(48),  # mr_signer_seam
        bytes(8),  # seam_attributes
        spec.td_attributes,
        bytes.fromhex("e702060000000000"),  # xfam
        b"\xa1" * 48,  # mr_td
        bytes(48 * 3),  # mr_config_id, mr_owner, mr_owner_config
        b"\xb0" * 48,
        b"\xb1" * 48,
        b"\xb2" * 48,
        bytes(48),  # rtmr0..3
        spec.report_data,
    ]
    if spec.body_type == 3:
        fields += [bytes.fromhex("07010300000000000000000000000000"), b"\xc5" * 48]
    return b"".join(fields)


def build_quote(platform: Platform, spec: QuoteSpec = QuoteSpec()) -> bytes:
    """A TDX quote made the way the TD quoting enclave makes one, with our own keys."""
    attestation_key = ec.generate_private_key(ec.SECP256R1())
    point = attestation_key.public_key().public_bytes(
        Encoding.X962, PublicFormat.UncompressedPoint
    )[1:]
    header = struct.pack("<HHIHH", spec.version, 2, 0x81, 0, 0) + spec.qe_vendor_id + bytes(20)
    body = td_body(spec)
    descriptor = struct.pack("<HI", spec.body_type, len(body)) if spec.version == 5 else b""
    signed = header + descriptor + body
    binding = hashlib.sha256(point + spec.qe_auth_data).digest()
    if not spec.bind_attestation_key:
        binding = hashlib.sha256(b"another key").digest()
    qe_report = bytes(320) + binding + bytes(32)
    pck_data = struct.pack("<HI", 5, len(platform.pck_chain_pem)) + platform.pck_chain_pem
    qe_certification = (
        qe_report
        + raw_signature(platform.pck_key, qe_report)
        + struct.pack("<H", len(spec.qe_auth_data))
        + spec.qe_auth_data
        + pck_data
    )
    signature_data = (
        raw_signature(attestation_key, signed)
        + point
        + struct.pack("<HI", 6, len(qe_certification))
        + qe_certification
    )
    return signed + struct.pack("<I", len(signature_data)) + signature_data


def test_built_v5_tdx15_quote_verifies(platform: Platform) -> None:
    quote = build_quote(platform)

    verdict = verify(
        quote + bytes(100), at=BUILT_TIME, roots=[platform.root], nonce=bytes(range(64))
    )

    assert verdict.verified, verdict.as_dict()
    claims = verdict.claims
    assert claims["header"]["version"] == 5
    assert claims["body_type"] == 3
    assert claims["tdx_version"] == "1.5"
    assert claims["td_report"]["tee_tcb_svn2"] == "07010300000000000000000000000000"
    assert claims["td_report"]["mr_servicetd"] == "c5" * 48
    assert claims["td_report"]["rtmr2"] == "b2" * 48
    assert claims["trailing_bytes"] == 100
    assert "fmspc" not in claims["pck"]  # our PCK carries no Intel SGX extension
    assert_parser_agrees_with_dcap_qvl(quote)


def test_built_v5_tdx10_and_v4_quotes_verify(platform: Platform) -> None:
    for spec in (QuoteSpec(body_type=2), QuoteSpec(version=4, body_type=2)):
        quote = build_quote(platform, spec)

        verdict = verify(quote, at=BUILT_TIME, roots=[platform.root])

        assert verdict.verified, verdict.as_dict()
        assert verdict.claims["tdx_version"] == "1.0"
        assert "mr_servicetd" not in verdict.claims["td_report"]
        assert_parser_agrees_with_dcap_qvl(quote)


def test_built_quote_against_intels_root_fails(platform: Platform) -> None:
    verdict = verify(build_quote(platform), at=BUILT_TIME)

    assert "pck_chain.root" in failed_names(verdict)
    assert "Intel SGX Root CA" in reason(verdict, "pck_chain.root")


def test_built_v5_tampered_servicetd_fails_quote_signature(platform: Platform) -> None:
    quote = build_quote(platform)
    mr_servicetd_offset = 48 + 6 + 600

    verdict = verify(
        flipped(quote, mr_servicetd_offset, 0x00), at=BUILT_TIME, roots=[platform.root]
    )

    assert failed_names(verdict) == ["quote_signature"]


def test_built_quote_with_a_tampered_qe_report_fails_its_signature(platform: Platform) -> None:
    quote = build_quote(platform)
    qe_report_offset = 48 + 6 + 648 + 4 + 128 + 6

    verdict = verify(flipped(quote, qe_report_offset, 0x01), at=BUILT_TIME, roots=[platform.root])

    assert failed_names(verdict) == ["qe_report_signature"]


def test_unbound_attestation_key_fails_qe_binding(platform: Platform) -> None:
    verdict = verify(
        build_quote(platform, QuoteSpec(bind_attestation_key=False)),
        at=BUILT_TIME,
        roots=[platform.root],
    )

    assert failed_names(verdict) == ["qe_binding"]
    assert "not certified by this quoting enclave" in reason(verdict, "qe_binding")


def test_non_intel_quoting_enclave_fails_header(platform: Platform) -> None:
    verdict = verify(
        build_quote(platform, QuoteSpec(qe_vendor_id=b"\x42" * 16)),
        at=BUILT_TIME,
        roots=[platform.root],
    )

    assert failed_names(verdict) == ["header"]
    assert "not Intel's" in reason(verdict, "header")


def test_built_debug_td_is_refused(platform: Platform) -> None:
    spec = QuoteSpec(td_attributes=bytes.fromhex("0100000000000000"))

    verdict = verify(build_quote(platform, spec), at=BUILT_TIME, roots=[platform.root])

    assert failed_names(verdict) == ["debug"]


# --- unreadable quotes -------------------------------------------------------------------------


def edited_header(quote: bytes, fmt: str, offset: int, value: int) -> bytes:
    edited = bytearray(quote)
    struct.pack_into(fmt, edited, offset, value)
    return bytes(edited)


@pytest.mark.parametrize(
    ("edit", "part", "message"),
    [
        (lambda q: b"", "quote", "truncated: 0 bytes"),
        (lambda q: q[:600], "quote", "truncated: 600 bytes"),
        (lambda q: q + bytes(MAX_EVIDENCE_BYTES), "quote", "oversized"),
        (lambda q: q[:4000], "quote.signature_data", "declares"),
        (lambda q: edited_header(q, "<I", 4, 0), "quote.header", "an SGX quote, not a TDX"),
        (lambda q: edited_header(q, "<H", 2, 3), "quote.header", "attestation key type 3"),
        (lambda q: edited_header(q, "<H", 0, 5), "quote.body", "v5 body type"),
        (lambda q: edited_header(q, "<H", 48 + 584 + 4 + 128, 5), "quote.signature_data", "type 5"),
        (
            lambda q: q.replace(b"MII", b"MI!", 1),
            "quote.pck_chain",
            "not a readable X.509 certificate",
        ),
    ],
    ids=[
        "empty",
        "truncated",
        "oversized",
        "cut-signature-data",
        "sgx",
        "p384-key",
        "v5-without-body-descriptor",
        "certification-type-5-at-top",
        "garbage-certificate",
    ],
)
def test_unreadable_quote_is_a_format_error(edit: Any, part: str, message: str) -> None:
    quote = edit((TRUSTEE / "quote.dat").read_bytes())

    with pytest.raises(EvidenceFormatError) as error:
        verify(quote, at=TRUSTEE_TIME)

    assert error.value.part == part
    assert message in error.value.problem


def test_v5_body_size_must_match_its_type(platform: Platform) -> None:
    quote = edited_header(build_quote(platform), "<I", 50, 584)

    with pytest.raises(EvidenceFormatError) as error:
        parse_quote(quote)

    assert error.value.part == "quote.body"
    assert "must be 648 bytes; the quote says 584" in error.value.problem


# --- fuzzing -------------------------------------------------------------------------------------

GCP_QUOTE = (GCP / "quote.dat").read_bytes()[:4935]


def verdict_or_format_error(evidence: TdxEvidence, at: datetime) -> None:
    try:
        verdict = verify_tdx_quote(
            evidence, roots=intel_root(), nonce=None, policy=TdxPolicy(), at=at
        )
    except EvidenceFormatError as error:
        assert error.part.startswith(("quote", "collateral"))
        return
    json.dumps(verdict.as_dict())


@settings(max_examples=200, deadline=None)
@given(st.binary(max_size=2048))
def test_fuzz_random_bytes_never_escape(data: bytes) -> None:
    verdict_or_format_error(TdxEvidence(data), GCP_TIME)


@settings(max_examples=200, deadline=None)
@given(st.integers(min_value=0, max_value=len(GCP_QUOTE)))
def test_fuzz_truncations_never_escape(length: int) -> None:
    verdict_or_format_error(TdxEvidence(GCP_QUOTE[:length]), GCP_TIME)


@settings(max_examples=200, deadline=None)
@given(
    st.lists(
        st.tuples(st.integers(0, len(GCP_QUOTE) - 1), st.integers(1, 255)), min_size=1, max_size=4
    )
)
def test_fuzz_byte_flips_never_escape(flips: list[tuple[int, int]]) -> None:
    edited = bytearray(GCP_QUOTE)
    for offset, mask in flips:
        edited[offset] ^= mask
    verdict_or_format_error(TdxEvidence(bytes(edited)), GCP_TIME)


@settings(max_examples=200, deadline=None)
@given(st.integers(8, 48 + 584 - 1), st.integers(1, 255))
def test_fuzz_a_flip_inside_the_signed_bytes_is_never_verified(offset: int, mask: int) -> None:
    # From qe_svn on: version, key type and TEE type decide the layout (format errors).
    edited = bytearray(GCP_QUOTE)
    edited[offset] ^= mask
    verdict = verify(bytes(edited), at=GCP_TIME)
    assert "quote_signature" in failed_names(verdict)


@settings(max_examples=100, deadline=None)
@given(
    st.lists(
        st.tuples(st.integers(0, len(PHALA_COLLATERAL) - 1), st.integers(1, 255)),
        min_size=1,
        max_size=3,
    )
)
def test_fuzz_collateral_flips_never_escape(flips: list[tuple[int, int]]) -> None:
    edited = bytearray(PHALA_COLLATERAL)
    for offset, mask in flips:
        edited[offset] ^= mask
    verdict_or_format_error(TdxEvidence(PHALA_QUOTE, bytes(edited)), PHALA_TIME)

"""AMD SEV-SNP verification: real vendor samples judged as their PROVENANCE.md says, byte edits
that must fail the right check, and, for the formats no public sample covers (report v3/v4,
VLEK-signed, Genoa, Turin-signed), evidence built here for real: an RSA-PSS ARK/ASK chain, a
P-384 VCEK/VLEK with AMD's extensions and a report signed with it.

One module for one verifier: every check it makes has its sample and its forgery here.
"""

from __future__ import annotations

import base64
import functools
import struct
from collections.abc import Sequence
from dataclasses import dataclass, replace
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec, padding, rsa
from cryptography.hazmat.primitives.asymmetric.utils import decode_dss_signature
from cryptography.x509.oid import NameOID
from hypothesis import given, settings
from hypothesis import strategies as st

from evidence.certs import load_certificates
from evidence.sev_snp import (
    REPORT_SIZE,
    SnpEvidence,
    SnpPolicy,
    SnpProduct,
    SnpTcb,
    check_vcek_chain,
    parse_report,
    verify_sev_snp_report,
)
from evidence.verdict import EvidenceFormatError, Outcome, Verdict

SAMPLES = Path(__file__).parent / "data" / "attestation-samples" / "sev-snp"


def moment(text: str) -> datetime:
    return datetime.fromisoformat(text).replace(tzinfo=UTC)


@dataclass(frozen=True)
class Sample:
    folder: str
    report: str
    vcek: str
    # Inside every certificate's validity window: just after the VCEK was issued (go-sev-guest's
    # own test uses 2022-09-24T01:00Z).
    at: datetime
    chain: str = "ask_ark_milan.pem"

    @property
    def path(self) -> Path:
        return SAMPLES / self.folder

    def evidence(self) -> SnpEvidence:
        return SnpEvidence(
            report=(self.path / self.report).read_bytes(),
            vcek=(self.path / self.vcek).read_bytes(),
            chain=(self.path / self.chain).read_bytes(),
        )

    def roots(self) -> list[x509.Certificate]:
        # The pinned root is the ARK, the last certificate of AMD's cert_chain.
        return load_certificates("root", (self.path / self.chain).read_bytes())[-1:]


GO_SEV_GUEST = Sample("go-sev-guest-milan-v2", "report.bin", "vcek.der", moment("2022-09-24T01:00"))
VIRTEE = Sample("virtee-milan-v2", "report.bin", "vcek.der", moment("2023-04-04T00:00"))
VIRTEE_HEX = replace(VIRTEE, report="report_milan.hex")
TRUSTEE = Sample("trustee-milan-v2-idblock", "report.bin", "vcek.der", moment("2023-01-25T00:00"))
TEEKIT = Sample(
    "teekit-gcp-milan-v5", "report_with_reportdata.bin", "vcek.pem", moment("2025-12-06")
)
TEEKIT_ZERO = replace(TEEKIT, report="report_zero_reportdata.bin")
VALID_SAMPLES = [VIRTEE, VIRTEE_HEX, TRUSTEE, TEEKIT, TEEKIT_ZERO]
TURIN = SAMPLES / "virtee-turin-vcek-chain-only"
TURIN_AT = moment("2024-11-07T00:00")


def verify(
    sample: Sample,
    *,
    evidence: SnpEvidence | None = None,
    nonce: bytes | None = None,
    policy: SnpPolicy | None = None,
    at: datetime | None = None,
    roots: list[x509.Certificate] | None = None,
) -> Verdict:
    return verify_sev_snp_report(
        evidence or sample.evidence(),
        roots=sample.roots() if roots is None else roots,
        nonce=nonce,
        policy=policy or SnpPolicy(),
        at=at or sample.at,
    )


def outcome(verdict: Verdict, name: str) -> Outcome:
    matches = [check.outcome for check in verdict.checks if check.name == name]
    assert len(matches) == 1, f"{name} appears {len(matches)} times in {verdict.checks}"
    return matches[0]


def reason(verdict: Verdict, name: str) -> str:
    return next(check.reason for check in verdict.checks if check.name == name)


def failed(verdict: Verdict) -> list[str]:
    return [check.name for check in verdict.failures]


def flipped(data: bytes, offset: int, change: int = 0, xor: int = 0) -> bytes:
    edited = bytearray(data)
    edited[offset] = ((edited[offset] + change) & 0xFF) ^ xor
    return bytes(edited)


CHECK_ORDER = [
    "version",
    "signature_algorithm",
    "signature",
    "signing_key",
    "vcek_chain.signature[0]",
    "vcek_chain.signature[1]",
    "vcek_chain.root",
    "vcek_chain.validity[0]",
    "vcek_chain.validity[1]",
    "vcek_chain.validity[2]",
    "product",
    "vcek_tcb",
    "chip_id",
    "nonce",
    "measurement",
    "debug",
    "vmpl",
    "tcb.minimum",
]


# --- the real samples -------------------------------------------------------------------------


@pytest.mark.parametrize("sample", VALID_SAMPLES, ids=lambda s: f"{s.folder}/{s.report}")
def test_real_sample_verifies(sample: Sample) -> None:
    verdict = verify(sample)
    assert verdict.verified, verdict.as_dict()
    assert [check.name for check in verdict.checks] == CHECK_ORDER
    # Nothing was asked beyond the evidence itself: the reference checks say so.
    skipped = {check.name for check in verdict.checks if check.outcome is Outcome.SKIPPED}
    assert skipped == {"nonce", "measurement", "vmpl", "tcb.minimum"}


@pytest.mark.parametrize(
    ("sample", "expected"),
    [
        (
            GO_SEV_GUEST,
            {
                "version": 2,
                "vmpl": 0,
                "signing_key": "vcek",
                "product": "Milan",
                "reported_tcb": {
                    "raw": "0200000000000544",
                    "bootloader": 2,
                    "tee": 0,
                    "snp": 5,
                    "microcode": 68,
                },
                "current_firmware": {"major": 1, "minor": 49, "build": 3},
                "report_id": "8edc638e1857c555d21f6b11bda3c8b1b5a09dba4852b4c8ee7aa2f16f22cc0a",
                "measurement": "b07af9620f3b839b47996422ddec6058338951d984e312115131ea82705eaf5b"
                "6bdf8a9ece31a5a608eb0cf2e4872b01",
                "report_data": "0102030405" + "00" * 59,
            },
        ),
        (
            TRUSTEE,
            {
                "guest_svn": 4,
                "family_id": "01000000000000000000000000000000",
                "image_id": "02000000000000000000000000000000",
                "current_tcb": {
                    "raw": "03000000000008ce",
                    "bootloader": 3,
                    "tee": 0,
                    "snp": 8,
                    "microcode": 206,
                },
                "reported_tcb": {
                    "raw": "0300000000000873",
                    "bootloader": 3,
                    "tee": 0,
                    "snp": 8,
                    "microcode": 115,
                },
                "id_key_digest": "0356215882a825279a85b300b0b742931d113bf7e32dde2e50ffde7ec743ca49"
                "1ecdd7f336dc28a6e0b2bb57af7a44a3",
                "current_firmware": {"major": 1, "minor": 52, "build": 4},
            },
        ),
        (
            TEEKIT,
            {
                "version": 5,
                "vmpl": 1,
                "cpuid": {"family": 0x19, "model": 0x01, "stepping": 0x01},
                "product": "Milan",
                "report_data": "32fc4f6c1971cbf91566231f8d6153eeb9d093aa94306cb48d39bcc4861a3d39"
                "5f149876a37bc91332fe493f46294fd135d5b95d363ae96352b8c45f906079f5",
                "current_firmware": {"major": 1, "minor": 55, "build": 35},
            },
        ),
        (TEEKIT_ZERO, {"vmpl": 0, "report_data": "00" * 64}),
    ],
    ids=lambda value: value.folder if isinstance(value, Sample) else "",
)
def test_claims_match_provenance(sample: Sample, expected: dict[str, object]) -> None:
    claims = verify(sample).claims
    assert {key: claims[key] for key in expected} == expected


def test_go_sev_guest_policy_details() -> None:
    claims = verify(GO_SEV_GUEST).claims
    assert claims["certificate"] == {
        "common_name": "SEV-VCEK",
        "sha256": "0d057f9b6e29a69eda9c0154b259567d291c1c08d73a11e9d31ace07c435b6d8",
        "product_name": "Milan-B0",
    }
    policy = claims["policy"]
    assert policy["hex"] == "0xb0000"
    assert (policy["debug"], policy["smt"], policy["migrate_ma"]) == (True, True, False)
    assert (policy["abi_major"], policy["abi_minor"]) == (0, 0)
    assert "cpuid" not in claims  # v2 reports carry none


def test_hex_text_report_parses_like_the_binary() -> None:
    binary = (VIRTEE.path / "report.bin").read_bytes()
    text = (VIRTEE.path / "report_milan.hex").read_bytes()
    assert parse_report(text) == parse_report(binary)
    assert parse_report(text.lower() + b"\n") == parse_report(binary)


def test_debug_allowed_guest_fails_debug_unless_the_policy_allows_it() -> None:
    verdict = verify(GO_SEV_GUEST)
    assert failed(verdict) == ["debug"]
    assert "bit 19" in reason(verdict, "debug")
    assert verify(GO_SEV_GUEST, policy=SnpPolicy(allow_debug=True)).verified


def test_nonce_binds_and_a_wrong_nonce_fails() -> None:
    allow_debug = SnpPolicy(allow_debug=True)
    good = verify(GO_SEV_GUEST, nonce=bytes.fromhex("0102030405"), policy=allow_debug)
    assert good.verified
    assert outcome(good, "nonce") is Outcome.PASSED
    wrong = verify(GO_SEV_GUEST, nonce=bytes.fromhex("0102030406"), policy=allow_debug)
    assert failed(wrong) == ["nonce"]


def test_virtee_flipped_family_id_byte_fails_signature() -> None:
    evidence = VIRTEE.evidence()
    edited = replace(evidence, report=flipped(evidence.report, 21, xor=0x80))
    assert failed(verify(VIRTEE, evidence=edited)) == ["signature"]


def test_virtee_flipped_vcek_byte_breaks_the_chain() -> None:
    # Byte 40 is inside the VCEK's signature algorithm (the PSS hash OID): the certificate still
    # reads, but the ASK's signature over it no longer verifies.
    evidence = VIRTEE.evidence()
    edited = replace(evidence, vcek=flipped(evidence.vcek, 40, xor=0xFF))
    verdict = verify(VIRTEE, evidence=edited)
    assert failed(verdict) == ["vcek_chain.signature[0]"]
    assert "SEV-VCEK is not signed by SEV-Milan" in reason(verdict, "vcek_chain.signature[0]")


def test_trustee_edited_report_byte_fails_signature() -> None:
    evidence = TRUSTEE.evidence()
    edited = replace(evidence, report=flipped(evidence.report, 42, change=1))
    assert failed(verify(TRUSTEE, evidence=edited)) == ["signature"]


def test_trustee_edited_reported_tcb_fails_vcek_tcb() -> None:
    evidence = TRUSTEE.evidence()
    edited = replace(evidence, report=flipped(evidence.report, 0x180, change=1))
    verdict = verify(TRUSTEE, evidence=edited)
    assert failed(verdict) == ["signature", "vcek_tcb"]
    assert "bootloader 4 but the VCEK is for blSPL 3" in reason(verdict, "vcek_tcb")


def test_trustee_vcek_is_the_one_for_reported_not_current_tcb() -> None:
    claims = verify(TRUSTEE).claims
    assert claims["current_tcb"] != claims["reported_tcb"]
    assert outcome(verify(TRUSTEE), "vcek_tcb") is Outcome.PASSED


def test_teekit_measurement_reference() -> None:
    measurement = bytes.fromhex(
        "b747d55452e0b9e9079770a49e397c5e6d9573581e246da7baac4f28b5cdc5b1"
        "b6d19251b8ee600fd16a3708f58406f3"
    )
    good = verify(TEEKIT, policy=SnpPolicy(measurements=frozenset({measurement, bytes(48)})))
    assert good.verified
    assert outcome(good, "measurement") is Outcome.PASSED
    wrong = verify(TEEKIT, policy=SnpPolicy(measurements=frozenset({bytes(48)})))
    assert failed(wrong) == ["measurement"]
    assert measurement.hex() in reason(wrong, "measurement")


def test_max_vmpl_refuses_a_report_from_a_less_privileged_vmpl() -> None:
    assert failed(verify(TEEKIT, policy=SnpPolicy(max_vmpl=0))) == ["vmpl"]
    assert verify(TEEKIT_ZERO, policy=SnpPolicy(max_vmpl=0)).verified


def test_minimum_tcb_names_the_component_below() -> None:
    enough = SnpTcb(bootloader=3, tee=0, snp=8, microcode=115)
    assert outcome(verify(TRUSTEE, policy=SnpPolicy(min_tcb=enough)), "tcb.minimum") is (
        Outcome.PASSED
    )
    newer = SnpTcb(bootloader=3, tee=0, snp=9, microcode=200)
    verdict = verify(TRUSTEE, policy=SnpPolicy(min_tcb=newer))
    assert failed(verdict) == ["tcb.minimum"]
    assert "snp 8 < 9, microcode 115 < 200" in reason(verdict, "tcb.minimum")


def test_wrong_root_fails_vcek_chain_root() -> None:
    turin_ark = load_certificates("root", (TURIN / "ask_ark_turin.pem").read_bytes())[-1:]
    verdict = verify(VIRTEE, roots=turin_ark)
    assert failed(verdict) == ["vcek_chain.root"]
    assert "ARK-Turin" in reason(verdict, "vcek_chain.root")


def test_no_pinned_root_fails_vcek_chain_root() -> None:
    assert failed(verify(VIRTEE, roots=[])) == ["vcek_chain.root"]


def test_missing_chain_fails_instead_of_trusting_the_vcek() -> None:
    evidence = replace(VIRTEE.evidence(), chain=b"")
    assert failed(verify(VIRTEE, evidence=evidence)) == ["vcek_chain.root"]


def test_chain_given_ark_first_is_put_in_order() -> None:
    ask, ark = load_certificates("chain", (VIRTEE.path / "ask_ark_milan.pem").read_bytes())
    reordered = b"".join(c.public_bytes(serialization.Encoding.PEM) for c in (ark, ask))
    assert verify(VIRTEE, evidence=replace(VIRTEE.evidence(), chain=reordered)).verified


@pytest.mark.parametrize(
    "at", [moment("2022-09-23T00:00"), moment("2029-10-01T00:00")], ids=["before", "after"]
)
def test_time_outside_the_vcek_window_fails_validity(at: datetime) -> None:
    verdict = verify(GO_SEV_GUEST, policy=SnpPolicy(allow_debug=True), at=at)
    assert failed(verdict) == ["vcek_chain.validity[0]"]
    assert "SEV-VCEK" in reason(verdict, "vcek_chain.validity[0]")


def test_turin_chain_verifies_without_a_report() -> None:
    vcek = (TURIN / "vcek_turin.der").read_bytes()
    chain = (TURIN / "ask_ark_turin.pem").read_bytes()
    roots = load_certificates("root", chain)[-1:]
    checks = check_vcek_chain(vcek, chain, roots, TURIN_AT)
    assert [check.name for check in checks] == CHECK_ORDER[4:10]
    assert all(check.outcome is Outcome.PASSED for check in checks), checks
    milan_ark = GO_SEV_GUEST.roots()
    wrong = {
        check.name: check.outcome for check in check_vcek_chain(vcek, chain, milan_ark, TURIN_AT)
    }
    assert wrong["vcek_chain.root"] is Outcome.FAILED
    expired = check_vcek_chain(vcek, chain, roots, moment("2032-01-01T00:00"))
    assert [check.name for check in expired if check.outcome is Outcome.FAILED] == [
        "vcek_chain.validity[0]"
    ]


# --- unreadable input -------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("report", "message"),
    [
        (b"", "truncated"),
        (bytes(REPORT_SIZE - 1), f"{REPORT_SIZE - 1} bytes"),
        (bytes(REPORT_SIZE + 1), f"{REPORT_SIZE + 1} bytes"),
        (bytes(70_000), "oversized"),
        (b"zz" * REPORT_SIZE, "not hex"),
        (b"00" * (REPORT_SIZE - 1), "hex digits"),
    ],
    ids=["empty", "short", "long", "oversized", "bad-hex", "short-hex"],
)
def test_unreadable_report_is_a_format_error(report: bytes, message: str) -> None:
    with pytest.raises(EvidenceFormatError) as raised:
        verify(VIRTEE, evidence=replace(VIRTEE.evidence(), report=report))
    assert raised.value.part == "report"
    assert message in raised.value.problem


@pytest.mark.parametrize(
    ("field", "data", "part"),
    [
        ("vcek", b"not a certificate", "vcek"),
        ("vcek", b"", "vcek"),
        ("chain", b"-----BEGIN PUBLIC KEY-----\nAAAA\n-----END PUBLIC KEY-----\n", "chain"),
        ("chain", b"\x30\x03\x02\x01\x01", "chain"),
    ],
)
def test_unreadable_certificate_is_a_format_error(field: str, data: bytes, part: str) -> None:
    evidence = replace(VIRTEE.evidence(), **{field: data})
    with pytest.raises(EvidenceFormatError) as raised:
        verify(VIRTEE, evidence=evidence)
    assert raised.value.part == part


# --- evidence built here: formats no public sample covers --------------------------------------


def _der_integer(value: int) -> bytes:
    body = value.to_bytes(value.bit_length() // 8 + 1, "big")
    return bytes([0x02, len(body)]) + body


def _name(common: str) -> x509.Name:
    return x509.Name(
        [
            x509.NameAttribute(NameOID.COMMON_NAME, common),
            x509.NameAttribute(NameOID.ORGANIZATION_NAME, "Drydock test AMD"),
        ]
    )


def _pss() -> padding.PSS:
    return padding.PSS(mgf=padding.MGF1(hashes.SHA384()), salt_length=48)


NOT_BEFORE = moment("2025-01-01T00:00")
BUILT_AT = moment("2025-06-01T00:00")


def _certificate(
    subject: str,
    issuer: str,
    public_key: rsa.RSAPublicKey | ec.EllipticCurvePublicKey,
    signer: rsa.RSAPrivateKey,
    extensions: Sequence[x509.ExtensionType] = (),
    ca: bool = True,
) -> x509.Certificate:
    builder = (
        x509.CertificateBuilder()
        .subject_name(_name(subject))
        .issuer_name(_name(issuer))
        .public_key(public_key)
        .serial_number(x509.random_serial_number())
        .not_valid_before(NOT_BEFORE)
        .not_valid_after(NOT_BEFORE + timedelta(days=3650))
    )
    if ca:
        builder = builder.add_extension(x509.BasicConstraints(ca=True, path_length=None), True)
    for extension in extensions:
        builder = builder.add_extension(extension, critical=False)
    return builder.sign(signer, hashes.SHA384(), rsa_padding=_pss())


@dataclass(frozen=True)
class BuiltChain:
    """An AMD-shaped PKI made here: ARK (root) -> ASK or ASVK -> VCEK or VLEK."""

    ark: x509.Certificate
    intermediate: x509.Certificate
    intermediate_key: rsa.RSAPrivateKey

    def leaf(
        self,
        key: ec.EllipticCurvePrivateKey,
        *,
        kind: str,
        tcb: dict[str, int],
        hwid: bytes | None,
        product_name: str | None,
    ) -> x509.Certificate:
        oids = {"bootloader": 1, "tee": 2, "snp": 3, "microcode": 8, "fmc": 9}
        extensions: list[x509.ExtensionType] = [
            x509.UnrecognizedExtension(
                x509.ObjectIdentifier(f"1.3.6.1.4.1.3704.1.3.{oids[component]}"),
                _der_integer(value),
            )
            for component, value in tcb.items()
        ]
        if product_name is not None:
            raw_name = product_name.encode()
            extensions.append(
                x509.UnrecognizedExtension(
                    x509.ObjectIdentifier("1.3.6.1.4.1.3704.1.2"),
                    bytes([0x16, len(raw_name)]) + raw_name,
                )
            )
        if hwid is not None:
            extensions.append(
                x509.UnrecognizedExtension(x509.ObjectIdentifier("1.3.6.1.4.1.3704.1.4"), hwid)
            )
        return _certificate(
            f"SEV-{kind.upper()}",
            common_name_of(self.intermediate),
            key.public_key(),
            self.intermediate_key,
            extensions,
            ca=False,
        )

    def chain_pem(self) -> bytes:
        return b"".join(
            cert.public_bytes(serialization.Encoding.PEM) for cert in (self.intermediate, self.ark)
        )


def common_name_of(certificate: x509.Certificate) -> str:
    return str(certificate.subject.get_attributes_for_oid(NameOID.COMMON_NAME)[0].value)


@functools.cache
def _rsa_key(label: str) -> rsa.RSAPrivateKey:
    # 2048 bits rather than AMD's 4096 keeps the test fast; the algorithm (RSA-PSS SHA-384) is
    # AMD's.
    return rsa.generate_private_key(public_exponent=65537, key_size=2048)


@functools.cache
def built_chain(product: str, kind: str) -> BuiltChain:
    ark_key = _rsa_key(f"ark-{product}")
    ark = _certificate(f"ARK-{product}", f"ARK-{product}", ark_key.public_key(), ark_key)
    intermediate_name = f"SEV-{product}" if kind == "vcek" else f"SEV-VLEK-{product}"
    intermediate_key = _rsa_key(f"{kind}-{product}")
    intermediate = _certificate(
        intermediate_name, f"ARK-{product}", intermediate_key.public_key(), ark_key
    )
    return BuiltChain(ark, intermediate, intermediate_key)


@functools.cache
def _leaf_key() -> ec.EllipticCurvePrivateKey:
    return ec.generate_private_key(ec.SECP384R1())


CPUID = {"Milan": (0x19, 0x01, 0x01), "Genoa": (0x19, 0x11, 0x01), "Turin": (0x1A, 0x02, 0x00)}
CHIP_ID = bytes(range(1, 65))


def tcb_bytes(product: str, tcb: dict[str, int]) -> bytes:
    raw = bytearray(8)
    if product == "Turin":
        raw[0], raw[1], raw[2], raw[3] = tcb["fmc"], tcb["bootloader"], tcb["tee"], tcb["snp"]
    else:
        raw[0], raw[1], raw[6] = tcb["bootloader"], tcb["tee"], tcb["snp"]
    raw[7] = tcb["microcode"]
    return bytes(raw)


def build_report(
    key: ec.EllipticCurvePrivateKey,
    *,
    version: int,
    product: str,
    tcb: dict[str, int],
    signing_key: int = 0,
    mask_chip_key: bool = False,
    policy: int = 0x30000,
    vmpl: int = 0,
    report_data: bytes = b"",
    measurement: bytes = b"\x5a" * 48,
    sig_algo: int = 1,
    cpuid: tuple[int, int, int] | None = None,
    chip_id: bytes = CHIP_ID,
) -> bytes:
    """An ATTESTATION_REPORT laid out per the AMD ABI spec and signed with ``key``."""
    report = bytearray(REPORT_SIZE)
    struct.pack_into("<IIQ", report, 0x00, version, 3, policy)
    struct.pack_into("<II", report, 0x30, vmpl, sig_algo)
    raw_tcb = tcb_bytes(product, tcb)
    for offset in (0x38, 0x180, 0x1E0, 0x1F0):  # current, reported, committed, launch
        report[offset : offset + 8] = raw_tcb
    struct.pack_into("<QI", report, 0x40, 0x1, (signing_key << 2) | (0b10 if mask_chip_key else 0))
    report[0x50 : 0x50 + 64] = report_data.ljust(64, b"\0")
    report[0x90 : 0x90 + 48] = measurement
    if version >= 3:
        report[0x188:0x18B] = bytes(cpuid or CPUID[product])
    report[0x1A0 : 0x1A0 + 64] = bytes(64) if mask_chip_key else chip_id
    report[0x1E8:0x1EB] = bytes([7, 55, 1])
    signature = key.sign(bytes(report[:0x2A0]), ec.ECDSA(hashes.SHA384()))
    r, s = decode_dss_signature(signature)
    report[0x2A0 : 0x2A0 + 72] = r.to_bytes(72, "little")
    report[0x2A0 + 72 : 0x2A0 + 144] = s.to_bytes(72, "little")
    return bytes(report)


MILAN_TCB = {"bootloader": 3, "tee": 0, "snp": 8, "microcode": 115}
GENOA_TCB = {"bootloader": 7, "tee": 0, "snp": 14, "microcode": 72}
TURIN_TCB = {"fmc": 1, "bootloader": 2, "tee": 0, "snp": 4, "microcode": 9}
TCBS = {"Milan": MILAN_TCB, "Genoa": GENOA_TCB, "Turin": TURIN_TCB}


@dataclass(frozen=True)
class Built:
    evidence: SnpEvidence
    roots: list[x509.Certificate]

    def verify(
        self, policy: SnpPolicy | None = None, evidence: SnpEvidence | None = None
    ) -> Verdict:
        return verify_sev_snp_report(
            evidence or self.evidence,
            roots=self.roots,
            nonce=b"drydock",
            policy=policy or SnpPolicy(),
            at=BUILT_AT,
        )


def build(
    product: str,
    version: int,
    kind: str = "vcek",
    *,
    cert_product: str | None = None,
    cert_tcb: dict[str, int] | None = None,
    **report_fields: object,
) -> Built:
    chain = built_chain(product, kind)
    key = _leaf_key()
    hwid = None if kind == "vlek" else CHIP_ID[:8] if product == "Turin" else CHIP_ID
    name = cert_product if cert_product is not None else f"{product}-B0"
    leaf = chain.leaf(
        key, kind=kind, tcb=cert_tcb or TCBS[product], hwid=hwid, product_name=name or None
    )
    fields: dict[str, object] = {
        "signing_key": 0 if kind == "vcek" else 1,
        "report_data": b"drydock",
    }
    report = build_report(
        key,
        version=version,
        product=product,
        tcb=TCBS[product],
        **{**fields, **report_fields},  # type: ignore[arg-type]
    )
    evidence = SnpEvidence(
        report=report,
        vcek=leaf.public_bytes(serialization.Encoding.DER),
        chain=chain.chain_pem(),
    )
    return Built(evidence, [chain.ark])


@pytest.mark.parametrize(
    ("product", "version", "kind"),
    [
        ("Milan", 3, "vcek"),
        ("Milan", 4, "vcek"),
        ("Genoa", 3, "vcek"),
        ("Genoa", 4, "vlek"),
        ("Genoa", 5, "vcek"),
        ("Turin", 5, "vcek"),
        ("Turin", 4, "vlek"),
        ("Milan", 2, "vlek"),
    ],
)
def test_built_report_verifies(product: str, version: int, kind: str) -> None:
    built = build(product, version, kind)
    verdict = built.verify()
    assert verdict.verified, verdict.as_dict()
    claims = verdict.claims
    assert (claims["version"], claims["product"], claims["signing_key"]) == (
        version,
        product,
        kind,
    )
    assert {key: claims["reported_tcb"][key] for key in TCBS[product]} == TCBS[product]
    assert outcome(verdict, "nonce") is Outcome.PASSED
    # A VLEK is not tied to a chip; a VCEK is, through its hwID (8 bytes on Turin).
    expected_chip = Outcome.SKIPPED if kind == "vlek" else Outcome.PASSED
    assert outcome(verdict, "chip_id") is expected_chip
    assert ("cpuid" in claims) is (version >= 3)


def test_turin_tcb_layout_puts_fmc_first() -> None:
    claims = build("Turin", 5).verify().claims
    assert claims["reported_tcb"] == {"raw": "0102000400000009", **TURIN_TCB}


def test_turin_fmc_mismatch_fails_vcek_tcb() -> None:
    built = build("Turin", 5, cert_tcb={**TURIN_TCB, "fmc": 0})
    verdict = built.verify()
    assert failed(verdict) == ["vcek_tcb"]
    assert "fmc 1 but the VCEK is for fmcSPL 0" in reason(verdict, "vcek_tcb")


def test_turin_minimum_tcb_compares_fmc() -> None:
    minimum = SnpTcb(bootloader=2, tee=0, snp=4, microcode=9, fmc=2)
    verdict = build("Turin", 5).verify(SnpPolicy(min_tcb=minimum))
    assert failed(verdict) == ["tcb.minimum"]
    assert "fmc 1 < 2" in reason(verdict, "tcb.minimum")


def test_turin_chip_id_uses_the_first_eight_bytes() -> None:
    other_chip = flipped(CHIP_ID, 3, xor=0xFF)
    verdict = build("Turin", 5, chip_id=other_chip).verify()
    assert failed(verdict) == ["chip_id"]
    assert "is not the VCEK's hwID 0102030405060708" in reason(verdict, "chip_id")
    # Beyond the first 8 bytes the Turin VCEK says nothing.
    assert build("Turin", 5, chip_id=flipped(CHIP_ID, 9, xor=0xFF)).verify().verified


def test_milan_chip_id_compares_all_64_bytes() -> None:
    verdict = build("Milan", 4, chip_id=flipped(CHIP_ID, 63, xor=0xFF)).verify()
    assert failed(verdict) == ["chip_id"]


def test_report_saying_vlek_with_a_vcek_fails_signing_key() -> None:
    chain = built_chain("Genoa", "vcek")
    key = _leaf_key()
    leaf = chain.leaf(key, kind="vcek", tcb=GENOA_TCB, hwid=CHIP_ID, product_name="Genoa")
    report = build_report(
        key, version=4, product="Genoa", tcb=GENOA_TCB, signing_key=1, report_data=b"drydock"
    )
    evidence = SnpEvidence(report, leaf.public_bytes(serialization.Encoding.PEM), chain.chain_pem())
    verdict = build("Genoa", 4).verify(evidence=evidence)
    assert failed(verdict) == ["signing_key"]
    assert "VLEK but the certificate is SEV-VCEK" in reason(verdict, "signing_key")


def test_unsigned_report_fails_signing_key() -> None:
    verdict = build("Milan", 3, signing_key=7).verify()
    assert failed(verdict) == ["signing_key"]
    assert "signing key is none" in reason(verdict, "signing_key")


def test_genoa_report_with_a_milan_vcek_fails_product() -> None:
    verdict = build("Genoa", 3, cert_product="Milan-B0").verify()
    assert failed(verdict) == ["product"]
    assert "is Genoa but the certificate's productName Milan-B0 says Milan" in reason(
        verdict, "product"
    )


def test_v2_report_without_product_name_fails_product() -> None:
    verdict = build("Milan", 2, cert_product="").verify()
    assert failed(verdict) == ["product"]
    assert "carries no CPUID" in reason(verdict, "product")


def test_unknown_cpuid_fails_product() -> None:
    built = build("Milan", 3)
    report = build_report(
        _leaf_key(), version=3, product="Milan", tcb=MILAN_TCB, cpuid=(0x30, 0x00, 0x00)
    )
    verdict = built.verify(evidence=replace(built.evidence, report=report))
    assert "product" in failed(verdict)
    assert "family 0x30 model 0x00" in reason(verdict, "product")


@pytest.mark.parametrize("version", [0, 1, 6, 0xFFFFFFFF])
def test_unsupported_version_fails_version(version: int) -> None:
    built = build("Genoa", 3)
    report = build_report(
        _leaf_key(), version=version, product="Genoa", tcb=GENOA_TCB, report_data=b"drydock"
    )
    verdict = built.verify(evidence=replace(built.evidence, report=report))
    assert "version" in failed(verdict)
    assert f"report version {version} is not supported" in reason(verdict, "version")
    # Still judged in full: the signature over the same region holds.
    assert outcome(verdict, "signature") is Outcome.PASSED


def test_other_signature_algorithm_fails() -> None:
    verdict = build("Milan", 4, sig_algo=2).verify()
    assert failed(verdict) == ["signature_algorithm", "signature"]


def test_masked_chip_id_skips_chip_id() -> None:
    verdict = build("Genoa", 5, mask_chip_key=True).verify()
    assert verdict.verified
    assert outcome(verdict, "chip_id") is Outcome.SKIPPED
    assert verdict.claims["mask_chip_key"] is True


def test_built_evidence_against_amd_root_fails_root() -> None:
    built = build("Genoa", 4)
    verdict = verify_sev_snp_report(
        built.evidence, roots=VIRTEE.roots(), nonce=None, policy=SnpPolicy(), at=BUILT_AT
    )
    assert failed(verdict) == ["vcek_chain.root"]


def test_product_line_from_cpuid() -> None:
    for product in ("Milan", "Genoa", "Turin"):
        raw = build_report(_leaf_key(), version=3, product=product, tcb=TCBS[product])
        assert parse_report(raw).cpuid_product is SnpProduct(product)


# --- fuzzing: only EvidenceFormatError or a verdict, never anything else ------------------------


def _judge(evidence: SnpEvidence) -> Verdict | None:
    try:
        return verify(VIRTEE, evidence=evidence)
    except EvidenceFormatError as exc:
        assert exc.part in {"report", "vcek", "chain"}
        return None


@settings(max_examples=200, deadline=None)
@given(st.binary(max_size=3 * REPORT_SIZE))
def test_fuzz_random_bytes_parse_or_refuse(data: bytes) -> None:
    try:
        report = parse_report(data)
    except EvidenceFormatError as exc:
        assert exc.part == "report"
    else:
        assert len(report.raw) == REPORT_SIZE
        report.claims(report.cpuid_product)


@settings(max_examples=200, deadline=None)
@given(st.binary(min_size=REPORT_SIZE, max_size=REPORT_SIZE))
def test_fuzz_random_reports_are_judged_not_crashed(data: bytes) -> None:
    verdict = _judge(replace(VIRTEE.evidence(), report=data))
    assert verdict is not None and not verdict.verified


@settings(max_examples=200, deadline=None)
@given(st.integers(min_value=0, max_value=REPORT_SIZE - 1))
def test_fuzz_truncated_sample_is_a_format_error(length: int) -> None:
    report = (VIRTEE.path / "report.bin").read_bytes()[:length]
    with pytest.raises(EvidenceFormatError):
        verify(VIRTEE, evidence=replace(VIRTEE.evidence(), report=report))


@settings(max_examples=200, deadline=None)
@given(st.integers(min_value=0, max_value=REPORT_SIZE - 1), st.integers(1, 255))
def test_fuzz_flipped_report_byte(offset: int, mask: int) -> None:
    evidence = VIRTEE.evidence()
    verdict = _judge(replace(evidence, report=flipped(evidence.report, offset, xor=mask)))
    assert verdict is not None
    if offset < 0x2A0 + 144:  # the signed region and the signature itself
        assert "signature" in failed(verdict)


# A damaged name can still parse with a warning (e.g. a country code of the wrong length).
@pytest.mark.filterwarnings("ignore::UserWarning")
@settings(max_examples=200, deadline=None)
@given(st.data())
def test_fuzz_flipped_vcek_byte(data: st.DataObject) -> None:
    evidence = VIRTEE.evidence()
    offset = data.draw(st.integers(min_value=0, max_value=len(evidence.vcek) - 1))
    mask = data.draw(st.integers(1, 255))
    damaged = flipped(evidence.vcek, offset, xor=mask)
    verdict = _judge(replace(evidence, vcek=damaged))
    if verdict is not None and verdict.verified:
        assert_same_signed_content(evidence.vcek, damaged)


def assert_same_signed_content(original: bytes, damaged: bytes) -> None:
    """The only edit a certificate survives: one outside what its issuer signed (the count of
    unused bits in the signature's BIT STRING, which cryptography tolerates)."""
    before = load_certificates("original", original)[0]
    after = load_certificates("damaged", damaged)[0]
    assert (after.tbs_certificate_bytes, after.signature) == (
        before.tbs_certificate_bytes,
        before.signature,
    )


@pytest.mark.filterwarnings("ignore::UserWarning")
@settings(max_examples=200, deadline=None)
@given(st.data())
def test_fuzz_flipped_chain_byte(data: st.DataObject) -> None:
    evidence = VIRTEE.evidence()
    ask, ark = load_certificates("chain", evidence.chain)
    ask_der, ark_der = (cert.public_bytes(serialization.Encoding.DER) for cert in (ask, ark))
    index = data.draw(st.integers(0, 1))
    original = (ask_der, ark_der)[index]
    offset = data.draw(st.integers(min_value=0, max_value=len(original) - 1))
    damaged = flipped(original, offset, xor=data.draw(st.integers(1, 255)))
    chain = [ask_der, ark_der]
    chain[index] = damaged
    pem = b"".join(
        b"-----BEGIN CERTIFICATE-----\n" + base64.encodebytes(der) + b"-----END CERTIFICATE-----\n"
        for der in chain
    )
    verdict = _judge(replace(evidence, chain=pem))
    if verdict is not None and verdict.verified:
        assert_same_signed_content(original, damaged)

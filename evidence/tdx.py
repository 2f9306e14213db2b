"""Intel TDX: verify a DCAP quote (v4, or v5 with a TDX 1.0 or 1.5 body) to a pinned Intel root,
judge the TD's measurements against a policy and, given Intel's signed collateral, its TCB status.

The quote is parsed here with ``struct`` and explicit bounds so every structural fault is an
:class:`EvidenceFormatError` naming the part; the signatures (attestation key over the quote, PCK
over the QE report) are checked with ``cryptography``. Collateral (TCB info, QE identity, CRLs)
is judged by ``dcap-qvl``, Phala's port of Intel's quote verification library, which matches
the platform's TCB against Intel's levels the way Intel's own library does.

Quote layout (Intel "TDX DCAP Quote Generation Library and Quote Verification Library" API):
48-byte header; v4: the 584-byte TD report body; v5: u16 body type, u32 body size, then the
body (type 2 = 584 bytes TDX 1.0, type 3 = 648 bytes TDX 1.5); u32 signature-data length; the
signature data: ECDSA r||s over header||body (for v5 including type and size), the attestation
key x||y, and certification data type 6 (QE report, its signature by the PCK key, QE auth data,
and nested certification data type 5: the PEM PCK chain).

Over 500 lines on purpose: one wire format (the quote and Intel's collateral) read in the
order of its layout and checked in the order of its chain of trust; split, the bounds each
parser relies on would live apart from the checks that rely on them.
"""

from __future__ import annotations

import hashlib
import json
import re
import struct
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path
from typing import Any

import dcap_qvl  # type: ignore[import-untyped, unused-ignore]
from cryptography import x509
from cryptography.exceptions import InvalidSignature, UnsupportedAlgorithm
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.hazmat.primitives.asymmetric.utils import encode_dss_signature
from cryptography.hazmat.primitives.serialization import Encoding

from evidence.certs import check_chain, common_name, fingerprint, load_certificates
from evidence.verdict import (
    MAX_EVIDENCE_BYTES,
    Check,
    EvidenceFormatError,
    EvidenceKind,
    Verdict,
    check_nonce_binding,
    require_size,
)

HEADER_SIZE = 48
TD_REPORT_10_SIZE = 584
TD_REPORT_15_SIZE = 648
QE_REPORT_SIZE = 384
TDX_TEE_TYPE = 0x81
ECDSA_P256_KEY_TYPE = 2
INTEL_QE_VENDOR_ID = bytes.fromhex("939a7233f79c4ca9940a0db3957f0607")
# Certification data types (Intel DCAP quote library): 5 = the PEM PCK chain, 6 = QE report
# certification data (which nests a type 5).
PCK_CHAIN_CERT_DATA = 5
QE_REPORT_CERT_DATA = 6
V5_BODY_SIZES = {2: TD_REPORT_10_SIZE, 3: TD_REPORT_15_SIZE}
# td_attributes (a little-endian u64), TDX module ABI: the flags operators ask about.
TD_ATTRIBUTE_BITS = {
    "debug": 0,
    "septve_disable": 28,
    "protection_keys": 30,
    "key_locker": 31,
    "perfmon": 63,
}
_SMALLEST_QUOTE = HEADER_SIZE + TD_REPORT_10_SIZE + 4


@dataclass(frozen=True)
class TdxEvidence:
    """A TD quote and, optionally, Intel's collateral for it.

    ``quote`` may carry trailing bytes after the signature data (a fixed-size quote buffer's
    zero tail); they are ignored and counted in the claim ``trailing_bytes``. ``collateral`` is
    the JSON dcap-qvl and Phala's PCCS use: ``pck_crl_issuer_chain``, ``root_ca_crl`` (hex
    DER), ``pck_crl`` (hex DER), ``tcb_info_issuer_chain``, ``tcb_info`` (the exact signed JSON
    text), ``tcb_info_signature`` (hex), ``qe_identity_issuer_chain``, ``qe_identity`` and
    ``qe_identity_signature``; :func:`collateral_from_directory` assembles it from Intel PCS
    downloads."""

    quote: bytes
    collateral: bytes | None = None


@dataclass(frozen=True)
class TdxPolicy:
    """What an asset class accepts. ``None`` reference values skip their check."""

    allow_debug: bool = False
    mr_td: frozenset[bytes] | None = None
    rtmrs: Mapping[int, bytes] | None = None
    mr_seam: frozenset[bytes] | None = None
    accepted_tcb_statuses: frozenset[str] = frozenset({"UpToDate"})


@dataclass(frozen=True)
class TdxQuoteHeader:
    version: int
    attestation_key_type: int
    tee_type: int
    qe_svn: int
    pce_svn: int
    qe_vendor_id: bytes
    user_data: bytes


@dataclass(frozen=True)
class TdReport:
    """The TD report body: TDX 1.0 fields, plus ``tee_tcb_svn2``/``mr_servicetd`` on 1.5."""

    tee_tcb_svn: bytes
    mr_seam: bytes
    mr_signer_seam: bytes
    seam_attributes: bytes
    td_attributes: bytes
    xfam: bytes
    mr_td: bytes
    mr_config_id: bytes
    mr_owner: bytes
    mr_owner_config: bytes
    rtmrs: tuple[bytes, bytes, bytes, bytes]
    report_data: bytes
    tee_tcb_svn2: bytes | None = None
    mr_servicetd: bytes | None = None

    def td_attribute(self, name: str) -> bool:
        bits = int.from_bytes(self.td_attributes, "little")
        return bool(bits >> TD_ATTRIBUTE_BITS[name] & 1)

    @property
    def debug(self) -> bool:
        return self.td_attribute("debug")


@dataclass(frozen=True)
class QeReport:
    """The quoting enclave's SGX report (384 bytes), signed by the PCK key."""

    raw: bytes
    cpu_svn: bytes
    misc_select: int
    attributes: bytes
    mr_enclave: bytes
    mr_signer: bytes
    isv_prod_id: int
    isv_svn: int
    report_data: bytes


@dataclass(frozen=True)
class TdxQuote:
    header: TdxQuoteHeader
    body_type: int  # 2 = TDX 1.0, 3 = TDX 1.5 (v4 quotes are always 2)
    body: TdReport
    signed_data: bytes  # header || body as the attestation key signed it
    signature: bytes  # r || s, 64 bytes big-endian
    attestation_key: bytes  # x || y of the P-256 attestation key
    qe_report: QeReport
    qe_report_signature: bytes
    qe_auth_data: bytes
    pck_chain: bytes  # PEM: PCK leaf, Platform/Processor CA, Intel SGX Root CA
    size: int  # bytes up to the end of the signature data
    trailing_bytes: int  # ignored bytes after it


class _Reader:
    """Bounds-checked reads over one part of the quote; every overrun is a format error."""

    def __init__(self, part: str, data: bytes, offset: int = 0, end: int | None = None) -> None:
        self.part = part
        self.data = data
        self.offset = offset
        self.end = len(data) if end is None else end

    def take(self, size: int, what: str) -> bytes:
        if size > self.end - self.offset:
            raise EvidenceFormatError(
                self.part,
                f"{what} needs {size} bytes at offset {self.offset:#x} but only "
                f"{self.end - self.offset} remain",
            )
        chunk = self.data[self.offset : self.offset + size]
        self.offset += size
        return chunk

    def u16(self, what: str) -> int:
        value: int = struct.unpack("<H", self.take(2, what))[0]
        return value

    def u32(self, what: str) -> int:
        value: int = struct.unpack("<I", self.take(4, what))[0]
        return value


def parse_quote(data: bytes) -> TdxQuote:
    """Parse a TDX DCAP quote (v4, or v5 with body type 2 or 3, ECDSA P-256 attestation key,
    certification data type 6 nesting a PEM PCK chain). Bytes after the signature data are
    ignored. Raises :class:`EvidenceFormatError` for anything else or anything truncated."""
    require_size("quote", data, minimum=_SMALLEST_QUOTE)
    reader = _Reader("quote", data)
    header = _parse_header(reader)
    body_type = 2
    if header.version == 5:
        body_type = reader.u16("v5 body type")
        body_size = reader.u32("v5 body size")
        if body_type not in V5_BODY_SIZES:
            raise EvidenceFormatError(
                "quote.body",
                f"v5 body type {body_type} is not a TD report (2 = TDX 1.0, 3 = TDX 1.5)",
            )
        if body_size != V5_BODY_SIZES[body_type]:
            raise EvidenceFormatError(
                "quote.body",
                f"v5 body type {body_type} must be {V5_BODY_SIZES[body_type]} bytes; "
                f"the quote says {body_size}",
            )
    body = _parse_td_report(reader.take(V5_BODY_SIZES[body_type], "TD report body"), body_type)
    signed_data = data[: reader.offset]
    signature_size = reader.u32("signature data length")
    end = reader.offset + signature_size
    if end > len(data):
        raise EvidenceFormatError(
            "quote.signature_data",
            f"declares {signature_size} bytes but only {len(data) - reader.offset} follow",
        )
    signature_data = _Reader("quote.signature_data", data, reader.offset, end)
    signature = signature_data.take(64, "quote signature")
    attestation_key = signature_data.take(64, "attestation key")
    qe_certification = _take_certification_data(signature_data, QE_REPORT_CERT_DATA)
    if signature_data.offset != end:
        raise EvidenceFormatError(
            "quote.signature_data",
            f"{end - signature_data.offset} bytes left over after the certification data",
        )
    qe_reader = _Reader("quote.qe_certification_data", qe_certification)
    qe_report = _parse_qe_report(qe_reader.take(QE_REPORT_SIZE, "QE report"))
    qe_report_signature = qe_reader.take(64, "QE report signature")
    qe_auth_data = qe_reader.take(qe_reader.u16("QE auth data length"), "QE auth data")
    pck_chain = _take_certification_data(qe_reader, PCK_CHAIN_CERT_DATA)
    if qe_reader.offset != qe_reader.end:
        raise EvidenceFormatError(
            "quote.qe_certification_data",
            f"{qe_reader.end - qe_reader.offset} bytes left over after the PCK chain",
        )
    return TdxQuote(
        header=header,
        body_type=body_type,
        body=body,
        signed_data=signed_data,
        signature=signature,
        attestation_key=attestation_key,
        qe_report=qe_report,
        qe_report_signature=qe_report_signature,
        qe_auth_data=qe_auth_data,
        pck_chain=pck_chain,
        size=end,
        trailing_bytes=len(data) - end,
    )


def _parse_header(reader: _Reader) -> TdxQuoteHeader:
    version, key_type, tee_type, qe_svn, pce_svn = struct.unpack(
        "<HHIHH", reader.take(12, "quote header")
    )
    header = TdxQuoteHeader(
        version=version,
        attestation_key_type=key_type,
        tee_type=tee_type,
        qe_svn=qe_svn,
        pce_svn=pce_svn,
        qe_vendor_id=reader.take(16, "QE vendor id"),
        user_data=reader.take(20, "user data"),
    )
    # Each of these decides the layout that follows, so a different value is unreadable here
    # rather than merely wrong.
    if version not in (4, 5):
        raise EvidenceFormatError(
            "quote.header", f"quote version {version} is not a TDX quote format (4 or 5 expected)"
        )
    if tee_type != TDX_TEE_TYPE:
        kind = "an SGX quote" if tee_type == 0 else f"TEE type {tee_type:#x}"
        raise EvidenceFormatError("quote.header", f"{kind}, not a TDX quote (TEE type 0x81)")
    if key_type != ECDSA_P256_KEY_TYPE:
        raise EvidenceFormatError(
            "quote.header",
            f"attestation key type {key_type} is not supported (2 = ECDSA P-256 expected)",
        )
    return header


def _parse_td_report(raw: bytes, body_type: int) -> TdReport:
    def field(offset: int, size: int) -> bytes:
        return raw[offset : offset + size]

    rtmrs = (field(328, 48), field(376, 48), field(424, 48), field(472, 48))
    return TdReport(
        tee_tcb_svn=field(0, 16),
        mr_seam=field(16, 48),
        mr_signer_seam=field(64, 48),
        seam_attributes=field(112, 8),
        td_attributes=field(120, 8),
        xfam=field(128, 8),
        mr_td=field(136, 48),
        mr_config_id=field(184, 48),
        mr_owner=field(232, 48),
        mr_owner_config=field(280, 48),
        rtmrs=rtmrs,
        report_data=field(520, 64),
        tee_tcb_svn2=field(584, 16) if body_type == 3 else None,
        mr_servicetd=field(600, 48) if body_type == 3 else None,
    )


def _parse_qe_report(raw: bytes) -> QeReport:
    return QeReport(
        raw=raw,
        cpu_svn=raw[0:16],
        misc_select=int.from_bytes(raw[16:20], "little"),
        attributes=raw[48:64],
        mr_enclave=raw[64:96],
        mr_signer=raw[128:160],
        isv_prod_id=int.from_bytes(raw[256:258], "little"),
        isv_svn=int.from_bytes(raw[258:260], "little"),
        report_data=raw[320:384],
    )


def _take_certification_data(reader: _Reader, expected_type: int) -> bytes:
    certification_type = reader.u16("certification data type")
    size = reader.u32("certification data size")
    if certification_type != expected_type:
        raise EvidenceFormatError(
            reader.part,
            f"certification data type {certification_type} where type {expected_type} was "
            "expected (only QE report certification data carrying a PEM PCK chain is supported)",
        )
    available = reader.end - reader.offset
    if size != available:
        raise EvidenceFormatError(
            reader.part,
            f"certification data type {certification_type} declares {size:#x} bytes but "
            f"{available:#x} remain in the structure that holds it",
        )
    return reader.take(size, f"certification data type {certification_type}")


def verify_tdx_quote(
    evidence: TdxEvidence,
    *,
    roots: Sequence[x509.Certificate],
    nonce: bytes | None,
    policy: TdxPolicy,
    at: datetime,
) -> Verdict:
    """Judge a TD quote at time ``at`` (timezone-aware).

    Checks, in order: ``header``, ``quote_signature``, ``qe_report_signature``, ``qe_binding``,
    ``pck_chain.*``, ``nonce``, ``debug``, ``mr_td``, ``rtmrs``, ``mr_seam``,
    ``collateral.verified``, ``collateral.tcb_status``. Raises :class:`EvidenceFormatError`
    when the quote, its PCK chain or the collateral cannot be read."""
    quote = parse_quote(evidence.quote)
    pck_path = _load_pck_chain(quote.pck_chain)
    collateral = _parse_collateral(evidence.collateral) if evidence.collateral else None
    verdict = Verdict(EvidenceKind.TDX, claims=quote_claims(quote))
    verdict.claims["pck"] = _pck_claims(quote.pck_chain, pck_path[0])

    verdict.add(_check_header(quote.header))
    verdict.add(_check_quote_signature(quote))
    verdict.add(_check_qe_report_signature(quote, pck_path[0]))
    verdict.add(_check_qe_binding(quote))
    verdict.extend(check_chain("pck_chain", pck_path, roots, at))
    verdict.add(check_nonce_binding("nonce", quote.body.report_data, nonce))
    verdict.add(_check_debug(quote.body, policy.allow_debug))
    verdict.add(_check_allowed("mr_td", "MRTD", quote.body.mr_td, policy.mr_td))
    verdict.add(_check_rtmrs(quote.body, policy.rtmrs))
    verdict.add(_check_allowed("mr_seam", "MRSEAM", quote.body.mr_seam, policy.mr_seam))
    if collateral is None:
        reason = "no collateral was supplied, so the TCB status was not evaluated"
        verdict.add(Check.skipped("collateral.verified", reason))
        verdict.add(Check.skipped("collateral.tcb_status", reason))
    else:
        verdict.extend(
            _judge_collateral(
                evidence.quote[: quote.size],
                pck_path,
                collateral,
                roots,
                policy,
                at,
                verdict.claims,
            )
        )
    return verdict


def _load_pck_chain(pem: bytes) -> list[x509.Certificate]:
    certificates = load_certificates("quote.pck_chain", pem)
    # A damaged BEGIN/END line would otherwise drop that certificate silently and leave a
    # shorter chain that may still reach the root.
    markers = pem.count(b"BEGIN CERTIFICATE")
    if markers != len(certificates):
        raise EvidenceFormatError(
            "quote.pck_chain",
            f"{markers} certificates begin but {len(certificates)} are complete PEM blocks",
        )
    return certificates


def quote_claims(quote: TdxQuote) -> dict[str, Any]:
    """The quote's fields, JSON-ready (hex strings, ints, bools)."""
    header, body = quote.header, quote.body
    td_report: dict[str, Any] = {
        "tee_tcb_svn": body.tee_tcb_svn.hex(),
        "mr_seam": body.mr_seam.hex(),
        "mr_signer_seam": body.mr_signer_seam.hex(),
        "seam_attributes": body.seam_attributes.hex(),
        "td_attributes": body.td_attributes.hex(),
        "xfam": body.xfam.hex(),
        "mr_td": body.mr_td.hex(),
        "mr_config_id": body.mr_config_id.hex(),
        "mr_owner": body.mr_owner.hex(),
        "mr_owner_config": body.mr_owner_config.hex(),
        **{f"rtmr{index}": rtmr.hex() for index, rtmr in enumerate(body.rtmrs)},
        "report_data": body.report_data.hex(),
    }
    if body.tee_tcb_svn2 is not None and body.mr_servicetd is not None:
        td_report["tee_tcb_svn2"] = body.tee_tcb_svn2.hex()
        td_report["mr_servicetd"] = body.mr_servicetd.hex()
    qe = quote.qe_report
    return {
        "header": {
            "version": header.version,
            "attestation_key_type": header.attestation_key_type,
            "tee_type": header.tee_type,
            "qe_svn": header.qe_svn,
            "pce_svn": header.pce_svn,
            "qe_vendor_id": header.qe_vendor_id.hex(),
            "user_data": header.user_data.hex(),
        },
        "body_type": quote.body_type,
        "tdx_version": "1.5" if quote.body_type == 3 else "1.0",
        "td_report": td_report,
        "td_attributes": {name: body.td_attribute(name) for name in TD_ATTRIBUTE_BITS},
        "qe_report": {
            "cpu_svn": qe.cpu_svn.hex(),
            "misc_select": qe.misc_select,
            "attributes": qe.attributes.hex(),
            "mr_enclave": qe.mr_enclave.hex(),
            "mr_signer": qe.mr_signer.hex(),
            "isv_prod_id": qe.isv_prod_id,
            "isv_svn": qe.isv_svn,
        },
        "attestation_key": quote.attestation_key.hex(),
        "quote_size": quote.size,
        "trailing_bytes": quote.trailing_bytes,
    }


def _pck_claims(pck_chain: bytes, leaf: x509.Certificate) -> dict[str, Any]:
    claims: dict[str, Any] = {
        "subject": common_name(leaf),
        "issuer": leaf.issuer.rfc4514_string(),
        "fingerprint": fingerprint(leaf),
    }
    # Intel's SGX extension (FMSPC, PCE id, ...) is ASN.1 cryptography does not know; dcap-qvl
    # reads it. A PCK without it still verifies, the claims just lack those fields.
    try:
        extension = dcap_qvl.parse_pck_extension_from_pem(pck_chain)
    except BaseException as exc:
        if not _rejected_by_qvl(exc):
            raise
        return claims
    claims["fmspc"] = bytes(extension.fmspc).hex()
    claims["pceid"] = bytes(extension.pce_id).hex()
    claims["pcesvn"] = int(extension.pce_svn)
    claims["cpusvn"] = bytes(extension.cpu_svn).hex()
    instance = extension.platform_instance_id
    if instance is not None:
        claims["platform_instance_id"] = bytes(instance).hex()
    return claims


def _check_header(header: TdxQuoteHeader) -> Check:
    return Check.judged(
        "header",
        header.qe_vendor_id == INTEL_QE_VENDOR_ID,
        f"quote v{header.version}, ECDSA P-256 attestation key, TDX, Intel quoting enclave",
        f"QE vendor id {header.qe_vendor_id.hex()} is not Intel's "
        f"({INTEL_QE_VENDOR_ID.hex()}): the quote was not made by Intel's quoting enclave",
    )


def _p256_key(raw: bytes) -> ec.EllipticCurvePublicKey | None:
    try:
        return ec.EllipticCurvePublicKey.from_encoded_point(ec.SECP256R1(), b"\x04" + raw)
    except ValueError:
        return None


def _ecdsa_ok(key: ec.EllipticCurvePublicKey, signature: bytes, message: bytes) -> bool:
    r, s = int.from_bytes(signature[:32], "big"), int.from_bytes(signature[32:], "big")
    try:
        key.verify(encode_dss_signature(r, s), message, ec.ECDSA(hashes.SHA256()))
    except InvalidSignature:
        return False
    return True


def _check_quote_signature(quote: TdxQuote) -> Check:
    key = _p256_key(quote.attestation_key)
    if key is None:
        return Check.failed(
            "quote_signature", "the attestation key in the quote is not a point on P-256"
        )
    return Check.judged(
        "quote_signature",
        _ecdsa_ok(key, quote.signature, quote.signed_data),
        "the attestation key signed the quote header and TD report",
        "the quote's signature does not verify with its attestation key: the header or "
        "TD report was altered after signing",
    )


def _check_qe_report_signature(quote: TdxQuote, pck: x509.Certificate) -> Check:
    try:
        key: object = pck.public_key()
    except (ValueError, UnsupportedAlgorithm):
        key = None
    if not isinstance(key, ec.EllipticCurvePublicKey) or key.curve.name != "secp256r1":
        return Check.failed(
            "qe_report_signature",
            f"the PCK certificate {common_name(pck)} does not hold a P-256 key",
        )
    return Check.judged(
        "qe_report_signature",
        _ecdsa_ok(key, quote.qe_report_signature, quote.qe_report.raw),
        f"the QE report is signed by the PCK key ({common_name(pck)})",
        f"the QE report's signature does not verify with the PCK key ({common_name(pck)}): "
        "the QE report was altered or the PCK certificate belongs to another platform",
    )


def _check_qe_binding(quote: TdxQuote) -> Check:
    expected = hashlib.sha256(quote.attestation_key + quote.qe_auth_data).digest() + bytes(32)
    found = quote.qe_report.report_data
    return Check.judged(
        "qe_binding",
        found == expected,
        "the QE report binds the attestation key (report data = SHA-256(key || auth data))",
        f"QE report data {found.hex()} is not SHA-256(attestation key || QE auth data) "
        f"{expected[:32].hex()} followed by zeros: the attestation key was not certified by "
        "this quoting enclave",
    )


def _check_debug(body: TdReport, allow_debug: bool) -> Check:
    if not body.debug:
        return Check.passed("debug", "the TD is not a debug TD (td_attributes bit 0 clear)")
    if allow_debug:
        return Check.passed("debug", "debug TD (td_attributes bit 0 set), allowed by the policy")
    return Check.failed(
        "debug",
        f"the TD runs in debug mode (td_attributes {body.td_attributes.hex()}, bit 0 set): "
        "the host can read its memory; the policy forbids debug TDs",
    )


def _check_allowed(name: str, label: str, found: bytes, allowed: frozenset[bytes] | None) -> Check:
    if allowed is None:
        return Check.skipped(name, f"the policy lists no {label} values")
    return Check.judged(
        name,
        found in allowed,
        f"{label} {found.hex()} is allowed",
        f"{label} {found.hex()} is not one of the {len(allowed)} allowed value(s): "
        f"{', '.join(sorted(value.hex() for value in allowed))}",
    )


def _check_rtmrs(body: TdReport, expected: Mapping[int, bytes] | None) -> Check:
    if expected is None:
        return Check.skipped("rtmrs", "the policy lists no RTMR values")
    problems: list[str] = []
    for index, value in sorted(expected.items()):
        if not 0 <= index < len(body.rtmrs):
            problems.append(f"RTMR{index} does not exist (0..3)")
        elif body.rtmrs[index] != value:
            problems.append(f"RTMR{index} expected {value.hex()} found {body.rtmrs[index].hex()}")
    indexes = ", ".join(f"RTMR{index}" for index in sorted(expected))
    return Check.judged("rtmrs", not problems, f"{indexes} match the policy", "; ".join(problems))


@dataclass(frozen=True)
class _Collateral:
    pck_crl_issuer_chain: str
    root_ca_crl: bytes
    pck_crl: bytes
    tcb_info_issuer_chain: str
    tcb_info: str
    tcb_info_signature: bytes
    qe_identity_issuer_chain: str
    qe_identity: str
    qe_identity_signature: bytes


_COLLATERAL_TEXT = ("pck_crl_issuer_chain", "tcb_info_issuer_chain", "qe_identity_issuer_chain")
_COLLATERAL_JSON = ("tcb_info", "qe_identity")
_COLLATERAL_HEX = ("root_ca_crl", "pck_crl", "tcb_info_signature", "qe_identity_signature")


def _parse_collateral(data: bytes) -> _Collateral:
    require_size("collateral", data, maximum=MAX_EVIDENCE_BYTES)
    try:
        document = json.loads(data)
    except (ValueError, RecursionError) as exc:
        raise EvidenceFormatError("collateral", f"not JSON ({exc})") from None
    if not isinstance(document, dict):
        raise EvidenceFormatError("collateral", "expected a JSON object")
    values: dict[str, Any] = {}
    for key in (*_COLLATERAL_TEXT, *_COLLATERAL_JSON, *_COLLATERAL_HEX):
        value = document.get(key)
        if not isinstance(value, str):
            found = "missing" if value is None else f"a {type(value).__name__}"
            raise EvidenceFormatError(f"collateral.{key}", f"expected a string, found {found}")
        values[key] = value
    for key in _COLLATERAL_JSON:
        try:
            parsed = json.loads(values[key])
        except (ValueError, RecursionError):
            parsed = None
        if not isinstance(parsed, dict):
            raise EvidenceFormatError(
                f"collateral.{key}", "expected the signed JSON object as a string"
            )
    for key in _COLLATERAL_TEXT:
        # dcap-qvl reads only the signing certificate of an issuer chain (the rest is the root,
        # which it is given separately), so refuse unreadable chains here.
        if values[key] or key != "pck_crl_issuer_chain":
            try:
                load_certificates(f"collateral.{key}", values[key].encode())
            except x509.InvalidVersion as exc:
                raise EvidenceFormatError(f"collateral.{key}", f"not X.509 ({exc})") from None
    for key in _COLLATERAL_HEX:
        try:
            values[key] = bytes.fromhex(values[key])
        except ValueError:
            raise EvidenceFormatError(f"collateral.{key}", "expected hex") from None
        if not values[key]:
            raise EvidenceFormatError(f"collateral.{key}", "empty")
    return _Collateral(**values)


def _judge_collateral(
    raw_quote: bytes,
    pck_path: Sequence[x509.Certificate],
    collateral: _Collateral,
    roots: Sequence[x509.Certificate],
    policy: TdxPolicy,
    at: datetime,
    claims: dict[str, Any],
) -> list[Check]:
    anchor = _anchor(pck_path, roots)
    if anchor is None:
        reason = "the PCK chain does not reach a pinned root, so the collateral was not evaluated"
        return [
            Check.failed("collateral.verified", reason),
            Check.skipped("collateral.tcb_status", reason),
        ]
    # dcap-qvl judges the PCK CRL with the quote's own chain; fill the informative issuer chain
    # from the quote when the collateral leaves it out (collateral_from_directory may).
    issuer_chain = collateral.pck_crl_issuer_chain or "".join(
        certificate.public_bytes(Encoding.PEM).decode() for certificate in pck_path[1:]
    )
    qvl_collateral = dcap_qvl.QuoteCollateralV3(
        issuer_chain,
        collateral.root_ca_crl,
        collateral.pck_crl,
        collateral.tcb_info_issuer_chain,
        collateral.tcb_info,
        collateral.tcb_info_signature,
        collateral.qe_identity_issuer_chain,
        collateral.qe_identity,
        collateral.qe_identity_signature,
    )
    try:
        report = dcap_qvl.verify_with_root_ca(
            raw_quote, qvl_collateral, anchor.public_bytes(Encoding.DER), int(at.timestamp())
        )
    except BaseException as exc:
        if not _rejected_by_qvl(exc):
            raise
        reason = _qvl_error(exc)
        return [
            Check.failed("collateral.verified", reason),
            Check.skipped(
                "collateral.tcb_status",
                "no TCB status: the collateral did not verify against this quote",
            ),
        ]
    status = str(report.status)
    advisories = [str(advisory) for advisory in report.advisory_ids]
    claims["tcb_status"] = status
    claims["advisory_ids"] = advisories
    advisory_text = f" (advisories: {', '.join(advisories)})" if advisories else ""
    accepted = ", ".join(sorted(policy.accepted_tcb_statuses)) or "none"
    return [
        Check.passed(
            "collateral.verified",
            f"Intel's TCB info, QE identity and CRLs verify to {common_name(anchor)} at "
            f"{at.isoformat()} and the PCK is not revoked",
        ),
        Check.judged(
            "collateral.tcb_status",
            status in policy.accepted_tcb_statuses,
            f"TCB status {status}{advisory_text}",
            f"TCB status {status}{advisory_text} is not accepted by the policy ({accepted}): "
            "update the platform's firmware/TDX module, or accept the status deliberately",
        ),
    ]


def _anchor(
    pck_path: Sequence[x509.Certificate], roots: Sequence[x509.Certificate]
) -> x509.Certificate | None:
    """The pinned root the PCK chain ends at (or is issued by), if any."""
    top = pck_path[-1]
    for root in roots:
        if fingerprint(root) == fingerprint(top):
            return root
    for root in roots:
        try:
            top.verify_directly_issued_by(root)
        except (InvalidSignature, ValueError, TypeError):
            continue
        return root
    return None


def _rejected_by_qvl(exc: BaseException) -> bool:
    """dcap-qvl reports a rejection as ValueError; a Rust panic surfaces as pyo3's
    PanicException (a BaseException), still its verdict on this input. Interrupts propagate."""
    return isinstance(exc, Exception) or type(exc).__name__ == "PanicException"


def _qvl_error(exc: BaseException) -> str:
    message = " ".join(str(exc).split())
    hint = ""
    if "NotValidYet" in message or "Expired" in message or "future" in message:
        hint = (
            ": the collateral or a certificate is outside its validity at the verification "
            "time; pin the time to when the quote was made or fetch current collateral"
        )
    elif "No matching TCB level" in message:
        hint = (
            ": the platform's TCB (PCK CPUSVN/PCESVN and the TD's TEE TCB SVN) is below every "
            "level in Intel's TCB info"
        )
    elif "CertRevoked" in message:
        hint = ": a certificate in the PCK chain is on Intel's revocation list"
    return f"dcap-qvl rejected the collateral: {message}{hint}"


def collateral_from_directory(path: Path) -> bytes:
    """Assemble collateral JSON (the shape :class:`TdxEvidence` takes) from files downloaded
    from Intel PCS into ``path``:

    - ``tcbinfo*.json``: exactly one PCS TCB info response ``{"tcbInfo": ..., "signature": ...}``
    - ``qe_identity.json``: the PCS QE identity response ``{"enclaveIdentity": ..., "signature"}``
    - ``pck_platform_crl.der`` or ``pck_processor_crl.der`` (DER or PEM), ``root_ca_crl.der``
    - ``intel_tcb_signing_chain.pem``: Intel SGX TCB Signing + Root CA (PCS sends it in the
      ``TCB-Info-Issuer-Chain`` header); it signs both the TCB info and the QE identity.
    - ``pck_crl_issuer_chain.pem`` (optional): the PCK CRL's issuer chain. Without it the field
      is left empty and :func:`verify_tdx_quote` uses the quote's own PCK chain, which is the
      CRL's issuer (Platform or Processor CA) up to the root.

    The signed JSON is taken as the exact bytes Intel signed (a raw substring of the response,
    never re-serialised). Raises :class:`EvidenceFormatError` naming the file at fault."""
    tcb_files = sorted(path.glob("tcbinfo*.json"))
    if len(tcb_files) != 1:
        raise EvidenceFormatError(
            "collateral.tcb_info",
            f"expected one tcbinfo*.json in {path}, found {len(tcb_files)}",
        )
    tcb_info, tcb_signature = _signed_response(tcb_files[0], "tcb_info", ("tcbInfo",))
    qe_identity, qe_signature = _signed_response(
        path / "qe_identity.json", "qe_identity", ("enclaveIdentity", "qeIdentity")
    )
    crl_names = ("pck_platform_crl.der", "pck_processor_crl.der", "pck_crl.der")
    crl_files = [path / name for name in crl_names if (path / name).is_file()]
    if len(crl_files) != 1:
        raise EvidenceFormatError(
            "collateral.pck_crl", f"expected one of {', '.join(crl_names)} in {path}"
        )
    signing_chain = _read(path / "intel_tcb_signing_chain.pem", "tcb_info_issuer_chain").decode(
        errors="replace"
    )
    crl_issuer = path / "pck_crl_issuer_chain.pem"
    document = {
        "pck_crl_issuer_chain": (
            _read(crl_issuer, "pck_crl_issuer_chain").decode(errors="replace")
            if crl_issuer.is_file()
            else ""
        ),
        "root_ca_crl": _crl_der(path / "root_ca_crl.der", "root_ca_crl").hex(),
        "pck_crl": _crl_der(crl_files[0], "pck_crl").hex(),
        "tcb_info_issuer_chain": signing_chain,
        "tcb_info": tcb_info,
        "tcb_info_signature": tcb_signature,
        "qe_identity_issuer_chain": signing_chain,
        "qe_identity": qe_identity,
        "qe_identity_signature": qe_signature,
    }
    return json.dumps(document, indent=2).encode()


def _read(file: Path, key: str) -> bytes:
    try:
        data = file.read_bytes()
    except OSError as exc:
        raise EvidenceFormatError(f"collateral.{key}", f"cannot read {file}: {exc}") from None
    require_size(f"collateral.{key}", data)
    return data


def _crl_der(file: Path, key: str) -> bytes:
    data = _read(file, key)
    try:
        if data.lstrip().startswith(b"-----BEGIN"):
            return x509.load_pem_x509_crl(data).public_bytes(Encoding.DER)
        x509.load_der_x509_crl(data)
    except ValueError as exc:
        raise EvidenceFormatError(f"collateral.{key}", f"{file} is not a CRL ({exc})") from None
    return data


def _signed_response(file: Path, key: str, body_keys: Sequence[str]) -> tuple[str, str]:
    """The exact text of the signed body and the hex signature from a PCS response."""
    text = _read(file, key).decode(errors="replace")
    members = _raw_members(text, f"collateral.{key}")
    body = next((members[name] for name in body_keys if name in members), None)
    signature = members.get("signature")
    if body is None or signature is None:
        raise EvidenceFormatError(
            f"collateral.{key}",
            f"{file} lacks {' or '.join(repr(name) for name in body_keys)} and 'signature'",
        )
    signature_value = json.loads(signature)
    if not isinstance(signature_value, str):
        raise EvidenceFormatError(f"collateral.{key}", f"{file}: signature is not a string")
    return body, signature_value


_WHITESPACE = re.compile(r"\s*")


def _raw_members(text: str, part: str) -> dict[str, str]:
    """Top-level members of a JSON object, each value as its exact source text."""
    decoder = json.JSONDecoder()
    members: dict[str, str] = {}

    def skip(index: int) -> int:
        match = _WHITESPACE.match(text, index)
        return match.end() if match else index

    try:
        index = skip(0)
        if text[index : index + 1] != "{":
            raise ValueError("expected a JSON object")
        index = skip(index + 1)
        while text[index : index + 1] != "}":
            name, index = decoder.raw_decode(text, index)
            index = skip(index)
            if not isinstance(name, str) or text[index : index + 1] != ":":
                raise ValueError(f"malformed member at {index}")
            start = skip(index + 1)
            _, end = decoder.raw_decode(text, start)
            members[name] = text[start:end]
            index = skip(end)
            if text[index : index + 1] == ",":
                index = skip(index + 1)
            elif text[index : index + 1] != "}":
                raise ValueError(f"expected ',' or '}}' at {index}")
    except (ValueError, RecursionError) as exc:
        raise EvidenceFormatError(part, f"not a JSON object ({exc})") from None
    return members

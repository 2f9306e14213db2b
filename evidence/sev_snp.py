"""AMD SEV-SNP: judge a guest's ATTESTATION_REPORT against its VCEK (or VLEK), the AMD chain
above it and the asset class's policy.

The report layout (AMD SEV-SNP ABI spec, ATTESTATION_REPORT, versions 2 to 5) is read by hand
with ``struct``: no maintained Python library parses it. ``cryptography`` does the ECDSA P-384
signature and :mod:`evidence.certs` the VCEK -> ASK -> ARK chain.

Decisions worth knowing:

- A report must be exactly 1184 bytes (or that many bytes as hex text, as virtee ships them);
  anything else is an :class:`EvidenceFormatError`. A report of an unsupported version
  (< 2 or > 5) or signature algorithm (!= 1, ECDSA P-384 with SHA-384) is readable, so it is a
  failed ``version`` / ``signature_algorithm`` check, and the rest is still judged: the signed
  region is the same in every version, so a forged version number cannot pass ``signature``.
- The product line (Milan, Genoa, Turin) decides how a TCB value is laid out. Reports v3+ carry
  the CPUID family/model; v2 reports do not, so the VCEK's productName extension says. The
  ``product`` check fails when the two disagree or when neither is known.

Over 500 lines on purpose: one wire format (the report, its TCB layouts per product line and
AMD's certificate chain), read in the order of its layout and checked in the order of its
chain of trust; split, the bounds each parser relies on would live apart from their checks.
"""

from __future__ import annotations

import binascii
import struct
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime
from enum import StrEnum
from typing import Any

from cryptography import x509
from cryptography.exceptions import InvalidSignature, UnsupportedAlgorithm
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.hazmat.primitives.asymmetric.utils import encode_dss_signature

from evidence.certs import (
    UNREADABLE_CERTIFICATE,
    check_chain,
    common_name,
    fingerprint,
    load_certificate,
    load_certificates,
)
from evidence.verdict import (
    Check,
    EvidenceFormatError,
    EvidenceKind,
    Verdict,
    check_nonce_binding,
    require_size,
)

REPORT_SIZE = 0x4A0
SIGNED_SIZE = 0x2A0  # the signature covers bytes 0x000..0x29F
SUPPORTED_VERSIONS = range(2, 6)
ECDSA_P384_SHA384 = 1
_SIGNATURE_FIELD = 72  # r and s are each a 72-byte little-endian field; P-384 uses 48 of them

# Little-endian ATTESTATION_REPORT, 0x000..0x29F (the signed part), field by field.
_REPORT = struct.Struct(
    "<"
    "I"  # 0x000 version
    "I"  # 0x004 guest_svn
    "Q"  # 0x008 policy
    "16s"  # 0x010 family_id
    "16s"  # 0x020 image_id
    "I"  # 0x030 vmpl
    "I"  # 0x034 signature_algo
    "8s"  # 0x038 current_tcb
    "Q"  # 0x040 platform_info
    "I"  # 0x048 flags: author_key_en (bit 0), mask_chip_key (bit 1), signing_key (bits 2-4)
    "4x"  # 0x04C reserved
    "64s"  # 0x050 report_data
    "48s"  # 0x090 measurement
    "32s"  # 0x0C0 host_data
    "48s"  # 0x0E0 id_key_digest
    "48s"  # 0x110 author_key_digest
    "32s"  # 0x140 report_id
    "32s"  # 0x160 report_id_ma
    "8s"  # 0x180 reported_tcb
    "3B"  # 0x188 cpuid family, model, stepping (v3+; reserved before)
    "21x"  # 0x18B reserved
    "64s"  # 0x1A0 chip_id
    "8s"  # 0x1E0 committed_tcb
    "3B"  # 0x1E8 current build, minor, major
    "x"  # 0x1EB reserved
    "3B"  # 0x1EC committed build, minor, major
    "x"  # 0x1EF reserved
    "8s"  # 0x1F0 launch_tcb
    "Q"  # 0x1F8 launch_mit_vector (v5)
    "Q"  # 0x200 current_mit_vector (v5)
    "152x"  # 0x208 reserved
)
assert _REPORT.size == SIGNED_SIZE

# Guest policy bits (ABI spec, GUEST_POLICY).
_POLICY_BITS = {
    "smt": 16,
    "migrate_ma": 18,
    "debug": 19,
    "single_socket": 20,
    "cxl_allow": 21,
    "mem_aes_256_xts": 22,
    "rapl_dis": 23,
    "ciphertext_hiding": 24,
    "page_swap_disable": 25,
}
_DEBUG_BIT = 1 << _POLICY_BITS["debug"]
# PLATFORM_INFO bits.
_PLATFORM_BITS = {
    "smt_enabled": 0,
    "tsme_enabled": 1,
    "ecc_enabled": 2,
    "rapl_disabled": 3,
    "ciphertext_hiding_enabled": 4,
    "alias_check_complete": 5,
    "tio_enabled": 7,
}

_SIGNING_KEYS = {0: "vcek", 1: "vlek", 7: "none"}
# The certificate's subject CN for each signing key.
_LEAF_NAMES = {"vcek": "SEV-VCEK", "vlek": "SEV-VLEK"}

# AMD's VCEK/VLEK extensions (AMD "Versioned Chip Endorsement Key" spec).
_OID_PRODUCT_NAME = "1.3.6.1.4.1.3704.1.2"
_OID_HWID = "1.3.6.1.4.1.3704.1.4"
_TCB_OIDS = {
    "bootloader": ("1.3.6.1.4.1.3704.1.3.1", "blSPL"),
    "tee": ("1.3.6.1.4.1.3704.1.3.2", "teeSPL"),
    "snp": ("1.3.6.1.4.1.3704.1.3.3", "snpSPL"),
    "microcode": ("1.3.6.1.4.1.3704.1.3.8", "ucodeSPL"),
    "fmc": ("1.3.6.1.4.1.3704.1.3.9", "fmcSPL"),
}


class SnpProduct(StrEnum):
    MILAN = "Milan"
    GENOA = "Genoa"
    TURIN = "Turin"


def product_from_cpuid(family: int, model: int) -> SnpProduct | None:
    """The product line for a CPUID family/model (as in reports v3+), or None if unknown."""
    if family == 0x19:
        if model <= 0x0F:
            return SnpProduct.MILAN
        if 0x10 <= model <= 0x1F or 0xA0 <= model <= 0xAF:  # Genoa; Bergamo/Siena are Genoa too
            return SnpProduct.GENOA
    if family == 0x1A and model <= 0x1F:
        return SnpProduct.TURIN
    return None


def product_from_name(name: str) -> SnpProduct | None:
    """The product line for a VCEK productName such as ``Milan-B0`` or ``Turin``."""
    stem = name.split("-", 1)[0].strip().lower()
    return next((product for product in SnpProduct if product.value.lower() == stem), None)


@dataclass(frozen=True)
class SnpTcb:
    """A TCB version's security patch levels. ``fmc`` exists only on Turin."""

    bootloader: int
    tee: int
    snp: int
    microcode: int
    fmc: int | None = None

    @classmethod
    def decode(cls, raw: bytes, product: SnpProduct | None) -> SnpTcb:
        """Read the 8-byte TCB_VERSION. Milan/Genoa: [0] bootloader [1] tee [6] snp
        [7] microcode; Turin: [0] fmc [1] bootloader [2] tee [3] snp [7] microcode. An unknown
        product reads as Milan/Genoa (the ``product`` check fails in that case)."""
        if len(raw) != 8:
            raise EvidenceFormatError("report", f"a TCB version is 8 bytes, got {len(raw)}")
        if product is SnpProduct.TURIN:
            return cls(bootloader=raw[1], tee=raw[2], snp=raw[3], microcode=raw[7], fmc=raw[0])
        return cls(bootloader=raw[0], tee=raw[1], snp=raw[6], microcode=raw[7])

    def components(self) -> dict[str, int]:
        values = {
            "bootloader": self.bootloader,
            "tee": self.tee,
            "snp": self.snp,
            "microcode": self.microcode,
        }
        if self.fmc is not None:
            values = {"fmc": self.fmc, **values}
        return values

    def describe(self) -> str:
        return ", ".join(f"{name} {value}" for name, value in self.components().items())


@dataclass(frozen=True)
class SnpPolicy:
    """The asset class's reference values. ``None`` means "not asked for": the check is skipped.

    ``max_vmpl``: the highest (least privileged) VMPL allowed to have requested the report;
    0 demands the report come from VMPL 0 (e.g. an SVSM), which a guest kernel running at a
    higher VMPL cannot forge. ``min_tcb.fmc`` is compared on Turin only."""

    measurements: frozenset[bytes] | None = None
    allow_debug: bool = False
    min_tcb: SnpTcb | None = None
    max_vmpl: int | None = None


@dataclass(frozen=True)
class SnpEvidence:
    report: bytes  # raw ATTESTATION_REPORT (1184 bytes), or its hex text
    vcek: bytes  # the signing certificate: VCEK or VLEK, PEM or DER
    chain: bytes  # the issuing chain, PEM: ASK then ARK (VCEK) or ASVK then ARK (VLEK)


@dataclass(frozen=True)
class FirmwareVersion:
    major: int
    minor: int
    build: int

    def as_dict(self) -> dict[str, int]:
        return {"major": self.major, "minor": self.minor, "build": self.build}


@dataclass(frozen=True)
class SnpReport:
    """The fields of an ATTESTATION_REPORT. TCB values stay raw (8 bytes): decoding them needs
    the product line. Fields a version does not have are None (cpuid before v3, mitigation
    vectors before v5)."""

    raw: bytes
    version: int
    guest_svn: int
    policy: int
    family_id: bytes
    image_id: bytes
    vmpl: int
    signature_algo: int
    current_tcb: bytes
    platform_info: int
    flags: int
    report_data: bytes
    measurement: bytes
    host_data: bytes
    id_key_digest: bytes
    author_key_digest: bytes
    report_id: bytes
    report_id_ma: bytes
    reported_tcb: bytes
    cpuid: tuple[int, int, int] | None  # family, model, stepping
    chip_id: bytes
    committed_tcb: bytes
    current_firmware: FirmwareVersion
    committed_firmware: FirmwareVersion
    launch_tcb: bytes
    launch_mit_vector: int | None
    current_mit_vector: int | None
    signature_r: int
    signature_s: int

    @property
    def signed_bytes(self) -> bytes:
        return self.raw[:SIGNED_SIZE]

    @property
    def signing_key(self) -> str:
        """``vcek``, ``vlek``, ``none`` or ``reserved(n)`` from flags bits 2-4."""
        code = (self.flags >> 2) & 0b111
        return _SIGNING_KEYS.get(code, f"reserved({code})")

    @property
    def mask_chip_key(self) -> bool:
        return bool(self.flags & 0b10)

    @property
    def debug_allowed(self) -> bool:
        return bool(self.policy & _DEBUG_BIT)

    @property
    def cpuid_product(self) -> SnpProduct | None:
        return None if self.cpuid is None else product_from_cpuid(self.cpuid[0], self.cpuid[1])

    def claims(self, product: SnpProduct | None) -> dict[str, Any]:
        """JSON-ready fields, TCBs decoded for ``product``."""
        claims: dict[str, Any] = {
            "version": self.version,
            "guest_svn": self.guest_svn,
            "policy": {
                "hex": f"{self.policy:#x}",
                "abi_major": (self.policy >> 8) & 0xFF,
                "abi_minor": self.policy & 0xFF,
                **{name: bool(self.policy >> bit & 1) for name, bit in _POLICY_BITS.items()},
            },
            "family_id": self.family_id.hex(),
            "image_id": self.image_id.hex(),
            "vmpl": self.vmpl,
            "signature_algorithm": self.signature_algo,
            "signing_key": self.signing_key,
            "author_key_en": bool(self.flags & 0b1),
            "mask_chip_key": self.mask_chip_key,
            "current_tcb": _tcb_claim(self.current_tcb, product),
            "reported_tcb": _tcb_claim(self.reported_tcb, product),
            "committed_tcb": _tcb_claim(self.committed_tcb, product),
            "launch_tcb": _tcb_claim(self.launch_tcb, product),
            "platform_info": {
                "hex": f"{self.platform_info:#x}",
                **{
                    name: bool(self.platform_info >> bit & 1)
                    for name, bit in _PLATFORM_BITS.items()
                },
            },
            "report_data": self.report_data.hex(),
            "measurement": self.measurement.hex(),
            "host_data": self.host_data.hex(),
            "id_key_digest": self.id_key_digest.hex(),
            "author_key_digest": self.author_key_digest.hex(),
            "report_id": self.report_id.hex(),
            "report_id_ma": self.report_id_ma.hex(),
            "chip_id": self.chip_id.hex(),
            "current_firmware": self.current_firmware.as_dict(),
            "committed_firmware": self.committed_firmware.as_dict(),
            "product": product.value if product else None,
        }
        if self.cpuid is not None:
            family, model, stepping = self.cpuid
            claims["cpuid"] = {"family": family, "model": model, "stepping": stepping}
        if self.launch_mit_vector is not None and self.current_mit_vector is not None:
            claims["launch_mit_vector"] = f"{self.launch_mit_vector:#x}"
            claims["current_mit_vector"] = f"{self.current_mit_vector:#x}"
        return claims


def _tcb_claim(raw: bytes, product: SnpProduct | None) -> dict[str, Any]:
    return {"raw": raw.hex(), **SnpTcb.decode(raw, product).components()}


def _report_bytes(data: bytes) -> bytes:
    """The binary report: ``data`` itself, or ``data`` decoded when it is the hex text form."""
    if len(data) == REPORT_SIZE:
        return data
    require_size("report", data, maximum=4 * REPORT_SIZE)
    text = b"".join(data.split())
    if text[:2].lower() == b"0x":
        text = text[2:]
    if len(text) == 2 * REPORT_SIZE:
        try:
            return binascii.unhexlify(text)
        except (binascii.Error, ValueError):
            raise EvidenceFormatError(
                "report", f"{len(text)} characters of text that are not hex"
            ) from None
    raise EvidenceFormatError(
        "report",
        f"{len(data)} bytes: an SEV-SNP attestation report is {REPORT_SIZE} bytes "
        f"(or {2 * REPORT_SIZE} hex digits)",
    )


def parse_report(data: bytes) -> SnpReport:
    """Read an ATTESTATION_REPORT (binary, or hex text). Raises EvidenceFormatError when it is
    not one; version and signature algorithm are returned as found, for the checks to judge."""
    raw = _report_bytes(data)
    fields = _REPORT.unpack_from(raw, 0)
    (
        version,
        guest_svn,
        policy,
        family_id,
        image_id,
        vmpl,
        signature_algo,
        current_tcb,
        platform_info,
        flags,
        report_data,
        measurement,
        host_data,
        id_key_digest,
        author_key_digest,
        report_id,
        report_id_ma,
        reported_tcb,
        cpuid_family,
        cpuid_model,
        cpuid_stepping,
        chip_id,
        committed_tcb,
        current_build,
        current_minor,
        current_major,
        committed_build,
        committed_minor,
        committed_major,
        launch_tcb,
        launch_mit_vector,
        current_mit_vector,
    ) = fields
    r_field = raw[SIGNED_SIZE : SIGNED_SIZE + _SIGNATURE_FIELD]
    s_field = raw[SIGNED_SIZE + _SIGNATURE_FIELD : SIGNED_SIZE + 2 * _SIGNATURE_FIELD]
    return SnpReport(
        raw=raw,
        version=version,
        guest_svn=guest_svn,
        policy=policy,
        family_id=family_id,
        image_id=image_id,
        vmpl=vmpl,
        signature_algo=signature_algo,
        current_tcb=current_tcb,
        platform_info=platform_info,
        flags=flags,
        report_data=report_data,
        measurement=measurement,
        host_data=host_data,
        id_key_digest=id_key_digest,
        author_key_digest=author_key_digest,
        report_id=report_id,
        report_id_ma=report_id_ma,
        reported_tcb=reported_tcb,
        cpuid=(cpuid_family, cpuid_model, cpuid_stepping) if version >= 3 else None,
        chip_id=chip_id,
        committed_tcb=committed_tcb,
        current_firmware=FirmwareVersion(current_major, current_minor, current_build),
        committed_firmware=FirmwareVersion(committed_major, committed_minor, committed_build),
        launch_tcb=launch_tcb,
        launch_mit_vector=launch_mit_vector if version >= 5 else None,
        current_mit_vector=current_mit_vector if version >= 5 else None,
        signature_r=int.from_bytes(r_field, "little"),
        signature_s=int.from_bytes(s_field, "little"),
    )


@dataclass(frozen=True)
class Endorsement:
    """What AMD's extensions on a VCEK/VLEK say: the product, the TCB it was issued for and
    (VCEK only) the chip. A missing or unreadable extension is None."""

    product_name: str | None
    tcb: dict[str, int | None]
    hwid: bytes | None

    @property
    def product(self) -> SnpProduct | None:
        return product_from_name(self.product_name) if self.product_name else None


def read_endorsement(certificate: x509.Certificate) -> Endorsement:
    """AMD's extensions of a VCEK or VLEK. Raises EvidenceFormatError when the certificate's
    extensions cannot be read at all."""
    try:
        extensions = {ext.oid.dotted_string: ext.value for ext in certificate.extensions}
    except UNREADABLE_CERTIFICATE as exc:
        raise EvidenceFormatError("vcek", f"unreadable certificate extensions ({exc})") from None

    def raw(oid: str) -> bytes | None:
        value = extensions.get(oid)
        return value.value if isinstance(value, x509.UnrecognizedExtension) else None

    product = raw(_OID_PRODUCT_NAME)
    return Endorsement(
        product_name=_der_string(product) if product is not None else None,
        tcb={name: _der_uint(raw(oid)) for name, (oid, _) in _TCB_OIDS.items()},
        hwid=raw(_OID_HWID),
    )


def _der_length(data: bytes) -> tuple[int, int] | None:
    """(content length, header size) of a DER TLV with a short or 1-2 byte long length."""
    if len(data) < 2:
        return None
    first = data[1]
    if first < 0x80:
        return first, 2
    count = first & 0x7F
    if count not in (1, 2) or len(data) < 2 + count:
        return None
    return int.from_bytes(data[2 : 2 + count], "big"), 2 + count


def _der_uint(data: bytes | None) -> int | None:
    """A non-negative DER INTEGER (AMD's SPL extensions), or None when it is not one."""
    if not data or data[0] != 0x02:
        return None
    header = _der_length(data)
    if header is None or header[0] == 0 or header[0] + header[1] != len(data):
        return None
    value = int.from_bytes(data[header[1] :], "big", signed=True)
    return value if value >= 0 else None


def _der_string(data: bytes) -> str | None:
    """An IA5String/UTF8String/PrintableString (AMD's productName), or None."""
    if not data or data[0] not in (0x16, 0x0C, 0x13):
        return None
    header = _der_length(data)
    if header is None or header[0] + header[1] != len(data):
        return None
    return data[header[1] :].decode("utf-8", errors="replace")


def _issuer_path(
    leaf: x509.Certificate, chain: Sequence[x509.Certificate]
) -> list[x509.Certificate]:
    """Leaf first, then each issuer. The chain is taken in the order given (ASK/ASVK, then ARK)
    unless its subjects and issuers say otherwise and every certificate fits in that order."""
    remaining = [cert for cert in chain if cert != leaf]
    path = [leaf]
    while remaining:
        issuer = next((cert for cert in remaining if cert.subject == path[-1].issuer), None)
        if issuer is None or issuer is path[-1]:
            break
        path.append(issuer)
        remaining.remove(issuer)
    return path if not remaining else [leaf, *(cert for cert in chain if cert != leaf)]


def _chain_checks(
    leaf: x509.Certificate,
    chain: Sequence[x509.Certificate],
    roots: Sequence[x509.Certificate],
    at: datetime,
) -> list[Check]:
    return check_chain("vcek_chain", _issuer_path(leaf, chain), roots, at)


def check_vcek_chain(
    vcek: bytes, chain: bytes, roots: Sequence[x509.Certificate], at: datetime
) -> list[Check]:
    """Judge a VCEK/VLEK (PEM or DER) and its chain (PEM: ASK/ASVK then ARK) against the pinned
    AMD roots at ``at``, without a report: ``vcek_chain.signature[i]``, ``vcek_chain.root`` and
    ``vcek_chain.validity[i]``. Unreadable certificates raise EvidenceFormatError."""
    return _chain_checks(_load_leaf(vcek), _load_chain(chain), roots, at)


def _load_leaf(data: bytes) -> x509.Certificate:
    return load_certificate("vcek", data)


def _load_chain(data: bytes) -> list[x509.Certificate]:
    # No chain at all is judged (vcek_chain.root fails), not refused as unreadable.
    return load_certificates("chain", data) if data.strip() else []


def verify_sev_snp_report(
    evidence: SnpEvidence,
    *,
    roots: Sequence[x509.Certificate],
    nonce: bytes | None,
    policy: SnpPolicy,
    at: datetime,
) -> Verdict:
    """Judge an SEV-SNP report. Checks, in order: ``version``, ``signature_algorithm``,
    ``signature``, ``signing_key``, ``vcek_chain.*``, ``product``, ``vcek_tcb``, ``chip_id``,
    ``nonce``, ``measurement``, ``debug``, ``vmpl``, ``tcb.minimum``."""
    report = parse_report(evidence.report)
    leaf = _load_leaf(evidence.vcek)
    chain = _load_chain(evidence.chain)
    endorsement = read_endorsement(leaf)
    product = report.cpuid_product or endorsement.product
    reported = SnpTcb.decode(report.reported_tcb, product)

    verdict = Verdict(EvidenceKind.SEV_SNP, claims=report.claims(product))
    verdict.claims["certificate"] = {
        "common_name": common_name(leaf),
        "sha256": fingerprint(leaf),
        "product_name": endorsement.product_name,
    }
    verdict.add(
        Check.judged(
            "version",
            report.version in SUPPORTED_VERSIONS,
            f"report version {report.version}",
            f"report version {report.version} is not supported (versions 2 to 5 are)",
        )
    )
    verdict.add(
        Check.judged(
            "signature_algorithm",
            report.signature_algo == ECDSA_P384_SHA384,
            "ECDSA P-384 with SHA-384",
            f"signature algorithm {report.signature_algo} is not 1 (ECDSA P-384 with SHA-384), "
            "the only one AMD defines",
        )
    )
    verdict.add(_check_signature(report, leaf))
    verdict.add(_check_signing_key(report, leaf))
    verdict.extend(_chain_checks(leaf, chain, roots, at))
    verdict.add(_check_product(report, endorsement))
    verdict.add(_check_vcek_tcb(reported, endorsement, report.signing_key))
    verdict.add(_check_chip_id(report, endorsement, product))
    verdict.add(check_nonce_binding("nonce", report.report_data, nonce))
    verdict.add(_check_measurement(report.measurement, policy.measurements))
    verdict.add(_check_debug(report, policy.allow_debug))
    verdict.add(_check_vmpl(report.vmpl, policy.max_vmpl))
    verdict.add(_check_minimum_tcb(reported, policy.min_tcb))
    return verdict


def _check_signature(report: SnpReport, leaf: x509.Certificate) -> Check:
    name = "signature"
    if report.signature_algo != ECDSA_P384_SHA384:
        return Check.failed(name, f"cannot verify signature algorithm {report.signature_algo}")
    try:
        key = leaf.public_key()
    except (ValueError, UnsupportedAlgorithm) as exc:
        return Check.failed(name, f"the {common_name(leaf)} public key is unreadable ({exc})")
    if not isinstance(key, ec.EllipticCurvePublicKey) or key.curve.name != "secp384r1":
        return Check.failed(
            name, f"the {common_name(leaf)} key is not an ECDSA P-384 key; AMD signs with one"
        )
    signature = encode_dss_signature(report.signature_r, report.signature_s)
    try:
        key.verify(signature, report.signed_bytes, ec.ECDSA(hashes.SHA384()))
    except InvalidSignature:
        return Check.failed(
            name,
            f"the report is not signed by this {common_name(leaf)}: the report was altered, or "
            "the certificate belongs to another chip or TCB",
        )
    return Check.passed(name, f"report signed by the {common_name(leaf)} key (ECDSA P-384)")


def _check_signing_key(report: SnpReport, leaf: x509.Certificate) -> Check:
    name = "signing_key"
    said = report.signing_key
    expected = _LEAF_NAMES.get(said)
    if expected is None:
        return Check.failed(
            name,
            f"the report's signing key is {said}: only VCEK- or VLEK-signed reports can be "
            "verified",
        )
    found = common_name(leaf)
    return Check.judged(
        name,
        found == expected,
        f"the report says {said.upper()} and the certificate is {found}",
        f"the report says it is signed by the {said.upper()} but the certificate is {found} "
        f"(expected {expected})",
    )


def _check_product(report: SnpReport, endorsement: Endorsement) -> Check:
    name = "product"
    certified = endorsement.product
    certified_label = (
        f"the certificate's productName {endorsement.product_name}"
        if endorsement.product_name
        else "the certificate has no productName"
    )
    if report.cpuid is None:
        if certified is None:
            return Check.failed(
                name,
                f"cannot tell the product line: a v{report.version} report carries no CPUID "
                f"and {certified_label}; its TCB layout is unknown",
            )
        return Check.passed(name, f"{certified} from {certified_label} (no CPUID in the report)")
    family, model, stepping = report.cpuid
    cpuid_label = f"CPUID family {family:#04x} model {model:#04x} stepping {stepping:#04x}"
    found = report.cpuid_product
    if found is None:
        return Check.failed(name, f"the report's {cpuid_label} is not a known SEV-SNP product line")
    if certified is not None and certified is not found:
        return Check.failed(
            name,
            f"the report's {cpuid_label} is {found} but {certified_label} says {certified}: "
            "the certificate is for another product line",
        )
    return Check.passed(name, f"{found} from the report's {cpuid_label}")


def _check_vcek_tcb(reported: SnpTcb, endorsement: Endorsement, signing_key: str) -> Check:
    name = "vcek_tcb"
    leaf = signing_key.upper() if signing_key in _LEAF_NAMES else "certificate"
    problems = []
    for component, value in reported.components().items():
        oid_name = _TCB_OIDS[component][1]
        certified = endorsement.tcb.get(component)
        if certified is None:
            problems.append(f"the {leaf} has no readable {oid_name} extension")
        elif certified != value:
            problems.append(f"{component} {value} but the {leaf} is for {oid_name} {certified}")
    if problems:
        return Check.failed(
            name,
            f"reported TCB does not match the {leaf}: {'; '.join(problems)}; fetch the {leaf} "
            "for the report's reported_tcb",
        )
    return Check.passed(name, f"reported TCB ({reported.describe()}) is the {leaf}'s")


def _check_chip_id(
    report: SnpReport, endorsement: Endorsement, product: SnpProduct | None
) -> Check:
    name = "chip_id"
    if report.signing_key == "vlek":
        return Check.skipped(name, "VLEK-signed: a VLEK is not tied to one chip")
    if report.mask_chip_key:
        return Check.skipped(
            name, "the guest masked chip_id (MASK_CHIP_KEY); the VCEK signature binds the chip"
        )
    hwid = endorsement.hwid
    if hwid is None:
        return Check.failed(name, "the VCEK has no hwID extension (1.3.6.1.4.1.3704.1.4)")
    # Turin's KDS names a chip by the first 8 bytes of its chip_id.
    compared = report.chip_id[:8] if product is SnpProduct.TURIN else report.chip_id
    return Check.judged(
        name,
        compared == hwid,
        f"chip_id {compared.hex()} is the VCEK's hwID",
        f"the report's chip_id {compared.hex()} is not the VCEK's hwID {hwid.hex()}: the VCEK "
        "belongs to another chip",
    )


def _check_measurement(measurement: bytes, allowed: frozenset[bytes] | None) -> Check:
    name = "measurement"
    if allowed is None:
        return Check.skipped(name, "no reference measurements given")
    listed = ", ".join(sorted(value.hex() for value in allowed)) or "none"
    return Check.judged(
        name,
        measurement in allowed,
        f"launch measurement {measurement.hex()} is an allowed one",
        f"launch measurement {measurement.hex()} is not one of the allowed ({listed}): the "
        "guest launched different firmware, kernel or initial state",
    )


def _check_debug(report: SnpReport, allow_debug: bool) -> Check:
    name = "debug"
    if not report.debug_allowed:
        return Check.passed(name, "guest policy forbids debugging (bit 19 clear)")
    return Check.judged(
        name,
        allow_debug,
        "guest policy allows debugging (bit 19 set), which this policy accepts",
        "guest policy allows debugging (bit 19 set): the hypervisor can read and change the "
        "guest's memory; relaunch without debug or allow it explicitly",
    )


def _check_vmpl(vmpl: int, max_vmpl: int | None) -> Check:
    name = "vmpl"
    if max_vmpl is None:
        return Check.skipped(name, f"no VMPL limit given (report requested at VMPL {vmpl})")
    return Check.judged(
        name,
        vmpl <= max_vmpl,
        f"report requested at VMPL {vmpl} (at most {max_vmpl} allowed)",
        f"report requested at VMPL {vmpl}, above the allowed {max_vmpl}: a less privileged "
        "part of the guest asked for it",
    )


def _check_minimum_tcb(reported: SnpTcb, minimum: SnpTcb | None) -> Check:
    name = "tcb.minimum"
    if minimum is None:
        return Check.skipped(name, "no minimum TCB given")
    required = minimum.components()
    below = [
        f"{component} {value} < {required[component]}"
        for component, value in reported.components().items()
        if component in required and value < required[component]
    ]
    return Check.judged(
        name,
        not below,
        f"reported TCB ({reported.describe()}) is at least the minimum ({minimum.describe()})",
        f"reported TCB is below the minimum: {', '.join(below)}; update the host's firmware "
        "or microcode",
    )

"""Azure CVM evidence built for real, for the formats no public sample covers whole: an HCL report
laid out as Azure's paravisor writes it, whose runtime claims carry a given attestation key as
the HCLAkPub JWK, around an SEV-SNP report signed by a VCEK of an AMD-shaped PKI made here
(RSA-PSS ARK -> ASK, P-384 VCEK with AMD's TCB, productName and hwID extensions).

With :class:`testkit.tpm.SoftwareTpm` making the quote, the whole chain SNP -> runtime claims ->
AK -> quote is real cryptography; only the roots are not AMD's (pass :attr:`BuiltPki.ark`).
"""

from __future__ import annotations

import base64
import functools
import hashlib
import json
import struct
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Any

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec, padding, rsa
from cryptography.hazmat.primitives.asymmetric.utils import decode_dss_signature
from cryptography.x509.oid import NameOID

SNP_REPORT_SIZE = 1184
NOT_BEFORE = datetime(2025, 1, 1, tzinfo=UTC)
# Inside every certificate's validity: verify built evidence at this time.
BUILT_AT = datetime(2025, 6, 1, tzinfo=UTC)
MILAN_TCB = {"bootloader": 3, "tee": 0, "snp": 8, "microcode": 115}
CHIP_ID = bytes(range(1, 65))
MEASUREMENT = b"\x5a" * 48


def _name(common: str) -> x509.Name:
    return x509.Name(
        [
            x509.NameAttribute(NameOID.COMMON_NAME, common),
            x509.NameAttribute(NameOID.ORGANIZATION_NAME, "Drydock test AMD"),
        ]
    )


def _der_integer(value: int) -> bytes:
    body = value.to_bytes(value.bit_length() // 8 + 1, "big")
    return bytes([0x02, len(body)]) + body


def _certificate(
    subject: str,
    issuer: str,
    public_key: rsa.RSAPublicKey | ec.EllipticCurvePublicKey,
    signer: rsa.RSAPrivateKey,
    extensions: list[x509.ExtensionType],
    ca: bool,
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
    # AMD signs its certificates with RSA-PSS, SHA-384.
    pss = padding.PSS(mgf=padding.MGF1(hashes.SHA384()), salt_length=48)
    return builder.sign(signer, hashes.SHA384(), rsa_padding=pss)


@dataclass(frozen=True)
class BuiltPki:
    """ARK (the root to pass as configured), ASK, and a Milan VCEK with its private key."""

    ark: x509.Certificate
    ask: x509.Certificate
    vcek: x509.Certificate
    vcek_key: ec.EllipticCurvePrivateKey

    @property
    def vcek_pem(self) -> bytes:
        return self.vcek.public_bytes(serialization.Encoding.PEM)

    @property
    def chain_pem(self) -> bytes:
        return b"".join(c.public_bytes(serialization.Encoding.PEM) for c in (self.ask, self.ark))

    @property
    def ark_pem(self) -> bytes:
        return self.ark.public_bytes(serialization.Encoding.PEM)


@functools.cache
def built_pki() -> BuiltPki:
    """One PKI per process (RSA-2048 rather than AMD's 4096 keeps it quick)."""
    ark_key = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    ask_key = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    vcek_key = ec.generate_private_key(ec.SECP384R1())
    ark = _certificate("ARK-Milan", "ARK-Milan", ark_key.public_key(), ark_key, [], ca=True)
    ask = _certificate("SEV-Milan", "ARK-Milan", ask_key.public_key(), ark_key, [], ca=True)
    oids = {"bootloader": 1, "tee": 2, "snp": 3, "microcode": 8}
    extensions: list[x509.ExtensionType] = [
        x509.UnrecognizedExtension(
            x509.ObjectIdentifier(f"1.3.6.1.4.1.3704.1.3.{oids[name]}"), _der_integer(value)
        )
        for name, value in MILAN_TCB.items()
    ]
    extensions += [
        x509.UnrecognizedExtension(
            x509.ObjectIdentifier("1.3.6.1.4.1.3704.1.2"), b"\x16\x08Milan-B0"
        ),
        x509.UnrecognizedExtension(x509.ObjectIdentifier("1.3.6.1.4.1.3704.1.4"), CHIP_ID),
    ]
    vcek = _certificate(
        "SEV-VCEK", "SEV-Milan", vcek_key.public_key(), ask_key, extensions, ca=False
    )
    return BuiltPki(ark, ask, vcek, vcek_key)


def snp_report(
    key: ec.EllipticCurvePrivateKey, report_data: bytes, *, measurement: bytes = MEASUREMENT
) -> bytes:
    """A v2 Milan ATTESTATION_REPORT (AMD SEV-SNP ABI) carrying ``report_data``, signed."""
    report = bytearray(SNP_REPORT_SIZE)
    struct.pack_into("<IIQ", report, 0x00, 2, 0, 0x30000)  # version, guest_svn, policy
    struct.pack_into("<II", report, 0x30, 0, 1)  # vmpl, ECDSA P-384 with SHA-384
    tcb = bytes([MILAN_TCB["bootloader"], MILAN_TCB["tee"], 0, 0, 0, 0, MILAN_TCB["snp"]])
    tcb += bytes([MILAN_TCB["microcode"]])
    for offset in (0x38, 0x180, 0x1E0, 0x1F0):  # current, reported, committed, launch TCB
        report[offset : offset + 8] = tcb
    struct.pack_into("<QI", report, 0x40, 0x1, 0)  # platform_info; flags: signed by the VCEK
    report[0x50 : 0x50 + 64] = report_data.ljust(64, b"\0")
    report[0x90 : 0x90 + 48] = measurement
    report[0x1A0 : 0x1A0 + 64] = CHIP_ID
    signature = key.sign(bytes(report[:0x2A0]), ec.ECDSA(hashes.SHA384()))
    r, s = decode_dss_signature(signature)
    report[0x2A0 : 0x2A0 + 72] = r.to_bytes(72, "little")
    report[0x2A0 + 72 : 0x2A0 + 144] = s.to_bytes(72, "little")
    return bytes(report)


def jwk(public_key: rsa.RSAPublicKey | ec.EllipticCurvePublicKey, kid: str) -> dict[str, Any]:
    """A public key as an RFC 7517 JWK with ``kid``."""

    def b64(value: int, size: int | None = None) -> str:
        raw = value.to_bytes(size or (value.bit_length() + 7) // 8, "big")
        return base64.urlsafe_b64encode(raw).rstrip(b"=").decode()

    if isinstance(public_key, rsa.RSAPublicKey):
        numbers = public_key.public_numbers()
        return {"kid": kid, "kty": "RSA", "e": b64(numbers.e), "n": b64(numbers.n)}
    point = public_key.public_numbers()
    size = (public_key.curve.key_size + 7) // 8
    crv = {"secp256r1": "P-256", "secp384r1": "P-384", "secp521r1": "P-521"}[public_key.curve.name]
    return {"kid": kid, "kty": "EC", "crv": crv, "x": b64(point.x, size), "y": b64(point.y, size)}


def runtime_claims(ak_pem: bytes, *, user_data: bytes = bytes(64)) -> bytes:
    """Runtime claims as Azure's paravisor writes them, the AK (PEM) as the HCLAkPub JWK."""
    key = serialization.load_pem_public_key(ak_pem)
    assert isinstance(key, rsa.RSAPublicKey | ec.EllipticCurvePublicKey)
    claims = {
        "keys": [{**jwk(key, "HCLAkPub"), "key_ops": ["sign"]}],
        "vm-configuration": {
            "console-enabled": True,
            "secure-boot": True,
            "tpm-enabled": True,
            "vmUniqueId": "6D1E5A51-0000-4000-8000-D2D0C0C0C0C0",
        },
        "user-data": user_data.hex().upper(),
    }
    return json.dumps(claims, separators=(",", ":")).encode()


def hcl_report(hardware_report: bytes, claims: bytes, *, padded_to: int = 0) -> bytes:
    """An HCL report: header, the hardware report in its 1184-byte slot, runtime data header
    (SNP report type, SHA-256) and ``claims``; zero-padded to ``padded_to`` like the NV index."""
    size = 32 + SNP_REPORT_SIZE + 20 + len(claims)
    header = struct.pack("<4sIIII12x", b"HCLA", 1, size, 2, 0)
    runtime = struct.pack("<IIIII", 20 + len(claims), 1, 2, 1, len(claims))
    report = header + hardware_report.ljust(SNP_REPORT_SIZE, b"\0") + runtime + claims
    return report.ljust(padded_to, b"\0")


def azure_cvm_report(ak_pem: bytes, *, claims: bytes | None = None) -> bytes:
    """A complete, validly signed HCL report binding ``ak_pem`` (or the given ``claims``)."""
    body = claims if claims is not None else runtime_claims(ak_pem)
    report = snp_report(built_pki().vcek_key, hashlib.sha256(body).digest())
    return hcl_report(report, body, padded_to=2600)

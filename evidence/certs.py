"""X.509 for the verifiers: read certificates from PEM or DER, and judge a chain to a pinned root
at a given time, one check per link, so a verdict says exactly which link broke.

``cryptography`` does the signature work (``verify_directly_issued_by`` covers the RSA-PSS of
AMD's chain and the ECDSA of Intel's); the chain walk is here because neither vendor chain fits
a Web PKI verifier's profile (no SAN, custom key usages, RSA-PSS roots).
"""

from __future__ import annotations

import re
import warnings
from collections.abc import Sequence
from datetime import UTC, datetime

from cryptography import x509
from cryptography.exceptions import InvalidSignature, UnsupportedAlgorithm
from cryptography.hazmat.primitives import hashes
from cryptography.utils import CryptographyDeprecationWarning
from cryptography.x509.oid import NameOID

from evidence.verdict import Check, EvidenceFormatError, require_size

_PEM_BLOCK = re.compile(rb"-----BEGIN CERTIFICATE-----\s.+?-----END CERTIFICATE-----", re.DOTALL)
MAX_CERTIFICATE_FILE_BYTES = 256 * 1024


def load_certificates(part: str, data: bytes) -> list[x509.Certificate]:
    """Every certificate in ``data``: one or more PEM blocks (other text around them ignored),
    or a single DER certificate. Raises EvidenceFormatError naming ``part`` otherwise."""
    require_size(part, data, maximum=MAX_CERTIFICATE_FILE_BYTES)
    blocks = _PEM_BLOCK.findall(data)
    try:
        # AMD's KDS issues VCEKs with a serial number RFC 5280 disallows; cryptography still
        # reads them and warns, which says nothing an operator can act on.
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", CryptographyDeprecationWarning)
            certificates = _load(part, data, blocks)
            for certificate in certificates:
                _read_everything(certificate)
            return certificates
    except EvidenceFormatError:
        raise
    except UNREADABLE_CERTIFICATE as exc:
        raise EvidenceFormatError(part, f"not a readable X.509 certificate ({exc})") from None


# What cryptography raises for a certificate it cannot read; several are not ValueErrors.
UNREADABLE_CERTIFICATE = (
    ValueError,
    TypeError,
    UnsupportedAlgorithm,
    x509.InvalidVersion,
    x509.DuplicateExtension,
    x509.UnsupportedGeneralNameType,
)


def _read_everything(certificate: x509.Certificate) -> None:
    # cryptography parses names, extensions and dates lazily: a damaged one would otherwise
    # surface as a ValueError deep inside a chain check instead of as unreadable input here.
    certificate.subject.rfc4514_string()
    certificate.issuer.rfc4514_string()
    _ = certificate.extensions, certificate.not_valid_before_utc, certificate.not_valid_after_utc
    certificate.public_key()


def _load(part: str, data: bytes, blocks: list[bytes]) -> list[x509.Certificate]:
    if blocks:
        return [x509.load_pem_x509_certificate(block) for block in blocks]
    if b"-----BEGIN" in data:
        raise EvidenceFormatError(part, "PEM text holds no CERTIFICATE block")
    return [x509.load_der_x509_certificate(data)]


def load_certificate(part: str, data: bytes) -> x509.Certificate:
    certificates = load_certificates(part, data)
    if len(certificates) != 1:
        raise EvidenceFormatError(part, f"expected one certificate, found {len(certificates)}")
    return certificates[0]


def common_name(certificate: x509.Certificate) -> str:
    names = certificate.subject.get_attributes_for_oid(NameOID.COMMON_NAME)
    if names:
        value = names[0].value
        return value if isinstance(value, str) else value.decode(errors="replace")
    return certificate.subject.rfc4514_string() or "(no subject)"


def fingerprint(certificate: x509.Certificate) -> str:
    return certificate.fingerprint(hashes.SHA256()).hex()


def is_self_signed(certificate: x509.Certificate) -> bool:
    if certificate.issuer != certificate.subject:
        return False
    return _signed_by(certificate, certificate)


def _signed_by(certificate: x509.Certificate, issuer: x509.Certificate) -> bool:
    try:
        certificate.verify_directly_issued_by(issuer)
    except (InvalidSignature, ValueError, TypeError, UnsupportedAlgorithm):
        return False
    return True


def check_validity(name: str, certificate: x509.Certificate, at: datetime) -> Check:
    """Whether ``certificate`` is inside its validity window at ``at`` (timezone-aware)."""
    start, end = certificate.not_valid_before_utc, certificate.not_valid_after_utc
    moment = at.astimezone(UTC)
    label = common_name(certificate)
    if moment < start:
        return Check.failed(
            name, f"{label} is not valid until {_iso(start)} (checked at {_iso(moment)})"
        )
    if moment > end:
        return Check.failed(
            name,
            f"{label} expired at {_iso(end)} (checked at {_iso(moment)}); pin the verification "
            "time to when the evidence was made, or fetch a current certificate",
        )
    return Check.passed(name, f"{label} valid {start:%Y-%m-%d} .. {end:%Y-%m-%d}")


def _iso(moment: datetime) -> str:
    return moment.astimezone(UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


def check_chain(
    name: str,
    path: Sequence[x509.Certificate],
    roots: Sequence[x509.Certificate],
    at: datetime,
) -> list[Check]:
    """Judge ``path`` (leaf first, then each issuer; it may end with the root itself) against
    the pinned ``roots`` at time ``at``.

    Checks, all prefixed with ``name``: each link's signature (``<name>.signature[i]``), that
    the top of the path is or is issued by a pinned root (``<name>.root``), and every
    certificate's validity window (``<name>.validity[i]``). A root sent along with the evidence
    counts only when it is byte-for-byte one of ``roots``: a self-signed certificate proves
    nothing on its own.
    """
    checks: list[Check] = []
    if not path:
        return [Check.failed(f"{name}.root", "no certificates were supplied")]
    pinned = {fingerprint(root): root for root in roots}
    chain = list(path)
    for index in range(len(chain) - 1):
        subject, issuer = chain[index], chain[index + 1]
        checks.append(
            Check.judged(
                f"{name}.signature[{index}]",
                _signed_by(subject, issuer),
                f"{common_name(subject)} is signed by {common_name(issuer)}",
                f"{common_name(subject)} is not signed by {common_name(issuer)}: "
                "the certificate was altered or belongs to another chain",
            )
        )
    top = chain[-1]
    anchor: x509.Certificate | None = None
    if fingerprint(top) in pinned:
        anchor = top
        checks.append(
            Check.judged(
                f"{name}.root",
                is_self_signed(top),
                f"{common_name(top)} is a pinned root and its self-signature holds",
                f"{common_name(top)} is pinned but its self-signature does not verify",
            )
        )
    else:
        issuers = [root for root in roots if _signed_by(top, root)]
        if issuers:
            anchor = issuers[0]
            checks.append(
                Check.passed(
                    f"{name}.root",
                    f"{common_name(top)} is signed by the pinned root {common_name(anchor)}",
                )
            )
        elif not roots:
            checks.append(
                Check.failed(
                    f"{name}.root",
                    "no trusted root is configured (the built-in vendor roots are turned off): "
                    "pass --root or set DRYDOCK_ATTESTATION_ROOTS_DIR",
                )
            )
        else:
            pinned_names = ", ".join(sorted({common_name(root) for root in roots}))
            checks.append(
                Check.failed(
                    f"{name}.root",
                    f"{common_name(top)} does not chain to a pinned root ({pinned_names})",
                )
            )
    everything = chain if anchor is None or anchor is top else [*chain, anchor]
    for index, certificate in enumerate(everything):
        checks.append(check_validity(f"{name}.validity[{index}]", certificate, at))
    return checks

"""The vendor roots built into Drydock: AMD's ARKs (Milan, Genoa, Turin) and Intel's SGX Root CA.

SEV-SNP and TDX evidence chains to one of these, so a real vendor sample verifies with no root
configured. Each is pinned by the SHA-256 of its DER as the vendor publishes it
(``roots/PROVENANCE.md``): a shipped file that does not match is refused when loaded, never
trusted. Roots an operator configures (``DRYDOCK_ATTESTATION_ROOTS_DIR``, ``--root``) add to
these; ``DRYDOCK_ATTESTATION_DEFAULT_ROOTS=false`` or ``--no-default-roots`` turns them off. A
root that arrives inside the evidence's own chain is never trusted on its own say: only these
and the configured ones anchor a chain (``evidence.certs``).
"""

from __future__ import annotations

from dataclasses import dataclass
from functools import lru_cache
from pathlib import Path

from cryptography import x509
from cryptography.hazmat.primitives import hashes

from evidence.certs import is_self_signed
from kernel.errors import DrydockError

ROOTS_DIR = Path(__file__).resolve().parent / "roots"


@dataclass(frozen=True)
class VendorRoot:
    file: str
    common_name: str
    # SHA-256 of the certificate's DER, as published by the vendor (lower-case hex).
    sha256: str
    published_at: str


VENDOR_ROOTS: tuple[VendorRoot, ...] = (
    VendorRoot(
        "amd_ark_milan.pem",
        "ARK-Milan",
        "69d063b45344d26a2e94e1f4210de49ef555308287d4c174445c95639a540bcd",
        "https://kdsintf.amd.com/vcek/v1/Milan/cert_chain",
    ),
    VendorRoot(
        "amd_ark_genoa.pem",
        "ARK-Genoa",
        "4c6598d19c18719c5dfd4a7d335f674e5bfe1d8f800cea2cf270c10d103db2f1",
        "https://kdsintf.amd.com/vcek/v1/Genoa/cert_chain",
    ),
    VendorRoot(
        "amd_ark_turin.pem",
        "ARK-Turin",
        "1f084161a44bb6d93778a904877d4819cafa5d05ef4193b2ded9dd9c73dd3f6a",
        "https://kdsintf.amd.com/vcek/v1/Turin/cert_chain",
    ),
    VendorRoot(
        "intel_sgx_root_ca.pem",
        "Intel SGX Root CA",
        "44a0196b2b99f889b8e149e95b807a350e7424964399e885a7cbb8ccfab674d3",
        "https://certificates.trustedservices.intel.com/Intel_SGX_Provisioning_Certification_RootCA.cer",
    ),
)


class VendorRootIntegrityError(DrydockError):
    """A built-in root file is not the certificate its vendor published."""


def fingerprint(certificate: x509.Certificate) -> str:
    return certificate.fingerprint(hashes.SHA256()).hex()


def load_vendor_roots(directory: Path = ROOTS_DIR) -> tuple[x509.Certificate, ...]:
    """Every built-in root from ``directory``, each checked against its published fingerprint;
    VendorRootIntegrityError names the first that is missing, not self-signed or altered."""
    loaded = []
    for root in VENDOR_ROOTS:
        path = directory / root.file
        try:
            certificate = x509.load_pem_x509_certificate(path.read_bytes())
        except (OSError, ValueError) as exc:
            raise VendorRootIntegrityError(
                f"built-in root {root.file} cannot be read: {exc}"
            ) from None
        found = fingerprint(certificate)
        if found != root.sha256:
            raise VendorRootIntegrityError(
                f"built-in root {root.file} has SHA-256 {found}, not {root.sha256} as "
                f"published at {root.published_at}: refusing to trust it"
            )
        if not is_self_signed(certificate):
            raise VendorRootIntegrityError(f"built-in root {root.file} is not self-signed")
        loaded.append(certificate)
    return tuple(loaded)


@lru_cache(maxsize=1)
def vendor_roots() -> tuple[x509.Certificate, ...]:
    """The built-in roots, loaded and checked once per process."""
    return load_vendor_roots()


def with_vendor_roots(
    configured: list[x509.Certificate], *, use_defaults: bool
) -> list[x509.Certificate]:
    """The configured roots, then (unless turned off) the built-in ones not already among them."""
    if not use_defaults:
        return list(configured)
    seen = {fingerprint(root) for root in configured}
    return [*configured, *(root for root in vendor_roots() if fingerprint(root) not in seen)]

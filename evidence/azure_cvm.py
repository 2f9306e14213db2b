"""Azure confidential VMs (SEV-SNP): the HCL report the paravisor writes to vTPM NV index
0x01400001, its SNP report, the runtime claims whose hash the SNP report carries, the vTPM
attestation key (AK) in those claims, and a vTPM quote signed by that AK, judged as one piece of
evidence.

The chain of trust: AMD's ARK -> ASK -> VCEK signs the SNP report (:mod:`evidence.sev_snp`); the
report's ``report_data`` is the hash of the runtime claims; the claims hold the AK as a JWK
(kid ``HCLAkPub``); the AK signs the quote (:mod:`evidence.tpm`), which carries the verifier's
nonce and the PCRs. Checks, in order: ``hcl_report_format``, ``snp.*`` (every SEV-SNP check but
its ``nonce``: report data binds the runtime claims here), ``runtime_data_binding``,
``attestation_key``, then ``quote.*`` (every TPM check) or, without a quote, ``quote``.

HCL report layout (little-endian; Microsoft's "attestation report format" for CVM guest
attestation, as parsed by kinvolk/azure-cvm-tooling's az-cvm-vtpm): a 32-byte header ("HCLA",
version, report size, request type, status, 12 reserved bytes), the hardware report in a
1184-byte slot, a 20-byte runtime data header (data size, version, report type, hash type, claim
size) and the runtime claims JSON. The NV index is larger than the report: bytes past the
header's report size are padding and are ignored.
"""

from __future__ import annotations

import hashlib
import struct
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime
from typing import Any

import orjson
from cryptography import x509
from cryptography.hazmat.primitives import serialization

from evidence import sev_snp, tpm
from evidence.certs import load_certificates
from evidence.verdict import (
    Check,
    EvidenceFormatError,
    EvidenceKind,
    Verdict,
    require_size,
)

HCL_SIGNATURE = b"HCLA"
_HEADER = struct.Struct("<4sIIII12x")  # signature, version, report_size, request_type, status
_RUNTIME_HEADER = struct.Struct("<IIIII")  # data_size, version, report_type, hash_type, claims
# The hardware report slot holds the larger of the SNP report (1184) and the TDX TD report (1024).
HARDWARE_SLOT = sev_snp.REPORT_SIZE
RUNTIME_OFFSET = _HEADER.size + HARDWARE_SLOT
CLAIMS_OFFSET = RUNTIME_OFFSET + _RUNTIME_HEADER.size
_REPORT_TYPES = {2: "snp", 4: "tdx"}
SNP_REPORT_TYPE = 2
# IGVM hash types: which hash of the runtime claims the hardware report's report data holds.
_HASH_TYPES = {1: "sha256", 2: "sha384", 3: "sha512"}
AK_KEY_ID = "HCLAkPub"
_QUOTE_PARTS = ("quote", "signature", "pcrs")


@dataclass(frozen=True)
class HclReport:
    """An HCL report's fields; ``claims`` is the runtime claims JSON as signed (its bytes),
    ``runtime_claims`` the same parsed."""

    version: int
    report_size: int
    request_type: int
    status: int
    hardware_report: bytes
    runtime_version: int
    report_type: int
    hash_type: int
    claims: bytes
    runtime_claims: dict[str, Any]

    @property
    def hash_name(self) -> str | None:
        return _HASH_TYPES.get(self.hash_type)


def parse_hcl_report(data: bytes) -> HclReport:
    """Read an HCL report. EvidenceFormatError("hcl_report", ...) when it is not one: truncated,
    another signature, sizes that do not add up, a hardware report other than SEV-SNP, runtime
    claims that are not a JSON object."""
    part = "hcl_report"
    require_size(part, data, minimum=_HEADER.size)
    signature, version, report_size, request_type, status = _HEADER.unpack_from(data, 0)
    if signature != HCL_SIGNATURE:
        raise EvidenceFormatError(
            part,
            f"starts with {signature!r}, not the HCLA signature: not an Azure HCL report "
            "(read it from vTPM NV index 0x01400001)",
        )
    if len(data) < CLAIMS_OFFSET:
        raise EvidenceFormatError(
            part,
            f"truncated: {len(data)} bytes; the header, the {HARDWARE_SLOT}-byte hardware report "
            f"and the runtime data header take {CLAIMS_OFFSET}",
        )
    data_size, runtime_version, report_type, hash_type, claims_size = _RUNTIME_HEADER.unpack_from(
        data, RUNTIME_OFFSET
    )
    end = CLAIMS_OFFSET + claims_size
    if data_size != _RUNTIME_HEADER.size + claims_size:
        raise EvidenceFormatError(
            part,
            f"the runtime data header says {data_size} bytes of runtime data but its "
            f"{claims_size}-byte claims and the header take {_RUNTIME_HEADER.size + claims_size}",
        )
    if report_size < end:
        raise EvidenceFormatError(
            part,
            f"the header's report size {report_size} is smaller than its parts ({end} bytes)",
        )
    if len(data) < report_size:
        raise EvidenceFormatError(
            part, f"truncated: {len(data)} bytes, the header says the report takes {report_size}"
        )
    if report_type != SNP_REPORT_TYPE:
        name = _REPORT_TYPES.get(report_type, "unknown")
        raise EvidenceFormatError(
            part,
            f"hardware report type {report_type} ({name}): only SEV-SNP (2) CVMs are verified",
        )
    claims = data[CLAIMS_OFFSET:end]
    try:
        runtime_claims = orjson.loads(claims)
    except orjson.JSONDecodeError as exc:
        raise EvidenceFormatError(part, f"the runtime claims are not JSON ({exc})") from None
    if not isinstance(runtime_claims, dict):
        raise EvidenceFormatError(part, "the runtime claims are not a JSON object")
    return HclReport(
        version=version,
        report_size=report_size,
        request_type=request_type,
        status=status,
        hardware_report=data[_HEADER.size : RUNTIME_OFFSET],
        runtime_version=runtime_version,
        report_type=report_type,
        hash_type=hash_type,
        claims=claims,
        runtime_claims=runtime_claims,
    )


@dataclass(frozen=True)
class AzureCvmEvidence:
    """``hcl_report``: the NV index's content; ``vcek`` and ``chain`` as for SEV-SNP (Azure's
    THIM serves the same VCEK and chain as AMD's KDS); ``quote``, ``signature``, ``pcrs`` as for
    a TPM quote (see :class:`evidence.tpm.TpmEvidence`), all three or none."""

    hcl_report: bytes
    vcek: bytes
    chain: bytes
    quote: bytes | None = None
    signature: bytes | None = None
    pcrs: bytes | None = None


def split_certificates(data: bytes) -> tuple[bytes, bytes]:
    """A VCEK followed by its chain in one PEM file (as Azure THIM's vcekCert and
    certificateChain concatenated): the VCEK (PEM) and the rest (PEM)."""
    certificates = load_certificates("vcek", data)
    pem = [cert.public_bytes(serialization.Encoding.PEM) for cert in certificates]
    return pem[0], b"".join(pem[1:])


def verify_azure_cvm(
    evidence: AzureCvmEvidence,
    *,
    roots: Sequence[x509.Certificate],
    nonce: bytes | None,
    snp_policy: sev_snp.SnpPolicy,
    tpm_reference: tpm.TpmReference,
    last_counters: tpm.TpmCounters | None,
    at: datetime,
    registered_ak: bytes | None = None,
) -> Verdict:
    """Judge an Azure CVM's evidence. ``registered_ak``: the AK the registry holds for the
    asset, if any; then HCLAkPub must be that key."""
    report = parse_hcl_report(evidence.hcl_report)
    parts = [evidence.quote, evidence.signature, evidence.pcrs]
    if any(value is not None for value in parts) and any(value is None for value in parts):
        missing = [name for name, value in zip(_QUOTE_PARTS, parts, strict=True) if value is None]
        raise EvidenceFormatError(
            missing[0],
            f"a vTPM quote needs its quote, signature and pcrs; {', '.join(missing)} missing",
        )
    snp = sev_snp.verify_sev_snp_report(
        sev_snp.SnpEvidence(report.hardware_report, evidence.vcek, evidence.chain),
        roots=roots,
        nonce=None,
        policy=snp_policy,
        at=at,
    )
    report_data = bytes.fromhex(snp.claims["report_data"])
    verdict = Verdict(EvidenceKind.AZURE_CVM, claims=_claims(report, snp.claims))
    verdict.add(
        Check.passed(
            "hcl_report_format",
            f"HCL report v{report.version} ({report.report_size} bytes): an SEV-SNP report and "
            f"{len(report.claims)} bytes of runtime claims",
        )
    )
    # The SNP report's report data is the runtime claims' hash, never the nonce: the nonce is
    # the quote's (quote.nonce), so SEV-SNP's own nonce check does not apply.
    verdict.extend(prefixed(check, "snp.") for check in snp.checks if check.name != "nonce")
    verdict.add(_check_binding(report, report_data))
    key_check, ak = _attestation_key(report, registered_ak)
    verdict.add(key_check)
    if evidence.quote is None or evidence.signature is None or evidence.pcrs is None:
        verdict.add(_no_quote(nonce))
    elif ak is None:
        verdict.add(Check.failed("quote", "no usable attestation key to check the quote with"))
    else:
        quote = tpm.verify_tpm_quote(
            tpm.TpmEvidence(evidence.quote, evidence.signature, evidence.pcrs, ak),
            nonce=nonce,
            reference=tpm_reference,
            last_counters=last_counters,
            at=at,
        )
        verdict.extend(prefixed(check, "quote.") for check in quote.checks)
        verdict.claims["quote"] = quote.claims
        # At the top level, where the registry reads a quote's clock to refuse a replay later.
        verdict.claims["clock_info"] = quote.claims["clock_info"]
    return verdict


def prefixed(check: Check, prefix: str) -> Check:
    """A reused verifier's check, named as part of this evidence (``snp.signature``)."""
    return Check(prefix + check.name, check.outcome, check.reason)


def _claims(report: HclReport, snp_claims: dict[str, Any]) -> dict[str, Any]:
    runtime = report.runtime_claims
    keys = runtime.get("keys")
    return {
        "hcl": {
            "version": report.version,
            "report_size": report.report_size,
            "request_type": report.request_type,
            "status": report.status,
            "report_type": _REPORT_TYPES[report.report_type],
            "hash_type": report.hash_name or str(report.hash_type),
        },
        "runtime_claims": {
            "key_ids": [key.get("kid") for key in keys if isinstance(key, dict)]
            if isinstance(keys, list)
            else [],
            "vm_configuration": runtime.get("vm-configuration"),
            "user_data": runtime.get("user-data"),
        },
        "snp": snp_claims,
    }


def _check_binding(report: HclReport, report_data: bytes) -> Check:
    name = "runtime_data_binding"
    hash_name = report.hash_name
    if hash_name is None:
        return Check.failed(
            name,
            f"runtime data hash type {report.hash_type} is not SHA-256 (1), SHA-384 (2) or "
            "SHA-512 (3): the claims' binding to the SNP report cannot be checked",
        )
    digest = hashlib.new(hash_name, report.claims).digest()
    # The hash fills the front of report_data; the rest must be zero, or the guest could put
    # anything there beside the claims.
    expected = digest + bytes(len(report_data) - len(digest))
    return Check.judged(
        name,
        report_data == expected,
        f"the SNP report's report data is the {hash_name} of the runtime claims",
        f"the SNP report's report data {report_data.hex()} is not the {hash_name} of the "
        f"runtime claims ({digest.hex()}, zero-padded): the claims (and the AK in them) were "
        "altered or belong to another report",
    )


def _attestation_key(report: HclReport, registered: bytes | None) -> tuple[Check, bytes | None]:
    """The attestation_key check and the AK (JWK JSON) when it is usable."""
    name = "attestation_key"
    keys = report.runtime_claims.get("keys")
    listed = keys if isinstance(keys, list) else []
    found = [key for key in listed if isinstance(key, dict) and key.get("kid") == AK_KEY_ID]
    if len(found) != 1:
        return Check.failed(
            name,
            f"the runtime claims hold {len(found)} keys with kid {AK_KEY_ID}, one expected: no "
            "vTPM attestation key to check the quote with",
        ), None
    jwk = orjson.dumps(found[0])
    try:
        key = tpm.load_attestation_key(jwk)
    except EvidenceFormatError as exc:
        return Check.failed(name, f"{AK_KEY_ID} is not a usable key: {exc.problem}"), None
    described = tpm.describe_key(key)
    if registered is not None:
        try:
            same = tpm.same_key(key, tpm.load_attestation_key(registered))
        except EvidenceFormatError as exc:
            return Check.failed(name, f"the registered AK is unreadable: {exc.problem}"), None
        if not same:
            return Check.failed(
                name,
                f"{AK_KEY_ID} ({described}) is not the attestation key registered for this "
                "asset: the report comes from another VM, or its vTPM was replaced",
            ), None
        return Check.passed(name, f"{AK_KEY_ID} ({described}) is the registered AK"), jwk
    return Check.passed(
        name, f"{AK_KEY_ID} ({described}) from the runtime claims the SNP report binds"
    ), jwk


def _no_quote(nonce: bytes | None) -> Check:
    if nonce is None:
        return Check.skipped("quote", "no vTPM quote given: PCRs and freshness were not checked")
    return Check.failed(
        "quote",
        f"a nonce ({nonce.hex()}) was asked for but no vTPM quote carries it: the HCL report "
        "alone is made at boot and can be replayed; send a quote by HCLAkPub over the nonce",
    )

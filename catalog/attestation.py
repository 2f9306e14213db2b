"""Payloads of the attestation queue's tasks.

Evidence travels as base64 in JSON. Every part is parsed at the edge (enqueue, the HTTP API)
with the same parsers the verifiers use, so truncated, oversized or garbled evidence is refused
there with the part named, and again when the task validates its payload (an invalid job is
dead-lettered at once, never retried). Readable evidence that is *wrong* is not a payload error:
it gets a verdict whose failed checks say why.
"""

from __future__ import annotations

import uuid
from datetime import UTC, datetime
from typing import Annotated, Any, Literal

import orjson
from pydantic import AfterValidator, Base64Bytes, Field, field_validator, model_validator

from evidence.certs import load_certificate, load_certificates
from evidence.posture import AcceleratorPosture
from evidence.verdict import MAX_EVIDENCE_BYTES, EvidenceFormatError, require_size
from kernel.payload import Payload

MAX_NONCE_BYTES = 64


def _bounded(value: bytes) -> bytes:
    if not value:
        raise ValueError("empty")
    if len(value) > MAX_EVIDENCE_BYTES:
        raise ValueError(f"oversized: {len(value)} bytes, at most {MAX_EVIDENCE_BYTES} accepted")
    return value


EvidenceBytes = Annotated[Base64Bytes, AfterValidator(_bounded)]


def _readable(check: Any, *args: Any) -> None:
    """Run a parser; its EvidenceFormatError becomes the ValueError pydantic reports."""
    try:
        check(*args)
    except EvidenceFormatError as exc:
        raise ValueError(str(exc)) from None


class TpmEvidenceInput(Payload):
    kind: Literal["tpm"]
    quote: EvidenceBytes = Field(description="TPMS_ATTEST as signed (tpm2_quote -m), base64.")
    signature: EvidenceBytes = Field(
        description=(
            "The quote's signature, base64: a TPMT_SIGNATURE (tpm2_quote -s) or bare (RSASSA or "
            "RSA-PSS bytes, ECDSA r||s or DER), its scheme chosen from the attestation key."
        )
    )
    pcrs: dict[str, Any] = Field(
        description=(
            'The quoted PCR values: {"sha256": {"0": "<hex>", ...}} (several banks allowed) '
            'or {"hash_alg": "sha256", "pcrs": {"0": "<hex>", ...}}.'
        )
    )

    @model_validator(mode="after")
    def _parse(self) -> TpmEvidenceInput:
        from evidence import tpm

        try:
            attest = tpm.parse_attest(self.quote)
            tpm.check_signature_form(self.signature)
            tpm.parse_pcr_values(self.pcrs_json(), attest.selection)
        except EvidenceFormatError as exc:
            raise ValueError(str(exc)) from None
        return self

    def pcrs_json(self) -> bytes:
        return orjson.dumps(self.pcrs)


class SnpEvidenceInput(Payload):
    kind: Literal["sev-snp"]
    report: EvidenceBytes = Field(description="The raw SNP ATTESTATION_REPORT, base64.")
    vcek: EvidenceBytes = Field(description="The VCEK or VLEK certificate (PEM or DER), base64.")
    chain: EvidenceBytes = Field(description="ASK (or ASVK) then ARK, PEM, base64.")

    @model_validator(mode="after")
    def _parse(self) -> SnpEvidenceInput:
        from evidence import sev_snp

        _readable(sev_snp.parse_report, self.report)
        _readable(load_certificate, "vcek", self.vcek)
        _readable(load_certificates, "chain", self.chain)
        return self


class TdxEvidenceInput(Payload):
    kind: Literal["tdx"]
    quote: EvidenceBytes = Field(description="The TDX quote (v4 or v5), base64.")
    collateral: EvidenceBytes | None = Field(
        None,
        description=(
            "Signed Intel collateral as PCCS JSON (tcb_info, qe_identity, CRLs and their issuer "
            "chains), base64; with it the TCB status is judged."
        ),
    )

    @model_validator(mode="after")
    def _parse(self) -> TdxEvidenceInput:
        from evidence import tdx

        _readable(tdx.parse_quote, self.quote)
        if self.collateral is not None:
            _readable(require_size, "collateral", self.collateral)
            try:
                document = orjson.loads(self.collateral)
            except orjson.JSONDecodeError as exc:
                raise ValueError(f"collateral: not JSON ({exc})") from None
            if not isinstance(document, dict):
                raise ValueError("collateral: expected a JSON object")
        return self


class AzureCvmEvidenceInput(Payload):
    kind: Literal["azure-cvm"]
    hcl_report: EvidenceBytes = Field(
        description="The HCL report (vTPM NV index 0x01400001, padding and all), base64."
    )
    vcek: EvidenceBytes = Field(
        description="The VCEK of the SNP report (PEM or DER; Azure THIM's vcekCert), base64."
    )
    chain: EvidenceBytes = Field(description="ASK then ARK, PEM (THIM's certificateChain), base64.")
    # Required, unlike for `drydock attest verify`: without a quote over the nonce the HCL
    # report (made at boot) could be a replay, so it cannot grant fresh trust.
    quote: EvidenceBytes = Field(description="TPMS_ATTEST signed by HCLAkPub, base64.")
    signature: EvidenceBytes = Field(
        description="The quote's signature, base64: a TPMT_SIGNATURE or bare."
    )
    pcrs: dict[str, Any] = Field(
        description='The quoted PCR values: {"sha256": {"0": "<hex>", ...}}.'
    )

    @model_validator(mode="after")
    def _parse(self) -> AzureCvmEvidenceInput:
        from evidence import azure_cvm, tpm

        try:
            azure_cvm.parse_hcl_report(self.hcl_report)
            load_certificate("vcek", self.vcek)
            load_certificates("chain", self.chain)
            attest = tpm.parse_attest(self.quote)
            tpm.check_signature_form(self.signature)
            tpm.parse_pcr_values(self.pcrs_json(), attest.selection)
        except EvidenceFormatError as exc:
            raise ValueError(str(exc)) from None
        return self

    def pcrs_json(self) -> bytes:
        return orjson.dumps(self.pcrs)


EvidenceInput = Annotated[
    TpmEvidenceInput | SnpEvidenceInput | TdxEvidenceInput | AzureCvmEvidenceInput,
    Field(discriminator="kind"),
]


def _nonce(value: str) -> str:
    try:
        raw = bytes.fromhex(value)
    except ValueError:
        raise ValueError("must be hex") from None
    if not 1 <= len(raw) <= MAX_NONCE_BYTES:
        raise ValueError(f"must be 1 to {MAX_NONCE_BYTES} bytes, got {len(raw)}")
    return raw.hex()


class VerifyEvidencePayload(Payload):
    asset_id: uuid.UUID = Field(description="The trust asset the evidence is about.")
    evidence: EvidenceInput = Field(
        description=(
            "The evidence, its `kind` one of tpm, sev-snp, tdx, azure-cvm, with that kind's parts."
        )
    )
    nonce: Annotated[str, AfterValidator(_nonce)] = Field(
        description=(
            "The challenge (hex) the evidence carries: TPM extraData (also an Azure CVM's "
            "quote), SNP/TDX report data."
        )
    )
    verify_at: datetime | None = Field(
        None,
        description=(
            "Judge certificates and collateral at this time instead of now (archived evidence). "
            "Trust granted expires from this time, so a past time cannot buy fresh trust."
        ),
    )

    @field_validator("verify_at")
    @classmethod
    def _aware(cls, value: datetime | None) -> datetime | None:
        if value is not None and value.tzinfo is None:
            raise ValueError("must carry a timezone (e.g. 2025-07-19T10:00:34Z)")
        return value.astimezone(UTC) if value is not None else None

    def nonce_bytes(self) -> bytes:
        return bytes.fromhex(self.nonce)


class IngestAcceleratorPosturePayload(Payload):
    asset_id: uuid.UUID = Field(description="The accelerator's trust asset.")
    posture: AcceleratorPosture = Field(description="The GPU's posture report.")


class SyncVmInventoryPayload(Payload):
    tenant: str = Field(
        "default", min_length=1, max_length=100, description="Tenant new VMs are registered under."
    )
    asset_class: str | None = Field(
        None, max_length=100, description="Class given to VMs registered by this sync."
    )


class ExpireStaleEvidencePayload(Payload):
    limit: int = Field(500, ge=1, le=10_000, description="Most assets moved to stale in one run.")

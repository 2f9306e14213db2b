"""TPM 2.0 quotes: is this quote signed by the asset's attestation key, fresh, over the PCR values
it reports, and do those values match the asset class's reference?

Inputs are what ``tpm2_quote`` writes (``-m`` TPMS_ATTEST, ``-s`` TPMT_SIGNATURE) plus the PCR
values and the attestation key (AK) the registry holds. tpm2-pytss (libtss2-mu) unmarshals the TPM
structures; cryptography checks the signature. Checks, in order: ``magic``, ``type``,
``signature``, ``nonce``, ``pcr_selection``, ``pcr_digest``, ``pcr_reference``, ``replay``.

Clock info privacy: a TPM obfuscates resetCount, restartCount and firmwareVersion in quotes signed
by keys outside the endorsement and platform hierarchies (a constant per key is added), so keep an
asset's AK fixed for the ``replay`` comparison to mean anything; AKs under the endorsement
hierarchy (``tpm2_createak``, cloud vTPM AKs) report them as they are.

Over 500 lines on purpose: one wire format (TPMS_ATTEST, TPMT_SIGNATURE, the AK forms and the
PCR values) read in the order of its layout and checked against the quote it signs; split,
the bounds each parser relies on would live apart from the checks that rely on them.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
from collections.abc import Mapping
from dataclasses import dataclass, field, replace
from datetime import datetime
from typing import Any

import orjson
from cryptography.exceptions import InvalidSignature, UnsupportedAlgorithm
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec, padding, rsa
from cryptography.hazmat.primitives.asymmetric.utils import (
    decode_dss_signature,
    encode_dss_signature,
)
from tpm2_pytss._libtpm2_pytss import ffi
from tpm2_pytss.TSS2_Exception import TSS2_Exception
from tpm2_pytss.types import TPM2B_PUBLIC, TPMS_ATTEST, TPMT_PUBLIC, TPMT_SIGNATURE

from evidence.verdict import (
    Check,
    EvidenceFormatError,
    EvidenceKind,
    Outcome,
    Verdict,
    require_size,
)

AttestationPublicKey = rsa.RSAPublicKey | ec.EllipticCurvePublicKey

TPM_GENERATED_VALUE = 0xFF544347  # "\xffTCG": the TPM made this structure itself
TPM_ST_ATTEST_QUOTE = 0x8018
_ATTEST_TYPES = {
    0x8014: "nv",
    0x8015: "command_audit",
    0x8016: "session_audit",
    0x8017: "certify",
    0x8018: "quote",
    0x8019: "time",
    0x801A: "creation",
    0x801C: "nv_digest",
}

# TPM_ALG_ID of the hashes Drydock accepts, as PCR banks and as signature hashes.
_HASH_NAMES = {0x0004: "sha1", 0x000B: "sha256", 0x000C: "sha384", 0x000D: "sha512"}
_HASH_IDS = {name: alg for alg, name in _HASH_NAMES.items()}
_DIGEST_SIZES = {"sha1": 20, "sha256": 32, "sha384": 48, "sha512": 64}
_SIGNATURE_HASHES: dict[int, hashes.HashAlgorithm] = {
    0x0004: hashes.SHA1(),
    0x000B: hashes.SHA256(),
    0x000C: hashes.SHA384(),
    0x000D: hashes.SHA512(),
}
_ALG_RSASSA, _ALG_RSAPSS, _ALG_ECDSA = 0x0014, 0x0016, 0x0018
_SIGNATURE_SCHEMES = {
    _ALG_RSASSA: "rsassa",
    _ALG_RSAPSS: "rsapss",
    _ALG_ECDSA: "ecdsa",
    0x0005: "hmac",
    0x001A: "ecdaa",
    0x001B: "sm2",
    0x001C: "ecschnorr",
    0x0010: "null",
}
_ALG_RSA, _ALG_ECC = 0x0001, 0x0023
_TPM_CURVES: dict[int, ec.EllipticCurve] = {
    0x0003: ec.SECP256R1(),
    0x0004: ec.SECP384R1(),
    0x0005: ec.SECP521R1(),
}
_JWK_CURVES: dict[str, ec.EllipticCurve] = {
    "P-256": ec.SECP256R1(),
    "P-384": ec.SECP384R1(),
    "P-521": ec.SECP521R1(),
}
_CURVE_NAMES = {"secp256r1": "P-256", "secp384r1": "P-384", "secp521r1": "P-521"}
# PCR indices a JSON report may name (IMPLEMENTATION_PCR is 24 on PC clients; selections
# reach 32).
_MAX_PCR_INDEX = 31


@dataclass(frozen=True)
class TpmEvidence:
    """One quote as the asset sent it.

    ``pcrs``: the PCR values the quote covers, as JSON, either one bank
    ``{"hash_alg": "sha256", "pcrs": {"0": "<hex>", ...}}`` or several
    ``{"sha256": {"0": "<hex>"}, "sha1": {...}}``; or tpm2-tools' binary output
    (``tpm2_quote -o FILE -F values``: the selected values concatenated in the quote's selection
    order). tpm2-tools' ``serialized`` format is not read: it is a dump of in-memory C structures
    whose layout is the tools' own. ``ak``: PEM or DER SubjectPublicKeyInfo, TPMT_PUBLIC,
    TPM2B_PUBLIC (``tpm2_createak -u``), or a JWK (RSA, or EC P-256/P-384/P-521)."""

    quote: bytes
    signature: bytes
    pcrs: bytes
    ak: bytes


@dataclass(frozen=True)
class TpmReference:
    """The asset class's reference values: bank ("sha1", "sha256", "sha384") → PCR index → value.
    Empty: no reference check."""

    pcrs: Mapping[str, Mapping[int, bytes]] = field(default_factory=dict)


@dataclass(frozen=True, order=True)
class TpmCounters:
    """A TPM's TPMS_CLOCK_INFO in the order that says which quote is newer: a TPM reset raises
    reset_count (and zeroes restart_count), a restart or resume raises restart_count, and clock
    (milliseconds the TPM has been powered) grows in between."""

    reset_count: int
    restart_count: int
    clock: int

    @classmethod
    def from_claims(cls, claims: Mapping[str, Any]) -> TpmCounters | None:
        """The counters of a verdict's claims (what the registry stored), or None without any."""
        info = claims.get("clock_info")
        if not isinstance(info, Mapping):
            return None
        values: list[Any] = [info.get(key) for key in ("reset_count", "restart_count", "clock")]
        if not all(type(value) is int for value in values):  # bool is no counter
            return None
        return cls(*values)


@dataclass(frozen=True)
class PcrBankSelection:
    """One TPMS_PCR_SELECTION: a bank by its TPM_ALG_ID and the PCR indices it selects."""

    alg: int
    bank: str  # "sha256", or the algorithm id in hex when Drydock knows no such bank
    indices: tuple[int, ...]


@dataclass(frozen=True)
class TpmAttest:
    """The fields of a TPMS_ATTEST a verifier needs (``selection`` and ``pcr_digest`` only for
    quotes)."""

    magic: int
    type: int
    qualified_signer: bytes
    extra_data: bytes
    clock: int
    reset_count: int
    restart_count: int
    safe: bool
    firmware_version: int
    selection: tuple[PcrBankSelection, ...]
    pcr_digest: bytes

    @property
    def counters(self) -> TpmCounters:
        return TpmCounters(self.reset_count, self.restart_count, self.clock)

    @property
    def type_name(self) -> str:
        return _ATTEST_TYPES.get(self.type, f"0x{self.type:04x}")


@dataclass(frozen=True)
class TpmSignature:
    """A quote's signature: scheme and hash by TPM_ALG_ID, and the signature (DER for ECDSA).

    ``raw``: it came as the bare signature (RSASSA or RSA-PSS bytes, ECDSA r||s or DER), as
    cloud vTPM tooling delivers it, not as a TPMT_SIGNATURE; its scheme is chosen from the
    attestation key's type (``schemes``: the ones to try, in order) and its hash from the
    quote (TPM2_Quote digests the PCRs with the signing hash, so the pcrDigest's size names it).
    """

    scheme: int
    hash_alg: int
    value: bytes
    raw: bool = False
    schemes: tuple[int, ...] = ()

    @property
    def scheme_name(self) -> str:
        return _SIGNATURE_SCHEMES.get(self.scheme, f"0x{self.scheme:04x}")

    @property
    def hash_name(self) -> str:
        return _HASH_NAMES.get(self.hash_alg, f"0x{self.hash_alg:04x}")


def _unmarshal(part: str, kind: Any, data: bytes) -> Any:
    """One TPM structure filling ``data`` exactly, through libtss2-mu; returns its C struct.

    tpm2-pytss wraps every field read in a new Python object (about 5 µs each, most of a
    verification's time); the C struct libtss2-mu filled, which the wrapper keeps as ``_cdata``,
    reads in nanoseconds, and unmarshalling has already bounds-checked every size in it."""
    try:
        value, used = kind.unmarshal(data)
    except (TSS2_Exception, ValueError, TypeError, OverflowError) as exc:
        raise EvidenceFormatError(part, f"not a readable {kind.__name__} ({exc})") from None
    if used != len(data):
        raise EvidenceFormatError(
            part, f"{len(data) - used} unexpected bytes after the {used}-byte {kind.__name__}"
        )
    return value._cdata


def _sized(part: str, buffer: Any, size: int) -> bytes:
    """The used part of a TPM2B's array. libtss2-mu already refuses sizes beyond the array;
    checked again because reading past it would read other memory, not raise."""
    if size > len(buffer):
        raise EvidenceFormatError(part, f"a {size}-byte field in a {len(buffer)}-byte array")
    return bytes(ffi.buffer(buffer, size))


def parse_attest(data: bytes) -> TpmAttest:
    """Read a TPMS_ATTEST (the signed body of a quote). EvidenceFormatError when unreadable;
    a wrong magic or type is left for the verifier to judge."""
    require_size("quote", data)
    attest = _unmarshal("quote", TPMS_ATTEST, data)
    kind = int(attest.type)
    clock_info = attest.clockInfo
    selection: tuple[PcrBankSelection, ...] = ()
    pcr_digest = b""
    if kind == TPM_ST_ATTEST_QUOTE:
        quote = attest.attested.quote
        selection = _read_selection(quote.pcrSelect)
        pcr_digest = _sized("quote", quote.pcrDigest.buffer, quote.pcrDigest.size)
    return TpmAttest(
        magic=int(attest.magic),
        type=kind,
        qualified_signer=_sized("quote", attest.qualifiedSigner.name, attest.qualifiedSigner.size),
        extra_data=_sized("quote", attest.extraData.buffer, attest.extraData.size),
        clock=int(clock_info.clock),
        reset_count=int(clock_info.resetCount),
        restart_count=int(clock_info.restartCount),
        safe=bool(clock_info.safe),
        firmware_version=int(attest.firmwareVersion),
        selection=selection,
        pcr_digest=pcr_digest,
    )


def _read_selection(pcr_select: Any) -> tuple[PcrBankSelection, ...]:
    banks = []
    for position in range(int(pcr_select.count)):
        entry = pcr_select.pcrSelections[position]
        bitmap = _sized("quote", entry.pcrSelect, entry.sizeofSelect)
        indices = tuple(
            byte_index * 8 + bit
            for byte_index, byte in enumerate(bitmap)
            for bit in range(8)
            if byte >> bit & 1
        )
        alg = int(entry.hash)
        banks.append(PcrBankSelection(alg, _HASH_NAMES.get(alg, f"0x{alg:04x}"), indices))
    return tuple(banks)


def parse_signature(data: bytes) -> TpmSignature:
    """Read a TPMT_SIGNATURE. Schemes other than RSASSA, RSAPSS and ECDSA are returned with an
    empty value for the verifier to refuse."""
    require_size("signature", data)
    signature = _unmarshal("signature", TPMT_SIGNATURE, data)
    scheme = int(signature.sigAlg)
    body = signature.signature
    if scheme in (_ALG_RSASSA, _ALG_RSAPSS):
        rsa_signature = body.rsassa if scheme == _ALG_RSASSA else body.rsapss
        value = _sized("signature", rsa_signature.sig.buffer, rsa_signature.sig.size)
        return TpmSignature(scheme, int(rsa_signature.hash), value)
    if scheme == _ALG_ECDSA:
        ecdsa = body.ecdsa
        r = int.from_bytes(
            _sized("signature", ecdsa.signatureR.buffer, ecdsa.signatureR.size), "big"
        )
        s = int.from_bytes(
            _sized("signature", ecdsa.signatureS.buffer, ecdsa.signatureS.size), "big"
        )
        return TpmSignature(scheme, int(ecdsa.hash), encode_dss_signature(r, s))
    return TpmSignature(scheme, 0, b"")


# Sizes of a bare signature: RSA 1024 to 4096 bits; ECDSA r||s on P-256, P-384, P-521.
_RAW_RSA_SIZES = frozenset({128, 256, 384, 512})
_RAW_ECDSA_SIZES = {64: 32, 96: 48, 132: 66}
_HASH_BY_DIGEST_SIZE = {20: 0x0004, 32: 0x000B, 48: 0x000C, 64: 0x000D}


def is_tpmt_signature(data: bytes) -> bool:
    """Whether ``data`` begins as a TPMT_SIGNATURE does: a known scheme, then (for any scheme but
    NULL) a known hash. A bare signature starts so by chance about once in 10^9."""
    if len(data) < 2:
        return False
    scheme = int.from_bytes(data[:2], "big")
    if scheme == 0x0010:
        return True
    return (
        scheme in _SIGNATURE_SCHEMES
        and len(data) >= 4
        and int.from_bytes(data[2:4], "big") in _HASH_NAMES
    )


def check_signature_form(data: bytes) -> None:
    """Refuse, with EvidenceFormatError, what can be neither a TPMT_SIGNATURE nor a bare RSA or
    ECDSA signature. What the edge can check before the attestation key is known."""
    require_size("signature", data)
    if is_tpmt_signature(data):
        parse_signature(data)
    elif len(data) not in _RAW_RSA_SIZES and len(data) not in _RAW_ECDSA_SIZES:
        _der_ecdsa(data)


def read_signature(data: bytes, key: AttestationPublicKey, attest: TpmAttest) -> TpmSignature:
    """The quote's signature, as a TPMT_SIGNATURE or bare (see :class:`TpmSignature`)."""
    require_size("signature", data)
    if is_tpmt_signature(data):
        return parse_signature(data)
    hash_alg = _HASH_BY_DIGEST_SIZE.get(len(attest.pcr_digest), 0x000B)
    if isinstance(key, rsa.RSAPublicKey):
        size = (key.key_size + 7) // 8
        if len(data) != size:
            raise EvidenceFormatError(
                "signature",
                f"neither a TPMT_SIGNATURE nor a bare RSA signature for this {key.key_size}-bit "
                f"attestation key ({len(data)} bytes, not {size})",
            )
        return TpmSignature(
            _ALG_RSASSA, hash_alg, data, raw=True, schemes=(_ALG_RSASSA, _ALG_RSAPSS)
        )
    coordinate = (key.curve.key_size + 7) // 8
    if len(data) == 2 * coordinate:
        r, s = int.from_bytes(data[:coordinate], "big"), int.from_bytes(data[coordinate:], "big")
        value = encode_dss_signature(r, s)
    else:
        value = _der_ecdsa(data)
    return TpmSignature(_ALG_ECDSA, hash_alg, value, raw=True, schemes=(_ALG_ECDSA,))


def _der_ecdsa(data: bytes) -> bytes:
    try:
        r, s = decode_dss_signature(data)
    except ValueError:
        raise EvidenceFormatError(
            "signature",
            f"neither a TPMT_SIGNATURE nor a bare RSA or ECDSA signature ({len(data)} bytes: "
            "not an RSA size, not r||s on P-256/P-384/P-521, not DER)",
        ) from None
    canonical = encode_dss_signature(r, s)
    if canonical != data:
        raise EvidenceFormatError("signature", "a DER ECDSA signature with unexpected bytes")
    return canonical


def load_attestation_key(data: bytes) -> AttestationPublicKey:
    """The AK as a cryptography public key, from PEM or DER SubjectPublicKeyInfo, TPMT_PUBLIC,
    TPM2B_PUBLIC or JWK JSON. EvidenceFormatError("ak", ...) for anything else, and for keys
    that are neither RSA nor EC on P-256/P-384/P-521."""
    require_size("ak", data)
    head = data.lstrip()[:1]
    if head == b"{":
        return _key_from_jwk(data)
    if data.startswith(b"-----BEGIN"):
        return _key_from_spki(data, serialization.load_pem_public_key)
    if head == b"\x30":
        return _key_from_spki(data, serialization.load_der_public_key)
    # TPM2B_PUBLIC is a TPMT_PUBLIC behind its u16 size; a TPMT_PUBLIC starts with its type
    # (0x0001 RSA, 0x0023 ECC), never with its own remaining length.
    if len(data) >= 2 and int.from_bytes(data[:2], "big") == len(data) - 2:
        public = _unmarshal("ak", TPM2B_PUBLIC, data).publicArea
    else:
        public = _unmarshal("ak", TPMT_PUBLIC, data)
    return _key_from_tpmt_public(public)


def _key_from_spki(data: bytes, load: Any) -> AttestationPublicKey:
    try:
        key = load(data)
    except (ValueError, TypeError, UnsupportedAlgorithm) as exc:
        raise EvidenceFormatError("ak", f"not a readable public key ({exc})") from None
    return _supported(key)


def _supported(key: object) -> AttestationPublicKey:
    if isinstance(key, rsa.RSAPublicKey):
        return key
    if isinstance(key, ec.EllipticCurvePublicKey) and key.curve.name in _CURVE_NAMES:
        return key
    raise EvidenceFormatError(
        "ak", f"a {type(key).__name__} is not a TPM attestation key (RSA or EC P-256/384/521)"
    )


def _key_from_tpmt_public(public: Any) -> AttestationPublicKey:
    kind = int(public.type)
    try:
        if kind == _ALG_RSA:
            exponent = int(public.parameters.rsaDetail.exponent) or 65537
            modulus = _sized("ak", public.unique.rsa.buffer, public.unique.rsa.size)
            return rsa.RSAPublicNumbers(exponent, int.from_bytes(modulus, "big")).public_key()
        if kind == _ALG_ECC:
            curve_id = int(public.parameters.eccDetail.curveID)
            curve = _TPM_CURVES.get(curve_id)
            if curve is None:
                raise EvidenceFormatError("ak", f"unsupported ECC curve 0x{curve_id:04x}")
            point = public.unique.ecc
            x = int.from_bytes(_sized("ak", point.x.buffer, point.x.size), "big")
            y = int.from_bytes(_sized("ak", point.y.buffer, point.y.size), "big")
            return ec.EllipticCurvePublicNumbers(x, y, curve).public_key()
    except ValueError as exc:
        raise EvidenceFormatError("ak", f"not a usable public key ({exc})") from None
    raise EvidenceFormatError("ak", f"key type 0x{kind:04x} is neither RSA nor ECC")


def _key_from_jwk(data: bytes) -> AttestationPublicKey:
    try:
        jwk = orjson.loads(data)
    except orjson.JSONDecodeError as exc:
        raise EvidenceFormatError("ak", f"not valid JSON ({exc})") from None
    if not isinstance(jwk, dict):
        raise EvidenceFormatError("ak", "a JWK must be a JSON object")
    kty = jwk.get("kty")
    try:
        if kty == "RSA":
            modulus, exponent = _b64url_int(jwk, "n"), _b64url_int(jwk, "e")
            return rsa.RSAPublicNumbers(exponent, modulus).public_key()
        if kty == "EC":
            crv = jwk.get("crv")
            curve = _JWK_CURVES.get(crv) if isinstance(crv, str) else None
            if curve is None:
                raise EvidenceFormatError("ak", f"JWK curve {crv!r} is not P-256, P-384 or P-521")
            x, y = _b64url_int(jwk, "x"), _b64url_int(jwk, "y")
            return ec.EllipticCurvePublicNumbers(x, y, curve).public_key()
    except (ValueError, TypeError) as exc:
        raise EvidenceFormatError("ak", f"JWK is not a usable public key ({exc})") from None
    raise EvidenceFormatError("ak", f"JWK kty {kty!r} is not RSA or EC")


def _b64url_int(jwk: Mapping[str, Any], member: str) -> int:
    text = jwk.get(member)
    if not isinstance(text, str) or not text:
        raise EvidenceFormatError("ak", f"JWK member {member!r} is missing or not a string")
    try:
        raw = base64.urlsafe_b64decode(text + "=" * (-len(text) % 4))
    except (binascii.Error, ValueError) as exc:
        raise EvidenceFormatError("ak", f"JWK member {member!r} is not base64url ({exc})") from None
    return int.from_bytes(raw, "big")


def parse_pcr_values(
    data: bytes, selection: tuple[PcrBankSelection, ...]
) -> dict[str, dict[int, bytes]]:
    """The reported PCR values, bank name → index → value, from JSON or tpm2-tools' ``values``
    output (read in ``selection`` order, so it needs the quote's selection)."""
    require_size("pcrs", data)
    try:
        document = orjson.loads(data)
    except orjson.JSONDecodeError:
        return _pcrs_from_values(data, selection)
    if not isinstance(document, dict):
        raise EvidenceFormatError("pcrs", "PCR JSON must be an object")
    if "pcrs" in document:
        bank = document.get("hash_alg")
        if not isinstance(bank, str):
            raise EvidenceFormatError("pcrs", 'single-bank PCR JSON needs "hash_alg"')
        return {_bank_name(bank): _pcr_bank(bank, document["pcrs"])}
    return {_bank_name(bank): _pcr_bank(bank, values) for bank, values in document.items()}


def _bank_name(bank: str) -> str:
    name = bank.lower()
    if name not in _DIGEST_SIZES:
        raise EvidenceFormatError("pcrs", f"unknown PCR bank {bank!r} (sha1/sha256/sha384/sha512)")
    return name


def _pcr_bank(bank: str, values: object) -> dict[int, bytes]:
    if not isinstance(values, dict):
        raise EvidenceFormatError("pcrs", f"bank {bank}: expected an object of index → hex value")
    size = _DIGEST_SIZES[bank.lower()]
    bank_values = {}
    for key, text in values.items():
        if not (key.isdecimal() and int(key) <= _MAX_PCR_INDEX):
            raise EvidenceFormatError("pcrs", f"bank {bank}: {key!r} is not a PCR index 0..31")
        if not isinstance(text, str):
            raise EvidenceFormatError("pcrs", f"{bank}:{key}: the value is not a hex string")
        try:
            value = bytes.fromhex(text.removeprefix("0x"))
        except ValueError:
            raise EvidenceFormatError("pcrs", f"{bank}:{key}: {text[:80]!r} is not hex") from None
        if len(value) != size:
            raise EvidenceFormatError(
                "pcrs", f"{bank}:{key}: {len(value)} bytes, a {bank} PCR holds {size}"
            )
        bank_values[int(key)] = value
    return bank_values


def _pcrs_from_values(
    data: bytes, selection: tuple[PcrBankSelection, ...]
) -> dict[str, dict[int, bytes]]:
    sizes = [(entry.bank, _DIGEST_SIZES.get(entry.bank), entry.indices) for entry in selection]
    expected = sum((size or 0) * len(indices) for _, size, indices in sizes)
    if any(size is None for _, size, _ in sizes) or len(data) != expected:
        raise EvidenceFormatError(
            "pcrs",
            f"neither JSON nor tpm2-tools values output for this quote's selection "
            f"({len(data)} bytes; its {sum(len(i) for _, _, i in sizes)} PCRs take {expected})",
        )
    values: dict[str, dict[int, bytes]] = {}
    offset = 0
    for bank, size, indices in sizes:
        assert size is not None
        bank_values = values.setdefault(bank, {})
        for index in indices:
            bank_values[index] = data[offset : offset + size]
            offset += size
    return values


def verify_tpm_quote(
    evidence: TpmEvidence,
    *,
    nonce: bytes | None,
    reference: TpmReference,
    last_counters: TpmCounters | None,
    at: datetime,
) -> Verdict:
    """Judge one TPM quote. ``nonce``: the challenge the quote must carry as extraData (None:
    freshness by nonce not checked). ``last_counters``: the clock info of the newest quote
    accepted from this asset (None: first quote). ``at`` is accepted for the common verifier
    signature; a quote carries no certificate whose validity depends on it (the registry
    vouches for the AK)."""
    del at  # nothing in a bare quote expires; see the docstring
    attest = parse_attest(evidence.quote)
    key = load_attestation_key(evidence.ak)
    signature = read_signature(evidence.signature, key, attest)
    is_quote = attest.type == TPM_ST_ATTEST_QUOTE
    reported = parse_pcr_values(evidence.pcrs, attest.selection) if is_quote else {}
    signature_check, signature = _check_signature(evidence.quote, signature, key)

    verdict = Verdict(EvidenceKind.TPM, claims=_claims(attest, signature, key))
    verdict.add(
        Check.judged(
            "magic",
            attest.magic == TPM_GENERATED_VALUE,
            "magic is TPM_GENERATED_VALUE (0xff544347): the TPM made this structure",
            f"magic is 0x{attest.magic:08x}, not TPM_GENERATED_VALUE 0xff544347: the TPM did not "
            "make this structure",
        )
    )
    verdict.add(
        Check.judged(
            "type",
            is_quote,
            "type is TPM_ST_ATTEST_QUOTE (0x8018)",
            f"type is {attest.type_name} (0x{attest.type:04x}), not a quote (0x8018)",
        )
    )
    verdict.add(signature_check)
    verdict.add(_check_nonce(attest.extra_data, nonce))
    if is_quote:
        verdict.extend(_check_pcrs(attest, signature, reported, reference))
    else:
        why = f"a {attest.type_name} attestation reports no PCRs"
        verdict.extend(
            Check.skipped(name, why) for name in ("pcr_selection", "pcr_digest", "pcr_reference")
        )
    verdict.add(_check_replay(attest.counters, last_counters))
    return verdict


def _claims(
    attest: TpmAttest, signature: TpmSignature, key: AttestationPublicKey
) -> dict[str, Any]:
    claims: dict[str, Any] = {
        "magic": f"0x{attest.magic:08x}",
        "type": attest.type_name,
        "qualified_signer": attest.qualified_signer.hex(),
        "extra_data": attest.extra_data.hex(),
        "clock_info": {
            "clock": attest.clock,
            "reset_count": attest.reset_count,
            "restart_count": attest.restart_count,
            "safe": attest.safe,
        },
        "firmware_version": f"0x{attest.firmware_version:016x}",
        "pcr_selection": [
            {"bank": entry.bank, "pcrs": list(entry.indices)} for entry in attest.selection
        ],
        "pcr_digest": attest.pcr_digest.hex(),
        "signature": {"alg": signature.scheme_name, "hash": signature.hash_name},
    }
    if signature.raw:
        claims["signature"]["form"] = "raw"
    if isinstance(key, rsa.RSAPublicKey):
        claims["ak"] = {"type": "rsa", "bits": key.key_size}
    else:
        claims["ak"] = {"type": "ecc", "curve": _CURVE_NAMES[key.curve.name]}
    return claims


def _describe(key: AttestationPublicKey) -> str:
    if isinstance(key, rsa.RSAPublicKey):
        return f"RSA-{key.key_size}"
    return f"EC {_CURVE_NAMES[key.curve.name]}"


def describe_key(key: AttestationPublicKey) -> str:
    """``RSA-2048``, ``EC P-256``: an attestation key as a verdict names it."""
    return _describe(key)


def same_key(first: AttestationPublicKey, second: AttestationPublicKey) -> bool:
    """Whether two attestation keys are the same public key, whatever form each came in."""
    return first.public_numbers() == second.public_numbers()


def _check_signature(
    message: bytes, signature: TpmSignature, key: AttestationPublicKey
) -> tuple[Check, TpmSignature]:
    """The signature check, and the signature as judged: for a bare one, with the scheme that
    verified (or the first tried)."""
    if not signature.raw:
        return _check_one_signature(message, signature, key, form=""), signature
    tried = [replace(signature, scheme=scheme) for scheme in signature.schemes]
    checks = [(_check_one_signature(message, s, key, form="bare "), s) for s in tried]
    for check, judged in checks:
        if check.outcome is Outcome.PASSED:
            return check, judged
    return checks[0]


def _check_one_signature(
    message: bytes, signature: TpmSignature, key: AttestationPublicKey, *, form: str
) -> Check:
    scheme = signature.scheme_name
    algorithm = _SIGNATURE_HASHES.get(signature.hash_alg)
    if signature.scheme not in (_ALG_RSASSA, _ALG_RSAPSS, _ALG_ECDSA):
        return Check.failed(
            "signature", f"signature scheme {scheme} is not supported (RSASSA, RSAPSS or ECDSA)"
        )
    if algorithm is None:
        return Check.failed(
            "signature", f"signature hash {signature.hash_name} is not SHA-1/256/384/512"
        )
    is_rsa = isinstance(key, rsa.RSAPublicKey)
    if is_rsa != (signature.scheme != _ALG_ECDSA):
        return Check.failed(
            "signature",
            f"the quote is signed with {scheme} but the attestation key is {_describe(key)}: "
            "it was signed by another key",
        )
    try:
        if isinstance(key, rsa.RSAPublicKey):
            pad: padding.AsymmetricPadding = (
                padding.PKCS1v15()
                if signature.scheme == _ALG_RSASSA
                else padding.PSS(padding.MGF1(algorithm), padding.PSS.AUTO)
            )
            key.verify(signature.value, message, pad, algorithm)
        else:
            key.verify(signature.value, message, ec.ECDSA(algorithm))
    except (InvalidSignature, ValueError):
        return Check.failed(
            "signature",
            f"the {form}{scheme}/{signature.hash_name} signature does not verify with the "
            f"registered attestation key ({_describe(key)}): the quote was altered or signed by "
            "another key",
        )
    return Check.passed(
        "signature",
        f"{form}{scheme}/{signature.hash_name} signature verifies with the attestation key "
        f"({_describe(key)})",
    )


def _check_nonce(extra_data: bytes, nonce: bytes | None) -> Check:
    if nonce is None:
        return Check.skipped("nonce", "no nonce was given, so freshness was not checked")
    return Check.judged(
        "nonce",
        extra_data == nonce,
        f"extraData is the nonce {nonce.hex()}",
        f"extraData {extra_data.hex() or '(empty)'} is not the nonce {nonce.hex()}: the quote "
        "was made for another challenge (a replay, or the wrong nonce)",
    )


def _check_pcrs(
    attest: TpmAttest,
    signature: TpmSignature,
    reported: Mapping[str, Mapping[int, bytes]],
    reference: TpmReference,
) -> list[Check]:
    unsupported = [entry.bank for entry in attest.selection if entry.bank not in _DIGEST_SIZES]
    missing = [
        f"{entry.bank}:{index}"
        for entry in attest.selection
        for index in entry.indices
        if index not in reported.get(entry.bank, {})
    ]
    selected = {(entry.bank, index) for entry in attest.selection for index in entry.indices}
    extra = [
        f"{bank}:{index}"
        for bank, values in reported.items()
        for index in sorted(values)
        if (bank, index) not in selected
    ]
    if unsupported:
        selection_check = Check.failed(
            "pcr_selection", f"the quote selects unsupported PCR banks: {', '.join(unsupported)}"
        )
    elif missing or extra:
        problems = []
        if missing:
            problems.append(f"selected but not reported: {', '.join(missing)}")
        if extra:
            problems.append(f"reported but not covered by the quote: {', '.join(extra)}")
        selection_check = Check.failed("pcr_selection", "; ".join(problems))
    else:
        selection_check = Check.passed(
            "pcr_selection",
            f"the reported values are exactly the selection ({_describe_selection(attest)})",
        )
    return [
        selection_check,
        _check_pcr_digest(attest, signature, reported, bool(missing or unsupported)),
        _check_pcr_reference(selected, reported, reference),
    ]


def _describe_selection(attest: TpmAttest) -> str:
    return "; ".join(
        f"{entry.bank} {','.join(map(str, entry.indices)) or 'none'}" for entry in attest.selection
    )


def _check_pcr_digest(
    attest: TpmAttest,
    signature: TpmSignature,
    reported: Mapping[str, Mapping[int, bytes]],
    incomplete: bool,
) -> Check:
    if incomplete:
        return Check.skipped(
            "pcr_digest", "the reported values do not cover the selection (see pcr_selection)"
        )
    name = _HASH_NAMES.get(signature.hash_alg)
    if name is None:
        return Check.skipped(
            "pcr_digest", "the signature names no supported hash, which also digests the PCRs"
        )
    # TPM2_Quote digests the selected values with the signing scheme's hash, whatever the bank.
    digest = hashlib.new(name)
    for entry in attest.selection:
        bank = reported[entry.bank]
        for index in entry.indices:
            digest.update(bank[index])
    computed = digest.digest()
    return Check.judged(
        "pcr_digest",
        computed == attest.pcr_digest,
        f"the reported PCR values hash ({name}) to the quote's pcrDigest",
        f"the reported PCR values hash ({name}) to {computed.hex()}, the quote's pcrDigest is "
        f"{attest.pcr_digest.hex()}: the reported values are not the ones the TPM quoted",
    )


def _check_pcr_reference(
    selected: set[tuple[str, int]],
    reported: Mapping[str, Mapping[int, bytes]],
    reference: TpmReference,
) -> Check:
    if not reference.pcrs:
        return Check.skipped("pcr_reference", "no reference PCR values are set for this asset")
    problems = []
    count = 0
    for bank_name, expected_values in reference.pcrs.items():
        bank = bank_name.lower()
        for index, expected in sorted(expected_values.items()):
            count += 1
            if (bank, index) not in selected:
                problems.append(
                    f"{bank}:{index} expected {expected.hex()} but the quote does not cover it"
                )
                continue
            found = reported[bank][index]
            if found != expected:
                problems.append(f"{bank}:{index} expected {expected.hex()} found {found.hex()}")
    return Check.judged(
        "pcr_reference",
        not problems,
        f"all {count} reference PCR values match",
        "; ".join(problems),
    )


def _check_replay(counters: TpmCounters, last: TpmCounters | None) -> Check:
    now = f"reset {counters.reset_count}, restart {counters.restart_count}, clock {counters.clock}"
    if last is None:
        return Check.passed("replay", f"first quote seen for this asset ({now})")
    before = f"reset {last.reset_count}, restart {last.restart_count}, clock {last.clock}"
    if counters <= last:
        return Check.failed(
            "replay",
            f"replayed or stale quote: its clock info ({now}) is not newer than the last "
            f"accepted quote's ({before})",
        )
    if counters.reset_count > last.reset_count:
        change = f"the TPM was reset since the last quote (resetCount {last.reset_count} → "
        change += f"{counters.reset_count})"
    elif counters.restart_count > last.restart_count:
        change = "the TPM was restarted or resumed since the last quote (restartCount "
        change += f"{last.restart_count} → {counters.restart_count})"
    else:
        change = f"clock advanced {counters.clock - last.clock} ms since the last quote"
    return Check.passed("replay", f"newer than the last accepted quote: {change}")

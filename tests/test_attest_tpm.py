"""TPM 2.0 quote verification: the GCE vTPM sample (real evidence, nonce 0x9009) and quotes made
by a real software TPM (swtpm, see testkit/tpm.py) with RSA and ECC attestation keys
over SHA-1, SHA-256 and SHA-384 banks; what each kind of tampering fails; unreadable input raises
EvidenceFormatError and nothing else (hypothesis fuzzes the parsers).

One module for one verifier: every check it makes has its sample and its forgery here.
"""

from __future__ import annotations

import base64
import json
from dataclasses import replace
from datetime import UTC, datetime
from pathlib import Path
from typing import TYPE_CHECKING, Any

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec, rsa
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from evidence.tpm import (
    TpmCounters,
    TpmEvidence,
    TpmReference,
    check_signature_form,
    is_tpmt_signature,
    load_attestation_key,
    verify_tpm_quote,
)
from evidence.verdict import (
    MAX_EVIDENCE_BYTES,
    EvidenceFormatError,
    Outcome,
    Verdict,
)

if TYPE_CHECKING:
    from testkit.tpm import AttestationKey, SoftwareTpm, TpmQuote


SAMPLE = (
    Path(__file__).parent
    / "data"
    / "attestation-samples"
    / "tpm"
    / "go-tpm-tools-gce-cos85-nonce9009"
)
SAMPLE_NONCE = bytes.fromhex("9009")
BANKS = ("sha1", "sha256", "sha384")
CHECKS = [
    "magic",
    "type",
    "signature",
    "nonce",
    "pcr_selection",
    "pcr_digest",
    "pcr_reference",
    "replay",
]
# Nothing in a quote expires; the time is passed because every verifier takes one.
AT = datetime(2026, 1, 1, tzinfo=UTC)
FUZZ = settings(max_examples=200, deadline=None, suppress_health_check=[HealthCheck.too_slow])


def sample(bank: str) -> TpmEvidence:
    return TpmEvidence(
        quote=(SAMPLE / f"quote_{bank}.tpms_attest").read_bytes(),
        signature=(SAMPLE / f"quote_{bank}.tpmt_signature").read_bytes(),
        pcrs=(SAMPLE / f"pcrs_{bank}.json").read_bytes(),
        ak=(SAMPLE / "ak_pub.tpmt_public").read_bytes(),
    )


def sample_pcrs(bank: str) -> dict[int, bytes]:
    document = json.loads((SAMPLE / f"pcrs_{bank}.json").read_text())
    return {int(index): bytes.fromhex(value) for index, value in document["pcrs"].items()}


def judge(
    evidence: TpmEvidence,
    *,
    nonce: bytes | None = SAMPLE_NONCE,
    reference: TpmReference | None = None,
    last_counters: TpmCounters | None = None,
) -> Verdict:
    return verify_tpm_quote(
        evidence,
        nonce=nonce,
        reference=reference or TpmReference(),
        last_counters=last_counters,
        at=AT,
    )


def outcomes(verdict: Verdict) -> dict[str, Outcome]:
    return {check.name: check.outcome for check in verdict.checks}


def reason(verdict: Verdict, name: str) -> str:
    return next(check.reason for check in verdict.checks if check.name == name)


def failed_names(verdict: Verdict) -> list[str]:
    return [check.name for check in verdict.failures]


def jwk_of(pem: bytes) -> bytes:
    """The AK as a JWK (RFC 7518), built from the key's numbers."""

    def b64(value: int, size: int | None = None) -> str:
        raw = value.to_bytes(size or (value.bit_length() + 7) // 8, "big")
        return base64.urlsafe_b64encode(raw).rstrip(b"=").decode()

    key = serialization.load_pem_public_key(pem)
    if isinstance(key, rsa.RSAPublicKey):
        numbers = key.public_numbers()
        return json.dumps({"kty": "RSA", "n": b64(numbers.n), "e": b64(numbers.e)}).encode()
    assert isinstance(key, ec.EllipticCurvePublicKey)
    point = key.public_numbers()
    size = (key.curve.key_size + 7) // 8
    crv = {"secp256r1": "P-256", "secp384r1": "P-384"}[key.curve.name]
    return json.dumps(
        {"kty": "EC", "crv": crv, "x": b64(point.x, size), "y": b64(point.y, size)}
    ).encode()


def pem_of(key: rsa.RSAPublicKey | ec.EllipticCurvePublicKey) -> bytes:
    return key.public_bytes(
        serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo
    )


def ak_forms(ak: AttestationKey) -> dict[str, bytes]:
    return {
        "pem": ak.pem,
        "tpmt_public": ak.tpmt_public,
        "tpm2b_public": ak.tpm2b_public,
        "jwk": jwk_of(ak.pem),
    }


def evidence_of(quote: TpmQuote, ak: AttestationKey) -> TpmEvidence:
    return TpmEvidence(quote=quote.quote, signature=quote.signature, pcrs=quote.pcrs, ak=ak.pem)


def flip(data: bytes, offset: int, mask: int = 0x01) -> bytes:
    changed = bytearray(data)
    changed[offset] ^= mask
    return bytes(changed)


# --- The GCE vTPM sample (PROVENANCE.md): real evidence from a cloud TPM. ---


@pytest.mark.parametrize("bank", BANKS)
def test_gce_sample_verifies_with_its_nonce(bank: str) -> None:
    verdict = judge(sample(bank))

    assert verdict.verified, verdict.as_dict()
    assert [check.name for check in verdict.checks] == CHECKS
    assert outcomes(verdict)["pcr_reference"] is Outcome.SKIPPED
    claims = verdict.claims
    assert claims["magic"] == "0xff544347"
    assert claims["type"] == "quote"
    assert claims["extra_data"] == "9009"
    assert claims["clock_info"]["reset_count"] == 10
    assert claims["clock_info"]["restart_count"] == 0
    assert claims["firmware_version"] == "0x2016051100162800"
    assert claims["pcr_selection"] == [{"bank": bank, "pcrs": list(range(24))}]
    assert claims["signature"] == {"alg": "rsassa", "hash": "sha256"}
    assert claims["ak"] == {"type": "rsa", "bits": 2048}
    json.dumps(verdict.as_dict())  # the registry stores it as JSON


def test_gce_sample_claims_match_provenance() -> None:
    claims = judge(sample("sha256")).claims

    assert claims["pcr_digest"] == (
        "048937cbaaf28af85a5b0c0997e725097a0d94e05fcda104a82ee3fb6b2e1808"
    )
    assert claims["qualified_signer"].startswith("000b")  # a SHA-256 name


def test_gce_sample_matches_reference_values_from_provenance() -> None:
    reference = TpmReference(
        pcrs={
            "sha256": {
                0: bytes.fromhex(
                    "0f35c214608d93c7a6e68ae7359b4a8be5a0e99eea9107ece427c4dea4e439cf"
                ),
                7: bytes.fromhex(
                    "3365d7fa2b024c852913c06e04ffbfa6ea5289f743bbf1a76f7ffdf21ed84793"
                ),
            }
        }
    )
    verdict = judge(sample("sha256"), reference=reference)

    assert verdict.verified
    assert outcomes(verdict)["pcr_reference"] is Outcome.PASSED


def test_gce_sample_reference_mismatch_names_bank_index_and_both_values() -> None:
    found = sample_pcrs("sha256")[7]
    expected = bytes(32)
    verdict = judge(sample("sha256"), reference=TpmReference(pcrs={"sha256": {7: expected}}))

    assert failed_names(verdict) == ["pcr_reference"]
    assert reason(verdict, "pcr_reference") == (
        f"sha256:7 expected {expected.hex()} found {found.hex()}"
    )


def test_reference_for_a_pcr_the_quote_does_not_cover_fails() -> None:
    verdict = judge(sample("sha256"), reference=TpmReference(pcrs={"sha1": {0: bytes(20)}}))

    assert failed_names(verdict) == ["pcr_reference"]
    assert "sha1:0" in reason(verdict, "pcr_reference")
    assert "does not cover" in reason(verdict, "pcr_reference")


@pytest.mark.parametrize("bank", BANKS)
def test_every_flipped_byte_of_the_sample_quote_is_rejected(bank: str) -> None:
    evidence = sample(bank)
    for offset in range(len(evidence.quote)):
        tampered = replace(evidence, quote=flip(evidence.quote, offset))
        try:
            verdict = judge(tampered)
        except EvidenceFormatError:
            continue  # the flip broke the structure itself: also a rejection
        assert not verdict.verified, f"offset {offset}"
        assert "signature" in failed_names(verdict), f"offset {offset}"


def test_flipped_signature_byte_fails_signature() -> None:
    evidence = sample("sha256")
    tampered = replace(evidence, signature=flip(evidence.signature, len(evidence.signature) - 1))
    verdict = judge(tampered)

    assert failed_names(verdict) == ["signature"]
    assert "does not verify" in reason(verdict, "signature")


def test_wrong_nonce_fails_nonce() -> None:
    verdict = judge(sample("sha256"), nonce=bytes.fromhex("9010"))

    assert failed_names(verdict) == ["nonce"]
    assert reason(verdict, "nonce").startswith("extraData 9009 is not the nonce 9010")


def test_no_nonce_skips_the_nonce_check() -> None:
    verdict = judge(sample("sha256"), nonce=None)

    assert verdict.verified
    assert outcomes(verdict)["nonce"] is Outcome.SKIPPED


def test_changed_reported_pcr_value_fails_pcr_digest() -> None:
    evidence = sample("sha256")
    document = json.loads(evidence.pcrs)
    document["pcrs"]["7"] = "00" * 32
    verdict = judge(replace(evidence, pcrs=json.dumps(document).encode()))

    assert failed_names(verdict) == ["pcr_digest"]
    assert "048937cbaaf28af85a5b0c0997e725097a0d94e05fcda104a82ee3fb6b2e1808" in reason(
        verdict, "pcr_digest"
    )


def test_missing_reported_pcr_fails_pcr_selection_and_skips_digest() -> None:
    evidence = sample("sha256")
    document = json.loads(evidence.pcrs)
    del document["pcrs"]["23"]
    verdict = judge(replace(evidence, pcrs=json.dumps(document).encode()))

    assert failed_names(verdict) == ["pcr_selection"]
    assert "selected but not reported: sha256:23" in reason(verdict, "pcr_selection")
    assert outcomes(verdict)["pcr_digest"] is Outcome.SKIPPED


def test_reported_pcr_outside_the_selection_fails_pcr_selection() -> None:
    evidence = sample("sha256")
    both = {"sha256": json.loads(evidence.pcrs)["pcrs"], "sha1": {"0": "00" * 20}}
    verdict = judge(replace(evidence, pcrs=json.dumps(both).encode()))

    assert failed_names(verdict) == ["pcr_selection"]
    assert "not covered by the quote: sha1:0" in reason(verdict, "pcr_selection")


def test_multi_bank_json_verifies() -> None:
    evidence = sample("sha1")
    document = {"sha1": json.loads(evidence.pcrs)["pcrs"]}
    assert judge(replace(evidence, pcrs=json.dumps(document).encode())).verified


@pytest.mark.parametrize("form", ["pem_from_ak_cert", "der", "tpm2b_public", "jwk"])
def test_sample_ak_in_every_accepted_form(form: str) -> None:
    certificate = x509.load_der_x509_certificate((SAMPLE / "ak_cert.der").read_bytes())
    pem = certificate.public_key().public_bytes(
        serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo
    )
    tpmt = (SAMPLE / "ak_pub.tpmt_public").read_bytes()
    ak = {
        "pem_from_ak_cert": pem,
        "der": serialization.load_pem_public_key(pem).public_bytes(
            serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo
        ),
        "tpm2b_public": len(tpmt).to_bytes(2, "big") + tpmt,
        "jwk": jwk_of(pem),
    }[form]

    assert judge(replace(sample("sha256"), ak=ak)).verified


@pytest.mark.parametrize("other", ["rsa", "ecc"])
def test_another_keys_signature_fails_signature(other: str) -> None:
    key = (
        rsa.generate_private_key(65537, 2048)
        if other == "rsa"
        else ec.generate_private_key(ec.SECP256R1())
    )
    verdict = judge(replace(sample("sha256"), ak=pem_of(key.public_key())))

    assert failed_names(verdict) == ["signature"]
    assert "another key" in reason(verdict, "signature")


def test_replayed_sample_fails_replay() -> None:
    first = judge(sample("sha256"))
    last = TpmCounters.from_claims(first.claims)
    assert last == TpmCounters(reset_count=10, restart_count=0, clock=8219159552)
    again = judge(sample("sha256"), last_counters=last)

    assert failed_names(again) == ["replay"]
    assert reason(again, "replay").startswith("replayed or stale quote")
    assert reason(first, "replay").startswith("first quote seen for this asset")


def test_replay_names_what_made_the_quote_newer() -> None:
    claims = judge(sample("sha256")).claims
    now = TpmCounters.from_claims(claims)
    assert now is not None
    cases = {
        replace(now, clock=now.clock - 1000): "clock advanced 1000 ms",
        replace(now, restart_count=0, reset_count=9, clock=now.clock + 5): "was reset",
        replace(now, reset_count=11): "replayed or stale",  # a quote from before a reset
    }
    for last, expected in cases.items():
        assert expected in reason(judge(sample("sha256"), last_counters=last), "replay")


def test_counters_from_claims_without_clock_info_is_none() -> None:
    assert TpmCounters.from_claims({}) is None
    assert TpmCounters.from_claims({"clock_info": {"clock": "1", "reset_count": 0}}) is None


def test_wrong_magic_fails_magic() -> None:
    evidence = sample("sha256")
    verdict = judge(replace(evidence, quote=b"\xff\x54\x43\x48" + evidence.quote[4:]))

    assert failed_names(verdict) == ["magic", "signature"]
    assert "0xff544348" in reason(verdict, "magic")


# --- Unreadable input: EvidenceFormatError naming the part, nothing else. ---


@pytest.mark.parametrize("part", ["quote", "signature", "ak"])
def test_truncated_input_raises_format_error_at_every_length(part: str) -> None:
    evidence = sample("sha256")
    whole: bytes = getattr(evidence, part)
    for length in range(len(whole)):
        with pytest.raises(EvidenceFormatError) as raised:
            judge(replace(evidence, **{part: whole[:length]}))
        assert raised.value.part == part, length


@pytest.mark.parametrize("part", ["quote", "signature", "pcrs", "ak"])
def test_oversized_input_raises_format_error(part: str) -> None:
    evidence = replace(sample("sha256"), **{part: bytes(MAX_EVIDENCE_BYTES + 1)})
    with pytest.raises(EvidenceFormatError, match="oversized") as raised:
        judge(evidence)
    assert raised.value.part == part


@pytest.mark.parametrize("part", ["quote", "signature"])
def test_trailing_bytes_raise_format_error(part: str) -> None:
    evidence = sample("sha256")
    with pytest.raises(EvidenceFormatError, match="unexpected bytes") as raised:
        judge(replace(evidence, **{part: getattr(evidence, part) + b"\x00"}))
    assert raised.value.part == part


@pytest.mark.parametrize(
    ("pcrs", "message"),
    [
        (b'{"hash_alg": "md5", "pcrs": {}}', "unknown PCR bank 'md5'"),
        (b'{"pcrs": {}}', "hash_alg"),
        (b'{"sha256": {"0": "zz"}}', "is not hex"),
        (b'{"sha256": {"0": "00"}}', "1 bytes, a sha256 PCR holds 32"),
        (b'{"sha256": {"x": "00"}}', "not a PCR index"),
        (b'{"sha256": ["00"]}', "expected an object"),
        (b"[1, 2]", "must be an object"),
        (bytes(31), "neither JSON nor tpm2-tools values output"),
    ],
)
def test_unreadable_pcr_values_raise_format_error(pcrs: bytes, message: str) -> None:
    with pytest.raises(EvidenceFormatError, match=message) as raised:
        judge(replace(sample("sha256"), pcrs=pcrs))
    assert raised.value.part == "pcrs"


@pytest.mark.parametrize(
    ("ak", "message"),
    [
        (b"-----BEGIN PUBLIC KEY-----\nAAAA\n-----END PUBLIC KEY-----\n", "not a readable"),
        (b'{"kty": "oct", "k": "AAAA"}', "kty 'oct'"),
        (b'{"kty": "EC", "crv": "P-192", "x": "AA", "y": "AA"}', "P-192"),
        (b'{"kty": "EC", "crv": "P-256", "x": "AQ", "y": "AQ"}', "usable public key"),
        (b'{"kty": "RSA", "n": "AQAB"}', "'e' is missing"),
        (b"{not json", "not valid JSON"),
        (b"\x00\x08\x00\x0b", "not a readable TPMT_PUBLIC"),
    ],
)
def test_unreadable_attestation_key_raises_format_error(ak: bytes, message: str) -> None:
    with pytest.raises(EvidenceFormatError, match=message) as raised:
        load_attestation_key(ak)
    assert raised.value.part == "ak"


def test_non_tpm_key_type_is_refused() -> None:
    from cryptography.hazmat.primitives.asymmetric import ed25519

    ed = ed25519.Ed25519PrivateKey.generate().public_key()
    with pytest.raises(EvidenceFormatError, match="not a TPM attestation key"):
        load_attestation_key(pem_of(ed))  # type: ignore[arg-type]


# --- Fuzzing: whatever the bytes, a Verdict or EvidenceFormatError. ---


def judged_or_refused(evidence: TpmEvidence) -> Verdict | None:
    try:
        return judge(evidence)
    except EvidenceFormatError as error:
        assert error.part in ("quote", "signature", "pcrs", "ak")
        assert error.problem
        return None


@FUZZ
@given(
    part=st.sampled_from(["quote", "signature", "pcrs", "ak"]),
    data=st.binary(min_size=0, max_size=600),
)
def test_fuzz_random_bytes_in_any_part(part: str, data: bytes) -> None:
    judged_or_refused(replace(sample("sha256"), **{part: data}))


@FUZZ
@given(
    part=st.sampled_from(["quote", "signature", "ak"]),
    flips=st.lists(st.tuples(st.integers(0, 10_000), st.integers(1, 255)), min_size=1, max_size=4),
)
def test_fuzz_byte_flips_never_verify(part: str, flips: list[tuple[int, int]]) -> None:
    evidence = sample("sha384")
    data = bytearray(getattr(evidence, part))
    for position, mask in flips:
        data[position % len(data)] ^= mask
    verdict = judged_or_refused(replace(evidence, **{part: bytes(data)}))
    if verdict is None or bytes(data) == getattr(evidence, part):
        return
    if part == "ak" and same_key(bytes(data), evidence.ak):
        return  # a TPMT_PUBLIC field outside the key itself (nameAlg, attributes, policy)
    assert not verdict.verified


def same_key(one: bytes, other: bytes) -> bool:
    return pem_of(load_attestation_key(one)) == pem_of(load_attestation_key(other))


@FUZZ
@given(cut=st.integers(0, 400), tail=st.binary(max_size=64))
def test_fuzz_truncated_and_extended_structures(cut: int, tail: bytes) -> None:
    evidence = sample("sha1")
    for part in ("quote", "signature", "ak"):
        whole: bytes = getattr(evidence, part)
        judged_or_refused(replace(evidence, **{part: whole[: cut % (len(whole) + 1)] + tail}))


_JSON_LEAVES = st.none() | st.booleans() | st.integers() | st.text(max_size=70)
_JSON = st.recursive(
    _JSON_LEAVES,
    lambda inner: st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=8), inner),
    max_leaves=12,
)


@FUZZ
@given(
    jwk=st.fixed_dictionaries(
        {},
        optional={
            "kty": st.sampled_from(["RSA", "EC", "oct", ""]) | _JSON,
            "crv": st.sampled_from(["P-256", "P-384", "P-521", "X25519"]) | _JSON,
            "n": st.binary(max_size=300).map(lambda raw: base64.urlsafe_b64encode(raw).decode())
            | _JSON,
            "e": st.sampled_from(["AQAB", "Aw", "", "!!"]) | _JSON,
            "x": st.binary(max_size=60).map(lambda raw: base64.urlsafe_b64encode(raw).decode())
            | _JSON,
            "y": st.binary(max_size=60).map(lambda raw: base64.urlsafe_b64encode(raw).decode())
            | _JSON,
        },
    )
)
def test_fuzz_jwk_parsing(jwk: dict[str, Any]) -> None:
    try:
        load_attestation_key(json.dumps(jwk).encode())
    except EvidenceFormatError as error:
        assert error.part == "ak"


@FUZZ
@given(document=_JSON)
def test_fuzz_pcr_json(document: Any) -> None:
    judged_or_refused(replace(sample("sha256"), pcrs=json.dumps(document).encode()))


# --- A real TPM (swtpm): quotes made by libtpms with keys created for the test. ---

# (AK algorithm, options, PCR banks quoted): RSA and ECC keys, RSASSA and RSAPSS, P-256 and
# P-384, and every bank, alone and together. The signature hash digests the PCRs, not the bank's.
REAL_QUOTES = [
    pytest.param("rsa", {}, {"sha256": [0, 1, 2, 7]}, id="rsassa-sha256-bank-sha256"),
    pytest.param("rsa", {"pss": True}, {"sha1": [0, 7, 16]}, id="rsapss-sha256-bank-sha1"),
    pytest.param("ecc", {}, {"sha384": [0, 10]}, id="ecdsa-p256-bank-sha384"),
    pytest.param(
        "ecc",
        {"curve": "p384", "hash": "sha384"},
        {"sha1": [0], "sha256": [1, 2], "sha384": [3, 23]},
        id="ecdsa-p384-sha384-all-banks",
    ),
]


@pytest.mark.parametrize(("alg", "options", "banks"), REAL_QUOTES)
def test_real_quote_verifies_with_the_ak_in_every_form(
    tpm_simulator: SoftwareTpm, alg: Any, options: dict[str, Any], banks: dict[str, list[int]]
) -> None:
    ak = tpm_simulator.create_ak(alg, **options)
    quote = tpm_simulator.quote(ak, b"drydock-nonce-1", banks)

    for form, key in ak_forms(ak).items():
        verdict = judge(replace(evidence_of(quote, ak), ak=key), nonce=b"drydock-nonce-1")
        assert verdict.verified, (form, verdict.as_dict())
        assert [check.name for check in verdict.checks] == CHECKS
    claims = verdict.claims
    assert claims["pcr_selection"] == [{"bank": bank, "pcrs": pcrs} for bank, pcrs in banks.items()]
    assert claims["signature"] == {
        "alg": ak.scheme,
        "hash": options.get("hash", "sha256"),
    }
    assert claims["ak"] == (
        {"type": "rsa", "bits": 2048}
        if alg == "rsa"
        else {"type": "ecc", "curve": "P-384" if options.get("curve") == "p384" else "P-256"}
    )


@pytest.mark.parametrize(("alg", "options", "banks"), REAL_QUOTES)
def test_real_quote_with_a_bare_signature_verifies_and_tampering_still_fails(
    tpm_simulator: SoftwareTpm, alg: Any, options: dict[str, Any], banks: dict[str, list[int]]
) -> None:
    # The signature as cloud vTPM tooling delivers it (tpm2_quote -f plain): no TPMT_SIGNATURE,
    # so its scheme comes from the AK's type and its hash from the quote's pcrDigest.
    ak = tpm_simulator.create_ak(alg, **options)
    quote = tpm_simulator.quote(ak, b"bare-1", banks, signature_format="plain")
    evidence = evidence_of(quote, ak)
    assert not is_tpmt_signature(evidence.signature)

    for form, key in ak_forms(ak).items():
        verdict = judge(replace(evidence, ak=key), nonce=b"bare-1")
        assert verdict.verified, (form, verdict.as_dict())
        assert [check.name for check in verdict.checks] == CHECKS
    assert verdict.claims["signature"] == {
        "alg": ak.scheme,
        "hash": options.get("hash", "sha256"),
        "form": "raw",
    }
    assert reason(verdict, "signature").startswith(f"bare {ak.scheme}/")
    check_signature_form(evidence.signature)  # what the edge accepts before it knows the key

    # A flipped byte of the quote or of the bare signature, or another key: not verified.
    for tampered in (
        replace(evidence, quote=flip(evidence.quote, len(evidence.quote) - 1)),
        replace(evidence, signature=flip(evidence.signature, len(evidence.signature) // 2)),
    ):
        verdict = judge(tampered, nonce=b"bare-1")
        assert not verdict.verified
        assert "signature" in failed_names(verdict) or "pcr_digest" in failed_names(verdict)
    other = tpm_simulator.create_ak(alg, **options)
    verdict = judge(replace(evidence, ak=other.pem), nonce=b"bare-1")
    assert failed_names(verdict) == ["signature"]


def test_a_bare_signature_of_the_wrong_size_for_the_key_is_unreadable() -> None:
    evidence = sample("sha256")  # an RSA-2048 AK
    for data in (bytes(255), bytes(257), b"\x30\x06\x02\x01\x01\x02\x01\x01"):
        with pytest.raises(EvidenceFormatError) as raised:
            judge(replace(evidence, signature=data))
        assert raised.value.part == "signature"
        assert "bare RSA signature" in raised.value.problem
    with pytest.raises(EvidenceFormatError, match="neither a TPMT_SIGNATURE nor a bare"):
        check_signature_form(bytes(100))


def test_real_quote_binary_pcr_values_verify(tpm_simulator: SoftwareTpm) -> None:
    ak = tpm_simulator.create_ak("ecc")
    quote = tpm_simulator.quote(ak, b"n", {"sha256": [0, 5], "sha1": [3]}, pcrs_format="values")
    verdict = judge(replace(evidence_of(quote, ak), pcrs=quote.pcrs_output), nonce=b"n")

    assert verdict.verified, verdict.as_dict()


def test_real_quote_with_wrong_nonce_fails_nonce(tpm_simulator: SoftwareTpm) -> None:
    ak = tpm_simulator.create_ak("ecc")
    quote = tpm_simulator.quote(ak, b"challenge-a", {"sha256": [0]})
    verdict = judge(evidence_of(quote, ak), nonce=b"challenge-b")

    assert failed_names(verdict) == ["nonce"]


def test_real_pcr_extended_since_reference_fails_pcr_reference(
    tpm_simulator: SoftwareTpm,
) -> None:
    ak = tpm_simulator.create_ak("ecc")
    banks = {"sha256": [0, 14], "sha1": [14]}
    golden = tpm_simulator.quote(ak, b"1", banks)
    reported = json.loads(golden.pcrs)
    reference = TpmReference(
        pcrs={
            bank: {int(index): bytes.fromhex(value) for index, value in values.items()}
            for bank, values in reported.items()
        }
    )
    assert judge(evidence_of(golden, ak), nonce=b"1", reference=reference).verified

    event = tpm_simulator.extend(14, "sha256", b"an unexpected boot component")
    after = tpm_simulator.quote(ak, b"2", banks)
    verdict = judge(evidence_of(after, ak), nonce=b"2", reference=reference)

    assert failed_names(verdict) == ["pcr_reference"]
    old = reference.pcrs["sha256"][14]
    new = hashes.Hash(hashes.SHA256())
    new.update(old + event)
    assert reason(verdict, "pcr_reference") == (
        f"sha256:14 expected {old.hex()} found {new.finalize().hex()}"
    )
    assert outcomes(verdict)["pcr_digest"] is Outcome.PASSED


def test_real_quote_changed_pcr_value_fails_pcr_digest(tpm_simulator: SoftwareTpm) -> None:
    ak = tpm_simulator.create_ak("rsa")
    quote = tpm_simulator.quote(ak, b"1", {"sha384": [0, 1]})
    reported = json.loads(quote.pcrs)
    reported["sha384"]["1"] = "11" * 48
    verdict = judge(replace(evidence_of(quote, ak), pcrs=json.dumps(reported).encode()), nonce=b"1")

    assert failed_names(verdict) == ["pcr_digest"]


def test_real_quote_signed_by_another_tpm_key_fails_signature(
    tpm_simulator: SoftwareTpm,
) -> None:
    registered = tpm_simulator.create_ak("ecc")
    other = tpm_simulator.create_ak("ecc")
    quote = tpm_simulator.quote(other, b"1", {"sha256": [0]})
    verdict = judge(evidence_of(quote, registered), nonce=b"1")

    assert failed_names(verdict) == ["signature"]


def test_real_certify_signed_by_the_ak_is_not_a_quote(tpm_simulator: SoftwareTpm) -> None:
    # A genuine TPM signature over another kind of attestation must not pass for a quote.
    ak = tpm_simulator.create_ak("ecc")
    attest, signature = tpm_simulator.certify(ak)
    verdict = judge(TpmEvidence(attest, signature, b"{}", ak.pem), nonce=None)

    assert failed_names(verdict) == ["type"]
    assert reason(verdict, "type") == "type is certify (0x8017), not a quote (0x8018)"
    assert outcomes(verdict)["signature"] is Outcome.PASSED
    assert outcomes(verdict)["pcr_digest"] is Outcome.SKIPPED


def test_real_replay_restart_and_reset(tpm_simulator: SoftwareTpm) -> None:
    ak = tpm_simulator.create_ak("ecc")

    def quote(nonce: bytes) -> TpmEvidence:
        return evidence_of(tpm_simulator.quote(ak, nonce, {"sha256": [0]}), ak)

    def accepted(evidence: TpmEvidence, nonce: bytes, last: TpmCounters | None) -> TpmCounters:
        verdict = judge(evidence, nonce=nonce, last_counters=last)
        assert verdict.verified, verdict.as_dict()
        counters = TpmCounters.from_claims(verdict.claims)
        assert counters is not None
        return counters

    first = quote(b"1")
    seen = accepted(first, b"1", None)
    # The same quote sent again once the registry stored its counters: refused.
    replayed = judge(first, nonce=b"1", last_counters=seen)
    assert failed_names(replayed) == ["replay"]
    assert reason(replayed, "replay").startswith("replayed or stale quote")

    second = quote(b"2")
    later = accepted(second, b"2", seen)
    assert "clock advanced" in reason(judge(second, nonce=b"2", last_counters=seen), "replay")
    # An older quote after a newer one was accepted: stale.
    assert failed_names(judge(first, nonce=b"1", last_counters=later)) == ["replay"]

    tpm_simulator.restart()
    third = quote(b"3")
    restarted = accepted(third, b"3", later)
    assert restarted.restart_count == later.restart_count + 1
    assert "restarted" in reason(judge(third, nonce=b"3", last_counters=later), "replay")

    tpm_simulator.reset()
    fourth = quote(b"4")
    reset = accepted(fourth, b"4", restarted)
    assert (reset.reset_count, reset.restart_count) == (restarted.reset_count + 1, 0)
    assert "was reset" in reason(judge(fourth, nonce=b"4", last_counters=restarted), "replay")

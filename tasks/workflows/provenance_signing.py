"""The fleet's provenance key, and a run's Statement signed and verified as a DSSE envelope.

The key is Ed25519: a PEM private key in DRYDOCK_WORKFLOW_PROVENANCE_KEY_FILE when an operator
wants one kept apart (and its public half published), else derived from DRYDOCK_SECRET_KEY with
HKDF (its own ``info``, so it is no other key derived from the same secret), so every worker and
API process of a fleet signs and verifies with the same key and nothing has to be distributed.

The envelope is DSSE as securesystemslib makes it (its pre-authentication encoding, payload
type ``application/vnd.in-toto+json``): the Statement's canonical JSON, signed once, the
signature carrying the key's id (sha256 of the raw public key, hex) so a verifier holding
several keys, or the wrong one, can tell. Verification never raises on what it is given: a
tampered envelope, Statement or step log is a list of named problems.
"""

from __future__ import annotations

import binascii
import copy
import hashlib
import json
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from cryptography.exceptions import UnsupportedAlgorithm
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey, Ed25519PublicKey
from cryptography.hazmat.primitives.kdf.hkdf import HKDF
from cryptography.hazmat.primitives.serialization import (
    Encoding,
    PublicFormat,
    load_pem_private_key,
    load_pem_public_key,
)
from securesystemslib.dsse import Envelope
from securesystemslib.exceptions import FormatError, UnverifiedSignatureError

# The package re-exports these without __all__; mypy's strict mode calls that implicit.
from securesystemslib.signer import CryptoSigner, SSlibKey  # type: ignore[attr-defined]

from kernel.errors import DrydockError
from kernel.settings import Settings, get_settings
from tasks.workflows.provenance import (
    ProblemKind,
    ProvenanceProblem,
    canonical_json,
    check_statement,
)

PAYLOAD_TYPE = "application/vnd.in-toto+json"
_KEY_INFO = b"drydock workflow provenance signing key v1"


class ProvenanceKeyError(DrydockError):
    """The fleet has no usable provenance key."""


class ProvenanceKeyUnavailableError(ProvenanceKeyError):
    def __init__(self) -> None:
        super().__init__(
            "workflow provenance needs a signing key: set DRYDOCK_WORKFLOW_PROVENANCE_KEY_FILE "
            "(a PEM Ed25519 private key) or DRYDOCK_SECRET_KEY (one is derived from it)"
        )


# ---- the key --------------------------------------------------------------------------------


def fleet_signing_key(settings: Settings | None = None) -> Ed25519PrivateKey:
    """The fleet's Ed25519 provenance key (see the module's doc); ProvenanceKeyError when none
    is configured or the configured file holds no unencrypted Ed25519 private key."""
    settings = settings or get_settings()
    if settings.workflow_provenance_key_file:
        return _key_from_file(Path(settings.workflow_provenance_key_file))
    if settings.secret_key is None:
        raise ProvenanceKeyUnavailableError()
    derive = HKDF(algorithm=hashes.SHA256(), length=32, salt=None, info=_KEY_INFO)
    seed = derive.derive(settings.secret_key.get_secret_value().encode())
    return Ed25519PrivateKey.from_private_bytes(seed)


def _key_from_file(path: Path) -> Ed25519PrivateKey:
    where = f"DRYDOCK_WORKFLOW_PROVENANCE_KEY_FILE ({path})"
    try:
        data = path.read_bytes()
    except OSError as exc:
        raise ProvenanceKeyError(f"{where} cannot be read: {exc.strerror}") from None
    try:
        key = load_pem_private_key(data, password=None)
    except (ValueError, TypeError, UnsupportedAlgorithm):
        # The message of the library may quote the file: say only what is wrong with it.
        raise ProvenanceKeyError(
            f"{where} holds no unencrypted PEM private key (make one with "
            "`openssl genpkey -algorithm ed25519`)"
        ) from None
    if not isinstance(key, Ed25519PrivateKey):
        raise ProvenanceKeyError(f"{where} holds a {type(key).__name__}, not an Ed25519 key")
    return key


def public_key_pem(key: Ed25519PrivateKey | Ed25519PublicKey) -> str:
    public = key.public_key() if isinstance(key, Ed25519PrivateKey) else key
    return public.public_bytes(Encoding.PEM, PublicFormat.SubjectPublicKeyInfo).decode()


def fleet_public_key_pem(settings: Settings | None = None) -> str:
    """What a verifier outside the fleet needs (``drydock workflows provenance --verify``
    offline, a consumer of the envelopes)."""
    return public_key_pem(fleet_signing_key(settings))


def key_id(key: Ed25519PrivateKey | Ed25519PublicKey) -> str:
    """sha256 (hex) of the raw public key: the envelope signature's ``keyid``."""
    public = key.public_key() if isinstance(key, Ed25519PrivateKey) else key
    return hashlib.sha256(public.public_bytes(Encoding.Raw, PublicFormat.Raw)).hexdigest()


def fleet_builder_id(key: Ed25519PrivateKey | Ed25519PublicKey) -> str:
    """The Statement's builder id: Drydock, and which fleet by its provenance key."""
    return f"https://drydock.dev/fleet#{key_id(key)}"


def _sslib_key(public: Ed25519PublicKey) -> SSlibKey:
    return SSlibKey.from_crypto(public, keyid=key_id(public))


# ---- signing and verifying ------------------------------------------------------------------


def sign_statement(statement: Mapping[str, Any], key: Ed25519PrivateKey) -> dict[str, Any]:
    """The Statement as a DSSE envelope (JSON-ready dict) signed with ``key``. Ed25519 is
    deterministic: the same Statement and key give the same envelope."""
    envelope = Envelope(canonical_json(statement), PAYLOAD_TYPE, {})
    envelope.sign(CryptoSigner(key, _sslib_key(key.public_key())))
    signed: dict[str, Any] = envelope.to_dict()
    return signed


@dataclass(frozen=True)
class ProvenanceVerification:
    ok: bool
    problems: list[ProvenanceProblem] = field(default_factory=list)
    # The Statement as the envelope carries it (None: unreadable), whether or not it verified.
    statement: dict[str, Any] | None = None
    keyid: str | None = None

    def as_dict(self) -> dict[str, Any]:
        return {
            "ok": self.ok,
            "keyid": self.keyid,
            "problems": [problem.as_dict() for problem in self.problems],
        }


def verify_provenance(
    envelope: Mapping[str, Any],
    step_logs: Mapping[str, Mapping[str, Any]],
    public_key: Ed25519PublicKey | Ed25519PrivateKey | str | bytes,
) -> ProvenanceVerification:
    """Whether ``envelope`` is signed by ``public_key`` (a key, or its PEM) over a Statement
    naming exactly ``step_logs`` (by step name, as stored) by their digests, with subjects that
    are the logs' commits. Every problem found is named; nothing raises on tampered input."""
    public = _public_key(public_key)
    expected_keyid = key_id(public)
    parsed = _parse_envelope(envelope)
    if isinstance(parsed, ProvenanceProblem):
        return ProvenanceVerification(ok=False, problems=[parsed], keyid=expected_keyid)
    problems: list[ProvenanceProblem] = []
    if parsed.payload_type != PAYLOAD_TYPE:
        problems.append(
            ProvenanceProblem(
                ProblemKind.WRONG_PAYLOAD_TYPE,
                f"the payload type is {parsed.payload_type!r}, not {PAYLOAD_TYPE!r}",
            )
        )
    problems += _signature_problems(parsed, public, expected_keyid)
    try:
        statement = json.loads(parsed.payload)
    except (ValueError, UnicodeDecodeError):
        statement = None
    problems += check_statement(statement, step_logs)
    return ProvenanceVerification(
        ok=not problems,
        problems=problems,
        statement=statement if isinstance(statement, dict) else None,
        keyid=expected_keyid,
    )


def _public_key(
    key: Ed25519PublicKey | Ed25519PrivateKey | str | bytes,
) -> Ed25519PublicKey:
    if isinstance(key, Ed25519PrivateKey):
        return key.public_key()
    if isinstance(key, Ed25519PublicKey):
        return key
    try:
        loaded = load_pem_public_key(key.encode() if isinstance(key, str) else key)
    except (ValueError, UnsupportedAlgorithm):
        raise ProvenanceKeyError("the verification key is no PEM public key") from None
    if not isinstance(loaded, Ed25519PublicKey):
        raise ProvenanceKeyError(
            f"the verification key is a {type(loaded).__name__}, not an Ed25519 key"
        )
    return loaded


def _parse_envelope(envelope: Any) -> Envelope | ProvenanceProblem:
    if not isinstance(envelope, Mapping):
        return ProvenanceProblem(ProblemKind.MALFORMED_ENVELOPE, "the envelope is no JSON object")
    try:
        # from_dict rewrites the signatures it reads: give it a copy, not the caller's.
        return Envelope.from_dict(copy.deepcopy(dict(envelope)))
    except (KeyError, TypeError, ValueError, AttributeError, FormatError, binascii.Error) as exc:
        what = f"field {exc}" if isinstance(exc, KeyError) else type(exc).__name__
        return ProvenanceProblem(
            ProblemKind.MALFORMED_ENVELOPE,
            f"the envelope is not DSSE (payload, payloadType, signatures): {what}",
        )


def _signature_problems(
    envelope: Envelope, public: Ed25519PublicKey, expected_keyid: str
) -> list[ProvenanceProblem]:
    if not envelope.signatures:
        return [ProvenanceProblem(ProblemKind.BAD_SIGNATURE, "the envelope is not signed")]
    signature = envelope.signatures.get(expected_keyid)
    if signature is None:
        others = ", ".join(sorted(envelope.signatures))
        return [
            ProvenanceProblem(
                ProblemKind.WRONG_KEY,
                f"signed by key {others}, not by the fleet's key {expected_keyid}",
            )
        ]
    try:
        _sslib_key(public).verify_signature(signature, envelope.pae())
    except UnverifiedSignatureError:
        return [
            ProvenanceProblem(
                ProblemKind.BAD_SIGNATURE,
                f"the signature of key {expected_keyid} does not match the payload (the "
                "envelope was changed after it was signed)",
            )
        ]
    return []

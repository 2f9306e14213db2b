"""Approval tokens: an approver's decision, signed, bound to one run, and expiring.

A token is a JWT (HS256, PyJWT) whose subject is the run, carrying the tenant, the approver
and an id; the run row keeps the approver, the expiry and the id, so a token is honoured only
for the run it names and only while both it and the run's approval stand. The key is
DRYDOCK_REMEDIATION_SIGNING_KEY, or one derived from DRYDOCK_SECRET_KEY (HKDF), so every
worker and API process of a fleet can check what any of them issued.
"""

from __future__ import annotations

import secrets
import uuid
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from enum import StrEnum

import jwt
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.kdf.hkdf import HKDF

from kernel.errors import DrydockError
from kernel.settings import Settings, get_settings

ALGORITHM = "HS256"
# Tokens of other JWT issuers (or of other Drydock purposes) are refused by the audience: a
# remediation run's approval cannot pass for a promotion's, nor the other way round.
AUDIENCE = "drydock:remediation-approval"
PROMOTION_AUDIENCE = "drydock:runtime-promotion"
WORKSPACE_AUDIENCE = "drydock:remediation-workspace-promotion"
_KEY_INFO = b"drydock remediation approval tokens v1"


class TokenProblem(StrEnum):
    """Why a token was refused, as audited."""

    MISSING = "missing"
    MALFORMED = "malformed"
    FORGED = "forged"
    OTHER_RUN = "other_run"
    EXPIRED = "expired"
    SUPERSEDED = "superseded"


class ApprovalsUnavailableError(DrydockError):
    def __init__(self) -> None:
        super().__init__(
            "approvals need a signing key: set DRYDOCK_REMEDIATION_SIGNING_KEY (or "
            "DRYDOCK_SECRET_KEY, from which one is derived)"
        )


class ApprovalTokenError(DrydockError):
    """A token that does not approve this run. Never retried: it will not get better."""

    def __init__(self, problem: TokenProblem, message: str) -> None:
        super().__init__(message)
        self.problem = problem


@dataclass(frozen=True)
class ApprovalGrant:
    """What a valid token says: who approved which run of which tenant, until when."""

    run_id: uuid.UUID
    tenant: str
    approver: str
    token_id: str
    issued_at: datetime
    expires_at: datetime


def signing_key(settings: Settings | None = None) -> bytes:
    settings = settings or get_settings()
    if settings.remediation_signing_key is not None:
        return settings.remediation_signing_key.get_secret_value().encode()
    if settings.secret_key is None:
        raise ApprovalsUnavailableError()
    derive = HKDF(algorithm=hashes.SHA256(), length=32, salt=None, info=_KEY_INFO)
    return derive.derive(settings.secret_key.get_secret_value().encode())


def new_grant(
    run_id: uuid.UUID, tenant: str, approver: str, *, ttl_seconds: int, now: datetime
) -> ApprovalGrant:
    # JWT times have one-second resolution: keep the grant's times whole so a token minted
    # again from the stored grant is the same token.
    issued = now.astimezone(UTC).replace(microsecond=0)
    return ApprovalGrant(
        run_id=run_id,
        tenant=tenant,
        approver=approver,
        token_id=secrets.token_hex(16),
        issued_at=issued,
        expires_at=issued + timedelta(seconds=ttl_seconds),
    )


def mint(grant: ApprovalGrant, key: bytes, audience: str = AUDIENCE) -> str:
    """The token of a grant. Deterministic: the same grant and key give the same token, so a
    run whose job could not be sent is sent later with the token its approver was given."""
    claims = {
        "sub": str(grant.run_id),
        "ten": grant.tenant,
        "apr": grant.approver,
        "jti": grant.token_id,
        "iat": int(grant.issued_at.timestamp()),
        "exp": int(grant.expires_at.timestamp()),
        "aud": audience,
    }
    return jwt.encode(claims, key, algorithm=ALGORITHM)


def verify(
    token: str, *, run_id: uuid.UUID, tenant: str, key: bytes, audience: str = AUDIENCE
) -> ApprovalGrant:
    """The grant a token carries, if it is genuine, unexpired, and for this run and tenant;
    otherwise ApprovalTokenError saying which of those it is not."""
    try:
        claims = jwt.decode(
            token,
            key,
            algorithms=[ALGORITHM],
            audience=audience,
            options={"require": ["sub", "ten", "apr", "jti", "iat", "exp", "aud"]},
        )
    except jwt.ExpiredSignatureError:
        raise ApprovalTokenError(
            TokenProblem.EXPIRED, f"the approval token of run {run_id} has expired"
        ) from None
    except jwt.InvalidSignatureError:
        raise ApprovalTokenError(
            TokenProblem.FORGED,
            "the approval token's signature is not this fleet's: it was tampered with or forged",
        ) from None
    except jwt.InvalidTokenError as exc:
        raise ApprovalTokenError(
            TokenProblem.MALFORMED, f"the approval token is not a valid approval token: {exc}"
        ) from None
    if claims["sub"] != str(run_id) or claims["ten"] != tenant:
        raise ApprovalTokenError(
            TokenProblem.OTHER_RUN,
            f"the approval token approves run {claims['sub']} of tenant {claims['ten']}, "
            f"not run {run_id} of tenant {tenant}",
        )
    return ApprovalGrant(
        run_id=run_id,
        tenant=tenant,
        approver=str(claims["apr"]),
        token_id=str(claims["jti"]),
        issued_at=datetime.fromtimestamp(claims["iat"], UTC),
        expires_at=datetime.fromtimestamp(claims["exp"], UTC),
    )

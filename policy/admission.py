"""Admission control: the policy every enqueue passes before a job reaches a queue.

``admit`` gathers the facts (the tenant's rules, the bound target asset, the approval token),
asks the pure engine (``policy.engine.decide_admission``) and records the decision
when there was anything to decide: always when refused, and whenever a tenant or a target was
involved. A job with nothing to decide (an operator's job with no target) carries the trivial
context and adds no row, which keeps the enqueue path as cheap as before.

Protected targets need an approval token: a JWT (the remediation approvals' key, its own
audience) naming the asset, the task-name pattern it covers and the tenant, expiring.
"""

from __future__ import annotations

import fnmatch
import secrets
import uuid
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Any

import jwt
from sqlalchemy.orm import Session

from kernel.decisions import AdmissionFacts, Decision, TokenCheck
from kernel.errors import DrydockError, NotFoundError
from models import admission_tokens as token_store
from models import policy as policy_store
from models import trust
from models.policy import PolicyDecisionKind
from policy.approvals import ALGORITHM, signing_key
from policy.engine import decide_admission

AUDIENCE = "drydock:admission-approval"


class AdmissionRefusedError(DrydockError):
    """The job broke an admission rule; nothing was enqueued. The decision is recorded."""

    def __init__(self, task_name: str, decision: Decision, decision_id: int) -> None:
        super().__init__(
            f"admission refused {task_name} (decision {decision_id}): {decision.summary}"
        )
        self.decision = decision
        self.decision_id = decision_id


@dataclass(frozen=True)
class Admission:
    decision: Decision
    # None: nothing to decide, so nothing recorded.
    decision_id: int | None
    tenant: str | None
    target_asset_id: uuid.UUID | None

    def context(self) -> dict[str, Any]:
        """What the job row keeps, and its outcome event repeats."""
        return {
            "decision_id": self.decision_id,
            "allowed": self.decision.allowed,
            "tenant": self.tenant,
            "target_asset_id": str(self.target_asset_id) if self.target_asset_id else None,
            "gates": [{"gate": g.name.value, "passed": g.passed} for g in self.decision.gates],
        }


@dataclass(frozen=True)
class IssuedToken:
    """An approval token as handed to the approver, and the id its row is kept under."""

    token: str
    id: str
    expires_at: datetime


def issue_token(
    *,
    asset_id: uuid.UUID,
    task_pattern: str,
    tenant: str,
    approver: str,
    ttl_seconds: int,
    now: datetime | None = None,
) -> IssuedToken:
    """An approval to enqueue one job matching ``task_pattern`` on a protected asset, recorded
    (who, for what, until when) so that its use is single and it can be revoked."""
    issued = (now or datetime.now(UTC)).replace(microsecond=0)
    expires = issued + timedelta(seconds=ttl_seconds)
    token_id = secrets.token_hex(16)
    claims = {
        "sub": str(asset_id),
        "tsk": task_pattern,
        "ten": tenant,
        "apr": approver,
        "jti": token_id,
        "iat": int(issued.timestamp()),
        "exp": int(expires.timestamp()),
        "aud": AUDIENCE,
    }
    from models.db import session_scope

    with session_scope() as session:
        token_store.record_issued(
            session,
            token_store.AdmissionToken(
                id=token_id,
                asset_id=asset_id,
                tenant=tenant,
                task_pattern=task_pattern,
                approver=approver,
                issued_at=issued,
                expires_at=expires,
            ),
        )
    return IssuedToken(jwt.encode(claims, signing_key(), algorithm=ALGORITHM), token_id, expires)


@dataclass(frozen=True)
class CheckedToken:
    """A presented token: its id once its signature is the fleet's, and why it does not admit
    the job (empty when it does)."""

    id: str | None
    problem: str


def check_token(token: str, *, asset_id: uuid.UUID, task_name: str, tenant: str) -> CheckedToken:
    """Whether the token's signature and claims approve this task on this asset for this
    tenant. Its row (revoked? used?) is the caller's to check, in the enqueue's transaction."""
    try:
        claims = jwt.decode(
            token,
            signing_key(),
            algorithms=[ALGORITHM],
            audience=AUDIENCE,
            options={"require": ["sub", "tsk", "ten", "apr", "exp", "aud", "jti"]},
        )
    except jwt.ExpiredSignatureError:
        return CheckedToken(None, "it has expired")
    except jwt.InvalidSignatureError:
        return CheckedToken(None, "its signature is not this fleet's (tampered with or forged)")
    except jwt.InvalidTokenError as exc:
        return CheckedToken(None, f"it is not an admission approval token ({exc})")
    token_id = str(claims["jti"])
    if claims["sub"] != str(asset_id):
        return CheckedToken(token_id, f"it approves asset {claims['sub']}, not {asset_id}")
    if claims["ten"] != tenant:
        return CheckedToken(token_id, f"it is for tenant {claims['ten']}, not {tenant}")
    if not fnmatch.fnmatchcase(task_name, str(claims["tsk"])):
        return CheckedToken(token_id, f"it approves {claims['tsk']}, not {task_name}")
    return CheckedToken(token_id, "")


def unbound(task_name: str) -> Admission:
    """The admission of a job acting for no tenant and bound to no asset: every gate passes
    with nothing to read and nothing to record, so the job row carries it from its insert."""
    return Admission(
        decide_admission(AdmissionFacts(task_name=task_name, tenant=None)), None, None, None
    )


def admit(
    session: Session,
    *,
    task_name: str,
    tenant: str | None,
    target: str | uuid.UUID | None,
    approval_token: str | None,
    actor: str,
    job_id: uuid.UUID | None = None,
) -> Admission:
    """Decide whether the job may be enqueued; record the decision when there was something to
    decide. Raises AdmissionRefusedError (after recording) when refused. The caller's session
    commits the recorded decision with the job; a refusal is recorded in its own transaction."""
    target_ref = str(target) if target is not None else None
    target_facts = None
    if target_ref is not None:
        try:
            target_facts = policy_store.asset_facts(trust.find_asset(session, target_ref, tenant))
        except NotFoundError:
            target_facts = None
    token_check, problem, token_id = TokenCheck.NONE, "", None
    if approval_token and target_facts is not None:
        checked = check_token(
            approval_token,
            asset_id=target_facts.id,
            task_name=task_name,
            tenant=tenant or target_facts.tenant,
        )
        token_id, problem = checked.id, checked.problem
        if not problem and token_id is not None and target_facts.protected:
            # Claimed in the enqueue's transaction: a refusal below, or a failed send, gives
            # the use back (rolled back, or released by the sender).
            problem = token_store.claim_use(session, token_id, job_id) or ""
        token_check = TokenCheck.INVALID if problem else TokenCheck.VALID
    facts = AdmissionFacts(
        task_name=task_name,
        tenant=tenant,
        rules=policy_store.tenant_rules(session, tenant),
        target_ref=target_ref,
        target=target_facts,
        token=token_check,
        token_problem=problem,
    )
    decision = decide_admission(facts)
    request = {
        "task_name": task_name,
        "target": target_ref,
        "approval_token": (
            {"id": token_id} if token_id else "presented" if approval_token else None
        ),
    }
    if not decision.allowed:
        from models.db import session_scope

        # Its own transaction: the refusal stays recorded though the enqueue fails.
        with session_scope() as refusal:
            row = policy_store.record_decision(
                refusal,
                PolicyDecisionKind.ADMISSION,
                decision,
                request=request,
                tenant=tenant,
                actor=actor,
            )
            refused_id = row.id
        raise AdmissionRefusedError(task_name, decision, refused_id)
    decision_id = None
    if tenant is not None or target is not None:
        decision_id = policy_store.record_decision(
            session,
            PolicyDecisionKind.ADMISSION,
            decision,
            request=request,
            tenant=tenant,
            actor=actor,
            job_id=job_id,
        ).id
    return Admission(decision, decision_id, tenant, target_facts.id if target_facts else None)

"""Pushing a workflow run's commit to a protected branch of a project's remote: allowed only
with an admission approval token for that push, and every such decision recorded.

The token is an admission approval (``policy.admission``: the fleet's signature, its own
audience, a row that makes it single-use and revocable) whose task pattern covers
``git.push:<project>/<remote>/<branch>`` (``drydock admission approve --task
'git.push:web/origin/main'``). A push is bound to no asset, so the token's asset is not
compared; its tenant and task pattern are. The use is claimed in the caller's transaction, as an
enqueue claims it: two pushes racing with one token push once.
"""

from __future__ import annotations

import fnmatch
from collections.abc import Sequence
from dataclasses import dataclass

import jwt
from sqlalchemy.orm import Session

from kernel.decisions import Decision, Gate, GateName
from models import admission_tokens as token_store
from models import policy as policy_store
from models.policy import PolicyDecisionKind
from models.projects import Project, ProjectRemote
from policy.admission import AUDIENCE
from policy.approvals import ALGORITHM, signing_key


def push_task_name(project: str, remote: str, branch: str) -> str:
    """What an approval token's task pattern must match to approve this push."""
    return f"git.push:{project}/{remote}/{branch}"


def is_protected(remote: ProjectRemote, branch: str) -> bool:
    return any(fnmatch.fnmatchcase(branch, pattern) for pattern in remote.protected_branches)


@dataclass(frozen=True)
class PushDecision:
    allowed: bool
    reason: str
    # The recorded policy decision (None for an unprotected branch: nothing to decide).
    decision_id: int | None
    token_id: str | None


def protected_push_decision(
    session: Session,
    tenant: str,
    project: Project,
    remotes: Sequence[ProjectRemote],
    branch: str,
    approval_token: str | None,
    actor: str,
) -> PushDecision:
    """May a run push to ``branch`` of ``remotes``? No remote protects it: yes, nothing
    recorded. Some do: only with one valid, unused approval token covering the push to each of
    them, claimed here (once, for all); allowed or refused, the decision is recorded in the
    caller's transaction (commit it, even on a refusal, to keep the record)."""
    protected = [remote for remote in remotes if is_protected(remote, branch)]
    if not protected:
        return PushDecision(True, "the branch is not protected", None, None)
    tasks = [push_task_name(project.name, remote.name, branch) for remote in protected]
    token_id, problem = None, ""
    for task in tasks:
        token_id, problem = _check_token(approval_token, tenant=tenant, task=task)
        if problem:
            break
    if not problem and token_id is not None:
        problem = token_store.claim_use(session, token_id, None) or ""
    if problem:
        rules = "; ".join(f"{r.name}: {', '.join(r.protected_branches)}" for r in protected)
        reason = f"branch {branch} is protected ({rules}): {problem}"
    else:
        reason = f"approved by token {token_id}"
    decision = Decision.of([Gate(GateName.PROTECTED_TARGET, not problem, reason)])
    row = policy_store.record_decision(
        session,
        PolicyDecisionKind.PUSH,
        decision,
        request={
            "task_name": tasks[0] if len(tasks) == 1 else tasks,
            "project": project.name,
            "remotes": [remote.name for remote in protected],
            "branch": branch,
            "approval_token": (
                {"id": token_id} if token_id else "presented" if approval_token else None
            ),
        },
        tenant=tenant,
        actor=actor,
    )
    return PushDecision(decision.allowed, decision.summary, row.id, token_id)


def _check_token(token: str | None, *, tenant: str, task: str) -> tuple[str | None, str]:
    """(the token's id once its signature is the fleet's, why it does not approve the push)."""
    if not token:
        return None, f"a push to it needs an approval token for {task}"
    try:
        claims = jwt.decode(
            token,
            signing_key(),
            algorithms=[ALGORITHM],
            audience=AUDIENCE,
            options={"require": ["tsk", "ten", "exp", "aud", "jti"]},
        )
    except jwt.ExpiredSignatureError:
        return None, "the approval token has expired"
    except jwt.InvalidSignatureError:
        return None, "the approval token's signature is not this fleet's"
    except jwt.InvalidTokenError as exc:
        return None, f"it is not an admission approval token ({exc})"
    token_id = str(claims["jti"])
    if claims["ten"] != tenant:
        return token_id, f"the approval token is for tenant {claims['ten']}, not {tenant}"
    if not fnmatch.fnmatchcase(task, str(claims["tsk"])):
        return token_id, f"the approval token approves {claims['tsk']}, not {task}"
    return token_id, ""

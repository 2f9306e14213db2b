"""A workflow run on a project's code: what it checks before any step, and the facts of the
project every step of it reads.

Before the first step (``preflight``), in the start job:

- the project's repository and every remote must answer ``ls-remote`` within
  DRYDOCK_WORKFLOW_REMOTE_CHECK_TIMEOUT_SECONDS: a run that could not push its first commit
  fails now, naming the remotes, instead of after its first step's work;
- the revision is resolved to the commit every step starts from, so parallel first steps (and
  a step run again after its worker died) start from the same code;
- a branch protected on any remote needs the run's approval token, claimed once for the run
  and recorded as a push decision; refused, the run fails before any step.

The run's branch is ``drydock/runs/<run id>`` unless the start names one.
"""

from __future__ import annotations

import uuid
from dataclasses import dataclass

from sqlalchemy.orm import Session

from adapters.git_inputs import check_revision
from adapters.git_workspace import (
    GitCredential,
    GitWorkspaceError,
    RemoteTarget,
    require_reachable,
    resolve_credential,
    resolve_revision,
)
from kernel.errors import DrydockError
from kernel.settings import get_settings
from models import projects as project_store
from models.projects import Project, ProjectRemote
from models.workflow_runs import WorkflowRun
from policy.pushes import PushDecision, is_protected, protected_push_decision

RUN_BRANCH_PREFIX = "drydock/runs/"
# Step kinds that work on a workspace of the run's project.
WORKSPACE_KINDS = frozenset({"container", "agent"})


class PreflightFailedError(DrydockError):
    """The run cannot start its steps: a remote is unreachable, the revision is unknown, or a
    push to its protected branch is not approved."""


def run_branch(run_id: uuid.UUID, requested: str | None) -> str:
    return check_revision(requested) if requested else f"{RUN_BRANCH_PREFIX}{run_id}"


@dataclass(frozen=True)
class RemoteFacts:
    name: str
    url: str
    credential_ref: str | None
    # Whether the run's branch is protected on it (its pushes then need the run's decision).
    protected: bool

    def credential(self) -> GitCredential | None:
        return resolve_credential(self.credential_ref)


@dataclass(frozen=True)
class RunProject:
    """What a step of a run on a project needs to know of it, read once per step."""

    run_id: uuid.UUID
    tenant: str
    workflow: str
    project: str
    repository_url: str
    branch: str
    base_commit: str
    # In push order: the first is the one a step's workspace reads the branch's tip from.
    remotes: tuple[RemoteFacts, ...]
    push_decision_id: int | None


def remote_facts(remote: ProjectRemote, branch: str) -> RemoteFacts:
    return RemoteFacts(remote.name, remote.url, remote.credential_ref, is_protected(remote, branch))


def run_project(session: Session, run: WorkflowRun) -> RunProject | None:
    """The project facts of ``run``; None for a run on no project."""
    if run.project is None or run.branch is None or run.base_commit is None:
        return None
    project = project_store.get_project(session, run.tenant, run.project)
    return RunProject(
        run_id=run.id,
        tenant=run.tenant,
        workflow=run.workflow_name,
        project=project.name,
        repository_url=project.repository_url,
        branch=run.branch,
        base_commit=run.base_commit,
        remotes=tuple(remote_facts(remote, run.branch) for remote in project.remotes),
        push_decision_id=run.push_decision_id,
    )


@dataclass(frozen=True)
class PreflightChecked:
    """What the network said, before the run's transaction: the commit the revision names."""

    base_commit: str
    revision: str


def check_project_remotes(project: Project, revision: str | None) -> PreflightChecked:
    """Every remote answers and the revision names a commit (network; no transaction held).
    PreflightFailedError otherwise."""
    settings = get_settings()
    schemes = settings.git_allowed_schemes
    try:
        targets = [
            RemoteTarget("repository", project.repository_url),
            *(
                RemoteTarget(remote.name, remote.url, resolve_credential(remote.credential_ref))
                for remote in project.remotes
            ),
        ]
        require_reachable(
            targets,
            timeout=settings.workflow_remote_check_timeout_seconds,
            allowed_schemes=schemes,
        )
        wanted = revision or project.default_branch
        commit = resolve_revision(
            project.repository_url,
            wanted,
            allowed_schemes=schemes,
            timeout_seconds=settings.workflow_remote_check_timeout_seconds,
        )
    except GitWorkspaceError as exc:
        raise PreflightFailedError(f"project {project.name}: {exc}") from None
    if commit is None:
        raise PreflightFailedError(
            f"project {project.name}: its repository has no branch or tag {wanted!r}"
        )
    if not project.remotes:
        raise PreflightFailedError(
            f"project {project.name} has no remote to push the run's commits to: add one "
            "(drydock projects add-remote)"
        )
    return PreflightChecked(base_commit=commit, revision=wanted)


def decide_pushes(
    session: Session, project: Project, branch: str, approval_token: str | None, actor: str
) -> PushDecision:
    """Whether the run may push to ``branch`` of the project's remotes (a protected one needs
    the approval token). A decision on a protected branch, allowed or refused, is recorded in
    the session's transaction: the caller writes the run, running or failed, in the same one,
    so a redelivered start never claims the token twice."""
    return protected_push_decision(
        session, project.tenant, project, list(project.remotes), branch, approval_token, actor
    )

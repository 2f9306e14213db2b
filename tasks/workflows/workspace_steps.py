"""Container (and agent) steps of a run on a project's code: a workspace per attempt, the step's
commit, and its pushes to every remote.

One attempt of a step:

1. **Workspace**: the project's repository is cloned at the run's base commit into a directory
   of its own (under DRYDOCK_WORKFLOW_WORKSPACE_ROOT), onto the run's branch; the branch's tip
   is then fetched from the first remote and checked out, so a step starts from the commits of
   the steps it needs (and of any that finished meanwhile).
2. **Already done?** A commit on that tip whose trailers name this run and step means an
   earlier delivery of this step made and pushed its commit, and its worker died before the
   step's row said so: the step is not run again (its commit is never made twice); only its
   pushes are finished.
3. **Run**: the step's container runs on the workspace; a watcher polls the run every
   half-second (a cancel, or another step failing, kills the container) and beats the step's
   heartbeat. Containers an earlier delivery of the step left behind are removed first.
4. **Commit**: every change becomes one commit by the runner's identity, named for the run and
   step and carrying their trailers. No change: no commit, no push, the step recorded skipped.
5. **Push**, one step of the run at a time (an advisory lock per run): the branch's tip is
   fetched again; when parallel steps pushed meanwhile, the commit is rebased onto it (a
   conflict fails the attempt, which runs again from the new tip); then the branch is pushed to
   every remote in order, stopping at the first failure. A refused credential fails the step at
   once, an unreachable remote or a rejected push fails the attempt (tried again within the
   step's retries); a protected branch without the run's recorded approval is never pushed.

The workspace is removed however the attempt ends.
"""

from __future__ import annotations

import os
import shutil
import tempfile
from collections.abc import Mapping
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from sqlalchemy import text, update

from adapters.docker_engine import DockerEngineUnavailableError
from adapters.git_workspace import (
    GitWorkspaceError,
    PushFailure,
    RebaseConflictError,
    check_out,
    clone_workspace,
    commit_all,
    fetch_branch,
    find_step_commit,
    head_commit,
    is_ancestor,
    push,
    rebase_onto,
    reset_workspace,
    step_trailers,
)
from kernel.context import JobContext
from kernel.settings import get_settings
from models import workflow_events as events
from models import workflow_runs as store
from models.db import session_scope
from models.workflow_runs import WorkflowRun
from tasks.workflows.agent_step import (
    AgentOutcome,
    AgentStepError,
    provider_chain,
    render_prompt,
    run_agent_step,
)
from tasks.workflows.container_step import (
    ContainerStepError,
    StepOutcome,
    remove_orphaned_step_containers,
    run_container_step,
)
from tasks.workflows.definitions import (
    WorkflowAgentStep,
    WorkflowContainerStep,
)
from tasks.workflows.provenance import step_provenance
from tasks.workflows.providers import AgentProvider, ProviderConfigError, configured_providers
from tasks.workflows.run_project import RunProject
from tasks.workflows.step_errors import StepAttemptFailedError, StepStoppedError
from tasks.workflows.step_secrets import read_secret, resolve_step_secrets
from tasks.workflows.step_watch import watching

# Per stream, kept in the step's row (the container's own cap is larger; the sizes say so).
KEPT_OUTPUT_BYTES = 64 * 1024
PUSH_LOCK_PREFIX = "workflow-run-push:"


@dataclass(frozen=True)
class WorkspaceStepResult:
    """What an attempt that succeeded leaves on the step's row."""

    result: dict[str, Any]
    commit_sha: str | None
    pushes: list[dict[str, Any]]
    provenance: dict[str, Any]


@dataclass
class _Attempt:
    """What the attempt learned, for its provenance log."""

    base_commit: str | None = None
    outcome: StepOutcome | None = None
    secrets: list[str] = field(default_factory=list)
    resumed_commit: str | None = None
    agent: AgentOutcome | None = None


def run_workspace_step(
    project: RunProject,
    name: str,
    spec: Mapping[str, Any],
    *,
    attempts: int,
    ctx: JobContext,
) -> WorkspaceStepResult:
    """One attempt of a container step of ``project``'s run (see the module's doc). Raises
    StepAttemptFailedError (``final`` when trying again cannot help) and StepStoppedError."""
    settings = get_settings()
    started_at = datetime.now(UTC)
    root = settings.workflow_workspace_root
    if root:
        Path(root).mkdir(parents=True, exist_ok=True)
    parent = Path(tempfile.mkdtemp(prefix=f"drydock-step-{name}-", dir=root))
    attempt = _Attempt()
    try:
        # The container runs as the workspace's owner and must reach it through its parent.
        parent.chmod(0o755)
        workspace = _prepare(project, parent / "workspace")
        attempt.base_commit = head_commit(workspace)
        attempt.resumed_commit = find_step_commit(
            workspace, str(project.run_id), name, branch=project.branch
        )
        if attempt.resumed_commit is None:
            if spec.get("kind") == "agent":
                agent = _run_agent(project, name, spec, workspace, ctx)
                attempt.agent, attempt.outcome = agent, agent.outcome
                attempt.secrets = list(agent.token_values)
            else:
                step = WorkflowContainerStep.model_validate(dict(spec))
                env_secrets = resolve_step_secrets(project.tenant, step)
                attempt.secrets = list(env_secrets.values())
                attempt.outcome = _run_container(project, name, step, workspace, env_secrets, ctx)
            commit = commit_all(
                workspace,
                settings.workflow_runner_name,
                settings.workflow_runner_email,
                f"workflow {project.workflow} run {project.run_id}: step {name}",
                step_trailers(str(project.run_id), name),
            )
            _event(project, name, ctx, "step.skipped" if commit is None else "step.commit", commit)
            if commit is None:
                ctx.progress(None, f"step {name} changed nothing: no commit, no push")
                return _succeeded(project, name, spec, attempt, attempts, started_at, ctx, None, [])
            ctx.progress(None, f"step {name} committed {commit[:12]}", commit=commit)
        else:
            ctx.progress(
                None,
                f"step {name} had made {attempt.resumed_commit[:12]}: pushing it, not running it",
            )
        sha, pushes = _publish(project, name, workspace, ctx)
        return _succeeded(project, name, spec, attempt, attempts, started_at, ctx, sha, pushes)
    except RebaseConflictError as exc:
        raise StepAttemptFailedError(f"step {name}: {exc}") from None
    except GitWorkspaceError as exc:
        raise StepAttemptFailedError(f"step {name}: {exc}") from None
    except ContainerStepError as exc:
        raise StepAttemptFailedError(str(exc), final=True) from None
    except DockerEngineUnavailableError as exc:
        raise StepAttemptFailedError(f"step {name}: {exc}") from None
    finally:
        shutil.rmtree(parent, ignore_errors=True)


# ---- the workspace -------------------------------------------------------------------------


def _prepare(project: RunProject, dest: Path) -> Path:
    schemes = get_settings().git_allowed_schemes
    clone_workspace(
        project.repository_url,
        project.base_commit,
        dest,
        project.branch,
        allowed_schemes=schemes,
    )
    primary = project.remotes[0]
    tip = fetch_branch(
        dest, primary.url, project.branch, allowed_schemes=schemes, credential=primary.credential()
    )
    if tip is not None:
        check_out(dest, project.branch, tip)
    return dest


# ---- running the container -----------------------------------------------------------------


def _run_container(
    project: RunProject,
    name: str,
    step: WorkflowContainerStep,
    workspace: Path,
    env_secrets: Mapping[str, str],
    ctx: JobContext,
) -> StepOutcome:
    settings = get_settings()
    # A delivery before this one may have died with its container still running.
    remove_orphaned_step_containers(project.run_id, step_name=name)
    with watching(project.run_id, name, ctx) as watch:
        outcome = run_container_step(
            step,
            workspace=workspace,
            env_secrets=env_secrets,
            run_id=project.run_id,
            step_name=name,
            cancel=watch.cancel,
            network=settings.workflow_step_network,
            max_output_bytes=KEPT_OUTPUT_BYTES,
        )
    if outcome.cancelled:
        raise StepStoppedError(watch.reason or "the run is stopping")
    if not outcome.ok:
        tail = outcome.stderr.strip().splitlines()[-1:] or outcome.stdout.strip().splitlines()[-1:]
        said = f": {tail[0][:300]}" if tail else ""
        raise StepAttemptFailedError(f"step {name}: {outcome.error}{said}")
    return outcome


def _run_agent(
    project: RunProject, name: str, spec: Mapping[str, Any], workspace: Path, ctx: JobContext
) -> AgentOutcome:
    settings = get_settings()
    step = WorkflowAgentStep.model_validate(dict(spec))
    try:
        providers = configured_providers(settings)
        chain = provider_chain(step, providers)
    except (ProviderConfigError, AgentStepError) as exc:
        raise StepAttemptFailedError(str(exc), final=True) from None
    tokens = {
        provider.name: token
        for provider, _ in chain
        if (token := _provider_token(provider, project.tenant)) is not None
    }
    prompt = render_prompt(step, _prompt_variables(project, name))
    remove_orphaned_step_containers(project.run_id, step_name=name)
    with watching(project.run_id, name, ctx) as watch:
        agent = run_agent_step(
            step,
            prompt=prompt,
            providers=providers,
            workspace=workspace,
            run_id=project.run_id,
            tokens=tokens,
            cancel=watch.cancel,
            network=settings.workflow_step_network,
            reset_workspace=lambda: reset_workspace(workspace),
        )
    outcome = agent.outcome
    if outcome.cancelled:
        raise StepStoppedError(watch.reason or "the run is stopping")
    if not outcome.ok:
        tried = ", ".join(f"{a.provider} ({a.error})" for a in agent.attempts)
        raise StepAttemptFailedError(f"step {name}: every provider failed: {tried}")
    return agent


def _provider_token(provider: AgentProvider, tenant: str) -> str | None:
    if provider.token_env:
        return os.environ.get(provider.token_env) or None
    if provider.token_secret:
        return read_secret(tenant, provider.token_secret, f"provider {provider.name}")
    return None


def _prompt_variables(project: RunProject, name: str) -> dict[str, Any]:
    with session_scope() as session:
        steps = {
            row.name: {"state": row.state, "commit": row.commit_sha, "result": row.result}
            for row in store.steps_of(session, project.run_id)
        }
    return {
        "workflow": {"name": project.workflow},
        "run": {"id": str(project.run_id), "branch": project.branch, "project": project.project},
        "step": {"name": name},
        "steps": steps,
        "workspace": "/workspace",
    }


# ---- commit and push -----------------------------------------------------------------------


def _publish(
    project: RunProject, name: str, workspace: Path, ctx: JobContext
) -> tuple[str, list[dict[str, Any]]]:
    """Put the step's commit on the branch's tip and push the branch to every remote, one step
    of the run at a time. The pushes are recorded on the step even when one fails."""
    settings = get_settings()
    schemes = settings.git_allowed_schemes
    primary = project.remotes[0]
    pushes: list[dict[str, Any]] = []
    failure: tuple[str, bool] | None = None
    with session_scope() as session:
        session.execute(
            text("SELECT pg_advisory_xact_lock(hashtextextended(:key, 0))"),
            {"key": f"{PUSH_LOCK_PREFIX}{project.run_id}"},
        )
        tip = fetch_branch(
            workspace,
            primary.url,
            project.branch,
            allowed_schemes=schemes,
            credential=primary.credential(),
        )
        if tip is not None and not is_ancestor(workspace, tip, "HEAD"):
            rebased = rebase_onto(
                workspace, tip, settings.workflow_runner_name, settings.workflow_runner_email
            )
            ctx.progress(None, f"step {name}: rebased onto {tip[:12]} as {rebased[:12]}")
        sha = head_commit(workspace)
        for remote in project.remotes:
            if remote.protected and project.push_decision_id is None:
                pushes.append(
                    _push_entry(remote.name, project.branch, "refused", None, "protected branch", 0)
                )
                failure = (
                    f"branch {project.branch} is protected on remote {remote.name} and the run "
                    "has no approval to push to it",
                    True,
                )
                break
            outcome = push(
                workspace,
                remote.url,
                project.branch,
                remote.credential(),
                allowed_schemes=schemes,
            )
            pushes.append(
                _push_entry(
                    remote.name,
                    project.branch,
                    outcome.status.value,
                    outcome.failure.value if outcome.failure else None,
                    outcome.error,
                    outcome.attempts,
                )
            )
            events.record(
                session,
                project.run_id,
                project.tenant,
                "step.push",
                step=name,
                runner=ctx.who.hostname[:200],
                commit=sha,
                **pushes[-1],
            )
            ctx.progress(
                None,
                f"step {name}: push to {remote.name} {outcome.status.value}",
                remote=remote.name,
                commit=sha,
            )
            if not outcome.ok:
                failure = (
                    f"step {name}: {outcome.error}",
                    # A refused credential stays refused however often it is tried.
                    outcome.failure is PushFailure.AUTH,
                )
                break
        session.execute(
            update(store.WorkflowStep)
            .where(store.WorkflowStep.run_id == project.run_id, store.WorkflowStep.name == name)
            .values(commit_sha=sha, pushes=pushes)
        )
        if failure is None:
            session.execute(
                update(WorkflowRun).where(WorkflowRun.id == project.run_id).values(head_commit=sha)
            )
    if failure is not None:
        raise StepAttemptFailedError(failure[0], final=failure[1])
    return sha, pushes


def _event(project: RunProject, name: str, ctx: JobContext, type_: str, commit: str | None) -> None:
    with session_scope() as session:
        events.record(
            session,
            project.run_id,
            project.tenant,
            type_,
            step=name,
            runner=ctx.who.hostname[:200],
            commit=commit,
        )


def _push_entry(
    remote: str, branch: str, status: str, failure: str | None, error: str | None, attempts: int
) -> dict[str, Any]:
    return {
        "remote": remote,
        "branch": branch,
        "status": status,
        "failure": failure,
        "error": error,
        "attempts": attempts,
    }


def _succeeded(
    project: RunProject,
    name: str,
    spec: Mapping[str, Any],
    attempt: _Attempt,
    attempts: int,
    started_at: datetime,
    ctx: JobContext,
    sha: str | None,
    pushes: list[dict[str, Any]],
) -> WorkspaceStepResult:
    outcome = attempt.outcome
    result: dict[str, Any] = {
        "commit": sha,
        "base_commit": attempt.base_commit,
        "changed": sha is not None,
        "skipped": sha is None,
        "resumed": attempt.resumed_commit is not None,
        "branch": project.branch,
        "pushes": pushes,
    }
    if outcome is not None:
        result.update(
            exit_code=outcome.exit_code,
            image_digest=outcome.image_digest,
            stdout=outcome.stdout,
            stderr=outcome.stderr,
            stdout_bytes=outcome.stdout_bytes,
            stderr_bytes=outcome.stderr_bytes,
            duration_seconds=round(outcome.duration_seconds, 3),
        )
    if attempt.agent is not None:
        # The agent's stream is the step's log; its stdout is that stream again.
        result.update(agent=attempt.agent.metadata(), log=attempt.agent.events, stdout=None)
    log = step_provenance(
        run_id=str(project.run_id),
        step=name,
        kind=str(spec.get("kind")),
        spec=spec,
        secrets=attempt.secrets,
        image_digest=outcome.image_digest if outcome else None,
        env_names=[*dict(spec.get("env") or {}), "HOME"],
        agent=attempt.agent.metadata() if attempt.agent else None,
        exit_code=outcome.exit_code if outcome else None,
        stdout=outcome.stdout if outcome else None,
        stderr=outcome.stderr if outcome else None,
        stdout_bytes=outcome.stdout_bytes if outcome else None,
        stderr_bytes=outcome.stderr_bytes if outcome else None,
        base_commit=attempt.base_commit,
        commit_sha=sha,
        pushes=pushes,
        state="succeeded",
        attempts=attempts,
        started_at=started_at,
        finished_at=datetime.now(UTC),
        runner=ctx.who.hostname,
    )
    return WorkspaceStepResult(result=result, commit_sha=sha, pushes=pushes, provenance=log)

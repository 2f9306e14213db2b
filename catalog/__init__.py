"""Every task Drydock runs, by name, with its payload model.

Producers validate against this catalog without importing any task code; workers refuse to
register a task that is not listed here, so the published schemas are always the ones enforced.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from catalog.attestation import (
    ExpireStaleEvidencePayload,
    IngestAcceleratorPosturePayload,
    SyncVmInventoryPayload,
    VerifyEvidencePayload,
)
from catalog.builds import BuildImagePayload
from catalog.canary import CanaryPayload
from catalog.evaluation import (
    RecomputeAnomaliesPayload,
    RefreshCertificationPayload,
    SweepCertificationsPayload,
)
from catalog.pushes import (
    PruneTagsPayload,
    PublishIndexPayload,
    PushImagePayload,
    RotateCredentialsPayload,
)
from catalog.remediation import (
    RefreshWorkspaceRunsPayload,
    RunPlaybookPayload,
    SimulateWorkspacePayload,
    SweepRunsPayload,
)
from catalog.runtime import EnforceTrustPayload, LaunchPayload, RolloutPayload, StopPayload
from catalog.workflows import RunStepPayload, StartRunPayload, SweepWorkflowRunsPayload
from kernel.errors import UnknownTaskError
from kernel.payload import Payload
from kernel.topology import WORK_QUEUES, queue_for_task


@dataclass(frozen=True)
class TaskSpec:
    name: str
    payload: type[Payload]
    summary: str

    @property
    def queue(self) -> str:
        return queue_for_task(self.name)

    def json_schema(self) -> dict[str, Any]:
        schema = self.payload.model_json_schema()
        schema["title"] = self.name
        schema["description"] = self.summary
        return schema


def _specs() -> list[TaskSpec]:
    specs = [
        TaskSpec(
            name=f"{queue}.canary",
            payload=CanaryPayload,
            summary=f"Proves the {queue} queue is served end to end; can rehearse failures.",
        )
        for queue in WORK_QUEUES
    ]
    specs += [
        TaskSpec(
            name="builds.build_image",
            payload=BuildImagePayload,
            summary=(
                "Fetch a git revision and build one image per target platform (docker or "
                "buildah backend); with a push target, push them and publish one "
                "multi-platform index tag."
            ),
        ),
        TaskSpec(
            name="pushes.push_image",
            payload=PushImagePayload,
            summary="Tag and push one platform image of a build run to its registry.",
        ),
        TaskSpec(
            name="pushes.publish_index",
            payload=PublishIndexPayload,
            summary="Publish a build run's pushed platform images as one OCI image index tag.",
        ),
        TaskSpec(
            name="pushes.prune_tags",
            payload=PruneTagsPayload,
            summary=(
                "Apply a repository's retention policy: list (dry run) or delete the tags it "
                "does not keep, never a digest a live certification or the newest index uses."
            ),
        ),
        TaskSpec(
            name="pushes.rotate_credentials",
            payload=RotateCredentialsPayload,
            summary=(
                "Probe registry credentials against their registries, rotate those refused, "
                "expiring or past their rotation age through their provider, and write them "
                "to their Kubernetes image-pull secrets (Beat runs it)."
            ),
        ),
        TaskSpec(
            name="attestation.verify_evidence",
            payload=VerifyEvidencePayload,
            summary=(
                "Verify an asset's TPM 2.0 quote, SEV-SNP report or TDX quote against its key, "
                "the pinned roots and its class's reference values; record the verdict and move "
                "the asset to trusted or quarantined."
            ),
        ),
        TaskSpec(
            name="attestation.ingest_accelerator_posture",
            payload=IngestAcceleratorPosturePayload,
            summary=(
                "Judge a GPU's posture report against its tier (minimum driver, CC mode, ECC) "
                "and move the accelerator's trust state, naming the failing gate."
            ),
        ),
        TaskSpec(
            name="attestation.sync_vm_inventory",
            payload=SyncVmInventoryPayload,
            summary="Read libvirt's domains and link each to a vm trust asset.",
        ),
        TaskSpec(
            name="attestation.expire_stale_evidence",
            payload=ExpireStaleEvidencePayload,
            summary="Move trusted assets whose evidence has expired to stale (Beat runs it).",
        ),
        TaskSpec(
            name="remediation.run_playbook",
            payload=RunPlaybookPayload,
            summary=(
                "Run a remediation run's playbook against its quarantined asset (with the run's "
                "approval token when it needs one), keep every step's artifacts, and send the "
                "asset to pending_attestation on success or back to quarantined on failure."
            ),
        ),
        TaskSpec(
            name="remediation.simulate_workspace",
            payload=SimulateWorkspacePayload,
            summary=(
                "Run a workspace's draft playbook against a sandbox replica only (sandboxed steps, "
                "ansible in check mode with diff, Kubernetes dry runs, a private libvirt test "
                "driver) and keep each step; the workspace is simulated_passed or _failed."
            ),
        ),
        TaskSpec(
            name="remediation.refresh_workspace_runs",
            payload=RefreshWorkspaceRunsPayload,
            summary=(
                "After a workspace's promotion: one run of the promoted version for every "
                "quarantined asset in its scope; runs not yet started re-linked or left as the "
                "workspace says; each created, refreshed or skipped run recorded."
            ),
        ),
        TaskSpec(
            name="workflows.start_run",
            payload=StartRunPayload,
            summary=(
                "Start a run of a tenant's workflow (its newest version, or the one named): its "
                "steps as rows, the first ones sent; the run's id is this job's."
            ),
        ),
        TaskSpec(
            name="workflows.run_step",
            payload=RunStepPayload,
            summary=(
                "Run one step of a workflow run (once: a finished step is never run again), "
                "record it, and send the steps it unblocks."
            ),
        ),
        TaskSpec(
            name="workflows.sweep_runs",
            payload=SweepWorkflowRunsPayload,
            summary=(
                "Move on the workflow runs nothing is moving: a step whose job was never sent, "
                "or whose job ended without the run hearing of it (Beat runs it)."
            ),
        ),
        TaskSpec(
            name="remediation.sweep_runs",
            payload=SweepRunsPayload,
            summary=(
                "Expire runs whose approval wait or approval ran out, send runs whose job never "
                "reached the broker, fail runs whose job died, and request a run for each "
                "quarantined asset whose class names a playbook (Beat runs it)."
            ),
        ),
        TaskSpec(
            name="evaluation.refresh_certification",
            payload=RefreshCertificationPayload,
            summary=(
                "Run a tier's evaluation suite against an image digest in a container with no "
                "network, on a trusted host only (a recorded policy gate); issue the next "
                "certification on a pass, revoke the active one on a fail."
            ),
        ),
        TaskSpec(
            name="evaluation.sweep_certifications",
            payload=SweepCertificationsPayload,
            summary=(
                "Enqueue one refresh for each certification inside its refresh window and mark "
                "expired ones stale (Beat runs it)."
            ),
        ),
        TaskSpec(
            name="evaluation.recompute_anomalies",
            payload=RecomputeAnomaliesPayload,
            summary=(
                "Recompute per-repository capability scores from the build ledger: build "
                "latency spikes, credential churn, missing architectures (Beat runs it)."
            ),
        ),
        TaskSpec(
            name="runtime.launch",
            payload=LaunchPayload,
            summary=(
                "Launch a server's release where policy allows: a target chosen by capability "
                "and judged by the placement gates (one recorded decision), the image pulled "
                "by digest and run locked down, running once its probe answers; blocked with "
                "the failing gates when denied."
            ),
        ),
        TaskSpec(
            name="runtime.rollout",
            payload=RolloutPayload,
            summary=(
                "Roll a release out at its tier: start it beside the instance serving the tier, "
                "probe it through the analysis window, shift to it and drain the old one; a "
                "failed probe rolls back to the previous release (one recorded decision)."
            ),
        ),
        TaskSpec(
            name="runtime.stop",
            payload=StopPayload,
            summary="Drain and stop an instance, keeping the end of its output (redacted).",
        ),
        TaskSpec(
            name="runtime.enforce_trust",
            payload=EnforceTrustPayload,
            summary=(
                "Stop every running instance whose host asset or VM asset is quarantined "
                "(Beat runs it)."
            ),
        ),
    ]
    return specs


CATALOG: dict[str, TaskSpec] = {spec.name: spec for spec in _specs()}


def spec_for(task_name: str) -> TaskSpec:
    try:
        return CATALOG[task_name]
    except (KeyError, TypeError):  # TypeError: a name that is not even hashable
        raise UnknownTaskError(task_name, list(CATALOG)) from None

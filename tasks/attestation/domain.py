"""The attestation queue's work: judge evidence and posture with the pure verifiers, record the
verdict, and move the asset along its lifecycle (models.trust), all in one transaction."""

from __future__ import annotations

import os
import uuid
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from functools import lru_cache
from pathlib import Path
from typing import Any

from cryptography import x509
from sqlalchemy import select
from sqlalchemy.orm import Session

from catalog.attestation import (
    AzureCvmEvidenceInput,
    ExpireStaleEvidencePayload,
    IngestAcceleratorPosturePayload,
    SnpEvidenceInput,
    SyncVmInventoryPayload,
    TdxEvidenceInput,
    TpmEvidenceInput,
    VerifyEvidencePayload,
)
from evidence import azure_cvm, sev_snp, tdx, tpm
from evidence.certs import is_self_signed, load_certificates
from evidence.posture import AcceleratorPolicy, judge_posture
from evidence.vendor_roots import with_vendor_roots
from evidence.verdict import Check, EvidenceFormatError, EvidenceKind, Verdict
from kernel.context import JobContext
from kernel.errors import DrydockError
from kernel.settings import get_settings
from models import trust
from models.db import session_scope
from models.trust import (
    AssetKind,
    AttestationVerdict,
    Move,
    TrustAsset,
    TrustAssetClass,
    TrustState,
)
from tasks.attestation import inventory

S = TrustState


def actor_of(ctx: JobContext) -> str:
    return f"worker:{ctx.who.hostname}"


# -- trust roots -------------------------------------------------------------------------------


def trust_roots() -> list[x509.Certificate]:
    """The roots evidence may chain to: those in DRYDOCK_ATTESTATION_ROOTS_DIR (self-signed
    certificates only), then the built-in vendor roots unless DRYDOCK_ATTESTATION_DEFAULT_ROOTS
    turns them off."""
    settings = get_settings()
    return with_vendor_roots(configured_roots(), use_defaults=settings.attestation_default_roots)


def configured_roots() -> list[x509.Certificate]:
    """The roots in DRYDOCK_ATTESTATION_ROOTS_DIR (self-signed certificates only)."""
    directory = get_settings().attestation_roots_dir
    if not directory:
        return []
    path = Path(directory)
    stamp = tuple(
        sorted(
            (entry.name, entry.stat().st_mtime_ns) for entry in os.scandir(path) if entry.is_file()
        )
    )
    return list(_roots_in(str(path), stamp))


@lru_cache(maxsize=8)
def _roots_in(directory: str, stamp: tuple[tuple[str, int], ...]) -> tuple[x509.Certificate, ...]:
    # ``stamp`` (names and mtimes) is the cache key: a changed directory is read again.
    roots: list[x509.Certificate] = []
    for name, _ in stamp:
        data = (Path(directory) / name).read_bytes()
        try:
            certificates = load_certificates(name, data)
        except EvidenceFormatError:
            continue
        roots += [certificate for certificate in certificates if is_self_signed(certificate)]
    return tuple(roots)


# -- reference values --------------------------------------------------------------------------


def tpm_reference(asset_class: TrustAssetClass | None) -> tpm.TpmReference:
    if asset_class is None:
        return tpm.TpmReference()
    return tpm.TpmReference(
        pcrs={
            bank: {int(index): bytes.fromhex(value) for index, value in values.items()}
            for bank, values in asset_class.tpm_pcrs.items()
        }
    )


def snp_policy(asset_class: TrustAssetClass | None) -> sev_snp.SnpPolicy:
    if asset_class is None:
        return sev_snp.SnpPolicy()
    minimum = asset_class.snp_min_tcb
    return sev_snp.SnpPolicy(
        measurements=_hex_set(asset_class.snp_measurements),
        allow_debug=asset_class.allow_debug,
        min_tcb=sev_snp.SnpTcb(**minimum) if minimum else None,
    )


def tdx_policy(asset_class: TrustAssetClass | None) -> tdx.TdxPolicy:
    if asset_class is None:
        return tdx.TdxPolicy()
    statuses = asset_class.tdx_accepted_tcb_statuses
    return tdx.TdxPolicy(
        allow_debug=asset_class.allow_debug,
        mr_td=_hex_set(asset_class.tdx_mr_td),
        rtmrs={int(index): bytes.fromhex(value) for index, value in asset_class.tdx_rtmrs.items()}
        or None,
        accepted_tcb_statuses=frozenset(statuses) if statuses else frozenset({"UpToDate"}),
    )


def _hex_set(values: list[str]) -> frozenset[bytes] | None:
    # A class that pins no value skips the check (the verdict says so); one that pins any
    # accepts only those.
    return frozenset(bytes.fromhex(value) for value in values) or None


# -- verification ------------------------------------------------------------------------------


def last_counters(asset: TrustAsset) -> tpm.TpmCounters | None:
    """The clock info of the newest quote accepted from the asset (None: none yet)."""
    if asset.tpm_reset_count is None:
        return None
    return tpm.TpmCounters(
        reset_count=asset.tpm_reset_count,
        restart_count=asset.tpm_restart_count or 0,
        clock=asset.tpm_clock or 0,
    )


def judge_evidence(
    payload: VerifyEvidencePayload,
    asset: TrustAsset,
    asset_class: TrustAssetClass | None,
    *,
    at: datetime,
) -> Verdict:
    """Run the verifier for the payload's evidence kind with the asset's key, counters and class.
    The same verifiers back ``drydock attest verify``."""
    evidence = payload.evidence
    nonce = payload.nonce_bytes()
    if isinstance(evidence, TpmEvidenceInput):
        if asset.attestation_key is None:
            verdict = Verdict(EvidenceKind.TPM)
            verdict.add(
                Check.failed(
                    "attestation_key",
                    f"asset {asset.tenant}/{asset.name} has no registered attestation key: "
                    "register it with `drydock trust register ... --ak FILE`",
                )
            )
            return verdict
        verdict = tpm.verify_tpm_quote(
            tpm.TpmEvidence(
                quote=evidence.quote,
                signature=evidence.signature,
                pcrs=evidence.pcrs_json(),
                ak=asset.attestation_key,
            ),
            nonce=nonce,
            reference=tpm_reference(asset_class),
            last_counters=last_counters(asset),
            at=at,
        )
    elif isinstance(evidence, AzureCvmEvidenceInput):
        # The AK comes attested in the HCL report; a registered one must be the same key.
        verdict = azure_cvm.verify_azure_cvm(
            azure_cvm.AzureCvmEvidence(
                hcl_report=evidence.hcl_report,
                vcek=evidence.vcek,
                chain=evidence.chain,
                quote=evidence.quote,
                signature=evidence.signature,
                pcrs=evidence.pcrs_json(),
            ),
            roots=trust_roots(),
            nonce=nonce,
            snp_policy=snp_policy(asset_class),
            tpm_reference=tpm_reference(asset_class),
            last_counters=last_counters(asset),
            at=at,
            registered_ak=asset.attestation_key,
        )
    elif isinstance(evidence, SnpEvidenceInput):
        verdict = sev_snp.verify_sev_snp_report(
            sev_snp.SnpEvidence(report=evidence.report, vcek=evidence.vcek, chain=evidence.chain),
            roots=trust_roots(),
            nonce=nonce,
            policy=snp_policy(asset_class),
            at=at,
        )
    elif isinstance(evidence, TdxEvidenceInput):
        verdict = tdx.verify_tdx_quote(
            tdx.TdxEvidence(quote=evidence.quote, collateral=evidence.collateral),
            roots=trust_roots(),
            nonce=nonce,
            policy=tdx_policy(asset_class),
            at=at,
        )
    else:  # pragma: no cover - the payload's discriminated union admits nothing else
        raise TypeError(f"unknown evidence {type(evidence).__name__}")
    if asset_class is None:
        verdict.add(
            Check.failed(
                "asset_class",
                f"asset {asset.tenant}/{asset.name} has no class, so nothing says what its "
                "evidence should show: set one with `drydock trust register ... --class NAME`",
            )
        )
    return verdict


def moves_after_verdict(
    state: TrustState,
    verified: bool,
    *,
    expired: bool,
    cause: str,
    detail: str,
    evidence: dict[str, Any],
) -> list[Move]:
    """The steps a verdict moves an asset in ``state`` through.

    Verified: to ``trusted`` by way of ``pending_attestation`` (to ``stale`` instead when the
    evidence had already expired at the pinned verification time); an asset already trusted
    stays so and only its expiry moves. Failed: to ``quarantined`` (directly from trusted or
    stale). A quarantined asset stays quarantined either way: only remediation releases it."""
    if state is S.QUARANTINED:
        return []
    if verified:
        if state is S.TRUSTED or (expired and state is S.STALE):
            return []
        outcome = S.STALE if expired else S.TRUSTED
    else:
        outcome = S.QUARANTINED
    moves: list[Move] = []
    if outcome not in trust.ALLOWED_TRANSITIONS[state]:
        moves.append(Move(S.PENDING_ATTESTATION, "attestation_started", "", evidence))
    moves.append(Move(outcome, cause, detail, evidence))
    return moves


class NotAnAcceleratorError(DrydockError):
    def __init__(self, asset: str, kind: str) -> None:
        super().__init__(f"asset {asset} is a {kind}, not an accelerator: posture does not apply")


@dataclass
class _Outcome:
    """What a plan decided, kept for the job's result once the transaction committed."""

    verdict: Verdict | None = None
    verdict_id: int | None = None
    state: str | None = None

    def result(self, asset_id: uuid.UUID, records: list[trust.TransitionRecord]) -> dict[str, Any]:
        assert self.verdict is not None, "the plan ran and judged"
        return {
            "asset_id": str(asset_id),
            "verdict_id": self.verdict_id,
            "kind": self.verdict.kind.value,
            "verified": self.verdict.verified,
            "summary": self.verdict.summary(),
            "failed_checks": [check.as_dict() for check in self.verdict.failures],
            "state": self.state,
            "transitions": [f"{r.from_state} -> {r.to_state}" for r in records],
        }


def verify_evidence(payload: VerifyEvidencePayload, ctx: JobContext) -> dict[str, Any]:
    """Judge the evidence, keep the verdict, move the asset. A redelivered job returns the
    verdict it already recorded and moves nothing."""
    earlier = _earlier_result(ctx)
    if earlier is not None:
        return earlier

    now = datetime.now(UTC)
    at = payload.verify_at or now
    outcome = _Outcome()

    def plan(session: Session, asset: TrustAsset) -> list[Move]:
        asset_class = session.get(TrustAssetClass, asset.asset_class) if asset.asset_class else None
        verdict = judge_evidence(payload, asset, asset_class, at=at)
        row = _record_verdict(session, asset, verdict, ctx, judged_at=at, nonce=payload.nonce)
        ttl = asset_class.evidence_ttl_seconds if asset_class else None
        expires = at + timedelta(seconds=ttl or get_settings().trust_default_evidence_ttl_seconds)
        expired = expires <= now
        failed = [check.name for check in verdict.failures]
        evidence = {"verdict_id": row.id, "kind": verdict.kind.value, "failed_checks": failed}
        if verdict.verified:
            cause, detail = "evidence_verified", verdict.summary()
        else:
            cause = "evidence_failed"
            detail = "; ".join(f"{c.name}: {c.reason}" for c in verdict.failures)[:2000]
        moves = moves_after_verdict(
            TrustState(asset.state),
            verdict.verified,
            expired=expired,
            cause=cause,
            detail=detail,
            evidence=evidence,
        )
        if verdict.verified and not expired and asset.state != S.QUARANTINED.value:
            asset.last_verified_at = now
            asset.evidence_expires_at = max(expires, asset.evidence_expires_at or expires)
        counters = tpm.TpmCounters.from_claims(verdict.claims)
        if verdict.verified and counters is not None:
            # Only a verified quote's clock is trusted: a forged one must not move the mark.
            asset.tpm_reset_count = counters.reset_count
            asset.tpm_restart_count = counters.restart_count
            asset.tpm_clock = counters.clock
        outcome.verdict, outcome.verdict_id = verdict, row.id
        outcome.state = moves[-1].to_state.value if moves else asset.state
        return moves

    records = trust.transition(payload.asset_id, plan, actor=actor_of(ctx), job_id=ctx.job_id)
    assert outcome.verdict is not None and outcome.verdict_id is not None
    ctx.progress(100, outcome.verdict.summary(), verified=outcome.verdict.verified)
    return outcome.result(payload.asset_id, records)


def _earlier_result(ctx: JobContext) -> dict[str, Any] | None:
    """The result of this job's verdict if an earlier delivery already recorded it."""
    with session_scope() as session:
        done = session.scalar(
            select(AttestationVerdict).where(AttestationVerdict.job_id == ctx.job_id)
        )
        if done is None:
            return None
        asset = session.get(TrustAsset, done.asset_id)
        return {
            "asset_id": str(done.asset_id),
            "verdict_id": done.id,
            "kind": done.kind,
            "verified": done.verified,
            "summary": done.summary,
            "failed_checks": [check for check in done.checks if check.get("outcome") == "fail"],
            "state": asset.state if asset else None,
            # This delivery moved nothing: the first one did.
            "transitions": [],
            "repeated": True,
        }


def _record_verdict(
    session: Session,
    asset: TrustAsset,
    verdict: Verdict,
    ctx: JobContext,
    *,
    judged_at: datetime,
    nonce: str | None = None,
) -> AttestationVerdict:
    """Keep the verdict, one per job (the unique job_id refuses a second)."""
    row = AttestationVerdict(
        asset_id=asset.id,
        job_id=ctx.job_id,
        kind=verdict.kind.value,
        verified=verdict.verified,
        summary=verdict.summary(),
        checks=[check.as_dict() for check in verdict.checks],
        claims=verdict.claims,
        nonce=nonce,
        judged_at=judged_at,
    )
    session.add(row)
    session.flush()
    return row


# -- accelerator posture -----------------------------------------------------------------------


def ingest_accelerator_posture(
    payload: IngestAcceleratorPosturePayload, ctx: JobContext
) -> dict[str, Any]:
    """Judge a GPU's posture against its tier and move the accelerator: passing gates trust it
    (for its class's evidence TTL), a failing gate quarantines it, named in the transition."""
    earlier = _earlier_result(ctx)
    if earlier is not None:
        return earlier
    now = datetime.now(UTC)
    outcome = _Outcome()

    def plan(session: Session, asset: TrustAsset) -> list[Move]:
        if asset.kind != AssetKind.ACCELERATOR.value:
            raise NotAnAcceleratorError(f"{asset.tenant}/{asset.name}", asset.kind)
        asset_class = session.get(TrustAssetClass, asset.asset_class) if asset.asset_class else None
        policy = AcceleratorPolicy(
            tier=asset_class.name if asset_class else "(none)",
            min_driver=asset_class.accelerator_min_driver if asset_class else None,
            require_cc=asset_class.accelerator_require_cc if asset_class else False,
            require_ecc=asset_class.accelerator_require_ecc if asset_class else False,
        )
        verdict = judge_posture(payload.posture, policy)
        if asset_class is None:
            verdict.add(
                Check.failed(
                    "tier",
                    f"accelerator {asset.tenant}/{asset.name} has no class (tier): set one "
                    "with `drydock trust register ... --class TIER`",
                )
            )
        row = _record_verdict(session, asset, verdict, ctx, judged_at=now)
        asset.posture = payload.posture.model_dump()
        failed = verdict.failures
        evidence = {
            "verdict_id": row.id,
            "kind": verdict.kind.value,
            "failed_checks": [check.name for check in failed],
        }
        if verdict.verified:
            cause, detail = "posture_passed", verdict.summary()
            ttl = asset_class.evidence_ttl_seconds if asset_class else 0
            asset.last_verified_at = now
            asset.evidence_expires_at = now + timedelta(
                seconds=ttl or get_settings().trust_default_evidence_ttl_seconds
            )
        else:
            cause = "posture_failed"
            detail = "; ".join(f"gate {c.name} failed: {c.reason}" for c in failed)[:2000]
        moves = moves_after_verdict(
            TrustState(asset.state),
            verdict.verified,
            expired=False,
            cause=cause,
            detail=detail,
            evidence=evidence,
        )
        outcome.verdict, outcome.verdict_id = verdict, row.id
        outcome.state = moves[-1].to_state.value if moves else asset.state
        return moves

    records = trust.transition(payload.asset_id, plan, actor=actor_of(ctx), job_id=ctx.job_id)
    return outcome.result(payload.asset_id, records)


# -- VM inventory ------------------------------------------------------------------------------


def sync_vm_inventory(payload: SyncVmInventoryPayload, ctx: JobContext) -> dict[str, Any]:
    """Link every libvirt domain to a ``vm`` trust asset: by domain UUID when already linked,
    else by name within the tenant, else a new asset in ``unknown``. Linked assets whose domain
    is gone are marked missing (not deleted: their history stays)."""
    uri = get_settings().libvirt_uri
    domains = inventory.list_domains(uri)
    now = datetime.now(UTC)
    added: list[str] = []
    linked: list[str] = []
    for domain in domains:
        with session_scope() as session:
            asset = session.scalar(select(TrustAsset).where(TrustAsset.libvirt_uuid == domain.uuid))
            if asset is None:
                asset = session.scalar(
                    select(TrustAsset).where(
                        TrustAsset.tenant == payload.tenant,
                        TrustAsset.name == domain.name,
                        TrustAsset.kind == AssetKind.VM.value,
                        TrustAsset.libvirt_uuid.is_(None),
                    )
                )
                if asset is not None:
                    linked.append(domain.name)
        if asset is None:
            asset_id, created = trust.register_asset(
                tenant=payload.tenant,
                name=domain.name,
                kind=AssetKind.VM,
                asset_class=payload.asset_class,
                actor=actor_of(ctx),
            )
            if created:
                added.append(domain.name)
        else:
            asset_id = asset.id
        _mark_seen(asset_id, domain, now)
    missing = _mark_missing({domain.uuid for domain in domains}, now)
    ctx.progress(100, f"{len(domains)} domains at {uri}", added=len(added), missing=len(missing))
    return {
        "uri": uri,
        "domains": len(domains),
        "added": added,
        "linked": linked,
        "missing": missing,
    }


def _mark_seen(asset_id: uuid.UUID, domain: inventory.Domain, now: datetime) -> None:
    def plan(session: Session, asset: TrustAsset) -> list[Move]:
        asset.libvirt_uuid = domain.uuid
        asset.libvirt_state = domain.state
        asset.inventory_seen_at = now
        asset.inventory_missing_since = None
        return []

    trust.transition(asset_id, plan, actor="inventory")


def _mark_missing(present: set[uuid.UUID], now: datetime) -> list[str]:
    with session_scope() as session:
        gone = session.scalars(
            select(TrustAsset).where(
                TrustAsset.libvirt_uuid.is_not(None),
                TrustAsset.inventory_missing_since.is_(None),
            )
        ).all()
        missing = []
        for asset in gone:
            if asset.libvirt_uuid not in present:
                asset.inventory_missing_since = now
                missing.append(f"{asset.tenant}/{asset.name}")
        return missing


# -- staleness ---------------------------------------------------------------------------------


def expire_stale_evidence(payload: ExpireStaleEvidencePayload, ctx: JobContext) -> dict[str, Any]:
    records = trust.expire_stale_evidence(
        datetime.now(UTC), actor=actor_of(ctx), limit=payload.limit
    )
    return {"staled": [f"{r.tenant}/{r.asset}" for r in records]}

"""A server's VMs and where each stands in attestation: what ``GET /v1/servers/{id}/vm`` and
``drydock runtime vm SERVER`` show. Four queries whatever the number of VMs (the newest
``LIMIT`` instances on libvirt targets, their host and VM assets, their newest verdicts)."""

from __future__ import annotations

from datetime import datetime
from typing import Any

from sqlalchemy import and_, func, or_, select

from models import runtime
from models.db import session_scope
from models.runtime import Backend, RuntimeInstance
from models.trust import AttestationVerdict, TrustAsset

LIMIT = 20


def vm_posture(ref: str, tenant: str | None) -> dict[str, Any]:
    with session_scope() as session:
        server = runtime.find_server(session, ref, tenant)
        instances = session.scalars(
            select(RuntimeInstance)
            .where(
                RuntimeInstance.server_id == server.id,
                RuntimeInstance.backend == Backend.LIBVIRT.value,
            )
            .order_by(RuntimeInstance.created_at.desc())
            .limit(LIMIT)
        ).all()
        vm_names = [str(i.handle.get("vm_asset")) for i in instances if i.handle.get("vm_asset")]
        host_ids = [i.asset_id for i in instances if i.asset_id is not None]
        assets = session.scalars(
            select(TrustAsset).where(
                or_(
                    TrustAsset.id.in_(host_ids),
                    and_(TrustAsset.tenant == server.tenant, TrustAsset.name.in_(vm_names)),
                )
            )
        ).all()
        by_id = {a.id: a for a in assets}
        by_name = {a.name: a for a in assets if a.tenant == server.tenant}
        vm_ids = [by_name[n].id for n in vm_names if n in by_name]
        verdicts = {
            v.asset_id: v
            for v in session.scalars(
                select(AttestationVerdict).where(
                    AttestationVerdict.id.in_(
                        select(func.max(AttestationVerdict.id))
                        .where(AttestationVerdict.asset_id.in_(vm_ids))
                        .group_by(AttestationVerdict.asset_id)
                    )
                )
            )
        }
        vms = []
        for instance in instances:
            vm = by_name.get(str(instance.handle.get("vm_asset")))
            host = by_id.get(instance.asset_id) if instance.asset_id else None
            verdict = verdicts.get(vm.id) if vm is not None else None
            vms.append(
                {
                    "instance_id": str(instance.id),
                    "state": instance.state,
                    "reason": instance.reason,
                    "target": instance.target,
                    "domain": instance.handle.get("domain"),
                    "libvirt_uri": instance.handle.get("libvirt_uri"),
                    "evidence_nonce": instance.handle.get("nonce"),
                    "host": _asset_json(host),
                    "vm": _asset_json(vm),
                    "last_verdict": _verdict_json(verdict, instance.handle.get("nonce")),
                }
            )
        return {"server_id": str(server.id), "server": f"{server.tenant}/{server.name}", "vms": vms}


def _iso(at: datetime | None) -> str | None:
    return at.isoformat() if at else None


def _asset_json(asset: TrustAsset | None) -> dict[str, Any] | None:
    if asset is None:
        return None
    return {
        "id": str(asset.id),
        "name": f"{asset.tenant}/{asset.name}",
        "state": asset.state,
        "class": asset.asset_class,
        "last_verified_at": _iso(asset.last_verified_at),
        "evidence_expires_at": _iso(asset.evidence_expires_at),
    }


def _verdict_json(verdict: AttestationVerdict | None, nonce: Any) -> dict[str, Any] | None:
    if verdict is None:
        return None
    return {
        "id": verdict.id,
        "kind": verdict.kind,
        "verified": verdict.verified,
        "summary": verdict.summary,
        "judged_at": _iso(verdict.judged_at),
        # Whether it answered this instance's request (a quote of the nonce it was sent).
        "answers_request": verdict.nonce is not None and verdict.nonce == nonce,
    }

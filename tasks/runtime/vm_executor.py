"""The libvirt VM executor: an MCP server in a VM of its own that must attest before it serves.

``start`` defines and starts the domain ``drydock-rt-<instance id>`` (its libvirt UUID is the
instance's) through libvirt-python at the target's ``libvirt_uri`` (else ``DRYDOCK_LIBVIRT_URI``):
memory and vCPUs from the runtime's limits, an emulated TPM 2.0 (``tpm-crb``) as its root of
trust, and the image by digest in the domain's metadata, which the guest's agent runs. It then
registers the VM in the trust registry as the asset ``<tenant>/drydock-rt-<instance id>`` (kind
``vm``, in the target's ``asset_class``, whose reference values its evidence must show), moves it
to ``pending_attestation`` and asks its agent for evidence: a message on the evidence request
channel carrying a fresh nonce, which is also kept in the instance's handle (and shown by
``drydock runtime vm``), so a missed message loses nothing. The agent enrols its attestation key
(``drydock trust register ... --ak``) and sends its quote of that nonce to
``attestation.verify_evidence``, as any asset does.

The instance is ``running`` only once the domain runs and its asset is ``trusted``: its evidence
verified against the class. Until then each probe says what it waits for, for up to
``DRYDOCK_RUNTIME_ATTESTATION_TIMEOUT_SECONDS``. A quarantined asset (a failed quote, an operator)
fails a starting instance at once; a running one is stopped by ``runtime.enforce_trust``. ``stop``
destroys and undefines the domain (none there is fine); the VM's asset and its history stay.

The test driver runs no guest, so no MCP call reaches one: a VM's probe is its domain's state and
its attestation.
"""

from __future__ import annotations

import math
import secrets
import time
from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from datetime import UTC, datetime
from typing import Any
from xml.sax.saxutils import escape, quoteattr

import orjson

from kernel.errors import TransientError
from kernel.settings import get_settings
from models import notices, trust
from models.db import session_scope
from models.runtime import Backend
from models.trust import AssetKind, TrustAsset, TrustState
from tasks.runtime import probes
from tasks.runtime.executors import LaunchFailedError, LaunchSpec

METADATA_NAMESPACE = "https://drydock.dev/runtime"
# virDomainState: running, and what a domain that stopped reports.
DOMAIN_RUNNING = 1
DOMAIN_STATES = {0: "nostate", 1: "running", 2: "blocked", 3: "paused", 4: "shutdown",
                 5: "shutoff", 6: "crashed", 7: "pmsuspended"}  # fmt: skip
VIR_ERR_NO_DOMAIN = 42


class LibvirtUnavailableError(TransientError):
    """The libvirt connection cannot be opened, or dropped."""


class VmExecutor:
    backend = Backend.LIBVIRT

    def probe_seconds(self) -> float:
        return get_settings().runtime_attestation_timeout_seconds

    def prepare(self, spec: LaunchSpec, handle: Mapping[str, Any]) -> dict[str, Any]:
        if handle.get("domain") and handle.get("nonce"):
            return dict(handle)
        asset_class = spec.connection.get("asset_class")
        if not asset_class:
            raise LaunchFailedError(
                "the target names no asset_class: a VM's evidence has nothing to be judged by"
            )
        name = f"drydock-rt-{spec.instance_id}"
        return {
            "domain": name,
            "libvirt_uri": _uri(spec),
            "vm_asset": name,
            "asset_class": str(asset_class),
            "nonce": secrets.token_hex(16),
        }

    def start(self, spec: LaunchSpec, handle: Mapping[str, Any]) -> str:
        import libvirt

        name = str(handle["domain"])
        with _connection(str(handle["libvirt_uri"])) as connection:
            domain = _domain(connection, name)
            try:
                if domain is None:
                    domain = connection.defineXML(domain_xml(spec, handle))
                if not domain.isActive():
                    domain.create()
            except libvirt.libvirtError as exc:
                raise LaunchFailedError(f"libvirt refused domain {name}: {exc}") from None
        self._ask_for_evidence(spec, handle)
        return f"libvirt:{name}"

    def _ask_for_evidence(self, spec: LaunchSpec, handle: Mapping[str, Any]) -> None:
        name, nonce = str(handle["vm_asset"]), str(handle["nonce"])
        try:
            asset_id, _ = trust.register_asset(
                tenant=spec.tenant,
                name=name,
                kind=AssetKind.VM,
                actor="runtime",
                asset_class=str(handle["asset_class"]),
            )
        except trust.AssetClassNotFoundError as exc:
            raise LaunchFailedError(f"the target's asset_class: {exc}") from None

        def plan(session: Any, asset: TrustAsset) -> list[trust.Move]:
            if asset.state != TrustState.UNKNOWN.value:
                return []
            detail = f"VM of instance {spec.instance_id} asked for evidence (nonce {nonce})"
            return [trust.Move(TrustState.PENDING_ATTESTATION, "attestation_requested", detail)]

        trust.transition(asset_id, plan, actor="runtime")
        message = {
            "asset_id": str(asset_id),
            "tenant": spec.tenant,
            "asset": name,
            "instance_id": str(spec.instance_id),
            "nonce": nonce,
            "requested_at": datetime.now(UTC).isoformat(),
        }
        notices.publish(trust.EVIDENCE_REQUEST_CHANNEL, [orjson.dumps(message)])

    def probe(
        self, spec: LaunchSpec, handle: Mapping[str, Any], endpoint: str
    ) -> probes.ProbeResult:
        began = time.monotonic()
        state = self._domain_state(handle)
        if state != "running":
            detail = f"domain {handle['domain']} is {state}"
            return probes.ProbeResult(False, detail, (time.monotonic() - began) * 1000)
        asset = _asset(spec.tenant, str(handle["vm_asset"]))
        if asset is None or asset.state != TrustState.TRUSTED.value:
            where = asset.state if asset is not None else "not registered"
            detail = (
                f"domain running; waiting for its evidence (asset {spec.tenant}/"
                f"{handle['vm_asset']} is {where}, nonce {handle['nonce']})"
            )
            return probes.ProbeResult(False, detail, (time.monotonic() - began) * 1000)
        expires = asset.evidence_expires_at.isoformat() if asset.evidence_expires_at else "never"
        detail = (
            f"domain running; asset {spec.tenant}/{asset.name} trusted (evidence verified "
            f"{asset.last_verified_at.isoformat() if asset.last_verified_at else '?'}, "
            f"expires {expires})"
        )
        return probes.ProbeResult(True, detail, (time.monotonic() - began) * 1000)

    def exited(self, spec: LaunchSpec, handle: Mapping[str, Any]) -> str | None:
        state = self._domain_state(handle)
        if state != "running":
            return f"its domain {handle['domain']} is {state}"
        asset = _asset(spec.tenant, str(handle["vm_asset"]))
        if asset is not None and asset.state == TrustState.QUARANTINED.value:
            return f"its asset {spec.tenant}/{asset.name} was quarantined"
        return None

    def stop(self, spec: LaunchSpec, handle: Mapping[str, Any]) -> str:
        import libvirt

        if not handle.get("domain"):
            return ""
        name = str(handle["domain"])
        with _connection(str(handle["libvirt_uri"])) as connection:
            domain = _domain(connection, name)
            if domain is None:
                return f"domain {name}: not there (nothing to stop)"
            was = DOMAIN_STATES.get(domain.state()[0], "unknown")
            try:
                if domain.isActive():
                    domain.destroy()
                domain.undefine()
            except libvirt.libvirtError as exc:
                if exc.get_error_code() != VIR_ERR_NO_DOMAIN:
                    raise LibvirtUnavailableError(f"libvirt: {exc}") from None
        return f"domain {name}: destroyed and undefined (was {was})"

    def _domain_state(self, handle: Mapping[str, Any]) -> str:
        with _connection(str(handle["libvirt_uri"])) as connection:
            domain = _domain(connection, str(handle["domain"]))
            if domain is None:
                return "gone"
            return DOMAIN_STATES.get(domain.state()[0], "unknown")


def _uri(spec: LaunchSpec) -> str:
    return str(spec.connection.get("libvirt_uri") or get_settings().libvirt_uri)


@contextmanager
def _connection(uri: str) -> Iterator[Any]:
    import libvirt

    try:
        connection = libvirt.open(uri)
    except libvirt.libvirtError as exc:
        raise LibvirtUnavailableError(f"libvirt at {uri} cannot be reached: {exc}") from None
    try:
        yield connection
    finally:
        connection.close()


def _domain(connection: Any, name: str) -> Any:
    import libvirt

    try:
        return connection.lookupByName(name)
    except libvirt.libvirtError as exc:
        if exc.get_error_code() == VIR_ERR_NO_DOMAIN:
            return None
        raise LibvirtUnavailableError(f"libvirt: {exc}") from None


def _asset(tenant: str, name: str) -> TrustAsset | None:
    with session_scope() as session:
        try:
            asset = trust.find_asset(session, name, tenant)
        except trust.AssetNotFoundError:
            return None
        session.expunge(asset)
        return asset


def domain_xml(spec: LaunchSpec, handle: Mapping[str, Any]) -> str:
    """The domain: the instance's UUID, the runtime's limits, a TPM 2.0, the image to run."""
    return f"""<domain type='kvm'>
  <name>{escape(str(handle["domain"]))}</name>
  <uuid>{spec.instance_id}</uuid>
  <metadata>
    <drydock:runtime xmlns:drydock={quoteattr(METADATA_NAMESPACE)}>
      <drydock:instance>{spec.instance_id}</drydock:instance>
      <drydock:server>{escape(f"{spec.tenant}/{spec.server}")}</drydock:server>
      <drydock:image>{escape(spec.image)}</drydock:image>
    </drydock:runtime>
  </metadata>
  <memory unit='MiB'>{spec.memory_mb}</memory>
  <vcpu>{max(1, math.ceil(spec.cpus))}</vcpu>
  <os><type arch='x86_64'>hvm</type></os>
  <devices>
    <tpm model='tpm-crb'><backend type='emulator' version='2.0'/></tpm>
  </devices>
</domain>"""

"""``drydock trust``: the trust registry: asset classes (reference values and policy), assets,
their state and history, and live transitions."""

from __future__ import annotations

import json
import re
import sys
from pathlib import Path

import typer
from rich.console import Console
from rich.table import Table

from drydock.cli.attest import UnusableInputError, parse_min_tcb, parse_pcr_reference
from drydock.cli.text import current_operator, when
from kernel.errors import DrydockError

trust_app = typer.Typer(
    help="The trust registry: asset classes, assets, their state and history, live transitions.",
    no_args_is_help=True,
)
class_app = typer.Typer(help="Asset classes: reference values and policy.", no_args_is_help=True)
trust_app.add_typer(class_app, name="class")

out = Console()
err = Console(stderr=True)


# ---- trust classes ---------------------------------------------------------------------------


def _ttl(text: str) -> int:
    match = re.fullmatch(r"(\d+)([smhd]?)", text.strip())
    if not match or int(match.group(1)) == 0:
        raise DrydockError(f"--ttl {text!r}: expected a duration like 3600, 30m, 12h or 7d")
    scale = {"": 1, "s": 1, "m": 60, "h": 3600, "d": 86400}[match.group(2)]
    return int(match.group(1)) * scale


def _checked_hex(values: list[str], what: str) -> list[str]:
    for value in values:
        try:
            bytes.fromhex(value)
        except ValueError:
            raise DrydockError(f"{what}: {value!r} is not hex") from None
    return [value.lower() for value in values]


@class_app.command("set")
def class_set(
    name: str = typer.Argument(..., help="Class name (a VM image, a host model, a GPU tier)."),
    ttl: str = typer.Option("24h", "--ttl", help="How long verified evidence keeps trust."),
    pcr: list[str] = typer.Option([], "--pcr", help="TPM reference BANK:INDEX=HEX, repeatable."),
    measurement: list[str] = typer.Option([], "--measurement", help="Allowed SNP measurement."),
    min_tcb: str | None = typer.Option(
        None, "--min-tcb", help="Lowest SNP TCB: bootloader=N,tee=N,snp=N,microcode=N."
    ),
    mr_td: list[str] = typer.Option([], "--mr-td", help="Allowed TDX MRTD, repeatable."),
    rtmr: list[str] = typer.Option([], "--rtmr", help="Expected TDX RTMR INDEX=HEX, repeatable."),
    tcb_status: list[str] = typer.Option(
        [], "--accept-tcb-status", help="TDX TCB status accepted (default UpToDate)."
    ),
    allow_debug: bool = typer.Option(False, "--allow-debug", help="Accept debug guests."),
    min_driver: str | None = typer.Option(None, "--min-driver", help="Accelerator tier minimum."),
    require_cc: bool = typer.Option(False, "--require-cc", help="Accelerators need CC mode on."),
    require_ecc: bool = typer.Option(False, "--require-ecc", help="Accelerators need ECC on."),
    remediation_playbook: str | None = typer.Option(
        None,
        "--remediation-playbook",
        help="Playbook requested by itself for the class's quarantined assets (the tenant's).",
    ),
) -> None:
    """Create or replace an asset class's reference values and policy."""
    from evidence.posture import parse_version
    from models.db import session_scope
    from models.trust import TrustAssetClass

    try:
        pcrs = {
            bank: {str(index): value.hex() for index, value in values.items()}
            for bank, values in parse_pcr_reference(pcr).items()
        }
        tcb = parse_min_tcb(min_tcb)
    except UnusableInputError as exc:
        raise DrydockError(str(exc)) from None
    rtmrs: dict[str, str] = {}
    for text in rtmr:
        index, _, value = text.partition("=")
        if index not in {"0", "1", "2", "3"}:
            raise DrydockError(f"--rtmr {text!r}: expected INDEX=HEX with INDEX 0..3")
        rtmrs[index] = _checked_hex([value], "--rtmr")[0]
    if min_driver is not None:
        try:
            parse_version(min_driver)
        except ValueError as exc:
            raise DrydockError(f"--min-driver: {exc}") from None
    with session_scope() as session:
        row = session.get(TrustAssetClass, name) or TrustAssetClass(name=name)
        row.evidence_ttl_seconds = _ttl(ttl)
        row.tpm_pcrs = pcrs
        row.snp_measurements = _checked_hex(measurement, "--measurement")
        row.snp_min_tcb = tcb.components() if tcb is not None else None
        row.tdx_mr_td = _checked_hex(mr_td, "--mr-td")
        row.tdx_rtmrs = rtmrs
        row.tdx_accepted_tcb_statuses = tcb_status
        row.allow_debug = allow_debug
        row.accelerator_min_driver = min_driver
        row.accelerator_require_cc = require_cc
        row.accelerator_require_ecc = require_ecc
        row.remediation_playbook = (remediation_playbook or "").strip() or None
        row.updated_by = current_operator()
        session.add(row)
    out.print(f"class {name} set")


@class_app.command("list")
def class_list() -> None:
    """Every asset class and what it pins."""
    from sqlalchemy import select

    from models.db import session_scope
    from models.trust import TrustAssetClass

    table = Table("class", "ttl", "tpm pcrs", "snp", "tdx", "accelerators", "debug")
    with session_scope() as session:
        for row in session.scalars(select(TrustAssetClass).order_by(TrustAssetClass.name)):
            pcrs = sum(len(values) for values in row.tpm_pcrs.values())
            gates = [
                f"driver>={row.accelerator_min_driver}" if row.accelerator_min_driver else "",
                "cc" if row.accelerator_require_cc else "",
                "ecc" if row.accelerator_require_ecc else "",
            ]
            table.add_row(
                row.name,
                f"{row.evidence_ttl_seconds}s",
                str(pcrs),
                f"{len(row.snp_measurements)} measurements"
                + (" min tcb" if row.snp_min_tcb else ""),
                f"{len(row.tdx_mr_td)} mrtd, {len(row.tdx_rtmrs)} rtmr",
                " ".join(gate for gate in gates if gate) or "-",
                "allowed" if row.allow_debug else "refused",
            )
    out.print(table)


# ---- trust assets ----------------------------------------------------------------------------


@trust_app.command("register")
def register(
    name: str = typer.Argument(..., help="Asset name, unique within its tenant."),
    tenant: str = typer.Option(..., "--tenant", help="Tenant the asset belongs to."),
    kind: str = typer.Option(..., "--kind", help="vm, host or accelerator."),
    asset_class: str | None = typer.Option(None, "--class", help="Its asset class."),
    ak: Path | None = typer.Option(
        None, "--ak", help="TPM attestation key (PEM, TPMT_PUBLIC or JWK) its quotes are signed by."
    ),
) -> None:
    """Register an asset (state unknown), or update an existing one's class and key."""
    from evidence import tpm
    from evidence.verdict import EvidenceFormatError
    from models import trust
    from models.trust import AssetKind

    try:
        asset_kind = AssetKind(kind)
    except ValueError:
        raise DrydockError(f"--kind {kind!r}: expected vm, host or accelerator") from None
    key = None
    if ak is not None:
        try:
            key = ak.read_bytes()
            tpm.load_attestation_key(key)
        except OSError as exc:
            raise DrydockError(f"--ak: cannot read {ak}: {exc.strerror}") from None
        except EvidenceFormatError as exc:
            raise DrydockError(str(exc)) from None
    asset_id, created = trust.register_asset(
        tenant=tenant,
        name=name,
        kind=asset_kind,
        asset_class=asset_class,
        attestation_key=key,
        actor=f"operator:{current_operator()}",
    )
    out.print(f"{'registered' if created else 'updated'} {tenant}/{name} {asset_id}")


@trust_app.command("list")
def list_assets(
    tenant: str | None = typer.Option(None, "--tenant"),
    state: str | None = typer.Option(None, "--state"),
) -> None:
    """Assets and where they stand."""
    from sqlalchemy import select

    from models.db import session_scope
    from models.trust import TrustAsset

    query = select(TrustAsset).order_by(TrustAsset.tenant, TrustAsset.name)
    if tenant:
        query = query.where(TrustAsset.tenant == tenant)
    if state:
        query = query.where(TrustAsset.state == state)
    table = Table("asset", "kind", "class", "state", "evidence expires", "id")
    with session_scope() as session:
        for asset in session.scalars(query):
            table.add_row(
                f"{asset.tenant}/{asset.name}",
                asset.kind,
                asset.asset_class or "-",
                asset.state,
                when(asset.evidence_expires_at),
                str(asset.id),
            )
    out.print(table)


@trust_app.command("show")
def show(
    asset_ref: str = typer.Argument(..., metavar="ASSET", help="Asset id, or tenant/name."),
    tenant: str | None = typer.Option(None, "--tenant"),
    as_json: bool = typer.Option(False, "--json", help="Print as JSON."),
) -> None:
    """An asset's state, its newest verdict and its whole history."""

    from models import trust
    from models.db import session_scope

    with session_scope() as session:
        asset = trust.find_asset(session, asset_ref, tenant)
        rows = trust.history(session, asset.id)
        verdict = trust.latest_verdict(session, asset.id)
        records = [trust.TransitionRecord.of(row, asset) for row in rows]
        if as_json:
            document = {
                "id": str(asset.id),
                "tenant": asset.tenant,
                "name": asset.name,
                "kind": asset.kind,
                "class": asset.asset_class,
                "state": asset.state,
                "version": asset.version,
                "evidence_expires_at": when(asset.evidence_expires_at) or None,
                "last_verdict": None
                if verdict is None
                else {"id": verdict.id, "verified": verdict.verified, "summary": verdict.summary},
                "history": [record.__dict__ for record in records],
            }
            sys.stdout.write(json.dumps(document, indent=2) + "\n")
            return
        out.print(
            f"[bold]{asset.tenant}/{asset.name}[/] {asset.kind} ({asset.id})", highlight=False
        )
        out.print(f"  state      {asset.state} (version {asset.version})", highlight=False)
        out.print(f"  class      {asset.asset_class or '-'}", highlight=False)
        expires = when(asset.evidence_expires_at) or "-"
        out.print(f"  evidence   expires {expires}", highlight=False)
        if asset.libvirt_uuid:
            out.print(
                f"  libvirt    {asset.libvirt_uuid} {asset.libvirt_state or ''}", highlight=False
            )
        if verdict is not None:
            out.print(
                f"  verdict    #{verdict.id} {verdict.summary}", markup=False, highlight=False
            )
        out.print("history:")
        for record in records:
            out.print(f"  {record.line()}", markup=False, highlight=False, soft_wrap=True)


@trust_app.command("move")
def move(
    asset_ref: str = typer.Argument(..., metavar="ASSET", help="Asset id, or tenant/name."),
    to_state: str = typer.Option(
        ..., "--to", help="quarantined (out of service) or pending_attestation (attest again)."
    ),
    reason: str = typer.Option("", "--reason", help="Why: kept in the asset's history."),
    if_version: int | None = typer.Option(
        None,
        "--if-version",
        help="Move only if the asset is still at this version (as `trust show` printed it).",
    ),
    tenant: str | None = typer.Option(None, "--tenant"),
) -> None:
    """Quarantine an asset, or ask it to attest again, by hand. Releasing a quarantine is
    remediation's."""
    from models import trust
    from models.db import session_scope
    from models.trust import TrustState
    from models.trust_actions import move_by_operator

    try:
        target = TrustState(to_state)
    except ValueError:
        raise DrydockError(
            f"--to {to_state!r}: expected quarantined or pending_attestation"
        ) from None
    with session_scope() as session:
        asset_id = trust.find_asset(session, asset_ref, tenant).id
    records = move_by_operator(
        asset_id,
        target,
        reason=reason,
        actor=f"operator:{current_operator()}",
        expected_version=if_version,
    )
    for record in records:
        out.print(record.line(), markup=False, highlight=False, soft_wrap=True)


@trust_app.command("watch")
def watch(
    tenant: str | None = typer.Option(None, "--tenant", help="Only this tenant's assets."),
    via: str = typer.Option(
        "postgres",
        "--via",
        help="postgres (LISTEN: every committed transition) or redis (pub/sub).",
    ),
) -> None:
    """Print transitions as they happen, one line each, until interrupted."""
    from models import trust

    def ready() -> None:
        scope = f" of tenant {tenant}" if tenant else ""
        err.print(f"watching transitions{scope} via {via} (Ctrl-C stops)", highlight=False)

    if via == "postgres":
        stream = trust.listen(tenant=tenant, on_ready=ready)
    elif via == "redis":
        stream = trust.subscribe(tenant=tenant, on_ready=ready)
    else:
        raise DrydockError(f"--via {via!r}: expected postgres or redis")
    try:
        for record in stream:
            sys.stdout.write(record.line() + "\n")
            sys.stdout.flush()
    except KeyboardInterrupt:
        raise typer.Exit(0) from None

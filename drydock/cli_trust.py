"""``drydock attest`` and ``drydock trust``: verify evidence offline with the verifiers the
attestation queue runs, and read and follow the trust registry."""

from __future__ import annotations

import json
import re
import sys
from collections.abc import Callable
from datetime import UTC, datetime
from pathlib import Path
from typing import TYPE_CHECKING, Any, NoReturn

import typer
from rich.console import Console
from rich.table import Table

from drydock.cli_text import current_operator, when
from kernel.errors import DrydockError

if TYPE_CHECKING:
    from cryptography import x509

    from tasks.attestation.verdict import Verdict

attest_app = typer.Typer(
    help="Verify attestation evidence offline (TPM 2.0 quotes, SEV-SNP reports, TDX quotes).",
    no_args_is_help=True,
)
verify_app = typer.Typer(
    help=(
        "Verify one piece of evidence and print the verdict check by check. "
        "Exit 0: verified; 1: not verified; 2: unusable input."
    ),
    no_args_is_help=True,
)
attest_app.add_typer(verify_app, name="verify")
trust_app = typer.Typer(
    help="The trust registry: asset classes, assets, their state and history, live transitions.",
    no_args_is_help=True,
)
class_app = typer.Typer(help="Asset classes: reference values and policy.", no_args_is_help=True)
trust_app.add_typer(class_app, name="class")

out = Console()
err = Console(stderr=True)

# Exit codes of `drydock attest verify`.
VERIFIED, NOT_VERIFIED, UNUSABLE = 0, 1, 2


class UnusableInputError(DrydockError):
    pass


# ---- attest verify ----------------------------------------------------------------------------

NONCE_HELP = "The challenge the evidence must carry, hex. Omitted: freshness is not checked."
AT_HELP = (
    "Judge certificates and collateral at this ISO time (e.g. 2023-07-01T01:00:00Z) instead of "
    "now: they expire, archived evidence needs its own time."
)
JSON_HELP = "Print the verdict as JSON."
ROOT_HELP = (
    "Pinned root certificate file (PEM or DER; self-signed certificates in it count), "
    "repeatable. Default: those in DRYDOCK_ATTESTATION_ROOTS_DIR."
)


def _read(path: Path, what: str) -> bytes:
    try:
        return path.read_bytes()
    except OSError as exc:
        raise UnusableInputError(f"{what}: cannot read {path}: {exc.strerror or exc}") from None


def _nonce(text: str | None) -> bytes | None:
    if text is None:
        return None
    try:
        return bytes.fromhex(text.removeprefix("0x"))
    except ValueError:
        raise UnusableInputError(f"--nonce: {text!r} is not hex") from None


def _at(text: str | None) -> datetime:
    if text is None:
        return datetime.now(UTC)
    try:
        moment = datetime.fromisoformat(text)
    except ValueError:
        raise UnusableInputError(f"--at: {text!r} is not an ISO time") from None
    return moment.replace(tzinfo=UTC) if moment.tzinfo is None else moment


def _hex(text: str, what: str) -> bytes:
    try:
        return bytes.fromhex(text)
    except ValueError:
        raise UnusableInputError(f"{what}: {text!r} is not hex") from None


def _roots(files: list[Path]) -> list[x509.Certificate]:
    from tasks.attestation.certs import is_self_signed, load_certificates
    from tasks.attestation.domain import trust_roots

    if not files:
        return trust_roots()
    roots = []
    for path in files:
        found = [
            c for c in load_certificates(str(path), _read(path, "--root")) if is_self_signed(c)
        ]
        if not found:
            raise UnusableInputError(f"--root {path}: holds no self-signed (root) certificate")
        roots += found
    return roots


def _run_verifier(judge: Callable[[], Verdict], as_json: bool) -> NoReturn:
    from tasks.attestation.verdict import EvidenceFormatError

    try:
        verdict = judge()
    except (EvidenceFormatError, UnusableInputError) as exc:
        if as_json:
            sys.stdout.write(json.dumps({"usable": False, "error": str(exc)}) + "\n")
        err.print(f"unusable input: {exc}", markup=False, highlight=False, soft_wrap=True)
        raise typer.Exit(UNUSABLE) from None
    if as_json:
        sys.stdout.write(json.dumps(verdict.as_dict(), indent=2) + "\n")
    else:
        print_verdict(verdict)
    raise typer.Exit(VERIFIED if verdict.verified else NOT_VERIFIED)


def print_verdict(verdict: Verdict) -> None:
    marks = {"pass": "[green]PASS[/]", "fail": "[red]FAIL[/]", "skip": "[dim]skip[/]"}
    width = max((len(check.name) for check in verdict.checks), default=10)
    for check in verdict.checks:
        out.print(f"{marks[check.outcome.value]}  {check.name:<{width}}  ", end="", highlight=False)
        out.print(check.reason, markup=False, highlight=False, soft_wrap=True)
    colour = "green" if verdict.verified else "red"
    out.print(f"[bold {colour}]{verdict.summary()}[/]", highlight=False)


def _pcr_reference(values: list[str]) -> dict[str, dict[int, bytes]]:
    reference: dict[str, dict[int, bytes]] = {}
    for text in values:
        match = re.fullmatch(r"(sha1|sha256|sha384|sha512):(\d+)=([0-9a-fA-F]+)", text)
        if not match:
            raise UnusableInputError(f"--expect-pcr {text!r}: expected BANK:INDEX=HEX")
        bank, index, value = match.groups()
        reference.setdefault(bank, {})[int(index)] = bytes.fromhex(value)
    return reference


@verify_app.command("tpm")
def verify_tpm(
    quote: Path = typer.Option(..., "--quote", help="TPMS_ATTEST as signed (tpm2_quote -m)."),
    signature: Path = typer.Option(..., "--signature", help="TPMT_SIGNATURE (tpm2_quote -s)."),
    ak: Path = typer.Option(..., "--ak", help="Attestation key: PEM, TPMT_PUBLIC or JWK."),
    pcrs: Path = typer.Option(
        ..., "--pcrs", help="Quoted PCR values: JSON, or tpm2_quote -o values output."
    ),
    expect_pcr: list[str] = typer.Option(
        [], "--expect-pcr", help="Reference value BANK:INDEX=HEX, repeatable."
    ),
    nonce: str | None = typer.Option(None, "--nonce", help=NONCE_HELP),
    at: str | None = typer.Option(None, "--at", help=AT_HELP),
    as_json: bool = typer.Option(False, "--json", help=JSON_HELP),
) -> None:
    """Verify a TPM 2.0 quote: signature with the AK, nonce, PCR digest, reference PCRs."""
    from tasks.attestation import tpm

    def judge() -> Verdict:
        return tpm.verify_tpm_quote(
            tpm.TpmEvidence(
                quote=_read(quote, "--quote"),
                signature=_read(signature, "--signature"),
                pcrs=_read(pcrs, "--pcrs"),
                ak=_read(ak, "--ak"),
            ),
            nonce=_nonce(nonce),
            reference=tpm.TpmReference(pcrs=_pcr_reference(expect_pcr)),
            last_counters=None,
            at=_at(at),
        )

    _run_verifier(judge, as_json)


def _min_tcb(text: str | None) -> Any:
    from tasks.attestation.sev_snp import SnpTcb

    if text is None:
        return None
    values: dict[str, int] = {}
    for part in text.split(","):
        name, _, number = part.partition("=")
        if (
            name.strip() not in {"bootloader", "tee", "snp", "microcode", "fmc"}
            or not number.strip().isdigit()
        ):
            raise UnusableInputError(
                f"--min-tcb {text!r}: expected bootloader=N,tee=N,snp=N,microcode=N[,fmc=N]"
            )
        values[name.strip()] = int(number)
    missing = {"bootloader", "tee", "snp", "microcode"} - set(values)
    if missing:
        raise UnusableInputError(f"--min-tcb: missing {', '.join(sorted(missing))}")
    return SnpTcb(**values)


@verify_app.command("sev-snp")
def verify_sev_snp(
    report: Path = typer.Option(..., "--report", help="The raw SNP report (or its hex text)."),
    vcek: Path = typer.Option(..., "--vcek", help="The VCEK or VLEK certificate, PEM or DER."),
    chain: Path = typer.Option(..., "--chain", help="ASK (or ASVK) then ARK, PEM."),
    root: list[Path] = typer.Option([], "--root", help=ROOT_HELP),
    measurement: list[str] = typer.Option(
        [], "--measurement", help="An allowed launch measurement, hex, repeatable."
    ),
    min_tcb: str | None = typer.Option(
        None, "--min-tcb", help="Lowest TCB accepted: bootloader=N,tee=N,snp=N,microcode=N."
    ),
    allow_debug: bool = typer.Option(False, "--allow-debug", help="Accept a debug-enabled guest."),
    nonce: str | None = typer.Option(None, "--nonce", help=NONCE_HELP),
    at: str | None = typer.Option(None, "--at", help=AT_HELP),
    as_json: bool = typer.Option(False, "--json", help=JSON_HELP),
) -> None:
    """Verify an AMD SEV-SNP report: VCEK/VLEK signature and chain, TCB, nonce, policy."""
    from tasks.attestation import sev_snp

    def judge() -> Verdict:
        return sev_snp.verify_sev_snp_report(
            sev_snp.SnpEvidence(
                report=_read(report, "--report"),
                vcek=_read(vcek, "--vcek"),
                chain=_read(chain, "--chain"),
            ),
            roots=_roots(root),
            nonce=_nonce(nonce),
            policy=sev_snp.SnpPolicy(
                measurements=frozenset(_hex(m, "--measurement") for m in measurement) or None,
                allow_debug=allow_debug,
                min_tcb=_min_tcb(min_tcb),
            ),
            at=_at(at),
        )

    _run_verifier(judge, as_json)


@verify_app.command("tdx")
def verify_tdx(
    quote: Path = typer.Option(..., "--quote", help="The TDX quote (v4 or v5)."),
    collateral: Path | None = typer.Option(
        None,
        "--collateral",
        help=(
            "Signed Intel collateral: PCCS JSON, or a directory of PCS files (tcbinfo*.json, "
            "qe_identity.json, CRLs, signing chain). With it the TCB status is judged."
        ),
    ),
    root: list[Path] = typer.Option([], "--root", help=ROOT_HELP),
    mr_td: list[str] = typer.Option([], "--mr-td", help="An allowed MRTD, hex, repeatable."),
    tcb_status: list[str] = typer.Option(
        [], "--accept-tcb-status", help="A TCB status accepted (default UpToDate), repeatable."
    ),
    allow_debug: bool = typer.Option(False, "--allow-debug", help="Accept a debug TD."),
    nonce: str | None = typer.Option(None, "--nonce", help=NONCE_HELP),
    at: str | None = typer.Option(None, "--at", help=AT_HELP),
    as_json: bool = typer.Option(False, "--json", help=JSON_HELP),
) -> None:
    """Verify an Intel TDX quote: signatures, QE binding, PCK chain, TCB status, policy."""
    from tasks.attestation import tdx

    def judge() -> Verdict:
        collateral_bytes = None
        if collateral is not None:
            if collateral.is_dir():
                collateral_bytes = tdx.collateral_from_directory(collateral)
            else:
                collateral_bytes = _read(collateral, "--collateral")
        return tdx.verify_tdx_quote(
            tdx.TdxEvidence(quote=_read(quote, "--quote"), collateral=collateral_bytes),
            roots=_roots(root),
            nonce=_nonce(nonce),
            policy=tdx.TdxPolicy(
                allow_debug=allow_debug,
                mr_td=frozenset(_hex(m, "--mr-td") for m in mr_td) or None,
                accepted_tcb_statuses=frozenset(tcb_status or ["UpToDate"]),
            ),
            at=_at(at),
        )

    _run_verifier(judge, as_json)


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
) -> None:
    """Create or replace an asset class's reference values and policy."""
    from models.db import session_scope
    from models.tables import TrustAssetClass
    from tasks.attestation.posture import parse_version

    try:
        pcrs = {
            bank: {str(index): value.hex() for index, value in values.items()}
            for bank, values in _pcr_reference(pcr).items()
        }
        tcb = _min_tcb(min_tcb)
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
        row.updated_by = current_operator()
        session.add(row)
    out.print(f"class {name} set")


@class_app.command("list")
def class_list() -> None:
    """Every asset class and what it pins."""
    from sqlalchemy import select

    from models.db import session_scope
    from models.tables import TrustAssetClass

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
    from models import trust
    from models.tables import AssetKind
    from tasks.attestation import tpm
    from tasks.attestation.verdict import EvidenceFormatError

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
    from models.tables import TrustAsset

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

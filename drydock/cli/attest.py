"""``drydock attest verify``: verify evidence offline with the verifiers the attestation queue
runs (TPM 2.0 quotes, SEV-SNP reports, TDX quotes, Azure confidential VMs)."""

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

from kernel.errors import DrydockError

if TYPE_CHECKING:
    from cryptography import x509

    from evidence.verdict import Verdict

attest_app = typer.Typer(
    help=(
        "Verify attestation evidence offline (TPM 2.0 quotes, SEV-SNP reports, TDX quotes, "
        "Azure confidential VMs)."
    ),
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
    "repeatable, beside the built-in vendor roots. Default: those in "
    "DRYDOCK_ATTESTATION_ROOTS_DIR."
)
NO_DEFAULT_ROOTS_HELP = (
    "Trust only the roots given (or configured), not the built-in AMD ARKs and Intel SGX Root CA."
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


def _roots(files: list[Path], no_default_roots: bool) -> list[x509.Certificate]:
    from evidence.certs import is_self_signed, load_certificates
    from evidence.vendor_roots import with_vendor_roots
    from kernel.settings import get_settings
    from tasks.attestation.domain import configured_roots

    use_defaults = not no_default_roots and get_settings().attestation_default_roots
    if not files:
        return with_vendor_roots(configured_roots(), use_defaults=use_defaults)
    roots = []
    for path in files:
        found = [
            c for c in load_certificates(str(path), _read(path, "--root")) if is_self_signed(c)
        ]
        if not found:
            raise UnusableInputError(f"--root {path}: holds no self-signed (root) certificate")
        roots += found
    return with_vendor_roots(roots, use_defaults=use_defaults)


def _run_verifier(judge: Callable[[], Verdict], as_json: bool) -> NoReturn:
    from evidence.verdict import EvidenceFormatError

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


def parse_pcr_reference(values: list[str]) -> dict[str, dict[int, bytes]]:
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
    signature: Path = typer.Option(
        ...,
        "--signature",
        help="TPMT_SIGNATURE (tpm2_quote -s), or the bare signature (tpm2_quote -f plain).",
    ),
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
    from evidence import tpm

    def judge() -> Verdict:
        return tpm.verify_tpm_quote(
            tpm.TpmEvidence(
                quote=_read(quote, "--quote"),
                signature=_read(signature, "--signature"),
                pcrs=_read(pcrs, "--pcrs"),
                ak=_read(ak, "--ak"),
            ),
            nonce=_nonce(nonce),
            reference=tpm.TpmReference(pcrs=parse_pcr_reference(expect_pcr)),
            last_counters=None,
            at=_at(at),
        )

    _run_verifier(judge, as_json)


def parse_min_tcb(text: str | None) -> Any:
    from evidence.sev_snp import SnpTcb

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
    no_default_roots: bool = typer.Option(False, "--no-default-roots", help=NO_DEFAULT_ROOTS_HELP),
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
    from evidence import sev_snp

    def judge() -> Verdict:
        return sev_snp.verify_sev_snp_report(
            sev_snp.SnpEvidence(
                report=_read(report, "--report"),
                vcek=_read(vcek, "--vcek"),
                chain=_read(chain, "--chain"),
            ),
            roots=_roots(root, no_default_roots),
            nonce=_nonce(nonce),
            policy=sev_snp.SnpPolicy(
                measurements=frozenset(_hex(m, "--measurement") for m in measurement) or None,
                allow_debug=allow_debug,
                min_tcb=parse_min_tcb(min_tcb),
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
    no_default_roots: bool = typer.Option(False, "--no-default-roots", help=NO_DEFAULT_ROOTS_HELP),
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
    from evidence import tdx

    def judge() -> Verdict:
        collateral_bytes = None
        if collateral is not None:
            if collateral.is_dir():
                collateral_bytes = tdx.collateral_from_directory(collateral)
            else:
                collateral_bytes = _read(collateral, "--collateral")
        return tdx.verify_tdx_quote(
            tdx.TdxEvidence(quote=_read(quote, "--quote"), collateral=collateral_bytes),
            roots=_roots(root, no_default_roots),
            nonce=_nonce(nonce),
            policy=tdx.TdxPolicy(
                allow_debug=allow_debug,
                mr_td=frozenset(_hex(m, "--mr-td") for m in mr_td) or None,
                accepted_tcb_statuses=frozenset(tcb_status or ["UpToDate"]),
            ),
            at=_at(at),
        )

    _run_verifier(judge, as_json)


@verify_app.command("azure-cvm")
def verify_azure_cvm(
    hcl_report: Path = typer.Option(
        ..., "--hcl-report", help="The HCL report (vTPM NV index 0x01400001, as read)."
    ),
    vcek: Path = typer.Option(
        ...,
        "--vcek",
        help="The VCEK, PEM or DER; or the VCEK then its chain in one PEM (as THIM serves them).",
    ),
    chain: Path | None = typer.Option(
        None, "--chain", help="ASK then ARK, PEM. Omitted: the rest of the --vcek file."
    ),
    quote: Path | None = typer.Option(
        None, "--quote", help="The vTPM quote (TPMS_ATTEST) signed by HCLAkPub."
    ),
    signature: Path | None = typer.Option(
        None, "--signature", help="The quote's signature: TPMT_SIGNATURE or bare."
    ),
    pcrs: Path | None = typer.Option(
        None, "--pcrs", help="Quoted PCR values: JSON, or tpm2_quote -o values output."
    ),
    root: list[Path] = typer.Option([], "--root", help=ROOT_HELP),
    no_default_roots: bool = typer.Option(False, "--no-default-roots", help=NO_DEFAULT_ROOTS_HELP),
    measurement: list[str] = typer.Option(
        [], "--measurement", help="An allowed launch measurement, hex, repeatable."
    ),
    min_tcb: str | None = typer.Option(
        None, "--min-tcb", help="Lowest TCB accepted: bootloader=N,tee=N,snp=N,microcode=N."
    ),
    allow_debug: bool = typer.Option(False, "--allow-debug", help="Accept a debug-enabled guest."),
    expect_pcr: list[str] = typer.Option(
        [], "--expect-pcr", help="Reference value BANK:INDEX=HEX, repeatable."
    ),
    nonce: str | None = typer.Option(
        None, "--nonce", help=NONCE_HELP + " Needs --quote: the quote carries it."
    ),
    at: str | None = typer.Option(None, "--at", help=AT_HELP),
    as_json: bool = typer.Option(False, "--json", help=JSON_HELP),
) -> None:
    """Verify an Azure confidential VM: SNP report, runtime claims, HCLAkPub, vTPM quote."""
    from evidence import azure_cvm, sev_snp, tpm

    def judge() -> Verdict:
        given = {"--quote": quote, "--signature": signature, "--pcrs": pcrs}
        missing = [option for option, path in given.items() if path is None]
        if missing and len(missing) < len(given):
            raise UnusableInputError(
                f"a vTPM quote needs --quote, --signature and --pcrs; {', '.join(missing)} missing"
            )
        vcek_bytes = _read(vcek, "--vcek")
        if chain is None:
            vcek_bytes, chain_bytes = azure_cvm.split_certificates(vcek_bytes)
        else:
            chain_bytes = _read(chain, "--chain")
        return azure_cvm.verify_azure_cvm(
            azure_cvm.AzureCvmEvidence(
                hcl_report=_read(hcl_report, "--hcl-report"),
                vcek=vcek_bytes,
                chain=chain_bytes,
                quote=_read(quote, "--quote") if quote else None,
                signature=_read(signature, "--signature") if signature else None,
                pcrs=_read(pcrs, "--pcrs") if pcrs else None,
            ),
            roots=_roots(root, no_default_roots),
            nonce=_nonce(nonce),
            snp_policy=sev_snp.SnpPolicy(
                measurements=frozenset(_hex(m, "--measurement") for m in measurement) or None,
                allow_debug=allow_debug,
                min_tcb=parse_min_tcb(min_tcb),
            ),
            tpm_reference=tpm.TpmReference(pcrs=parse_pcr_reference(expect_pcr)),
            last_counters=None,
            at=_at(at),
        )

    _run_verifier(judge, as_json)

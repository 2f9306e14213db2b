"""A real software TPM: swtpm on free TCP ports, driven with tpm2-tools, so quotes are made by a
TPM 2.0 implementation (libtpms) and not by the code under test.

:class:`SoftwareTpm` starts one swtpm process (``SoftwareTpm.start()``, or as a context manager)
and runs the tpm2-tools commands the TPM attestation tests and ``bench/attestation.py`` need:
attestation keys, quotes, certify, PCR extends, TPM Restart and Reset. :func:`missing_tools`
names the programs this machine lacks (Debian: swtpm swtpm-tools tpm2-tools).
"""

from __future__ import annotations

import contextlib
import hashlib
import itertools
import json
import os
import re
import shutil
import signal
import socket
import subprocess
import tempfile
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from types import TracebackType
from typing import Literal

from drydock import localservers

TOOLS = (
    "swtpm",
    "swtpm_ioctl",
    "tpm2_startup",
    "tpm2_shutdown",
    "tpm2_createprimary",
    "tpm2_create",
    "tpm2_load",
    "tpm2_readpublic",
    "tpm2_quote",
    "tpm2_certify",
    "tpm2_checkquote",
    "tpm2_pcrextend",
    "tpm2_flushcontext",
)
# A restricted signing key: the TPM signs with it only structures it made itself (quotes),
# never an outside digest that could pass for one. What tpm2_createak makes.
AK_ATTRIBUTES = "fixedtpm|fixedparent|sensitivedataorigin|userwithauth|restricted|sign"
_PCR_LINE = re.compile(r"^\s+(\d+)\s*:\s*0x([0-9A-Fa-f]+)\s*$")
_BANK_LINE = re.compile(r"^  (\w+):\s*$")


class SimulatorError(RuntimeError):
    """swtpm would not start, or a tpm2-tools command failed (its stderr is in the message)."""


def missing_tools() -> list[str]:
    return [tool for tool in TOOLS if shutil.which(tool) is None]


@dataclass(frozen=True)
class AttestationKey:
    """An AK under an endorsement-hierarchy primary (so quotes carry clock info unobfuscated).

    ``pem``: SubjectPublicKeyInfo from ``tpm2_readpublic -f pem``; ``tpm2b_public``: what
    ``tpm2_create -u`` writes; ``tpmt_public``: the same without its size prefix."""

    alg: Literal["rsa", "ecc"]
    scheme: str
    hash: str
    pem: bytes
    tpm2b_public: bytes
    tpmt_public: bytes
    directory: Path

    @property
    def context(self) -> Path:
        return self.directory / "ak.ctx"

    @property
    def pem_path(self) -> Path:
        return self.directory / "ak.pem"


@dataclass(frozen=True)
class TpmQuote:
    """One ``tpm2_quote``: the signed TPMS_ATTEST, the TPMT_SIGNATURE, the PCR values it covers
    as JSON (``{"sha256": {"0": "<hex>"}}``, read from the tool's report) and as the tool's own
    binary ``-o`` output (``pcrs_format``), and the files they are in."""

    quote: bytes
    signature: bytes
    pcrs: bytes
    pcrs_output: bytes
    nonce: bytes
    hash: str
    directory: Path

    @property
    def message_path(self) -> Path:
        return self.directory / "quote.msg"

    @property
    def signature_path(self) -> Path:
        return self.directory / "quote.sig"

    @property
    def pcrs_path(self) -> Path:
        return self.directory / "quote.pcrs"


class SoftwareTpm:
    """One swtpm process (TPM 2.0 over TCP, control channel on the next port) and the tpm2-tools
    commands the attestation tests need. Transient objects are flushed after every command
    (swtpm holds only three); AKs are reloaded from their blobs after a reset or restart, which
    invalidates saved contexts."""

    def __init__(self, base: Path, port: int, process: subprocess.Popen[bytes]) -> None:
        self.base = base
        self.port = port
        self.ctrl_port = port + 1
        self.process = process
        self.env = {
            **os.environ,
            "TPM2TOOLS_TCTI": f"swtpm:host=127.0.0.1,port={port}",
            "TSS2_LOG": "all+none",
        }
        self._names = itertools.count()
        # Saved contexts of transient objects die with a TPM reset or restart.
        self._power_cycles = 0
        self._loaded: dict[Path, int] = {}

    @classmethod
    def start(cls, base: Path | None = None) -> SoftwareTpm:
        """Start swtpm in ``base`` (a new ``drydock-tests-tpm-*`` directory by default: CI's
        cleanup finds leftover processes by that string) with the TPM already started up."""
        missing = missing_tools()
        if missing:
            raise SimulatorError(f"not installed: {', '.join(missing)}")
        if base is None:
            base = Path(tempfile.mkdtemp(prefix="drydock-tests-tpm-"))
        state = base / "state"
        state.mkdir(parents=True, exist_ok=True)
        port = _free_port_pair()
        log = open(base / "swtpm.log", "wb")  # noqa: SIM115  closed with the process
        process = subprocess.Popen(
            [
                "swtpm",
                "socket",
                "--tpm2",
                "--server",
                f"type=tcp,port={port}",
                "--ctrl",
                f"type=tcp,port={port + 1}",
                "--tpmstate",
                f"dir={state}",
                "--flags",
                "not-need-init,startup-clear",
            ],
            stdout=log,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
        log.close()
        tpm = cls(base, port, process)
        try:
            localservers.wait_for(
                lambda: tpm._accepting() or process.poll() is not None, 10, "swtpm"
            )
            if process.poll() is not None:
                log_text = (base / "swtpm.log").read_text(errors="replace")
                raise SimulatorError(f"swtpm exited ({process.returncode}): {log_text[-2000:]}")
        except BaseException:
            tpm.stop()
            raise
        return tpm

    def _accepting(self) -> bool:
        with socket.create_connection(("127.0.0.1", self.port), timeout=1):
            return True

    def stop(self) -> None:
        """Stop swtpm (gracefully through its control channel, else by signal) and remove its
        directory."""
        if self.process.poll() is None:
            with contextlib.suppress(OSError, subprocess.SubprocessError):
                subprocess.run(
                    ["swtpm_ioctl", "--tcp", f"127.0.0.1:{self.ctrl_port}", "-s"],
                    capture_output=True,
                    timeout=5,
                )
            try:
                self.process.wait(5)
            except subprocess.TimeoutExpired:
                with contextlib.suppress(ProcessLookupError):
                    os.killpg(self.process.pid, signal.SIGKILL)
                self.process.wait(5)
        shutil.rmtree(self.base, ignore_errors=True)

    def __enter__(self) -> SoftwareTpm:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        traceback: TracebackType | None,
    ) -> None:
        self.stop()

    def run(self, *argv: str | Path, cwd: Path | None = None) -> str:
        """Run one tpm2-tools command against this TPM; its stdout, or SimulatorError."""
        command = [str(arg) for arg in argv]
        result = subprocess.run(
            command, env=self.env, cwd=cwd or self.base, capture_output=True, text=True, timeout=60
        )
        if result.returncode != 0:
            raise SimulatorError(
                f"{' '.join(command)} exited {result.returncode}: {result.stderr.strip()[-2000:]}"
            )
        return result.stdout

    def flush(self) -> None:
        self.run("tpm2_flushcontext", "-t")

    def _new_directory(self, kind: str) -> Path:
        directory = self.base / f"{kind}-{next(self._names)}"
        directory.mkdir()
        return directory

    def create_ak(
        self,
        alg: Literal["rsa", "ecc"] = "rsa",
        *,
        hash: str = "sha256",
        curve: Literal["p256", "p384"] = "p256",
        pss: bool = False,
    ) -> AttestationKey:
        """A new restricted signing key under the endorsement primary: RSA-2048 (RSASSA, or
        RSAPSS with ``pss``) or ECDSA on ``curve``, its scheme hash ``hash``."""
        if alg == "rsa":
            scheme = "rsapss" if pss else "rsassa"
            template = f"rsa2048:{scheme}-{hash}:null"
        else:
            scheme = "ecdsa"
            template = f"ecc{curve.removeprefix('p')}:ecdsa-{hash}:null"
        directory = self._new_directory("ak")
        primary = self._primary()
        self.run(
            "tpm2_create",
            "-C",
            primary,
            "-G",
            template,
            "-a",
            AK_ATTRIBUTES,
            "-u",
            directory / "ak.pub",
            "-r",
            directory / "ak.priv",
        )
        self.flush()
        self._load(directory)
        self.run(
            "tpm2_readpublic",
            "-c",
            directory / "ak.ctx",
            "-f",
            "pem",
            "-o",
            "ak.pem",
            cwd=directory,
        )
        self.flush()
        tpm2b = (directory / "ak.pub").read_bytes()
        return AttestationKey(
            alg=alg,
            scheme=scheme,
            hash=hash,
            pem=(directory / "ak.pem").read_bytes(),
            tpm2b_public=tpm2b,
            tpmt_public=tpm2b[2:],
            directory=directory,
        )

    def _primary(self) -> Path:
        """The endorsement-hierarchy ECC primary (the same key every time: it derives from the
        endorsement seed) saved as a context file."""
        path = self.base / "primary.ctx"
        self.run("tpm2_createprimary", "-C", "e", "-G", "ecc", "-c", path)
        self.flush()
        return path

    def _load(self, directory: Path) -> None:
        primary = self._primary()
        context = directory / "ak.ctx"
        self.run(
            "tpm2_load",
            "-C",
            primary,
            "-u",
            directory / "ak.pub",
            "-r",
            directory / "ak.priv",
            "-c",
            context,
        )
        self.flush()
        self._loaded[context] = self._power_cycles

    def quote(
        self,
        ak: AttestationKey,
        nonce: bytes,
        banks: Mapping[str, Sequence[int]],
        *,
        hash: str | None = None,
        pcrs_format: Literal["serialized", "values"] = "serialized",
        signature_format: Literal["tss", "plain"] = "tss",
    ) -> TpmQuote:
        """Quote the PCRs ``banks`` (bank → indices) with ``ak``, ``nonce`` as qualifying data,
        signed with ``hash`` (the AK's scheme hash by default). ``signature_format``: a
        TPMT_SIGNATURE (``tss``) or the bare signature (``plain``, as cloud vTPM tooling
        delivers it)."""
        if self._loaded.get(ak.context) != self._power_cycles:
            self._load(ak.directory)
        directory = self._new_directory("quote")
        selection = "+".join(f"{bank}:{','.join(map(str, pcrs))}" for bank, pcrs in banks.items())
        report = self.run(
            "tpm2_quote",
            "-c",
            ak.context,
            "-l",
            selection,
            "-q",
            nonce.hex(),
            "-m",
            directory / "quote.msg",
            "-s",
            directory / "quote.sig",
            "-o",
            directory / "quote.pcrs",
            "-F",
            pcrs_format,
            "-f",
            signature_format,
            "-g",
            hash or ak.hash,
            "--scheme",
            ak.scheme,
        )
        self.flush()
        return TpmQuote(
            quote=(directory / "quote.msg").read_bytes(),
            signature=(directory / "quote.sig").read_bytes(),
            pcrs=json.dumps(_reported_pcrs(report)).encode(),
            pcrs_output=(directory / "quote.pcrs").read_bytes(),
            nonce=nonce,
            hash=hash or ak.hash,
            directory=directory,
        )

    def certify(self, ak: AttestationKey) -> tuple[bytes, bytes]:
        """``tpm2_certify`` of the AK by itself: a TPMS_ATTEST of type certify (not a quote)
        and its TPMT_SIGNATURE, genuinely made and signed by the TPM."""
        if self._loaded.get(ak.context) != self._power_cycles:
            self._load(ak.directory)
        directory = self._new_directory("certify")
        self.run(
            "tpm2_certify",
            "-C",
            ak.context,
            "-c",
            ak.context,
            "-g",
            ak.hash,
            "--scheme",
            ak.scheme,
            "-o",
            directory / "attest",
            "-s",
            directory / "signature",
        )
        self.flush()
        return (directory / "attest").read_bytes(), (directory / "signature").read_bytes()

    def extend(self, pcr: int, bank: str, data: bytes) -> bytes:
        """Extend PCR ``pcr`` of ``bank`` with the bank-hash of ``data`` (a measured event);
        returns that event digest."""
        digest = hashlib.new(bank, data).digest()
        self.run("tpm2_pcrextend", f"{pcr}:{bank}={digest.hex()}")
        return digest

    def restart(self) -> None:
        """TPM Restart: Shutdown(STATE), power cycle, Startup(CLEAR). restartCount rises,
        resetCount stays; PCRs return to their power-on values (only a Resume keeps them)."""
        self._power_cycle(["tpm2_shutdown"])

    def reset(self) -> None:
        """TPM Reset (a reboot): Shutdown(CLEAR), power cycle, Startup(CLEAR). resetCount rises,
        restartCount returns to 0, PCRs return to their power-on values."""
        self._power_cycle(["tpm2_shutdown", "-c"])

    def _power_cycle(self, shutdown: list[str]) -> None:
        self.run(*shutdown)
        subprocess.run(
            ["swtpm_ioctl", "--tcp", f"127.0.0.1:{self.ctrl_port}", "-i"],
            check=True,
            capture_output=True,
            timeout=10,
        )
        self.run("tpm2_startup", "-c")
        self._power_cycles += 1


def _reported_pcrs(report: str) -> dict[str, dict[str, str]]:
    """The ``pcrs:`` section of tpm2_quote's YAML report: bank → index → hex value."""
    pcrs: dict[str, dict[str, str]] = {}
    lines = iter(report.splitlines())
    for line in lines:
        if line.startswith("pcrs:"):
            break
    bank: dict[str, str] | None = None
    for line in lines:
        if not line.startswith(" "):
            break
        if match := _BANK_LINE.match(line):
            bank = pcrs.setdefault(match[1], {})
        elif (match := _PCR_LINE.match(line)) and bank is not None:
            bank[match[1]] = match[2].lower()
    if not pcrs:
        raise SimulatorError(f"tpm2_quote reported no PCR values:\n{report}")
    return pcrs


def _free_port_pair() -> int:
    """A free port whose successor is free too (swtpm's control channel)."""
    for _ in range(50):
        port = localservers.free_port()
        with socket.socket() as sock:
            try:
                sock.bind(("127.0.0.1", port + 1))
            except OSError:
                continue
        return port
    raise SimulatorError("no two consecutive free TCP ports")

"""Every vendor sample in tests/data/attestation-samples judged as its PROVENANCE.md says, through
the attestation queue (a real worker, the trust registry) and through ``drydock attest verify``;
each with a flipped signed byte rejected, and truncated evidence refused as unusable."""

from __future__ import annotations

import base64
import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest
from sqlalchemy import select
from typer.testing import CliRunner

from dispatch.enqueue import enqueue
from drydock.cli import app as cli_app
from evidence.tdx import collateral_from_directory
from kernel.errors import PayloadInvalidError
from models import trust
from models.db import session_scope
from models.jobs import Job
from models.trust import AssetKind, AttestationVerdict, TrustAsset, TrustAssetClass
from testkit.tpm import SoftwareTpm, TpmQuote
from tests.conftest import SAMPLES, WorkerProcess, wait_for_job

MILAN_ROOT = SAMPLES / "sev-snp" / "virtee-milan-v2" / "ask_ark_milan.pem"
INTEL_ROOT = SAMPLES / "tdx" / "go-tdx-guest-spr-v4" / "intel_sgx_root_ca.pem"


@dataclass(frozen=True)
class Sample:
    """One piece of vendor evidence and what its PROVENANCE.md says it must come to."""

    id: str
    kind: str
    folder: str
    parts: dict[str, str]  # evidence part -> file in the folder
    nonce: str
    at: str | None
    verified: bool
    failing: frozenset[str] = frozenset()
    # The part and offset of a signed byte to flip, and the check that must then fail.
    flip: tuple[str, int] = ("quote", 0x3C)
    flip_fails: str = "quote_signature"
    asset_class: dict[str, Any] = field(default_factory=dict)

    def path(self, part: str) -> Path:
        return SAMPLES / self.folder / self.parts[part]

    def data(self, part: str) -> bytes:
        return self.path(part).read_bytes()


SNP = {"report": "report.bin", "vcek": "vcek.der", "chain": "ask_ark_milan.pem"}
TEEKIT = {"vcek": "vcek.pem", "chain": "ask_ark_milan.pem"}
TPM_GCE = "tpm/go-tpm-tools-gce-cos85-nonce9009"

SAMPLE_TABLE = [
    Sample(
        "snp-go-sev-guest-debug-refused",
        "sev-snp",
        "sev-snp/go-sev-guest-milan-v2",
        SNP,
        nonce="0102030405",
        at="2024-01-01T00:00:00Z",
        verified=False,
        failing=frozenset({"debug"}),
        flip=("report", 21),
        flip_fails="signature",
    ),
    Sample(
        "snp-go-sev-guest-debug-allowed",
        "sev-snp",
        "sev-snp/go-sev-guest-milan-v2",
        SNP,
        nonce="0102030405",
        at="2024-01-01T00:00:00Z",
        verified=True,
        flip=("report", 21),
        flip_fails="signature",
        asset_class={"allow_debug": True},
    ),
    Sample(
        "snp-virtee-milan-v2",
        "sev-snp",
        "sev-snp/virtee-milan-v2",
        SNP,
        nonce="d447b55d197491bfe15cf298f9de9986b7a7c4be2468b4f6e2d53b71d7c645810b0f2cdfca0040433be063fc1a8293f0f3f8dae7b79fecb3d1cd82bd6a93ebfd",
        at="2024-01-01T00:00:00Z",
        verified=True,
        flip=("report", 21),
        flip_fails="signature",
        asset_class={
            "snp_measurements": [
                "7a1e5c266c0108dbc9bb94fa926951320940915d0aafb42464bd88b579ea158d3e1a0dc39b2c60bd95b9c480cd81841f"
            ]
        },
    ),
    Sample(
        "snp-trustee-milan-v2-idblock",
        "sev-snp",
        "sev-snp/trustee-milan-v2-idblock",
        SNP,
        nonce="ec6c52d7533cc2c4f45be7849cf112ab82b2009fe7bd43e71ed08c14400ad7e2",
        at="2024-01-01T00:00:00Z",
        verified=True,
        flip=("report", 42),
        flip_fails="signature",
    ),
    Sample(
        "snp-teekit-gcp-v5-vmpl1",
        "sev-snp",
        "sev-snp/teekit-gcp-milan-v5",
        {"report": "report_with_reportdata.bin", **TEEKIT},
        nonce="32fc4f6c1971cbf91566231f8d6153eeb9d093aa94306cb48d39bcc4861a3d395f149876a37bc91332fe493f46294fd135d5b95d363ae96352b8c45f906079f5",
        at="2026-01-01T00:00:00Z",
        verified=True,
        flip=("report", 0x90),
        flip_fails="signature",
        asset_class={
            "snp_measurements": [
                "b747d55452e0b9e9079770a49e397c5e6d9573581e246da7baac4f28b5cdc5b1b6d19251b8ee600fd16a3708f58406f3"
            ]
        },
    ),
    Sample(
        "snp-teekit-gcp-v5-vmpl0",
        "sev-snp",
        "sev-snp/teekit-gcp-milan-v5",
        {"report": "report_zero_reportdata.bin", **TEEKIT},
        nonce="00",
        at="2026-01-01T00:00:00Z",
        verified=True,
        flip=("report", 0x90),
        flip_fails="signature",
    ),
    Sample(
        "tdx-go-tdx-guest-spr-v4",
        "tdx",
        "tdx/go-tdx-guest-spr-v4",
        {"quote": "quote.dat"},
        nonce="6c62dec1b8191749a31dab490be532a35944dea47caef1f980863993d9899545eb7406a38d1eed313b987a467dacead6f0c87a6d766c66f6f29f8acb281f1113",
        at="2023-07-01T01:00:00Z",
        verified=True,
    ),
    Sample(
        "tdx-phala-v4-uptodate",
        "tdx",
        "tdx/phala-dcap-qvl-v4-uptodate",
        {"quote": "quote.dat", "collateral": "collateral.json"},
        nonce="9a9d48e7f6799642d3d1b34e1e5e1742d4bb02dd6ddd551862c1211d35c304f9eca3efdbb481601c163cf52493d6e44aed55d51ec39b7e518fadb92c2b523f20",
        at="2025-07-19T10:00:34Z",
        verified=True,
        asset_class={
            "tdx_mr_td": [
                "91eb2b44d141d4ece09f0c75c2c53d247a3c68edd7fafe8a3520c942a604a407de03ae6dc5f87f27428b2538873118b7"
            ]
        },
    ),
    Sample(
        "tdx-trustee-debug-td",
        "tdx",
        "tdx/trustee-v4-debug-td",
        {"quote": "quote.dat"},
        nonce="7c71fe2c86eff65a7cf8dbc22b3275689fd0464a267baced1bf94fc1324656aeb755da3d44d098c0c87382f3a5f85b45c8a28fee1d3bdb38342bf96671501429",
        at="2024-07-03T00:00:00Z",
        verified=False,
        failing=frozenset({"debug"}),
    ),
    Sample(
        "tdx-gcp-v4-padded",
        "tdx",
        "tdx/go-tdx-guest-gcp-v4-ccel",
        {"quote": "quote.dat"},
        nonce="00" * 64,
        at="2024-08-29T00:00:00Z",
        verified=True,
    ),
    *(
        Sample(
            f"tpm-gce-{bank}",
            "tpm",
            TPM_GCE,
            {
                "quote": f"quote_{bank}.tpms_attest",
                "signature": f"quote_{bank}.tpmt_signature",
                "pcrs": f"pcrs_{bank}.json",
                "ak": "ak_pub.tpmt_public",
            },
            nonce="9009",
            at=None,
            verified=True,
            # The last byte of the quote is inside pcrDigest: signed, and still parseable.
            flip=("quote", -1),
            flip_fails="signature",
        )
        for bank in ("sha1", "sha256", "sha384")
    ),
]


def flipped(data: bytes, offset: int) -> bytes:
    changed = bytearray(data)
    changed[offset] ^= 0x80
    return bytes(changed)


def evidence_payload(sample: Sample, *, flip: bool = False) -> dict[str, Any]:
    evidence: dict[str, Any] = {"kind": sample.kind}
    for part in sample.parts:
        if part == "ak":
            continue
        data = sample.data(part)
        if flip and part == sample.flip[0]:
            data = flipped(data, sample.flip[1])
        evidence[part] = json.loads(data) if part == "pcrs" else base64.b64encode(data).decode()
    return evidence


def register(sample: Sample, name: str) -> Any:
    with session_scope() as session:
        session.merge(
            TrustAssetClass(name=sample.id, evidence_ttl_seconds=3600, **sample.asset_class)
        )
    asset_id, _ = trust.register_asset(
        tenant="samples",
        name=name,
        kind=AssetKind.VM,
        asset_class=sample.id,
        attestation_key=sample.data("ak") if "ak" in sample.parts else None,
        actor="test",
    )
    return asset_id


def verify_through_the_queue(sample: Sample, *, flip: bool = False) -> tuple[Any, Any]:
    asset_id = register(sample, f"{sample.id}{'-flipped' if flip else ''}")
    payload = {
        "asset_id": str(asset_id),
        "evidence": evidence_payload(sample, flip=flip),
        "nonce": sample.nonce,
    }
    if sample.at:
        payload["verify_at"] = sample.at
    job = enqueue("attestation.verify_evidence", payload)
    row = wait_for_job(job.id)
    assert row.status == "succeeded", row.error
    with session_scope() as session:
        verdict = session.scalar(
            select(AttestationVerdict).where(AttestationVerdict.job_id == job.id)
        )
        asset = session.get(TrustAsset, asset_id)
    return verdict, asset


def failed_checks(checks: list[dict[str, str]]) -> set[str]:
    return {check["name"] for check in checks if check["outcome"] == "fail"}


@pytest.mark.parametrize("sample", SAMPLE_TABLE, ids=lambda s: s.id)
def test_each_sample_through_the_attestation_queue(fleet: WorkerProcess, sample: Sample) -> None:
    verdict, asset = verify_through_the_queue(sample)
    assert verdict.verified is sample.verified, verdict.checks
    assert failed_checks(verdict.checks) == set(sample.failing)
    if sample.verified:
        # Judged at its own (pinned, long past) time the evidence has expired: the asset is
        # stale, not trusted. A quote bound to no certificate has no such limit.
        assert asset.state == ("trusted" if sample.at is None else "stale")
    else:
        assert asset.state == "quarantined"
    outcomes = {check["name"]: check["outcome"] for check in verdict.checks}
    # A class that pins reference values has them checked, and the samples' own values pass.
    if sample.asset_class.get("snp_measurements"):
        assert outcomes["measurement"] == "pass"
    if sample.asset_class.get("tdx_mr_td"):
        assert outcomes["mr_td"] == "pass"

    tampered, tampered_asset = verify_through_the_queue(sample, flip=True)
    assert not tampered.verified
    assert sample.flip_fails in failed_checks(tampered.checks)
    assert tampered_asset.state == "quarantined"


def cli_arguments(sample: Sample, *, flip_to: Path | None = None) -> list[str]:
    options = {
        "report": "--report",
        "vcek": "--vcek",
        "chain": "--chain",
        "quote": "--quote",
        "collateral": "--collateral",
        "signature": "--signature",
        "pcrs": "--pcrs",
        "ak": "--ak",
    }
    arguments = ["attest", "verify", sample.kind, "--json", "--nonce", sample.nonce]
    for part in sample.parts:
        path = flip_to if (flip_to is not None and part == sample.flip[0]) else sample.path(part)
        arguments += [options[part], str(path)]
    if sample.at:
        arguments += ["--at", sample.at]
    if sample.kind == "sev-snp":
        arguments += ["--root", str(MILAN_ROOT)]
        if sample.asset_class.get("allow_debug"):
            arguments.append("--allow-debug")
        for measurement in sample.asset_class.get("snp_measurements", []):
            arguments += ["--measurement", measurement]
    if sample.kind == "tdx":
        arguments += ["--root", str(INTEL_ROOT)]
        for mr_td in sample.asset_class.get("tdx_mr_td", []):
            arguments += ["--mr-td", mr_td]
    return arguments


@pytest.mark.parametrize("sample", SAMPLE_TABLE, ids=lambda s: s.id)
def test_each_sample_through_drydock_attest_verify(sample: Sample, tmp_path: Path) -> None:
    runner = CliRunner()
    result = runner.invoke(cli_app, cli_arguments(sample))
    verdict = json.loads(result.stdout)
    assert result.exit_code == (0 if sample.verified else 1), result.output
    assert verdict["verified"] is sample.verified
    assert failed_checks(verdict["checks"]) == set(sample.failing)

    part, offset = sample.flip
    tampered = tmp_path / "tampered"
    tampered.write_bytes(flipped(sample.data(part), offset))
    result = runner.invoke(cli_app, cli_arguments(sample, flip_to=tampered))
    assert result.exit_code == 1, result.output
    assert sample.flip_fails in failed_checks(json.loads(result.stdout)["checks"])

    truncated = tmp_path / "truncated"
    truncated.write_bytes(sample.data(part)[:40])
    result = runner.invoke(cli_app, cli_arguments(sample, flip_to=truncated))
    assert result.exit_code == 2, result.output
    assert json.loads(result.stdout)["usable"] is False


def test_the_spr_collateral_is_judged_and_its_signing_chain_refused_at_the_quote_time(
    fleet: WorkerProcess,
) -> None:
    # PROVENANCE: the shipped TCB signing chain is Intel's 2025 re-issue, not valid in 2023, so
    # the collateral cannot verify at the quote's time; the quote itself still does.
    sample = next(s for s in SAMPLE_TABLE if s.id == "tdx-go-tdx-guest-spr-v4")
    asset_id = register(sample, "spr-with-collateral")
    collateral = collateral_from_directory(SAMPLES / sample.folder)
    job = enqueue(
        "attestation.verify_evidence",
        {
            "asset_id": str(asset_id),
            "evidence": {
                **evidence_payload(sample),
                "collateral": base64.b64encode(collateral).decode(),
            },
            "nonce": sample.nonce,
            "verify_at": sample.at,
        },
    )
    assert wait_for_job(job.id).status == "succeeded"
    with session_scope() as session:
        verdict = session.scalar(
            select(AttestationVerdict).where(AttestationVerdict.job_id == job.id)
        )
        assert verdict is not None
    assert failed_checks(verdict.checks) == {"collateral.verified"}
    assert "quote_signature" not in failed_checks(verdict.checks)


@pytest.mark.parametrize(
    ("sample_id", "part", "problem"),
    [
        ("snp-virtee-milan-v2", "report", "report"),
        ("tdx-phala-v4-uptodate", "quote", "quote"),
        ("tpm-gce-sha256", "quote", "quote"),
    ],
)
def test_truncated_evidence_is_refused_at_enqueue_and_nothing_is_recorded(
    clean_state: None, sample_id: str, part: str, problem: str
) -> None:
    sample = next(s for s in SAMPLE_TABLE if s.id == sample_id)
    asset_id = register(sample, "truncated")
    evidence = evidence_payload(sample)
    evidence[part] = base64.b64encode(sample.data(part)[:100]).decode()
    with pytest.raises(PayloadInvalidError) as refused:
        enqueue(
            "attestation.verify_evidence",
            {"asset_id": str(asset_id), "evidence": evidence, "nonce": sample.nonce},
        )
    assert f"evidence.{sample.kind}" in str(refused.value)
    assert f"{problem}:" in str(refused.value)
    with session_scope() as session:
        assert session.scalar(select(Job)) is None


def test_evidence_that_bypasses_enqueue_is_dead_lettered_at_once(fleet: WorkerProcess) -> None:
    import uuid

    from workers.app import app

    sample = next(s for s in SAMPLE_TABLE if s.id == "snp-virtee-milan-v2")
    asset_id = register(sample, "raw")
    evidence = evidence_payload(sample)
    evidence["report"] = base64.b64encode(b"\x02" + bytes(50)).decode()
    job_id = uuid.uuid4()
    app.send_task(
        "attestation.verify_evidence",
        kwargs={"asset_id": str(asset_id), "evidence": evidence, "nonce": sample.nonce},
        task_id=str(job_id),
        queue="attestation",
    )
    row = wait_for_job(job_id)
    assert row.status == "dead_lettered" and row.attempts == 1
    assert "evidence.sev-snp" in (row.error or "") and "report:" in (row.error or "")


# ---- a real TPM through the queue ------------------------------------------------------------


def tpm_payload(asset_id: Any, quote: TpmQuote, nonce: bytes) -> dict[str, Any]:
    return {
        "asset_id": str(asset_id),
        "nonce": nonce.hex(),
        "evidence": {
            "kind": "tpm",
            "quote": base64.b64encode(quote.quote).decode(),
            "signature": base64.b64encode(quote.signature).decode(),
            "pcrs": json.loads(quote.pcrs),
        },
    }


def tpm_asset(
    tenant: str, name: str, kind: AssetKind, attestation_key: bytes, reference: dict[str, str]
) -> Any:
    """An asset of a class of its own whose sha256 reference PCRs are ``reference``, its quotes
    signed by ``attestation_key``."""
    class_name = f"swtpm-{name}"
    with session_scope() as session:
        session.merge(
            TrustAssetClass(
                name=class_name, evidence_ttl_seconds=3600, tpm_pcrs={"sha256": reference}
            )
        )
    asset_id, _ = trust.register_asset(
        tenant=tenant, name=name, kind=kind, asset_class=class_name,
        attestation_key=attestation_key, actor="test",
    )  # fmt: skip
    return asset_id


def verify_through_queue(asset_id: Any, quote: TpmQuote, nonce: bytes) -> tuple[Any, str]:
    """Send the quote to attestation.verify_evidence; its verdict and the asset's state after."""
    job = enqueue("attestation.verify_evidence", tpm_payload(asset_id, quote, nonce))
    assert wait_for_job(job.id).status == "succeeded"
    with session_scope() as session:
        verdict = session.scalar(
            select(AttestationVerdict).where(AttestationVerdict.job_id == job.id)
        )
        asset = session.get(TrustAsset, asset_id)
        assert verdict is not None and asset is not None
        return verdict, asset.state


def test_real_tpm_quotes_through_the_queue_trust_then_refuse_a_replay(
    fleet: WorkerProcess, tpm_simulator: SoftwareTpm
) -> None:
    ak = tpm_simulator.create_ak("ecc")
    banks = {"sha256": [0, 1, 7]}
    first = tpm_simulator.quote(ak, bytes.fromhex("a1b2c3d4e5f60718"), banks)
    reference = json.loads(first.pcrs)["sha256"]
    asset_id = tpm_asset("lab", "vm-tpm", AssetKind.VM, ak.pem, reference)

    def verify(quote: TpmQuote, nonce: bytes) -> tuple[Any, str]:
        return verify_through_queue(asset_id, quote, nonce)

    verdict, state = verify(first, first.nonce)
    assert verdict.verified, verdict.checks
    assert state == "trusted"
    # A fresh quote later on verifies again and keeps the asset trusted.
    second = tpm_simulator.quote(ak, bytes.fromhex("0badc0de0badc0de"), banks)
    verdict, state = verify(second, second.nonce)
    assert verdict.verified and state == "trusted"
    # The first quote sent again, even with its own nonce, is older than what was accepted.
    verdict, state = verify(first, first.nonce)
    assert failed_checks(verdict.checks) == {"replay"}
    assert state == "quarantined"
    last = history_of_asset(asset_id)[-1]
    assert last.cause == "evidence_failed" and "replay:" in last.detail


def history_of_asset(asset_id: Any) -> list[Any]:
    with session_scope() as session:
        return trust.history(session, asset_id)


def test_a_quote_after_a_measured_change_quarantines_the_asset(
    fleet: WorkerProcess, tpm_simulator: SoftwareTpm
) -> None:
    ak = tpm_simulator.create_ak("rsa")
    banks = {"sha256": [0, 7, 16]}
    baseline = json.loads(tpm_simulator.quote(ak, b"baseline", banks).pcrs)["sha256"]
    asset_id = tpm_asset("lab", "host-1", AssetKind.HOST, ak.tpmt_public, baseline)
    tpm_simulator.extend(16, "sha256", b"an unexpected boot component")
    quote = tpm_simulator.quote(ak, b"challenge-2", banks)
    verify_through_queue(asset_id, quote, b"challenge-2")
    last = history_of_asset(asset_id)[-1]
    assert (last.from_state, last.to_state) == ("pending_attestation", "quarantined")
    assert last.evidence["failed_checks"] == ["pcr_reference"]
    assert "sha256:16 expected" in last.detail

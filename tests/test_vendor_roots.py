"""The vendor roots built into Drydock: each is the certificate its vendor published (by SHA-256),
agrees with the roots in the vendor samples' own chains, makes a real sample verify with no root
configured, and can be turned off; an altered root file is refused, never trusted."""

from __future__ import annotations

import json
import shutil
from collections.abc import Iterator
from pathlib import Path

import pytest
from cryptography import x509
from typer.testing import CliRunner

from drydock.cli import app as cli_app
from evidence.certs import is_self_signed
from evidence.vendor_roots import (
    ROOTS_DIR,
    VENDOR_ROOTS,
    VendorRootIntegrityError,
    fingerprint,
    load_vendor_roots,
)
from kernel.settings import get_settings
from tasks.attestation.domain import trust_roots
from tests.conftest import SAMPLES
from tests.test_attestation_samples import SAMPLE_TABLE, Sample, cli_arguments

# SHA-256 of each root's DER as the vendors publish it (AMD's KDS cert_chain endpoints,
# certificates.trustedservices.intel.com), written out here independently of the module's table.
PUBLISHED = {
    "ARK-Milan": "69d063b45344d26a2e94e1f4210de49ef555308287d4c174445c95639a540bcd",
    "ARK-Genoa": "4c6598d19c18719c5dfd4a7d335f674e5bfe1d8f800cea2cf270c10d103db2f1",
    "ARK-Turin": "1f084161a44bb6d93778a904877d4819cafa5d05ef4193b2ded9dd9c73dd3f6a",
    "Intel SGX Root CA": "44a0196b2b99f889b8e149e95b807a350e7424964399e885a7cbb8ccfab674d3",
}
CHAINED = [s for s in SAMPLE_TABLE if s.kind in ("sev-snp", "tdx")]


def common_name(certificate: x509.Certificate) -> str:
    [attribute] = certificate.subject.get_attributes_for_oid(x509.NameOID.COMMON_NAME)
    return str(attribute.value)


@pytest.fixture
def settings_env(monkeypatch: pytest.MonkeyPatch) -> Iterator[pytest.MonkeyPatch]:
    """Settings read again after the test changes the environment, and after it."""
    get_settings.cache_clear()
    yield monkeypatch
    monkeypatch.undo()
    get_settings.cache_clear()


def test_each_built_in_root_is_the_one_its_vendor_published() -> None:
    roots = load_vendor_roots()
    assert {common_name(root): fingerprint(root) for root in roots} == PUBLISHED
    assert all(is_self_signed(root) for root in roots)
    assert {root.file for root in VENDOR_ROOTS} == {p.name for p in ROOTS_DIR.glob("*.pem")}


def test_the_vendor_samples_chain_to_the_same_roots() -> None:
    # Independent copies: the roots inside the chains the samples' sources got from AMD's KDS
    # and Intel's PCS.
    found: dict[str, set[str]] = {}
    for path in [*SAMPLES.glob("sev-snp/*/ask_ark_*.pem"), *SAMPLES.glob("tdx/*/intel_*.pem")]:
        for certificate in x509.load_pem_x509_certificates(path.read_bytes()):
            if is_self_signed(certificate):
                found.setdefault(common_name(certificate), set()).add(fingerprint(certificate))
    assert found == {
        name: {PUBLISHED[name]} for name in ("ARK-Milan", "ARK-Turin", "Intel SGX Root CA")
    }


def test_an_altered_root_file_is_refused(tmp_path: Path) -> None:
    shutil.copytree(ROOTS_DIR, tmp_path / "roots")
    # Another self-signed certificate in the Genoa ARK's place.
    milan = (tmp_path / "roots" / "amd_ark_milan.pem").read_bytes()
    (tmp_path / "roots" / "amd_ark_genoa.pem").write_bytes(milan)
    with pytest.raises(VendorRootIntegrityError, match=r"amd_ark_genoa\.pem has SHA-256 69d063b4"):
        load_vendor_roots(tmp_path / "roots")
    (tmp_path / "roots" / "amd_ark_genoa.pem").write_text("not a certificate")
    with pytest.raises(VendorRootIntegrityError, match=r"amd_ark_genoa\.pem cannot be read"):
        load_vendor_roots(tmp_path / "roots")


def without_roots(arguments: list[str]) -> list[str]:
    kept: list[str] = []
    skip = False
    for argument in arguments:
        if skip:
            skip = False
        elif argument == "--root":
            skip = True
        else:
            kept.append(argument)
    return kept


@pytest.mark.parametrize("sample", CHAINED, ids=lambda s: s.id)
def test_a_real_sample_verifies_with_no_root_configured(
    sample: Sample, settings_env: pytest.MonkeyPatch
) -> None:
    settings_env.delenv("DRYDOCK_ATTESTATION_ROOTS_DIR", raising=False)
    runner = CliRunner()
    result = runner.invoke(cli_app, without_roots(cli_arguments(sample)))
    assert result.exit_code == (0 if sample.verified else 1), result.output
    checks = {c["name"]: c for c in json.loads(result.stdout)["checks"]}
    root_checks = [c for name, c in checks.items() if name.endswith(".root")]
    assert root_checks and all(c["outcome"] == "pass" for c in root_checks), root_checks

    # Turned off, by the flag or by the setting: nothing anchors the chain.
    for arguments, env in (
        ([*without_roots(cli_arguments(sample)), "--no-default-roots"], None),
        (without_roots(cli_arguments(sample)), "false"),
    ):
        if env is not None:
            settings_env.setenv("DRYDOCK_ATTESTATION_DEFAULT_ROOTS", env)
            get_settings.cache_clear()
        result = runner.invoke(cli_app, arguments)
        assert result.exit_code == 1, result.output
        checks = json.loads(result.stdout)["checks"]
        refused = [c for c in checks if c["name"].endswith(".root") and c["outcome"] != "pass"]
        assert refused and "no trusted root is configured" in refused[0]["reason"]


def test_configured_roots_add_to_the_built_in_ones(
    settings_env: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    # The tests' own root directory (conftest) holds copies of three vendor roots: no duplicates.
    names = sorted(common_name(root) for root in trust_roots())
    assert names == sorted(PUBLISHED)
    own = tmp_path / "roots"
    own.mkdir()
    shutil.copy(SAMPLES / "tpm" / "go-tpm-tools-gce-cos85-nonce9009" / "gce_ek_ak_root_1.der", own)
    settings_env.setenv("DRYDOCK_ATTESTATION_ROOTS_DIR", str(own))
    get_settings.cache_clear()
    assert len(trust_roots()) == len(PUBLISHED) + 1
    settings_env.setenv("DRYDOCK_ATTESTATION_DEFAULT_ROOTS", "false")
    get_settings.cache_clear()
    assert len(trust_roots()) == 1

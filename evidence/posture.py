"""Accelerator posture: a GPU's report of what it runs (driver, VBIOS, ECC, MIG, confidential
computing mode, firmware), validated by schema and judged against its tier's gates.

Unlike TPM, SNP or TDX evidence nothing here is signed: the report is what the host agent read
from the driver (``nvidia-smi -q``, NVML). The gates catch drift and misconfiguration; they do
not prove the GPU is what it says. Pure: no database, no broker.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Literal

from pydantic import BaseModel, ConfigDict, Field, field_validator

from evidence.verdict import Check, EvidenceKind, Verdict

_VERSION = re.compile(r"^\d+(\.\d+){0,3}$")


def parse_version(value: str) -> tuple[int, ...]:
    """``"550.54.15"`` → ``(550, 54, 15)``; ValueError names what is wrong."""
    if not _VERSION.fullmatch(value):
        raise ValueError(f"{value!r} is not a dotted numeric version such as 550.54.15")
    return tuple(int(part) for part in value.split("."))


class AcceleratorPosture(BaseModel):
    """What a host agent reports about one GPU. Field names follow NVML's."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    model: str = Field(
        min_length=1, max_length=100, description="Product name, e.g. NVIDIA H100 80GB HBM3."
    )
    serial: str | None = Field(None, max_length=100, description="Board serial, when reported.")
    driver_version: str = Field(description="Driver version, dotted numbers (550.54.15).")
    vbios_version: str = Field(min_length=1, max_length=50, description="VBIOS version string.")
    ecc_enabled: bool = Field(description="Whether ECC memory is on.")
    mig_mode: Literal["enabled", "disabled"] = Field(description="Multi-instance GPU mode.")
    cc_mode: Literal["on", "off", "devtools"] = Field(
        description="Confidential-computing mode; `devtools` is for debugging and is not CC."
    )
    firmware: dict[str, str] = Field(
        default_factory=dict,
        max_length=64,
        description="Firmware component → version (GSP, InfoROM, ...).",
    )

    @field_validator("driver_version")
    @classmethod
    def _driver_version(cls, value: str) -> str:
        parse_version(value)
        return value

    @field_validator("firmware")
    @classmethod
    def _firmware(cls, value: dict[str, str]) -> dict[str, str]:
        for component, version in value.items():
            if not component or len(component) > 64 or len(version) > 64:
                raise ValueError("firmware names and versions must be 1 to 64 characters")
        return value


@dataclass(frozen=True)
class AcceleratorPolicy:
    """A tier's gates (from its asset class)."""

    tier: str
    min_driver: str | None = None
    require_cc: bool = False
    require_ecc: bool = False


def judge_posture(posture: AcceleratorPosture, policy: AcceleratorPolicy) -> Verdict:
    """One check per gate, named ``driver.minimum``, ``cc_mode``, ``ecc``; a gate the tier does
    not set is skipped with the reason."""
    verdict = Verdict(EvidenceKind.ACCELERATOR_POSTURE, claims=posture.model_dump())
    verdict.add(Check.passed("schema", f"{posture.model} report is well formed"))
    if policy.min_driver is None:
        verdict.add(Check.skipped("driver.minimum", f"tier {policy.tier} sets no minimum driver"))
    else:
        ok = parse_version(posture.driver_version) >= parse_version(policy.min_driver)
        verdict.add(
            Check.judged(
                "driver.minimum",
                ok,
                f"driver {posture.driver_version} meets the tier minimum {policy.min_driver}",
                f"driver {posture.driver_version} is below the tier {policy.tier} minimum "
                f"{policy.min_driver}: upgrade the driver",
            )
        )
    if not policy.require_cc:
        verdict.add(
            Check.skipped("cc_mode", f"tier {policy.tier} does not require confidential computing")
        )
    else:
        verdict.add(
            Check.judged(
                "cc_mode",
                posture.cc_mode == "on",
                "confidential-computing mode is on",
                f"confidential-computing mode is {posture.cc_mode}, tier {policy.tier} requires "
                "on: set it with nvidia_gpu_tools --set-cc-mode=on and reset the GPU",
            )
        )
    if not policy.require_ecc:
        verdict.add(Check.skipped("ecc", f"tier {policy.tier} does not require ECC"))
    else:
        verdict.add(
            Check.judged(
                "ecc",
                posture.ecc_enabled,
                "ECC is on",
                f"ECC is off, tier {policy.tier} requires it: enable it (nvidia-smi -e 1), reset",
            )
        )
    return verdict

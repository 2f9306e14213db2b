"""Target platforms: ``os/arch[/variant]`` as the OCI image spec names them."""

from __future__ import annotations

import re
from dataclasses import dataclass

_PLATFORM = re.compile(r"^(?P<os>[a-z0-9]+)/(?P<arch>[a-z0-9_]+)(?:/(?P<variant>[a-z0-9]+))?$")

# Architectures the OCI image spec (GOARCH values) lists; anything else is a typo.
KNOWN_ARCHITECTURES = frozenset(
    {"amd64", "arm64", "arm", "386", "ppc64le", "s390x", "riscv64", "mips64le", "loong64"}
)


@dataclass(frozen=True, order=True)
class Platform:
    os: str
    arch: str
    variant: str | None = None

    @classmethod
    def parse(cls, text: str) -> Platform:
        match = _PLATFORM.match(text.strip().lower())
        if match is None:
            raise ValueError(f"platform {text!r} must look like 'linux/amd64' or 'linux/arm/v7'")
        if match["arch"] not in KNOWN_ARCHITECTURES:
            raise ValueError(
                f"platform {text!r} names an unknown architecture {match['arch']!r}; known: "
                f"{', '.join(sorted(KNOWN_ARCHITECTURES))}"
            )
        return cls(match["os"], match["arch"], match["variant"])

    def __str__(self) -> str:
        return "/".join(part for part in (self.os, self.arch, self.variant) if part)

    @property
    def tag_suffix(self) -> str:
        """``linux-arm64`` or ``linux-arm-v7``: the per-platform tag is ``<revision>-<suffix>``."""
        return "-".join(part for part in (self.os, self.arch, self.variant) if part)

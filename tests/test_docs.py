"""The README documents every setting there is, and no setting that is not."""

from __future__ import annotations

import re
from pathlib import Path

from kernel.settings import Settings

README = Path(__file__).resolve().parent.parent / "README.md"


def test_the_configuration_table_matches_the_settings() -> None:
    documented = set(re.findall(r"^\| `(DRYDOCK_[A-Z_]+)` \|", README.read_text(), re.MULTILINE))
    actual = {f"DRYDOCK_{name.upper()}" for name in Settings.model_fields}
    assert documented == actual

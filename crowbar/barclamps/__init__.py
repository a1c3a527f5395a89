"""Barclamps: directories with a barclamp.yml (roles, attribs) and optional scripts/."""

from pathlib import Path

BUILTIN = Path(__file__).parent / "builtin"


def builtin_paths() -> list[Path]:
    return sorted(p for p in BUILTIN.iterdir() if (p / "barclamp.yml").exists())

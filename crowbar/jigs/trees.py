"""What the ansible and puppet jigs share about the barclamp tree they get (`RunContext.scripts`:
relative path and text of every file under the barclamp's ansible/ or puppet/), and their timeouts."""

from __future__ import annotations

import math
from pathlib import Path, PurePosixPath


def check_tree(files: list[dict], tree: str, main: str) -> str | None:
    """Why the tree can't be unpacked and run (a path leaving the directory, no `main`), or None.
    The paths were checked at import (crowbar/barclamps/files.py); this guards the jig itself."""
    names = set()
    for f in files:
        p = PurePosixPath(f.get("name") or "")
        if not p.parts or p.is_absolute() or ".." in p.parts or any(q.startswith(".") for q in p.parts):
            return f"file {str(p)!r} of the {tree} tree is not a plain relative path"
        names.add(p.as_posix())
    if main not in names:
        return f"the barclamp has no {tree}/{main}"
    return None


def write_tree(files: list[dict], root: Path) -> None:
    """Write the tree (checked by `check_tree`) below `root`."""
    for f in files:
        path = root / f["name"]
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(f["content"])


def seconds(raw) -> float | None:
    """A timeout as positive finite seconds (numeric strings allowed, as the CLI may store them)."""
    try:
        value = float(raw)
    except (TypeError, ValueError):
        return None
    return value if not isinstance(raw, bool) and 0 < value < math.inf else None

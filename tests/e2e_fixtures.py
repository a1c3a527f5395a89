"""The end-to-end fixtures (tests/e2e/conftest.py: real servers, the real CLI) for test modules in
other folders, loaded once by path under one module name, so every user shares its classes."""

from __future__ import annotations

import importlib.util
import sys
from pathlib import Path

_spec = importlib.util.spec_from_file_location("crowbar_e2e_fixtures", Path(__file__).parent / "e2e" / "conftest.py")
e2e = sys.modules.setdefault(_spec.name, importlib.util.module_from_spec(_spec))
if not hasattr(e2e, "Servers"):
    _spec.loader.exec_module(e2e)

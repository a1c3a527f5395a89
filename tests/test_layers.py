"""Imports only go down: no module imports from a higher layer than its own.

Every module under crowbar/ is parsed with `ast`; every import counts, at the top of a module, inside
a function or under TYPE_CHECKING alike. (A plugin that the registry in crowbar/plugins.py loads by
its name is not an import, and is not seen here.) The layers, highest first; a module may import
from its own layer and from any layer below it:

    clients     cli, lab, demo, web     talk to the server over HTTP
    server      server                  the process and its long-running loops
    api         api                     FastAPI routers, one service call per route
    services    services                the logic; a unit of work is a Session
    engine      engine, jigs, power     the noderole graph and annealer core, jig and power plugins
    machinery   network, provisioner, proxy, barclamps, agent, openstack    pure: no database
    bottom      db, errors, config, plugins, documents, procs, crowbar/__init__.py

Two rules more:
- clients talk HTTP: a client module imports nothing server-side (nothing outside the clients but
  crowbar.config and crowbar.procs), except crowbar/cli/local.py, the one home of what the local commands (server,
  db upgrade, images build-discovery, lab) run in their own process;
- the machinery opens no database: no sqlalchemy, nothing of crowbar.db.
"""

from __future__ import annotations

import ast
from dataclasses import dataclass
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
PACKAGE = ROOT / "crowbar"

LAYERS = {
    "clients": ("cli", "lab", "demo", "web"),
    "server": ("server",),
    "api": ("api",),
    "services": ("services",),
    "engine": ("engine", "jigs", "power"),
    "machinery": ("network", "provisioner", "proxy", "barclamps", "agent", "openstack"),
    "bottom": ("db", "errors", "config", "plugins", "documents", "procs", "__init__"),
}
RANK = {part: rank for rank, parts in enumerate(reversed(LAYERS.values())) for part in parts}
LAYER_OF = {part: name for name, parts in LAYERS.items() for part in parts}
CLIENTS = set(LAYERS["clients"])
CLIENTS_MAY_IMPORT = CLIENTS | {"config", "procs"}
LOCAL_COMMANDS = "crowbar/cli/local.py"
PURE = set(LAYERS["machinery"])

# Imports allowed to break a rule, each with the reason: none today, and an addition needs one.
# Keyed by the importing file and the imported module (not by line, which moves); an entry that
# no longer matches anything fails test_the_allow_list_has_no_stale_entries.
ALLOWED: dict[tuple[str, str], str] = {}


@dataclass(frozen=True)
class Import:
    path: str      # the importing file, relative to the repository
    line: int
    module: str    # the imported module, dotted ("crowbar.services.provisioning", "sqlalchemy")
    text: str      # the import statement as written

    def __str__(self) -> str:
        return f"{self.path}:{self.line}: {self.text}"


def part_of(module: str) -> str:
    """The top-level part of crowbar a dotted module belongs to ("crowbar" alone: __init__)."""
    parts = module.split(".")
    return parts[1] if len(parts) > 1 else "__init__"


def modules() -> list[Path]:
    return sorted(PACKAGE.rglob("*.py"))


def imports(path: Path) -> list[Import]:
    return parse_imports(path.read_text(), str(path.relative_to(ROOT)))


def parse_imports(source: str, path: str) -> list[Import]:
    """Every import in the source of the file at `path` (relative to the repository), relative ones
    resolved, and `from crowbar import x` read as the module crowbar.x when there is one."""
    dotted = list(Path(path).with_suffix("").parts)
    package = dotted[:-1]  # of a package's __init__.py too: its own package
    found = []
    for node in ast.walk(ast.parse(source, path)):
        if isinstance(node, ast.Import):
            targets = [alias.name for alias in node.names]
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                base = ".".join(package[: len(package) - node.level + 1] + ([base] if base else []))
            targets = [f"{base}.{alias.name}" if _is_module(f"{base}.{alias.name}") else base
                       for alias in node.names]
        else:
            continue
        text = " ".join(ast.get_source_segment(source, node).split())
        found += [Import(path, node.lineno, target, text) for target in dict.fromkeys(targets)]
    return found


def _is_module(dotted: str) -> bool:
    path = ROOT.joinpath(*dotted.split("."))
    return path.with_suffix(".py").is_file() or (path / "__init__.py").is_file()


def offences(imp: Import) -> list[str]:
    """What is wrong with one import, if anything."""
    own = part_of(".".join(Path(imp.path).with_suffix("").parts))
    problems = []
    ours = imp.module == "crowbar" or imp.module.startswith("crowbar.")
    if ours:
        theirs = part_of(imp.module)
        if theirs not in RANK:
            problems.append(f"crowbar/{theirs} is in no layer: add it to LAYERS")
        elif RANK[theirs] > RANK[own]:
            problems.append(f"{LAYER_OF[own]} ({own}) imports from the higher layer {LAYER_OF[theirs]} ({theirs})")
        if own in CLIENTS and theirs not in CLIENTS_MAY_IMPORT and imp.path != LOCAL_COMMANDS:
            problems.append(f"a client imports server-side code ({theirs}); only {LOCAL_COMMANDS} may")
    database = imp.module.split(".")[0] == "sqlalchemy" or (ours and part_of(imp.module) == "db")
    if own in PURE and database:
        problems.append(f"{own} is pure machinery and opens no database")
    return problems


def all_imports() -> list[Import]:
    return [imp for path in modules() for imp in imports(path)]


def test_every_part_of_crowbar_has_a_layer():
    parts = {part_of(".".join(p.relative_to(ROOT).with_suffix("").parts)) for p in modules()}
    assert parts - set(RANK) == set(), "add the new part of crowbar to LAYERS in this file"


def test_imports_only_go_down():
    bad = [f"{imp}  ({imp.module}: {problem})" for imp in all_imports() if (imp.path, imp.module) not in ALLOWED
           for problem in offences(imp)]
    assert not bad, "imports against the layers (see this file's docstring):\n" + "\n".join(bad)


def test_the_allow_list_has_no_stale_entries():
    still = {(imp.path, imp.module) for imp in all_imports() if offences(imp)}
    stale = sorted(set(ALLOWED) - still)
    assert not stale, f"these imports are gone or allowed now; remove them from ALLOWED: {stale}"


def test_the_check_names_file_line_and_import_even_inside_a_function():
    source = "import json\n\n\ndef later():\n    from crowbar.services import lookup  # climbs up\n"
    (imp,) = [i for i in parse_imports(source, "crowbar/engine/example.py") if i.module.startswith("crowbar")]
    assert str(imp) == "crowbar/engine/example.py:5: from crowbar.services import lookup"
    assert offences(imp) == ["engine (engine) imports from the higher layer services (services)"]
    (client,) = parse_imports("from crowbar.provisioner import lifecycle\n", "crowbar/cli/example.py")
    assert offences(client) == ["a client imports server-side code (provisioner); only crowbar/cli/local.py may"]
    (pure,) = parse_imports("from sqlalchemy import select\n", "crowbar/barclamps/example.py")
    assert offences(pure) == ["barclamps is pure machinery and opens no database"]

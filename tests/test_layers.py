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
- the machinery opens no database: no sqlalchemy, nothing of crowbar.db;
and within a layer, no circle of imports (the web UI's ES modules too).
"""

from __future__ import annotations

import ast
import re
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


# -- no circles --------------------------------------------------------------------------------------
# Within a layer too, imports form no circle: each module stands on the ones it imports, never on
# itself through others (the web UI's ES modules alike). A circle is what a module reaching up for a
# helper, a callback or a type makes; the cure is to move what both need below both.
JS = PACKAGE / "web" / "static"
JS_IMPORT = re.compile(r"""(?<![\w.$])import\s*(?:\(\s*|[^"'();]*?\bfrom\s*|)["'](\./[\w./-]+\.js)["']""", re.M)


def circles(graph: dict[str, set[str]]) -> list[list[str]]:
    """The circles of a graph of imports (its strongly connected parts of more than one module, and
    modules that import themselves), each sorted, with Tarjan's algorithm."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    found: list[list[str]] = []

    def visit(node: str) -> None:
        index[node] = low[node] = len(index)
        stack.append(node)
        for nxt in sorted(graph.get(node, ())):
            if nxt not in index:
                visit(nxt)
                low[node] = min(low[node], low[nxt])
            elif nxt in stack:
                low[node] = min(low[node], index[nxt])
        if low[node] == index[node]:
            part = []
            while True:
                member = stack.pop()
                part.append(member)
                if member == node:
                    break
            if len(part) > 1 or node in graph.get(node, ()):
                found.append(sorted(part))

    for node in sorted(graph):
        if node not in index:
            visit(node)
    return sorted(found)


def python_graph() -> dict[str, set[str]]:
    graph: dict[str, set[str]] = {}
    for path in modules():
        dotted = list(path.relative_to(ROOT).with_suffix("").parts)
        name = ".".join(dotted[:-1] if dotted[-1] == "__init__" else dotted)
        graph[name] = {imp.module for imp in imports(path)
                       if imp.module.startswith("crowbar") and imp.module != name}
    return graph


def js_graph() -> dict[str, set[str]]:
    return {path.name: {target.removeprefix("./") for target in JS_IMPORT.findall(path.read_text())}
            for path in sorted(JS.glob("*.js"))}


def test_no_module_imports_itself_through_others():
    assert circles(python_graph()) == [], "modules of crowbar/ in a circle of imports"
    assert js_graph(), f"no ES modules found in {JS}"
    assert circles(js_graph()) == [], f"ES modules of {JS.relative_to(ROOT)} in a circle of imports"


def test_the_circle_check_finds_a_circle_and_reads_every_kind_of_js_import():
    assert circles({"a": {"b"}, "b": {"c"}, "c": {"a", "d"}, "d": set(), "e": {"e"}}) == [["a", "b", "c"], ["e"]]
    assert circles({"a": {"b"}, "b": set()}) == []
    source = 'import { h } from "./kit.js";\nimport "./pages.js";\nPromise.all([import("./admin.js")]);\nconst y = "./no.js";\n'
    assert JS_IMPORT.findall(source) == ["./kit.js", "./pages.js", "./admin.js"]

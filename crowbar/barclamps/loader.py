"""Reading and validating barclamp definitions: a barclamp.yml (and its scripts/) in, a plain
description (BarclampDef) out.

Pure: nothing here touches the database. `read` checks one barclamp on its own; `check_against` checks
it against what other barclamps already provide (their roles and attribs, which the caller looks up),
so an import is validated completely before anything is written. Writing the description into the
database is crowbar/services/catalog.py's job. Every error names the file, the role and the reason.
"""

from __future__ import annotations

import re
from collections.abc import Collection, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import NamedTuple

import jsonschema
import yaml

from crowbar import plugins
from crowbar.errors import BarclampError

FLAGS = frozenset({"implicit", "milestone", "discovery", "bootstrap", "cluster", "destructive", "service",
                   "abstract"})
NAME = re.compile(r"^[a-z0-9][a-z0-9_-]*$")
ROLE_KEYS = {"name", "description", "jig", "requires", "flags", "attribs", "wants-attribs", "template",
             "conflicts"}


@dataclass
class AttribDef:
    name: str
    map: str
    default: object = None
    schema: dict = field(default_factory=dict)
    description: str = ""


@dataclass
class RoleDef:
    name: str
    jig: str = "noop"
    description: str = ""
    requires: list[str] = field(default_factory=list)
    flags: list[str] = field(default_factory=list)
    attribs: list[AttribDef] = field(default_factory=list)
    wants_attribs: list[str] = field(default_factory=list)
    conflicts: list[str] = field(default_factory=list)
    template: dict = field(default_factory=dict)
    scripts: list[dict] = field(default_factory=list)


@dataclass
class BarclampDef:
    name: str
    description: str
    version: str
    path: Path
    roles: list[RoleDef]
    attribs: list[AttribDef]  # attribs not tied to a role (node-level)


def _fail(path: Path, message: str, role: str | None = None) -> BarclampError:
    where = f"{path}: role {role!r}: " if role else f"{path}: "
    return BarclampError(where + message, field="barclamp")


def _str_list(value, path: Path, role: str, key: str) -> list[str]:
    if value is None:
        return []
    if not isinstance(value, list) or not all(isinstance(v, str) for v in value):
        raise _fail(path, f"{key} must be a list of names", role)
    return list(value)


def _attrib(raw, path: Path, role: str | None) -> AttribDef:
    if not isinstance(raw, dict) or not isinstance(raw.get("name"), str) or not isinstance(raw.get("map"), str):
        raise _fail(path, f"each attrib needs a name and a map (got {raw!r})", role)
    schema = raw.get("schema") or {}
    try:
        jsonschema.Draft202012Validator.check_schema(schema)
        if raw.get("default") is not None:
            jsonschema.validate(raw["default"], schema)
    except jsonschema.SchemaError as exc:
        raise _fail(path, f"attrib {raw['name']!r} has a bad schema: {exc.message}", role) from None
    except jsonschema.ValidationError as exc:
        raise _fail(path, f"attrib {raw['name']!r}: default does not match its schema: {exc.message}", role) from None
    return AttribDef(name=raw["name"], map=raw["map"].strip("/"), default=raw.get("default"), schema=schema,
                     description=raw.get("description", ""))


def read(directory: Path | str) -> BarclampDef:
    """Parse and check one barclamp directory (or its barclamp.yml) on its own."""
    directory = Path(directory)
    path = directory / "barclamp.yml" if directory.is_dir() else directory
    directory = path.parent
    if not path.exists():
        raise BarclampError(f"{path}: no such file", field="path")
    try:
        doc = yaml.safe_load(path.read_text())
    except yaml.YAMLError as exc:
        raise _fail(path, f"invalid YAML: {str(exc).splitlines()[0]}") from None
    if not isinstance(doc, dict) or not isinstance(doc.get("barclamp"), dict):
        raise _fail(path, "missing the 'barclamp' section")
    meta = doc["barclamp"]
    name = meta.get("name")
    if not isinstance(name, str) or not NAME.match(name):
        raise _fail(path, f"barclamp name {name!r} must be lower-case letters, digits, '-' or '_'")
    jigs = set(plugins.names(plugins.JIGS))
    roles: list[RoleDef] = []
    seen: set[str] = set()
    for raw in doc.get("roles") or []:
        if not isinstance(raw, dict) or not isinstance(raw.get("name"), str):
            raise _fail(path, f"each role needs a name (got {raw!r})")
        rname = raw["name"]
        if not NAME.match(rname):
            raise _fail(path, "role names are lower-case letters, digits, '-' or '_'", rname)
        if rname in seen:
            raise _fail(path, "duplicate role", rname)
        seen.add(rname)
        unknown_keys = set(raw) - ROLE_KEYS
        if unknown_keys:
            raise _fail(path, f"unknown keys {sorted(unknown_keys)}", rname)
        jig = raw.get("jig", "noop")
        if jig not in jigs:
            raise _fail(path, f"unknown jig {jig!r} (known: {', '.join(sorted(jigs))})", rname)
        flags = _str_list(raw.get("flags"), path, rname, "flags")
        bad = sorted(set(flags) - FLAGS)
        if bad:
            raise _fail(path, f"unknown flags {bad} (known: {', '.join(sorted(FLAGS))})", rname)
        template = raw.get("template") or {}
        if not isinstance(template, dict):
            raise _fail(path, "template must be a mapping", rname)
        script_dir = directory / "scripts" / rname
        scripts = [{"name": p.name, "content": p.read_text()}
                   for p in sorted(script_dir.iterdir()) if p.is_file()] if script_dir.is_dir() else []
        if jig == "script" and not scripts:
            raise _fail(path, f"jig 'script' needs scripts in {script_dir}", rname)
        roles.append(RoleDef(
            name=rname, jig=jig, description=raw.get("description", ""),
            requires=_str_list(raw.get("requires"), path, rname, "requires"), flags=flags,
            attribs=[_attrib(a, path, rname) for a in raw.get("attribs") or []],
            wants_attribs=_str_list(raw.get("wants-attribs"), path, rname, "wants-attribs"),
            conflicts=_str_list(raw.get("conflicts"), path, rname, "conflicts"),
            template=template, scripts=scripts,
        ))
    attribs = [_attrib(a, path, None) for a in doc.get("attribs") or []]
    names = [a.name for a in attribs] + [a.name for r in roles for a in r.attribs]
    dupes = sorted({n for n in names if names.count(n) > 1})
    if dupes:
        raise _fail(path, f"duplicate attribs {dupes}")
    return BarclampDef(name=name, description=meta.get("description", ""), version=str(meta.get("version", "0")),
                       path=directory, roles=roles, attribs=attribs)


class ProvidedRole(NamedTuple):
    """A role another barclamp already provides, as check_against needs it."""

    barclamp: str
    requires: list[str]


def check_against(bc: BarclampDef, roles: Mapping[str, ProvidedRole], attribs: Collection[str]) -> None:
    """Check `bc` against the roles and attribs of the other barclamps already installed: no role or
    attrib defined twice, every required role and wanted attrib known, no dependency cycle."""
    path = bc.path / "barclamp.yml"
    ours = {r.name: r for r in bc.roles}
    for r in bc.roles:
        if r.name in roles:
            raise _fail(path, f"conflict: role already provided by barclamp {roles[r.name].barclamp!r}", r.name)
    known_roles = set(roles) | set(ours)
    own_attribs = {a.name for a in bc.attribs} | {a.name for r in bc.roles for a in r.attribs}
    for name in sorted(own_attribs & set(attribs)):
        raise _fail(path, f"conflict: attrib {name!r} already defined by another barclamp")
    for r in bc.roles:
        for req in r.requires:
            if req not in known_roles:
                raise _fail(path, f"requires unknown role {req!r}", r.name)
        for name in r.wants_attribs:
            if name not in own_attribs and name not in attribs:
                raise _fail(path, f"wants unknown attrib {name!r}", r.name)
    # Cycle check over the whole role graph, installed roles included.
    graph = {name: list(role.requires or []) for name, role in roles.items()}
    graph.update({r.name: r.requires for r in bc.roles})
    state: dict[str, int] = {}

    def visit(node: str, trail: list[str]) -> None:
        state[node] = 1
        for nxt in graph.get(node, []):
            if state.get(nxt) == 1:
                cycle = trail[trail.index(nxt):] + [node, nxt] if nxt in trail else [node, nxt]
                raise _fail(path, f"dependency cycle: {' -> '.join(cycle)}", node)
            if nxt not in state:
                visit(nxt, trail + [node])
        state[node] = 2

    for name in sorted(ours):
        if name not in state:
            visit(name, [])

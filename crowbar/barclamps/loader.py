"""Reading and validating barclamp definitions: a barclamp.yml (and its scripts/) in, a plain
description (BarclampDef) out.

Pure: nothing here touches the database. `read` checks one barclamp directory on its own and
`read_files` the same from the files a client uploaded; `check_against` checks it against what
other barclamps already provide (their roles and attribs, which the caller looks up), so an import
is validated completely before anything is written. Writing the description into the database is
crowbar/services/catalog.py's job. Every error names the file, the role and the reason.

A barclamp may come from a hostile author (docs/security.md, "Barclamps"): the files are gathered
and size-checked first (crowbar/barclamps/files.py: no symbolic links, no special files, limits
from crowbar/barclamps/limits.py), barclamp.yml is parsed by crowbar/barclamps/strict_yaml.py (no
alias bombs, duplicate or non-string keys, or values JSON cannot hold), and every value is checked
for its type here, so whatever the document holds the answer is a BarclampError, never another
exception.
"""

from __future__ import annotations

import re
import reprlib
from collections import Counter
from collections.abc import Collection, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import NamedTuple

import jsonschema
import yaml

from crowbar import plugins
from crowbar.barclamps import files, strict_yaml
from crowbar.barclamps.limits import MAX_NAME, MAX_SOURCE, MAX_VERSION
from crowbar.errors import BarclampError
from crowbar.network.model import watch_problem

FLAGS = frozenset({"implicit", "milestone", "discovery", "bootstrap", "cluster", "destructive", "service",
                   "abstract"})
NAME = re.compile(r"[a-z0-9][a-z0-9_-]*")  # matched whole (re.fullmatch: no trailing newline slips by)
ROLE_KEYS = {"name", "description", "jig", "requires", "flags", "attribs", "wants-attribs", "template",
             "conflicts", "reruns-on-networks"}
UPLOAD = Path("(upload)")  # names an upload's files in errors when the client did not say where they came from
# A schema is evaluated with each of these (and the attrib's default) at import, so that one which
# can never be evaluated (a $ref to itself) is refused now rather than when an attrib is set.
SCHEMA_PROBES = (None, True, 0, 0.5, "", [], {})
_SHORT = reprlib.Repr()  # Python 3.11's Repr takes no arguments
_SHORT.maxstring, _SHORT.maxother, _SHORT.maxlist, _SHORT.maxdict, _SHORT.maxlevel = 60, 60, 4, 4, 2


@dataclass
class AttribDef:
    name: str
    map: str
    default: object = None
    schema: dict | bool = field(default_factory=dict)
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
    # `reruns-on-networks`: {network: [fields]} its runs derive values from ([]: any field)
    reruns_on_networks: dict[str, list[str]] = field(default_factory=dict)


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
    return BarclampError(files.printable(where + message), field="barclamp")


def _show(value) -> str:
    """A value in a message: short, however large it is."""
    return _SHORT.repr(value)


def _name(value, what: str, path: Path, role: str | None = None) -> str:
    if not isinstance(value, str) or not NAME.fullmatch(value) or len(value) > MAX_NAME:
        raise _fail(path, f"{what}s are lower-case letters, digits, '-' or '_', at most {MAX_NAME} characters "
                    f"(got {_show(value)})", role)
    return value


def _text(value, what: str, path: Path, role: str | None = None) -> str:
    """A description: text, or nothing."""
    if value is None:
        return ""
    if not isinstance(value, str):
        raise _fail(path, f"{what} must be text (got {_show(value)})", role)
    return value


def _list(value, what: str, path: Path, role: str | None = None) -> list:
    if value is None:
        return []
    if not isinstance(value, list):
        raise _fail(path, f"{what} must be a list (got {_show(value)})", role)
    return value


def _str_list(value, path: Path, role: str, key: str) -> list[str]:
    value = _list(value, key, path, role)
    if not all(isinstance(v, str) for v in value):
        raise _fail(path, f"{key} must be a list of names", role)
    return list(value)


def _schema_refs(schema) -> str | None:
    """The first $ref that leads out of the schema (a URL or a file: the server would fetch it)."""
    stack = [schema]
    while stack:
        node = stack.pop()
        if isinstance(node, dict):
            for key in ("$ref", "$dynamicRef"):
                ref = node.get(key)
                if isinstance(ref, str) and not ref.startswith("#"):
                    return ref
            stack.extend(node.values())
        elif isinstance(node, list):
            stack.extend(node)
    return None


def _check_schema(schema, default, path: Path, role: str | None, aname: str) -> None:
    """`schema` is a JSON schema the attribs service can always evaluate, and `default` fits it."""
    what = f"attrib {aname!r}"
    if not isinstance(schema, (dict, bool)):
        raise _fail(path, f"{what}: schema must be a mapping (got {_show(schema)})", role)
    ref = _schema_refs(schema)
    if ref is not None:
        raise _fail(path, f"{what}: schema refers to {_show(ref)}; only references inside the schema "
                    "('#...') are allowed", role)
    try:
        jsonschema.Draft202012Validator.check_schema(schema)  # first: $schema is a string
        cls = jsonschema.validators.validator_for(schema, default=jsonschema.Draft202012Validator)
        cls.check_schema(schema)
        validator = cls(schema)
        if default is not None:
            validator.validate(default)
        for probe in SCHEMA_PROBES:
            validator.is_valid(probe)
    except jsonschema.SchemaError as exc:
        raise _fail(path, f"{what} has a bad schema: {exc.message}", role) from None
    except jsonschema.ValidationError as exc:
        raise _fail(path, f"{what}: default does not match its schema: {exc.message}", role) from None
    except RecursionError:
        raise _fail(path, f"{what}: its schema refers to itself without end", role) from None
    except Exception as exc:  # noqa: BLE001 - the schema is the author's: any failure to evaluate it is theirs
        first = (str(exc).strip().splitlines() or [type(exc).__name__])[0]
        raise _fail(path, f"{what}: its schema cannot be evaluated: {_show(first)}", role) from None


def _attrib(raw, path: Path, role: str | None) -> AttribDef:
    if not isinstance(raw, dict) or not isinstance(raw.get("name"), str) or not isinstance(raw.get("map"), str):
        raise _fail(path, f"each attrib needs a name and a map (got {_show(raw)})", role)
    name = raw["name"]
    if not name.strip() or len(name) > MAX_NAME or not name.isprintable() or "/" in name:
        raise _fail(path, f"attrib name {_show(name)} must be printable, without '/', at most {MAX_NAME} "
                    "characters", role)
    amap = raw["map"].strip("/")
    if not amap or "" in amap.split("/"):
        raise _fail(path, f"attrib {name!r}: map {_show(raw['map'])} must be a path like 'a/b'", role)
    schema = raw.get("schema")
    schema = {} if schema is None else schema
    _check_schema(schema, raw.get("default"), path, role, name)
    return AttribDef(name=name, map=amap, default=raw.get("default"), schema=schema,
                     description=_text(raw.get("description"), f"attrib {name!r}: description", path, role))


def _section(doc, key: str, path: Path) -> list:
    return _list(doc.get(key), f"the {key!r} section", path)


def read(directory: Path | str) -> BarclampDef:
    """Parse and check one barclamp directory (or its barclamp.yml) on its own."""
    root, texts = files.from_directory(directory)
    return parse(root, texts)


def read_files(texts: Mapping[str, str], source: str | None = None) -> BarclampDef:
    """Parse and check the files of one barclamp a client sent (relative path -> text); `source`
    (the client's directory) names them in errors and is kept as the barclamp's source_path."""
    if source is not None and (not isinstance(source, str) or len(source) > MAX_SOURCE
                               or not source.isprintable()):
        raise BarclampError(f"source must be a printable path of at most {MAX_SOURCE} characters", field="source")
    where = Path(source) if source else UPLOAD
    return parse(where, files.from_upload(texts, where))


def parse(root: Path, texts: Mapping[str, str]) -> BarclampDef:
    """The barclamp whose files (relative path -> text, as crowbar/barclamps/files.py checked them)
    came from `root`."""
    path = root / files.YML
    try:
        doc = strict_yaml.load(texts[files.YML])
    except yaml.YAMLError as exc:
        raise _fail(path, strict_yaml.describe(exc)) from None
    if not isinstance(doc, dict) or not isinstance(doc.get("barclamp"), dict):
        raise _fail(path, "missing the 'barclamp' section")
    meta = doc["barclamp"]
    name = _name(meta.get("name"), "barclamp name", path)
    version = meta.get("version", "0")
    if isinstance(version, bool) or not isinstance(version, (str, int, float)) or len(str(version)) > MAX_VERSION:
        raise _fail(path, f"version must be text or a number of at most {MAX_VERSION} characters "
                    f"(got {_show(version)})")
    jigs = set(plugins.names(plugins.JIGS))
    roles: list[RoleDef] = []
    seen: set[str] = set()
    for raw in _section(doc, "roles", path):
        if not isinstance(raw, dict) or not isinstance(raw.get("name"), str):
            raise _fail(path, f"each role needs a name (got {_show(raw)})")
        rname = _name(raw["name"], "role name", path, raw["name"][:MAX_NAME])
        if rname in seen:
            raise _fail(path, "duplicate role", rname)
        seen.add(rname)
        unknown_keys = set(raw) - ROLE_KEYS
        if unknown_keys:
            raise _fail(path, f"unknown keys {sorted(unknown_keys)}", rname)
        jig = raw.get("jig", "noop")
        if not isinstance(jig, str) or jig not in jigs:
            raise _fail(path, f"unknown jig {_show(jig)} (known: {', '.join(sorted(jigs))})", rname)
        flags = _str_list(raw.get("flags"), path, rname, "flags")
        bad = sorted(set(flags) - FLAGS)
        if bad:
            raise _fail(path, f"unknown flags {bad} (known: {', '.join(sorted(FLAGS))})", rname)
        template = raw.get("template") or {}
        if not isinstance(template, dict):
            raise _fail(path, "template must be a mapping", rname)
        scripts = _jig_files(jig, rname, texts, root, path)
        reruns = raw.get("reruns-on-networks") or {}
        problem = watch_problem(reruns)
        if problem:
            raise _fail(path, f"reruns-on-networks: {problem}", rname)
        roles.append(RoleDef(
            name=rname, jig=jig, description=_text(raw.get("description"), "description", path, rname),
            requires=_str_list(raw.get("requires"), path, rname, "requires"), flags=flags,
            attribs=[_attrib(a, path, rname) for a in _list(raw.get("attribs"), "attribs", path, rname)],
            wants_attribs=_str_list(raw.get("wants-attribs"), path, rname, "wants-attribs"),
            conflicts=_str_list(raw.get("conflicts"), path, rname, "conflicts"),
            template=template, scripts=scripts,
            reruns_on_networks={name: [] for name in reruns} if isinstance(reruns, list) else reruns,
        ))
    attribs = [_attrib(a, path, None) for a in _section(doc, "attribs", path)]
    names = Counter(a.name for a in [*attribs, *(a for r in roles for a in r.attribs)])
    dupes = sorted(n for n, count in names.items() if count > 1)
    if dupes:
        raise _fail(path, f"duplicate attribs {dupes}")
    return BarclampDef(name=name, description=_text(meta.get("description"), "description", path),
                       version=str(version), path=root, roles=roles, attribs=attribs)


# What a role of each file-carrying jig must have: (the directory its files come from, the file it runs).
JIG_FILES = {"ansible": ("ansible", "{role}.yml"), "puppet": ("puppet", "manifests/{role}.pp")}


def _jig_files(jig: str, rname: str, texts: Mapping[str, str], root: Path, path: Path) -> list[dict]:
    """The files a role's jig gets (`RunContext.scripts`): the script jig its scripts/ROLE/*; the
    ansible and puppet jigs the barclamp's whole ansible/ or puppet/ tree (paths relative to it),
    which must hold the role's playbook or manifest."""
    if jig in JIG_FILES:
        tree, main = JIG_FILES[jig]
        main = main.format(role=rname)
        prefix = f"{tree}/"
        found = [{"name": rel[len(prefix):], "content": text}
                 for rel, text in sorted(texts.items()) if rel.startswith(prefix)]
        if not any(f["name"] == main for f in found):
            raise _fail(path, f"jig {jig!r} needs {root / tree / main}", rname)
        return found
    prefix = f"{files.SCRIPTS}/{rname}/"
    scripts = [{"name": rel[len(prefix):], "content": text}
               for rel, text in sorted(texts.items()) if rel.startswith(prefix)]
    if jig == "script" and not scripts:
        raise _fail(path, f"jig 'script' needs scripts in {root / files.SCRIPTS / rname}", rname)
    return scripts


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
    # Cycle check over the whole role graph, installed roles included; depth-first without recursion
    # (a chain of thousands of roles is no reason to fail).
    graph = {name: list(role.requires or []) for name, role in roles.items()}
    graph.update({r.name: r.requires for r in bc.roles})
    state: dict[str, int] = {}  # 1: on the current trail, 2: done
    for start in sorted(ours):
        if start in state:
            continue
        state[start] = 1
        trail, todo = [start], [iter(graph.get(start, []))]
        while todo:
            node = trail[-1]
            for nxt in todo[-1]:
                if state.get(nxt) == 1:
                    cycle = trail[trail.index(nxt):] + [nxt]
                    raise _fail(path, f"dependency cycle: {' -> '.join(cycle)}", node)
                if nxt not in state:
                    state[nxt] = 1
                    trail.append(nxt)
                    todo.append(iter(graph.get(nxt, [])))
                    break
            else:
                state[node] = 2
                trail.pop()
                todo.pop()

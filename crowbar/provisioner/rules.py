"""OS rules: which OS, root-device hints and tags a node gets, as ordered data (pure, no database).

A rules document (YAML or JSON, stored by crowbar.services.os_rules, docs/os-deployment.md):

    rules:                      # in order: the first rule whose `when` holds is the node's
      - name: big-memory
        when: "memory_gib >= `64`"          # JMESPath over the node's facts (below)
        os: debian-13
        tags: [big-mem]
        root_device: {size: ">= 100"}       # Ironic's root device hints (crowbar.provisioner.install)
    default:                    # what applies when no rule matches, and what a rule leaves out
      os: debian-12
      tags: []

Conditions are JMESPath expressions (the `jmespath` library: the query language of the AWS CLI and
Ansible's json_query; no hand-written parser, no eval). They are evaluated against the node's
facts, one JSON document (`facts()`):

    name, state, os, admin      the node's name, lifecycle state, current OS, whether it is the admin
    inventory                   its discovery inventory as the agent posted it (cpu, memory, disks, nics...)
    hints                       its hints (attributes set on the node)
    tags                        the tags the operator set (the `tags` attrib: hints crowbar/tags)
    roles, deployments          names of the roles bound to it and of the deployments they are in
    memory_gib, cpus, firmware  from the inventory, for short conditions (whole GiB, rounded down)
    disks_gib                   the non-removable disks' sizes in whole GiB, largest first

A condition holds when its value is truthy by JMESPath's rules (not null, false, an empty string,
list or object). One that fails to evaluate (a function given the wrong type) does not hold, and
`explain` says why. The chosen rule gives its `os`, `root_device` and `tags`; what it leaves out
comes from `default`. A node's tags are the operator's plus the chosen rule's (or the default's).
"""

from __future__ import annotations

import json
import re
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field

import jmespath
import yaml
from jmespath import exceptions as jp_errors
from jmespath import visitor

from crowbar.barclamps import strict_yaml
from crowbar.errors import InvalidInput
from crowbar.provisioner import install

NAME_RE = re.compile(r"^[a-z0-9][a-z0-9._-]{0,62}$")  # rule names, tags and OS names
MAX_RULES = 200
MAX_EXPRESSION = 2000
MAX_TAGS = 32
RULE_KEYS = ("name", "when", "os", "tags", "root_device", "description")
DEFAULT_KEYS = ("os", "tags", "root_device")
GIB = 1 << 30
OPERATORS = {"eq": "==", "ne": "!=", "lt": "<", "lte": "<=", "gt": ">", "gte": ">="}


@dataclass(frozen=True)
class Rule:
    name: str
    when: str
    expression: object  # jmespath's ParsedResult
    os: str | None = None
    tags: tuple[str, ...] = ()
    root_device: dict | None = None
    description: str = ""

    def as_dict(self) -> dict:
        out: dict = {"name": self.name, "when": self.when}
        if self.description:
            out["description"] = self.description
        if self.os:
            out["os"] = self.os
        if self.tags:
            out["tags"] = list(self.tags)
        if self.root_device is not None:
            out["root_device"] = dict(self.root_device)
        return out


@dataclass(frozen=True)
class RuleSet:
    rules: tuple[Rule, ...] = ()
    default_os: str | None = None
    default_tags: tuple[str, ...] = ()
    default_root_device: dict | None = None

    def as_dict(self) -> dict:
        default: dict = {}
        if self.default_os:
            default["os"] = self.default_os
        default["tags"] = list(self.default_tags)
        if self.default_root_device is not None:
            default["root_device"] = dict(self.default_root_device)
        return {"rules": [r.as_dict() for r in self.rules], "default": default}


@dataclass(frozen=True)
class Choice:
    """What the rules give a node: the rule that matched (None: the default), OS, hints, tags."""

    rule: str | None
    os: str | None
    root_device: dict | None
    tags: tuple[str, ...] = ()
    verdicts: list[dict] = field(default_factory=list)

    def as_dict(self) -> dict:
        return {"rule": self.rule, "os": self.os, "root_device": self.root_device, "tags": list(self.tags)}


# --- reading a rules document ---

def parse_text(text: str) -> dict:
    """A rules document from YAML (or JSON) text, read by the same strict loader as barclamp.yml."""
    if not isinstance(text, str):
        raise InvalidInput("the rules must be a mapping or YAML text", field="rules")
    try:
        doc = strict_yaml.load(text)
    except yaml.YAMLError as exc:
        raise InvalidInput(f"the rules are not valid YAML: {strict_yaml.describe(exc)}", field="rules") from None
    return {} if doc is None else doc


def _tags(value, where: str) -> tuple[str, ...]:
    if value is None:
        return ()
    if not isinstance(value, list) or not all(isinstance(t, str) for t in value):
        raise InvalidInput(f"{where}: tags must be a list of strings", field="rules")
    if len(value) > MAX_TAGS:
        raise InvalidInput(f"{where}: at most {MAX_TAGS} tags", field="rules")
    for tag in value:
        if not NAME_RE.match(tag):
            raise InvalidInput(f"{where}: tag {tag[:70]!r} must be lower case letters, digits, '.', '_' or '-' "
                               "(at most 63, starting with a letter or digit)", field="rules")
    return tuple(dict.fromkeys(value))


def _os(value, where: str, known: Iterable[str] | None) -> str | None:
    if value is None:
        return None
    if not isinstance(value, str) or not NAME_RE.match(value):
        raise InvalidInput(f"{where}: os {str(value)[:70]!r} is not an OS name", field="rules")
    if known is not None and value not in set(known):
        raise InvalidInput(f"{where}: os {value!r} is not in the OS catalog ({', '.join(sorted(known)) or 'empty'})",
                           field="rules")
    return value


def _root_device(value, where: str) -> dict | None:
    if value is None:
        return None
    try:
        return install.check_hints(value)
    except InvalidInput as exc:
        raise InvalidInput(f"{where}: {exc.message}", field="rules") from None


def _unknown(mapping: Mapping, allowed: tuple[str, ...], where: str) -> None:
    unknown = sorted(str(k) for k in mapping if k not in allowed)
    if unknown:
        raise InvalidInput(f"{where}: unknown key(s) {', '.join(unknown)}: expected {', '.join(allowed)}",
                           field="rules")


def compile_expression(text, where: str):
    if not isinstance(text, str) or not text.strip():
        raise InvalidInput(f"{where}: `when` must be a JMESPath expression (text)", field="rules")
    if len(text) > MAX_EXPRESSION:
        raise InvalidInput(f"{where}: `when` is longer than {MAX_EXPRESSION} characters", field="rules")
    try:
        return jmespath.compile(text)
    except jp_errors.JMESPathError as exc:
        detail = str(exc).strip().splitlines()[0]
        raise InvalidInput(f"{where}: `when` is not a valid JMESPath expression: {detail}", field="rules") from None


def load(doc, known_os: Iterable[str] | None = None) -> RuleSet:
    """A RuleSet from a rules document (a mapping, or YAML text); InvalidInput names what is wrong.
    `known_os`: the OS names a rule may choose (the catalog), or None not to check."""
    if isinstance(doc, str):
        doc = parse_text(doc)
    if not isinstance(doc, Mapping):
        raise InvalidInput("the rules must be a mapping with `rules` (a list) and `default`", field="rules")
    _unknown(doc, ("rules", "default"), "the rules document")
    items = doc.get("rules")
    items = [] if items is None else items
    if not isinstance(items, list):
        raise InvalidInput("`rules` must be a list", field="rules")
    if len(items) > MAX_RULES:
        raise InvalidInput(f"at most {MAX_RULES} rules", field="rules")
    known = list(known_os) if known_os is not None else None
    rules, names = [], set()
    for index, item in enumerate(items, start=1):
        where = f"rule {index}"
        if not isinstance(item, Mapping):
            raise InvalidInput(f"{where}: must be a mapping with name and when", field="rules")
        _unknown(item, RULE_KEYS, where)
        name = item.get("name")
        if not isinstance(name, str) or not NAME_RE.match(name):
            raise InvalidInput(f"{where}: name {str(name)[:70]!r} must be lower case letters, digits, '.', '_' "
                               "or '-'", field="rules")
        where = f"rule {index} ({name})"
        if name in names:
            raise InvalidInput(f"{where}: the name is used by an earlier rule", field="rules")
        names.add(name)
        description = item.get("description", "")
        if not isinstance(description, str) or len(description) > 500:
            raise InvalidInput(f"{where}: description must be text (at most 500 characters)", field="rules")
        rules.append(Rule(name=name, when=item.get("when"), expression=compile_expression(item.get("when"), where),
                          os=_os(item.get("os"), where, known), tags=_tags(item.get("tags"), where),
                          root_device=_root_device(item.get("root_device"), where), description=description))
    default = doc.get("default")
    default = {} if default is None else default
    if not isinstance(default, Mapping):
        raise InvalidInput("`default` must be a mapping (os, tags, root_device)", field="rules")
    _unknown(default, DEFAULT_KEYS, "default")
    return RuleSet(rules=tuple(rules), default_os=_os(default.get("os"), "default", known),
                   default_tags=_tags(default.get("tags"), "default"),
                   default_root_device=_root_device(default.get("root_device"), "default"))


def to_yaml(ruleset: RuleSet) -> str:
    return yaml.safe_dump(ruleset.as_dict(), sort_keys=False, default_flow_style=None, width=110)


# --- a node's facts ---

def _int(value) -> int | None:
    return value if isinstance(value, int) and not isinstance(value, bool) else None


def facts(*, name: str, state: str = "", os: str | None = None, admin: bool = False,
          inventory: Mapping | None = None, hints: Mapping | None = None, roles: Iterable[str] = (),
          deployments: Iterable[str] = ()) -> dict:
    """The document a condition is evaluated against (see the module's docstring)."""
    inventory = dict(inventory or {})
    hints = dict(hints or {})
    crowbar_hints = hints.get("crowbar") if isinstance(hints.get("crowbar"), Mapping) else {}
    tags = crowbar_hints.get("tags") if isinstance(crowbar_hints.get("tags"), list) else []
    memory = _int((inventory.get("memory") or {}).get("total_bytes")) if isinstance(inventory.get("memory"),
                                                                                      Mapping) else None
    cpus = _int((inventory.get("cpu") or {}).get("count")) if isinstance(inventory.get("cpu"), Mapping) else None
    disks = inventory.get("disks") if isinstance(inventory.get("disks"), list) else []
    sizes = sorted((_int(d.get("size_bytes")) or 0) // GIB for d in disks
                   if isinstance(d, Mapping) and not d.get("removable"))
    return {"name": name, "state": state, "os": os, "admin": admin, "inventory": inventory, "hints": hints,
            "tags": [t for t in tags if isinstance(t, str)], "roles": sorted(set(roles)),
            "deployments": sorted(set(deployments)),
            "memory_gib": None if memory is None else memory // GIB, "cpus": cpus,
            "firmware": inventory.get("firmware"), "disks_gib": sizes[::-1]}


# --- evaluation ---

def truthy(value) -> bool:
    """JMESPath's truth: false, null, "", [] and {} are false; everything else (0 too) is true."""
    return not (value is None or value is False or value in ("", [], {}))


def _short(value, limit: int = 120) -> str:
    text = json.dumps(value, sort_keys=True, default=str)
    return text if len(text) <= limit else text[:limit - 3] + "..."


def _text(node: Mapping) -> str:
    """An expression's AST back to (approximately) its text, for explanations."""
    kind, children, value = node.get("type"), node.get("children") or [], node.get("value")
    if kind == "field":
        return str(value)
    if kind == "literal":
        return f"`{json.dumps(value)}`"
    if kind == "current" or kind == "identity":
        return "@"
    if kind == "subexpression":
        return ".".join(_text(c) for c in children)
    if kind == "index_expression":
        return "".join(_text(c) for c in children)
    if kind == "index":
        return f"[{value}]"
    if kind == "function_expression":
        return f"{value}({', '.join(_text(c) for c in children)})"
    if kind == "comparator":
        return f"{_text(children[0])} {OPERATORS.get(value, value)} {_text(children[1])}"
    if kind == "pipe":
        return " | ".join(_text(c) for c in children)
    if kind == "not_expression":
        return f"!{_text(children[0])}"
    if kind in ("and_expression", "or_expression"):
        joiner = " && " if kind == "and_expression" else " || "
        return "(" + joiner.join(_text(c) for c in children) + ")"
    return f"<{kind}>"


def _why(node: Mapping, data: dict, interpreter, out: list[str]) -> None:
    """The values of a condition's parts: each comparison's sides, each function call, each field
    tested for truth, under the and/or/not that combine them."""
    kind, children = node.get("type"), node.get("children") or []
    if kind in ("and_expression", "or_expression", "not_expression"):
        for child in children:
            _why(child, data, interpreter, out)
        return
    try:
        if kind == "comparator":
            left, right = (interpreter.visit(c, data) for c in children)
            result = interpreter.visit(node, data)
            shown = [f"{_text(c)} = {_short(v)}" for c, v in ((children[0], left), (children[1], right))
                     if c.get("type") != "literal"]
            out.append(f"{_text(node)}: {'true' if truthy(result) else 'false'}"
                       + (f" ({'; '.join(shown)})" if shown else ""))
        else:
            result = interpreter.visit(node, data)
            out.append(f"{_text(node)} = {_short(result)}")
    except jp_errors.JMESPathError as exc:
        out.append(f"{_text(node)}: error: {str(exc).strip().splitlines()[0]}")


def verdict(rule: Rule, data: dict) -> dict:
    """One rule's verdict on a node: matched or not, the condition's value, and why."""
    interpreter = visitor.TreeInterpreter(jmespath.Options())
    out = {"rule": rule.name, "when": rule.when, "matched": False, "value": None, "why": [], "error": None}
    try:
        value = rule.expression.search(data)
    except jp_errors.JMESPathError as exc:
        out["error"] = str(exc).strip().splitlines()[0]
        out["why"] = [f"the condition failed: {out['error']}"]
        return out
    out["matched"] = truthy(value)
    out["value"] = value if len(json.dumps(value, default=str)) <= 500 else _short(value, 500)
    _why(rule.expression.parsed, data, interpreter, out["why"])
    return out


def evaluate(ruleset: RuleSet, data: dict, explain: bool = False) -> Choice:
    """The node's choice: the first rule whose condition holds, else the default. With `explain`,
    every rule is evaluated and its verdict kept (`chosen` on the one that decided)."""
    verdicts: list[dict] = []
    chosen: Rule | None = None
    for rule in ruleset.rules:
        if chosen is not None and not explain:
            break
        result = verdict(rule, data)
        if result["matched"] and chosen is None:
            chosen = rule
            result["chosen"] = True
        elif result["matched"]:
            result["chosen"] = False
            result["why"].append(f"matches, but rule {chosen.name!r} came first")
        else:
            result["chosen"] = False
        verdicts.append(result)
    own = tuple(t for t in data.get("tags") or [] if isinstance(t, str))
    if chosen is None:
        return Choice(rule=None, os=ruleset.default_os, root_device=ruleset.default_root_device,
                      tags=tuple(dict.fromkeys(own + ruleset.default_tags)), verdicts=verdicts)
    return Choice(rule=chosen.name, os=chosen.os or ruleset.default_os,
                  root_device=chosen.root_device if chosen.root_device is not None else ruleset.default_root_device,
                  tags=tuple(dict.fromkeys(own + (chosen.tags or ruleset.default_tags))), verdicts=verdicts)

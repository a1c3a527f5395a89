"""YAML for barclamp.yml: safe_load, minus what a hostile author could use against the server.

Checked while the document is composed (before anything is constructed or expanded):
- aliases are allowed (`&defaults` / `*defaults`, merge keys `<<: *defaults`), but the document
  as it would be with every alias expanded must stay within MAX_YAML_EXPANDED (one unit per value
  plus one per character), so an alias bomb is refused after reading only its few lines; an alias
  inside the node it names (a recursive document) is refused;
- collections nest at most MAX_YAML_DEPTH deep;
- mapping keys are plain strings (`1:`, `yes:`, `~:` or `[a]:` are refused: quote them), each once
  per mapping (PyYAML would silently keep the last);
- text holds no NUL and no lone surrogate (neither can be stored).
Constructed values are JSON's: strings, finite numbers, booleans, null, lists and string-keyed
mappings. A date stays a string; `!!binary`, `!!set`, `!!omap`, `!!pairs` and `!!timestamp` are
refused, as are NaN and infinities.

Every refusal is a yaml.MarkedYAMLError (ComposerError or ConstructorError) carrying the line.
"""

from __future__ import annotations

import math

import yaml
from yaml.composer import Composer, ComposerError
from yaml.constructor import ConstructorError, SafeConstructor
from yaml.parser import Parser
from yaml.reader import Reader
from yaml.resolver import Resolver
from yaml.scanner import Scanner

from crowbar.barclamps.limits import MAX_YAML_DEPTH, MAX_YAML_EXPANDED

STR = "tag:yaml.org,2002:str"
MERGE = "tag:yaml.org,2002:merge"
REFUSED_TAGS = ("binary", "set", "omap", "pairs", "timestamp")


def _printable(text: str) -> str:
    return text if len(text) <= 40 else text[:37] + "..."


class PyParser(Reader, Scanner, Parser):
    """PyYAML's own reader, scanner and parser (what yaml.SafeLoader uses)."""

    def __init__(self, stream):
        Reader.__init__(self, stream)
        Scanner.__init__(self)
        Parser.__init__(self)


class _Strict(Composer, SafeConstructor, Resolver):
    """The checks, over the events of a parser (PARSER, the other base of the loader classes below)."""

    PARSER: type = PyParser
    # No implicit timestamps: `2024-01-01` is the string it looks like (JSON has no dates).
    yaml_implicit_resolvers = {
        first: [(tag, regexp) for tag, regexp in resolvers if tag != "tag:yaml.org,2002:timestamp"]
        for first, resolvers in yaml.SafeLoader.yaml_implicit_resolvers.items()
    }

    def __init__(self, stream):
        self.PARSER.__init__(self, stream)
        Composer.__init__(self)
        SafeConstructor.__init__(self)
        Resolver.__init__(self)
        self._depth = 0
        self._weight: dict[yaml.Node, int] = {}

    # -- composing: sizes, depth, keys, text ----------------------------------------------------
    def compose_node(self, parent, index):
        if self.check_event(yaml.AliasEvent):
            event = self.peek_event()
            target = self.anchors.get(event.anchor)
            if target is not None and target not in self._weight:
                raise ComposerError(None, None, f"alias *{event.anchor} is used inside the node it names",
                                    event.start_mark)
            return super().compose_node(parent, index)  # its weight is known: it is complete
        self._depth += 1
        try:
            if self._depth > MAX_YAML_DEPTH:
                raise ComposerError(None, None, f"collections nested deeper than {MAX_YAML_DEPTH} levels",
                                    self.peek_event().start_mark)
            node = super().compose_node(parent, index)
        finally:
            self._depth -= 1
        self._weigh(node)
        return node

    def _weigh(self, node: yaml.Node) -> None:
        if isinstance(node, yaml.ScalarNode):
            self._check_text(node.value, node)
            weight = 1 + len(node.value)
        elif isinstance(node, yaml.SequenceNode):
            weight = 1 + sum(self._weight[child] for child in node.value)
        else:
            self._check_keys(node)
            weight = 1 + sum(self._weight[k] + self._weight[v] for k, v in node.value)
        if weight > MAX_YAML_EXPANDED:
            raise ComposerError(None, None, f"the document would expand to more than {MAX_YAML_EXPANDED:,} values "
                                "and characters (aliases count what they repeat)", node.start_mark)
        self._weight[node] = weight

    @staticmethod
    def _check_text(text: str, node: yaml.Node) -> None:
        if "\0" in text:
            raise ComposerError(None, None, "text may not contain NUL characters", node.start_mark)
        try:
            text.encode("utf-8")
        except UnicodeEncodeError:
            raise ComposerError(None, None, "text may not contain lone surrogates", node.start_mark) from None

    @staticmethod
    def _check_keys(node: yaml.MappingNode) -> None:
        first: dict[str, int] = {}
        for key, _value in node.value:
            if key.tag == MERGE:
                continue
            if not isinstance(key, yaml.ScalarNode):
                raise ComposerError(None, None, f"a mapping key is a {key.id}, not a string", key.start_mark)
            if key.tag != STR:
                raise ComposerError(None, None, f"mapping key {_printable(key.value)!r} is not a string (quote it)",
                                    key.start_mark)
            if key.value in first:
                raise ComposerError(None, None, f"duplicate key {_printable(key.value)!r} "
                                    f"(first at line {first[key.value]})", key.start_mark)
            first[key.value] = key.start_mark.line + 1

    # -- constructing: JSON's values only ------------------------------------------------------
    def construct_yaml_int(self, node):
        try:
            return super().construct_yaml_int(node)
        except ValueError:
            raise ConstructorError(None, None, f"integer {_printable(node.value)!r} is too large", node.start_mark) \
                from None

    def construct_yaml_float(self, node):
        value = super().construct_yaml_float(node)
        if not math.isfinite(value):
            raise ConstructorError(None, None, f"{_printable(node.value)!r}: NaN and infinities are not allowed",
                                   node.start_mark)
        return value

    def refuse_tag(self, node):
        raise ConstructorError(None, None, f"the YAML type {node.tag.rsplit(':', 1)[-1]!r} is not allowed "
                               "(only strings, numbers, booleans, null, lists and mappings)", node.start_mark)


for _tag in REFUSED_TAGS:
    _Strict.add_constructor(f"tag:yaml.org,2002:{_tag}", _Strict.refuse_tag)
_Strict.add_constructor("tag:yaml.org,2002:int", _Strict.construct_yaml_int)
_Strict.add_constructor("tag:yaml.org,2002:float", _Strict.construct_yaml_float)


class PyStrictLoader(_Strict, PyParser):
    PARSER = PyParser


try:  # libyaml scans and parses five times faster; composing stays in Python, where it is checked
    from yaml.cyaml import CParser

    class StrictLoader(_Strict, CParser):
        PARSER = CParser
except ImportError:  # pragma: no cover - PyYAML built without libyaml
    StrictLoader = PyStrictLoader


def load(text: str, loader_class: type = StrictLoader):
    """The one document in `text`; yaml.YAMLError (mostly MarkedYAMLError, with a line) if it breaks
    YAML's rules or the ones above."""
    loader = loader_class(text)
    try:
        return loader.get_single_data()
    finally:
        loader.dispose()


def describe(exc: yaml.YAMLError) -> str:
    """One line for an error: where and what, without quoting the document (no snippet)."""
    if isinstance(exc, yaml.MarkedYAMLError):
        mark = exc.problem_mark or exc.context_mark
        where = f" at line {mark.line + 1}, column {mark.column + 1}" if mark else ""
        what = exc.problem or exc.context or "invalid"
        context = f" ({exc.context})" if exc.context and exc.problem else ""
        return f"invalid YAML{where}: {what}{context}"
    first = str(exc).strip().splitlines()
    return f"invalid YAML: {first[0] if first else type(exc).__name__}"

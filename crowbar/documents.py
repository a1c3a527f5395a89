"""JSON documents addressed by slash paths ("crowbar/ssh/address"): read, place, deep-merge.

Pure, at the bottom of the layers so that everyone may use it: the attribute layers
(crowbar/engine/attribs.py) are built from these, and jigs read the documents a run hands them and
combine the walls they return with them.

Also a document's version as HTTP shows it (`etag`, `check_if_match`: ETag and If-Match), and
the one rule for what may be stored as JSON at all (`check_strict`): the HTTP edge applies it
to every request body, and services to JSON they make from text (YAML templates, CLI values).
"""

from __future__ import annotations

import copy
import hashlib
import json
import math
import re

from crowbar.errors import InvalidInput, PreconditionFailed

MISSING = object()  # what `dig` answers for a path that is not there (None may be a value)


def dig(doc: dict, path: str, default=MISSING):
    """The value at `path` in `doc`, or `default` when some part of the path is not there."""
    cur = doc
    for part in path.strip("/").split("/"):
        if not isinstance(cur, dict) or part not in cur:
            return default
        cur = cur[part]
    return cur


def put(doc: dict, path: str, value) -> dict:
    """Place a copy of `value` at `path` (replacing what was there), making the objects on the way."""
    parts = path.strip("/").split("/")
    cur = doc
    for part in parts[:-1]:
        nxt = cur.get(part)
        if not isinstance(nxt, dict):
            nxt = cur[part] = {}
        cur = nxt
    cur[parts[-1]] = copy.deepcopy(value)
    return doc


def merge(base: dict, top: dict) -> dict:
    """Deep-merge `top` into `base` (in place): dicts merge, anything else replaces."""
    for key, value in (top or {}).items():
        if isinstance(value, dict) and isinstance(base.get(key), dict):
            merge(base[key], value)
        else:
            base[key] = copy.deepcopy(value)
    return base


# -- strict JSON ----------------------------------------------------------------------------------
MAX_DEPTH = 64  # objects and arrays nested deeper than this are refused
_BAD_CHAR = re.compile("[\x00\ud800-\udfff]")  # NUL (PostgreSQL cannot store it), lone surrogates


def strict_problem(value, field: str = "body", max_depth: int = MAX_DEPTH) -> tuple[str, str] | None:
    """Why `value` is not a strict JSON document, as (field, reason), or None when it is one.

    Strict JSON is what every engine stores and every client reads back alike: objects with string
    keys, arrays, strings, finite numbers, true, false, null; no NaN or Infinity (not JSON: Python
    writes them, PostgreSQL and browsers refuse them), no lone UTF-16 surrogates and no NUL in any
    string or key (not encodable as UTF-8; PostgreSQL refuses NUL), and at most `max_depth` levels
    of objects and arrays. YAML adds dates, non-string keys and the like: refused too."""
    stack = [(value, 0, field)]
    while stack:
        item, depth, where = stack.pop()
        if isinstance(item, str):
            if _BAD_CHAR.search(item):
                return where, _bad_char_reason(item)
        elif isinstance(item, bool) or item is None or isinstance(item, int):
            continue
        elif isinstance(item, float):
            if not math.isfinite(item):
                return where, f"{item!r} is not a JSON number (NaN and Infinity are refused)"
        elif isinstance(item, (dict, list)):
            if depth >= max_depth:
                return where, f"nested deeper than {max_depth} levels"
            if isinstance(item, dict):
                for key, child in item.items():
                    if not isinstance(key, str):
                        return where, f"key {key!r} is not a string"
                    if _BAD_CHAR.search(key):
                        return where, f"a key: {_bad_char_reason(key)}"
                    stack.append((child, depth + 1, f"{where}.{_short(key)}"))
            else:
                stack.extend((child, depth + 1, f"{where}[{i}]") for i, child in enumerate(item))
        else:
            return where, f"a {type(item).__name__} is not a JSON value"
    return None


def _short(key: str) -> str:
    return key if len(key) <= 40 else key[:40] + "..."


def _bad_char_reason(text: str) -> str:
    return ("contains a NUL character" if "\x00" in text
            else "contains a lone UTF-16 surrogate (not a Unicode character)")


def check_strict(value, field: str = "body", what: str = "the value", max_depth: int = MAX_DEPTH):
    """`value` itself when it is strict JSON (`strict_problem`), else InvalidInput naming where."""
    problem = strict_problem(value, field, max_depth)
    if problem is not None:
        where, reason = problem
        # The field is the top-level member the problem is in ("files" for body.files.x), as a
        # validation error names it; the message has the whole path.
        member = where.removeprefix(f"{field}.").split(".", 1)[0].split("[", 1)[0]
        top = member if where.startswith(f"{field}.") and member else field
        raise InvalidInput(f"{what} is not strict JSON at {where}: {reason}", field=top)
    return value


def _constant(name: str):
    raise ValueError(f"{name} is not a JSON number")


def _finite(text: str) -> float:
    value = float(text)
    if not math.isfinite(value):  # 1e400 reads as inf
        raise ValueError(f"{text[:40]} is out of range for a JSON number")
    return value


def loads_strict(text: str, field: str = "body", what: str = "the value"):
    """The strict JSON document `text` holds, or InvalidInput saying what is wrong with it."""
    try:
        value = json.loads(text, parse_constant=_constant, parse_float=_finite)
    except RecursionError:
        raise InvalidInput(f"{what} is nested too deeply", field=field) from None
    except ValueError as exc:  # JSONDecodeError, NaN, 1e400, an integer of more than 4,300 digits
        raise InvalidInput(f"{what} is not JSON: {exc}", field=field) from None
    return check_strict(value, field=field, what=what)


# -- versions: ETag and If-Match ------------------------------------------------------------------
def etag(document) -> str:
    """A strong HTTP entity tag for a JSON document: a digest of its canonical form (sorted keys),
    so it changes exactly when what a GET shows changes, whoever changed it, without a version
    column to keep up to date."""
    canonical = json.dumps(document, sort_keys=True, separators=(",", ":"), ensure_ascii=False, default=str)
    return '"' + hashlib.sha256(canonical.encode("utf-8", "surrogatepass")).hexdigest()[:32] + '"'


def if_match_ok(if_match: str | None, current: str) -> bool:
    """Whether an If-Match header lets a write go ahead on a document whose ETag is `current`:
    no header, `*`, or one of its comma-separated tags equal to it (strong comparison: a weak
    `W/` tag never matches; a tag given without its quotes is read as quoted)."""
    if if_match is None:
        return True
    for tag in (t.strip() for t in if_match.split(",")):
        if tag == "*" or tag == current or (tag and not tag.startswith(("W/", '"')) and f'"{tag}"' == current):
            return True
    return False


def check_if_match(if_match: str | None, document, what: str) -> None:
    """PreconditionFailed (412) unless `if_match` matches `document`'s ETag: `what` (e.g. "node
    'n1'") was changed since the caller read it. The caller holds the row locked (or the database's
    only write lock), so nobody changes it between this check and the write."""
    current = etag(document)
    if not if_match_ok(if_match, current):
        raise PreconditionFailed(f"{what} was changed by someone else since it was read (If-Match {if_match[:80]} "
                                 f"is not its current ETag {current}): read it again and redo the change",
                                 etag=current)

"""JSON documents addressed by slash paths ("crowbar/ssh/address"): read, place, deep-merge.

Pure, at the bottom of the layers so that everyone may use it: the attribute layers
(crowbar/engine/attribs.py) are built from these, and jigs read the documents a run hands them and
combine the walls they return with them.
"""

from __future__ import annotations

import copy

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

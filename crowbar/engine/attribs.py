"""Attribute documents: slash paths into JSON, deep merges, and the merged document a run receives.

The merge order (lowest priority first) is documented in docs/attributes.md; `RunDocuments` builds
the documents for a whole batch of noderoles with a fixed number of queries, whatever the batch size.
"""

from __future__ import annotations

import copy
from collections import defaultdict
from collections.abc import Sequence

from sqlalchemy import select
from sqlalchemy.orm import Session

from crowbar.db.models import Attrib, DeploymentRole, Node, NodeRole, NodeRoleEdge, Role
from crowbar.engine.graph import chunks

MISSING = object()


def dig(doc: dict, path: str, default=MISSING):
    cur = doc
    for part in path.strip("/").split("/"):
        if not isinstance(cur, dict) or part not in cur:
            return default
        cur = cur[part]
    return cur


def put(doc: dict, path: str, value) -> dict:
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


def node_attrs(node: Node) -> dict:
    """What the node says about itself (discovery), overlaid with what people told us (hints)."""
    return merge(merge({}, node.discovery or {}), node.hints or {})


def noderole_value(attrib: Attrib, nr: NodeRole, role: Role, dr_committed: dict | None,
                   node_hints: dict | None = None, default=None):
    """An attrib's value as seen on one noderole:
    wall > its node's hints > committed > deployment role > template > the attrib's default.

    `default` is returned when the attrib has no default either (pass MISSING to tell "unset").
    """
    for doc in (nr.wall, node_hints, nr.committed, dr_committed or {}, role.template):
        value = dig(doc or {}, attrib.map)
        if value is not MISSING:
            return value
    return attrib.default if attrib.default is not None else default


class RunDocuments:
    """Builds merged attribute documents for many noderoles with batched queries and cached roles."""

    def __init__(self, session: Session):
        self.session = session
        self.roles = {r.id: r for r in session.scalars(select(Role))}
        self.attribs = {a.name: a for a in session.scalars(select(Attrib))}
        self.role_attribs: dict[int, list[Attrib]] = defaultdict(list)
        for a in self.attribs.values():
            if a.role_id is not None:
                self.role_attribs[a.role_id].append(a)

    def build(self, noderoles: Sequence[NodeRole], nodes: dict[int, Node]) -> dict[int, dict]:
        dr = self._deployment_role_data({(nr.deployment_id, nr.role_id) for nr in noderoles})
        wanted = self.wanted_from_ancestors([nr for nr in noderoles if self.roles[nr.role_id].wants_attribs])
        docs = {}
        for nr in noderoles:
            role = self.roles[nr.role_id]
            doc: dict = {}
            for a in self.role_attribs[role.id]:
                if a.default is not None:
                    put(doc, a.map, a.default)
            merge(doc, role.template or {})
            merge(doc, dr.get((nr.deployment_id, nr.role_id), {}))
            merge(doc, nr.committed or {})
            on_node = node_attrs(nodes[nr.node_id])
            for a in self._relevant_attribs(role):
                value = dig(on_node, a.map)
                if value is not MISSING:
                    put(doc, a.map, value)
            for name, value in wanted.get(nr.id, {}).items():
                put(doc, self.attribs[name].map, value)
            docs[nr.id] = doc
        return docs

    def _relevant_attribs(self, role: Role) -> list[Attrib]:
        own = list(self.role_attribs[role.id])
        own += [self.attribs[n] for n in role.wants_attribs or [] if n in self.attribs]
        return own

    def _deployment_role_data(self, keys: set[tuple[int, int]]) -> dict[tuple[int, int], dict]:
        if not keys:
            return {}
        dep_ids = sorted({k[0] for k in keys})
        out = {}
        for part in chunks(dep_ids):
            for d, r, committed in self.session.execute(
                select(DeploymentRole.deployment_id, DeploymentRole.role_id, DeploymentRole.committed)
                .where(DeploymentRole.deployment_id.in_(part))
            ):
                if (d, r) in keys:
                    out[(d, r)] = committed or {}
        return out

    def wanted_from_ancestors(self, noderoles: Sequence[NodeRole]) -> dict[int, dict]:
        """For each noderole, the values of the attribs it wants, from its nearest ancestor owning each."""
        if not noderoles:
            return {}
        # Walk up the graph breadth-first, one query per level for the whole batch.
        levels: dict[int, list[list[int]]] = {nr.id: [] for nr in noderoles}
        frontier = {nr.id: [nr.id] for nr in noderoles}
        seen_rows: dict[int, NodeRole] = {}
        depth = 0
        while frontier and depth < 64:
            ids = sorted({i for group in frontier.values() for i in group})
            parents_of: dict[int, list[int]] = defaultdict(list)
            for part in chunks(ids):
                for parent_id, child_id in self.session.execute(
                    select(NodeRoleEdge.parent_id, NodeRoleEdge.child_id).where(NodeRoleEdge.child_id.in_(part))
                ):
                    parents_of[child_id].append(parent_id)
            nxt = {}
            for origin, group in frontier.items():
                ups = sorted({p for c in group for p in parents_of.get(c, [])})
                if ups:
                    levels[origin].append(ups)
                    nxt[origin] = ups
            frontier, depth = nxt, depth + 1
        needed = sorted({i for lv in levels.values() for ids in lv for i in ids})
        for part in chunks(needed):
            for row in self.session.scalars(select(NodeRole).where(NodeRole.id.in_(part))):
                seen_rows[row.id] = row
        dr = self._deployment_role_data({(r.deployment_id, r.role_id) for r in seen_rows.values()})
        hints = dict(self.session.execute(select(Node.id, Node.hints).where(
            Node.id.in_({r.node_id for r in seen_rows.values()}))).all()) if seen_rows else {}
        out: dict[int, dict] = {}
        for nr in noderoles:
            values = {}
            for name in self.roles[nr.role_id].wants_attribs:
                attrib = self.attribs.get(name)
                if attrib is None or attrib.role_id is None:
                    continue
                for level in levels[nr.id]:
                    owner = next((seen_rows[i] for i in level if seen_rows[i].role_id == attrib.role_id), None)
                    if owner is not None:
                        value = noderole_value(attrib, owner, self.roles[owner.role_id],
                                               dr.get((owner.deployment_id, owner.role_id)),
                                               hints.get(owner.node_id), default=MISSING)
                        if value is not MISSING:  # a parent with no value leaves the child's own alone
                            values[name] = value
                        break
            out[nr.id] = values
        return out

"""Attribute precedence, in one place: which source of a value wins, for each reader, and the merged
document a run receives.

An attrib's value can come from several sources (layers); PRECEDENCE says, for each reader (a view),
which sources it consults and in which order (lowest priority first). `compose` builds a whole
document from that order, `pick` finds one value by it; every reader goes through one of them:
the annealer (RUN, NODE), the parents' values children want (OFFERED) and `crowbar attribs get`
(SHOWN). docs/attributes.md explains the order (a test holds it to this table). `RunDocuments` builds
the documents for a whole batch of noderoles with a fixed number of queries, whatever the batch size.
"""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Mapping, Sequence

from sqlalchemy import select
from sqlalchemy.orm import Session, defer

from crowbar.db.models import Attrib, DeploymentRole, Node, NodeRole, NodeRoleEdge, Role
from crowbar.db.sql import among, chunks, is_postgresql
from crowbar.documents import MISSING, dig, merge, put

# The sources of a value (layers); these names are also the `source` `crowbar attribs get` reports.
DEFAULT = "default"                  # the attrib's default (barclamp.yml)
TEMPLATE = "template"                # the role's template
DEPLOYMENT_ROLE = "deployment_role"  # the deployment role's committed data
NODEROLE = "noderole"                # the noderole's committed data
DISCOVERY = "discovery"              # what the node reported about itself
HINT = "hint"                        # what a person set on the node (`crowbar attribs set NAME V --node N`)
NODE = "node"                        # the node's own document: the NODE view of discovery and hints
WALL = "wall"                        # what the noderole's last successful run returned
PARENT = "parent"                    # a wanted attrib's value on the nearest ancestor noderole owning it

# The readers (views), and the order in which the sources count for each: LOWEST PRIORITY FIRST.
RUN = "run"            # the document a run receives (RunDocuments)
OFFERED = "offered"    # the value a noderole offers the children that want its attrib
SHOWN = "shown"        # what `crowbar attribs get NAME --node N` shows
PRECEDENCE: dict[str, tuple[str, ...]] = {
    NODE: (DISCOVERY, HINT),
    RUN: (DEFAULT, TEMPLATE, DEPLOYMENT_ROLE, NODEROLE, NODE, PARENT),
    OFFERED: (DEFAULT, TEMPLATE, DEPLOYMENT_ROLE, NODEROLE, HINT, WALL),
    # The owner's layers (template .. wall) and PARENT never meet: a node either has a noderole that
    # owns the attrib, or one that wants it from its parents.
    SHOWN: (DEFAULT, PARENT, TEMPLATE, DEPLOYMENT_ROLE, NODEROLE, WALL, DISCOVERY, HINT),
}


def compose(view: str, docs: Mapping[str, dict | None],
            placed: Mapping[str, Sequence[tuple[str, object]]] | None = None) -> dict:
    """The document `view` sees: its layers applied lowest first onto an empty document. A layer in
    `docs` deep-merges over what is there; a layer in `placed`, (path, value) pairs, places each value
    at its path, replacing what was there. Layers given in neither are skipped."""
    doc: dict = {}
    for layer in PRECEDENCE[view]:
        merge(doc, docs.get(layer) or {})
        for path, value in (placed or {}).get(layer, ()):
            put(doc, path, value)
    return doc


def pick(view: str, docs: Mapping[str, dict | None], path: str) -> tuple[str | None, object]:
    """(layer, value): the value at `path` from the highest layer of `view` in `docs` that has it;
    (None, MISSING) if none has."""
    for layer in reversed(PRECEDENCE[view]):
        if layer in docs:
            value = dig(docs[layer] or {}, path)
            if value is not MISSING:
                return layer, value
    return None, MISSING


def node_attrs(node: Node) -> dict:
    """What the node says about itself (discovery), overlaid with what people told us (hints)."""
    return compose(NODE, {DISCOVERY: node.discovery, HINT: node.hints})


def offered_layers(attrib: Attrib, nr: NodeRole, role: Role, dr_committed: dict | None,
                   node_hints: dict | None = None) -> dict[str, dict | None]:
    """The sources of the OFFERED view for one noderole."""
    docs = {WALL: nr.wall, HINT: node_hints, NODEROLE: nr.committed, DEPLOYMENT_ROLE: dr_committed,
            TEMPLATE: role.template}
    if attrib.default is not None:
        docs[DEFAULT] = put({}, attrib.map, attrib.default)
    return docs


def noderole_value(attrib: Attrib, nr: NodeRole, role: Role, dr_committed: dict | None,
                   node_hints: dict | None = None, default=None):
    """An attrib's value as one noderole offers it (the OFFERED view); `default` when no layer has
    one, not even the attrib's default (pass MISSING to tell "unset")."""
    _layer, value = pick(OFFERED, offered_layers(attrib, nr, role, dr_committed, node_hints), attrib.map)
    return default if value is MISSING else value


class RunDocuments:
    """Builds merged attribute documents for many noderoles with batched queries and cached roles."""

    def __init__(self, session: Session):
        self.session, self.pg = session, is_postgresql(session)
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
            on_node = node_attrs(nodes[nr.node_id])
            node_values = [(a.map, value) for a in self._relevant_attribs(role)
                           if (value := dig(on_node, a.map)) is not MISSING]
            docs[nr.id] = compose(RUN, {
                TEMPLATE: role.template,
                DEPLOYMENT_ROLE: dr.get((nr.deployment_id, nr.role_id)),
                NODEROLE: nr.committed,
            }, {
                DEFAULT: [(a.map, a.default) for a in self.role_attribs[role.id] if a.default is not None],
                NODE: node_values,
                PARENT: [(self.attribs[name].map, value) for name, value in wanted.get(nr.id, {}).items()],
            })
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
                .where(among(DeploymentRole.deployment_id, part, self.pg))
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
                    select(NodeRoleEdge.parent_id, NodeRoleEdge.child_id).where(among(NodeRoleEdge.child_id, part, self.pg))
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
            for row in self.session.scalars(select(NodeRole).options(defer(NodeRole.proposed)).where(among(NodeRole.id, part, self.pg))):
                seen_rows[row.id] = row
        dr = self._deployment_role_data({(r.deployment_id, r.role_id) for r in seen_rows.values()})
        hints = dict(self.session.execute(select(Node.id, Node.hints).where(
            among(Node.id, {r.node_id for r in seen_rows.values()}, self.pg))).all()) if seen_rows else {}
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

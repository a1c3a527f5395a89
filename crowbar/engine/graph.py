"""The noderole graph: binding roles to nodes, committing, and rippling state along edges.

Binding walks the requirements object by object (it is recursive), but reads and writes in sets:
what the nodes hold is read in one query per chunk of nodes, the new noderoles are inserted together,
their edges and events in one statement each, so binding a role to 500 nodes costs a few statements
per chunk, not several per noderole. Everything that moves state along edges is set-based SQL, so
that committing 50,000 noderoles or failing the root of a large tree costs a handful of statements.

Several servers on one PostgreSQL (READ COMMITTED) each apply runs and commit in transactions of
their own. A child's move out of `blocked` depends on rows another transaction may be changing
(its parents), so whoever decides it holds a lock first: an apply holds the blocked children of
its newly active parents (`unblock_children`), a commit or retry the parents that are not active
yet (`hold_parents`). Of two that race, the second waits for the first and then sees its change.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Protocol

from sqlalchemy import bindparam, delete, insert, select, text
from sqlalchemy.orm import Session, load_only

from crowbar.db.models import (
    Deployment,
    DeploymentRole,
    NodeRole,
    NodeRoleEdge,
    Role,
    utcnow,
)
from crowbar.db.events import record, record_changes
from crowbar.db.sql import among, chunks, ids_where, is_postgresql
from crowbar.engine import states
from crowbar.engine.states import State
from crowbar.errors import Conflict, InvalidInput, NotFound

# The columns binding needs; skips decoding the JSON blobs of every noderole it looks at.
LIGHT = (NodeRole.id, NodeRole.node_id, NodeRole.role_id, NodeRole.deployment_id, NodeRole.state, NodeRole.cohort)
def set_states(session: Session, changes: dict[str, list[tuple[int, str]]], actor: str, action: str,
               message: str = "") -> None:
    """Move noderoles to new states in bulk: {to_state: [(id, from_state), ...]}, with events (in
    the same statement on PostgreSQL: db.events.record_changes). A move the state rules do not
    allow raises IllegalTransition (checked once per distinct from-state)."""
    now, pg = utcnow(), is_postgresql(session)
    for to_state, pairs in changes.items():
        by_from: dict[str, list[int]] = {}
        for nr_id, src in pairs:
            by_from.setdefault(src, []).append(nr_id)
        for src, ids in by_from.items():
            states.check(src, to_state)
            for part in chunks(ids):
                where, params = ids_where(part, pg)
                record_changes(session, f"UPDATE node_roles SET state = :to, updated_at = :now WHERE {where} "
                                        "RETURNING id, state", params | {"to": to_state, "now": now},
                               {"object_type": "noderole", "action": action, "from_state": src, "actor": actor,
                                "message": message, "at": now})


def parents_all_active_sql(alias: str = "c") -> str:
    return (f"NOT EXISTS (SELECT 1 FROM node_role_edges pe JOIN node_roles p ON p.id = pe.parent_id "
            f"WHERE pe.child_id = {alias}.id AND p.state <> 'active')")


def descendants(session: Session, ids: Sequence[int]) -> list[int]:
    """Every transitive child of the given noderoles (recursive CTE; works on SQLite and PostgreSQL)."""
    found: set[int] = set()
    stmt = text(
        "WITH RECURSIVE d(id) AS ("
        " SELECT child_id FROM node_role_edges WHERE parent_id IN :ids"
        " UNION SELECT e.child_id FROM node_role_edges e JOIN d ON e.parent_id = d.id"
        ") SELECT id FROM d"
    ).bindparams(bindparam("ids", expanding=True))
    for part in chunks(ids):
        found.update(session.scalars(stmt, {"ids": part}))
    return sorted(found)


def block_descendants(session: Session, ids: Sequence[int], actor: str, why: str) -> int:
    """An error or a re-run upstream: every descendant that is not proposed or running becomes blocked
    (todo, active, and error too: it runs again once its ancestors are active)."""
    below, pg = descendants(session, ids), is_postgresql(session)
    pairs: list[tuple[int, str]] = []
    for part in chunks(below):
        pairs += session.execute(
            select(NodeRole.id, NodeRole.state).where(
                among(NodeRole.id, part, pg), NodeRole.state.in_([State.TODO.value, State.ACTIVE.value, State.ERROR.value])
            )
        ).all()
    set_states(session, {State.BLOCKED.value: [(i, s) for i, s in pairs]}, actor, "block", why)
    return len(pairs)


def unblock_children(session: Session, parent_ids: Sequence[int], actor: str) -> list[int]:
    """Children of newly active noderoles whose parents are now all active go blocked -> todo.

    Three set-based reads per chunk that only follow ids (these parents' edges; those children by
    primary key; their parents' edges and states), with every test on state made here: the cost
    follows the batch, not the graph. One query with `c.state = 'blocked'` in SQL let the planner
    start from the state index whenever it misjudged how many noderoles are blocked (SQLite has no
    statistics; PostgreSQL's are stale right after a large commit) and walk every blocked noderole
    of the database per batch: from 1,000 to 10,000 nodes that query's time grew 36-fold on SQLite
    and 70-fold on PostgreSQL (docs/benchmarks.md, Annealer).

    On PostgreSQL the blocked children are held (FOR UPDATE, in id order) before their parents'
    states are read, so that two servers making two parents of one child active at once do not
    both leave it blocked; `hold_parents` is the same guard for a commit or a retry of the child."""
    edges, nr, pg = NodeRoleEdge.__table__.c, NodeRole.__table__.c, is_postgresql(session)
    children: set[int] = set()
    for part in chunks(parent_ids):
        children.update(session.scalars(select(edges.child_id).where(among(edges.parent_id, part, pg))))
    ready: list[int] = []
    for part in chunks(sorted(children)):
        blocked = [i for i, state in session.execute(select(nr.id, nr.state).where(among(nr.id, part, pg)))
                   if state == State.BLOCKED.value]
        if blocked and pg:  # held, in id order (two of these never wait on each other in a circle), and read again
            blocked = [i for i, state in session.execute(
                select(nr.id, nr.state).where(among(nr.id, blocked, pg)).order_by(nr.id).with_for_update())
                       if state == State.BLOCKED.value]
        if not blocked:
            continue
        waiting = {child for child, state in session.execute(
            select(edges.child_id, nr.state).join_from(NodeRoleEdge.__table__, NodeRole.__table__, nr.id == edges.parent_id)
            .where(among(edges.child_id, blocked, pg))) if state != State.ACTIVE.value}
        ready += [i for i in blocked if i not in waiting]
    set_states(session, {State.TODO.value: [(i, State.BLOCKED.value) for i in ready]}, actor, "unblock",
               "all parents active")
    return ready


def hold_parents(session: Session, child_ids: Sequence[int]) -> None:
    """Before the states of their parents decide whether these noderoles go to todo or blocked:
    on PostgreSQL, a share lock on each parent that is neither active nor one of them. An apply
    making one of those active right now holds it, so this waits for its commit and then sees it
    active; an apply that comes later waits for this transaction, and then finds these noderoles
    among its parent's children (`unblock_children`). Without it, under READ COMMITTED, each could
    miss the other and the child stay blocked for good. SQLite has one writer at a time."""
    if child_ids:
        _hold_parents_of(session, "c.id = ANY(CAST(:ids AS integer[]))", {"ids": sorted(set(child_ids))})


def _hold_parents_of(session: Session, own: str, params: dict) -> None:
    """`hold_parents` for the noderoles `own` (a condition on `c`) selects: one statement, in id
    order (two of these never wait on each other in a circle), and no rows back but the held."""
    if not is_postgresql(session):
        return
    session.execute(text(
        "SELECT p.id FROM node_roles p WHERE p.state <> 'active' AND p.id IN (SELECT e.parent_id FROM "
        f"node_role_edges e JOIN node_roles c ON c.id = e.child_id WHERE {own}) AND p.id NOT IN "
        f"(SELECT c.id FROM node_roles c WHERE {own}) ORDER BY p.id FOR SHARE OF p"), params).all()


def requeue(session: Session, ids: list[int], actor: str, why: str) -> None:
    """Send noderoles back to todo (or blocked if a parent is not active), and block what hangs below."""
    if not ids:
        return
    hold_parents(session, ids)
    pg, rows, ready = is_postgresql(session), [], set()
    for part in chunks(ids):
        rows += session.execute(select(NodeRole.id, NodeRole.state).where(among(NodeRole.id, part, pg))).all()
        where, params = ids_where(part, pg, "c.id")
        statement = text(f"SELECT c.id FROM node_roles c WHERE {where} AND {parents_all_active_sql('c')}")
        ready.update(session.scalars(statement if pg else statement.bindparams(bindparam("ids", expanding=True)),
                                     params))
    set_states(session, {
        "todo": [(i, s) for i, s in rows if i in ready],
        "blocked": [(i, s) for i, s in rows if i not in ready],
    }, actor, "requeue", why)
    block_descendants(session, ids, actor, f"an ancestor was re-queued: {why}")


def delete_noderoles(session: Session, ids: Sequence[int]) -> None:
    """Remove noderoles and the edges into them (callers check first that nothing else depends on them)."""
    for part in chunks(ids):
        session.execute(delete(NodeRoleEdge.__table__).where(NodeRoleEdge.child_id.in_(part)))
        session.execute(delete(NodeRole.__table__).where(NodeRole.id.in_(part)))


def _commit_rows(session: Session, where: str, params: dict, committed: list[int], ready: set[int]) -> None:
    """The proposed noderoles `where` says, each written once, straight to todo (every parent
    active) or blocked, with its commit event; their ids go to `committed`, the todo ones also to
    `ready`. Parents committed in the same statement are proposed in its snapshot, so not active:
    their children are blocked, as they were when a commit wrote every row to blocked and then
    the ready ones again to todo (a second write of a sixth of the rows, after a scan of every
    blocked one)."""
    for nr_id, state in record_changes(session, (
            "UPDATE node_roles SET committed = proposed, updated_at = :now, state = CASE WHEN "
            f"{parents_all_active_sql('node_roles')} THEN 'todo' ELSE 'blocked' END "
            f"WHERE {where} AND state = 'proposed' RETURNING id, state"), params,
            {"object_type": "noderole", "action": "commit", "from_state": "proposed", "actor": params["actor"],
             "at": params["now"]}):
        committed.append(nr_id)
        if state == State.TODO.value:
            ready.add(nr_id)


def commit_noderoles(session: Session, deployment_id: int, actor: str, made: Sequence[Bound] | None = None) -> int:
    """proposed -> todo where every parent is active, else blocked. Set-based: one UPDATE, which
    also writes the events on PostgreSQL (db.events.record_changes).

    `made`: only these noderoles, which a Binder has just made (proposed) in the deployment,
    rather than every proposed noderole of the deployment: what binding into `system` does, which
    commits at once (so the cost does not grow with the deployment)."""
    params = {"d": deployment_id, "now": utcnow(), "actor": actor}
    ready: set[int] = set()
    committed: list[int] = []
    if made is not None:
        proposed = [nr.id for nr in made if nr.deployment_id == deployment_id and nr.state == "proposed"]
        if not proposed:
            return 0
        hold_parents(session, proposed)
        for part in chunks(proposed):
            where, ids = ids_where(part, is_postgresql(session))
            _commit_rows(session, where, params | ids, committed, ready)
        done = set(committed)
        for nr in made:
            if isinstance(nr, Made) and nr.id in done:
                nr.state = "todo" if nr.id in ready else "blocked"  # the binder's picture stays true
    else:
        if session.scalar(select(NodeRole.id).where(NodeRole.deployment_id == deployment_id,
                                                    NodeRole.state == "proposed").limit(1)) is None:
            return 0
        _hold_parents_of(session, "c.deployment_id = :d AND c.state = 'proposed'", {"d": deployment_id})
        _commit_rows(session, "deployment_id = :d", params, committed, ready)
    return len(committed)


class NodeLike(Protocol):
    """What binding needs of a node: a Node, or a lookup.NodeRef (id and name only)."""

    @property
    def id(self) -> int: ...

    @property
    def name(self) -> str: ...


@dataclass
class Made:
    """A noderole a Binder made: inserted with the others of its bind (`Binder._write`), which
    gives it its id. Carries what binding reads of a noderole, like a NodeRole loaded with LIGHT."""

    node_id: int
    role_id: int
    deployment_id: int
    cohort: int
    state: str = State.PROPOSED.value
    id: int | None = None


Bound = NodeRole | Made  # what a Binder answers and caches: a noderole that was there, or one it made


@dataclass
class Binder:
    """Binds roles to nodes inside one session, caching lookups so bulk binds stay cheap.

    `bind` binds one role to one node, `bind_many` one role to many nodes; both write what they made
    (noderoles, edges, events: a statement each, in chunks) before they return. Nothing else adds
    noderoles to the nodes and deployment it binds in meanwhile: the deployment's row is locked."""

    session: Session
    actor: str = "system"
    _roles: dict[str, Role] = field(default_factory=dict)
    _chain: dict[int, list[Deployment]] = field(default_factory=dict)
    # Lookups this binder has answered; kept correct because only this binder adds noderoles here.
    _on_node: dict[tuple[int, int], Bound | None] = field(default_factory=dict)
    _in_deployment: dict[tuple[int, int], Bound | None] = field(default_factory=dict)
    _deployment_roles: set[tuple[int, int]] = field(default_factory=set)
    _locked: set[int] = field(default_factory=set)
    # Noderoles made and not yet written out: (noderole, its parents, the event's message).
    _new: list[tuple[Made, list[Bound], str]] = field(default_factory=list)
    fresh_nodes: set[int] = field(default_factory=set)  # created in this transaction: no noderoles yet
    _loaded: set[int] = field(default_factory=set)  # nodes whose noderoles are all in _on_node
    created: list[Made] = field(default_factory=list)
    _conflicting: dict[str, set[str]] | None = None  # role name -> the roles it declares conflicts with
    _role_ids: dict[str, int] = field(default_factory=dict)

    def role(self, name: str) -> Role:
        if name not in self._roles:
            role = self.session.scalar(select(Role).where(Role.name == name))
            if role is None:
                raise NotFound(f"role {name!r} does not exist", field="role")
            self._roles[name] = role
        return self._roles[name]

    def ancestry(self, deployment: Deployment) -> list[Deployment]:
        """The deployment, then its parents up to system (the order in which parents are looked up)."""
        if deployment.id not in self._chain:
            chain, cur = [], deployment
            while cur is not None:
                chain.append(cur)
                cur = self.session.get(Deployment, cur.parent_id) if cur.parent_id else None
            self._chain[deployment.id] = chain
        return self._chain[deployment.id]

    def bind(self, deployment: Deployment, role: Role, node: NodeLike) -> Bound:
        """Bind `role` to `node` in `deployment`, and what it requires; answers its noderole."""
        return self.bind_many(deployment, role, [node])[0]

    def bind_many(self, deployment: Deployment, role: Role, nodes: Sequence[NodeLike]) -> list[Bound]:
        """Bind `role` to each of `nodes` in `deployment` (a node that holds it already keeps its
        noderole); answers their noderoles in that order. Shared parents are found (or made) once."""
        self._lock(deployment)
        self.load_nodes([n.id for n in nodes])
        out = [self._bind(deployment, role, node, ()) for node in nodes]
        self._write()
        return out

    def load_nodes(self, node_ids: Sequence[int]) -> None:
        """Read what these nodes hold (every role, light columns), one query per chunk of nodes."""
        todo = sorted({i for i in node_ids if i not in self._loaded and i not in self.fresh_nodes})
        for part in chunks(todo):
            for nr in self.session.scalars(select(NodeRole).options(load_only(*LIGHT))
                                           .where(NodeRole.node_id.in_(part))):
                self._on_node[(nr.node_id, nr.role_id)] = nr
        self._loaded.update(todo)

    def holds_lock(self, deployment: Deployment) -> None:
        """The caller has locked the deployment's row itself (read it FOR UPDATE)."""
        self._locked.add(deployment.id)

    def _lock(self, deployment: Deployment) -> None:
        if deployment.id not in self._locked:
            # Binds into one deployment take turns (PostgreSQL row lock; SQLite's BEGIN IMMEDIATE
            # already serialises writers), so two of them never both create a shared parent such as
            # test-server, nor race on the deployment role row.
            self.session.execute(select(Deployment.id).where(Deployment.id == deployment.id).with_for_update())
            self._locked.add(deployment.id)

    def _write(self) -> None:
        """Insert the noderoles made (a multi-row INSERT per chunk: their ids come back by (node,
        role), which is unique), then their edges and events."""
        if not self._new:
            return
        table, now = NodeRole.__table__, utcnow()
        rows = [{"node_id": nr.node_id, "role_id": nr.role_id, "deployment_id": nr.deployment_id, "state": nr.state,
                 "cohort": nr.cohort, "proposed": {}, "committed": {}, "wall": {}, "updated_at": now}
                for nr, _, _ in self._new]
        ids: dict[tuple[int, int], int] = {}
        for part in chunks(rows):
            ids.update({(n, r): i for i, n, r in self.session.execute(
                insert(table).returning(table.c.id, table.c.node_id, table.c.role_id), part)})
        for nr, _, _ in self._new:
            nr.id = ids[(nr.node_id, nr.role_id)]
        edges = [{"parent_id": p.id, "child_id": nr.id} for nr, parents, _ in self._new for p in parents]
        if edges:
            self.session.execute(insert(NodeRoleEdge), edges)
        record(self.session, [{"object_type": "noderole", "object_id": nr.id, "action": "bind",
                               "to_state": nr.state, "actor": self.actor, "message": message}
                              for nr, _, message in self._new])
        self._new = []

    def _bind(self, deployment: Deployment, role: Role, node: NodeLike, _path: tuple[str, ...]) -> Bound:
        self._lock(deployment)
        existing = self._find_on_node(node.id, role.id)
        if existing is not None:
            return existing
        if role.has("abstract"):
            raise InvalidInput(f"role {role.name!r} is abstract and cannot be bound", field="role")
        self._check_conflicts(role, node)
        parents = [self._parent_for(deployment, self.role(req), node, _path + (role.name,))
                   for req in role.requires]
        self._ensure_deployment_role(deployment, role)
        nr = Made(node_id=node.id, role_id=role.id, deployment_id=deployment.id,
                  cohort=1 + max((p.cohort for p in parents), default=-1))
        self._new.append((nr, parents, f"{role.name} on {node.name} in {deployment.name}"))
        self._on_node[(node.id, role.id)] = nr
        if self._in_deployment.get((deployment.id, role.id)) is None:
            self._in_deployment[(deployment.id, role.id)] = nr
        self.created.append(nr)
        return nr

    def _find_on_node(self, node_id: int, role_id: int) -> Bound | None:
        key = (node_id, role_id)
        if key not in self._on_node and (node_id in self.fresh_nodes or node_id in self._loaded):
            return None
        if key not in self._on_node:
            self._on_node[key] = self.session.scalar(
                select(NodeRole).options(load_only(*LIGHT)).where(NodeRole.node_id == node_id, NodeRole.role_id == role_id))
        return self._on_node[key]

    def _find_in_deployment(self, deployment_id: int, role_id: int) -> Bound | None:
        key = (deployment_id, role_id)
        if key not in self._in_deployment:
            self._in_deployment[key] = self.session.scalar(
                select(NodeRole).options(load_only(*LIGHT)).where(
                    NodeRole.deployment_id == deployment_id, NodeRole.role_id == role_id).order_by(NodeRole.id).limit(1))
        return self._in_deployment[key]

    def _parent_for(self, deployment: Deployment, req: Role, node: NodeLike, path: tuple[str, ...]) -> Bound:
        """Same node first; else (unless implicit) the deployment, then its ancestors; else create here."""
        on_node = self._find_on_node(node.id, req.id)
        if on_node is not None:
            return on_node
        if not req.has("implicit"):
            for dep in self.ancestry(deployment):
                found = self._find_in_deployment(dep.id, req.id)
                if found is not None:
                    return found
        if req.name in path:
            raise Conflict(f"role {req.name!r} requires itself through {' -> '.join(path)}")
        return self._bind(deployment, req, node, path)

    def _check_conflicts(self, role: Role, node: NodeLike) -> None:
        """Conflicts are symmetric: refused if either role names the other in its `conflicts`."""
        if self._conflicting is None:
            rows = self.session.execute(select(Role.name, Role.id, Role.conflicts)).all()
            self._conflicting = {name: set(c) for name, _id, c in rows if c}
            self._role_ids = {name: role_id for name, role_id, _c in rows}
        names = set(role.conflicts or []) | {n for n, c in self._conflicting.items() if role.name in c}
        if not names:
            return
        # What the node holds is known (load_nodes, or a fresh node): no query per node.
        clash = [n for n in sorted(names) if n in self._role_ids and self._find_on_node(node.id, self._role_ids[n])]
        if clash:
            raise Conflict(f"role {role.name!r} conflicts with {', '.join(clash)} already on {node.name}")

    def _ensure_deployment_role(self, deployment: Deployment, role: Role) -> None:
        if (deployment.id, role.id) in self._deployment_roles:
            return
        self._deployment_roles.add((deployment.id, role.id))
        exists = self.session.scalar(
            select(DeploymentRole.id).where(DeploymentRole.deployment_id == deployment.id,
                                            DeploymentRole.role_id == role.id)
        )
        if exists is None:
            self.session.add(DeploymentRole(deployment_id=deployment.id, role_id=role.id, proposed={}, committed={}))
            self.session.flush()

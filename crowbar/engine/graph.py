"""The noderole graph: binding roles to nodes, committing, and rippling state along edges.

Binding is object-at-a-time (it is interactive and recursive); everything that moves state along
edges is set-based SQL, so that committing 50,000 noderoles or failing the root of a large tree costs
a handful of statements, not one per noderole.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field

from sqlalchemy import bindparam, delete, insert, select, text, update
from sqlalchemy.orm import Session, load_only

from crowbar.db.models import (
    Deployment,
    DeploymentRole,
    Node,
    NodeRole,
    NodeRoleEdge,
    Role,
    utcnow,
)
from crowbar.db.events import record
from crowbar.db.sql import chunks
from crowbar.engine import states
from crowbar.engine.states import State
from crowbar.errors import Conflict, InvalidInput, NotFound

# The columns binding needs; skips decoding the JSON blobs of every noderole it looks at.
LIGHT = (NodeRole.id, NodeRole.node_id, NodeRole.role_id, NodeRole.deployment_id, NodeRole.state, NodeRole.cohort)
def set_states(session: Session, changes: dict[str, list[tuple[int, str]]], actor: str, action: str,
               message: str = "") -> None:
    """Move noderoles to new states in bulk: {to_state: [(id, from_state), ...]}, with events.
    A move the state rules do not allow raises IllegalTransition (checked once per distinct from-state)."""
    now = utcnow()
    for to_state, pairs in changes.items():
        for src in {p[1] for p in pairs}:
            states.check(src, to_state)
        for part in chunks([p[0] for p in pairs]):
            session.execute(
                update(NodeRole.__table__).where(NodeRole.id.in_(part)).values(state=to_state, updated_at=now)
            )
        record(session, [
            {"object_type": "noderole", "object_id": nr_id, "action": action, "from_state": src,
             "to_state": to_state, "actor": actor, "message": message}
            for nr_id, src in pairs
        ])


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
    below = descendants(session, ids)
    pairs: list[tuple[int, str]] = []
    for part in chunks(below):
        pairs += session.execute(
            select(NodeRole.id, NodeRole.state).where(
                NodeRole.id.in_(part), NodeRole.state.in_([State.TODO.value, State.ACTIVE.value, State.ERROR.value])
            )
        ).all()
    set_states(session, {State.BLOCKED.value: [(i, s) for i, s in pairs]}, actor, "block", why)
    return len(pairs)


def unblock_children(session: Session, parent_ids: Sequence[int], actor: str) -> list[int]:
    """Children of newly active noderoles whose parents are now all active go blocked -> todo."""
    stmt = text(
        "SELECT DISTINCT c.id FROM node_role_edges e JOIN node_roles c ON c.id = e.child_id "
        f"WHERE e.parent_id IN :ids AND c.state = 'blocked' AND {parents_all_active_sql('c')}"
    ).bindparams(bindparam("ids", expanding=True))
    ready: list[int] = []
    for part in chunks(parent_ids):
        ready += session.scalars(stmt, {"ids": part}).all()
    set_states(session, {State.TODO.value: [(i, State.BLOCKED.value) for i in ready]}, actor, "unblock",
               "all parents active")
    return ready


def requeue(session: Session, ids: list[int], actor: str, why: str) -> None:
    """Send noderoles back to todo (or blocked if a parent is not active), and block what hangs below."""
    if not ids:
        return
    rows = session.execute(select(NodeRole.id, NodeRole.state).where(NodeRole.id.in_(ids))).all()
    ready = set(session.scalars(text(
        f"SELECT c.id FROM node_roles c WHERE c.id IN ({','.join(str(i) for i in ids)}) "
        f"AND {parents_all_active_sql('c')}")))
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


def commit_noderoles(session: Session, deployment_id: int, actor: str) -> int:
    """proposed -> blocked, then blocked -> todo where every parent is active. Set-based."""
    now = utcnow()
    params = {"d": deployment_id, "now": now, "actor": actor}
    proposed = session.scalars(
        select(NodeRole.id).where(NodeRole.deployment_id == deployment_id, NodeRole.state == "proposed")
    ).all()
    if not proposed:
        return 0
    session.execute(text(
        "UPDATE node_roles SET committed = proposed, state = 'blocked', updated_at = :now "
        "WHERE deployment_id = :d AND state = 'proposed'"), params)
    ready = set(session.scalars(text(
        f"SELECT c.id FROM node_roles c WHERE c.deployment_id = :d AND c.state = 'blocked' "
        f"AND {parents_all_active_sql('c')}"), params))
    for part in chunks(sorted(ready)):
        session.execute(update(NodeRole.__table__).where(NodeRole.id.in_(part)).values(state="todo"))
    record(session, [
        {"object_type": "noderole", "object_id": i, "action": "commit", "from_state": "proposed",
         "to_state": "todo" if i in ready else "blocked", "actor": actor, "at": now}
        for i in proposed
    ])
    return len(proposed)


@dataclass
class Binder:
    """Binds roles to nodes inside one session, caching lookups so bulk binds stay cheap."""

    session: Session
    actor: str = "system"
    _roles: dict[str, Role] = field(default_factory=dict)
    _chain: dict[int, list[Deployment]] = field(default_factory=dict)
    # Lookups this binder has answered; kept correct because only this binder adds noderoles here.
    _on_node: dict[tuple[int, int], NodeRole | None] = field(default_factory=dict)
    _in_deployment: dict[tuple[int, int], NodeRole | None] = field(default_factory=dict)
    _deployment_roles: set[tuple[int, int]] = field(default_factory=set)
    _locked: set[int] = field(default_factory=set)
    _events: list[dict] = field(default_factory=list)
    fresh_nodes: set[int] = field(default_factory=set)  # created in this transaction: no noderoles yet
    created: list[NodeRole] = field(default_factory=list)
    _conflicting: dict[str, set[str]] | None = None  # role name -> the roles it declares conflicts with

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

    def bind(self, deployment: Deployment, role: Role, node: Node, _path: tuple[str, ...] = ()) -> NodeRole:
        if deployment.id not in self._locked:
            # Binds into one deployment take turns (PostgreSQL row lock; SQLite's BEGIN IMMEDIATE
            # already serialises writers), so two of them never both create a shared parent such as
            # test-server, nor race on the deployment role row.
            self.session.execute(select(Deployment.id).where(Deployment.id == deployment.id).with_for_update())
            self._locked.add(deployment.id)
        existing = self._find_on_node(node.id, role.id)
        if existing is not None:
            return existing
        if role.has("abstract"):
            raise InvalidInput(f"role {role.name!r} is abstract and cannot be bound", field="role")
        self._check_conflicts(role, node)
        parents = [self._parent_for(deployment, self.role(req), node, _path + (role.name,))
                   for req in role.requires]
        self._ensure_deployment_role(deployment, role)
        nr = NodeRole(
            node_id=node.id, role_id=role.id, deployment_id=deployment.id, state=State.PROPOSED.value,
            cohort=1 + max((p.cohort for p in parents), default=-1), proposed={}, committed={}, wall={},
        )
        self.session.add(nr)
        self.session.flush()
        if parents:
            self.session.execute(insert(NodeRoleEdge), [{"parent_id": p.id, "child_id": nr.id} for p in parents])
        self._on_node[(node.id, role.id)] = nr
        if self._in_deployment.get((deployment.id, role.id)) is None:
            self._in_deployment[(deployment.id, role.id)] = nr
        self._events.append({"object_type": "noderole", "object_id": nr.id, "action": "bind",
                             "to_state": nr.state, "actor": self.actor,
                             "message": f"{role.name} on {node.name} in {deployment.name}"})
        self.created.append(nr)
        if not _path:  # the outermost call writes the events of the whole recursive bind
            record(self.session, self._events)
            self._events = []
        return nr

    def _find_on_node(self, node_id: int, role_id: int) -> NodeRole | None:
        key = (node_id, role_id)
        if key not in self._on_node and node_id in self.fresh_nodes:
            return None
        if key not in self._on_node:
            self._on_node[key] = self.session.scalar(
                select(NodeRole).options(load_only(*LIGHT)).where(NodeRole.node_id == node_id, NodeRole.role_id == role_id))
        return self._on_node[key]

    def _find_in_deployment(self, deployment_id: int, role_id: int) -> NodeRole | None:
        key = (deployment_id, role_id)
        if key not in self._in_deployment:
            self._in_deployment[key] = self.session.scalar(
                select(NodeRole).options(load_only(*LIGHT)).where(
                    NodeRole.deployment_id == deployment_id, NodeRole.role_id == role_id).order_by(NodeRole.id).limit(1))
        return self._in_deployment[key]

    def _parent_for(self, deployment: Deployment, req: Role, node: Node, path: tuple[str, ...]) -> NodeRole:
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
        return self.bind(deployment, req, node, path)

    def _check_conflicts(self, role: Role, node: Node) -> None:
        """Conflicts are symmetric: refused if either role names the other in its `conflicts`."""
        if self._conflicting is None:
            self._conflicting = {name: set(c) for name, c in self.session.execute(select(Role.name, Role.conflicts))
                                 if c}
        names = set(role.conflicts or []) | {n for n, c in self._conflicting.items() if role.name in c}
        if not names:
            return
        clash = self.session.scalars(
            select(Role.name).join(NodeRole, NodeRole.role_id == Role.id)
            .where(NodeRole.node_id == node.id, Role.name.in_(sorted(names))).order_by(Role.name)
        ).all()
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

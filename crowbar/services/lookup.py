"""Find objects by id or by name, with a NotFound that says which one and what kind.

The one rule for references, everywhere (API paths and bodies, CLI arguments): a reference made
only of digits is an id; anything else is a name. Node names are host names that can never be all
digits (`valid_node_name`), so a node's name and another node's id can never be confused.
Other objects (roles, barclamps, deployments) follow the same rule.
"""

from __future__ import annotations

import re
from typing import NamedTuple

from sqlalchemy import select
from sqlalchemy.orm import Session, selectinload

from crowbar.db.models import Barclamp, Deployment, Node, NodeRole, Role
from crowbar.db.sql import MAX_ID, chunks, is_postgresql
from crowbar.errors import InvalidInput, NotFound

# RFC 1123 host names (labels of letters, digits and inner hyphens; 253 characters at most), lower
# case, and never all digits and dots: "12" would read as an id, "10.0.0.5" as an address.
_HOST_NAME = re.compile(r"^(?=.{1,253}$)[a-z0-9]([a-z0-9-]{0,61}[a-z0-9])?(\.[a-z0-9]([a-z0-9-]{0,61}[a-z0-9])?)*$")
_NUMERIC = re.compile(r"^[0-9.]+$")


def valid_node_name(name: str) -> str:
    """The normalised (stripped, lower-case) node name, or InvalidInput saying why it is refused."""
    name = (name or "").strip().lower()
    if not _HOST_NAME.match(name):
        raise InvalidInput(f"node name {name!r} is not a valid host name (RFC 1123: letters, digits, "
                           "'-' inside labels, dots between them)", field="name")
    if _NUMERIC.match(name):
        raise InvalidInput(f"node name {name!r} is all digits: names must not look like ids or addresses",
                           field="name")
    return name


class NodeRef(NamedTuple):
    id: int
    name: str


def is_id(key) -> bool:
    """True for a reference made of ASCII digits only ("²" and "٣" are digits to Python, not to us)."""
    key = str(key).strip()
    return key.isascii() and key.isdigit()


def as_id(key) -> int | None:
    """The id a reference names: its number when it is all ASCII digits and no larger than any
    row's id can be (crowbar.db.sql.MAX_ID), else None (no row has it)."""
    key = str(key).strip()
    if not is_id(key) or len(key) > len(str(MAX_ID)):
        return None
    number = int(key)
    return number if number <= MAX_ID else None


def _by_key(session: Session, model, key: str | int, kind: str):
    key = str(key).strip()
    if is_id(key):
        row = session.get(model, as_id(key)) if as_id(key) is not None else None
    else:
        row = session.scalar(select(model).where(model.name == key)) if hasattr(model, "name") else None
    if row is None:
        raise NotFound(f"{kind} {key!r} does not exist", field=kind)
    return row


def node(session: Session, key) -> Node:
    return _by_key(session, Node, str(key).strip().lower() if not is_id(key) else key, "node")


def node_refs(session: Session, keys: list) -> list[NodeRef]:
    """(id, name) of each node referenced in `keys`, in that order, by the same rule as `node`,
    without loading the nodes' JSON columns; NotFound names the first few that do not exist."""
    refs = [str(k).strip() for k in keys]
    refs = [r if is_id(r) else r.lower() for r in refs]
    by_name: dict[str, NodeRef] = {}
    by_id: dict[int, NodeRef] = {}
    for part in chunks(sorted({r for r in refs if not is_id(r)})):
        for node_id, name in session.execute(select(Node.id, Node.name).where(Node.name.in_(part))):
            by_name[name] = NodeRef(node_id, name)
    for part in chunks(sorted({as_id(r) for r in refs if as_id(r) is not None})):
        for node_id, name in session.execute(select(Node.id, Node.name).where(Node.id.in_(part))):
            by_id[node_id] = NodeRef(node_id, name)
    out, missing = [], []
    for r in refs:
        hit = by_id.get(as_id(r)) if is_id(r) else by_name.get(r)
        if hit is None:
            missing.append(r)
        else:
            out.append(hit)
    if missing:
        listed = ", ".join(repr(n) for n in missing[:5]) + (" ..." if len(missing) > 5 else "")
        raise NotFound(f"node {listed} does not exist", field="node")
    return out


MAX_BULK = 10_000  # nodes named in one bulk call (create, power, allocate, deploy)


def nodes(session: Session, keys: list, *, tags: bool = False, lock: bool = False) -> list[Node]:
    """The nodes referenced in `keys`, in that order, loaded a chunk per query (`node_refs`'
    rule and refusals; InvalidInput when one is named twice). `tags`: their tags loaded too.
    `lock`: their row locks taken (`lock_nodes`), for a unit of work that writes them."""
    refs = node_refs(session, keys)
    ids = [ref.id for ref in refs]
    if len(set(ids)) != len(ids):
        seen: set[int] = set()
        twice = next(ref.name for ref in refs if ref.id in seen or seen.add(ref.id))
        raise InvalidInput(f"node {twice!r} is named twice", field="nodes")
    query = select(Node).options(selectinload(Node.tag_rows)) if tags else select(Node)
    rows: dict[int, Node] = {}
    for part in chunks(ids):
        rows.update((node.id, node) for node in session.scalars(query.where(Node.id.in_(part))))
    if lock:
        lock_nodes(session, ids)
    return [rows[node_id] for node_id in ids]


def lock_nodes(session: Session, ids) -> None:
    """Take the row locks of the nodes `ids` in the order of their ids (PostgreSQL; on SQLite the
    unit of work already holds the database's one write lock), as strong as an UPDATE takes them
    (`FOR NO KEY UPDATE`: a row of another table that refers to the node may still be inserted),
    and read them again (what another transaction committed before the lock is seen).

    Every unit of work that writes several nodes takes their locks this way first (a bulk deploy,
    the agents' writes gathered in one unit), so that two of them never wait for each other in a
    circle (PostgreSQL would answer one of them "deadlock detected")."""
    if not is_postgresql(session):
        return
    for part in chunks(sorted(set(ids))):
        session.execute(select(Node).where(Node.id.in_(part)).order_by(Node.id)
                        .with_for_update(key_share=True).execution_options(populate_existing=True)).all()


def role(session: Session, key) -> Role:
    return _by_key(session, Role, key, "role")


def barclamp(session: Session, key) -> Barclamp:
    return _by_key(session, Barclamp, key, "barclamp")


def deployment(session: Session, key) -> Deployment:
    return _by_key(session, Deployment, key, "deployment")


def noderole(session: Session, key) -> NodeRole:
    key = str(key).strip()
    row = session.get(NodeRole, as_id(key)) if as_id(key) is not None else None
    if row is None:
        raise NotFound(f"noderole {key!r} does not exist", field="noderole")
    return row

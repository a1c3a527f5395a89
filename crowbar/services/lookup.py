"""Find objects by id or by name, with a NotFound that says which one and what kind."""

from __future__ import annotations

from sqlalchemy import select
from sqlalchemy.orm import Session

from crowbar.db.models import Barclamp, Deployment, Node, NodeRole, Role
from crowbar.errors import NotFound


def _by_key(session: Session, model, key: str | int, kind: str):
    key = str(key).strip()
    row = None
    if key.isdigit():
        row = session.get(model, int(key))
    if row is None and hasattr(model, "name"):
        row = session.scalar(select(model).where(model.name == key))
    if row is None:
        raise NotFound(f"{kind} {key!r} does not exist", field=kind)
    return row


def node(session: Session, key) -> Node:
    return _by_key(session, Node, key, "node")


def role(session: Session, key) -> Role:
    return _by_key(session, Role, key, "role")


def barclamp(session: Session, key) -> Barclamp:
    return _by_key(session, Barclamp, key, "barclamp")


def deployment(session: Session, key) -> Deployment:
    return _by_key(session, Deployment, key, "deployment")


def noderole(session: Session, key) -> NodeRole:
    key = str(key).strip()
    row = session.get(NodeRole, int(key)) if key.isdigit() else None
    if row is None:
        raise NotFound(f"noderole {key!r} does not exist", field="noderole")
    return row

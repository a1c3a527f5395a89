"""Plain helpers shared by the engine tests (imported as `enginekit`)."""

from __future__ import annotations

from sqlalchemy import select

from crowbar.db.models import Node, NodeRole, Role, Run


def nr_of(session, node: str, role: str) -> NodeRole:
    """The noderole of `role` on `node` (fails the test if there is none)."""
    row = session.scalar(select(NodeRole).join(Node, Node.id == NodeRole.node_id)
                         .join(Role, Role.id == NodeRole.role_id)
                         .where(Node.name == node, Role.name == role))
    assert row is not None, f"no noderole {role} on {node}"
    return row


def runs_of(session, nr_id: int) -> list[Run]:
    return list(session.scalars(select(Run).where(Run.node_role_id == nr_id).order_by(Run.id)))

"""Shared data and helpers of tests/network_db (a uniquely named module: `conftest` is ambiguous)."""

from __future__ import annotations

from sqlalchemy import select

from crowbar.db.models import Node
from crowbar.services import nodes

TWO_NICS = [
    {"name": "eth0", "mac": "52:54:00:00:00:01", "speed": 1000, "driver": "e1000e", "bus": "0000:01:00.0"},
    {"name": "eth1", "mac": "52:54:00:00:00:02", "speed": "1g", "driver": "e1000e", "bus": "0000:01:00.1"},
]

# A small network for allocation tests: 5 host addresses, on its own VLAN.
TINY = {"category": "general", "conduit": "intf1", "vlan": 99, "use_vlan": True,
        "subnet": "10.99.0.0/24", "router": "10.99.0.1", "router_pref": 50,
        "ranges": {"dhcp": {"start": "10.99.0.2", "end": "10.99.0.9"},
                   "host": {"start": "10.99.0.10", "end": "10.99.0.14"}}}


def add_nodes(db, *names, nics=TWO_NICS, bind_roles=False) -> list[int]:
    """Create nodes (with a NIC inventory unless nics is None); returns their ids."""
    ids = []
    with db.session() as s:
        for name in names:
            node = nodes.create_node(s, name, bind_roles=bind_roles)
            row = s.get(Node, node["id"])
            row.discovery = {"nics": nics} if nics is not None else {}
            ids.append(node["id"])
    return ids


def node_id(db, name) -> int:
    with db.session() as s:
        return s.scalar(select(Node.id).where(Node.name == name))

"""IP allocation: a node's address on a network, one at a time or in bulk, its release, and what
is allocated.

`allocate`: the node's existing allocation on the network, else a valid free hint, else the
lowest free address of the range (falling back to `host`), using
crowbar.network.ipam.choose_address. Addresses are taken across every network whose subnet
overlaps (`sharing`: admin, bmc and bmc_vlan share 192.168.124.0/24), so they are never handed
out twice:
- one network: UNIQUE(network_id, address) and UNIQUE(network_id, node_id) in the database;
- networks sharing a subnet: the allocator locks the rows of all of them (PostgreSQL: SELECT ...
  FOR UPDATE, in id order so that two allocators never deadlock; SQLite: every transaction is
  BEGIN IMMEDIATE, one writer at a time) before it reads what is taken, then checks that the
  template it read is still the one in force (a template change locks every network row);
- whatever slips through (a row inserted by another path) fails the UNIQUE constraint; the
  insert runs in a savepoint and is retried with a fresh view (`_db.RETRIES` times).
What is taken is asked of the database, not loaded whole (`_UsedInDatabase`, the view
choose_address reads): a point lookup for a hint, and the lowest free address of a range from
the range's cursor.
`allocate_many` does the same for many nodes in one transaction (one lock, one read of what is
taken, one executemany): the bulk path for thousands of nodes. All or nothing.
`allocate_for` is what the API asks: one node or many, checked and sent to one of the two.

Every allocation and release is recorded in the event log (crowbar.db.events).
"""

from __future__ import annotations

import ipaddress
from typing import Any, Mapping

from sqlalchemy import bindparam, delete, func, insert, select, update
from sqlalchemy.exc import IntegrityError
from sqlalchemy.orm import Session

from crowbar.db.events import record
from crowbar.db.models import Node, utcnow
from crowbar.db.sql import chunks, is_postgresql, keyset
from crowbar.errors import Conflict, InvalidInput, NotFound
from crowbar.network.ipam import UsedAddresses, choose_address, resolve_range
from crowbar.network.model import Network, NetworkTemplate, address_problem
from crowbar.services import lookup
from crowbar.services.network._db import (
    ALLOCS, NETS, RANGES, RETRIES, SETTINGS, SETTINGS_ID, lock_networks,
)
from crowbar.services.network.templates import get_network, read_stored, read_template

# The allocator's statements, built once: one allocation per transaction runs these and little
# else, so building and cache-keying them per call would cost more than executing them.
_Q_EXISTING = select(ALLOCS.c.id, ALLOCS.c.address, ALLOCS.c.range).where(
    ALLOCS.c.network_id == bindparam("network_id"), ALLOCS.c.node_id == bindparam("node_id"))
_IN_GROUP = ALLOCS.c.network_id.in_(bindparam("group", expanding=True))
_IN_SPAN = (ALLOCS.c.address_key >= bindparam("low"), ALLOCS.c.address_key <= bindparam("high"))
_Q_TAKEN = select(ALLOCS.c.id).where(_IN_GROUP, ALLOCS.c.address_key == bindparam("key")).limit(1)
_Q_SPAN_STATS = select(func.count(), func.max(ALLOCS.c.address_key)).where(_IN_GROUP, *_IN_SPAN)
_Q_SPAN_KEYS = select(ALLOCS.c.address_key).where(_IN_GROUP, *_IN_SPAN)
SCAN_BATCH = 64
_Q_SPAN_SCAN = _Q_SPAN_KEYS.order_by(ALLOCS.c.address_key).limit(SCAN_BATCH)
_Q_EPOCH = select(SETTINGS.c.released).where(SETTINGS.c.id == SETTINGS_ID)
_Q_CURSOR = select(RANGES.c.cursor, RANGES.c.cursor_epoch).where(
    RANGES.c.network_id == bindparam("network_id"), RANGES.c.name == bindparam("range_name"))
_SET_CURSOR = update(RANGES).where(
    RANGES.c.network_id == bindparam("nid"), RANGES.c.name == bindparam("rname")).values(
    cursor=bindparam("new_cursor"), cursor_epoch=bindparam("new_epoch"))
# Dialects whose migration installed the release triggers that keep the cursors honest.
CURSOR_DIALECTS = ("sqlite", "postgresql")
_INSERT_ALLOCATION = insert(ALLOCS)


# ---------------------------------------------------------------------------------------------
# Addresses as stored, and the networks that share them

def address_key(address: Any) -> str:
    """The address as 32 hex digits: SQL orders and compares these like the integers they are."""
    value = address if isinstance(address, int) else int(ipaddress.ip_address(address))
    return format(value, "032x")


def sharing(template: NetworkTemplate, network: Network) -> list[Network]:
    """Networks whose addresses can collide with `network`'s: their subnets overlap (itself too).
    A valid template keeps overlapping subnets on one segment (see model.same_segment)."""
    return [other for other in template.networks.values()
            if other.subnet.version == network.subnet.version
            and other.subnet.overlaps(network.subnet)]


# ---------------------------------------------------------------------------------------------
# What is taken

class _UsedInDatabase(UsedAddresses):
    """What choose_address needs to know about taken addresses, asked of the database instead of
    loaded whole: a point lookup for a hint, and the lowest free address of a range.

    The lowest free address starts from the range's cursor (every address below it is taken)
    and reads the taken keys above it in small ordered batches until the first gap: with ranges
    filled from the bottom that is one short index read, whatever the number of allocations.
    The cursor is void once any allocation was released since it was written (database
    triggers count releases, including a node's deletion cascading to its allocations); the
    answer is then found with one aggregate over the range (count and max of its keys: filled
    without gaps, the answer is max + 1; else the keys are read) and the cursor written again."""

    def __init__(self, session: Session, network_ids: list[int], network_id: int | None = None,
                 ranges: Mapping[str, Any] | None = None):
        super().__init__()
        self.conn, self.network_ids, self.network_id = session.connection(), list(network_ids), network_id
        self.spans = {(int(span.start), int(span.end)): name for name, span in (ranges or {}).items()}
        self.cursors = network_id is not None and self.conn.dialect.name in CURSOR_DIALECTS

    def __contains__(self, address) -> bool:
        return self.conn.execute(_Q_TAKEN, {"group": self.network_ids,
                                            "key": address_key(address)}).first() is not None

    def __len__(self) -> int:
        return self.conn.execute(select(func.count()).select_from(ALLOCS).where(
            ALLOCS.c.network_id.in_(self.network_ids))).scalar()

    def add(self, address) -> None:  # pragma: no cover - the database is the source of truth
        raise NotImplementedError("insert an allocation instead")

    def _params(self, first: int, last: int) -> dict:
        return {"group": self.network_ids, "low": address_key(first), "high": address_key(last)}

    def _by_aggregate(self, first: int, last: int) -> int | None:
        count, top = self.conn.execute(_Q_SPAN_STATS, self._params(first, last)).one()
        if not count:
            return first
        top = int(top, 16)
        if top - first + 1 == count:  # dense from the start of the range
            return top + 1 if top < last else None
        keys = self.conn.execute(_Q_SPAN_KEYS, self._params(first, last)).scalars()
        return UsedAddresses(int(k, 16) for k in keys).first_free(first, last)

    def _by_scan(self, start: int, last: int) -> int | None:
        candidate = start
        while candidate <= last:
            keys = self.conn.execute(_Q_SPAN_SCAN, self._params(candidate, last)).scalars().all()
            for key in keys:
                if int(key, 16) != candidate:
                    return candidate  # a gap before this key
                candidate += 1
            if len(keys) < SCAN_BATCH:
                break
        return candidate if candidate <= last else None

    def first_free(self, first: int, last: int) -> int | None:
        name = self.spans.get((first, last))
        if not self.cursors or name is None:
            return self._by_aggregate(first, last)
        epoch = self.conn.execute(_Q_EPOCH).scalar() or 0
        row = self.conn.execute(_Q_CURSOR, {"network_id": self.network_id, "range_name": name}).first()
        if row is not None and row.cursor is not None and row.cursor_epoch == epoch:
            free = self._by_scan(max(first, int(row.cursor, 16)), last)
        else:
            free = self._by_aggregate(first, last)
        self.conn.execute(_SET_CURSOR, {"nid": self.network_id, "rname": name, "new_epoch": epoch,
                                        "new_cursor": address_key(last if free is None else free)})
        return free


def _used_addresses(session: Session, network_ids: list[int]) -> UsedAddresses:
    keys = session.scalars(select(ALLOCS.c.address_key).where(ALLOCS.c.network_id.in_(network_ids)))
    return UsedAddresses(int(k, 16) for k in keys)


# ---------------------------------------------------------------------------------------------
# Allocating and releasing

def _locked_network(session: Session, name: str) -> tuple[NetworkTemplate, dict[str, int], Network, list[int]]:
    """Lock `name` and the networks sharing its addresses, then make sure the template read is
    the one in force (a change of the template locks every network row, so it waits for us or
    we for it)."""
    locked: set[int] = set()
    for _attempt in range(5):
        stored = read_stored(session)
        network = get_network(stored.template, name)
        group = [stored.ids[n.name] for n in sharing(stored.template, network)]
        if not is_postgresql(session):  # BEGIN IMMEDIATE: nobody else writes until we commit
            return stored.template, dict(stored.ids), network, group
        lock_networks(session, set(group) - locked)
        locked |= set(group)
        if read_stored(session).version == stored.version:
            return stored.template, dict(stored.ids), network, group
    raise Conflict(f"network {name!r} kept changing while allocating; try again")


def _allocation_dict(network: str, node: str, range_name: str, address: str, **extra) -> dict:
    return {"network": network, "node": node, "range": range_name, "address": address, **extra}


def _hint_note(network: Network, hint: str, chosen: str, existing: str | None,
               used: UsedAddresses, range_name: str) -> str | None:
    """Why the operator's address was not the one allocated (Crowbar skipped bad hints silently)."""
    if str(ipaddress.ip_address(hint)) == chosen:
        return None
    if existing is not None and existing == chosen:
        return f"the node already has {existing} on {network.name!r}; release it first to change it"
    value = ipaddress.ip_address(hint)
    problem = address_problem(network.subnet, value)
    if problem:
        return f"{hint} was not used: {problem}"
    if value in used:
        return f"{hint} was not used: it is already allocated"
    for other_name, span in network.ranges.items():
        if other_name != range_name and span.start.version == value.version \
                and span.start <= value <= span.end:
            return f"{hint} was not used: it is inside range {other_name!r} ({span})"
    return f"{hint} was not used"


def allocate(session: Session, network_name: str, node_key, range_name: str | None = None,
             address: str | None = None, actor: str = "system") -> dict:
    """The node's address on the network (see the module docstring for the order)."""
    range_name = range_name or "host"
    node = lookup.node_refs(session, [node_key])[0]
    if address is not None:
        try:
            address = str(ipaddress.ip_address(str(address).strip()))
        except ValueError:
            raise InvalidInput(f"network {network_name!r}: address {address!r} is not an IP address",
                               field="address") from None
    for _attempt in range(RETRIES):
        template, ids, network, group = _locked_network(session, network_name)
        network_id = ids[network_name]
        existing = session.connection().execute(
            _Q_EXISTING, {"network_id": network_id, "node_id": node.id}).first()
        used = _UsedInDatabase(session, group, network_id, network.ranges)
        chosen = choose_address(network, range_name, used,
                                existing=existing.address if existing else None, hint=address)
        text = str(chosen)
        if existing is not None and existing.address == text:
            out = _allocation_dict(network_name, node.name, existing.range, text, created=False)
            if address is not None:
                out["note"] = _hint_note(network, address, text, existing.address, used, range_name)
            return out
        resolved, span = resolve_range(network, range_name)
        values = {"network_id": network_id, "node_id": node.id, "range": resolved,
                  "address": text, "address_key": address_key(chosen)}
        try:
            with session.begin_nested():
                if existing is not None:  # its old address is no longer valid (renumbered)
                    session.execute(update(ALLOCS).where(ALLOCS.c.id == existing.id).values(**values))
                else:
                    session.connection().execute(_INSERT_ALLOCATION, {"created_at": utcnow(), **values})
        except IntegrityError:
            continue  # a concurrent allocation took it first: look again
        record(session, [{"object_type": "node", "object_id": node.id, "action": "allocate",
                          "actor": actor, "message": f"{network_name} {text} ({resolved})"}])
        out = _allocation_dict(network_name, node.name, resolved, text, created=True)
        if existing is not None:
            out["previous_address"] = existing.address
        if address is not None:
            note = _hint_note(network, address, text, None, used, range_name)
            if note:
                out["note"] = note
        return out
    raise Conflict(f"network {network_name!r}: could not allocate an address for {node.name!r} "
                   f"after {RETRIES} attempts (concurrent allocations kept taking it); try again")


def allocate_many(session: Session, network_name: str, node_keys: list, range_name: str | None = None,
                  actor: str = "system") -> list[dict]:
    """Allocate for many nodes in one transaction: one lock, one read of what is taken, one
    executemany. All or nothing: when the range runs out, nothing is allocated."""
    range_name = range_name or "host"
    nodes = lookup.node_refs(session, node_keys)
    template, ids, network, group = _locked_network(session, network_name)
    network_id = ids[network_name]
    existing = {}
    node_ids = [node_id for node_id, _name in nodes]
    for part in chunks(node_ids):
        existing.update(session.execute(select(ALLOCS.c.node_id, ALLOCS.c.address)
                                        .where(ALLOCS.c.network_id == network_id,
                                               ALLOCS.c.node_id.in_(part))).all())
    used = _used_addresses(session, group)
    resolved, _span = resolve_range(network, range_name)
    out, rows, stale = [], [], []
    for node_id, node_name in nodes:
        current = existing.get(node_id)
        chosen = choose_address(network, range_name, used, existing=current)
        text = str(chosen)
        if current == text:
            out.append(_allocation_dict(network_name, node_name, resolved, text, created=False))
            continue
        if current is not None:
            stale.append(node_id)
        used.add(chosen)
        rows.append({"network_id": network_id, "node_id": node_id, "range": resolved, "address": text,
                     "address_key": address_key(chosen), "created_at": utcnow()})
        out.append(_allocation_dict(network_name, node_name, resolved, text, created=True))
    for part in chunks(stale):
        session.execute(delete(ALLOCS).where(ALLOCS.c.network_id == network_id,
                                              ALLOCS.c.node_id.in_(part)))
    if rows:
        session.execute(insert(ALLOCS), rows)
        record(session, [{"object_type": "node", "object_id": r["node_id"], "action": "allocate",
                          "actor": actor, "message": f"{network_name} {r['address']} ({resolved})"}
                         for r in rows])
    return out


def allocate_for(session: Session, network_name: str, *, node=None, nodes: list | None = None,
                 range_name: str | None = None, address: str | None = None,
                 actor: str = "system") -> dict | list[dict]:
    """One node's address (`node`, optionally trying `address` first: `allocate`), or many nodes'
    in one transaction (`nodes`: `allocate_many`, a list back). Exactly one of `node` and
    `nodes`; `address` goes with `node` only."""
    if nodes is not None:
        if node is not None or address is not None:
            raise InvalidInput("give node (and address) or nodes, not both", field="nodes")
        return allocate_many(session, network_name, nodes, range_name, actor=actor)
    if not node:
        raise InvalidInput("node: which node to allocate for", field="node")
    return allocate(session, network_name, node, range_name, address, actor=actor)


def release(session: Session, network_name: str, node_key, actor: str = "system") -> dict:
    node = lookup.node_refs(session, [node_key])[0]
    template, ids = read_template(session)
    get_network(template, network_name)
    row = session.execute(select(ALLOCS.c.id, ALLOCS.c.address, ALLOCS.c.range).where(
        ALLOCS.c.network_id == ids[network_name], ALLOCS.c.node_id == node.id)).first()
    if row is None:
        raise NotFound(f"node {node.name!r} has no address on network {network_name!r}", field="node")
    session.execute(delete(ALLOCS).where(ALLOCS.c.id == row.id))
    record(session, [{"object_type": "node", "object_id": node.id, "action": "release",
                      "actor": actor, "message": f"{network_name} {row.address} ({row.range})"}])
    return _allocation_dict(network_name, node.name, row.range, row.address, released=True)


def list_allocations(session: Session, network_name: str, limit: int | None = None,
                     after: str | None = None) -> list[dict]:
    """The network's allocations in address order: `limit` of them after the address `after`
    (all without)."""
    template, ids = read_template(session)
    get_network(template, network_name)
    try:
        after_key = address_key(after) if after is not None else None
    except ValueError:
        raise InvalidInput(f"{after!r} is not an IP address", field="marker") from None
    rows = session.execute(keyset(
        select(ALLOCS.c.id, ALLOCS.c.range, ALLOCS.c.address, Node.name)
        .join(Node, Node.id == ALLOCS.c.node_id).where(ALLOCS.c.network_id == ids[network_name]),
        ALLOCS.c.address_key, limit, after_key)).all()
    return [_allocation_dict(network_name, r.name, r.range, r.address, id=r.id) for r in rows]


def node_addresses(session: Session, node_ids: list[int]) -> dict[int, dict[str, str]]:
    """node id -> {network name: address}."""
    names = dict(session.execute(select(NETS.c.id, NETS.c.name)).all())
    out: dict[int, dict[str, str]] = {node_id: {} for node_id in node_ids}
    for part in chunks(node_ids):
        for node_id, network_id, address in session.execute(
                select(ALLOCS.c.node_id, ALLOCS.c.network_id, ALLOCS.c.address)
                .where(ALLOCS.c.node_id.in_(part))):
            out[node_id][names[network_id]] = address
    return out

"""Networks in the database: the template, IP allocation, node interface plans, Neutron.

The rules live in `crowbar.network` (pure); this module stores what they accept and serialises
what must not race.

Template
- The database holds one network template (`network_settings` + `networks` + `network_ranges`).
  A fresh server's database gets the built-in default, or the template file named by
  `CROWBAR_NETWORK_TEMPLATE` (`seed_template`, called once by bootstrap.prepare).
- Every change (import, create, update, delete) builds the whole new template and runs
  `template_problems` on it first: nothing is written when a rule is broken, and the 422 error
  names the network, the field and the reason (and lists every other problem).
- Changes after nodes are deployed: `preview=True` returns the field-by-field diff, the nodes
  whose interface plan changes and the allocations the change would invalidate (outside the new
  subnet, outside their changed range, range or network removed), and writes nothing.
  Applying a change that invalidates allocations is refused (409, naming them) unless
  `force=True`; then each one is re-allocated from its range (falling back to `host`) in the
  new network, and the response lists every move (old -> new). Deleting a network that still
  has allocations likewise needs `force` and releases them. Nothing moves silently.

IP allocation (`allocate`): the node's existing allocation on the network, else a valid free
hint, else the lowest free address of the range (falling back to `host`), using
crowbar.network.ipam.choose_address. Addresses are taken across every network whose subnet
overlaps (admin, bmc and bmc_vlan share 192.168.124.0/24), so they are never handed out twice:
- one network: UNIQUE(network_id, address) and UNIQUE(network_id, node_id) in the database;
- networks sharing a subnet: the allocator locks the rows of all of them (PostgreSQL: SELECT ...
  FOR UPDATE, in id order so that two allocators never deadlock; SQLite: every transaction is
  BEGIN IMMEDIATE, one writer at a time) before it reads what is taken;
- whatever slips through (a row inserted by another path) fails the UNIQUE constraint; the
  insert runs in a savepoint and is retried with a fresh view.
`allocate_many` does the same for many nodes in one transaction (one lock, one read, one
executemany): the bulk path for thousands of nodes.

Node inventory: the interface plan reads the node's NICs from `node.discovery["nics"]`, a list of
{"name": "eth0", "mac": "52:54:00:12:34:56", "speed": 1000 (Mb/s, or "1g", "10g"...),
"driver": "e1000e", "bus": "0000:01:00.0"}, and the hardware model for the template's
interface_map from `node.discovery["product_name"]` (or `discovery["dmi"]["product_name"]`).
The conduit_map's role regex is matched against the names of the roles bound to the node.

Neutron: the tenant VLAN range starts at nova_fixed's VLAN (crowbar.network.neutron); the fixed
network itself is kept as a provider network on that first tag (created with the template, moved
when nova_fixed's VLAN changes), so tenant networks get 501, 502... Segments are allocated by
inserting (type, physical network, id) under a UNIQUE constraint, retried on IntegrityError.
"""

from __future__ import annotations

import ipaddress
import os
import re
import uuid
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any, Iterable, Mapping

import yaml
from sqlalchemy import bindparam, delete, func, insert, select, update
from sqlalchemy.exc import IntegrityError
from sqlalchemy.orm import Session

from crowbar.db.events import record
from crowbar.db.sql import chunks, is_postgresql, keyset
from crowbar.db.models import Node, NodeRole, Role, utcnow
from crowbar.db.network_models import (
    NetworkAllocation, NetworkRange, NetworkRow, NetworkSettings, NeutronSegment,
)
from crowbar.errors import Conflict, CrowbarError, InvalidInput, NotFound
from crowbar.network import linuxbridge, neutron
from crowbar.network.ipam import UsedAddresses, choose_address, resolve_range
from crowbar.network.model import (
    BusOrder, ConduitMapEntry, Network, NetworkTemplate, NetworkValidationError, address_problem,
    default_template, diff_templates, export_network, export_template, load_network,
    load_template, segment_subnet, template_problems,
)
from crowbar.network.plan import plan_interfaces
from crowbar.network.render import render_ifupdown, render_netplan, render_networkd
from crowbar.services import lookup

ENV_TEMPLATE = "CROWBAR_NETWORK_TEMPLATE"
SETTINGS_ID = 1
RETRIES = 50
NETWORK_NAME = re.compile(r"^[A-Za-z0-9_][A-Za-z0-9_.-]{0,63}$")
PLAN_FORMATS = ("json", "networkd", "netplan", "ifupdown")
NEUTRON_DEFAULTS = {"physical_network": neutron.DEFAULT_PHYSNET,
                    "tenant_vlan_count": neutron.DEFAULT_TENANT_VLAN_COUNT,
                    "vni_ranges": [list(neutron.DEFAULT_VNI_RANGE)],
                    "tenant_network_types": ["vlan"]}
NEUTRON_FILES = {"ml2": "/etc/neutron/plugins/ml2/ml2_conf.ini",
                 "linuxbridge": "/etc/neutron/plugins/ml2/linuxbridge_agent.ini",
                 "dhcp": "/etc/neutron/dhcp_agent.ini",
                 "l3": "/etc/neutron/l3_agent.ini"}
PORT_DEVICE_PREFIXES = (linuxbridge.TAP_PREFIX, linuxbridge.DHCP_DEVICE_PREFIX,
                        linuxbridge.ROUTER_INTERNAL_PREFIX, linuxbridge.ROUTER_GATEWAY_PREFIX)
TUNNEL_ID_IN_USE = "Unable to create the network. The tunnel ID {id} is in use."

_nets = NetworkRow.__table__
_ranges = NetworkRange.__table__
_allocs = NetworkAllocation.__table__
_segments = NeutronSegment.__table__
_settings = NetworkSettings.__table__

# The allocator's statements, built once: one allocation per transaction runs these and little
# else, so building and cache-keying them per call would cost more than executing them.
_Q_VERSION = select(_settings.c.version).where(_settings.c.id == SETTINGS_ID)
_Q_EXISTING = select(_allocs.c.id, _allocs.c.address, _allocs.c.range).where(
    _allocs.c.network_id == bindparam("network_id"), _allocs.c.node_id == bindparam("node_id"))
_IN_GROUP = _allocs.c.network_id.in_(bindparam("group", expanding=True))
_IN_SPAN = (_allocs.c.address_key >= bindparam("low"), _allocs.c.address_key <= bindparam("high"))
_Q_TAKEN = select(_allocs.c.id).where(_IN_GROUP, _allocs.c.address_key == bindparam("key")).limit(1)
_Q_SPAN_STATS = select(func.count(), func.max(_allocs.c.address_key)).where(_IN_GROUP, *_IN_SPAN)
_Q_SPAN_KEYS = select(_allocs.c.address_key).where(_IN_GROUP, *_IN_SPAN)
SCAN_BATCH = 64
_Q_SPAN_SCAN = _Q_SPAN_KEYS.order_by(_allocs.c.address_key).limit(SCAN_BATCH)
_Q_EPOCH = select(_settings.c.released).where(_settings.c.id == SETTINGS_ID)
_Q_CURSOR = select(_ranges.c.cursor, _ranges.c.cursor_epoch).where(
    _ranges.c.network_id == bindparam("network_id"), _ranges.c.name == bindparam("range_name"))
_SET_CURSOR = update(_ranges).where(
    _ranges.c.network_id == bindparam("nid"), _ranges.c.name == bindparam("rname")).values(
    cursor=bindparam("new_cursor"), cursor_epoch=bindparam("new_epoch"))
# Dialects whose migration installed the release triggers that keep the cursors honest.
CURSOR_DIALECTS = ("sqlite", "postgresql")
_INSERT_ALLOCATION = insert(_allocs)


# ---------------------------------------------------------------------------------------------
# Errors

class TemplateInvalid(InvalidInput):
    """Every rule a template breaks; the first one is the headline (network, field, reason)."""

    def __init__(self, problems: list[NetworkValidationError]):
        first = problems[0]
        more = f" (and {len(problems) - 1} more problem{'s' if len(problems) > 2 else ''})" \
            if len(problems) > 1 else ""
        super().__init__(first.message + more, field=first.field)
        self.network, self.reason, self.problems = first.network, first.reason, problems

    def to_dict(self) -> dict:
        body = super().to_dict()
        body.update(network=self.network, reason=self.reason,
                    problems=[{"network": p.network, "field": p.field, "reason": p.reason,
                               "message": p.message} for p in self.problems])
        return body


class TunnelIdInUse(Conflict):
    def __init__(self, vni: int):
        super().__init__(TUNNEL_ID_IN_USE.format(id=vni), field="segmentation_id")


def _invalid(exc: NetworkValidationError) -> TemplateInvalid:
    return TemplateInvalid([exc])


# ---------------------------------------------------------------------------------------------
# Small helpers

def address_key(address: Any) -> str:
    """The address as 32 hex digits: SQL orders and compares these like the integers they are."""
    value = address if isinstance(address, int) else int(ipaddress.ip_address(address))
    return format(value, "032x")


def _sharing(template: NetworkTemplate, network: Network) -> list[Network]:
    """Networks whose addresses can collide with `network`'s: their subnets overlap (itself too).
    A valid template keeps overlapping subnets on one segment (see model.same_segment)."""
    return [other for other in template.networks.values()
            if other.subnet.version == network.subnet.version
            and other.subnet.overlaps(network.subnet)]


def _lock_networks(session: Session, ids: Iterable[int]) -> None:
    """PostgreSQL: lock these network rows until the transaction ends, in id order (no deadlock).
    SQLite needs nothing: each transaction began with BEGIN IMMEDIATE, so it is the only writer."""
    ids = sorted(set(ids))
    if ids and is_postgresql(session):
        session.execute(select(_nets.c.id).where(_nets.c.id.in_(ids)).order_by(_nets.c.id)
                        .with_for_update())


def _lock_template(session: Session) -> None:
    """Before changing the template: the settings row, then every network row, in id order."""
    if is_postgresql(session):
        session.execute(select(_settings.c.id).where(_settings.c.id == SETTINGS_ID).with_for_update())
        session.execute(select(_nets.c.id).order_by(_nets.c.id).with_for_update())


# ---------------------------------------------------------------------------------------------
# The template in the database

@dataclass(frozen=True)
class _Stored:
    template: NetworkTemplate
    ids: Mapping[str, int]  # network name -> row id
    version: str | None


_CACHE: dict[str, _Stored] = {}
_CACHE_SIZE = 16


def _read_stored(session: Session) -> _Stored:
    """The stored template and each network's row id. Read with Core (always the committed
    state, never stale ORM objects); parsed once per version token and process."""
    version = session.connection().execute(_Q_VERSION).scalar()
    if version and version in _CACHE:
        return _CACHE[version]
    settings = session.execute(select(_settings).where(_settings.c.id == SETTINGS_ID)).first()
    rows = session.execute(select(_nets).order_by(_nets.c.position, _nets.c.id)).all()
    ranges: dict[int, dict[str, tuple[str, str]]] = {}
    for r in session.execute(select(_ranges).order_by(_ranges.c.network_id, _ranges.c.position,
                                                      _ranges.c.id)):
        ranges.setdefault(r.network_id, {})[r.name] = (r.first, r.last)
    networks = {}
    for row in rows:
        networks[row.name] = Network(
            name=row.name, subnet=row.subnet, conduit=row.conduit, category=row.category,
            vlan=row.vlan, use_vlan=row.use_vlan, add_bridge=row.add_bridge, mtu=row.mtu,
            router=row.router, router_pref=row.router_pref, team_mode=row.team_mode,
            use_team=row.use_team, ranges=ranges.get(row.id, {}))
    if settings is None:
        template = NetworkTemplate(networks=networks)
    else:
        template = NetworkTemplate(
            mode=settings.mode, teaming_mode=settings.teaming_mode,
            conduit_map=tuple(ConduitMapEntry(e["pattern"], e["conduits"])
                              for e in settings.conduit_map or []),
            interface_map=tuple(BusOrder(e["pattern"], e["bus_order"])
                                for e in settings.interface_map or []),
            networks=networks)
    stored = _Stored(template, {row.name: row.id for row in rows}, version)
    if version:
        if len(_CACHE) >= _CACHE_SIZE:
            _CACHE.clear()
        _CACHE[version] = stored
    return stored


def _read_template(session: Session) -> tuple[NetworkTemplate, dict[str, int]]:
    stored = _read_stored(session)
    return stored.template, dict(stored.ids)


def current_template(session: Session) -> NetworkTemplate:
    return _read_template(session)[0]


def _network_values(network: Network, position: int) -> dict:
    return {"position": position, "category": network.category, "subnet": str(network.subnet),
            "vlan": network.vlan, "use_vlan": network.use_vlan, "add_bridge": network.add_bridge,
            "mtu": network.mtu, "conduit": network.conduit,
            "router": str(network.router) if network.router is not None else None,
            "router_pref": network.router_pref, "team_mode": network.team_mode,
            "use_team": network.use_team, "updated_at": utcnow()}


def _store_template(session: Session, template: NetworkTemplate, ids: dict[str, int]) -> dict[str, int]:
    """Write `template` over the stored one: rows of kept networks are updated in place (their
    allocations stay), removed ones are deleted (their allocations with them). Returns the ids."""
    exported = export_template(template)
    settings = {"mode": template.mode, "teaming_mode": template.teaming_mode,
                "conduit_map": exported["conduit_map"],
                "interface_map": exported.get("interface_map", []), "updated_at": utcnow(),
                "version": uuid.uuid4().hex}
    if session.execute(select(_settings.c.id).where(_settings.c.id == SETTINGS_ID)).first():
        session.execute(update(_settings).where(_settings.c.id == SETTINGS_ID).values(**settings))
    else:
        session.execute(insert(_settings).values(id=SETTINGS_ID, neutron={}, **settings))
    removed = [ids[name] for name in ids if name not in template.networks]
    if removed:
        session.execute(delete(_nets).where(_nets.c.id.in_(removed)))
    new_ids = {}
    for position, (name, network) in enumerate(template.networks.items()):
        values = _network_values(network, position)
        if name in ids:
            session.execute(update(_nets).where(_nets.c.id == ids[name]).values(**values))
            new_ids[name] = ids[name]
            session.execute(delete(_ranges).where(_ranges.c.network_id == ids[name]))
        else:
            new_ids[name] = session.execute(
                insert(_nets).values(name=name, created_at=utcnow(), **values)).inserted_primary_key[0]
        if network.ranges:
            session.execute(insert(_ranges), [
                {"network_id": new_ids[name], "name": range_name, "position": i,
                 "first": str(span.start), "last": str(span.end)}
                for i, (range_name, span) in enumerate(network.ranges.items())])
    _sync_fixed_network(session, template)
    return new_ids


def _validate(template: NetworkTemplate) -> None:
    problems = template_problems(template)
    if problems:
        raise TemplateInvalid(problems)


def _parse_template(source: Mapping[str, Any] | str) -> NetworkTemplate:
    if isinstance(source, str):
        try:
            source = yaml.safe_load(source)
        except yaml.YAMLError as exc:
            raise InvalidInput(f"template: not valid YAML or JSON: {exc}".replace("\n", " "),
                               field="template") from None
    try:
        return load_template(source)
    except NetworkValidationError as exc:
        raise _invalid(exc) from None
    except (TypeError, ValueError, AttributeError) as exc:  # a shape the loader did not expect
        raise InvalidInput(f"template: {exc}", field="template") from None


def seed_template(session: Session) -> str | None:
    """Store the built-in default template (or `CROWBAR_NETWORK_TEMPLATE`'s file) in a database
    that has none yet. Returns where it came from, or None when a template was already there."""
    if session.execute(select(_settings.c.id).where(_settings.c.id == SETTINGS_ID)).first():
        return None
    path = os.environ.get(ENV_TEMPLATE)
    if path:
        try:
            text = Path(path).read_text("utf-8")
        except OSError as exc:
            raise InvalidInput(f"{ENV_TEMPLATE}={path}: {exc.strerror or exc}", field="template") from None
        try:
            template = _parse_template(text)
            _validate(template)
        except CrowbarError as exc:
            raise InvalidInput(f"{ENV_TEMPLATE}={path}: {exc.message}", field=exc.field) from None
        source = path
    else:
        template, source = default_template(), "built-in default"
    try:
        with session.begin_nested():
            _store_template(session, template, {})
    except IntegrityError:  # another server seeded the same database at the same moment
        return None
    record(session, [{"object_type": "network", "action": "seed",
                            "message": f"network template: {source}"}])
    return source


def export(session: Session) -> dict:
    """The stored template in the format `import_template` reads (round-trips)."""
    return export_template(current_template(session))


# ---------------------------------------------------------------------------------------------
# Listing networks

def _range_dict(span, used: int) -> dict:
    size = int(span.end) - int(span.start) + 1
    return {"start": str(span.start), "end": str(span.end), "size": max(size, 0), "used": used}


def _network_dict(network: Network, network_id: int, allocations: int,
                  range_use: Mapping[str, int] | None = None) -> dict:
    return {"id": network_id, "name": network.name, "category": network.category,
            "subnet": str(network.subnet), "vlan": network.vlan, "use_vlan": network.use_vlan,
            "add_bridge": network.add_bridge, "mtu": network.mtu, "conduit": network.conduit,
            "router": str(network.router) if network.router is not None else None,
            "router_pref": network.router_pref, "team_mode": network.team_mode,
            "use_team": network.use_team,
            "ranges": {name: _range_dict(span, (range_use or {}).get(name, 0))
                       for name, span in network.ranges.items()},
            "allocations": allocations}


def list_networks(session: Session) -> list[dict]:
    template, ids = _read_template(session)
    counts = dict(session.execute(select(_allocs.c.network_id, func.count())
                                  .group_by(_allocs.c.network_id)).all())
    return [_network_dict(n, ids[name], counts.get(ids[name], 0))
            for name, n in template.networks.items()]


def _get(template: NetworkTemplate, name: str) -> Network:
    network = template.networks.get(name)
    if network is None:
        known = ", ".join(template.networks) or "none"
        raise NotFound(f"network {name!r} does not exist (networks: {known})", field="network")
    return network


def show_network(session: Session, name: str) -> dict:
    template, ids = _read_template(session)
    network = _get(template, name)
    use = dict(session.execute(select(_allocs.c.range, func.count())
                               .where(_allocs.c.network_id == ids[name])
                               .group_by(_allocs.c.range)).all())
    out = _network_dict(network, ids[name], sum(use.values()), use)
    out["template"] = export_network(network)
    return out


# ---------------------------------------------------------------------------------------------
# Changing the template: impact, preview, apply

@dataclass
class _Affected:
    allocation_id: int
    network: str
    node: str
    node_id: int
    range: str
    address: str
    reason: str

    def to_dict(self) -> dict:
        return {"network": self.network, "node": self.node, "range": self.range,
                "address": self.address, "reason": self.reason}


def _allocation_problem(old: Network, new: Network, new_template: NetworkTemplate,
                        range_name: str, address: str) -> str | None:
    """Why an allocation made under `old` is not valid under `new`, or None."""
    value = ipaddress.ip_address(address)
    problem = address_problem(new.subnet, value, segment_subnet(new_template, new))
    if problem:
        return problem
    old_span = old.ranges.get(range_name)
    was_inside = old_span is not None and old_span.start <= value <= old_span.end
    if was_inside:
        span = new.ranges.get(range_name)
        if span is None:
            return f"range {range_name!r} is removed"
        if not span.start <= value <= span.end:
            return f"{value} is outside range {range_name!r} ({span})"
        return None
    # A static address (a hint outside its range) must stay out of the other ranges.
    for other_name, span in new.ranges.items():
        if other_name != range_name and span.start.version == value.version \
                and span.start <= value <= span.end:
            return f"{value} is inside range {other_name!r} ({span})"
    return None


def _impact(session: Session, old: NetworkTemplate, new: NetworkTemplate,
            ids: dict[str, int]) -> tuple[list[str], list[_Affected], list[_Affected]]:
    """(nodes whose interface plan changes, allocations the change invalidates, allocations
    of removed networks)."""
    diff = diff_templates(old, new)
    touched = set(diff.removed) | set(diff.changed)
    if diff.template:  # mode, conduit_map...: every node with an address may change
        touched = set(old.networks)
    touched_ids = [ids[name] for name in touched if name in ids]
    if not touched_ids:
        return [], [], []
    names = {v: k for k, v in ids.items()}
    rows = session.execute(
        select(_allocs.c.id, _allocs.c.network_id, _allocs.c.node_id, _allocs.c.range,
               _allocs.c.address, Node.name)
        .join(Node, Node.id == _allocs.c.node_id)
        .where(_allocs.c.network_id.in_(touched_ids))
        .order_by(_allocs.c.network_id, _allocs.c.address_key)).all()
    nodes: set[str] = set()
    invalid, removed = [], []
    for row in rows:
        network_name = names[row.network_id]
        nodes.add(row.name)
        if network_name in diff.removed:
            removed.append(_Affected(row.id, network_name, row.name, row.node_id, row.range,
                                     row.address, f"network {network_name!r} is removed"))
        elif network_name in diff.changed:
            reason = _allocation_problem(old.networks[network_name], new.networks[network_name],
                                         new, row.range, row.address)
            if reason:
                invalid.append(_Affected(row.id, network_name, row.name, row.node_id, row.range,
                                         row.address, reason))
    return sorted(nodes), invalid, removed


def _describe(items: list[_Affected], limit: int = 10) -> str:
    listed = "; ".join(f"{a.network}/{a.node} {a.address} ({a.reason})" for a in items[:limit])
    return listed + (f"; and {len(items) - limit} more" if len(items) > limit else "")


def _plan_moves(session: Session, template: NetworkTemplate, ids: dict[str, int],
                affected: list[_Affected]) -> tuple[list[dict], list[dict]]:
    """A new address in `template` for each affected allocation, as if the affected ones were
    already released: (rows to insert, moves to report). Deterministic: the affected allocations
    are served in the order of their old addresses."""
    rows, moves = [], []
    gone = [a.allocation_id for a in affected]
    for network_name in dict.fromkeys(a.network for a in affected):
        network = template.networks[network_name]
        group = [ids[n.name] for n in _sharing(template, network) if n.name in ids]
        keys = session.scalars(select(_allocs.c.address_key).where(
            _allocs.c.network_id.in_(group), _allocs.c.id.not_in(gone)))
        used = UsedAddresses(int(k, 16) for k in keys)
        for item in (a for a in affected if a.network == network_name):
            range_name, _span = resolve_range(network, item.range)
            new_address = choose_address(network, range_name, used)
            used.add(new_address)
            rows.append({"network_id": ids[network_name], "node_id": item.node_id,
                         "range": range_name, "address": str(new_address),
                         "address_key": address_key(new_address), "created_at": utcnow()})
            moves.append({"network": network_name, "node": item.node, "range": range_name,
                          "old_address": item.address, "new_address": str(new_address),
                          "reason": item.reason})
    return rows, moves


def _apply(session: Session, old: NetworkTemplate, new: NetworkTemplate, ids: dict[str, int], *,
           action: str, subject: str, preview: bool, force: bool, actor: str) -> dict:
    """Validate `new`, work out what it affects, and (unless previewing) store it."""
    _validate(new)
    diff = diff_templates(old, new)
    nodes, invalid, removed = _impact(session, old, new, ids)
    rows, moves = _plan_moves(session, new, ids, invalid) if invalid else ([], [])
    result = {"action": action, "subject": subject, "preview": preview, "applied": False,
              "changes": diff.to_dict(), "nodes": nodes,
              "allocations": [a.to_dict() for a in invalid],
              "released": [a.to_dict() for a in removed], "moves": moves}
    if preview:
        return result
    if (invalid or removed) and not force:
        parts = []
        if invalid:
            parts.append(f"would leave {len(invalid)} allocation(s) invalid: {_describe(invalid)}")
        if removed:
            parts.append(f"would release {len(removed)} allocation(s) of removed networks: "
                         f"{_describe(removed)}")
        raise Conflict(f"{action} {subject}: the change " + "; it ".join(parts) +
                       ". Nothing was changed: preview it, or apply it with force to "
                       + ("re-allocate" if invalid else "release") + " them", field="force")
    if invalid:
        for part in chunks([a.allocation_id for a in invalid]):
            session.execute(delete(_allocs).where(_allocs.c.id.in_(part)))
    new_ids = _store_template(session, new, ids)
    if rows:
        session.execute(insert(_allocs), rows)
    result["applied"] = True
    events = [{"object_type": "network", "object_id": new_ids.get(subject) or ids.get(subject),
               "action": action, "actor": actor,
               "message": f"{subject}: {len(diff.added)} added, {len(diff.removed)} removed, "
                          f"{len(diff.changed)} changed"}]
    events += [{"object_type": "node", "object_id": row["node_id"], "action": "reallocate", "actor": actor,
                "message": f"{m['network']} {m['old_address']} -> {m['new_address']}"}
               for row, m in zip(rows, moves)]
    events += [{"object_type": "node", "object_id": a.node_id, "action": "release", "actor": actor,
                "message": f"{a.network} {a.address} (network removed)"} for a in removed]
    record(session, events)
    return result


def import_template(session: Session, source: Mapping[str, Any] | str, *, preview: bool = False,
                    force: bool = False, actor: str = "system") -> dict:
    """Replace the whole template (networks missing from `source` are removed)."""
    new = _parse_template(source)
    _validate(new)
    _lock_template(session)
    old, ids = _read_template(session)
    return _apply(session, old, new, ids, action="import", subject="template", preview=preview,
                  force=force, actor=actor)


def _check_name(name: str) -> None:
    if not isinstance(name, str) or not NETWORK_NAME.match(name):
        raise _invalid(NetworkValidationError(
            name if isinstance(name, str) else None, "name",
            f"{name!r} is not a network name (letters, digits, '_', '.', '-'; at most 64)"))


def _load_network(name: str, data: Mapping[str, Any], template: NetworkTemplate) -> Network:
    if not isinstance(data, Mapping):
        raise _invalid(NetworkValidationError(name, "network", f"expected a mapping, got {data!r}"))
    try:
        return load_network(name, data, default_team_mode=template.teaming_mode)
    except NetworkValidationError as exc:
        raise _invalid(exc) from None


def create_network(session: Session, name: str, data: Mapping[str, Any], *, preview: bool = False,
                   actor: str = "system") -> dict:
    """Add a network (template format: subnet, conduit, vlan, ranges...)."""
    _check_name(name)
    data = dict(data)
    data.pop("name", None)
    _lock_template(session)
    old, ids = _read_template(session)
    if name in old.networks:
        raise Conflict(f"network {name!r} already exists", field="name")
    network = _load_network(name, data, old)
    new = replace(old, networks={**old.networks, name: network})
    return _apply(session, old, new, ids, action="create", subject=name, preview=preview,
                  force=False, actor=actor)


def update_network(session: Session, name: str, changes: Mapping[str, Any], *,
                   preview: bool = False, force: bool = False, actor: str = "system") -> dict:
    """Change some fields of a network. `ranges` are merged by name (a range set to null is
    removed); `subnet` given as CIDR replaces subnet and netmask; null clears vlan, router,
    router_pref."""
    if not isinstance(changes, Mapping):
        raise InvalidInput("expected a mapping of fields to change", field="body")
    _lock_template(session)
    old, ids = _read_template(session)
    current = _get(old, name)
    changes = dict(changes)
    if "name" in changes and changes["name"] != name:
        raise _invalid(NetworkValidationError(name, "name", "networks cannot be renamed; create "
                                              "the new one and delete the old one"))
    changes.pop("name", None)
    data = export_network(current)
    if "subnet" in changes and "netmask" not in changes:
        data.pop("netmask", None)
    if "ranges" in changes:
        ranges = changes.pop("ranges")
        if not isinstance(ranges, Mapping):
            raise _invalid(NetworkValidationError(name, "ranges", "expected a mapping of named ranges"))
        merged = dict(data["ranges"])
        for range_name, span in ranges.items():
            if span is None:
                merged.pop(range_name, None)
            else:
                merged[range_name] = span
        data["ranges"] = merged
    for key, value in changes.items():
        if value is None:
            data.pop(key, None)
        else:
            data[key] = value
    network = _load_network(name, data, old)
    new = replace(old, networks={k: (network if k == name else v) for k, v in old.networks.items()})
    return _apply(session, old, new, ids, action="update", subject=name, preview=preview,
                  force=force, actor=actor)


def delete_network(session: Session, name: str, *, preview: bool = False, force: bool = False,
                   actor: str = "system") -> dict:
    _lock_template(session)
    old, ids = _read_template(session)
    _get(old, name)
    new = replace(old, networks={k: v for k, v in old.networks.items() if k != name})
    return _apply(session, old, new, ids, action="delete", subject=name, preview=preview,
                  force=force, actor=actor)


# ---------------------------------------------------------------------------------------------
# IP allocation

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
        return self.conn.execute(select(func.count()).select_from(_allocs).where(
            _allocs.c.network_id.in_(self.network_ids))).scalar()

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
    keys = session.scalars(select(_allocs.c.address_key).where(_allocs.c.network_id.in_(network_ids)))
    return UsedAddresses(int(k, 16) for k in keys)


def _locked_network(session: Session, name: str) -> tuple[NetworkTemplate, dict[str, int], Network, list[int]]:
    """Lock `name` and the networks sharing its addresses, then make sure the template read is
    the one in force (a change of the template locks every network row, so it waits for us or
    we for it)."""
    locked: set[int] = set()
    for _attempt in range(5):
        stored = _read_stored(session)
        network = _get(stored.template, name)
        group = [stored.ids[n.name] for n in _sharing(stored.template, network)]
        if not is_postgresql(session):  # BEGIN IMMEDIATE: nobody else writes until we commit
            return stored.template, dict(stored.ids), network, group
        _lock_networks(session, set(group) - locked)
        locked |= set(group)
        if _read_stored(session).version == stored.version:
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
                    session.execute(update(_allocs).where(_allocs.c.id == existing.id).values(**values))
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
        existing.update(session.execute(select(_allocs.c.node_id, _allocs.c.address)
                                        .where(_allocs.c.network_id == network_id,
                                               _allocs.c.node_id.in_(part))).all())
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
        session.execute(delete(_allocs).where(_allocs.c.network_id == network_id,
                                              _allocs.c.node_id.in_(part)))
    if rows:
        session.execute(insert(_allocs), rows)
        record(session, [{"object_type": "node", "object_id": r["node_id"], "action": "allocate",
                                "actor": actor, "message": f"{network_name} {r['address']} ({resolved})"}
                               for r in rows])
    return out


def release(session: Session, network_name: str, node_key, actor: str = "system") -> dict:
    node = lookup.node_refs(session, [node_key])[0]
    template, ids = _read_template(session)
    _get(template, network_name)
    row = session.execute(select(_allocs.c.id, _allocs.c.address, _allocs.c.range).where(
        _allocs.c.network_id == ids[network_name], _allocs.c.node_id == node.id)).first()
    if row is None:
        raise NotFound(f"node {node.name!r} has no address on network {network_name!r}", field="node")
    session.execute(delete(_allocs).where(_allocs.c.id == row.id))
    record(session, [{"object_type": "node", "object_id": node.id, "action": "release",
                            "actor": actor, "message": f"{network_name} {row.address} ({row.range})"}])
    return _allocation_dict(network_name, node.name, row.range, row.address, released=True)


def list_allocations(session: Session, network_name: str, limit: int | None = None,
                     after: str | None = None) -> list[dict]:
    """The network's allocations in address order: `limit` of them after the address `after`
    (all without)."""
    template, ids = _read_template(session)
    _get(template, network_name)
    try:
        after_key = address_key(after) if after is not None else None
    except ValueError:
        raise InvalidInput(f"{after!r} is not an IP address", field="marker") from None
    rows = session.execute(keyset(
        select(_allocs.c.id, _allocs.c.range, _allocs.c.address, Node.name)
        .join(Node, Node.id == _allocs.c.node_id).where(_allocs.c.network_id == ids[network_name]),
        _allocs.c.address_key, limit, after_key)).all()
    return [_allocation_dict(network_name, r.name, r.range, r.address, id=r.id) for r in rows]


def node_addresses(session: Session, node_ids: list[int]) -> dict[int, dict[str, str]]:
    """node id -> {network name: address}."""
    names = dict(session.execute(select(_nets.c.id, _nets.c.name)).all())
    out: dict[int, dict[str, str]] = {node_id: {} for node_id in node_ids}
    for part in chunks(node_ids):
        for node_id, network_id, address in session.execute(
                select(_allocs.c.node_id, _allocs.c.network_id, _allocs.c.address)
                .where(_allocs.c.node_id.in_(part))):
            out[node_id][names[network_id]] = address
    return out


# ---------------------------------------------------------------------------------------------
# Interface plans

def _inventory(node_name: str, discovery: Any) -> tuple[list, str | None]:
    discovery = discovery or {}
    nics = discovery.get("nics") if isinstance(discovery, Mapping) else None
    if not nics:
        raise Conflict(f"node {node_name!r} has no NIC inventory yet: discovery['nics'] is empty "
                       "(the node's agent reports it; a list of {name, mac, speed, driver, bus})",
                       field="discovery.nics")
    if not isinstance(nics, list):
        raise InvalidInput(f"node {node_name!r}: discovery['nics'] must be a list of NICs",
                           field="discovery.nics")
    product = discovery.get("product_name") or (discovery.get("dmi") or {}).get("product_name")
    return nics, product


def _roles_of(session: Session, node_ids: list[int]) -> dict[int, list[str]]:
    out: dict[int, list[str]] = {node_id: [] for node_id in node_ids}
    for part in chunks(node_ids):
        for node_id, role in session.execute(select(NodeRole.node_id, Role.name)
                                             .join(Role, Role.id == NodeRole.role_id)
                                             .where(NodeRole.node_id.in_(part))
                                             .order_by(NodeRole.id)):
            out[node_id].append(role)
    return out


def render_plan(plan, fmt: str) -> dict:
    if fmt == "json":
        return plan.to_dict()
    if fmt == "networkd":
        files = {f"/etc/systemd/network/{name}": text for name, text in render_networkd(plan).items()}
    elif fmt == "netplan":
        files = {"/etc/netplan/50-crowbar.yaml": render_netplan(plan)}
    elif fmt == "ifupdown":
        files = {"/etc/network/interfaces": render_ifupdown(plan)}
    else:
        raise InvalidInput(f"format {fmt!r} is not one of {', '.join(PLAN_FORMATS)}", field="format")
    return {"node": plan.node, "format": fmt, "files": files}


def node_plans(session: Session, node_keys: list, fmt: str = "json",
               template: NetworkTemplate | None = None) -> list[dict]:
    """Interface plans of many nodes, rendered as `fmt`: a handful of queries whatever the count."""
    if fmt not in PLAN_FORMATS:
        raise InvalidInput(f"format {fmt!r} is not one of {', '.join(PLAN_FORMATS)}", field="format")
    template = template or current_template(session)
    nodes = lookup.node_refs(session, node_keys)
    ids = [node_id for node_id, _name in nodes]
    discovery: dict[int, Any] = {}
    for part in chunks(ids):
        discovery.update(session.execute(select(Node.id, Node.discovery).where(Node.id.in_(part))).all())
    addresses = node_addresses(session, ids)
    roles = _roles_of(session, ids)
    out = []
    for node_id, name in nodes:
        nics, product = _inventory(name, discovery.get(node_id))
        plan = plan_interfaces(name, nics, addresses[node_id], template, roles[node_id], product)
        out.append(render_plan(plan, fmt))
    return out


def node_plan(session: Session, node_key, fmt: str = "json") -> dict:
    return node_plans(session, [node_key], fmt)[0]


# ---------------------------------------------------------------------------------------------
# Neutron

def neutron_settings(session: Session) -> dict:
    stored = session.execute(select(_settings.c.neutron).where(_settings.c.id == SETTINGS_ID)).scalar()
    return {**NEUTRON_DEFAULTS, **(stored or {})}


def _vlan_range(session: Session, template: NetworkTemplate, settings: dict) -> tuple[int, int]:
    try:
        return neutron.tenant_vlan_range(template, settings["tenant_vlan_count"])
    except NetworkValidationError as exc:
        raise _invalid(exc) from None


def _vni_ranges(settings: dict) -> list[tuple[int, int]]:
    return linuxbridge.parse_vni_ranges([f"{low}:{high}" for low, high in settings["vni_ranges"]])


def set_neutron_settings(session: Session, changes: Mapping[str, Any], actor: str = "system") -> dict:
    """Change physical_network, tenant_vlan_count, vni_ranges ([[min, max], ...] or "min:max"
    strings) or tenant_network_types (vlan, vxlan)."""
    _lock_template(session)
    settings = neutron_settings(session)
    unknown = set(changes) - set(NEUTRON_DEFAULTS)
    if unknown:
        raise InvalidInput(f"unknown Neutron setting(s): {', '.join(sorted(unknown))} (known: "
                           f"{', '.join(NEUTRON_DEFAULTS)})", field=sorted(unknown)[0])
    new = {**settings, **{k: v for k, v in changes.items() if v is not None}}
    if not isinstance(new["physical_network"], str) or not new["physical_network"].strip() \
            or ":" in new["physical_network"]:
        raise InvalidInput("Empty physical network name." if not str(new["physical_network"]).strip()
                           else f"physical_network {new['physical_network']!r} may not contain ':'",
                           field="physical_network")
    count = new["tenant_vlan_count"]
    if isinstance(count, bool) or not isinstance(count, int) or count < 1:
        raise InvalidInput(f"tenant_vlan_count {count!r} must be an integer of at least 1",
                           field="tenant_vlan_count")
    ranges = new["vni_ranges"]
    if isinstance(ranges, str):
        ranges = [ranges]
    entries = [r if isinstance(r, str) else ":".join(str(x) for x in r) for r in ranges]
    new["vni_ranges"] = [list(r) for r in linuxbridge.parse_vni_ranges(entries)]
    types = new["tenant_network_types"]
    if isinstance(types, str):
        types = [t.strip() for t in types.split(",") if t.strip()]
    if not types or any(t not in ("vlan", "vxlan") for t in types):
        raise InvalidInput(f"tenant_network_types {types!r}: each must be vlan or vxlan",
                           field="tenant_network_types")
    new["tenant_network_types"] = list(types)
    template = current_template(session)
    if template.networks.get(neutron.FIXED_NETWORK) is not None:
        _vlan_range(session, template, new)
    session.execute(update(_settings).where(_settings.c.id == SETTINGS_ID).values(neutron=new))
    _sync_fixed_network(session, template, new)
    record(session, [{"object_type": "network", "action": "neutron-settings", "actor": actor,
                            "message": ", ".join(f"{k}={new[k]}" for k in sorted(changes))}])
    return new


def _segment_dict(row) -> dict:
    return {"id": row.network_id, "name": row.name, "network_type": row.network_type,
            "physical_network": row.physical_network or None,
            "segmentation_id": row.segmentation_id, "provider": row.provider,
            "bridge": linuxbridge.bridge_name(row.network_id),
            "dhcp_namespace": linuxbridge.dhcp_namespace(row.network_id)}


def _sync_fixed_network(session: Session, template: NetworkTemplate,
                        settings: dict | None = None) -> None:
    """Keep nova_fixed as a provider VLAN network on its own tag (the first of the tenant range),
    so that tenant networks start one above it, as Crowbar's Neutron deployment did."""
    fixed = template.networks.get(neutron.FIXED_NETWORK)
    if fixed is None or fixed.vlan is None:
        return
    settings = settings or neutron_settings(session)
    physnet = settings["physical_network"]
    row = session.execute(select(_segments).where(_segments.c.provider.is_(True),
                                                  _segments.c.name == neutron.FIXED_NETWORK)).first()
    holder = session.execute(select(_segments).where(
        _segments.c.network_type == "vlan", _segments.c.physical_network == physnet,
        _segments.c.segmentation_id == fixed.vlan)).first()
    if row is not None and (row.segmentation_id, row.physical_network) == (fixed.vlan, physnet):
        return
    if holder is not None and (row is None or holder.id != row.id):
        raise Conflict(f"network {neutron.FIXED_NETWORK!r}: VLAN {fixed.vlan} on physical network "
                       f"{physnet} is in use by tenant network {holder.name or holder.network_id!r} "
                       f"({holder.network_id}); delete it or choose another vlan", field="vlan")
    if row is not None:
        session.execute(update(_segments).where(_segments.c.id == row.id)
                        .values(segmentation_id=fixed.vlan, physical_network=physnet))
    else:
        session.execute(insert(_segments).values(
            network_id=str(uuid.uuid4()), name=neutron.FIXED_NETWORK, network_type="vlan",
            physical_network=physnet, segmentation_id=fixed.vlan, provider=True, created_at=utcnow()))


def list_tenant_networks(session: Session) -> list[dict]:
    rows = session.execute(select(_segments).order_by(_segments.c.network_type,
                                                      _segments.c.physical_network,
                                                      _segments.c.segmentation_id)).all()
    return [_segment_dict(r) for r in rows]


def _used_segments(session: Session, network_type: str, physnet: str) -> set[int]:
    return set(session.scalars(select(_segments.c.segmentation_id).where(
        _segments.c.network_type == network_type, _segments.c.physical_network == physnet)))


def create_tenant_network(session: Session, name: str = "", network_type: str = "vlan",
                          physical_network: str | None = None, segmentation_id: int | None = None,
                          network_id: str | None = None, actor: str = "system") -> dict:
    """A tenant network and its segment: the lowest free id of the configured ranges, or the
    explicit `segmentation_id` of a provider network (inside the ranges or not)."""
    if network_type not in ("vlan", "vxlan"):
        raise InvalidInput(f"Invalid input for operation: network_type {network_type!r} is not "
                           "supported (vlan, vxlan).", field="network_type")
    if network_id is not None:
        try:
            network_id = str(uuid.UUID(str(network_id)))
        except ValueError:
            raise InvalidInput(f"Invalid input for operation: {network_id!r} is not a valid UUID.",
                               field="id") from None
    network_id = network_id or str(uuid.uuid4())
    settings = neutron_settings(session)
    if network_type == "vlan":
        physnet = physical_network or settings["physical_network"]
        if physnet != settings["physical_network"]:
            raise InvalidInput(f"Invalid input for operation: physical_network '{physnet}' unknown "
                               "for VLAN provider network.", field="physical_network")
        if segmentation_id is not None and not linuxbridge.is_valid_vlan_tag(segmentation_id):
            raise InvalidInput(f"Invalid input for operation: segmentation_id {segmentation_id!r} "
                               f"out of range ({linuxbridge.MIN_VLAN_TAG} through "
                               f"{linuxbridge.MAX_VLAN_TAG}).", field="segmentation_id")
        ranges = [_vlan_range(session, current_template(session), settings)] \
            if segmentation_id is None else []
    else:
        if physical_network:
            raise InvalidInput("Invalid input for operation: provider:physical_network specified "
                               "for VXLAN network.", field="physical_network")
        physnet = ""
        if segmentation_id is not None and not linuxbridge.is_valid_vni(segmentation_id):
            raise InvalidInput(f"Invalid input for operation: segmentation_id {segmentation_id!r} "
                               f"out of range ({linuxbridge.MIN_VXLAN_VNI} through "
                               f"{linuxbridge.MAX_VXLAN_VNI}).", field="segmentation_id")
        ranges = _vni_ranges(settings)
    if session.execute(select(_segments.c.id).where(_segments.c.network_id == network_id)).first():
        raise Conflict(f"Unable to create the network. The network {network_id} is in use.",
                       field="id")
    for _attempt in range(RETRIES):
        used = _used_segments(session, network_type, physnet)
        if segmentation_id is not None:
            if segmentation_id in used:
                raise neutron.VlanInUse(segmentation_id, physnet) if network_type == "vlan" \
                    else TunnelIdInUse(segmentation_id)
            chosen = segmentation_id
        else:
            chosen = neutron.first_free(ranges, used)
        try:
            with session.begin_nested():
                session.execute(insert(_segments).values(
                    network_id=network_id, name=name or "", network_type=network_type,
                    physical_network=physnet, segmentation_id=chosen,
                    provider=segmentation_id is not None, created_at=utcnow()))
        except IntegrityError:
            continue  # a concurrent create took this id: look again
        record(session, [{"object_type": "tenant_network", "action": "create", "actor": actor,
                                "message": f"{name or network_id}: {network_type} {physnet or ''}"
                                           f"{':' if physnet else ''}{chosen}".replace("  ", " ")}])
        row = session.execute(select(_segments).where(_segments.c.network_id == network_id)).first()
        return _segment_dict(row)
    raise Conflict(f"could not allocate a {network_type} segment after {RETRIES} attempts "
                   "(concurrent creates kept taking it); try again")


def _tenant_row(session: Session, key: str):
    rows = session.execute(select(_segments).where(_segments.c.network_id == key)).all() or \
        session.execute(select(_segments).where(_segments.c.name == key)).all()
    if not rows:
        rows = session.execute(select(_segments).where(_segments.c.network_id.startswith(key))).all() \
            if re.fullmatch(r"[0-9a-f-]{8,}", key) else []
    if not rows:
        raise NotFound(f"tenant network {key!r} does not exist", field="network")
    if len(rows) > 1:
        listed = ", ".join(f"{r.name or '-'} ({r.network_id})" for r in rows)
        raise Conflict(f"{key!r} names several tenant networks: {listed}; use the id", field="network")
    return rows[0]


def show_tenant_network(session: Session, key: str) -> dict:
    return _segment_dict(_tenant_row(session, key))


def delete_tenant_network(session: Session, key: str, actor: str = "system") -> dict:
    """Release the network's segment (back to the pool when it lies in the ranges)."""
    row = _tenant_row(session, key)
    session.execute(delete(_segments).where(_segments.c.id == row.id))
    record(session, [{"object_type": "tenant_network", "action": "delete", "actor": actor,
                            "message": f"{row.name or row.network_id}: {row.network_type} "
                                       f"{row.segmentation_id}"}])
    return {**_segment_dict(row), "deleted": True}


def whois(session: Session, device: str, ports: Iterable[Mapping] = (),
          routers: Iterable[Mapping] = (), networks: Iterable[Mapping] = ()) -> dict:
    """The tenant network, port or router a host device name belongs to. Networks come from the
    database (plus any given); ports and routers are not stored by Crowbar: pass them, e.g. from
    `openstack port list -f json`, to resolve tap/ns-/qr-/qg- devices."""
    device = (device or "").strip()
    if not device:
        raise InvalidInput("device name is empty", field="device")
    stored = [{"id": r.network_id, "name": r.name, "network_type": r.network_type,
               "segmentation_id": r.segmentation_id}
              for r in session.execute(select(_segments)).all()]
    all_networks = stored + [dict(n) for n in networks]
    ports, routers = [dict(p) for p in ports], [dict(r) for r in routers]
    owner = linuxbridge.whois(device, all_networks, ports, routers)
    if owner is None:
        hint = ""
        if device.startswith(PORT_DEVICE_PREFIXES) and not ports:
            hint = ("; ports are not stored in Crowbar: pass the port list (`openstack port list "
                    "-f json`) to resolve tap, ns-, qr- and qg- devices")
        elif device.startswith(linuxbridge.ROUTER_NAMESPACE_PREFIX) and not routers:
            hint = "; routers are not stored in Crowbar: pass the router list to resolve it"
        raise NotFound(f"device {device!r} matches no tenant network, port or router known to "
                       f"Crowbar{hint}", field="device")
    out = {"device": device, "kind": owner.kind, "id": owner.id, "name": owner.name}
    if owner.kind == "port":
        port = next(p for p in ports if str(p.get("id")) == owner.id)
        network_id = port.get("network_id")
        match = next((n for n in all_networks if n["id"] == network_id), None)
        if network_id:
            out["network"] = {"id": network_id, "name": match["name"] if match else None}
        for key in ("device_owner", "device_id"):
            if port.get(key):
                out[key] = port[key]
    if owner.kind == "network":
        match = next(n for n in all_networks if n["id"] == owner.id)
        out.update(network_type=match.get("network_type"),
                   segmentation_id=match.get("segmentation_id"))
    return out


def _neutron_plan(session: Session, node, template: NetworkTemplate):
    """The node's interface plan, with nova_fixed attached even when the node has no address on
    it: Neutron only needs the interface its conduit resolves to (the linuxbridge agent adds
    its own VLAN subinterfaces). The stand-in address is never shown or configured."""
    discovery = session.execute(select(Node.discovery).where(Node.id == node.id)).scalar()
    nics, product = _inventory(node.name, discovery)
    addresses = node_addresses(session, [node.id])[node.id]
    roles = _roles_of(session, [node.id])[node.id]
    fixed = template.networks.get(neutron.FIXED_NETWORK)
    if fixed is not None and fixed.name not in addresses and fixed.conduit != "bmc":
        spans = list(fixed.ranges.values())
        addresses = {**addresses, fixed.name: str(spans[0].start if spans
                                                  else next(fixed.subnet.hosts()))}
    return plan_interfaces(node.name, nics, addresses, template, roles, product)


def node_neutron(session: Session, node_key) -> dict:
    """ml2_conf.ini, linuxbridge_agent.ini, dhcp_agent.ini and l3_agent.ini for a node."""
    node = lookup.node_refs(session, [node_key])[0]
    template = current_template(session)
    settings = neutron_settings(session)
    start, end = _vlan_range(session, template, settings)
    plan = _neutron_plan(session, node, template)
    types = settings["tenant_network_types"]
    try:
        mappings = neutron.physical_interface_mappings(plan, settings["physical_network"])
        files = {
            NEUTRON_FILES["ml2"]: neutron.ml2_conf(
                template, physnet=settings["physical_network"],
                tenant_vlan_count=settings["tenant_vlan_count"],
                vni_range=tuple(settings["vni_ranges"][0]), tenant_network_types=types),
            NEUTRON_FILES["linuxbridge"]: neutron.linuxbridge_agent_ini(
                plan, physnet=settings["physical_network"], enable_vxlan="vxlan" in types),
            NEUTRON_FILES["dhcp"]: neutron.dhcp_agent_ini(),
            NEUTRON_FILES["l3"]: neutron.l3_agent_ini(),
        }
    except NetworkValidationError as exc:
        raise _invalid(exc) from None
    return {"node": node.name,
            "network_vlan_ranges": f"{settings['physical_network']}:{start}:{end}",
            "physical_interface_mappings": mappings, "files": files}

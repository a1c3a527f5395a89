"""Changing the stored template: import the whole of it, or create, update or delete one network,
each with a preview and, where allocations are affected, force.

Every change builds the whole new template and validates it (templates.validate) before anything
is written. Protocol of a change (`_apply`), inside the caller's transaction:
1. lock the template (`_db.lock_template`) and read the one in force;
2. work out the impact: the field-by-field diff, the nodes whose interface plan changes, the
   allocations the change invalidates (outside the new subnet, outside their changed range,
   range removed) and those of removed networks;
3. `preview=True`: return all that and write nothing;
4. invalidated allocations are refused (409, naming them) unless `force=True`; then each one is
   re-allocated from its range (falling back to `host`) in the new network, in the order of the
   old addresses, and the response lists every move (old -> new). Deleting a network that still
   has allocations likewise needs `force` and releases them. Nothing moves silently;
5. store the template (templates.store_template) and record the change, every move and every
   release in the event log;
6. re-queue the roles' noderoles the change affects (`_reruns`): a role declares in barclamp.yml
   which networks (and which of their fields) its runs derive values from (`reruns-on-networks`,
   stored as roles.reruns_on_networks); every *active* noderole of a role the change touches goes
   back to todo (or blocked) through the engine's requeue, as `noderoles retry` does, with an event
   each, and the engine blocks what hangs below it until it is active again, so those re-run too.
   The preview lists both (`reruns`, `reruns_after`). This module knows no role by name: the
   OpenStack roles declare nova_fixed (crowbar/openstack/barclamps/neutron/barclamp.yml).
"""

from __future__ import annotations

import ipaddress
import re
from dataclasses import dataclass, replace
from typing import Any, Mapping

from sqlalchemy import delete, insert, select
from sqlalchemy.orm import Session

from crowbar.db.events import record
from crowbar.db.models import Deployment, Node, NodeRole, Role, utcnow
from crowbar.db.session import signal_work
from crowbar.db.sql import chunks
from crowbar.engine import graph
from crowbar.engine.states import State
from crowbar.errors import Conflict, InvalidInput
from crowbar.network.ipam import UsedAddresses, choose_address, resolve_range
from crowbar.network.model import (
    Network, NetworkTemplate, NetworkValidationError, TemplateDiff, address_problem, diff_templates,
    export_network, load_network, segment_subnet,
)
from crowbar.services.network._db import ALLOCS, lock_template
from crowbar.services.network.allocations import address_key, sharing
from crowbar.services.network.templates import (
    get_network, invalid, parse_template, read_template, store_template, validate,
)

NETWORK_NAME = re.compile(r"^[A-Za-z0-9_][A-Za-z0-9_.-]{0,63}$")


# ---------------------------------------------------------------------------------------------
# Impact

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
        select(ALLOCS.c.id, ALLOCS.c.network_id, ALLOCS.c.node_id, ALLOCS.c.range,
               ALLOCS.c.address, Node.name)
        .join(Node, Node.id == ALLOCS.c.node_id)
        .where(ALLOCS.c.network_id.in_(touched_ids))
        .order_by(ALLOCS.c.network_id, ALLOCS.c.address_key)).all()
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
        group = [ids[n.name] for n in sharing(template, network) if n.name in ids]
        keys = session.scalars(select(ALLOCS.c.address_key).where(
            ALLOCS.c.network_id.in_(group), ALLOCS.c.id.not_in(gone)))
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


# ---------------------------------------------------------------------------------------------
# Roles that re-run

def _noderole_rows(session: Session, ids: list[int]) -> list[dict]:
    rows = []
    for part in chunks(ids):
        rows += session.execute(
            select(NodeRole.id, Role.name, Node.name, Deployment.name, NodeRole.state)
            .join(Role, Role.id == NodeRole.role_id).join(Node, Node.id == NodeRole.node_id)
            .join(Deployment, Deployment.id == NodeRole.deployment_id).where(NodeRole.id.in_(part))).all()
    return [{"id": i, "role": role, "node": node, "deployment": deployment, "state": state}
            for i, role, node, deployment, state in sorted(rows)]


def _reruns(session: Session, old: NetworkTemplate, new: NetworkTemplate,
            diff: TemplateDiff) -> tuple[list[dict], list[dict]]:
    """(the active noderoles of the roles whose `reruns_on_networks` the change touches, each with
    `because`; the noderoles below them that the engine blocks and re-runs after them)."""
    if not diff:
        return [], []
    because: dict[int, list[str]] = {}
    for role_id, watch in session.execute(select(Role.id, Role.reruns_on_networks)):
        reasons = [reason for network, fields in (watch or {}).items()
                   for reason in diff.reasons(network, fields, network in old.networks or network in new.networks)]
        if reasons:
            because[role_id] = reasons
    if not because:
        return [], []
    found = session.execute(select(NodeRole.id, NodeRole.role_id).where(
        NodeRole.role_id.in_(list(because)), NodeRole.state == State.ACTIVE.value)).all()
    why = dict(found)
    direct = _noderole_rows(session, sorted(why))
    for row in direct:
        row["because"] = because[why[row["id"]]]
    below = set(graph.descendants(session, list(why))) - set(why)
    after = [r for r in _noderole_rows(session, sorted(below))
             if r["state"] in (State.TODO.value, State.ACTIVE.value, State.ERROR.value)]
    return direct, after


def _requeue(session: Session, reruns: list[dict], action: str, subject: str, actor: str) -> None:
    if not reruns:
        return
    reasons = dict.fromkeys(reason for r in reruns for reason in r["because"])
    graph.requeue(session, [r["id"] for r in reruns], actor, f"network {action} {subject}: " + "; ".join(reasons))
    signal_work(session, "anneal")


# ---------------------------------------------------------------------------------------------
# Preview and apply

def _apply(session: Session, old: NetworkTemplate, new: NetworkTemplate, ids: dict[str, int], *,
           action: str, subject: str, preview: bool, force: bool, actor: str) -> dict:
    """Validate `new`, work out what it affects, and (unless previewing) store it."""
    validate(new)
    diff = diff_templates(old, new)
    nodes, invalid, removed = _impact(session, old, new, ids)
    rows, moves = _plan_moves(session, new, ids, invalid) if invalid else ([], [])
    reruns, reruns_after = _reruns(session, old, new, diff)
    result = {"action": action, "subject": subject, "preview": preview, "applied": False,
              "changes": diff.to_dict(), "nodes": nodes,
              "allocations": [a.to_dict() for a in invalid],
              "released": [a.to_dict() for a in removed], "moves": moves,
              "reruns": reruns, "reruns_after": reruns_after}
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
            session.execute(delete(ALLOCS).where(ALLOCS.c.id.in_(part)))
    new_ids = store_template(session, new, ids)
    if rows:
        session.execute(insert(ALLOCS), rows)
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
    _requeue(session, reruns, action, subject, actor)
    return result


# ---------------------------------------------------------------------------------------------
# The changes

def import_template(session: Session, source: Mapping[str, Any] | str, *, preview: bool = False,
                    force: bool = False, actor: str = "system") -> dict:
    """Replace the whole template (networks missing from `source` are removed)."""
    new = parse_template(source)
    validate(new)
    lock_template(session)
    old, ids = read_template(session)
    return _apply(session, old, new, ids, action="import", subject="template", preview=preview,
                  force=force, actor=actor)


def _check_name(name: str) -> None:
    if not isinstance(name, str) or not NETWORK_NAME.match(name):
        raise invalid(NetworkValidationError(
            name if isinstance(name, str) else None, "name",
            f"{name!r} is not a network name (letters, digits, '_', '.', '-'; at most 64)"))


def _load_network(name: str, data: Mapping[str, Any], template: NetworkTemplate) -> Network:
    if not isinstance(data, Mapping):
        raise invalid(NetworkValidationError(name, "network", f"expected a mapping, got {data!r}"))
    try:
        return load_network(name, data, default_team_mode=template.teaming_mode)
    except NetworkValidationError as exc:
        raise invalid(exc) from None


def create_network(session: Session, name: str | None, data: Mapping[str, Any], *, preview: bool = False,
                   actor: str = "system") -> dict:
    """Add a network (template format: subnet, conduit, vlan, ranges...); `name` None: not given."""
    if name is None:
        raise InvalidInput("name: a network needs a name", field="name")
    _check_name(name)
    data = dict(data)
    data.pop("name", None)
    lock_template(session)
    old, ids = read_template(session)
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
    lock_template(session)
    old, ids = read_template(session)
    current = get_network(old, name)
    changes = dict(changes)
    if "name" in changes and changes["name"] != name:
        raise invalid(NetworkValidationError(name, "name", "networks cannot be renamed; create "
                                              "the new one and delete the old one"))
    changes.pop("name", None)
    data = export_network(current)
    if "subnet" in changes and "netmask" not in changes:
        data.pop("netmask", None)
    if "ranges" in changes:
        ranges = changes.pop("ranges")
        if not isinstance(ranges, Mapping):
            raise invalid(NetworkValidationError(name, "ranges", "expected a mapping of named ranges"))
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
    lock_template(session)
    old, ids = read_template(session)
    get_network(old, name)
    new = replace(old, networks={k: v for k, v in old.networks.items() if k != name})
    return _apply(session, old, new, ids, action="delete", subject=name, preview=preview,
                  force=force, actor=actor)

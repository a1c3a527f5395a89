"""Neutron on Crowbar's networks: the Neutron settings, tenant network segments, which tenant
network, port or router a host device belongs to (`whois`), and a node's Neutron agent files.

Storage and orchestration only: the rules are crowbar.network.neutron (tenant VLAN range, the
agents' ini files) and crowbar.network.linuxbridge (ids, device and namespace names); in this
module `neutron` is that pure module.

- Settings (`neutron_settings`, `set_neutron_settings`): physical network, tenant VLAN count, VNI
  ranges, tenant network types, stored in the template's settings row. A change locks the
  template (`_db.lock_template`) and moves nova_fixed's provider segment with it.
- The tenant VLAN range starts at nova_fixed's VLAN; nova_fixed itself is kept as a provider
  network on that first tag (crowbar.services.network._fixed), so tenant networks get 501, 502...
- Segments are allocated by inserting (type, physical network, id) under a UNIQUE constraint in a
  savepoint, retried on IntegrityError (`_db.RETRIES` times): the lowest free id of the
  configured ranges, or the explicit id of a provider network.
- `node_neutron`: ml2_conf.ini, linuxbridge_agent.ini, dhcp_agent.ini and l3_agent.ini for a
  node, from its interface plan (crowbar.services.network.plans).
"""

from __future__ import annotations

import re
import uuid
from typing import Any, Iterable, Mapping

from sqlalchemy import delete, insert, select, update
from sqlalchemy.exc import IntegrityError
from sqlalchemy.orm import Session

from crowbar.db.events import record
from crowbar.db.models import Node, utcnow
from crowbar.db.sql import keyset
from crowbar.errors import Conflict, InvalidInput, NotFound
from crowbar.network import linuxbridge, neutron
from crowbar.network.model import NetworkTemplate, NetworkValidationError
from crowbar.network.plan import plan_interfaces
from crowbar.services import lookup
from crowbar.services.network._db import RETRIES, SEGMENTS, SETTINGS, SETTINGS_ID, lock_template
from crowbar.services.network._fixed import NEUTRON_DEFAULTS, neutron_settings, sync_fixed_network
from crowbar.services.network.allocations import node_addresses
from crowbar.services.network.plans import inventory, roles_of
from crowbar.services.network.templates import current_template, invalid

NEUTRON_FILES = {"ml2": "/etc/neutron/plugins/ml2/ml2_conf.ini",
                 "linuxbridge": "/etc/neutron/plugins/ml2/linuxbridge_agent.ini",
                 "dhcp": "/etc/neutron/dhcp_agent.ini",
                 "l3": "/etc/neutron/l3_agent.ini"}
PORT_DEVICE_PREFIXES = (linuxbridge.TAP_PREFIX, linuxbridge.DHCP_DEVICE_PREFIX,
                        linuxbridge.ROUTER_INTERNAL_PREFIX, linuxbridge.ROUTER_GATEWAY_PREFIX)
TUNNEL_ID_IN_USE = "Unable to create the network. The tunnel ID {id} is in use."


class TunnelIdInUse(Conflict):
    """An explicit VXLAN id that another tenant network holds (Neutron's own message)."""

    def __init__(self, vni: int):
        super().__init__(TUNNEL_ID_IN_USE.format(id=vni), field="segmentation_id")


# ---------------------------------------------------------------------------------------------
# Settings

def _vlan_range(session: Session, template: NetworkTemplate, settings: dict) -> tuple[int, int]:
    try:
        return neutron.tenant_vlan_range(template, settings["tenant_vlan_count"])
    except NetworkValidationError as exc:
        raise invalid(exc) from None


def _vni_ranges(settings: dict) -> list[tuple[int, int]]:
    return linuxbridge.parse_vni_ranges([f"{low}:{high}" for low, high in settings["vni_ranges"]])


def set_neutron_settings(session: Session, changes: Mapping[str, Any], actor: str = "system") -> dict:
    """Change physical_network, tenant_vlan_count, vni_ranges ([[min, max], ...] or "min:max"
    strings) or tenant_network_types (vlan, vxlan)."""
    lock_template(session)
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
    session.execute(update(SETTINGS).where(SETTINGS.c.id == SETTINGS_ID).values(neutron=new))
    sync_fixed_network(session, template, new)
    record(session, [{"object_type": "network", "action": "neutron-settings", "actor": actor,
                      "message": ", ".join(f"{k}={new[k]}" for k in sorted(changes))}])
    return new


# ---------------------------------------------------------------------------------------------
# Tenant networks

def _segment_dict(row) -> dict:
    return {"id": row.network_id, "name": row.name, "network_type": row.network_type,
            "physical_network": row.physical_network or None,
            "segmentation_id": row.segmentation_id, "provider": row.provider,
            "bridge": linuxbridge.bridge_name(row.network_id),
            "dhcp_namespace": linuxbridge.dhcp_namespace(row.network_id)}


# Tenant networks are listed by segment: type, physical network, id (vlan before vxlan; the
# UNIQUE constraint's columns, so the order is total and its index serves every page).
_SEGMENT_ORDER = (SEGMENTS.c.network_type, SEGMENTS.c.physical_network, SEGMENTS.c.segmentation_id)


def segment_marker(item: Mapping[str, Any]) -> str:
    """A listed tenant network's place in the list, as a page marker: `type:physnet:id`
    (`vlan:physnet1:500`; `vxlan::1001`, a VXLAN segment has no physical network)."""
    return f"{item['network_type']}:{item['physical_network'] or ''}:{item['segmentation_id']}"


def _parse_segment_marker(marker: str) -> tuple[str, str, int]:
    network_type, _, rest = marker.partition(":")
    physnet, sep, segment = rest.rpartition(":")
    if network_type not in ("vlan", "vxlan") or not sep or not segment.isascii() or not segment.isdigit() \
            or len(segment) > 10:
        raise InvalidInput(f"marker {marker!r}: expected type:physical_network:segmentation_id "
                           "(as a next link gives it)", field="marker")
    return network_type, physnet, int(segment)


def list_tenant_networks(session: Session, limit: int | None = None, marker: str | None = None) -> list[dict]:
    """Tenant networks (and the provider fixed network) by segment (type, physical network, id):
    `limit` of them after `marker` (`segment_marker` of the previous page's last; all without)."""
    after = _parse_segment_marker(marker) if marker is not None else None
    rows = session.execute(keyset(select(SEGMENTS), _SEGMENT_ORDER, limit, after)).all()
    return [_segment_dict(r) for r in rows]


def _used_segments(session: Session, network_type: str, physnet: str) -> set[int]:
    return set(session.scalars(select(SEGMENTS.c.segmentation_id).where(
        SEGMENTS.c.network_type == network_type, SEGMENTS.c.physical_network == physnet)))


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
    if session.execute(select(SEGMENTS.c.id).where(SEGMENTS.c.network_id == network_id)).first():
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
                session.execute(insert(SEGMENTS).values(
                    network_id=network_id, name=name or "", network_type=network_type,
                    physical_network=physnet, segmentation_id=chosen,
                    provider=segmentation_id is not None, created_at=utcnow()))
        except IntegrityError:
            continue  # a concurrent create took this id: look again
        record(session, [{"object_type": "tenant_network", "action": "create", "actor": actor,
                          "message": f"{name or network_id}: {network_type} {physnet or ''}"
                                     f"{':' if physnet else ''}{chosen}".replace("  ", " ")}])
        row = session.execute(select(SEGMENTS).where(SEGMENTS.c.network_id == network_id)).first()
        return _segment_dict(row)
    raise Conflict(f"could not allocate a {network_type} segment after {RETRIES} attempts "
                   "(concurrent creates kept taking it); try again")


def adopt_network_id(session: Session, network_id: str, neutron_id: str, actor: str = "system") -> dict:
    """Give a tenant network the id Neutron gave it (Crowbar reserved the segment under its own
    uuid before asking Neutron to create the network)."""
    row = _tenant_row(session, network_id)
    session.execute(update(SEGMENTS).where(SEGMENTS.c.id == row.id).values(network_id=neutron_id))
    record(session, [{"object_type": "tenant_network", "action": "update", "actor": actor,
                      "message": f"{row.name or network_id}: created in Neutron as {neutron_id}"}])
    return _segment_dict(session.execute(select(SEGMENTS).where(SEGMENTS.c.id == row.id)).first())


def _tenant_row(session: Session, key: str):
    rows = session.execute(select(SEGMENTS).where(SEGMENTS.c.network_id == key)).all() or \
        session.execute(select(SEGMENTS).where(SEGMENTS.c.name == key)).all()
    if not rows:
        rows = session.execute(select(SEGMENTS).where(SEGMENTS.c.network_id.startswith(key))).all() \
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
    session.execute(delete(SEGMENTS).where(SEGMENTS.c.id == row.id))
    record(session, [{"object_type": "tenant_network", "action": "delete", "actor": actor,
                      "message": f"{row.name or row.network_id}: {row.network_type} "
                                 f"{row.segmentation_id}"}])
    return {**_segment_dict(row), "deleted": True}


# ---------------------------------------------------------------------------------------------
# Host devices and agent files

def whois_device(device: Any) -> str:
    """The device name whois looks up, or InvalidInput (before anything is read or fetched)."""
    device = device.strip() if isinstance(device, str) else ""
    if not device:
        raise InvalidInput("device name is empty", field="device")
    return device


def _network_item(item: Mapping) -> dict:
    network_type, segmentation_id = linuxbridge.segment_of(item)
    return {"id": str(item.get("id")), "name": item.get("name"), "network_type": network_type,
            "segmentation_id": segmentation_id}


def whois(session: Session, device: str, ports: Iterable[Mapping] = (),
          routers: Iterable[Mapping] = (), networks: Iterable[Mapping] = (),
          source: str | None = None) -> dict:
    """The tenant network, port or router a host device name belongs to.

    Without `source`, networks come from the database (plus any given); ports and routers are not
    stored by Crowbar: pass them (e.g. `openstack port list -f json`) to resolve tap/ns-/qr-/qg-
    devices. With `source` (where the lists came from: the live Neutron API's URL, which
    crowbar.services.openstack reads), the given networks are Neutron's own: a stored network
    whose id or segment Neutron has is left out (Neutron's uuid wins), and the answer names the source."""
    device = whois_device(device)
    given = [_network_item(n) for n in networks]
    stored = [{"id": r.network_id, "name": r.name, "network_type": r.network_type,
               "segmentation_id": r.segmentation_id}
              for r in session.execute(select(SEGMENTS)).all()]
    if source is not None:
        taken = {n["id"] for n in given} | {(n["network_type"], n["segmentation_id"]) for n in given}
        stored = [n for n in stored if n["id"] not in taken
                  and (n["network_type"], n["segmentation_id"]) not in taken]
    all_networks = stored + given
    ports, routers = [dict(p) for p in ports], [dict(r) for r in routers]
    owner = linuxbridge.whois(device, all_networks, ports, routers)
    if owner is None:
        hint = ""
        if source is not None:
            hint = f" or to the Neutron API at {source}"
        elif device.startswith(PORT_DEVICE_PREFIXES) and not ports:
            hint = ("; ports are not stored in Crowbar: pass the port list (`openstack port list "
                    "-f json`) or bind neutron-server, whose API whois then asks, to resolve tap, "
                    "ns-, qr- and qg- devices")
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
    if source is not None:
        out["source"] = source
    return out


def _neutron_plan(session: Session, node, template: NetworkTemplate):
    """The node's interface plan, with nova_fixed attached even when the node has no address on
    it: Neutron only needs the interface its conduit resolves to (the linuxbridge agent adds
    its own VLAN subinterfaces). The stand-in address is never shown or configured."""
    discovery = session.execute(select(Node.discovery).where(Node.id == node.id)).scalar()
    nics, product = inventory(node.name, discovery)
    addresses = node_addresses(session, [node.id])[node.id]
    roles = roles_of(session, [node.id])[node.id]
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
        raise invalid(exc) from None
    return {"node": node.name,
            "network_vlan_ranges": f"{settings['physical_network']}:{start}:{end}",
            "physical_interface_mappings": mappings, "files": files}

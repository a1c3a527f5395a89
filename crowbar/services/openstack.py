"""The OpenStack roles' attributes from Crowbar's model, placed into each run's document.

The annealer's `prepare` hook (crowbar/engine/annealer.py) calls `preparer(db, key)` for every run;
for the roles of the `openstack-base` and `neutron` barclamps (crowbar/openstack/) it reads the
network model in one short transaction and places puppet-neutron's, puppetlabs-rabbitmq's and
puppetlabs-mysql's class parameters as top-level Hiera keys of the run's document:

- the node's admin address (the bus and database listen there, neutron-server binds there);
- neutron-server: `network_vlan_ranges` = physnet1:<nova_fixed's VLAN>:<that + the tenant count>
  (crowbar.network.neutron.tenant_vlan_range, the seed's "VLAN to VLAN + 2000");
- the Linux Bridge agent: `physical_interface_mappings` = physnet1:<the interface nova_fixed's
  conduit resolves to on this node> (the same value `crowbar neutron config NODE` renders);
- the bus's and database's host/user come from their roles' walls (wanted attribs); their
  passwords are derived from the server's secret per deployment (crowbar.openstack.config).

A key the run's document already has (an operator's value in the deployment's role data) is kept.
The roles' walls get what children need: the bus's and database's host, port and user,
neutron-server's URL. The note (first line of the run's log) names the model's values, never a password.
"""

from __future__ import annotations

import configparser
from collections.abc import Callable

from sqlalchemy.orm import Session

from crowbar.db.models import Node
from crowbar.documents import dig, put
from crowbar.errors import Conflict
from crowbar.jigs.base import RunContext
from crowbar.network import neutron
from crowbar.openstack import config
from crowbar.services.network._fixed import neutron_settings
from crowbar.services.network.allocations import node_addresses
from crowbar.services.network.neutron import NEUTRON_FILES, node_neutron
from crowbar.services.network.templates import current_template

ROLES = frozenset(config.BASE_ROLES + config.NEUTRON_ROLES)
ADMIN_NETWORK = "admin"


def admin_address(session: Session, node_id: int) -> str:
    address = node_addresses(session, [node_id])[node_id].get(ADMIN_NETWORK)
    if not address:
        name = session.get(Node, node_id).name
        raise Conflict(f"node {name!r} has no address on the admin network: the OpenStack roles "
                       "listen and connect there", field="node")
    return address.split("/")[0]


def _service(attrs: dict, path: str, key: bytes, deployment: int, purpose: str, **defaults) -> dict:
    """What the run's document says about the bus or the database (wanted from its role's wall),
    with the derived password when nobody set one."""
    found = dig(attrs, path, {})
    out = {**defaults, **(found if isinstance(found, dict) else {})}
    if not out.get("password"):
        out["password"] = config.derived_secret(key, deployment, purpose)
    return out


def run_attributes(session: Session, node_id: int, role: str, deployment: int, attrs: dict,
                   key: bytes) -> tuple[dict, dict, str]:
    """(Hiera keys for the run, what its wall gets, a note naming the model's values) for one run
    of an OpenStack role on a node."""
    address = admin_address(session, node_id)
    note = f"admin address {address}"
    wall: dict = {}
    if role == config.RABBITMQ_ROLE:
        bus = _service(attrs, config.BUS_PATH, key, deployment, "rabbitmq", user=config.BUS_USER)
        hiera = config.rabbitmq_hiera(address, bus["password"], bus["user"])
        put(wall, config.BUS_PATH, {"host": address, "port": config.BUS_PORT, "user": bus["user"]})
        return hiera, wall, note
    if role == config.DATABASE_ROLE:
        db = _service(attrs, config.DATABASE_PATH, key, deployment, "database",
                      user=config.DATABASE_USER, name=config.DATABASE_NAME)
        hiera = config.database_hiera(address, db["password"], db["name"], db["user"])
        put(wall, config.DATABASE_PATH, {"host": address, "user": db["user"], "name": db["name"]})
        return hiera, wall, note
    bus = _service(attrs, config.BUS_PATH, key, deployment, "rabbitmq", user=config.BUS_USER)
    if not bus.get("host"):
        raise Conflict(f"role {role}: no message bus host (attrib openstack-rabbitmq-host): bind "
                       f"{config.RABBITMQ_ROLE} in the deployment", field="role")
    settings = neutron_settings(session)
    types = settings["tenant_network_types"]
    kwargs: dict = {"address": address, "bus": bus, "tenant_network_types": types,
                    "vni_range": tuple(settings["vni_ranges"][0])}
    workers = dig(attrs, "openstack/neutron/workers", 1)
    if role == config.SERVER_ROLE:
        db = _service(attrs, config.DATABASE_PATH, key, deployment, "database",
                      user=config.DATABASE_USER, name=config.DATABASE_NAME)
        if not db.get("host"):
            raise Conflict(f"role {role}: no database host (attrib openstack-database-host): bind "
                           f"{config.DATABASE_ROLE} in the deployment", field="role")
        start, end = neutron.tenant_vlan_range(current_template(session), settings["tenant_vlan_count"])
        ranges = f"{settings['physical_network']}:{start}:{end}"
        kwargs.update(database=db, network_vlan_ranges=ranges, workers=workers)
        note += f", network_vlan_ranges {ranges}"
        put(wall, config.NEUTRON_URL_PATH, config.neutron_url(address))
    elif role == config.LINUXBRIDGE_ROLE:
        rendered = node_neutron(session, node_id)
        mappings = rendered["physical_interface_mappings"]
        kwargs["physical_interface_mappings"] = mappings
        if "vxlan" in types:
            kwargs["local_ip"] = _ini_value(rendered, "linuxbridge", "vxlan", "local_ip")
        note += ", physical_interface_mappings " + ",".join(f"{k}:{v}" for k, v in mappings.items())
    return config.neutron_hiera(role, **kwargs), wall, note


def _ini_value(rendered: dict, which: str, section: str, option: str) -> str | None:
    """An option of one of the files the existing renderer made (crowbar neutron config NODE)."""
    parser = configparser.ConfigParser(interpolation=None)
    parser.read_string(rendered["files"][NEUTRON_FILES[which]])
    return parser.get(section, option, fallback=None)


def place(attrs: dict, hiera: dict) -> list[str]:
    """Puts the keys the document lacks; answers the keys it kept (the operator's)."""
    kept = []
    for name, value in hiera.items():
        if name in attrs:
            kept.append(name)
        else:
            attrs[name] = value
    return kept


def preparer(db, key: bytes) -> Callable[[RunContext], tuple[dict, str] | None]:
    """The annealer's `prepare` hook for the OpenStack roles (None for every other role)."""
    def prepare(ctx: RunContext) -> tuple[dict, str] | None:
        if ctx.role not in ROLES:
            return None
        with db.session() as session:
            hiera, wall, note = run_attributes(session, ctx.node.id, ctx.role, ctx.deployment_id, ctx.attrs, key)
        kept = place(ctx.attrs, hiera)
        line = f"openstack: from Crowbar's model: {note}"
        if kept:
            line += f"; kept the deployment's {', '.join(sorted(kept))}"
        return wall, line + "\n"

    return prepare

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

`neutron_whois` is `crowbar neutron whois` with the live API: the URL from the wall of a deployment's
active neutron-server noderole (or the caller's), its networks, ports and routers read over HTTP
(crowbar.openstack.neutron_api) outside any transaction, then matched by
crowbar.services.network.neutron.whois.
"""

from __future__ import annotations

import configparser
from collections.abc import Callable

from sqlalchemy import select
from sqlalchemy.orm import Session

from crowbar.db.models import Deployment, Node, NodeRole, Role
from crowbar.documents import dig, put
from crowbar.errors import Conflict, InvalidInput
from crowbar.jigs.base import RunContext
from crowbar.network import neutron
from crowbar.openstack import config, neutron_api
from crowbar.services import lookup
from crowbar.services.network import neutron as network_neutron
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


# ---------------------------------------------------------------------------------------------
# whois with the live Neutron API

def neutron_api_url(session: Session, deployment: str | None = None) -> str | None:
    """The URL of the Neutron API of `deployment` (the wall of its active neutron-server noderole),
    or, unnamed, of the one deployment that has such a noderole (None when none has; 409 when
    several have: name one)."""
    q = (select(Deployment.name, NodeRole.wall).join(NodeRole, NodeRole.deployment_id == Deployment.id)
         .join(Role, Role.id == NodeRole.role_id)
         .where(Role.name == config.SERVER_ROLE, NodeRole.state == "active").order_by(NodeRole.id))
    if deployment is not None:
        q = q.where(Deployment.id == lookup.deployment(session, deployment).id)
    found: dict[str, str] = {}
    for name, wall in session.execute(q):
        url = dig(wall or {}, config.NEUTRON_URL_PATH)
        if isinstance(url, str) and url:
            found.setdefault(name, url)
    if deployment is not None and not found:
        raise Conflict(f"deployment {deployment!r} has no active {config.SERVER_ROLE} noderole that "
                       f"published {config.NEUTRON_URL_PATH}: bind it and let it run, or give the API's URL",
                       field="deployment")
    if len(found) > 1:
        raise Conflict(f"several deployments have a Neutron API ({', '.join(sorted(found))}): name the "
                       "deployment", field="deployment")
    return next(iter(found.values()), None)


def neutron_whois(db, device: str, deployment: str | None = None, api: str | None = None,
                  ports: list[dict] = (), routers: list[dict] = (), networks: list[dict] = ()) -> dict:
    """Which Neutron network, port or router host device `device` belongs to, asking the live API
    (`api`, or the one of `deployment`, or of the only deployment with one) for its networks, ports
    and routers; with no Neutron deployed, the tenant networks Crowbar stores. Given `ports`,
    `routers` or `networks` (from a file), those and the stored networks, no live API. Each short
    transaction only reads; the HTTP requests run between them, holding none."""
    device = network_neutron.whois_device(device)
    if ports or routers or networks:
        if api is not None or deployment is not None:
            raise InvalidInput("give ports, routers and networks, or a deployment or API to ask, not both",
                               field="api")
        with db.read_session() as session:
            return network_neutron.whois(session, device, ports, routers, networks)
    if api is not None and deployment is not None:
        raise InvalidInput("give the deployment or the API's URL, not both", field="api")
    if api is not None:
        url: str | None = neutron_api.check_url(api)
    else:
        with db.read_session() as session:
            url = neutron_api_url(session, deployment)
    found = neutron_api.read(url) if url is not None else {}
    with db.read_session() as session:
        return network_neutron.whois(session, device, source=url, **found)


# ---------------------------------------------------------------------------------------------
# Tenant networks: Crowbar's segment, created in the live Neutron API

def create_tenant_network(db, name: str = "", network_type: str = "vlan", physical_network: str | None = None,
                          segmentation_id: int | None = None, network_id: str | None = None,
                          deployment: str | None = None, actor: str = "system") -> dict:
    """A tenant network on the segment Crowbar allocates (the seed's 501, 502...), and, when
    Neutron is deployed (`deployment`'s, or the only one), the same network created in its live
    API on that segment, so that Neutron's own choice (a random free tag) never differs from
    Crowbar's. With `network_id` (a network Neutron already has) or without Neutron, the segment
    is only recorded.

    The segment is reserved first (one transaction, under a provisional uuid), then Neutron is asked
    (no transaction open), then the row takes Neutron's id; when Neutron refuses or does not
    answer, the reservation is released: nothing is left half-written."""
    url = None
    if network_id is None:
        with db.read_session() as session:
            url = neutron_api_url(session, deployment)
    elif deployment is not None:
        raise InvalidInput("an id names a network Neutron already has: nothing is created in "
                           f"deployment {deployment!r}'s Neutron; give one or the other", field="id")
    with db.session() as session:
        reserved = network_neutron.create_tenant_network(session, name, network_type, physical_network,
                                                         segmentation_id, network_id, actor=actor)
    if url is None:
        return reserved
    try:
        made = neutron_api.create_network(url, name or reserved["id"], reserved["network_type"],
                                          reserved["physical_network"], reserved["segmentation_id"])
    except Exception:
        with db.session() as session:
            network_neutron.delete_tenant_network(session, reserved["id"], actor=actor)
        raise
    with db.session() as session:
        return {**network_neutron.adopt_network_id(session, reserved["id"], made["id"], actor=actor),
                "neutron": url}

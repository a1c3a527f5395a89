"""Crowbar's model -> the Hiera data of the OpenStack roles (pure: no database, no network).

The roles' manifests include upstream classes unchanged (puppet-neutron, puppetlabs-rabbitmq,
puppetlabs-mysql), so what Crowbar gives them is class parameters by Hiera's automatic parameter
lookup: keys like `neutron::plugins::ml2::network_vlan_ranges`. These functions compute those keys
from what the network model says about a node (crowbar.network.neutron's tenant VLAN range and
physical_interface_mappings, the node's admin address) and from what the message bus and database
roles publish (host, port, user; the passwords are derived per deployment from a server secret).

The same keys in a Hiera YAML file run the manifests outside Crowbar (`puppet apply
--hiera_config ...`): docs/neutron.md.
"""

from __future__ import annotations

import hashlib
import hmac
from collections.abc import Iterable, Mapping
from urllib.parse import quote

BUS_PORT = 5672
NEUTRON_API_PORT = 9696
BUS_USER = "openstack"
DATABASE_NAME = DATABASE_USER = "neutron"

RABBITMQ_ROLE = "openstack-rabbitmq"
DATABASE_ROLE = "openstack-database"
SERVER_ROLE = "neutron-server"
LINUXBRIDGE_ROLE = "neutron-linuxbridge-agent"
DHCP_ROLE = "neutron-dhcp-agent"
L3_ROLE = "neutron-l3-agent"
BASE_ROLES = (RABBITMQ_ROLE, DATABASE_ROLE)
NEUTRON_ROLES = (SERVER_ROLE, LINUXBRIDGE_ROLE, DHCP_ROLE, L3_ROLE)

# Where the attribs of the openstack-base roles live in the run document (their barclamp.yml maps).
BUS_PATH = "openstack/rabbitmq"        # {host, port, user, password}
DATABASE_PATH = "openstack/database"   # {host, user, password, name}
NEUTRON_URL_PATH = "openstack/neutron/url"


def derived_secret(key: bytes, deployment: int | str, purpose: str) -> str:
    """A password only this server can derive: HMAC-SHA256(server key, deployment/purpose), 32 hex
    digits. The same on every run of the deployment, so the bus, the database and their clients agree
    without a password being stored anywhere but on the nodes that use it."""
    return hmac.new(key, f"crowbar-openstack/{deployment}/{purpose}".encode(), hashlib.sha256).hexdigest()[:32]


def transport_url(bus: Mapping) -> str:
    """oslo.messaging's URL: rabbit://user:password@host:port/"""
    return (f"rabbit://{quote(str(bus['user']), safe='')}:{quote(str(bus['password']), safe='')}"
            f"@{bus['host']}:{int(bus.get('port') or BUS_PORT)}/")


def database_url(db: Mapping) -> str:
    """oslo.db's URL for MariaDB through PyMySQL."""
    return (f"mysql+pymysql://{quote(str(db['user']), safe='')}:{quote(str(db['password']), safe='')}"
            f"@{db['host']}/{db.get('name') or DATABASE_NAME}")


def rabbitmq_hiera(address: str, password: str, user: str = BUS_USER) -> dict:
    """puppetlabs-rabbitmq's class parameters and the bus's user, for the message bus node."""
    return {
        "rabbitmq::node_ip_address": address,
        "rabbitmq::port": BUS_PORT,
        "rabbitmq::repos_ensure": False,      # Debian's rabbitmq-server, from the node's mirror
        "rabbitmq::manage_python": False,
        "rabbitmq::admin_enable": False,      # no management plugin: nothing here uses it
        "rabbitmq::delete_guest_user": False,  # its provider is rabbitmq_user's (see the manifest)
        # the module's default LC_ALL is en_US.UTF-8, a locale the image does not have
        "rabbitmq::environment_variables": {"LC_ALL": "C.UTF-8"},
        "openstack::rabbitmq::user": user,
        "openstack::rabbitmq::password": password,
    }


def database_hiera(address: str, password: str, name: str = DATABASE_NAME, user: str = DATABASE_USER) -> dict:
    """puppetlabs-mysql's class parameters (Debian's MariaDB) and the database a service needs."""
    return {
        "mysql::server::package_name": "mariadb-server",
        "mysql::server::service_name": "mariadb",
        "mysql::client::package_name": "mariadb-client",
        "mysql::server::remove_default_accounts": True,
        "mysql::server::override_options": {"mysqld": {"bind-address": address}},
        "openstack::database::name": name,
        "openstack::database::user": user,
        "openstack::database::password": password,
    }


def neutron_hiera(role: str, *, address: str, bus: Mapping, database: Mapping | None = None,
                  network_vlan_ranges: str | None = None,
                  physical_interface_mappings: Mapping[str, str] | None = None,
                  tenant_network_types: Iterable[str] = ("vlan",), vni_range: tuple[int, int] = (1001, 2000),
                  local_ip: str | None = None, workers: int = 1) -> dict:
    """puppet-neutron's class parameters for one of the neutron roles on a node.

    `address` is the node's admin address (the API and the agents' own traffic), `bus` the message
    bus's {host, port, user, password}; neutron-server also needs `database` and
    `network_vlan_ranges` ("physnet1:500:2500"), the Linux Bridge agent
    `physical_interface_mappings` ({"physnet1": "eth1"}) and, with VXLAN, `local_ip`."""
    types = list(tenant_network_types)
    data: dict = {
        "neutron::default_transport_url": transport_url(bus),
        "neutron::core_plugin": "ml2",
        "neutron::service_plugins": ["router"],
        "neutron::bind_host": address,
        "neutron::auth_strategy": "noauth",   # no Keystone (issue 16 allows it): the API on the admin network
        "neutron::purge_config": False,
        # Neutron 21 refuses the Linux Bridge driver and agent unless it is enabled as experimental
        # (the API's workers die at start: "Feature 'linuxbridge' is experimental and has to be
        # explicitly enabled in 'cfg.CONF.experimental'"); puppet-neutron 21 has no parameter for it.
        # No Nova here: with its notifier on (the package's neutron.conf says True) the API's workers
        # die at start loading it ("Auth plugin requires parameters which were not given: auth_url")
        "neutron::config::server_config": {"experimental/linuxbridge": {"value": True},
                                           "DEFAULT/notify_nova_on_port_status_changes": {"value": False},
                                           "DEFAULT/notify_nova_on_port_data_changes": {"value": False}},
    }
    if role == SERVER_ROLE:
        if database is None or network_vlan_ranges is None:
            raise ValueError("neutron-server needs the database and the tenant VLAN range")
        data.update({
            "neutron::server::auth_strategy": "noauth",
            "neutron::server::sync_db": True,
            "neutron::server::api_workers": workers,
            "neutron::server::rpc_workers": workers,
            "neutron::server::rpc_state_report_workers": workers,
            "neutron::wsgi::uwsgi::processes": workers,   # Debian's uwsgi ini says 8
            "neutron::wsgi::uwsgi::threads": 8,
            "neutron::db::database_connection": database_url(database),
            # oslo::db requires mysql::bindings::python, whose Debian default (python3-mysqldb) is not
            # what oslo.db uses here and not in the image: name the PyMySQL the image has
            "mysql::bindings::python_package_name": "python3-pymysql",
            "neutron::plugins::ml2::type_drivers": ["flat", "vlan", "vxlan"],
            "neutron::plugins::ml2::tenant_network_types": types,
            "neutron::plugins::ml2::mechanism_drivers": ["linuxbridge"],
            "neutron::plugins::ml2::network_vlan_ranges": [network_vlan_ranges],
            "neutron::plugins::ml2::vni_ranges": "%d:%d" % tuple(vni_range),
        })
    elif role == LINUXBRIDGE_ROLE:
        if not physical_interface_mappings:
            raise ValueError("the Linux Bridge agent needs physical_interface_mappings")
        data.update({
            "neutron::agents::ml2::linuxbridge::physical_interface_mappings":
                [f"{net}:{iface}" for net, iface in physical_interface_mappings.items()],
            "neutron::agents::ml2::linuxbridge::tunnel_types": ["vxlan"] if "vxlan" in types else [],
            "neutron::agents::ml2::linuxbridge::local_ip": local_ip if "vxlan" in types else False,
            "neutron::agents::ml2::linuxbridge::firewall_driver": "iptables",
        })
    elif role == DHCP_ROLE:
        data.update({"neutron::agents::dhcp::interface_driver": "linuxbridge",
                     "neutron::agents::dhcp::dhcp_driver": "neutron.agent.linux.dhcp.Dnsmasq"})
    elif role == L3_ROLE:
        data.update({"neutron::agents::l3::interface_driver": "linuxbridge"})
    else:
        raise ValueError(f"not a neutron role: {role!r}")
    return data


def neutron_url(address: str) -> str:
    return f"http://{address}:{NEUTRON_API_PORT}"

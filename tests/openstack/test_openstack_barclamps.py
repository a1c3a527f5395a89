"""The openstack-base and neutron barclamps (crowbar/openstack/): they load, binding neutron-server to
one node and the Linux Bridge agent to another pulls in what each needs, and every run gets the
Hiera keys Crowbar's model gives it, which are the seed's values: network_vlan_ranges
physnet1:500:2500 from nova_fixed's VLAN 500, physical_interface_mappings physnet1:eth1 (the NIC
nova_fixed's conduit resolves to on a node with two NICs in dual mode), addresses on the admin
network. The Puppet jig is replaced by one that records what it was given: what runs on a node is
the lab's (docs/neutron.md)."""

from __future__ import annotations

import configparser

import pytest
from sqlalchemy import select

from crowbar.barclamps import loader
from crowbar.db.models import Node, NodeRole, Role, Run
from crowbar.engine import annealer as annealer_module
from crowbar.engine.annealer import Annealer
from crowbar.jigs.base import Jig, RunResult
from crowbar.openstack import barclamp_paths, config
from crowbar.services import catalog, deployments, network, nodes, openstack

KEY = b"the admin server's secret"
CONTROLLER, COMPUTE = "ctl.example.com", "cmp.example.com"
TWO_NICS = [
    {"name": "eth0", "mac": "52:54:00:00:00:01", "speed": 1000, "driver": "virtio_net", "bus": "0000:00:03.0"},
    {"name": "eth1", "mac": "52:54:00:00:00:02", "speed": 1000, "driver": "e1000", "bus": "0000:00:04.0"},
]


def test_the_openstack_barclamps_read_cleanly():
    read = {bc.name: {r.name: r for r in bc.roles} for bc in map(loader.read, barclamp_paths())}
    assert set(read) == {"openstack-base", "neutron"}
    assert set(read["openstack-base"]) == {"openstack-rabbitmq", "openstack-database"}
    neutron = read["neutron"]
    assert set(neutron) == {"neutron-server", "neutron-linuxbridge-agent", "neutron-dhcp-agent", "neutron-l3-agent"}
    assert {r.jig for bc in read.values() for r in bc.values()} == {"puppet"}
    assert set(neutron["neutron-server"].requires) == {"openstack-rabbitmq", "openstack-database"}
    assert neutron["neutron-linuxbridge-agent"].requires == ["neutron-server"]
    assert "implicit" in neutron["neutron-linuxbridge-agent"].flags  # always on the agent's own node
    for agent in ("neutron-dhcp-agent", "neutron-l3-agent"):
        assert neutron[agent].requires == ["neutron-linuxbridge-agent"]
    for path in barclamp_paths():  # a manifest per role, as the Puppet jig expects
        for role in loader.read(path).roles:
            assert (path / "puppet" / "manifests" / f"{role.name}.pp").is_file()


def test_the_hiera_keys_of_each_role_from_the_models_values():
    bus = {"host": "192.168.124.81", "port": 5672, "user": "openstack", "password": "p@ss/word"}
    database = {"host": "192.168.124.81", "user": "neutron", "password": "s3cret", "name": "neutron"}
    server = config.neutron_hiera("neutron-server", address="192.168.124.81", bus=bus, database=database,
                                  network_vlan_ranges="physnet1:500:2500")
    assert server["neutron::default_transport_url"] == "rabbit://openstack:p%40ss%2Fword@192.168.124.81:5672/"
    assert server["neutron::db::database_connection"] == "mysql+pymysql://neutron:s3cret@192.168.124.81/neutron"
    assert server["neutron::plugins::ml2::network_vlan_ranges"] == ["physnet1:500:2500"]
    assert server["neutron::plugins::ml2::mechanism_drivers"] == ["linuxbridge"]
    assert server["neutron::server::auth_strategy"] == "noauth" and server["neutron::server::sync_db"] is True
    assert server["neutron::wsgi::uwsgi::processes"] == 1  # not Debian's 8: each loads all of Neutron
    # Linux Bridge enabled as experimental (Neutron 21), the Nova notifier off (no Nova: it needs Keystone)
    assert server["neutron::config::server_config"] == {
        "experimental/linuxbridge": {"value": True}, "DEFAULT/notify_nova_on_port_status_changes": {"value": False},
        "DEFAULT/notify_nova_on_port_data_changes": {"value": False}}
    agent = config.neutron_hiera("neutron-linuxbridge-agent", address="192.168.124.82", bus=bus,
                                 physical_interface_mappings={"physnet1": "eth1"})
    assert agent["neutron::agents::ml2::linuxbridge::physical_interface_mappings"] == ["physnet1:eth1"]
    assert agent["neutron::agents::ml2::linuxbridge::tunnel_types"] == []
    assert "neutron::db::database_connection" not in agent  # agents never see the database
    with pytest.raises(ValueError, match="neutron-server needs the database"):
        config.neutron_hiera("neutron-server", address="a", bus=bus)
    with pytest.raises(ValueError, match="not a neutron role"):
        config.neutron_hiera("nova-compute", address="a", bus=bus)
    assert config.derived_secret(KEY, 1, "rabbitmq") == config.derived_secret(KEY, 1, "rabbitmq")
    assert len({config.derived_secret(KEY, d, p) for d in (1, 2) for p in ("rabbitmq", "database")}) == 4
    assert config.derived_secret(b"another server", 1, "rabbitmq") != config.derived_secret(KEY, 1, "rabbitmq")


class Recorder(Jig):
    """Stands in for the Puppet jig: records the document each run gets, and succeeds."""

    name = "puppet"

    def __init__(self):
        self.seen: dict[tuple[str, str], dict] = {}

    def run(self, ctx):
        self.seen[(ctx.node.name, ctx.role)] = ctx.attrs
        return RunResult(ok=True, wall={}, log="recorded\n")


@pytest.fixture
def lab(db, monkeypatch):
    """Both barclamps imported; a controller and a compute node with two NICs each and an admin
    address; the network template in dual mode (nova_fixed's conduit on the second NIC, as on the
    lab's nodes: admin, and a data bridge carrying the VLANs)."""
    recorder = Recorder()
    real = annealer_module.get_jig
    monkeypatch.setattr(annealer_module, "get_jig", lambda name: recorder if name == "puppet" else real(name))
    with db.session() as s:
        for path in barclamp_paths():
            catalog.import_barclamp(s, path)
        for name in (CONTROLLER, COMPUTE):
            node = nodes.create_node(s, name, bind_roles=False)
            s.get(Node, node["id"]).discovery = {"nics": TWO_NICS}
    with db.session() as s:
        network.import_template(s, {**network.export(s), "mode": "dual"})
    with db.session() as s:
        for name in (CONTROLLER, COMPUTE):
            network.allocate(s, "admin", name)
    return recorder


def test_binding_pulls_in_what_each_role_needs_and_runs_get_the_seeds_values(db, lab):
    with db.session() as s:
        deployments.create_deployment(s, "openstack")
        deployments.bind(s, "openstack", "neutron-server", CONTROLLER)
        deployments.bind(s, "openstack", "neutron-dhcp-agent", CONTROLLER)
        deployments.bind(s, "openstack", "neutron-linuxbridge-agent", COMPUTE)
        deployments.commit(s, "openstack")
        held = {(node, role) for node, role in s.execute(
            select(Node.name, Role.name).join(NodeRole, NodeRole.node_id == Node.id)
            .join(Role, Role.id == NodeRole.role_id))}
        # the bus and the database come with the server; each agent node has its own Linux Bridge
        # agent; the compute node shares the controller's server instead of getting one
        assert held == {(CONTROLLER, "openstack-rabbitmq"), (CONTROLLER, "openstack-database"),
                        (CONTROLLER, "neutron-server"), (CONTROLLER, "neutron-linuxbridge-agent"),
                        (CONTROLLER, "neutron-dhcp-agent"), (COMPUTE, "neutron-linuxbridge-agent")}

    runner = Annealer(db, workers=1, prepare=openstack.preparer(db, KEY))
    runner.run_until_idle(timeout=60)
    with db.session() as s:
        states = {(n, r): st for n, r, st in s.execute(
            select(Node.name, Role.name, NodeRole.state).join(NodeRole, NodeRole.node_id == Node.id)
            .join(Role, Role.id == NodeRole.role_id))}
        logs = [run.log for run in s.scalars(select(Run))]
    assert set(states.values()) == {"active"}, (states, logs)

    seen = lab.seen
    ctl_ip, cmp_ip = "192.168.124.81", "192.168.124.82"
    bus_password = config.derived_secret(KEY, 1, "rabbitmq")
    # the bus and the database: the controller's admin address, derived passwords
    rabbit = seen[(CONTROLLER, "openstack-rabbitmq")]
    assert rabbit["rabbitmq::node_ip_address"] == ctl_ip
    assert rabbit["openstack::rabbitmq::user"] == "openstack"
    server = seen[(CONTROLLER, "neutron-server")]
    # the seed: network_vlan_ranges from nova_fixed's VLAN (500) to that + 2000
    assert server["neutron::plugins::ml2::network_vlan_ranges"] == ["physnet1:500:2500"]
    assert server["neutron::bind_host"] == ctl_ip
    assert server["neutron::default_transport_url"].endswith(f"@{ctl_ip}:5672/")
    assert server["neutron::db::database_connection"].startswith("mysql+pymysql://neutron:")
    assert server["neutron::db::database_connection"].endswith(f"@{ctl_ip}/neutron")
    # the compute node's agent: the interface nova_fixed's conduit resolves to there, the bus's address
    agent = seen[(COMPUTE, "neutron-linuxbridge-agent")]
    assert agent["neutron::agents::ml2::linuxbridge::physical_interface_mappings"] == ["physnet1:eth1"]
    assert agent["neutron::bind_host"] == cmp_ip
    assert agent["neutron::default_transport_url"] == server["neutron::default_transport_url"]
    assert rabbit["openstack::rabbitmq::password"] in agent["neutron::default_transport_url"]
    assert seen[(CONTROLLER, "neutron-dhcp-agent")]["neutron::agents::dhcp::interface_driver"] == "linuxbridge"

    # the same values as the existing renderer's ini files for the node (crowbar neutron config NODE)
    with db.session() as s:
        rendered = network.node_neutron(s, COMPUTE)
    agent_ini = configparser.ConfigParser(interpolation=None)
    agent_ini.read_string(rendered["files"]["/etc/neutron/plugins/ml2/linuxbridge_agent.ini"])
    assert agent_ini["linux_bridge"]["physical_interface_mappings"] == "physnet1:eth1"
    assert rendered["network_vlan_ranges"] == "physnet1:500:2500"

    # walls: what children want (no password), and the run's first log line names the model's values
    with db.session() as s:
        walls = {(n, r): w for n, r, w in s.execute(
            select(Node.name, Role.name, NodeRole.wall).join(NodeRole, NodeRole.node_id == Node.id)
            .join(Role, Role.id == NodeRole.role_id))}
        server_log = next(run.log for run in s.scalars(select(Run)) if "network_vlan_ranges" in run.log)
    assert walls[(CONTROLLER, "openstack-rabbitmq")] == {
        "openstack": {"rabbitmq": {"host": ctl_ip, "port": 5672, "user": "openstack"}}}
    assert walls[(CONTROLLER, "neutron-server")]["openstack"]["neutron"]["url"] == f"http://{ctl_ip}:9696"
    assert server_log.splitlines()[0] == (f"openstack: from Crowbar's model: admin address {ctl_ip}, "
                                          "network_vlan_ranges physnet1:500:2500")
    assert bus_password not in server_log


def test_the_servers_prepare_hooks_chain_walls_and_notes():
    from crowbar.server.annealer import chain

    first = lambda ctx: ({"a": {"x": 1}}, "first\n")      # noqa: E731
    nothing = lambda ctx: None                             # noqa: E731
    second = lambda ctx: ({"a": {"y": 2}}, "second\n")    # noqa: E731
    assert chain(first, nothing, second)(None) == ({"a": {"x": 1, "y": 2}}, "first\nsecond\n")
    assert chain(nothing, nothing)(None) is None


def test_a_role_of_another_barclamp_is_left_alone_and_a_missing_admin_address_is_named(db, lab):
    from types import SimpleNamespace

    from crowbar.errors import Conflict

    prepare = openstack.preparer(db, KEY)
    other = SimpleNamespace(role="webhello", attrs={}, node=SimpleNamespace(id=1), deployment_id=1)
    assert prepare(other) is None and other.attrs == {}
    with db.session() as s:
        bare = nodes.create_node(s, "bare.example.com", bind_roles=False)["id"]
    run = SimpleNamespace(role="openstack-rabbitmq", attrs={}, node=SimpleNamespace(id=bare), deployment_id=1)
    with pytest.raises(Conflict, match="node 'bare.example.com' has no address on the admin network"):
        prepare(run)
    # an operator's value in the run's document is kept, and the note says so
    with db.session() as s:
        ctl = s.scalar(select(Node.id).where(Node.name == CONTROLLER))
    run = SimpleNamespace(role="openstack-rabbitmq", attrs={"rabbitmq::port": 5673},
                          node=SimpleNamespace(id=ctl), deployment_id=1)
    wall, note = prepare(run)
    assert run.attrs["rabbitmq::port"] == 5673 and run.attrs["rabbitmq::node_ip_address"] == "192.168.124.81"
    assert note.endswith("kept the deployment's rabbitmq::port\n")

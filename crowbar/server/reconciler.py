"""The DHCP reconciler (`crowbar server --provision`): dnsmasq's host reservations follow the
database. Every `interval` seconds the wanted set (each node with an admin allocation and a boot
MAC) is read and handed to the provisioner, which writes only the differences; nothing is lost if
the server restarts between two changes. The provisioner itself (`crowbar.provisioner.service`)
is machinery: dnsmasq, its supervisor, the discovery image, the reservation files.
"""

from __future__ import annotations

from sqlalchemy import select

from crowbar.db.models import Node
from crowbar.db.network_models import NetworkAllocation, NetworkRow
from crowbar.db.session import Database
from crowbar.provisioner.service import AdminPool, Provisioner
from crowbar.server.loop import Loop
from crowbar.services import network


class Reconciler(Loop):
    name = "provisioner"
    interval = 1.0

    def __init__(self, db: Database, provisioner: Provisioner, interval: float | None = None):
        super().__init__(interval)
        self.db, self.provisioner = db, provisioner

    def admin_pool(self) -> AdminPool:
        """The admin network's subnet and its `dhcp` range (for machines not known yet)."""
        with self.db.session() as s:
            admin = network.current_template(s).networks.get("admin")
        if admin is None:
            raise RuntimeError("there is no admin network: import a network template that has one")
        pool = admin.ranges.get("dhcp")
        if pool is None:
            raise RuntimeError("the admin network has no dhcp range for unknown machines")
        return AdminPool(subnet=str(admin.subnet), range_start=str(pool.start), range_end=str(pool.end))

    def wanted_reservations(self) -> dict[str, tuple[str, str]]:
        """MAC -> (admin address, host name) for every node with an admin allocation."""
        with self.db.session() as s:
            rows = s.execute(
                select(Node.boot_mac, NetworkAllocation.address, Node.name)
                .join(NetworkAllocation, NetworkAllocation.node_id == Node.id)
                .join(NetworkRow, NetworkRow.id == NetworkAllocation.network_id)
                .where(NetworkRow.name == "admin", Node.boot_mac.is_not(None))).all()
        return {mac: (address, name) for mac, address, name in rows}

    def open(self) -> None:
        """Start the provisioner (image, dnsmasq) with the reservations as they are now."""
        self.provisioner.start(self.admin_pool(), self.wanted_reservations())

    def step(self) -> bool:
        self.provisioner.record_pid()  # the supervisor may have restarted dnsmasq
        self.provisioner.apply(self.wanted_reservations())
        return False

    def close(self) -> None:
        self.provisioner.stop()

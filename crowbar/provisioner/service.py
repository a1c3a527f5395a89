"""The provisioner as it runs inside `crowbar server`: dnsmasq for DHCP/TFTP on the admin network,
the discovery image for HTTP boot, and host reservations kept in step with the database. (The
watchdog that moves nodes stuck in a waiting state to `problem` runs in the annealer's loop, so it
runs on servers without a provisioner too.)

Reservations are reconciled, not pushed: every `interval` seconds the wanted set (each node with an
admin allocation and a boot MAC) is compared with the files in dnsmasq's hosts directory and only
the differences are written. dnsmasq notices changed files by itself (inotify), so a reservation
takes effect without a restart, and nothing is lost if the server restarts between two changes.
"""

from __future__ import annotations

import ipaddress
import logging
import os
import signal
import subprocess
import threading
import time
from dataclasses import dataclass
from pathlib import Path

from sqlalchemy import select

from crowbar.db.models import Node
from crowbar.db.network_models import NetworkAllocation, NetworkRow
from crowbar.db.session import Database
from crowbar.provisioner import dnsmasq
from crowbar.provisioner.image import DiscoveryImage, build_discovery_image
from crowbar.provisioner.supervisor import Supervisor
from crowbar.services import network, provisioning

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class ProvisionerConfig:
    interface: str          # the admin bridge/NIC dnsmasq serves
    address: str            # the server's address on it
    advertise_url: str      # how booting machines reach the API (http://address:port)
    data_dir: Path
    domain: str = provisioning.DEFAULT_DOMAIN


def interface_ipv6_prefix(interface: str) -> str | None:
    """The /64 of the interface's first global (or ULA) IPv6 address, or None.

    When there is one, dnsmasq advertises it (router lifetime 0, see DhcpSettings.ipv6_ra_prefix),
    which spares every iPXE boot its wait of about 13 s for IPv6 routers that never answer.
    """
    try:
        out = subprocess.run(["ip", "-6", "-o", "addr", "show", "dev", interface, "scope", "global"],
                             capture_output=True, text=True, timeout=5).stdout
    except (OSError, subprocess.SubprocessError):
        return None
    for line in out.splitlines():
        words = line.split()
        if "inet6" in words[:-1]:
            address = ipaddress.IPv6Interface(words[words.index("inet6") + 1])
            if address.network.prefixlen == 64:
                return str(address.network)
    return None


class Provisioner:
    def __init__(self, db: Database, config: ProvisionerConfig, interval: float = 1.0):
        self.db, self.config, self.interval = db, config, interval
        self.state_dir = Path(config.data_dir) / "provisioner"
        self.image: DiscoveryImage | None = None
        self.dnsmasq: Supervisor | None = None
        self.settings: dnsmasq.DhcpSettings | None = None
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    def _dhcp_settings(self) -> dnsmasq.DhcpSettings:
        with self.db.session() as s:
            admin = network.current_template(s).networks.get("admin")
        if admin is None:
            raise RuntimeError("there is no admin network: import a network template that has one")
        subnet = ipaddress.ip_network(str(admin.subnet), strict=False)
        pool = admin.ranges.get("dhcp")
        if pool is None:
            raise RuntimeError("the admin network has no dhcp range for unknown machines")
        return dnsmasq.DhcpSettings(
            interface=self.config.interface, server_address=self.config.address,
            subnet=str(subnet.network_address), netmask=str(subnet.netmask),
            range_start=str(pool.start), range_end=str(pool.end), domain=self.config.domain,
            tftp_root=self.state_dir / "tftp", http_boot_url=f"{self.config.advertise_url}/boot",
            state_dir=self.state_dir, router=None, ipv6_ra_prefix=interface_ipv6_prefix(self.config.interface))

    def start(self) -> None:
        self.image = build_discovery_image(Path(self.config.data_dir) / "images")
        self.settings = self._dhcp_settings()
        conf = dnsmasq.prepare(self.settings)
        self._stop_orphan(conf)
        self.sync()
        self.dnsmasq = Supervisor("dnsmasq", dnsmasq.command(conf), log_path=self.state_dir / "dnsmasq.log")
        self.dnsmasq.start()
        self._record_pid()
        self._thread = threading.Thread(target=self._loop, name="provisioner", daemon=True)
        self._thread.start()
        log.info("provisioner: dnsmasq on %s (%s), discovery image %s", self.config.interface,
                 self.config.address, self.image.digest[:12])

    @property
    def _pidfile(self) -> Path:
        return self.state_dir / "dnsmasq.pid"

    def _record_pid(self) -> None:
        """Remember our dnsmasq's PID: if this server is killed outright, its successor stops it."""
        pid = self.dnsmasq.pid if self.dnsmasq else None
        if pid and (not self._pidfile.exists() or self._pidfile.read_text().strip() != str(pid)):
            self._pidfile.write_text(f"{pid}\n")

    def _stop_orphan(self, conf: Path) -> None:
        """A dnsmasq left by a server of this data dir that was killed (SIGKILL skips our shutdown)."""
        try:
            pid = int(self._pidfile.read_text())
            cmdline = Path(f"/proc/{pid}/cmdline").read_bytes().split(b"\0")
        except (OSError, ValueError):
            return
        if f"--conf-file={conf}".encode() in cmdline:  # ours, not a PID reused by someone else
            log.warning("stopping dnsmasq %d left by a previous server", pid)
            os.kill(pid, signal.SIGTERM)
            for _ in range(50):
                if not Path(f"/proc/{pid}").exists():
                    break
                time.sleep(0.1)
        self._pidfile.unlink(missing_ok=True)

    def stop(self) -> None:
        self._stop.set()
        if self._thread:
            self._thread.join(10)
        if self.dnsmasq:
            self.dnsmasq.stop()

    def _loop(self) -> None:
        while not self._stop.wait(self.interval):
            try:
                self._record_pid()  # the supervisor may have restarted it
                self.sync()
            except Exception:  # keep serving; the next round retries
                log.exception("provisioner round failed")

    def wanted_reservations(self) -> dict[str, tuple[str, str]]:
        """MAC -> (admin address, host name) for every node with an admin allocation."""
        with self.db.session() as s:
            rows = s.execute(
                select(Node.boot_mac, NetworkAllocation.address, Node.name)
                .join(NetworkAllocation, NetworkAllocation.node_id == Node.id)
                .join(NetworkRow, NetworkRow.id == NetworkAllocation.network_id)
                .where(NetworkRow.name == "admin", Node.boot_mac.is_not(None))).all()
        return {mac: (address, name) for mac, address, name in rows}

    def sync(self) -> int:
        """Write the reservations that changed and remove those no longer wanted; returns changes."""
        if self.settings is None:
            return 0
        hostsdir = self.settings.hostsdir
        wanted = self.wanted_reservations()
        changed = sum(dnsmasq.write_reservation(hostsdir, mac, ip, name.split(".")[0])
                      for mac, (ip, name) in wanted.items())
        present = {p.name for p in hostsdir.iterdir()} if hostsdir.exists() else set()
        keep = {dnsmasq.reservation_path(hostsdir, mac).name for mac in wanted}
        for stale in present - keep:
            (hostsdir / stale).unlink(missing_ok=True)
            changed += 1
        if changed and self.dnsmasq is not None and self.dnsmasq.pid:
            # New files are read through inotify; changed and removed ones only on SIGHUP (a re-read
            # of the host files, not a restart: leases and the process stay).
            self.dnsmasq.signal(signal.SIGHUP)
        return changed

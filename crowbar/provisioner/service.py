"""The provisioner's machinery as it runs inside `crowbar server`: dnsmasq for DHCP/TFTP on the
admin network (supervised, restarted when it dies, stopped with the server, and an orphan of a
killed server stopped on the next start), the discovery image for HTTP boot, and the host
reservations in dnsmasq's hosts directory.

No database here: what the reservations should be is decided by the DHCP reconciler
(`crowbar.server.reconciler`), which reads the nodes and hands the wanted set to `apply`. Only the
differences are written; dnsmasq notices new files by itself (inotify), so a reservation takes
effect without a restart.
"""

from __future__ import annotations

import ipaddress
import logging
import signal
import subprocess
from dataclasses import dataclass
from pathlib import Path

from crowbar.config import DEFAULT_DOMAIN
from crowbar.procs import read_pidfile, stop_pid
from crowbar.provisioner import dnsmasq
from crowbar.provisioner.image import DiscoveryImage, build_discovery_image
from crowbar.provisioner.supervisor import Supervisor

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class ProvisionerConfig:
    interface: str          # the admin bridge/NIC dnsmasq serves
    address: str            # the server's address on it
    advertise_url: str      # how booting machines reach the API (http://address:port)
    data_dir: Path
    domain: str = DEFAULT_DOMAIN


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


@dataclass(frozen=True)
class AdminPool:
    """The admin network as DHCP sees it: its subnet and the pool for machines not known yet."""

    subnet: str          # CIDR
    range_start: str
    range_end: str


class Provisioner:
    """dnsmasq and the discovery image for one admin interface; `apply` keeps the reservations."""

    def __init__(self, config: ProvisionerConfig):
        self.config = config
        self.state_dir = Path(config.data_dir) / "provisioner"
        self.image: DiscoveryImage | None = None
        self.dnsmasq: Supervisor | None = None
        self.settings: dnsmasq.DhcpSettings | None = None

    def dhcp_settings(self, pool: AdminPool) -> dnsmasq.DhcpSettings:
        subnet = ipaddress.ip_network(pool.subnet, strict=False)
        return dnsmasq.DhcpSettings(
            interface=self.config.interface, server_address=self.config.address,
            subnet=str(subnet.network_address), netmask=str(subnet.netmask),
            range_start=pool.range_start, range_end=pool.range_end, domain=self.config.domain,
            tftp_root=self.state_dir / "tftp", http_boot_url=f"{self.config.advertise_url}/boot",
            state_dir=self.state_dir, router=None, ipv6_ra_prefix=interface_ipv6_prefix(self.config.interface))

    def start(self, pool: AdminPool, reservations: dict[str, tuple[str, str]]) -> None:
        """Build the discovery image, write dnsmasq's config and the reservations, start dnsmasq."""
        self.image = build_discovery_image(Path(self.config.data_dir) / "images")
        self.settings = self.dhcp_settings(pool)
        conf = dnsmasq.prepare(self.settings)
        self._stop_orphan(conf)
        self.apply(reservations)
        self.dnsmasq = Supervisor("dnsmasq", dnsmasq.command(conf), log_path=self.state_dir / "dnsmasq.log")
        self.dnsmasq.start()
        self.record_pid()
        log.info("provisioner: dnsmasq on %s (%s), discovery image %s", self.config.interface,
                 self.config.address, self.image.digest[:12])

    @property
    def _pidfile(self) -> Path:
        return self.state_dir / "dnsmasq.pid"

    def record_pid(self) -> None:
        """Remember our dnsmasq's PID (the supervisor may have restarted it): if this server is
        killed outright, its successor stops that dnsmasq."""
        pid = self.dnsmasq.pid if self.dnsmasq else None
        if pid and read_pidfile(self._pidfile) != pid:
            self._pidfile.write_text(f"{pid}\n")

    def _stop_orphan(self, conf: Path) -> None:
        """A dnsmasq left by a server of this data dir that was killed (SIGKILL skips our shutdown);
        only a process whose command line names our config, not a PID reused by someone else."""
        pid = read_pidfile(self._pidfile)
        if stop_pid(pid, f"--conf-file={conf}", timeout=5):
            log.warning("stopped dnsmasq %d left by a previous server", pid)
        self._pidfile.unlink(missing_ok=True)

    def stop(self) -> None:
        if self.dnsmasq:
            self.dnsmasq.stop()

    def apply(self, wanted: dict[str, tuple[str, str]]) -> int:
        """Make the reservations exactly `wanted` (MAC -> (address, host name)): write those that
        changed, remove those no longer wanted; returns how many files changed."""
        if self.settings is None:
            return 0
        hostsdir = self.settings.hostsdir
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

"""Which link-layer (MAC) address a request came from: the server's neighbour table on the
provisioning interface (`crowbar server --provision`; docs/security.md, "Binding to the link").

A TCP peer on the admin network is a neighbour of the server: before the server could answer its
SYN, the kernel learnt the peer's MAC (ARP for IPv4, neighbour discovery for IPv6) on the interface
it is reached through. A peer that is not in the table on the provisioning interface came through
a router, or from another interface: it is not a machine on the admin network.

IPv4 is read from /proc/net/arp (the table of the process's network namespace: the lab's server
runs inside the lab's namespace); IPv6 from `ip -6 neigh`. Nothing here is cached: a table entry
is looked up per request, which costs a file read.
"""

from __future__ import annotations

import ipaddress
import subprocess
from collections.abc import Callable
from pathlib import Path

from crowbar.network.mac import normalize_mac

ARP_TABLE = Path("/proc/net/arp")
ATF_COM = 0x2  # the entry is complete (has a MAC)


def arp_lookup(table: str, address: str, interface: str) -> str | None:
    """The MAC of IPv4 `address` on `interface` in /proc/net/arp text, or None."""
    for line in table.splitlines()[1:]:
        fields = line.split()
        if len(fields) < 6 or fields[0] != address or fields[5] != interface:
            continue
        try:
            if not int(fields[2], 16) & ATF_COM:
                continue
            return normalize_mac(fields[3])
        except ValueError:
            continue
    return None


def ndisc_lookup(output: str) -> str | None:
    """The MAC in `ip -6 neigh show to ADDR dev IF` output ("fe80::1 lladdr 52:54:.. REACHABLE")."""
    for line in output.splitlines():
        words = line.split()
        if "lladdr" in words and "FAILED" not in words and "INCOMPLETE" not in words:
            try:
                return normalize_mac(words[words.index("lladdr") + 1])
            except (IndexError, ValueError):
                continue
    return None


def resolver(interface: str, arp_table: Path = ARP_TABLE) -> Callable[[str | None], str | None]:
    """A function from a peer's address (as the request shows it) to its MAC on `interface`."""

    def link_address(peer: str | None) -> str | None:
        try:
            ip = ipaddress.ip_address((peer or "").split("%", 1)[0])
        except ValueError:  # a unix socket, a test client: not a neighbour
            return None
        if ip.version == 6 and ip.ipv4_mapped:
            ip = ip.ipv4_mapped
        if ip.version == 4:
            try:
                return arp_lookup(arp_table.read_text(), str(ip), interface)
            except OSError:
                return None
        try:
            done = subprocess.run(["ip", "-6", "neigh", "show", "to", str(ip), "dev", interface],
                                  capture_output=True, text=True, timeout=5)
        except (OSError, subprocess.SubprocessError):
            return None
        return ndisc_lookup(done.stdout) if done.returncode == 0 else None

    return link_address

"""How long a host-reservation change takes to reach a running dnsmasq holding N reservations.

    python benchmarks/dhcp_reservations.py --reservations 100 1000 10000

In a pair of network namespaces this script creates (and always removes): dnsmasq, configured by
crowbar.provisioner.dnsmasq and run by its Supervisor, serves a bridge; a client namespace asks with
busybox udhcpc. For each N it pre-writes N reservation files, starts dnsmasq, then measures
  - new:     write the client's reservation (inotify, no signal) until udhcpc is given that address;
  - changed: rewrite it to another address + SIGHUP (what the provisioner does) until it is given;
  - baseline: one plain DHCP exchange with nothing changed (the floor of the two figures above).
dnsmasq is never restarted: its PID is checked to be the same at the end.
"""

from __future__ import annotations

import argparse
import ipaddress
import json
import os
import signal
import subprocess
import tempfile
import time
import uuid
from pathlib import Path

from crowbar.provisioner import dnsmasq
from crowbar.provisioner.supervisor import Supervisor

SERVER = "10.77.0.1"
NETWORK = ipaddress.ip_network("10.77.0.0/16")
CLIENT_MAC = "52:54:00:be:00:01"


def ip(*args: str) -> None:
    subprocess.run(["ip", *args], check=True, capture_output=True, timeout=10)


def dhcp(ns: str, tmp: Path) -> str:
    """One DHCP exchange from the client namespace; the address it was given."""
    out = tmp / "lease"
    out.unlink(missing_ok=True)
    script = tmp / "udhcpc.sh"
    script.write_text('#!/bin/sh\n[ "$1" = bound ] && echo "$ip" > "$OUT"\nexit 0\n')
    script.chmod(0o755)
    subprocess.run(["ip", "netns", "exec", ns, "busybox", "udhcpc", "-i", "eth0", "-f", "-q", "-n", "-t", "5",
                    "-T", "1", "-A", "1", "-s", str(script)], env={**os.environ, "OUT": str(out)},
                   capture_output=True, timeout=30)
    return out.read_text().strip() if out.exists() else ""


def until_given(ns: str, tmp: Path, address: str, timeout: float = 60) -> float:
    start = time.perf_counter()
    while time.perf_counter() - start < timeout:
        if dhcp(ns, tmp) == address:
            return time.perf_counter() - start
    raise TimeoutError(f"{address} was not given within {timeout}s")


def run(n: int) -> dict:
    tag = uuid.uuid4().hex[:6]
    srv, cli = f"cbb-{tag}-srv", f"cbb-{tag}-cli"
    created: list[str] = []
    with tempfile.TemporaryDirectory() as d:
        tmp = Path(d)
        try:
            for ns in (srv, cli):
                ip("netns", "add", ns)
                created.append(ns)
                ip("-n", ns, "link", "set", "lo", "up")
            ip("-n", srv, "link", "add", "br0", "type", "bridge")
            ip("-n", srv, "addr", "add", f"{SERVER}/16", "dev", "br0")
            ip("-n", srv, "link", "set", "br0", "up")
            ip("-n", srv, "link", "add", "veth0", "type", "veth", "peer", "name", "eth0", "netns", cli)
            ip("-n", srv, "link", "set", "veth0", "master", "br0", "up")
            ip("-n", cli, "link", "set", "eth0", "address", CLIENT_MAC, "up")
            settings = dnsmasq.DhcpSettings(
                interface="br0", server_address=SERVER, subnet=str(NETWORK.network_address),
                netmask=str(NETWORK.netmask), range_start="10.77.200.1", range_end="10.77.200.250",
                domain="bench.example.com", tftp_root=tmp / "tftp", http_boot_url=f"http://{SERVER}:3000/boot",
                state_dir=tmp / "dnsmasq", lease_time=600)
            conf = dnsmasq.prepare(settings)
            hosts = list(NETWORK.hosts())[10:10 + n]
            for i, addr in enumerate(hosts):
                mac = f"52:54:{(i >> 16) & 255:02x}:{(i >> 8) & 255:02x}:{i & 255:02x}:aa"
                dnsmasq.write_reservation(settings.hostsdir, mac, str(addr), f"n{i}")
            with Supervisor("dnsmasq", dnsmasq.command(conf, netns=srv), log_path=tmp / "dnsmasq.log") as sup:
                pid = sup.wait_running(10)
                time.sleep(1)
                dhcp(cli, tmp)  # the first, dynamic lease (dnsmasq pings a pool address first)
                t0 = time.perf_counter()
                dhcp(cli, tmp)
                baseline = time.perf_counter() - t0
                new_ip, changed_ip = "10.77.250.1", "10.77.250.2"
                t0 = time.perf_counter()
                dnsmasq.write_reservation(settings.hostsdir, CLIENT_MAC, new_ip, "client")
                until_given(cli, tmp, new_ip)
                new = time.perf_counter() - t0  # from the write to the client holding the address
                t0 = time.perf_counter()
                dnsmasq.write_reservation(settings.hostsdir, CLIENT_MAC, changed_ip, "client")
                sup.signal(signal.SIGHUP)
                until_given(cli, tmp, changed_ip)
                changed = time.perf_counter() - t0
                assert sup.pid == pid, "dnsmasq was restarted"
            return {"reservations": n, "baseline_dhcp_s": round(baseline, 3), "new_reservation_s": round(new, 3),
                    "changed_reservation_sighup_s": round(changed, 3)}
        finally:
            for ns in created:
                for pid in subprocess.run(["ip", "netns", "pids", ns], capture_output=True, text=True).stdout.split():
                    try:
                        os.kill(int(pid), signal.SIGKILL)
                    except ProcessLookupError:
                        pass
                subprocess.run(["ip", "netns", "del", ns], capture_output=True, timeout=10)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--reservations", type=int, nargs="+", default=[100, 1000, 10000])
    args = ap.parse_args()
    for n in args.reservations:
        print(json.dumps(run(n)), flush=True)


if __name__ == "__main__":
    main()

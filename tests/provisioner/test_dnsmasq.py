"""dnsmasq's config and reservations, the supervisor, and the real thing in network namespaces.

The namespace tests build, per test, a server namespace (bridge br0 with the server address) and a
client namespace joined to it by a veth pair, run dnsmasq in the first through the Supervisor and
busybox's udhcpc / tftp in the second. Names start with `cbt-`; teardown removes the namespaces
and stops every process started in them, also when the test fails.
"""

from __future__ import annotations

import ipaddress
import os
import shutil
import signal
import subprocess
import sys
import time
import uuid
from contextlib import contextmanager
from dataclasses import dataclass, replace
from pathlib import Path

import pytest

from crowbar.errors import InvalidInput
from crowbar.provisioner import dnsmasq, ipxe
from crowbar.provisioner.supervisor import Supervisor

SERVER = "192.168.124.10"
POOL = ("192.168.124.21", "192.168.124.80")
DOMAIN = "lab.example.com"
BOOT_URL = f"http://{SERVER}:3000/boot"
CLIENT_MAC = "52:54:00:cb:00:01"
ROOT = os.geteuid() == 0


def settings(tmp_path: Path, **changes) -> dnsmasq.DhcpSettings:
    base = dnsmasq.DhcpSettings(
        interface="br0", server_address=SERVER, subnet="192.168.124.0", netmask="255.255.255.0",
        range_start=POOL[0], range_end=POOL[1], domain=DOMAIN, tftp_root=tmp_path / "tftp",
        http_boot_url=BOOT_URL, state_dir=tmp_path / "dnsmasq", lease_time=600)
    return replace(base, **changes)


def needs(*programs: str):
    missing = [p for p in programs if not shutil.which(p)]
    return pytest.mark.skipif(bool(missing), reason=f"needs {', '.join(missing)} "
                              "(Debian packages dnsmasq, busybox-static, ipxe, qemu-system-x86)")


def wait_for(predicate, timeout: float, what: str, interval: float = 0.05):
    deadline = time.monotonic() + timeout
    while True:
        value = predicate()
        if value:
            return value
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout}s waiting for {what}")
        time.sleep(interval)


def pid_alive(pid: int) -> bool:
    try:
        with open(f"/proc/{pid}/stat") as stat:
            return stat.read().rsplit(")", 1)[1].split()[0] != "Z"
    except FileNotFoundError:
        return False


# --- config rendering ---------------------------------------------------------------------------

def test_config_has_the_pool_the_hostsdir_and_the_boot_chain(tmp_path):
    s = settings(tmp_path, router="192.168.124.1", dns_servers=("192.168.124.10", "192.168.124.11"))
    conf = dnsmasq.render_config(s).splitlines()
    for line in [
        "port=0", "interface=br0", "bind-interfaces", "dhcp-authoritative",
        f"dhcp-range={POOL[0]},{POOL[1]},255.255.255.0,600",
        f"dhcp-hostsdir={tmp_path}/dnsmasq/hosts",
        f"dhcp-leasefile={tmp_path}/dnsmasq/dnsmasq.leases",
        f"domain={DOMAIN}", "enable-tftp", f"tftp-root={tmp_path}/tftp",
        "dhcp-option=option:router,192.168.124.1",
        "dhcp-option=option:dns-server,192.168.124.10,192.168.124.11",
        "dhcp-match=set:ipxe,175", "dhcp-userclass=set:ipxe,iPXE",
        "dhcp-match=set:bios,option:client-arch,0",
        "dhcp-match=set:efi64,option:client-arch,7", "dhcp-match=set:efi64,option:client-arch,9",
        f"dhcp-boot=tag:ipxe,{BOOT_URL}/${{netX/mac:hexhyp}}.ipxe",
        f"dhcp-boot=tag:!ipxe,tag:bios,undionly.kpxe,,{SERVER}",
        f"dhcp-boot=tag:!ipxe,tag:efi64,ipxe.efi,,{SERVER}",
        "dhcp-match=set:efihttp,option:client-arch,16",
        f"dhcp-boot=tag:!ipxe,tag:efihttp,{BOOT_URL}/ipxe/ipxe.efi",
        "dhcp-option-force=tag:!ipxe,tag:efihttp,60,HTTPClient",
        "dhcp-option=tag:ipxe,encap:175,176,1b",
    ]:
        assert line in conf, line
    assert "enable-ra" not in conf and not any("ra-only" in line for line in conf)


def test_without_router_or_dns_dnsmasq_advertises_neither(tmp_path):
    conf = dnsmasq.render_config(settings(tmp_path)).splitlines()
    assert "dhcp-option=option:router" in conf and "dhcp-option=option:dns-server" in conf


def test_router_advertisements_are_opt_in(tmp_path):
    conf = dnsmasq.render_config(settings(tmp_path, ipv6_ra_prefix="fd00:cb::/64")).splitlines()
    assert conf[-3:] == ["enable-ra", "dhcp-range=fd00:cb::,ra-only,64", "ra-param=br0,60,0"]


@pytest.mark.parametrize("changes, field", [
    ({"server_address": "10.0.0.1"}, "server_address"),
    ({"range_start": "192.168.124.90"}, "range_start"),
    ({"range_end": "192.168.124.255"}, "range_end"),
    ({"server_address": "192.168.124.30"}, "server_address"),
    ({"netmask": "255.0.255.0"}, "subnet"),
    ({"router": "192.168.125.1"}, "router"),
    ({"lease_time": 60}, "lease_time"),
    ({"domain": "bad domain"}, "domain"),
    ({"ipv6_ra_prefix": "fd00:cb::/48"}, "ipv6_ra_prefix"),
])
def test_settings_that_do_not_fit_together_are_refused(tmp_path, changes, field):
    with pytest.raises(InvalidInput) as info:
        dnsmasq.render_config(settings(tmp_path, **changes))
    assert info.value.field == field


@needs("dnsmasq")
def test_prepare_writes_a_config_dnsmasq_accepts_and_copies_the_boot_files(tmp_path):
    s = settings(tmp_path, ipv6_ra_prefix="fd00:cb::/64")
    conf = dnsmasq.prepare(s)
    assert conf == s.conf_path and s.hostsdir.is_dir()
    for name in ("undionly.kpxe", "ipxe.efi"):
        assert (s.tftp_root / name).read_bytes() == (dnsmasq.IPXE_DIR / name).read_bytes()
    check = subprocess.run(["dnsmasq", "--test", f"--conf-file={conf}"], capture_output=True,
                           text=True, timeout=10)
    assert check.returncode == 0, check.stderr
    assert "syntax check OK" in check.stderr


def test_prepare_refuses_without_ipxe(tmp_path):
    with pytest.raises(FileNotFoundError, match="ipxe package"):
        dnsmasq.prepare(settings(tmp_path), ipxe_dir=tmp_path / "nothing")


def test_command_runs_in_the_foreground_optionally_in_a_namespace(tmp_path):
    conf = tmp_path / "d.conf"
    assert dnsmasq.command(conf) == ["dnsmasq", "--keep-in-foreground", f"--conf-file={conf}"]
    assert dnsmasq.command(conf, netns="cbt-x")[:4] == ["ip", "netns", "exec", "cbt-x"]


# --- reservation files --------------------------------------------------------------------------

def test_reservations_are_one_file_per_node_and_report_when_dnsmasq_needs_sighup(tmp_path):
    hosts = tmp_path / "hosts"
    hosts.mkdir()
    assert dnsmasq.write_reservation(hosts, "52-54-00-AB-CD-EF", "192.168.124.81", "Node1") is False
    path = hosts / "52-54-00-ab-cd-ef"
    assert path.read_text() == "52:54:00:ab:cd:ef,192.168.124.81,node1\n"
    assert path.stat().st_mode & 0o777 == 0o644
    assert dnsmasq.write_reservation(hosts, "52:54:00:ab:cd:ef", "192.168.124.81", "node1") is False
    assert dnsmasq.write_reservation(hosts, "52:54:00:ab:cd:ef", "192.168.124.82", "node1") is True
    assert [p.name for p in hosts.iterdir()] == ["52-54-00-ab-cd-ef"]  # no temp files left
    assert dnsmasq.remove_reservation(hosts, "52:54:00:ab:cd:ef") is True
    assert dnsmasq.remove_reservation(hosts, "52:54:00:ab:cd:ef") is False
    assert list(hosts.iterdir()) == []


@pytest.mark.parametrize("mac, ip, hostname, error", [
    ("52:54:00:ab:cd", "192.168.124.81", "n1", ValueError),
    ("52:54:00:ab:cd:ef", "192.168.124", "n1", InvalidInput),
    ("52:54:00:ab:cd:ef", "192.168.124.81", "n1,extra", InvalidInput),
    ("52:54:00:ab:cd:ef", "192.168.124.81", "-n1", InvalidInput),
])
def test_reservations_refuse_what_would_corrupt_the_file(tmp_path, mac, ip, hostname, error):
    with pytest.raises(error):
        dnsmasq.write_reservation(tmp_path, mac, ip, hostname)
    assert list(tmp_path.iterdir()) == []


# --- the supervisor -----------------------------------------------------------------------------

def test_supervisor_runs_restarts_and_stops_its_child():
    with Supervisor("sleeper", ["sleep", "60"], min_backoff=0.05) as sup:
        first = sup.wait_running()
        os.kill(first, signal.SIGKILL)
        second = sup.wait_running(5, other_than=first)
        assert second != first and sup.starts == 2
    assert sup.pid is None and not pid_alive(second)


def test_supervisor_backs_off_when_the_child_keeps_dying():
    sup = Supervisor("failing", ["false"], min_backoff=0.1, max_backoff=0.4)
    sup.start()
    time.sleep(1.6)      # quick deaths: waits of 0.1, 0.2, 0.4, 0.4, ... between starts
    sup.stop()
    assert 3 <= sup.starts <= 7


def test_supervisor_kills_a_child_that_ignores_sigterm(tmp_path):
    ready = tmp_path / "ready"
    sup = Supervisor("stubborn", ["sh", "-c", f"trap '' TERM; touch {ready}; exec sleep 60"],
                     stop_timeout=0.5)
    sup.start()
    pid = sup.wait_running()
    wait_for(ready.exists, 5, "the child to ignore SIGTERM")
    started = time.monotonic()
    sup.stop()
    assert not pid_alive(pid) and time.monotonic() - started < 3


def test_supervisor_signal_needs_a_running_child():
    sup = Supervisor("idle", ["sleep", "60"])
    with pytest.raises(ProcessLookupError):
        sup.signal()


def test_the_child_dies_with_its_owner_even_when_the_owner_is_killed(tmp_path):
    owner = subprocess.Popen(
        [sys.executable, "-c",
         "import time\nfrom crowbar.provisioner.supervisor import Supervisor\n"
         "s = Supervisor('orphan', ['sleep', '60'])\ns.start()\n"
         "print(s.wait_running(), flush=True)\ntime.sleep(60)\n"],
        stdout=subprocess.PIPE, text=True)
    try:
        child = int(owner.stdout.readline())
        assert pid_alive(child)
        owner.kill()
        owner.wait(5)
        wait_for(lambda: not pid_alive(child), 5, f"child {child} to die with its owner")
    finally:
        owner.kill()
        owner.wait(5)
        owner.stdout.close()


# --- the real dnsmasq in network namespaces ------------------------------------------------------

@dataclass
class Netns:
    server: str
    client: str
    tmp: Path
    started: list  # Popen objects this test started inside the namespaces

    def run(self, ns: str, *argv: str, timeout: float = 30, **kwargs) -> subprocess.CompletedProcess:
        return subprocess.run(["ip", "netns", "exec", ns, *argv], capture_output=True, text=True,
                              timeout=timeout, **kwargs)


def _ip(*args: str) -> None:
    subprocess.run(["ip", *args], check=True, capture_output=True, timeout=10)


@contextmanager
def namespaces(tmp: Path):
    """Two namespaces: `server` with bridge br0 (SERVER/24), `client` with eth0 on that bridge."""
    if not ROOT:
        pytest.skip("network namespaces need root")
    tag = uuid.uuid4().hex[:6]
    lab = Netns(f"cbt-{tag}-srv", f"cbt-{tag}-cli", tmp, [])
    created = []
    try:
        for ns in (lab.server, lab.client):
            _ip("netns", "add", ns)
            created.append(ns)
            _ip("-n", ns, "link", "set", "lo", "up")
        _ip("-n", lab.server, "link", "add", "br0", "type", "bridge")
        _ip("-n", lab.server, "addr", "add", f"{SERVER}/24", "dev", "br0")
        _ip("-n", lab.server, "link", "set", "br0", "up")
        _ip("-n", lab.server, "link", "add", "veth0", "type", "veth", "peer", "name", "eth0",
            "netns", lab.client)
        _ip("-n", lab.server, "link", "set", "veth0", "master", "br0", "up")
        _ip("-n", lab.client, "link", "set", "eth0", "address", CLIENT_MAC, "up")
        yield lab
    finally:
        for proc in lab.started:
            if proc.poll() is None:
                proc.kill()
                proc.wait(10)
        for ns in created:
            # Anything still running in a namespace this test created was started by this test.
            pids = subprocess.run(["ip", "netns", "pids", ns], capture_output=True, text=True,
                                  timeout=10).stdout.split()
            for pid in pids:
                try:
                    os.kill(int(pid), signal.SIGKILL)
                except ProcessLookupError:
                    pass
            subprocess.run(["ip", "netns", "del", ns], capture_output=True, timeout=10)
        leftover = subprocess.run(["ip", "netns", "list"], capture_output=True, text=True).stdout
        assert not any(ns in leftover for ns in created)


class Dnsmasq:
    def __init__(self, lab: Netns, s: dnsmasq.DhcpSettings):
        self.lab, self.settings = lab, s
        self.log = lab.tmp / "dnsmasq.log"
        conf = dnsmasq.prepare(s)
        self.supervisor = Supervisor("dnsmasq", dnsmasq.command(conf, netns=lab.server),
                                     log_path=self.log, min_backoff=0.2)
        self._leases = 0

    def log_count(self, text: str) -> int:
        return self.log.read_text(errors="replace").count(text) if self.log.exists() else 0

    def wait_log(self, text: str, count: int = 1, timeout: float = 10) -> None:
        wait_for(lambda: self.log_count(text) >= count, timeout, f"{text!r} x{count} in dnsmasq's log")

    def dhcp(self, *options: str) -> dict:
        """One DHCP exchange from the client namespace with busybox udhcpc; the bound lease."""
        self._leases += 1
        out = self.lab.tmp / f"lease{self._leases}.env"
        script = self.lab.tmp / "udhcpc.sh"
        fields = ("ip", "boot_file", "siaddr", "hostname", "domain", "router", "dns", "vendor")
        script.write_text('#!/bin/sh\n[ "$1" = bound ] || exit 0\n{\n'
                          + "".join(f'echo "{f}=${f}"\n' for f in fields) + '} > "$OUT"\n')
        script.chmod(0o755)
        done = self.lab.run(self.lab.client, "busybox", "udhcpc", "-i", "eth0", "-f", "-q", "-n",
                            "-t", "8", "-T", "1", "-A", "1", "-s", str(script), *options,
                            env={**os.environ, "OUT": str(out)})
        assert done.returncode == 0 and out.exists(), f"no lease: {done.stdout}{done.stderr}"
        return dict(line.split("=", 1) for line in out.read_text().splitlines())


@contextmanager
def running_dnsmasq(lab: Netns):
    if not shutil.which("dnsmasq") or not shutil.which("busybox"):
        pytest.skip("needs dnsmasq and busybox (Debian packages dnsmasq, busybox-static)")
    d = Dnsmasq(lab, settings(lab.tmp))
    with d.supervisor:
        d.wait_log("TFTP root is")
        yield d


@pytest.fixture
def netns(tmp_path):
    with namespaces(tmp_path) as lab:
        yield lab


@pytest.fixture
def server(netns):
    with running_dnsmasq(netns) as d:
        yield d


@pytest.fixture(scope="module")
def shared_server(tmp_path_factory):
    """One dnsmasq for the tests that only ask it questions (a machine's first lease costs 3 s)."""
    with namespaces(tmp_path_factory.mktemp("shared")) as lab, running_dnsmasq(lab) as d:
        yield d


def in_pool(address: str) -> bool:
    return (ipaddress.IPv4Address(POOL[0]) <= ipaddress.IPv4Address(address)
            <= ipaddress.IPv4Address(POOL[1]))


def test_reservations_reach_the_running_dnsmasq_without_a_restart(server):
    hosts, pid = server.settings.hostsdir, server.supervisor.pid
    unknown = server.dhcp()
    assert in_pool(unknown["ip"]) and unknown["domain"] == DOMAIN
    assert unknown["boot_file"] == "" and unknown["router"] == "" and unknown["dns"] == ""

    file = str(dnsmasq.reservation_path(hosts, CLIENT_MAC))
    assert dnsmasq.write_reservation(hosts, CLIENT_MAC, "192.168.124.81", "d52-54-00-cb-00-01") is False
    server.wait_log(f"read {file}")            # inotify, no signal
    lease = server.dhcp()
    assert (lease["ip"], lease["hostname"]) == ("192.168.124.81", "d52-54-00-cb-00-01")

    assert dnsmasq.write_reservation(hosts, CLIENT_MAC, "192.168.124.82", "d52-54-00-cb-00-01") is True
    reads = server.log_count(f"read {file}")
    server.supervisor.signal(signal.SIGHUP)
    server.wait_log(f"read {file}", reads + 1)
    assert server.dhcp()["ip"] == "192.168.124.82"

    assert dnsmasq.remove_reservation(hosts, CLIENT_MAC) is True
    server.supervisor.signal(signal.SIGHUP)
    server.wait_log(f"cannot read {file}")     # the re-read no longer finds it
    released = server.dhcp()
    assert in_pool(released["ip"]) and released["hostname"] == ""

    assert server.supervisor.pid == pid and server.supervisor.starts == 1


ARCH = "0x5d:{:04x}"          # option 93, client system architecture
IPXE_OPTION = "0xaf:130101"   # option 175 with one encapsulated iPXE feature flag
IPXE_USER_CLASS = "0x4d:69505845"   # option 77, "iPXE"


@pytest.mark.parametrize("name, options, expected", [
    ("BIOS PXE", ["-V", "PXEClient:Arch:00000:UNDI:002001", "-x", ARCH.format(0)], "undionly.kpxe"),
    ("UEFI x86-64 (7)", ["-V", "PXEClient:Arch:00007:UNDI:003016", "-x", ARCH.format(7)], "ipxe.efi"),
    ("UEFI x86-64 (9)", ["-V", "PXEClient:Arch:00009:UNDI:003016", "-x", ARCH.format(9)], "ipxe.efi"),
    ("iPXE on BIOS (175)", ["-x", ARCH.format(0), "-x", IPXE_OPTION], ipxe.dhcp_script_url(BOOT_URL)),
    ("iPXE on UEFI (user class)", ["-x", ARCH.format(7), "-x", IPXE_USER_CLASS],
     ipxe.dhcp_script_url(BOOT_URL)),
])
def test_boot_file_follows_the_client(shared_server, name, options, expected):
    lease = shared_server.dhcp(*options)
    assert lease["boot_file"] == expected, name
    assert lease["siaddr"] == SERVER


def test_uefi_http_boot_clients_get_ipxes_url_and_the_vendor_class_they_need(shared_server):
    http = shared_server.dhcp("-V", "HTTPClient:Arch:00016:UNDI:003001", "-x", ARCH.format(16), "-O", "60")
    assert http["boot_file"] == f"{BOOT_URL}/ipxe/ipxe.efi"
    assert http["vendor"] == "HTTPClient"  # option 60: without it the firmware ignores the offer
    pxe = shared_server.dhcp("-V", "PXEClient:Arch:00007:UNDI:003016", "-x", ARCH.format(7), "-O", "60")
    assert pxe["boot_file"] == "ipxe.efi" and pxe["vendor"] == ""  # PXE firmware: as before


def test_tftp_serves_the_ipxe_binaries(server):
    lease = server.dhcp()
    lab = server.lab
    lab.run(lab.client, "ip", "addr", "add", f"{lease['ip']}/24", "dev", "eth0").check_returncode()
    for name in (dnsmasq.BIOS_BOOT_FILE, dnsmasq.UEFI_BOOT_FILE):
        target = lab.tmp / f"fetched-{name}"
        done = lab.run(lab.client, "busybox", "tftp", "-b", "1400", "-g", "-r", name,
                       "-l", str(target), SERVER)
        assert done.returncode == 0, done.stderr
        assert target.read_bytes() == (dnsmasq.IPXE_DIR / name).read_bytes()


def test_a_killed_dnsmasq_is_restarted_and_serves_again(server):
    first = server.supervisor.pid
    os.kill(first, signal.SIGKILL)
    second = server.supervisor.wait_running(10, other_than=first)
    assert second != first and server.supervisor.starts == 2
    server.wait_log("TFTP root is", 2)
    assert in_pool(server.dhcp()["ip"])


@pytest.mark.e2e
@needs("qemu-system-x86_64", "dnsmasq")
def test_a_vm_firmware_ipxe_fetches_and_runs_its_own_script(netns, tmp_path):
    """The whole chain with qemu's own iPXE ROM: DHCP, the per-MAC URL, the local-boot script.

    With router advertisements on, iPXE's address configuration is quick (without them it waits
    about 14 s for IPv6 routers that never answer).
    """
    mac = "52:54:00:cb:00:02"
    _ip("-n", netns.server, "addr", "add", "fd00:cb::1/64", "dev", "br0", "nodad")
    _ip("-n", netns.server, "tuntap", "add", "dev", "tap0", "mode", "tap")
    _ip("-n", netns.server, "link", "set", "tap0", "master", "br0", "up")
    www = tmp_path / "www"
    (www / "boot").mkdir(parents=True)
    params = ipxe.BootParams(server_url=f"http://{SERVER}:3000", boot_url=BOOT_URL)
    (www / "boot" / ipxe.script_name(mac)).write_text(ipxe.render("local", params, mac=mac))
    http_log = tmp_path / "http.log"
    with open(http_log, "wb") as out:
        netns.started.append(subprocess.Popen(
            ["ip", "netns", "exec", netns.server, sys.executable, "-m", "http.server", "3000",
             "--bind", SERVER, "--directory", str(www)], stdout=out, stderr=subprocess.STDOUT))
    d = Dnsmasq(netns, settings(tmp_path, ipv6_ra_prefix="fd00:cb::/64"))
    serial = tmp_path / "serial.log"
    with d.supervisor:
        d.wait_log("TFTP root is")
        netns.started.append(subprocess.Popen(
            ["ip", "netns", "exec", netns.server, "qemu-system-x86_64", "-machine", "pc",
             "-accel", "tcg", "-m", "128", "-nographic", "-nodefaults",
             "-serial", f"file:{serial}", "-boot", "n",
             "-netdev", "tap,id=n0,ifname=tap0,script=no,downscript=no",
             "-device", f"virtio-net-pci,netdev=n0,mac={mac}"],
            stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL))

        def console() -> str:
            return serial.read_text(errors="replace") if serial.exists() else ""

        wait_for(lambda: "Booting from SAN device 0x80" in console(), 120, "the script to run")
    text = console()
    assert f"Filename: {BOOT_URL}/{ipxe.script_name(mac)}" in text
    assert "Crowbar: booting from the local disk" in text
    assert f"GET /boot/{ipxe.script_name(mac)} " in http_log.read_text()
    configuring = text[text.index("Configuring"):].split("\n", 1)[0]
    assert configuring.count(".") < 10, f"slow address configuration: {configuring}"

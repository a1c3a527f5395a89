"""The lab's pieces that need no VM: MACs, the qemu command line, per-VM options, the state file,
the CLI's default endpoint, the lab barclamp and its script (run under busybox here)."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
from pathlib import Path

import pytest

from crowbar import config
from crowbar.barclamps import loader
from crowbar.lab import lab as labmod
from crowbar.lab.lab import Lab, LabError, LabState, _per_vm, barclamp_dir, barclamp_files
from crowbar.lab.vm import Vm, mac


def test_macs_are_deterministic_and_distinct():
    assert mac(0xAB, 1, 0) == "52:54:00:cb:ab:10"
    assert mac(0xAB, 15, 15) == "52:54:00:cb:ab:ff"
    macs = {mac(7, vm, nic) for vm in range(1, 16) for nic in range(16)}
    assert len(macs) == 15 * 16
    for bad in ((7, 0, 0), (7, 16, 0), (7, 1, 16), (256, 1, 0)):
        with pytest.raises(ValueError):
            mac(*bad)


def test_vm_plan_and_qemu_argv(tmp_path):
    vm = Vm.plan(2, 0x1A, tmp_path, memory_mb=384, disk_gb=1.5, nics=3)
    assert vm.name == "vm2" and vm.macs == ["52:54:00:cb:1a:20", "52:54:00:cb:1a:21", "52:54:00:cb:1a:22"]
    assert [n.bridge for n in vm.nics] == ["br-admin", "br-data", "br-data"]
    # one driver for every NIC: the kernel names them in PCI order (eth0 is the admin NIC) at every boot
    assert [n.model for n in vm.nics] == ["virtio-net-pci"] * 3
    assert len({n.tap for n in vm.nics}) == 3 and all(len(n.tap) <= 15 for n in vm.nics)
    argv = vm.argv()
    joined = " ".join(argv)
    assert argv[0] == "qemu-system-x86_64"
    for expected in ("-machine pc", "-accel tcg", "-m 384", "-smp 1", "-daemonize", "-S",
                     f"-pidfile {vm.pidfile}", f"-qmp unix:{vm.qmp},server=on,wait=off",
                     f"file={vm.disk},format=raw,if=none,id=disk0"):
        assert expected in joined, expected
    assert f"path={vm.console},append=on" in joined and "pflash" not in joined
    devices = [argv[i + 1] for i, a in enumerate(argv) if a == "-device"]
    assert devices[0] == "virtio-blk-pci,drive=disk0,bootindex=2"  # the disk after the NIC
    assert devices[1] == "virtio-net-pci,netdev=net0,mac=52:54:00:cb:1a:20,bootindex=1"
    assert all(d.endswith(",romfile=") for d in devices[2:])  # only the admin NIC PXE-boots
    vm.prepare()
    assert vm.disk.stat().st_size == int(1.5 * (1 << 30)) and vm.disk.stat().st_blocks == 0  # sparse
    assert vm.sercon.read_bytes() == b"\xf8\x03"
    assert Vm.from_dict(json.loads(json.dumps(vm.to_dict()))) == vm


def test_uefi_vms_get_q35_and_ovmf_with_their_own_variable_store(tmp_path):
    from crowbar.lab.vm import OVMF_CODE

    vm = Vm.plan(1, 0x1A, tmp_path, memory_mb=512, disk_gb=4, nics=1, firmware="uefi")
    joined = " ".join(vm.argv())
    assert "-machine q35" in joined
    assert f"if=pflash,format=raw,unit=0,readonly=on,file={OVMF_CODE}" in joined
    assert f"if=pflash,format=raw,unit=1,file={vm.efivars}" in joined
    if OVMF_CODE.is_file():
        vm.prepare()
        assert vm.efivars.stat().st_size > 0
    with pytest.raises(ValueError, match="expected bios or uefi"):
        Vm.plan(1, 0x1A, tmp_path, memory_mb=512, disk_gb=4, nics=1, firmware="coreboot")


@pytest.mark.parametrize("value, count, expected", [
    ("bios", 2, ["bios", "bios"]), ("uefi", 1, ["uefi"]), ("mixed", 3, ["bios", "uefi", "bios"]),
    ("bios,uefi", 2, ["bios", "uefi"]),
])
def test_firmware_plans(value, count, expected):
    from crowbar.lab.lab import firmware_plan

    assert firmware_plan(value, count) == expected


@pytest.mark.parametrize("value, words", [("efi", "expected bios, uefi, mixed"), ("bios,uefi,bios", "lists 3 values")])
def test_bad_firmware_plans(value, words):
    from crowbar.lab.lab import LabError, firmware_plan

    with pytest.raises(LabError, match=words):
        firmware_plan(value, 2)


def test_per_vm_values():
    assert _per_vm("512", 3, "memory", int) == [512, 512, 512]
    assert _per_vm("384,512", 2, "memory", int) == [384, 512]
    assert _per_vm(2, 2, "nics", int) == [2, 2]
    assert _per_vm("1.5", 1, "disk", float) == [1.5]
    with pytest.raises(LabError, match="2 values for 3 VMs"):
        _per_vm("1,2", 3, "nics", int)
    with pytest.raises(LabError, match="not a number"):
        _per_vm("lots", 1, "memory", int)


def test_up_refuses_bad_sizes_before_creating_anything(tmp_path):
    lab = Lab(tmp_path / "lab")
    for kwargs, message in (({"nodes": 0}, "--nodes"), ({"nodes": 16}, "--nodes"),
                            ({"nodes": 1, "memory": 128}, "--memory"), ({"nodes": 1, "nics": 0}, "--nics"),
                            ({"nodes": 2, "nics": "1,2,3"}, "3 values for 2"), ({"nodes": 1, "disk": 0}, "--disk")):
        with pytest.raises(LabError, match=message):
            lab.up(**kwargs)
    assert not (tmp_path / "lab").exists()


def test_status_and_down_without_a_lab(tmp_path):
    lab = Lab(tmp_path / "nothing")
    assert lab.status() == {"dir": str(tmp_path / "nothing"), "running": False, "namespace": None, "vms": []}
    assert lab.down() == []
    assert lab.down() == []


def test_state_round_trip_and_stale_state(tmp_path, monkeypatch):
    monkeypatch.setenv("XDG_CONFIG_HOME", str(tmp_path / "config"))
    directory = tmp_path / "lab"
    directory.mkdir()
    state = LabState(namespace="cblab-000000", lab_byte=0, dir=str(directory), created_at="now",
                     bridges=["br-admin"], server={"pid": 2 ** 22 + 1, "socket": str(directory / "api.sock")},
                     vms=[Vm.plan(1, 0, directory, 512, 1, 1)])
    (directory / "lab.json").write_text(json.dumps(state.to_dict()))
    lab = Lab(directory)
    assert lab.state.to_dict() == state.to_dict()
    assert not lab.running()  # its server PID does not run
    status = lab.status()
    assert status["running"] is False and status["vms"][0]["macs"] == ["52:54:00:cb:00:10"]
    # A stopped lab's remains: `down` removes them without touching anything that runs.
    monkeypatch.setattr(labmod, "namespace_exists", lambda name: False)
    assert lab.down() == []
    assert not directory.exists()


def test_broken_state_file_is_reported(tmp_path):
    (tmp_path / "lab.json").write_text("{not json")
    with pytest.raises(LabError, match="not a lab state file"):
        Lab(tmp_path)


def test_default_endpoint_is_the_running_lab(tmp_path, monkeypatch):
    for var in ("CROWBAR_ENDPOINT", "CROWBAR_LAB_DIR"):
        monkeypatch.delenv(var, raising=False)
    monkeypatch.setenv("CROWBAR_DATA_DIR", str(tmp_path / "data"))
    assert config.lab_dir() == tmp_path / "data" / "lab"
    monkeypatch.setenv("CROWBAR_LAB_DIR", str(tmp_path / "lab"))
    assert config.lab_dir() == tmp_path / "lab"
    assert config.endpoint() == "http://127.0.0.1:3000"  # no lab
    (tmp_path / "lab").mkdir()
    sock = tmp_path / "lab" / "api.sock"
    state = {"server": {"pid": os.getpid(), "socket": str(sock)}}
    (tmp_path / "lab" / "lab.json").write_text(json.dumps(state))
    assert config.endpoint() == "http://127.0.0.1:3000"  # no socket
    sock.touch()
    assert config.endpoint() == f"unix://{sock}"
    assert config.endpoint("http://10.0.0.1:3000") == "http://10.0.0.1:3000"  # --endpoint wins
    monkeypatch.setenv("CROWBAR_ENDPOINT", "http://10.0.0.2:3000")
    assert config.endpoint() == "http://10.0.0.2:3000"  # and so does CROWBAR_ENDPOINT
    monkeypatch.delenv("CROWBAR_ENDPOINT")
    state["server"]["pid"] = 2 ** 22 + 1  # a lab whose server is gone
    (tmp_path / "lab" / "lab.json").write_text(json.dumps(state))
    assert config.endpoint() == "http://127.0.0.1:3000"


def test_lab_barclamp_is_valid():
    bc = loader.read(barclamp_dir())
    assert bc.name == "lab"
    role = next(r for r in bc.roles if r.name == "lab-facts")
    assert role.jig == "script"
    assert [s["name"] for s in role.scripts] == ["10-facts.sh"]
    vlan = next(r for r in bc.roles if r.name == "lab-vlan")
    assert vlan.jig == "script" and [s["name"] for s in vlan.scripts] == ["10-vlan.sh"]
    assert [(a.name, a.map) for a in vlan.attribs] == [("lab-vlan", "lab/vlan")]
    assert set(barclamp_files()) == {"barclamp.yml", "scripts/lab-facts/10-facts.sh", "scripts/lab-vlan/10-vlan.sh"}


@pytest.mark.skipif(not Path("/bin/busybox").is_file(), reason="busybox-static is not installed")
def test_lab_facts_script_runs_under_busybox(tmp_path):
    """The script with nothing but busybox applets on PATH, as in the discovery image."""
    bindir = tmp_path / "bin"
    bindir.mkdir()
    applets = subprocess.run(["/bin/busybox", "--list"], capture_output=True, text=True, check=True).stdout.split()
    for applet in applets:
        (bindir / applet).symlink_to("/bin/busybox")
    wall = tmp_path / "wall.json"
    script = barclamp_dir() / "scripts" / "lab-facts" / "10-facts.sh"
    done = subprocess.run(["/bin/busybox", "sh", str(script)], env={"PATH": str(bindir), "CROWBAR_WALL": str(wall)},
                          capture_output=True, text=True)
    assert done.returncode == 0, done.stderr
    facts = json.loads(wall.read_text())["lab"]
    assert facts["kernel"] == os.uname().release
    assert facts["hostname"] == os.uname().nodename
    physical = sorted(p.name for p in Path("/sys/class/net").iterdir() if (p / "device").exists())
    assert [i["name"] for i in facts["interfaces"]] == physical
    if physical:
        assert facts["nic"] == physical[0]
        assert facts["mac"] == (Path("/sys/class/net") / physical[0] / "address").read_text().strip()
    for address in facts["ipv4"]:
        assert address.count(".") == 3 and "/" in address


def test_missing_tools_names_the_package(monkeypatch, tmp_path):
    from crowbar.provisioner import dnsmasq

    monkeypatch.setattr(shutil, "which", lambda tool: None if tool == "dnsmasq" else f"/usr/bin/{tool}")
    monkeypatch.setattr(dnsmasq, "IPXE_DIR", tmp_path)
    assert labmod.missing_tools() == ["dnsmasq (Debian package dnsmasq-base)",
                                      f"{tmp_path}/undionly.kpxe (Debian package ipxe)"]
    (tmp_path / "undionly.kpxe").touch()
    assert labmod.missing_tools() == ["dnsmasq (Debian package dnsmasq-base)"]


def test_the_lab_uplink_lets_through_the_mirror_and_pypi_only(tmp_path):
    from crowbar.lab import uplink

    hosts = uplink.allowed_hosts("http://deb.debian.org/debian")
    assert hosts == ["deb.debian.org", "pypi.org", "files.pythonhosted.org"]
    conf, allowed = uplink.tinyproxy_conf(tmp_path, 18123, hosts)
    assert "Port 18123\n" in conf and "Listen 127.0.0.1\n" in conf and "Allow 127.0.0.1\n" in conf
    assert "FilterDefaultDeny Yes\n" in conf and f'Filter "{tmp_path / "allowed"}"' in conf
    assert allowed == "^deb\\.debian\\.org$\n^pypi\\.org$\n^files\\.pythonhosted\\.org$\n"


@pytest.mark.skipif(os.geteuid() != 0, reason="needs root: network namespaces (ip netns add)")
@pytest.mark.skipif(shutil.which("tinyproxy") is None or shutil.which("socat") is None,
                    reason="tinyproxy or socat is missing (apt-get install tinyproxy socat)")
def test_the_uplink_reaches_the_mirror_and_refuses_other_hosts(tmp_path):
    """The real tinyproxy behind the real relays: the mirror (here a web server on this host's
    loopback) is reached, any other host refused (403) before a connection leaves this machine."""
    import functools
    import http.server
    import secrets as _secrets
    import threading

    from crowbar.lab import uplink

    (tmp_path / "www").mkdir()
    (tmp_path / "www" / "Release").write_text("a mirror file\n")
    handler = functools.partial(http.server.SimpleHTTPRequestHandler, directory=str(tmp_path / "www"))
    mirror = http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler)
    threading.Thread(target=mirror.serve_forever, daemon=True).start()
    mirror_url = f"http://127.0.0.1:{mirror.server_address[1]}"
    ns = f"cbup-{_secrets.token_hex(3)}"
    subprocess.run(["ip", "netns", "add", ns], check=True)
    started = None
    try:
        subprocess.run(["ip", "netns", "exec", ns, "ip", "link", "set", "lo", "up"], check=True)
        started = uplink.start(tmp_path / "uplink", ns, mirror_url + "/debian")
        # from inside the namespace, through both relays: the mirror, then a host that is not allowed
        def through(url: str) -> str:
            probe = subprocess.run(["ip", "netns", "exec", ns, "python3", "-c",
                                    "import sys, urllib.request as u; h = u.ProxyHandler({'http': sys.argv[1]});"
                                    "r = u.build_opener(h).open(sys.argv[2], timeout=10); print(r.status, r.read().decode())",
                                    started["url"], url], capture_output=True, text=True, timeout=30)
            return probe.stdout + probe.stderr

        assert "200 a mirror file" in through(mirror_url + "/Release")
        assert "HTTP Error 403" in through("http://example.invalid/")
        log = (tmp_path / "uplink" / "tinyproxy.log").read_text()
        assert 'refused on filtered domain "example.invalid"' in log, log
    finally:
        if started:
            uplink.stop(started["pids"], tmp_path / "uplink")
        subprocess.run(["ip", "netns", "del", ns], check=False)
        mirror.shutdown()

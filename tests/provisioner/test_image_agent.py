"""The agent's JSON handling and inventory collection, run with the host's busybox: the same
awk and sh the discovery image has, without booting it."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
from pathlib import Path

import pytest

import crowbar.agent
from crowbar.agent import initramfs_files

BUSYBOX = Path("/bin/busybox")
AGENT = Path(crowbar.agent.__file__).parent
pytestmark = pytest.mark.skipif(not BUSYBOX.is_file(), reason="busybox-static is not installed")


def awk(*args: str, stdin: bytes) -> subprocess.CompletedProcess:
    return subprocess.run([str(BUSYBOX), "awk", *args, "-f", str(AGENT / "json.awk")],
                          input=stdin, capture_output=True)


def get(document: dict | str, key: str) -> subprocess.CompletedProcess:
    text = document if isinstance(document, str) else json.dumps(document)
    return awk("-v", "mode=get", "-v", f"key={key}", stdin=text.encode())


TRICKY = 'quote " backslash \\ slash / tab \t nl \n cr \r ctl \x01\x1f del \x7f é € 😀'


def test_get_decodes_strings_exactly():
    document = {"nested": {"script": "decoy"}, "list": ["script", {"a": "}]"}],
                "script": TRICKY, "job": "job-1", "timeout": 60, "none": None, "flag": True}
    assert get(document, "script").stdout.decode() == TRICKY
    assert get(document, "job").stdout == b"job-1"
    assert get(document, "timeout").stdout == b"60"
    assert get(document, "flag").stdout == b"true"
    assert get(document, "nested").stdout == b'{"script": "decoy"}'
    none = get(document, "none")
    assert none.returncode == 0 and none.stdout == b""


def test_get_reads_every_escape_form():
    # \/, \b, \f and surrogate pairs, which Python's json.dumps never writes.
    text = r'{ "s" : "a\/b\bc\fd\u00e9\ud83d\ude00\u0041" , "t": 1 }'
    assert get(text, "s").stdout.decode() == "a/b\bc\fd\u00e9\U0001F600A"
    assert get(text, "t").stdout == b"1"


@pytest.mark.parametrize("document", ["", "[1, 2]", '{"a": 1}', "not json"])
def test_get_fails_when_the_key_is_absent(document):
    assert get(document, "token").returncode == 1


def test_string_mode_escapes_output_lines():
    text = "first \"line\" \\ \t\x01\nsecond é\n"
    result = awk("-v", "mode=string", stdin=text.encode())
    assert json.loads(result.stdout) == text
    assert json.loads(awk("-v", "mode=string", stdin=b"").stdout) == ""


def test_inventory_records_become_typed_json():
    records = "\n".join([
        ".\t-\tkernel\ts\t6.1.0-1-amd64",
        ".\t-\tempty\ts\t   ",
        "cpu\t-\tmodel\ts\t  model with\ttab and \"quotes\"  ",
        "cpu\t-\tcount\tn\t2",
        "nics\teth1\tname\ts\teth1",
        "nics\teth1\tspeed\tn\t-1",
        "nics\teth0\tname\ts\teth0",
        "nics\teth1\tlink\tb\t0",
        "nics\teth0\tlink\tb\t1",
        "nics\teth0\tspeed\tn\t",
    ]) + "\n"
    result = awk("-v", "mode=inventory", "-v", "lists=disks nics", stdin=records.encode())
    assert json.loads(result.stdout) == {
        "kernel": "6.1.0-1-amd64", "empty": None,
        "cpu": {"model": 'model with\ttab and "quotes"', "count": 2},
        "nics": [{"name": "eth1", "speed": None, "link": False},
                 {"name": "eth0", "link": True, "speed": None}],
        "disks": [],
    }


def fake_sysfs(root: Path) -> None:
    """A /sys with one virtio NIC behind its PCI function, one e1000 without link, a bridge,
    a virtio disk, a SATA disk, a loop device, a memory map and firmware strings to escape."""
    def write(path: str, value: str) -> None:
        (root / path).parent.mkdir(parents=True, exist_ok=True)
        (root / path).write_text(value + "\n")

    def link(path: str, target: str) -> None:
        (root / path).parent.mkdir(parents=True, exist_ok=True)
        os.symlink(target, root / path)

    pci = "devices/pci0000:00"
    write(f"{pci}/0000:00:03.0/virtio0/vendor", "0x1af4")
    write("bus/virtio/drivers/virtio_net/bind", "")
    link(f"{pci}/0000:00:03.0/virtio0/driver", "../../../../bus/virtio/drivers/virtio_net")
    write(f"{pci}/0000:00:04.0/vendor", "0x8086")
    write("bus/pci/drivers/e1000/bind", "")
    link(f"{pci}/0000:00:04.0/driver", "../../../bus/pci/drivers/e1000")
    for name, device, mac, carrier in (("eth0", f"{pci}/0000:00:03.0/virtio0", "52:54:00:00:00:01", "1"),
                                       ("eth1", f"{pci}/0000:00:04.0", "52:54:00:00:00:02", "0")):
        write(f"class/net/{name}/address", mac)
        write(f"class/net/{name}/carrier", carrier)
        link(f"class/net/{name}/device", f"../../../{device}")
    write("class/net/eth0/speed", "-1")
    write("class/net/br0/address", "52:54:00:00:00:09")
    disks = (("vda", "2099200", None, "1"), ("sda", "131072", "QEMU HARDDISK   ", "0"), ("loop0", "0", None, "1"))
    for name, sectors, model, rotational in disks:
        write(f"block/{name}/size", sectors)
        write(f"block/{name}/queue/rotational", rotational)
        write(f"block/{name}/removable", "0")
        if model:
            write(f"block/{name}/device/model", model)
    write("block/vda/serial", "disk-serial-1")
    for index, (start, end, kind) in enumerate((("0x0", "0x9fbff", "System RAM"),
                                                ("0x9fc00", "0xfffff", "Reserved"),
                                                ("0x100000", "0x1ffdffff", "System RAM"))):
        write(f"firmware/memmap/{index}/start", start)
        write(f"firmware/memmap/{index}/end", end)
        write(f"firmware/memmap/{index}/type", kind)
    write("class/dmi/id/sys_vendor", 'Vendor "A" \\ B')
    write("class/dmi/id/product_name", "Product\twith tab")


def test_inventory_from_a_fake_sysfs(tmp_path):
    sysfs = tmp_path / "sys"
    fake_sysfs(sysfs)
    env = {"PATH": os.environ["PATH"], "CROWBAR_LIB": str(AGENT), "CROWBAR_SYSFS": str(sysfs)}
    result = subprocess.run([str(BUSYBOX), "sh", str(AGENT / "inventory.sh"), "eth0"],
                            env=env, capture_output=True, check=True)
    inv = json.loads(result.stdout)
    assert inv["boot_mac"] == "52:54:00:00:00:01"
    assert inv["firmware"] == "bios"
    assert inv["memory"]["installed_bytes"] == 0x9fc00 + 0x1ffdffff - 0x100000 + 1
    assert inv["memory"]["total_bytes"] > 0 and inv["cpu"]["count"] >= 1  # the host's own /proc
    assert inv["nics"] == [
        {"name": "eth0", "mac": "52:54:00:00:00:01", "speed": None, "driver": "virtio_net",
         "bus": "0000:00:03.0", "link": True},
        {"name": "eth1", "mac": "52:54:00:00:00:02", "speed": None, "driver": "e1000",
         "bus": "0000:00:04.0", "link": False},
    ]
    assert inv["disks"] == [
        {"name": "sda", "size_bytes": 131072 * 512, "model": "QEMU HARDDISK", "serial": None,
         "rotational": False, "removable": False},
        {"name": "vda", "size_bytes": 2099200 * 512, "model": None, "serial": "disk-serial-1",
         "rotational": True, "removable": False},
    ]
    assert inv["dmi"] == {"vendor": 'Vendor "A" \\ B', "product": "Product\twith tab", "serial": None}


def test_every_agent_file_is_a_shell_or_awk_script_busybox_can_parse():
    files = initramfs_files()
    assert set(files) == {"init", "etc/udhcpc/default.script", "usr/lib/crowbar/agent.sh",
                          "usr/lib/crowbar/inventory.sh", "usr/lib/crowbar/json.awk"}
    for path, data in files.items():
        if path.endswith(".awk"):
            continue  # parsed by every awk test above
        assert data.startswith(b"#!/bin/sh\n"), path
        check = subprocess.run([str(BUSYBOX), "sh", "-n"], input=data, capture_output=True)
        assert check.returncode == 0, f"{path}: {check.stderr.decode()}"


def test_inventory_without_a_bmc_says_null(tmp_path):
    sysfs = tmp_path / "sys"
    fake_sysfs(sysfs)
    (tmp_path / "dev").mkdir()
    env = {"PATH": os.environ["PATH"], "CROWBAR_LIB": str(AGENT), "CROWBAR_SYSFS": str(sysfs),
           "CROWBAR_DEV": str(tmp_path / "dev")}
    result = subprocess.run([str(BUSYBOX), "sh", str(AGENT / "inventory.sh"), "eth0"],
                            env=env, capture_output=True, check=True)
    assert json.loads(result.stdout)["bmc"] is None


@pytest.mark.skipif(not (shutil.which("ipmi_sim") and shutil.which("ipmitool")),
                    reason="ipmi_sim and ipmitool (Debian openipmi, ipmitool) are not installed")
def test_inventory_reads_the_bmc_with_ipmitool(tmp_path):
    """The BMC section from a real BMC (ipmi_sim): the same ipmitool commands as in-band, over the
    LAN here (CROWBAR_IPMITOOL), after its LAN settings were changed."""
    from crowbar.lab.bmc import MFG_ID, PRODUCT_ID, IpmiSim

    bmc = IpmiSim(name="vm1", dir=str(tmp_path / "bmc"), vm_argv=["sleep", "600"])
    bmc.start()
    try:
        ipmitool = f"ipmitool -I lanplus -C 3 -H 127.0.0.1 -p {bmc.lan_port} -U admin -E"
        env = {"PATH": os.environ["PATH"], "CROWBAR_LIB": str(AGENT), "CROWBAR_SYSFS": str(tmp_path / "sys"),
               "CROWBAR_IPMITOOL": ipmitool, "IPMI_PASSWORD": bmc.password,
               "PYTHONPATH": os.environ.get("PYTHONPATH", "")}
        subprocess.run(f"{ipmitool} lan set 1 netmask 255.255.255.0", shell=True, env=env, check=True,
                       capture_output=True)
        result = subprocess.run([str(BUSYBOX), "sh", str(AGENT / "inventory.sh")], env=env,
                                capture_output=True, check=True)
    finally:
        bmc.stop()
    inv = json.loads(result.stdout)
    assert inv["bmc"] == {
        "vendor": "MontaVista Software, Inc.", "manufacturer_id": MFG_ID, "product_id": PRODUCT_ID,
        "firmware": "1.00", "ipmi_version": "2.0", "channel": 1, "mac": "00:00:00:00:00:00",
        "address_source": "Static Address", "address": "0.0.0.0", "netmask": "255.255.255.0",
        "gateway": "0.0.0.0", "vlan": None}
    assert bmc.password.encode() not in result.stdout + result.stderr

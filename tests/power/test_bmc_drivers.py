"""The ipmi and redfish power drivers against real BMC protocol servers that really power a qemu VM:
OpenIPMI's ipmi_sim (the VM is its startcmd, with the in-band KCS device) and sushy-tools' Redfish
emulator with the lab's qemu systems driver. A reset is seen in the VM's firmware log (SeaBIOS
writes it to the debug console port at every boot). Then through the API and the power worker, on
both engines: write-only passwords, one clear line per failure, a stopped BMC blocks nothing else.
"""

from __future__ import annotations

import importlib.util
import logging
import os
import shutil
import signal
import time
import uuid
from pathlib import Path

import pytest

from crowbar.errors import InvalidInput
from crowbar.lab.bmc import IpmiSim, RedfishEmulator
from crowbar.power.base import PowerError, PowerNode, get_driver

QEMU = "qemu-system-x86_64"
need_qemu = pytest.mark.skipif(not shutil.which(QEMU), reason="qemu-system-x86_64 (Debian qemu-system-x86) missing")
need_ipmi_sim = pytest.mark.skipif(not shutil.which("ipmi_sim"), reason="ipmi_sim (Debian openipmi) missing")
HAVE_SUSHY_TOOLS = importlib.util.find_spec("sushy_tools") is not None
need_sushy_tools = pytest.mark.skipif(not HAVE_SUSHY_TOOLS, reason="sushy-tools (PyPI) missing")


def tiny_vm(directory: Path) -> list[str]:
    """A VM with no disk and no NIC: SeaBIOS boots, finds nothing, waits. Its debug console log
    gets a "SeaBIOS (version" line per boot."""
    directory.mkdir(parents=True, exist_ok=True)
    return [QEMU, "-machine", "pc", "-accel", "tcg", "-m", "32", "-nodefaults", "-display", "none",
            "-chardev", f"file,id=dbg,path={directory / 'firmware.log'},append=on", "-device", "isa-debugcon,iobase=0x402,chardev=dbg"]


def boots(directory: Path) -> int:
    try:
        return (directory / "firmware.log").read_text(errors="replace").count("SeaBIOS (version")
    except FileNotFoundError:
        return 0


def wait_for(check, timeout: float, what: str):
    deadline = time.monotonic() + timeout
    while True:
        value = check()
        if value:
            return value
        if time.monotonic() > deadline:
            raise AssertionError(f"{what} within {timeout}s")
        time.sleep(0.1)


@pytest.fixture
def ipmi_bmc(tmp_path):
    bmc = IpmiSim(name="vm1", dir=str(tmp_path / "bmc"), vm_argv=tiny_vm(tmp_path / "vm"))
    bmc.start()
    yield bmc
    bmc.stop()


@pytest.fixture
def redfish_bmc(tmp_path):
    vm = tmp_path / "vm"
    argv = tiny_vm(vm) + ["-qmp", f"unix:{vm / 'qmp.sock'},server=on,wait=off", "-pidfile", str(vm / "qemu.pid"),
                          "-daemonize", "-S", "-boot", "order=n"]
    bmc = RedfishEmulator(dir=str(tmp_path / "bmc"), systems=[
        {"name": "vm1", "uuid": str(uuid.uuid4()), "qmp": str(vm / "qmp.sock"), "command": argv, "macs": []}])
    bmc.start()
    yield bmc
    bmc.stop()
    try:
        pid = int((vm / "qemu.pid").read_text().split()[0])
        os.kill(pid, signal.SIGKILL)
    except (OSError, ValueError):
        pass


# -- validation (no BMC needed) ----------------------------------------------------------------------
@pytest.mark.parametrize("settings, field", [
    ({"address": "10.0.0.5", "username": "u"}, "settings.password"),
    ({"address": "not a host!", "username": "u", "password": "p"}, "settings.address"),
    ({"address": "bmc1", "port": 70000, "username": "u", "password": "p"}, "settings.port"),
    ({"address": "bmc1", "username": "u", "password": "x" * 21}, "settings.password"),
    ({"address": "bmc1", "username": "u" * 17, "password": "p"}, "settings.username"),
    ({"address": "bmc1", "username": "u", "password": "p", "cipher_suite": 1}, "settings.cipher_suite"),
    ({"address": "bmc1", "username": "u", "password": "p", "ipmitool": "-E"}, "settings.ipmitool"),
])
def test_ipmi_validates_its_settings(settings, field):
    with pytest.raises(InvalidInput) as exc:
        get_driver("ipmi").validate(settings)
    assert exc.value.field == field


@pytest.mark.parametrize("settings, field", [
    ({"address": "ftp://bmc1", "username": "u", "password": "p"}, "settings.address"),
    ({"address": "https://bmc1:99999", "username": "u", "password": "p"}, "settings.address"),
    ({"address": "https://u:p@bmc1", "username": "u", "password": "p"}, "settings.address"),
    ({"address": "https://bmc1", "username": "u", "password": "p", "system": "a/b"}, "settings.system"),
    ({"address": "https://bmc1", "username": "u", "password": "p", "verify": "no"}, "settings.verify"),
    ({"address": "https://bmc1", "username": "u", "password": "p", "ca_path": "ca.pem"}, "settings.ca_path"),
    ({"address": "https://bmc1", "username": "u"}, "settings.password"),
])
def test_redfish_validates_its_settings(settings, field):
    with pytest.raises(InvalidInput) as exc:
        get_driver("redfish").validate(settings)
    assert exc.value.field == field


def test_passwords_are_secret_settings_and_shown_only_as_set():
    for name in ("ipmi", "redfish"):
        driver = get_driver(name)
        assert driver.describe()["settings"]["password"]["secret"] is True
        assert driver.shown({"address": "a", "password": "hunter2"}) == {"address": "a", "password": "(set)"}


# -- IPMI against ipmi_sim ---------------------------------------------------------------------------
@need_qemu
@need_ipmi_sim
def test_ipmi_powers_the_vm_through_ipmi_sim(ipmi_bmc, tmp_path):
    driver = get_driver("ipmi")
    node = PowerNode("n1", driver.validate(ipmi_bmc.settings()))
    assert driver.status(node) == "off" and ipmi_bmc.vm_pid() is None
    assert "powered on" in driver.power_on(node)
    assert driver.status(node) == "on"
    qemu = wait_for(ipmi_bmc.vm_pid, 10, "the VM runs as ipmi_sim's child")
    wait_for(lambda: boots(tmp_path / "vm") >= 1, 30, "the VM's firmware booted")
    before = boots(tmp_path / "vm")
    # ipmi_sim (OpenIPMI 2.0.33) answers Set System Boot Options with "invalid data field": the
    # driver reports the BMC's answer in one line (a real BMC takes it; the lab boots PXE first).
    with pytest.raises(PowerError, match=r"^n1: boot device pxe: BMC 127\.0\.0\.1:\d+: Invalid data field"):
        driver.boot_device(node, "pxe")
    assert "reset" in driver.power_cycle(node)
    wait_for(lambda: boots(tmp_path / "vm") > before, 30, "the VM's firmware booted again after the reset")
    assert ipmi_bmc.vm_pid() == qemu  # a reset, not a new process
    assert "powered off" in driver.power_off(node)
    wait_for(lambda: driver.status(node) == "off", 15, "ipmi_sim reports off")
    assert ipmi_bmc.vm_pid() is None
    assert "already off" in driver.power_off(node)
    assert "was off: powered on" in driver.power_cycle(node)
    wait_for(ipmi_bmc.vm_pid, 10, "the VM started again")


@need_qemu
@need_ipmi_sim
def test_ipmi_errors_are_one_clear_line_without_the_password(ipmi_bmc):
    driver = get_driver("ipmi")
    good = ipmi_bmc.settings()
    cases = [({**good, "password": "wrong-password"}, "refused the credentials"),
             ({**good, "username": "nobody"}, "refused the credentials"),
             ({**good, "port": 9}, "no answer from the BMC at 127.0.0.1:9")]
    for settings, expected in cases:
        with pytest.raises(PowerError) as exc:
            driver.status(PowerNode("n1", settings))
        message = str(exc.value)
        assert expected in message and "\n" not in message and message.startswith("n1: status")
        assert settings["password"] not in message


# -- Redfish against sushy-tools -----------------------------------------------------------------------
@need_qemu
@need_sushy_tools
def test_redfish_powers_the_vm_and_applies_bios_settings_at_the_next_reset(redfish_bmc, tmp_path):
    driver = get_driver("redfish")
    node = PowerNode("n1", driver.validate(redfish_bmc.settings("vm1")))
    assert driver.status(node) == "off"
    assert "powered on" in driver.power_on(node)
    assert driver.status(node) == "on"
    wait_for(lambda: boots(tmp_path / "vm") >= 1, 30, "the VM's firmware booted")
    assert driver.bios(node)["ProcTurboMode"] == "Enabled"
    assert "pending" in driver.set_bios(node, {"ProcTurboMode": "Disabled"})
    assert driver.bios(node)["ProcTurboMode"] == "Enabled"  # pending until the reset
    before = boots(tmp_path / "vm")
    assert "boots from disk" in driver.boot_device(node, "disk")
    assert "reset" in driver.power_cycle(node)
    wait_for(lambda: boots(tmp_path / "vm") > before, 30, "the VM's firmware booted again after the reset")
    assert driver.bios(node)["ProcTurboMode"] == "Disabled"
    with pytest.raises(PowerError, match="does not offer boot target UefiHttp"):
        driver.boot_device(node, "http")  # SeaBIOS has no UEFI HTTP boot
    assert "powered off" in driver.power_off(node)
    assert driver.status(node) == "off"
    # no system id: the service's one system
    assert driver.status(PowerNode("n1", {k: v for k, v in node.settings.items() if k != "system"})) == "off"


@need_qemu
@need_sushy_tools
def test_redfish_errors_are_one_clear_line_without_the_password(redfish_bmc, caplog):
    caplog.set_level(logging.DEBUG)
    driver = get_driver("redfish")
    good = redfish_bmc.settings("vm1")
    no_ca = {k: v for k, v in good.items() if k != "ca_path"}
    cases = [({**good, "password": "wrong-password"}, "refused the credentials"),
             (no_ca, "failed TLS verification"),
             ({**good, "address": "https://127.0.0.1:9"}, "no answer from the BMC at https://127.0.0.1:9"),
             ({**good, "system": "vm9"}, "has no system 'vm9'")]
    for settings, expected in cases:
        with pytest.raises(PowerError) as exc:
            driver.status(PowerNode("n1", settings))
        message = str(exc.value)
        assert expected in message and "\n" not in message, message
        assert settings["password"] not in message
    assert good["password"] not in caplog.text and "wrong-password" not in caplog.text


# -- through the API and the power worker, on both engines ---------------------------------------------
def _node(client, name: str, driver: str, settings: dict) -> None:
    assert client.post("/api/v2/nodes", json={"name": name}).status_code == 201
    r = client.put(f"/api/v2/nodes/{name}/power", json={"driver": driver, "settings": settings})
    assert r.status_code == 200, r.text
    assert r.json()["power"]["password"] == "(set)" and settings["password"] not in r.text


def _ask(client, name: str, action: str) -> dict:
    r = client.post(f"/api/v2/nodes/{name}/power", json={"action": action})
    assert r.status_code == 202, r.text
    return r.json()


@need_qemu
@need_ipmi_sim
@need_sushy_tools
def test_a_bmc_that_stops_answering_fails_its_request_and_blocks_nothing_else(power_api, ipmi_bmc, redfish_bmc,
                                                                               caplog):
    caplog.set_level(logging.DEBUG)
    ipmi, redfish = ipmi_bmc.settings(), redfish_bmc.settings("vm1")
    _node(power_api, "ipmi1", "ipmi", ipmi)
    _node(power_api, "rf1", "redfish", redfish)
    shown = power_api.get("/api/v2/nodes/ipmi1/power").json()
    assert shown.pop("state")["state"] == "unknown"  # nothing asked of it yet
    assert shown == {"node": "ipmi1", "driver": "ipmi",
                     "settings": {**ipmi, "password": "(set)"}}
    assert ipmi["password"] not in power_api.get("/api/v2/nodes/ipmi1").text

    done = power_api.wait(_ask(power_api, "ipmi1", "on")["id"])
    assert (done["state"], done["result"]) == ("succeeded", "ipmi1 powered on (IPMI 127.0.0.1:%d)" % ipmi["port"])
    assert power_api.wait(_ask(power_api, "ipmi1", "status")["id"])["result"] == "on"
    before = power_api.get("/api/v2/nodes/ipmi1").json()

    os.kill(ipmi_bmc.pid, signal.SIGSTOP)  # the BMC hangs: it takes packets and never answers
    try:
        stuck = _ask(power_api, "ipmi1", "cycle")
        other = power_api.wait(_ask(power_api, "rf1", "on")["id"], timeout=30)
        assert other["state"] == "succeeded"  # while the other BMC's request is still waiting
        assert power_api.get(f"/api/v2/power_requests/{stuck['id']}").json()["state"] in ("queued", "running")
        failed = power_api.wait(stuck["id"], timeout=60)
    finally:
        os.kill(ipmi_bmc.pid, signal.SIGCONT)
    assert failed["state"] == "failed"
    assert failed["result"] == (f"ipmi1: power cycle: no answer from the BMC at 127.0.0.1:{ipmi['port']} "
                                "(unreachable, not an IPMI BMC, or it stopped answering)")
    after = power_api.get("/api/v2/nodes/ipmi1").json()
    assert {k: after[k] for k in ("state", "power_driver", "alive")} == \
        {k: before[k] for k in ("state", "power_driver", "alive")}

    # a wrong password, set through the API: the request fails with the reason, not the password
    _node(power_api, "ipmi2", "ipmi", {**ipmi, "password": "not-the-one"})
    bad = power_api.wait(_ask(power_api, "ipmi2", "status")["id"])
    assert bad["state"] == "failed" and "refused the credentials" in bad["result"]
    # and it answers again once the BMC does
    assert power_api.wait(_ask(power_api, "ipmi1", "status")["id"])["result"] == "on"
    events = power_api.get("/api/v2/events", params={"limit": 500}).text
    for secret in (ipmi["password"], redfish["password"], "not-the-one"):
        assert secret not in events and secret not in caplog.text
    power_api.wait(_ask(power_api, "ipmi1", "off")["id"])
    power_api.wait(_ask(power_api, "rf1", "off")["id"])


# -- a lab BMC's address, set over IPMI, answers IPMI (ipmi_sim's lan_config_program) -------------------
@need_qemu
@need_ipmi_sim
@pytest.mark.skipif(not shutil.which("nft"), reason="nft (Debian nftables) missing")
@pytest.mark.skipif(os.geteuid() != 0, reason="network namespaces need root")
def test_the_address_set_on_a_lab_bmc_answers_ipmi(tmp_path):
    import subprocess

    namespace = f"cbbmc-{uuid.uuid4().hex[:8]}"
    subprocess.run(["ip", "netns", "add", namespace], check=True)
    bmc = None
    try:
        subprocess.run(["ip", "-n", namespace, "link", "set", "lo", "up"], check=True)
        bmc = IpmiSim(name="vm1", dir=str(tmp_path / "bmc"), vm_argv=tiny_vm(tmp_path / "vm"), namespace=namespace)
        bmc.start()
        ipmitool = ["ip", "netns", "exec", namespace, "ipmitool", "-I", "lanplus", "-U", "admin", "-E"]
        env = {**os.environ, "IPMI_PASSWORD": bmc.password}
        for args in (["lan", "set", "1", "ipsrc", "static"], ["lan", "set", "1", "ipaddr", "192.168.128.21"],
                     ["lan", "set", "1", "netmask", "255.255.255.0"]):
            subprocess.run(ipmitool + ["-H", "127.0.0.1", "-p", str(bmc.lan_port), *args], check=True, env=env,
                           capture_output=True)
        printed = subprocess.run(ipmitool + ["-H", "127.0.0.1", "-p", str(bmc.lan_port), "lan", "print", "1"],
                                 env=env, capture_output=True, text=True).stdout
        assert "192.168.128.21" in printed and "255.255.255.0" in printed
        status = subprocess.run(ipmitool + ["-H", "192.168.128.21", "chassis", "power", "status"], env=env,
                                capture_output=True, text=True)
        assert status.stdout.strip() == "Chassis Power is off", status.stderr
    finally:
        if bmc:
            bmc.stop()
        subprocess.run(["ip", "netns", "del", namespace])

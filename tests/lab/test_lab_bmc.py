"""Out-of-band power end to end, through the CLI only, one VM per BMC kind (kept short: these boot
qemu with TCG on a small machine).

- IPMI: the VM's BMC is OpenIPMI's ipmi_sim with an in-band KCS device. The discovery agent reads
  it in-band (ipmitool in the discovery image: the inventory's bmc section), the bmc-config role
  configures it from the discovery image (an address from the bmc network, a generated user and
  password), and from then on the node is powered through IPMI at that address: a power cycle
  reboots the VM (a new boot on its serial console), never through QMP.
- Redfish: the VM's BMC is sushy-tools with the lab's systems driver; a power cycle through
  Redfish reboots it the same way, and the node's BIOS settings are applied through the emulator's
  Bios resource during hardware-installing (pending, a reset, read back) before its install job
  goes to the agent (the install itself is tests/lab/test_lab_deploy.py's).
"""

from __future__ import annotations

import shutil
import time

import pytest

import test_lab_e2e  # tests/lab is on the path
from test_lab_e2e import Cli, _missing

cli = test_lab_e2e.cli  # the lab's CLI in a tmp dir; the teardown always takes the lab down

pytestmark = [pytest.mark.e2e, pytest.mark.skipif(_missing() is not None, reason=str(_missing()))]
BOOT = "SeaBIOS (version"  # SeaBIOS copies its screen to the serial console at every boot


def _boots(cli: Cli) -> int:
    return (cli.lab_dir / "vms" / "vm1" / "console.log").read_text(errors="replace").count(BOOT)


def _cycle_reboots(cli: Cli, node: str, through: str) -> dict:
    """Power-cycle the node through its driver; the VM boots again (seen on its console)."""
    before = _boots(cli)
    done = cli.json("nodes", "power", node, "cycle", "--wait")
    assert done["state"] == "succeeded", f"{done}{cli.context()}"
    assert through in done["result"], done
    deadline = time.monotonic() + 120
    while _boots(cli) <= before:
        assert time.monotonic() < deadline, f"no new boot on vm1's console after the cycle{cli.context()}"
        time.sleep(1)
    return done


@pytest.mark.skipif(not (shutil.which("ipmi_sim") and shutil.which("ipmitool") and shutil.which("nft")),
                    reason="ipmi_sim, ipmitool and nft (Debian openipmi, ipmitool, nftables) are needed")
def test_ipmi_bmc_is_found_in_band_configured_by_the_role_and_powers_the_vm(cli):
    cli("lab", "up", "--nodes", "1", "--bmc", "ipmi", "--wait", "--timeout", "300")
    vm = cli.json("lab", "status")["vms"][0]
    node = cli.json("nodes", "show", vm["node"])
    bmc = node["discovery"]["bmc"]
    # what the agent read in-band through the KCS device (ipmi_sim's manufacturer and product)
    assert (bmc["manufacturer_id"], bmc["product_id"], bmc["ipmi_version"]) == (0x1291, 0xCB01, "2.0"), bmc
    assert bmc["vendor"] == "MontaVista Software, Inc."  # ipmi_sim's maker, from the image's IANA names
    assert bmc["address"] == "0.0.0.0" and bmc["channel"] == 1

    cli("deployments", "create", "bmc")
    cli("deployments", "bind", "bmc", "bmc-config", vm["node"])
    cli("deployments", "commit", "bmc")
    done = cli("anneal", "--wait", "--timeout", "240", ok=False)
    noderole = cli.json("noderoles", "list", "--deployment", "bmc", "--role", "bmc-config")[0]
    log = cli("noderoles", "log", str(noderole["id"]), ok=False).stdout
    assert done.returncode == 0, f"{cli.log[-3]}\n{log}{cli.context()}"
    wall = cli.json("noderoles", "show", str(noderole["id"]))["wall"]["crowbar"]["bmc"]
    allocations = {a["node"]: a["address"] for a in cli.json("network", "allocations", "bmc")}
    address = allocations[vm["node"]]
    assert wall["address"] == address and wall["username"].startswith("cb-"), wall
    power = cli.json("nodes", "show-power", vm["node"])
    assert power.pop("state")["state"] in ("on", "off", "unknown"), power  # derived from its power requests
    assert power == {"node": vm["node"], "driver": "ipmi", "settings": {
        "address": address, "port": 623, "username": wall["username"], "password": "(set)"}}
    # the generated password is in the server's database only: not in the run log, events or logs
    import json
    import sqlite3

    with sqlite3.connect(cli.lab_dir / "server" / "crowbar.db") as db:
        stored = json.loads(db.execute("SELECT power FROM nodes WHERE name = ?", (vm["node"],)).fetchone()[0])
    secret = stored["password"]
    assert len(secret) == 16 and stored["username"] == wall["username"]
    events = cli("events", "--limit", "1000", "-o", "json").stdout
    assert secret not in log + events + (cli.lab_dir / "server.log").read_text(errors="replace")
    print(f"bmc-config run log:\n{log}\ninventory bmc: {bmc}")

    _cycle_reboots(cli, vm["node"], f"(IPMI {address})")


@pytest.fixture
def os_store(cli, tmp_path):
    """The cached debian-12 image (built when the cache has none, as tests/lab/test_lab_deploy.py
    does) in the lab's image store: `deploy` needs one; the install itself is not waited for here."""
    from crowbar import config
    from crowbar.cli import local

    # the image of the recipe and node files as they are now (built when the stable cache lacks it;
    # the newest cached one may be older than this tree's node-side files)
    image = local.build_os_image(config.os_image_dir(), "debian-12", lambda *a: None)
    store = tmp_path / "cache" / "os" / "debian-12"
    store.mkdir(parents=True)
    (store / image.digest).symlink_to(image.path.parent)
    cli.env["CROWBAR_CACHE_DIR"] = str(tmp_path / "cache")
    return image


@pytest.mark.skipif(shutil.which("mmdebstrap") is None, reason="mmdebstrap (Debian mmdebstrap) is needed for an OS image")
def test_redfish_bmc_powers_the_vm_and_applies_bios_settings_before_the_install(cli, os_store):
    pytest.importorskip("sushy_tools", reason="sushy-tools (PyPI) is needed")
    cli("lab", "up", "--nodes", "1", "--bmc", "redfish", "--wait", "--timeout", "300")
    vm = cli.json("lab", "status")["vms"][0]
    node = cli.json("nodes", "show", vm["node"])
    assert node["power_driver"] == "redfish" and node["discovery"]["bmc"] is None  # no in-band BMC
    _cycle_reboots(cli, vm["node"], "Redfish")

    # BIOS settings during hardware-installing: pending, a reset through Redfish, read back
    cli("nodes", "allocate", vm["node"])
    cli("attribs", "set", "bios-settings", '{"BootMode": "Uefi", "ProcTurboMode": "Disabled"}', "--node", vm["node"])
    before = _boots(cli)
    assert cli.json("nodes", "deploy", vm["node"])[0]["state"] == "hardware-installing"
    deadline = time.monotonic() + 180
    while (shown := cli.json("nodes", "show", vm["node"]))["state"] == "hardware-installing":
        assert time.monotonic() < deadline, f"still hardware-installing{cli.context()}"
        time.sleep(2)
    bios = shown["install"]["bios"]
    assert bios["state"] == "checked", f"{shown['state']}: {shown['state_reason']}"
    assert "BootMode='Uefi', ProcTurboMode='Disabled' applied at a reset and checked" in bios["result"], bios
    assert shown["state"] in ("hardware-installed", "installing", "installed"), shown["state_reason"]
    # the reset that applied them: its boot reaches the console a little after the install job,
    # which a long-polling agent takes at once, moved the node on
    deadline = time.monotonic() + 120
    while _boots(cli) <= before:
        assert time.monotonic() < deadline, f"no boot on the console after the BIOS reset{cli.context()}"
        time.sleep(2)
    done = [(r["action"], r["state"]) for r in cli.json("nodes", "power-requests", vm["node"])]
    assert ("bios-apply", "succeeded") in done, done

"""BIOS settings during hardware-installing (Crowbar 1's bios barclamp), through the Redfish
emulator's Bios resource (sushy-tools with the lab's qemu systems driver, really resetting a qemu
VM): `deploy` holds the install job, the power worker sets the pending attributes, resets the node
and reads them back; checked -> hardware-installed and the job goes to the agent; a mismatch ->
problem, naming the attributes and values. On both engines.
"""

from __future__ import annotations

import sys
from pathlib import Path

import pytest
from fastapi.testclient import TestClient

from crowbar.api.app import create_app
from crowbar.api.settings import AppSettings
from crowbar.power.base import PowerNode, get_driver
import test_bmc_drivers
from powerkit import start_worker
from test_bmc_drivers import boots, need_qemu, need_sushy_tools, wait_for

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "provisioner"))
from test_deploy_api import INV, make_image  # noqa: E402
from discoverykit import discover  # noqa: E402

pytestmark = [need_qemu, need_sushy_tools]
redfish_bmc = test_bmc_drivers.redfish_bmc  # the emulator with a qemu VM, as the driver tests use it


@pytest.fixture
def bapi(db, admin_token, tmp_path):
    store = tmp_path / "os"
    store.mkdir()
    make_image(store)
    worker = start_worker(db)
    app = create_app(AppSettings(db=db, os_images=store, wake=lambda kind: worker.wake() if kind == "power" else None))
    with TestClient(app, headers={"authorization": f"Bearer {admin_token}"}) as client:
        yield client
    worker.stop()


def _deployable(bapi, redfish_bmc, bios: dict | None) -> tuple[str, dict]:
    body = discover(bapi, INV).json()
    node = body["node"]
    assert bapi.post(f"/api/v2/nodes/{node}/allocate").status_code == 200
    r = bapi.put(f"/api/v2/nodes/{node}/power", json={"driver": "redfish", "settings": redfish_bmc.settings("vm1")})
    assert r.status_code == 200, r.text
    if bios is not None:
        r = bapi.put("/api/v2/attribs/bios-settings", json={"node": node, "value": bios})
        assert r.status_code == 200, r.text
    return node, {"authorization": f"Bearer {body['token']}"}


def _settled(bapi, node: str) -> dict:
    return wait_for(lambda: (n := bapi.get(f"/api/v2/nodes/{node}").json())["state"] != "hardware-installing" and n,
                    90, f"{node} still hardware-installing")


def test_bios_settings_are_applied_at_a_reset_and_checked_before_the_install(bapi, redfish_bmc, tmp_path):
    wanted = {"BootMode": "Uefi", "ProcTurboMode": "Disabled"}
    node, agent = _deployable(bapi, redfish_bmc, wanted)
    r = bapi.post("/api/v2/nodes/deploy", json={"nodes": [node], "os": "debian-12"})
    assert r.status_code == 200, r.text
    assert r.json()["items"][0]["state"] == "hardware-installing"
    # the install job is held meanwhile: the agent gets nothing to run
    assert bapi.get("/api/v2/agent/next", headers=agent).json()["action"] in ("wait", "reboot")

    shown = _settled(bapi, node)
    assert shown["state"] == "hardware-installed", shown["state_reason"]
    assert shown["install"]["bios"]["state"] == "checked"
    assert "BootMode='Uefi'" in shown["state_reason"] and "applied at a reset and checked" in shown["state_reason"]
    driver, settings = get_driver("redfish"), redfish_bmc.settings("vm1")
    in_effect = driver.bios(PowerNode("vm1", settings))
    assert {k: in_effect[k] for k in wanted} == wanted
    assert boots(tmp_path / "vm") >= 1  # the reset (ForceRestart, or On) started the machine
    nxt = bapi.get("/api/v2/agent/next", headers=agent).json()
    if nxt["action"] == "reboot":
        nxt = bapi.get("/api/v2/agent/next", headers=agent).json()
    assert nxt["action"] == "run" and nxt["job"] == str(shown["install"]["job"])
    requests = bapi.get("/api/v2/power_requests", params={"node": node}).json()["items"]
    assert [(q["action"], q["state"]) for q in requests][:1] == [("bios-apply", "succeeded")]

    # Asked again with the settings in effect: nothing to reset
    assert driver.apply_bios(PowerNode("vm1", settings), wanted).endswith(
        f"already in effect (Redfish {settings['address']} system vm1)")


def test_a_bios_setting_that_cannot_be_had_puts_the_node_in_problem_with_names_and_values(bapi, redfish_bmc):
    node, agent = _deployable(bapi, redfish_bmc, {"BootMode": "Uefi", "TurboBoostMax": "On"})
    assert bapi.post("/api/v2/nodes/deploy", json={"nodes": [node], "os": "debian-12"}).status_code == 200
    shown = _settled(bapi, node)
    assert shown["state"] == "problem"
    assert shown["state_reason"] == (f"BIOS settings: {node}: BIOS settings: the BIOS has no attribute "
                                     "TurboBoostMax (wanted 'On')")
    assert bapi.get("/api/v2/agent/next", headers=agent).json()["action"] in ("wait", "reboot")
    # nothing was changed on the BIOS
    assert get_driver("redfish").bios(PowerNode("vm1", redfish_bmc.settings("vm1")))["BootMode"] == "Bios"


def test_bios_settings_need_a_driver_that_can_apply_them(bapi, redfish_bmc):
    node, _agent = _deployable(bapi, redfish_bmc, {"BootMode": "Uefi"})
    bapi.put(f"/api/v2/nodes/{node}/power", json={"driver": "manual", "settings": {}})
    r = bapi.post("/api/v2/nodes/deploy", json={"nodes": [node], "os": "debian-12"})
    assert r.status_code == 409 and "cannot apply them (redfish can)" in r.json()["message"]
    assert bapi.get(f"/api/v2/nodes/{node}").json()["state"] == "allocated"  # all or nothing
    r = bapi.post(f"/api/v2/nodes/{node}/power", json={"action": "bios-apply"})
    assert r.status_code == 422


def test_a_deployment_gives_its_nodes_bios_settings_and_a_node_s_own_replace_them(bapi, redfish_bmc):
    node, _agent = _deployable(bapi, redfish_bmc, None)
    bapi.post("/api/v2/deployments", json={"name": "web"})
    assert bapi.post("/api/v2/deployments/web/bind", json={"role": "bios-config", "node": node}).status_code == 201
    r = bapi.put("/api/v2/deployments/web/roles/bios-config",
                 json={"data": {"crowbar": {"bios": {"settings": {"SriovGlobalEnable": "Enabled"}}}}})
    assert r.status_code == 200, r.text
    assert bapi.post("/api/v2/deployments/web/commit").status_code == 200
    got = bapi.get("/api/v2/attribs/bios-settings", params={"node": node}).json()
    assert got["value"] == {"SriovGlobalEnable": "Enabled"}, got  # the deployment's, through its noderole

    assert bapi.post("/api/v2/nodes/deploy", json={"nodes": [node], "os": "debian-12"}).status_code == 200
    shown = _settled(bapi, node)
    assert shown["state"] == "hardware-installed", shown["state_reason"]
    assert shown["install"]["bios"]["wanted"] == {"SriovGlobalEnable": "Enabled"}
    bios = get_driver("redfish").bios(PowerNode("vm1", redfish_bmc.settings("vm1")))
    assert bios["SriovGlobalEnable"] == "Enabled"

    # the node's own value replaces the deployment's
    bapi.put("/api/v2/attribs/bios-settings", json={"node": node, "value": {"BootMode": "Uefi"}})
    got = bapi.get("/api/v2/attribs/bios-settings", params={"node": node}).json()
    assert (got["value"], got["source"]) == ({"BootMode": "Uefi"}, "hint")

"""Screenshots of every page of the web UI for docs/ui.md, taken by Playwright in Debian's chromium
against a real `crowbar server` with a deployment annealed, a failed noderole, a run streaming its
log and a lab VM's console. `make ui-screenshots` runs this with CROWBAR_UI_SCREENSHOTS=docs/ui
(the images in the docs); otherwise they go to the test's temporary directory. Each page is checked
to have drawn what it is for before it is taken, so this is a test of every page too."""

from __future__ import annotations

import os
import time
from pathlib import Path

import httpx
import pytest

from web.conftest import Ui
from web.test_ui_browser import make_nodes
from web.test_ui_follow_admin import committed_deployment, noderole_of, qemu_console

pytestmark = [pytest.mark.e2e, pytest.mark.browser]

LAPTOP = {"width": 1366, "height": 768}


def settle(ui, deployment: str, timeout: float = 90) -> None:
    """Until no noderole of `deployment` is todo or running."""
    deadline = time.monotonic() + timeout
    while any(n["state"] in ("todo", "transition") for n in ui.api.get("/node_roles", params={"deployment": deployment,
                                                                                            "limit": 1000}).json()["items"]):
        assert time.monotonic() < deadline, f"{deployment} did not settle"
        time.sleep(0.3)


def test_screenshots_of_every_page(servers, browser, tmp_path):
    out = Path(os.environ.get("CROWBAR_UI_SCREENSHOTS") or tmp_path / "screens")
    out.mkdir(parents=True, exist_ok=True)
    ui = Ui(servers.new(), browser)
    try:
        make_nodes(ui, 24, prefix="rack1-n")
        committed_deployment(ui, "web", [("test-client-client", "rack1-n000.ui.test"), ("test-client-client", "rack1-n001.ui.test"),
                                         ("test-fails", "rack1-n002.ui.test")], {"test-server": {"test": {"marker": "blue"}}})
        settle(ui, "web")
        failed = noderole_of(ui, "rack1-n002.ui.test", "test-fails")["id"]
        console = qemu_console(ui, "rack1-n003.ui.test", tmp_path / "vm")
        console.write_bytes(b"SeaBIOS (version 1.16.2-debian-1.16.2-1)\r\n\r\niPXE (https://ipxe.org) 00:03.0 CA00 PCI2.10 PnP PMM\r\n"
                            b"net0: 52:54:00:12:34:03 using virtio-net on 0000:00:03.0 (Ethernet) [open]\r\n"
                            b"Configuring (net0 52:54:00:12:34:03)...... ok\r\nnext-server is 192.168.124.10\r\n"
                            b"Booting the Crowbar discovery image\r\n[    0.000000] Linux version 6.1.0-28-amd64\r\n"
                            b"crowbar-agent: registered as rack1-n003.ui.test, waiting for work\r\n")
        committed_deployment(ui, "batch", [("test-library", "rack1-n003.ui.test")],
                             {"test-library": {"test": {"delay": 60, "lines": 120}}})
        r = ui.api.post("/networks/storage/allocations", json={"nodes": [f"rack1-n{i:03d}.ui.test" for i in range(12)]})
        assert r.status_code == 201, r.text
        # a machine found by discovery (posted as the agent posts it): inventory, an admin address, a plan
        inventory = {"kernel": "6.1.0-28-amd64", "firmware": "uefi", "boot_mac": "52:54:00:12:34:63",
                     "cpu": {"model": "Intel Xeon Gold 6338", "count": 64},
                     "memory": {"total_bytes": 256 << 30, "installed_bytes": 256 << 30},
                     "disks": [{"name": "nvme0n1", "size_bytes": 1920383410176, "model": "SAMSUNG MZQL21T9", "serial": "S64", "rotational": False},
                               {"name": "sda", "size_bytes": 8001563222016, "model": "ST8000NM", "serial": "ZA1", "rotational": True}],
                     "nics": [{"name": "eno1", "mac": "52:54:00:12:34:63", "speed": 25000, "driver": "ice", "bus": "0000:31:00.0", "link": True},
                              {"name": "eno2", "mac": "52:54:00:12:34:64", "speed": 25000, "driver": "ice", "bus": "0000:31:00.1", "link": True}],
                     "dmi": {"vendor": "Supermicro", "product": "SYS-120U-TNR", "serial": "S421337"}}
        r = httpx.post(f"{ui.url}/api/v2/discovery", json=inventory)
        assert r.status_code == 201, r.text
        found = r.json()["node"]
        for net in ("admin", "storage"):
            assert ui.api.post(f"/networks/{net}/allocations", json={"node": found}).status_code == 201
        # power states: some nodes powered on, one off (the manual driver carries them out at once)
        for name in [found] + [f"rack1-n{i:03d}.ui.test" for i in range(4)]:
            assert ui.api.post(f"/nodes/{name}/power", json={"action": "on"}).status_code == 202
        assert ui.api.post("/nodes/rack1-n004.ui.test/power", json={"action": "off"}).status_code == 202
        for name in ("tenant-a", "tenant-b"):
            assert ui.api.post("/neutron/networks", json={"name": name}).status_code == 201
        ui.token("bob", "operator")
        ui.token("vera", "viewer")
        page = ui.signed_in("ada", "admin")
        page.set_viewport_size(LAPTOP)

        def shot(name: str, url: str, *ready: str, scroll_to: str | None = None) -> None:
            page.evaluate("document.getElementById('main').replaceChildren()")  # nothing stale matches `ready`
            page.goto(f"{ui.url}/ui/{url}")
            page.evaluate("window.scrollTo(0, 0)")
            for selector in ready:
                page.wait_for_selector(selector)
            if scroll_to:
                page.evaluate(f"document.querySelector('{scroll_to}').scrollIntoView(); window.scrollBy(0, -60)")
            time.sleep(0.6)  # layouts and the first follow-up reads
            page.screenshot(path=str(out / f"{name}.png"))

        shot("dashboard", "#/", "#failures a")
        shot("nodes", "#/nodes", "tr[data-node='rack1-n000.ui.test'] [data-power-state=on]", "#live-mode[data-mode=stream]")
        page.check("tr[data-node='rack1-n005.ui.test'] input[type=checkbox]")
        page.check("tr[data-node='rack1-n006.ui.test'] input[type=checkbox]")
        page.click("button[data-action=cycle]")
        page.wait_for_selector("#confirm[open]")
        page.screenshot(path=str(out / "nodes-bulk-confirm.png"))
        page.click("#confirm-cancel")
        nr = noderole_of(ui, "rack1-n003.ui.test", "test-library")["id"]
        shot("node", f"#/nodes/rack1-n003.ui.test?noderole={nr}", "#console:has-text('crowbar-agent')",
             "#run-log:has-text('line 4 of 120')")
        page.evaluate("document.querySelector('#node-noderoles').scrollIntoView(); window.scrollBy(0, -90)")
        time.sleep(1.5)
        page.screenshot(path=str(out / "node-run-log-and-console.png"))
        # the deployment page's noderole panel streams the log too
        shot("deployment-run-log", f"#/deployments/batch?noderole={nr}", "#run-log[data-state=running]")
        before = page.inner_text("#run-log").count("line ")
        page.wait_for_selector(f"#run-log:has-text('line {before + 2} of 120')", timeout=10000)
        assert page.get_attribute("#run-log", "data-state") == "running"
        shot("node-discovered", f"#/nodes/{found}", "#node-addresses tr[data-address=storage]", "main:has-text('Xeon Gold')",
             scroll_to="#inventory")
        shot("node-power-history", f"#/nodes/{found}?at=power", "#power-card [data-power-state=on]", "#lifecycle-moves tr[data-move=discovered]")
        shot("node-conduits", f"#/nodes/{found}?at=conduits", "#node-conduits tr[data-conduit=intf0]", scroll_to="#network-plan")
        shot("deployments", "#/deployments", "#deployments")
        shot("deployment-graph", f"#/deployments/web?noderole={failed}", "#run-log:has-text('failing on purpose')")
        shot("deployment-proposals", "#/deployments/web", "[data-proposal=test-server]", scroll_to="#proposals")
        shot("roles", "#/roles", "a[href='#/roles/test-server']")
        shot("role", "#/roles/test-server", "main:has-text('test-delay')")
        shot("networks", "#/networks", "[data-network=storage] tr[data-range=host] td:has-text('13 of 230')")
        shot("networks-conduits-segments", "#/networks?at=conduits", "#conduits tr[data-conduit=intf0]", "#segments tr[data-segment]",
             scroll_to="#conduit-map")
        shot("events", "#/events", "#events tbody tr")
        shot("users", "#/users", "#users tr[data-user=bob]")
        page.goto(f"{ui.url}/ui/#/tokens")
        page.fill("#create-token input[name=name]", "laptop")
        page.click("#create-token button")
        page.wait_for_selector("#new-secret")
        page.wait_for_selector("#tokens tr[data-token='ada/laptop']")
        # a live secret of a throwaway server, but a secret-shaped string has no place in the docs
        page.evaluate("document.querySelector('#new-secret').value = 'cb_' + '•'.repeat(43)")
        page.screenshot(path=str(out / "tokens.png"))
        signin = ui.page()
        signin.set_viewport_size(LAPTOP)
        signin.goto(f"{ui.url}/ui/")
        signin.wait_for_selector("#token")
        signin.screenshot(path=str(out / "sign-in.png"))
        assert not page.errors and not signin.errors, page.errors + signin.errors
        taken = sorted(p.name for p in out.glob("*.png"))
        assert len(taken) >= 18 and all((out / n).stat().st_size > 5000 for n in taken), taken
    finally:
        ui.close()

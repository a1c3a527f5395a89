"""The web UI in a real browser (Debian's chromium through Playwright) against a real `crowbar
server`: the nodes list's disk filter and column and each node's power state, bulk power on after
a confirmation that lists each node's power state, the node page's power card, lifecycle history
with timings and conduits (and a viewer's lack of power buttons), the networks page's ranges,
conduits and Neutron tenant segments, and live updates through the event stream, with polling
as the fallback."""

from __future__ import annotations

import time

import httpx
import pytest

pytestmark = [pytest.mark.e2e, pytest.mark.browser]


def discovered(ui, name: str, index: int, disks_tib: list[float]) -> str:
    """A machine found by discovery (its inventory posted as the agent posts it), renamed `name`."""
    mac = f"52:54:00:77:{index // 256:02x}:{index % 256:02x}"
    inventory = {"boot_mac": mac, "firmware": "uefi", "cpu": {"model": "Xeon", "count": 16},
                 "memory": {"total_bytes": 64 << 30},
                 "disks": [{"name": f"sd{chr(97 + i)}", "size_bytes": int(t * 2**40)} for i, t in enumerate(disks_tib)],
                 "nics": [{"name": "eno1", "mac": mac, "speed": 10000, "link": True},
                          {"name": "eno2", "mac": f"52:54:01:77:{index // 256:02x}:{index % 256:02x}", "speed": 10000,
                           "link": True}],
                 "dmi": {"vendor": "Example", "product": "R1", "serial": f"S{index}"}}
    r = httpx.post(f"{ui.url}/api/v2/discovery", json=inventory)
    assert r.status_code == 201, r.text
    return r.json()["node"]


def power_state(ui, node: str) -> dict:
    return ui.api.get(f"/nodes/{node}/power").json()["state"]


def wait_for(check, timeout: float = 20) -> None:
    deadline = time.monotonic() + timeout
    while not check():
        assert time.monotonic() < deadline, "timed out"
        time.sleep(0.2)


def test_nodes_disk_filter_power_state_and_bulk_power_on(ui):
    names = [discovered(ui, f"d{i}", i, disks) for i, disks in enumerate([[1], [4, 4], [2, 8], [0.5], [16]])]
    page = ui.signed_in("olga", "operator")
    polls = []
    page.on("request", lambda r: polls.append(r.url) if "/api/v2/events?marker=" in r.url else None)
    page.goto(f"{ui.url}/ui/#/nodes?sort=-disk")
    page.wait_for_selector("#live-mode[data-mode=stream]")
    page.wait_for_selector(f"#nodes tbody tr[data-node='{names[3]}']")
    rows = page.locator("#nodes tbody tr").evaluate_all("rows => rows.map(r => r.dataset.node)")
    assert rows[:5] == [names[4], names[2], names[1], names[0], names[3]], rows
    assert page.inner_text(f"tr[data-node='{names[2]}'] td[data-col=disk]") == "10.0 TiB"
    page.fill("input[name=disk_min]", "5000")
    page.click("#node-filters button")
    page.wait_for_selector(f"tr[data-node='{names[0]}']", state="detached")
    shown = page.locator("#nodes tbody tr").evaluate_all("rows => rows.map(r => r.dataset.node)")
    assert shown == [names[4], names[2], names[1]], shown
    assert "disk_min=5000" in page.url
    # every node's power state: unknown until a request says; bulk power on three, after a
    # confirmation that lists each with its power state now
    assert page.locator("td[data-col=power] [data-power-state=unknown]").count() == 3
    for name in shown:
        page.check(f"tr[data-node='{name}'] input[type=checkbox]")
    page.click("button[data-action=on]")
    page.wait_for_selector("#confirm[open]")
    listed = page.locator("#confirm-body li").all_inner_texts()
    assert listed == [f"power on {n} (now discovered, power unknown)" for n in shown], listed
    page.click("#confirm-ok")
    page.wait_for_selector(".toast:has-text('3 of 3 accepted')")
    # the power worker carries them out (the manual driver: at once); the rows change live
    for name in shown:
        page.wait_for_selector(f"tr[data-node='{name}'] td[data-col=power] [data-power-state=on]", timeout=20000)
        reqs = ui.api.get("/power_requests", params={"node": name}).json()["items"]
        assert [(r["action"], r["actor"], r["state"]) for r in reqs] == [("on", "olga", "succeeded")]
    assert power_state(ui, names[0])["state"] == "unknown"
    assert not polls, polls  # live through the event stream, not by polling
    assert not page.errors, page.errors


def test_node_page_power_card_lifecycle_history_conduits_and_a_viewer(ui):
    node = discovered(ui, "n", 40, [2])
    for net in ("admin", "storage"):
        assert ui.api.post(f"/networks/{net}/allocations", json={"node": node}).status_code == 201
    page = ui.signed_in("olga", "operator")
    page.goto(f"{ui.url}/ui/#/nodes/{node}")
    page.wait_for_selector("#power-card [data-power-state=unknown]")
    assert page.locator("#power-actions button").count() == 4
    page.click("button[data-power=off]")
    page.wait_for_selector("#confirm[open]")
    page.click("#confirm-ok")
    page.wait_for_selector("#power-card [data-power-state=off]", timeout=20000)
    assert power_state(ui, node)["by"] == "off"
    # lifecycle history: each move with how long the node stayed
    moves = page.locator("#lifecycle-moves tbody tr")
    assert moves.count() >= 1
    assert page.locator("#lifecycle-moves tr[data-move=discovered] td[data-took=current]").inner_text().endswith("so far")
    # conduits: what each conduit resolved to on this node and the networks on it
    admin = page.locator("#node-conduits tr[data-conduit=intf0]")
    assert "admin" in admin.inner_text() and "eno1" in admin.inner_text(), admin.inner_text()
    # a move while the page is open shows live
    r = ui.api.post(f"/nodes/{node}/allocate")
    assert r.status_code in (200, 202), r.text
    page.wait_for_selector("#lifecycle-moves tr[data-move=allocated] td[data-took=current]", timeout=20000)
    assert page.locator("#lifecycle-moves tr[data-move=discovered] td[data-took=done]").count() == 1
    # a viewer sees the state and no power button; the API refuses anyway
    viewer = ui.signed_in("vera", "viewer")
    viewer.goto(f"{ui.url}/ui/#/nodes/{node}")
    viewer.wait_for_selector("#power-card [data-power-state=off]")
    assert viewer.locator("#power-actions").count() == 0 and viewer.locator("button[data-power]").count() == 0
    status = viewer.evaluate("""async (node) => {
        const me = await (await fetch('/api/v2/session')).json();
        const r = await fetch(`/api/v2/nodes/${node}/power`, {method: 'POST', headers: {'content-type': 'application/json',
            'x-csrf-token': me.csrf}, body: JSON.stringify({action: 'on'})});
        return r.status;
    }""", node)
    assert status == 403
    viewer.goto(f"{ui.url}/ui/#/nodes")
    viewer.wait_for_selector(f"tr[data-node='{node}'] td[data-col=power] [data-power-state=off]")
    assert viewer.locator("#bulk").count() == 0
    assert not page.errors and not viewer.errors, page.errors + viewer.errors


def test_networks_page_ranges_conduits_and_tenant_segments(ui):
    nodes = [discovered(ui, "w", 60 + i, [1]) for i in range(3)]
    r = ui.api.post("/networks/storage/allocations", json={"nodes": nodes})
    assert r.status_code == 201, r.text
    r = ui.api.post("/neutron/networks", json={"name": "tenant-a"})
    assert r.status_code == 201, r.text
    segment = r.json()
    page = ui.signed_in("vera", "viewer")
    page.goto(f"{ui.url}/ui/#/networks")
    used = ui.api.get("/networks").json()
    storage = next(n for n in used if n["name"] == "storage")
    host = storage["ranges"]["host"]
    assert host["used"] == 3
    page.wait_for_selector(f"[data-network=storage] tr[data-range=host] td:has-text('3 of {host['size']}')")
    assert page.get_attribute("[data-network=storage] tr[data-range=host]", "data-used") == "3"
    page.wait_for_selector("#conduits tr[data-conduit=intf0]")
    assert "admin" in page.inner_text("#conduits tr[data-conduit=intf0]")
    row = page.locator(f"#segments tr[data-segment='{segment['id']}']")
    assert "tenant-a" in row.inner_text() and str(segment["segmentation_id"]) in row.inner_text()
    assert not page.errors, page.errors


def test_events_live_by_stream_filtered_and_by_polling_as_the_fallback(ui):
    page = ui.signed_in("olga", "operator")
    page.goto(f"{ui.url}/ui/#/events?object_type=node&action=create")
    page.wait_for_selector("#live-mode[data-mode=stream]")
    page.wait_for_selector("#events")
    ui.api.post("/deployments", json={"name": "not-a-node"})
    ui.api.post("/nodes", json={"name": "live-e.ui.test"})
    page.wait_for_selector("#events tr.flash:has-text('live-e.ui.test')", timeout=10000)
    assert page.locator("#events:has-text('not-a-node')").count() == 0
    # the server-side filters: by actor
    page.fill("#event-filters input[name=actor]", "nobody")
    page.click("#event-filters button")
    page.wait_for_selector("#events:has-text('none')")
    # polling: when asked (or when the stream cannot get through)
    poller = ui.page()
    poller.goto(f"{ui.url}/ui/?live=poll")
    poller.fill("#token", ui.token("pat", "operator"))
    poller.click("#sign-in")
    poller.wait_for_selector("#live-mode[data-mode=polling]")
    poller.goto(f"{ui.url}/ui/?live=poll#/events?object_type=node")
    poller.wait_for_selector("#events")
    ui.api.post("/nodes", json={"name": "polled.ui.test"})
    poller.wait_for_selector("#events tr.flash:has-text('polled.ui.test')", timeout=10000)
    assert not page.errors and not poller.errors, page.errors + poller.errors


def test_proposal_diff_shows_each_change_in_place_with_context(ui):
    from web.test_ui_browser import make_nodes
    from web.test_ui_follow_admin import committed_deployment

    make_nodes(ui, 1, prefix="pd")
    committed_deployment(ui, "diffs", [("test-server", "pd000.ui.test")],
                         {"test-server": {"test": {"marker": "blue", "delay": 0, "z": 1}}})
    page = ui.signed_in("olga", "operator")
    page.goto(f"{ui.url}/ui/#/deployments/diffs")
    card = page.locator("[data-proposal=test-server]")
    card.locator("input[name=test-marker]").wait_for()
    page.wait_for_selector("[data-proposal=test-server] .diff-none")
    card.locator("input[name=test-marker]").fill("green")
    lines = card.locator(".diff div").all_inner_texts()
    changed = [i for i, line in enumerate(lines) if line.startswith(("-", "+"))]
    assert [lines[i].strip() for i in changed] == ['-     "marker": "blue",', '+     "marker": "green",'], lines
    assert changed[1] == changed[0] + 1  # the old line, then the new one, where they are in the document
    assert any(line.strip().startswith('"delay": 0') for line in lines) and any('"z": 1' in line for line in lines)  # context
    assert not page.errors, page.errors

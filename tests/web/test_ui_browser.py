"""The web UI in a real browser (Debian's chromium through Playwright) against a real `crowbar
server` on loopback, whose annealer runs the test jig: sign-in, a viewer who can change nothing
(no buttons, and the API refuses), CSRF refused, the nodes list paging and filtering, a bulk power
action with its confirmation, the node page, and the noderole graph going from todo to active live
while the annealer runs, a failing role's log and its retry."""

from __future__ import annotations

import json
import time

import pytest

pytestmark = [pytest.mark.e2e, pytest.mark.browser]


def make_nodes(ui, count: int, prefix: str = "web") -> list[dict]:
    out = []
    for i in range(count):
        r = ui.api.post("/nodes", json={"name": f"{prefix}{i:03d}.ui.test"})
        assert r.status_code == 201, r.text
        out.append(r.json())
    return out


def test_sign_in_viewer_sees_but_cannot_change_and_csrf_is_refused(ui):
    make_nodes(ui, 3)
    page = ui.page()
    page.goto(f"{ui.url}/")  # / redirects to /ui/
    page.wait_for_selector("#token")
    page.fill("#token", "cb_not-a-token")
    page.click("#sign-in")
    page.wait_for_selector("#signin-error:has-text('valid')")
    page.fill("#token", ui.token("vera", "viewer"))
    page.click("#sign-in")
    page.wait_for_selector("#who:has-text('vera (viewer)')")
    assert "crowbar_session" not in page.evaluate("document.cookie")  # HttpOnly: scripts never see it
    page.goto(f"{ui.url}/ui/#/nodes")
    page.wait_for_selector("tr[data-node='web000.ui.test']")
    assert page.locator("#bulk").count() == 0 and page.locator("#nodes input[type=checkbox]").count() == 0
    page.goto(f"{ui.url}/ui/#/deployments")
    page.wait_for_selector("#deployments")
    assert page.locator("#create-deployment").count() == 0
    page.goto(f"{ui.url}/ui/#/deployments/system")
    page.wait_for_selector("#deployment-status")
    assert page.locator("#commit").count() == 0 and page.locator("#bind").count() == 0
    # and the API refuses anyway, even with the right CSRF token
    status = page.evaluate("""async () => {
        const me = await (await fetch('/api/v2/session')).json();
        const r = await fetch('/api/v2/nodes', {method: 'POST', headers: {'content-type': 'application/json',
            'x-csrf-token': me.csrf}, body: JSON.stringify({name: 'evil.ui.test'})});
        return [r.status, (await r.json()).field];
    }""")
    assert status == [403, "role"]
    # an operator's change without the CSRF token is refused; with it, it is recorded as the operator's
    op = ui.signed_in("olga", "operator")
    status = op.evaluate("""async () => {
        const r = await fetch('/api/v2/nodes', {method: 'POST', headers: {'content-type': 'application/json'},
                                                body: JSON.stringify({name: 'nocsrf.ui.test'})});
        return [r.status, (await r.json()).field];
    }""")
    assert status == [403, "csrf"]
    assert ui.api.get("/nodes", params={"name": "nocsrf"}).json()["items"] == []
    op.click("#sign-out")
    op.wait_for_selector("#token")
    assert op.evaluate("fetch('/api/v2/nodes').then(r => r.status)") == 401
    assert not page.errors and not op.errors, page.errors + op.errors


def test_nodes_list_pages_filters_sorts_updates_live_and_bulk_powers_three(ui):
    make_nodes(ui, 130)
    page = ui.signed_in("olga", "operator")
    page.goto(f"{ui.url}/ui/#/nodes?limit=50")
    page.wait_for_selector("#page-info:has-text('nodes 1–50')")
    names = page.locator("#nodes tbody tr").evaluate_all("rows => rows.map(r => r.dataset.node)")
    assert names == [f"web{i:03d}.ui.test" for i in range(50)]
    page.click("#next")
    page.wait_for_selector("#page-info:has-text('nodes 51–100')")
    assert page.locator("#nodes tbody tr").first.get_attribute("data-node") == "web050.ui.test"
    page.click("#next")
    page.wait_for_selector("#page-info:has-text('nodes 101–130 (last page)')")
    assert page.locator("#next").is_disabled()
    page.click("#prev")
    page.wait_for_selector("#page-info:has-text('nodes 51–100')")
    # sort by name, descending
    page.click("th button.sort:has-text('Name')")  # already by name: now descending
    page.wait_for_selector("#nodes tbody tr:first-child[data-node='web129.ui.test']")
    # filter by name prefix
    page.fill("input[name=name]", "web12")
    page.click("#node-filters button")
    page.wait_for_selector("#page-info:has-text('nodes 1–10 (last page)')")
    # live: a change made elsewhere shows without reloading
    ui.api.patch("/nodes/web125.ui.test", json={"alive": False})
    page.wait_for_selector("tr[data-node='web125.ui.test'] td[data-col=alive]:has-text('no')", timeout=10000)
    # bulk: power-cycle three nodes, after a confirmation that lists them
    for name in ("web121.ui.test", "web122.ui.test", "web123.ui.test"):
        page.check(f"tr[data-node='{name}'] input[type=checkbox]")
    page.wait_for_selector("#selected-count:has-text('3 selected')")
    page.click("button[data-action=cycle]")
    page.wait_for_selector("#confirm[open]")
    listed = page.locator("#confirm-body li").all_inner_texts()
    assert [line.split(" (")[0] for line in listed] == [f"power cycle web12{i}.ui.test" for i in (1, 2, 3)]
    page.click("#confirm-ok")
    page.wait_for_selector(".toast:has-text('3 of 3 accepted')")
    for name in ("web121.ui.test", "web122.ui.test", "web123.ui.test"):
        reqs = ui.api.get("/power_requests", params={"node": name}).json()["items"]
        assert [(r["action"], r["actor"]) for r in reqs] == [("cycle", "olga")], reqs
    assert ui.api.get("/power_requests", params={"node": "web124.ui.test"}).json()["items"] == []
    # cancelling a confirmation does nothing
    page.check("tr[data-node='web124.ui.test'] input[type=checkbox]")
    page.click("button[data-action=delete]")
    page.wait_for_selector("#confirm[open]")
    page.click("#confirm-cancel")
    assert ui.api.get("/nodes/web124.ui.test").status_code == 200
    assert not page.errors, page.errors


def test_node_page_shows_inventory_history_noderoles_power_and_events(ui):
    node = make_nodes(ui, 1, prefix="solo")[0]
    page = ui.signed_in("olga", "operator")
    page.goto(f"{ui.url}/ui/#/nodes/{node['name']}")
    page.wait_for_selector("h1:has-text('solo000.ui.test')")
    page.wait_for_selector("#node-noderoles tbody tr")  # the discovery roles bound at creation
    assert page.locator("#power-actions button").count() == 4
    page.click("button[data-power=status]")
    page.wait_for_selector(".toast:has-text('power status queued')")
    text = page.inner_text("main")
    assert "Inventory" in text and "Recent events" in text and "create" in text
    assert not page.errors, page.errors


def wait_until(page, script: str, timeout: float = 30) -> None:
    """Poll `script` (a JS function) in the page until it returns true. Not page.wait_for_function:
    that evaluates its predicate as a string, which the UI's Content-Security-Policy forbids."""
    deadline = time.monotonic() + timeout
    while not page.evaluate(script):
        assert time.monotonic() < deadline, f"timed out waiting for {script}"
        time.sleep(0.2)


def graph_states(page) -> dict:
    return json.loads(page.get_attribute("#graph", "data-states") or "{}")


def test_deployment_graph_proposal_with_schema_error_commit_and_live_anneal(ui):
    make_nodes(ui, 2, prefix="g")
    page = ui.signed_in("olga", "operator")
    page.goto(f"{ui.url}/ui/#/deployments")
    page.fill("#create-deployment input[name=name]", "web")
    page.click("#create-deployment button")
    page.wait_for_selector("#deployment-status:has-text('proposed')")
    for node in ("g000.ui.test", "g001.ui.test"):
        page.select_option("#bind select[name=role]", "test-client-client")
        page.fill("#bind input[name=node]", node)
        page.click("#bind button")
        page.wait_for_selector(f".toast:has-text('bound test-client-client to {node}')")
    wait_until(page, "() => Object.keys(JSON.parse(document.querySelector('#graph').dataset.states || '{}')).length >= 6")
    cy_counts = page.evaluate("[crowbarGraph.nodes('.noderole').length, crowbarGraph.edges().length, crowbarGraph.nodes('.host').length]")
    assert cy_counts[0] >= 6 and cy_counts[1] >= 4 and cy_counts[2] >= 2, cy_counts
    assert set(graph_states(page).values()) == {"proposed"}
    # the proposal form comes from the attribs' schemas: an error is shown and blocks saving
    wait_until(page, "() => document.querySelector('#proposals').dataset.pending === '0'")
    form = page.locator("[data-proposal=test-server]")
    form.locator("input[name=test-delay]").fill("-1")
    page.wait_for_selector("[data-error-for=test-delay]:has-text('must be at least 0')")
    assert form.locator("button[data-save=test-server]").is_disabled()
    form.locator("input[name=test-delay]").fill("0.4")
    assert form.locator("[data-error-for=test-delay]").inner_text() == ""
    form.locator("button[data-save=test-server]").click()
    page.wait_for_selector(".toast:has-text('test-server: proposal saved')")
    assert "+" in form.locator(".diff").inner_text() and "0.4" in form.locator(".diff").inner_text()
    # the server checks the schema too
    bad = ui.api.put("/deployments/web/roles/test-server", json={"data": {"test": {"delay": -1}}})
    assert bad.status_code == 422 and "test-delay" in bad.json()["message"], bad.text
    # commit, and watch the graph go from todo to active without reloading
    page.click("#commit")
    page.wait_for_selector("#confirm[open]")
    page.click("#confirm-ok")
    seen: set[str] = set()
    deadline = time.monotonic() + 90
    while time.monotonic() < deadline:
        states = graph_states(page)
        seen |= set(states.values())
        if states and set(states.values()) == {"active"}:
            break
        time.sleep(0.2)
    assert set(graph_states(page).values()) == {"active"}, graph_states(page)
    assert seen & {"todo", "transition", "blocked"}, seen  # it was seen on its way, live
    colours = page.evaluate("crowbarGraph.nodes('.noderole').map(n => n.style('background-color'))")
    assert set(colours) == {"rgb(42,157,75)"}, colours
    # a failing role: its log, and retry runs it again
    page.select_option("#bind select[name=role]", "test-fails")
    page.fill("#bind input[name=node]", "g000.ui.test")
    page.click("#bind button")
    page.wait_for_selector(".toast:has-text('bound test-fails')")
    page.click("#commit")
    page.click("#confirm-ok")
    wait_until(page, "() => Object.values(JSON.parse(document.querySelector('#graph').dataset.states)).includes('error')",
               timeout=60)
    failed = [int(i) for i, s in graph_states(page).items() if s == "error"][0]
    page.evaluate(f"crowbarGraph.getElementById('nr:{failed}').emit('tap')")
    page.wait_for_selector("#run-log:has-text('failing on purpose')")
    page.click("#retry")
    page.wait_for_selector(".toast:has-text('queued again')")
    deadline = time.monotonic() + 30
    while ui.api.get(f"/node_roles/{failed}").json()["run_count"] < 2 and time.monotonic() < deadline:
        time.sleep(0.3)
    assert ui.api.get(f"/node_roles/{failed}").json()["run_count"] == 2
    events = ui.api.get("/events", params={"object_type": "noderole", "object_id": failed}).json()["items"]
    assert any(e["action"] == "requeue" and e["message"] == "retry" and e["actor"] == "olga" for e in events), events
    # the dashboard links the failure
    page.goto(f"{ui.url}/ui/#/")
    page.wait_for_selector(f"#failures a[href*='noderole={failed}']")
    assert not page.errors, page.errors

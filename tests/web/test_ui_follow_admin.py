"""The web UI, more of it in a real browser (Debian's chromium through Playwright) against a real
`crowbar server`: a run's log streaming on the node page while the test jig prints, a lab VM's
serial console followed on the node page, the users and tokens pages (and who may use them), the
tag filter on the nodes list, and hostile input shown as text, never run."""

from __future__ import annotations

import time
from pathlib import Path

import httpx
import pytest

from web.test_ui_browser import make_nodes, wait_until

pytestmark = [pytest.mark.e2e, pytest.mark.browser]


def committed_deployment(ui, name: str, binds: list[tuple[str, str]], data: dict[str, dict]) -> dict:
    """A deployment with `binds` (role, node) and each role's proposed `data`, committed."""
    r = ui.api.post("/deployments", json={"name": name})
    assert r.status_code == 201, r.text
    for role, node in binds:
        r = ui.api.post(f"/deployments/{name}/bind", json={"role": role, "node": node})
        assert r.status_code in (200, 201), r.text
    for role, doc in data.items():
        r = ui.api.put(f"/deployments/{name}/roles/{role}", json={"data": doc})
        assert r.status_code == 200, r.text
    r = ui.api.post(f"/deployments/{name}/commit")
    assert r.status_code == 200, r.text
    return r.json()


def noderole_of(ui, node: str, role: str) -> dict:
    items = ui.api.get("/node_roles", params={"node": node, "role": role}).json()["items"]
    assert len(items) == 1, items
    return items[0]


def qemu_console(ui, node: str, directory: Path) -> Path:
    """Power `node` with the qemu driver whose VM would live in `directory` (the lab's layout: its
    serial port goes to console.log beside the QMP socket); no VM runs, only its console file."""
    directory.mkdir()
    r = ui.api.put(f"/nodes/{node}/power", json={"driver": "qemu", "settings": {"qmp": str(directory / "qmp.sock")}})
    assert r.status_code == 200, r.text
    return directory / "console.log"


def test_node_page_streams_a_run_log_and_follows_the_serial_console(ui, tmp_path):
    make_nodes(ui, 1, prefix="s")
    node = "s000.ui.test"
    console = qemu_console(ui, node, tmp_path / "vm")
    console.write_bytes(b"SeaBIOS (version 1.16)\r\n\x1b[2J\x1b[1;1HiPXE 1.21 -- \x1b[1mOpen Source\x1b[0m\r\n")
    page = ui.signed_in("olga", "operator")
    page.goto(f"{ui.url}/ui/#/nodes/{node}")
    page.wait_for_selector("#console:has-text('iPXE 1.21 -- Open Source')")  # escape sequences are not shown
    assert "\x1b" not in page.inner_text("#console") and "[1m" not in page.inner_text("#console")
    assert "read-only" in page.inner_text("#console-note")
    with console.open("ab") as f:  # what the VM writes next appears without a reload
        f.write(b"Debian GNU/Linux 12 s000 ttyS0\r\n\r\ns000 login: ")
    page.wait_for_selector("#console:has-text('s000 login:')", timeout=10000)

    # a run that prints 16 lines over 8 s: the log grows on the page while the run runs
    committed_deployment(ui, "stream", [("test-library", node)], {"test-library": {"test": {"delay": 8, "lines": 16}}})
    nr = noderole_of(ui, node, "test-library")
    deadline = time.monotonic() + 30
    while ui.api.get(f"/node_roles/{nr['id']}").json()["state"] != "transition":
        assert time.monotonic() < deadline, "the noderole never started"
        time.sleep(0.2)
    page.click(f"button[data-log='{nr['id']}']")
    page.wait_for_selector("#run-log[data-state=running]")
    seen = []  # (lines shown, state) while it runs
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline:
        state = page.get_attribute("#run-log", "data-state")
        seen.append((page.inner_text("#run-log").count("test-library: line"), state))
        if state == "succeeded":
            break
        time.sleep(0.3)
    running = [n for n, s in seen if s == "running"]
    assert len(set(running)) >= 3 and running == sorted(running) and min(running) < 16, seen  # it grew, line by line
    page.wait_for_selector("#run-log:has-text('test-library on s000.ui.test: ok after 8')")
    text = page.inner_text("#run-log")
    assert text.count("test-library: line") == 16 and text.index("line 16 of 16") < text.index("ok after")
    assert "(streaming)" not in page.inner_text("#run-log-title") and "succeeded" in page.inner_text("#run-log-title")
    # the URL names the followed noderole: a reload follows it again
    assert f"noderole={nr['id']}" in page.url
    page.reload()
    page.wait_for_selector("#run-log:has-text('ok after 8')")
    # a retry is a new run, picked up by the same panel
    page.goto(f"{ui.url}/ui/#/nodes/{node}?noderole={nr['id']}")
    page.wait_for_selector("#run-log[data-state=succeeded]")
    first_run = page.get_attribute("#run-log", "data-run")
    assert ui.api.post(f"/node_roles/{nr['id']}/retry").status_code == 200
    wait_until(page, f"() => document.querySelector('#run-log').dataset.run !== '{first_run}'", timeout=30)
    page.wait_for_selector("#run-log[data-state=succeeded]", timeout=30000)
    assert not page.errors, page.errors


def test_users_and_tokens_pages_for_an_admin_an_operator_and_a_viewer(ui):
    page = ui.signed_in("ada", "admin")
    page.click("#nav-users")
    page.wait_for_selector("#users tr[data-user=ada]")
    page.fill("#create-user input[name=name]", "bob")
    page.select_option("#create-user select[name=role]", "operator")
    page.fill("#create-user input[name=description]", "the night shift")
    page.click("#create-user button")
    page.wait_for_selector("#users tr[data-user=bob]")
    assert ui.api.get("/users/bob").json()["role"] == "operator"
    # a role change asks first; cancelled, nothing changes
    page.select_option("select[data-role-of=bob]", "viewer")
    page.wait_for_selector("#confirm[open]")
    assert "bob: operator → viewer" in page.inner_text("#confirm-body")
    page.click("#confirm-cancel")
    assert ui.api.get("/users/bob").json()["role"] == "operator"
    # the select goes back to the current role (asynchronously): only then is "viewer" a change again
    wait_until(page, "() => document.querySelector('select[data-role-of=bob]').value === 'operator'")
    page.select_option("select[data-role-of=bob]", "viewer")
    page.wait_for_selector("#confirm[open]")
    page.click("#confirm-ok")
    page.wait_for_selector(".toast:has-text('bob is now viewer')")
    assert ui.api.get("/users/bob").json()["role"] == "viewer"
    # a token for bob: its secret is shown once, and it works
    page.click("#users tr[data-user=bob] a[href='#/tokens?user=bob']")
    page.wait_for_selector("#create-token")
    page.fill("#create-token input[name=name]", "laptop")
    page.fill("#create-token input[name=user]", "bob")
    page.select_option("#create-token select[name=expires_in]", label="30 days")
    page.click("#create-token button")
    page.wait_for_selector("#new-secret")
    secret = page.input_value("#new-secret")
    who = httpx.get(f"{ui.url}/api/v2/whoami", headers={"authorization": f"Bearer {secret}"}).json()
    assert who["user"] == "bob" and who["role"] == "viewer" and who["token"]["name"] == "laptop"
    page.wait_for_selector("#tokens tr[data-token='bob/laptop']")
    # rotate: a new secret, the old one refused
    page.click("#tokens tr[data-token='bob/laptop'] button[data-rotate]")
    page.click("#confirm-ok")
    page.wait_for_selector("#secret-box h3:has-text('Rotated token bob/laptop')")
    rotated = page.input_value("#new-secret")
    assert rotated != secret
    assert httpx.get(f"{ui.url}/api/v2/whoami", headers={"authorization": f"Bearer {secret}"}).status_code == 401
    assert httpx.get(f"{ui.url}/api/v2/whoami", headers={"authorization": f"Bearer {rotated}"}).status_code == 200
    # revoke
    page.click("#tokens tr[data-token='bob/laptop'] button[data-revoke]")
    page.click("#confirm-ok")
    page.wait_for_selector(".toast:has-text('token bob/laptop revoked')")
    assert httpx.get(f"{ui.url}/api/v2/whoami", headers={"authorization": f"Bearer {rotated}"}).status_code == 401
    # the admin's own UI session is marked and cannot be revoked from the page that uses it
    page.goto(f"{ui.url}/ui/#/tokens?user=ada")
    page.wait_for_selector("#tokens td:has-text('(this session)')")
    # delete bob, after a confirmation
    page.goto(f"{ui.url}/ui/#/users")
    page.click("button[data-delete-user=bob]")
    page.click("#confirm-ok")
    page.wait_for_selector(".toast:has-text('user bob deleted')")
    assert ui.api.get("/users/bob").status_code == 404
    assert page.locator("button[data-delete-user=ada]").count() == 0  # no deleting yourself here

    # an operator: no Users link, the page says why, the API refuses; its own tokens only
    op = ui.signed_in("olga", "operator")
    assert op.locator("#nav-users").is_hidden()
    op.goto(f"{ui.url}/ui/#/users")
    op.wait_for_selector("main:has-text('Only admins manage users')")
    assert op.evaluate("fetch('/api/v2/users').then(r => r.status)") == 403
    op.goto(f"{ui.url}/ui/#/tokens")
    op.wait_for_selector("#tokens")
    assert {u for u in op.locator("#tokens tbody tr td:first-child").all_inner_texts()} == {"olga"}
    assert op.locator("#create-token input[name=user]").count() == 0 and op.locator("#token-filter").count() == 0
    op.fill("#create-token input[name=name]", "ci")
    op.click("#create-token button")
    page_secret = op.wait_for_selector("#new-secret").input_value()
    assert httpx.get(f"{ui.url}/api/v2/whoami", headers={"authorization": f"Bearer {page_secret}"}).json()["user"] == "olga"
    assert not page.errors and not op.errors, page.errors + op.errors


def test_tag_filter_on_the_nodes_list(ui):
    make_nodes(ui, 3, prefix="t")
    # tags are computed by the OS rules (docs/os-deployment.md): one rule tags one node big-mem
    r = ui.api.put("/os_rules", json={"rules": {"rules": [
        {"name": "big", "when": "name == 't001.ui.test'", "tags": ["big-mem"]}]}})
    assert r.status_code == 200, r.text
    assert [n["name"] for n in ui.api.get("/nodes", params={"tag": "big-mem"}).json()["items"]] == ["t001.ui.test"]
    page = ui.signed_in("olga", "operator")
    page.goto(f"{ui.url}/ui/#/nodes")
    page.wait_for_selector("tr[data-node='t000.ui.test']")
    assert page.locator("tr[data-node='t001.ui.test'] a.tag").all_inner_texts() == ["big-mem"]
    page.fill("input[name=tag]", "big-mem")
    page.click("#node-filters button")
    wait_until(page, "() => location.hash.includes('tag=big-mem')")
    wait_until(page, "() => document.querySelectorAll('#nodes tbody tr[data-node]').length === 1")
    shown = page.locator("#nodes tbody tr[data-node]").evaluate_all("rows => rows.map(r => r.dataset.node)")
    assert shown == ["t001.ui.test"] and page.inner_text("#tag-note") == ""
    assert not page.errors, page.errors


HOSTILE = '<img src=x onerror="window.pwned=1">'
SCRIPT = "<script>window.pwned=1</script>"


def test_hostile_input_is_shown_as_text_and_hostile_urls_answer_an_error(ui, tmp_path):
    make_nodes(ui, 1, prefix="h")
    node = "h000.ui.test"
    assert ui.api.patch(f"/nodes/{node}", json={"description": HOSTILE}).status_code == 200
    assert ui.api.post("/users", json={"name": "mallory", "role": "viewer", "description": SCRIPT}).status_code == 201
    # names (nodes, users, tokens) are checked by the server; descriptions, data and logs are free text
    assert ui.api.post("/tokens", json={"name": "x\"><svg onload=window.pwned=1>", "user": "mallory"}).status_code == 422
    console = qemu_console(ui, node, tmp_path / "vm")
    console.write_bytes(SCRIPT.encode() + b"\r\n\x1b]0;title\x07\x00\x07" + b"\xff\xfe bad utf-8\r\n")
    committed_deployment(ui, "evil", [("test-library", node)], {"test-library": {"test": {"marker": HOSTILE}}})
    nr = noderole_of(ui, node, "test-library")
    deadline = time.monotonic() + 30
    while ui.api.get(f"/node_roles/{nr['id']}").json()["state"] != "active":
        assert time.monotonic() < deadline
        time.sleep(0.2)
    page = ui.signed_in("ada", "admin")
    page.goto(f"{ui.url}/ui/#/nodes/{node}?noderole={nr['id']}")
    page.wait_for_selector(f"main dd:has-text('{HOSTILE}')")  # the description, literally
    page.wait_for_selector("#console:has-text('<script>window.pwned=1</script>')")
    assert "bad utf-8" in page.inner_text("#console")
    page.goto(f"{ui.url}/ui/#/deployments/evil?noderole={nr['id']}")
    page.wait_for_selector("#wall:has-text('onerror')")
    page.goto(f"{ui.url}/ui/#/users")
    page.wait_for_selector(f"#users td:has-text('{SCRIPT}')")
    page.goto(f"{ui.url}/ui/#/events")
    page.wait_for_selector("#events")
    assert page.evaluate("window.pwned") is None
    assert page.locator("main img, main svg, main script").count() == 0
    # hostile addresses: an error on the page, never a script error
    for path, expected in [("#/nodes/%E0%A4%A", "Something went wrong"), ("#/nodes/no-such-node", "does not exist"),
                           ("#/deployments/%3Cscript%3E", "does not exist"), ("#/nodes?limit=-5&sort=drop", "limit"),
                           ("#/nodes?memory_min=1e999", "memory_min"), ("#/tokens?user=%00", ""),
                           ("#/no/such/page", "Not found")]:
        page.goto(f"{ui.url}/ui/{path}")
        if expected:
            page.wait_for_selector(f"main:has-text('{expected}'), .toast:has-text('{expected}')")
        page.wait_for_selector("#nav")  # the shell stands
    assert page.evaluate("window.pwned") is None
    assert not page.errors, page.errors

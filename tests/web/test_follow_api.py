"""The two reads the UI follows: a noderole's run log from an offset (GET /node_roles/{id}/log)
and a lab VM's serial console from an offset (GET /nodes/{id}/console), with hostile parameters
and hostile power settings (a link, a FIFO, a directory in place of the console file)."""

from __future__ import annotations

import os

import pytest

from crowbar.db.models import Run
from crowbar.services import console


def a_noderole(api) -> int:
    node = api.post("/api/v2/nodes", json={"name": "follow.test"}).json()
    return api.get("/api/v2/node_roles", params={"node": node["id"]}).json()["items"][0]["id"]


def test_run_log_is_read_from_an_offset_and_the_latest_run_is_followed(api, db):
    nr = a_noderole(api)
    r = api.get(f"/api/v2/node_roles/{nr}/log")
    assert r.status_code == 200 and r.json()["run"] is None and r.json()["text"] == ""
    text = "première ligne ✓\nligne 2 — 🚀\n"  # characters, not bytes (and one outside the BMP)
    with db.session() as s:
        old = Run(node_role_id=nr, state="failed", log="the old run\n")
        s.add(old)
        s.flush()
        new = Run(node_role_id=nr, state="running", log=text)
        s.add(new)
        s.flush()
        old_id, new_id = old.id, new.id
    out = api.get(f"/api/v2/node_roles/{nr}/log").json()
    assert (out["run"], out["state"], out["text"], out["length"], out["finished_at"]) == (new_id, "running", text, len(text), None)
    out = api.get(f"/api/v2/node_roles/{nr}/log", params={"offset": 17}).json()
    assert out["text"] == text[17:] and out["offset"] == 17
    assert api.get(f"/api/v2/node_roles/{nr}/log", params={"offset": 10**6}).json()["text"] == ""
    old_log = api.get(f"/api/v2/node_roles/{nr}/log", params={"run": old_id}).json()
    assert old_log["text"] == "the old run\n" and old_log["state"] == "failed"
    # hostile parameters: 4xx with the one error body
    for params in ({"offset": -1}, {"offset": "x"}, {"offset": 2**70}, {"run": 0}, {"run": "1;drop table runs"}):
        r = api.get(f"/api/v2/node_roles/{nr}/log", params=params)
        assert r.status_code == 422 and set(r.json()) >= {"error", "message"}, (params, r.text)
    other = a_noderole_of(api, "other.test")
    r = api.get(f"/api/v2/node_roles/{other}/log", params={"run": new_id})
    assert r.status_code == 404 and r.json()["field"] == "run"  # another noderole's run is not shown
    assert api.get("/api/v2/node_roles/999999/log").status_code == 404


def a_noderole_of(api, name: str) -> int:
    node = api.post("/api/v2/nodes", json={"name": name}).json()
    return api.get("/api/v2/node_roles", params={"node": node["id"]}).json()["items"][0]["id"]


def test_console_of_a_qemu_node_is_tailed_and_followed(api, tmp_path):
    vm = tmp_path / "vm"
    vm.mkdir()
    log = vm / "console.log"
    log.write_bytes(b"SeaBIOS\r\n" + b"x" * (console.CHUNK + 10) + b"\x1b[0mlogin: ")
    api.post("/api/v2/nodes", json={"name": "vm.test"})
    r = api.put("/api/v2/nodes/vm.test/power", json={"driver": "qemu", "settings": {"qmp": str(vm / "qmp.sock")}})
    assert r.status_code == 200, r.text
    out = api.get("/api/v2/nodes/vm.test/console").json()
    size = log.stat().st_size
    assert out["available"] and out["size"] == size and out["offset"] == size - console.CHUNK and out["next"] == size
    assert out["text"].endswith("\x1b[0mlogin: ") and len(out["text"]) == console.CHUNK
    with log.open("ab") as f:
        f.write(b"root\n")
    more = api.get("/api/v2/nodes/vm.test/console", params={"offset": out["next"]}).json()
    assert more["text"] == "root\n" and more["next"] == size + 5
    first = api.get("/api/v2/nodes/vm.test/console", params={"offset": 0}).json()
    assert first["text"].startswith("SeaBIOS\r\n") and first["next"] == console.CHUNK
    # the path in the power command (what `crowbar lab` sets) wins over the QMP socket's directory
    other = tmp_path / "elsewhere.log"
    other.write_text("from the chardev\n")
    command = ["qemu-system-x86_64", "-daemonize", "-S", "-chardev", f"file,id=serial0,path={other},append=on"]
    assert console.serial_file("qemu", {"qmp": str(vm / "qmp.sock"), "command": command}) == other
    for params in ({"offset": -5}, {"offset": "1e3"}, {"offset": 2**70}):
        r = api.get("/api/v2/nodes/vm.test/console", params=params)
        assert r.status_code == 422 and set(r.json()) >= {"error", "message"}, (params, r.text)


def test_console_refuses_what_is_not_a_regular_file_and_nodes_without_one(api, tmp_path):
    api.post("/api/v2/nodes", json={"name": "plain.test"})
    out = api.get("/api/v2/nodes/plain.test/console").json()
    assert not out["available"] and "manual" in out["reason"]
    secret = tmp_path / "secret"
    secret.write_text("not for viewers\n")
    cases = {"link": lambda p: p.symlink_to(secret), "fifo": lambda p: os.mkfifo(p), "dir": lambda p: p.mkdir()}
    for kind, make in cases.items():
        vm = tmp_path / kind
        vm.mkdir()
        make(vm / "console.log")
        api.put("/api/v2/nodes/plain.test/power", json={"driver": "qemu", "settings": {"qmp": str(vm / "qmp.sock")}})
        out = api.get("/api/v2/nodes/plain.test/console").json()
        assert not out["available"] and out["text"] == "" and "regular file" in out["reason"], (kind, out)
    empty = tmp_path / "new"
    empty.mkdir()
    api.put("/api/v2/nodes/plain.test/power", json={"driver": "qemu", "settings": {"qmp": str(empty / "qmp.sock")}})
    assert "no console output yet" in api.get("/api/v2/nodes/plain.test/console").json()["reason"]
    assert api.get("/api/v2/nodes/nope.test/console").status_code == 404


@pytest.mark.parametrize("path", ["/api/v2/nodes/x/console", "/api/v2/node_roles/1/log"])
def test_follow_reads_need_a_token(api, path):
    from fastapi.testclient import TestClient
    with TestClient(api.app) as anonymous:
        r = anonymous.get(path)
    assert r.status_code == 401 and set(r.json()) >= {"error", "message"}

"""CLI conventions of issue 13, in-process against the real app: role data get/set/edit with
If-Match (and a clear line when someone else changed it), listings' --columns/--sort/--limit,
anneal's plain progress and what waiting noderoles wait on, registering machines by MAC."""

from __future__ import annotations

import json
import tempfile
from pathlib import Path

import click
import pytest

from crowbar.cli import main


def _bound(api):
    api.post("/api/v2/nodes", json={"name": "cli.example.com"})
    api.post("/api/v2/deployments", json={"name": "web"})
    api.post("/api/v2/deployments/web/bind", json={"role": "test-client", "node": "cli.example.com"})


def test_role_data_get_set_and_set_paths(cli, api):
    _bound(api)
    code, out, err = cli("deployments", "role-data", "set", "web", "test-client", '{"port": 80, "tls": {"on": false}}')
    assert code == 0 and err is None and "commit the deployment" in out
    code, out, _ = cli("deployments", "role-data", "get", "web", "test-client", "-o", "json")
    assert json.loads(out)["proposed"] == {"port": 80, "tls": {"on": False}}
    code, out, _ = cli("deployments", "role-data", "set", "web", "test-client", "--set", "tls/on=true",
                       "--set", "name=front")
    assert code == 0
    assert api.get("/api/v2/deployments/web/roles/test-client").json()["proposed"] == {
        "port": 80, "tls": {"on": True}, "name": "front"}
    code, out, _ = cli("deployments", "role-data", "get", "web", "test-client")
    assert "etag" in out and "proposed differs from committed" in out
    # --if-match with a stale ETag: refused, said plainly, nothing written
    code, _, err = cli("deployments", "role-data", "set", "web", "test-client", "{}", "--if-match", '"stale"')
    assert code == 1 and "someone else changed the data of role 'test-client' in deployment 'web'" in err
    assert api.get("/api/v2/deployments/web/roles/test-client").json()["proposed"]["port"] == 80
    code, _, err = cli("deployments", "role-data", "set", "web", "test-client", "[1]")
    assert code == 1 and "must be a JSON object" in err


def test_role_data_edit_refuses_to_overwrite_a_change_made_meanwhile(cli, api, monkeypatch, tmp_path):
    _bound(api)
    monkeypatch.setattr(tempfile, "tempdir", str(tmp_path))  # where the CLI keeps the user's version

    def someone_else_writes_meanwhile(text, **_):
        assert json.loads(text) == {}
        api.put("/api/v2/deployments/web/roles/test-client", json={"data": {"theirs": 1}})
        return '{"mine": 1}'

    monkeypatch.setattr(click, "edit", someone_else_writes_meanwhile)
    code, _, err = cli("deployments", "role-data", "edit", "web", "test-client")
    assert code == 1 and "someone else changed the data" in err and "nothing was written" in err
    kept = err.split("your version is in ")[1].split(".json")[0] + ".json"
    assert Path(kept).parent == tmp_path and json.loads(Path(kept).read_text()) == {"mine": 1}
    assert api.get("/api/v2/deployments/web/roles/test-client").json()["proposed"] == {"theirs": 1}
    # without a change meanwhile, the edit is saved
    monkeypatch.setattr(click, "edit", lambda text, **_: text.replace("1", "2"))
    code, out, err = cli("deployments", "role-data", "edit", "web", "test-client")
    assert code == 0 and "data saved" in out
    assert api.get("/api/v2/deployments/web/roles/test-client").json()["proposed"] == {"theirs": 2}


def test_nodes_update_if_match(cli, api):
    api.post("/api/v2/nodes", json={"name": "upd.example.com"})
    code, out, _ = cli("nodes", "show", "upd.example.com")
    etag = [line.split()[-1] for line in out.splitlines() if line.strip().startswith("etag")][0]
    assert etag == api.get("/api/v2/nodes/upd.example.com").headers["etag"]
    code, _, err = cli("nodes", "update", "upd.example.com", "--description", "a", "--if-match", etag)
    assert code == 0
    code, _, err = cli("nodes", "update", "upd.example.com", "--description", "b", "--if-match", etag)
    assert code == 1 and "changed by someone else" in err and "nothing was changed" in err
    assert api.get("/api/v2/nodes/upd.example.com").json()["description"] == "a"


@pytest.fixture
def narrow():
    from crowbar.cli import output

    width = output.console.width
    output.console.width = 80
    yield
    output.console.width = width


def test_listings_columns_sort_limit_and_80_columns(cli, api, narrow):
    for name in ("b.example.com", "c.example.com", "a.example.com"):
        api.post("/api/v2/nodes", json={"name": name, "description": "x" * 200})
    api.patch("/api/v2/nodes/c.example.com", json={"available": False})
    code, out, _ = cli("nodes", "list", "--columns", "name,state", "--sort", "name", "-o", "json")
    assert code == 0 and json.loads(out) == [{"name": n, "state": "discovered"} for n in
                                              ("a.example.com", "b.example.com", "c.example.com")] or \
        [r["name"] for r in json.loads(out)] == ["a.example.com", "b.example.com", "c.example.com"]
    assert list(json.loads(out)[0]) == ["name", "state"]
    # descending, several fields, and --limit applied after sorting (the API's first 2 would be b, c)
    code, out, _ = cli("nodes", "list", "--sort", "-name", "--limit", "2", "-o", "json")
    assert [r["name"] for r in json.loads(out)] == ["c.example.com", "b.example.com"]
    code, out, _ = cli("nodes", "list", "--sort", "available,-id", "--columns", "id,name,available", "-o", "json")
    assert [r["name"] for r in json.loads(out)] == ["c.example.com", "a.example.com", "b.example.com"]
    code, out, _ = cli("nodes", "list", "--limit", "2", "-o", "json")  # no sort: the API's first 2
    assert [r["name"] for r in json.loads(out)] == ["b.example.com", "c.example.com"]
    # an unknown field: a usage error naming the fields there are
    code, out, _ = cli("nodes", "list", "--columns", "name,colour")
    assert code == 2 and "unknown field colour" in out and "bootenv" in out
    # tables fit 80 columns, and every listing keeps -o json
    for args in (["nodes", "list"], ["events"], ["noderoles", "list"], ["roles", "list"], ["deployments", "list"],
                 ["attribs", "list"], ["barclamps", "list"], ["users", "list"], ["tokens", "list"],
                 ["nodes", "power-requests"], ["nodes", "states"]):
        code, out, err = cli(*args)
        assert code == 0, (args, out, err)
        assert max(len(line) for line in out.splitlines()) <= 80, (args, out)
        code, out, _ = cli(*args, "-o", "json")
        assert code == 0 and isinstance(json.loads(out), list)
        code, out, _ = cli(*args, "--sort", "-id" if args[-1] != "states" else "state", "--limit", "1", "-o", "json")
        assert code == 0 and len(json.loads(out)) <= 1, args


def test_anneal_says_it_runs_and_how_to_watch_then_prints_plain_progress(cli, api, monkeypatch):
    import time
    from types import SimpleNamespace

    api.post("/api/v2/nodes", json={"name": "an.example.com"})
    api.post("/api/v2/deployments", json={"name": "web"})
    api.post("/api/v2/deployments/web/bind", json={"role": "test-async", "node": "an.example.com"})
    api.post("/api/v2/deployments/web/commit")
    code, out, _ = cli("anneal", "--deployment", "web")
    assert code == 0 and "anneal working" in out
    assert "watch it with `crowbar anneal --wait --deployment web`" in out
    # --wait off a terminal: plain lines (no bar, no escape sequences), then the result
    busy = []

    def sleep(_seconds):  # the server's annealer, run while the CLI waits
        if not busy:
            busy.append(1)
            api.anneal()
            busy.clear()

    monkeypatch.setattr(main, "time", SimpleNamespace(monotonic=time.monotonic, sleep=sleep))
    code, out, _ = cli("anneal", "--wait", "--deployment", "web", "--timeout", "60")
    lines = out.splitlines()
    assert code == 0 and "\x1b" not in out
    assert lines[0].startswith("annealing: 0/1 active; 0 active, 1 todo, 0 running")
    assert lines[-1] == "anneal finished: 1 active, 0 todo, 0 running, 0 blocked, 0 error"


def test_anneal_prints_what_waiting_noderoles_wait_on(cli, api):
    api.post("/api/v2/nodes", json={"name": "w1.example.com"})
    api.post("/api/v2/deployments", json={"name": "db"})
    api.post("/api/v2/deployments/db/bind", json={"role": "test-fails", "node": "w1.example.com"})
    api.post("/api/v2/deployments/db/commit")
    api.anneal()
    api.post("/api/v2/deployments", json={"name": "web"})
    api.post("/api/v2/deployments/web/bind", json={"role": "test-async", "node": "w1.example.com"})
    api.post("/api/v2/deployments/web/commit")
    api.anneal()
    code, out, _ = cli("anneal", "--deployment", "web")
    assert code == 1 and "anneal failed" in out and "waiting, and on what:" in out
    assert "(web, test-async) on w1.example.com: waits on noderole" in out
    assert "(deployment db, role test-fails) on node w1.example.com: error" in out


def test_nodes_register(cli, api):
    code, out, err = cli("nodes", "register", "52:54:00:ab:00:01", "52:54:00:ab:00:02", "--name", "new.example.com")
    assert code == 0 and "node new.example.com" in out and "discovering" in out and "52:54:00:ab:00:01" in out
    assert api.get("/api/v2/nodes/new.example.com").json()["state"] == "discovering"
    code, _, err = cli("nodes", "register", "52:54:00:AB:00:02")
    assert code == 1 and "already belong to a node" in err

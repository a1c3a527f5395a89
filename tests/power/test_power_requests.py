"""Power actions are queued requests that a power worker carries out outside any transaction, with
a per-driver timeout; the answer is 202 with the request, the outcome is in the request and in the
event log. On both engines."""

from __future__ import annotations

import json

import os
import statistics
import subprocess
import sys
import time
from pathlib import Path
from urllib.parse import parse_qs

import pytest

from crowbar.db.models import Event, Node, PowerRequest, Server
from crowbar.server.power import PowerWorker
from crowbar.services import nodes, power, power_work

from powerkit import FailingDriver

REPO = Path(__file__).resolve().parents[2]


def make_node(client, name: str, driver: str | None = None, settings: dict | None = None) -> dict:
    assert client.post("/api/v2/nodes", json={"name": name}).status_code == 201
    if driver:
        r = client.put(f"/api/v2/nodes/{name}/power", json={"driver": driver, "settings": settings or {}})
        assert r.status_code == 200, r.text
    return client.get(f"/api/v2/nodes/{name}").json()


def power_events(db, node_id: int) -> list[Event]:
    with db.session() as s:
        return list(s.query(Event).filter(Event.object_type == "node", Event.object_id == node_id,
                                          Event.action.like("power-%")).order_by(Event.id))


# -- the API answers at once; the worker does the rest -------------------------------------------
def test_a_power_action_is_a_request_answered_202_and_carried_out_by_the_worker(power_api, driver, db):
    driver("test")
    node = make_node(power_api, "n1.example.com", "test")
    r = power_api.post("/api/v2/nodes/n1.example.com/power", json={"action": "cycle"})
    assert r.status_code == 202
    queued = r.json()
    assert (queued["node"], queued["action"], queued["state"], queued["actor"]) == (
        "n1.example.com", "cycle", "queued", "admin")
    done = power_api.wait(queued["id"])
    assert (done["state"], done["result"]) == ("succeeded", "n1.example.com cycle done")
    assert done["server_id"] == power_api.worker.server_id
    assert done["started_at"] and done["finished_at"] >= done["started_at"]
    status = power_api.wait(power_api.post(f"/api/v2/nodes/{node['id']}/power", json={"action": "status"}).json()["id"])
    assert (status["state"], status["result"]) == ("succeeded", "on")
    events = power_events(db, node["id"])
    assert [(e.action, e.actor, e.message) for e in events] == [
        ("power-cycle", "admin", "n1.example.com cycle done"), ("power-status", "admin", "on")]


def test_power_requests_are_refused_for_bad_actions_unknown_nodes_and_drivers(power_api, db):
    make_node(power_api, "n1.example.com")
    r = power_api.post("/api/v2/nodes/n1.example.com/power", json={"action": "explode"})
    assert r.status_code == 422 and r.json()["field"] == "action" and "on, off, cycle, status, soft-off, boot-pxe, boot-disk or boot-http" in r.json()["message"]
    assert power_api.post("/api/v2/nodes/nope.example.com/power", json={"action": "on"}).status_code == 404
    with db.session() as s:
        s.query(Node).filter_by(name="n1.example.com").one().power_driver = "ipmi-from-the-future"
    r = power_api.post("/api/v2/nodes/n1.example.com/power", json={"action": "on"})
    assert r.status_code == 422 and r.json()["field"] == "power_driver" and "known: " in r.json()["message"]
    assert power_api.get("/api/v2/power_requests/999999").status_code == 404
    assert power_api.get("/api/v2/power_requests/abc").status_code == 404
    with db.session() as s:
        assert s.query(PowerRequest).count() == 0


def test_a_slow_driver_does_not_delay_an_unrelated_write(live, driver):
    """The issue's measurement: a driver that takes 5 s, and a PATCH of another node meanwhile."""
    driver("sleepy", delay=5.0)
    http = live.http
    for name in ("slow.example.com", "other.example.com"):
        assert http.post("/api/v2/nodes", json={"name": name}).status_code == 201
    assert http.put("/api/v2/nodes/slow.example.com/power", json={"driver": "sleepy"}).status_code == 200

    def patch() -> float:
        started = time.monotonic()
        r = http.patch("/api/v2/nodes/other.example.com", json={"description": f"at {started}"})
        assert r.status_code == 200
        return time.monotonic() - started

    baseline = statistics.median(patch() for _ in range(5))
    started = time.monotonic()
    r = http.post("/api/v2/nodes/slow.example.com/power", json={"action": "cycle"})
    assert r.status_code == 202 and time.monotonic() - started < 1.0
    request = r.json()
    while http.get(f"/api/v2/power_requests/{request['id']}").json()["state"] != "running":
        assert time.monotonic() - started < 5, "the worker did not start the request"
        time.sleep(0.02)
    during = [patch() for _ in range(3)]
    assert max(during) - baseline < 0.2, f"PATCH took {during} while the driver ran (baseline {baseline:.3f}s)"
    assert http.get(f"/api/v2/power_requests/{request['id']}").json()["state"] == "running"  # still sleeping
    assert live.wait(request["id"])["state"] == "succeeded"


def test_a_driver_that_times_out_fails_the_request_and_leaves_the_node_unchanged(power_api, driver, db):
    cls = driver("hangs", delay=3.0, timeout=0.5)
    node = make_node(power_api, "n1.example.com", "hangs", {"rack": "r1"})
    before = power_api.get("/api/v2/nodes/n1.example.com").json()
    with db.session() as s:
        power_before = dict(s.get(Node, node["id"]).power)
    started = time.monotonic()
    first = power_api.post("/api/v2/nodes/n1.example.com/power", json={"action": "off"}).json()
    failed = power_api.wait(first["id"], timeout=10)
    assert time.monotonic() - started < 2.5  # given up at the timeout, not after the driver's 3 s
    assert failed["state"] == "failed"
    assert "did not answer within 0.5s" in failed["result"] and "off timed out" in failed["result"]
    assert power_api.get("/api/v2/nodes/n1.example.com").json() == before
    with db.session() as s:
        assert s.get(Node, node["id"]).power == power_before
    [event] = power_events(db, node["id"])
    assert (event.action, event.actor) == ("power-off", "admin") and event.message == f"failed: {failed['result']}"
    # The abandoned call still runs: the node's next request waits for it (one call at a time).
    cls.delay = 0.0
    second = power_api.post("/api/v2/nodes/n1.example.com/power", json={"action": "on"}).json()
    time.sleep(0.5)
    assert power_api.get(f"/api/v2/power_requests/{second['id']}").json()["state"] == "queued"
    assert power_api.wait(second["id"], timeout=10)["state"] == "succeeded"
    calls = cls.log.calls
    assert [c[1] for c in calls] == ["off", "on"] and calls[1][2] >= calls[0][3]


def test_a_failing_driver_fails_the_request_with_its_reason(power_api, driver, db):
    driver("broken", base=FailingDriver)
    node = make_node(power_api, "n1.example.com", "broken")
    done = power_api.wait(power_api.post("/api/v2/nodes/n1.example.com/power", json={"action": "on"}).json()["id"])
    assert (done["state"], done["result"]) == ("failed", "n1.example.com: the BMC said no")
    assert power_events(db, node["id"])[0].message == "failed: n1.example.com: the BMC said no"


def test_requests_on_one_node_run_one_at_a_time_in_order_and_nodes_in_parallel(power_api, driver):
    cls = driver("test", delay=0.3)
    for name in ("n1.example.com", "n2.example.com"):
        make_node(power_api, name, "test")
    ids = [power_api.post(f"/api/v2/nodes/{node}/power", json={"action": action}).json()["id"]
           for node, action in [("n1.example.com", "on"), ("n1.example.com", "off"), ("n2.example.com", "on"),
                                ("n1.example.com", "cycle"), ("n1.example.com", "status"), ("n2.example.com", "off")]]
    for request_id in ids:
        assert power_api.wait(request_id)["state"] == "succeeded"
    calls = {node: [c for c in cls.log.calls if c[0] == node] for node in ("n1.example.com", "n2.example.com")}
    assert [c[1] for c in sorted(calls["n1.example.com"], key=lambda c: c[2])] == ["on", "off", "cycle", "status"]
    assert [c[1] for c in sorted(calls["n2.example.com"], key=lambda c: c[2])] == ["on", "off"]
    for node_calls in calls.values():
        ordered = sorted(node_calls, key=lambda c: c[2])
        assert all(later[2] >= earlier[3] for earlier, later in zip(ordered, ordered[1:])), ordered
    n1, n2 = calls["n1.example.com"], calls["n2.example.com"]
    assert min(c[2] for c in n2) < max(c[3] for c in n1)  # another node does not wait for n1's queue


def test_reinstall_queues_a_power_cycle_by_the_operator(power_api, driver, db, tmp_path):
    """An installed node runs no agent: reinstall power-cycles it into the discovery image."""
    driver("test")
    node = make_node(power_api, "n1.example.com", "test")
    with db.session() as s:
        row = s.get(Node, node["id"])
        row.state, row.bootenv = "ready", "local"
        row.discovery = {"firmware": "bios", "disks": [{"name": "vda", "size_bytes": 8 << 30}]}
    image = power_api.os_images / "debian-12" / ("ab" * 32)  # a stand-in: reinstall only reads its manifest
    image.mkdir(parents=True)
    (image / "root.img.gz").write_bytes(b"x")
    (image / "manifest.json").write_text(json.dumps({"name": "debian-12", "digest": "ab" * 32, "size": 1,
                                                     "sha256": "0" * 64, "fs_size": 1 << 30}))
    r = power_api.post("/api/v2/nodes/n1.example.com/reinstall")
    assert r.status_code == 200 and r.json()["state"] == "reinstall"
    page = power_api.get("/api/v2/power_requests", params={"node": "n1.example.com"}).json()
    [request] = page["items"]
    assert (request["action"], request["actor"]) == ("cycle", "admin")
    assert power_api.wait(request["id"])["result"] == "n1.example.com cycle done"


# -- lists ----------------------------------------------------------------------------------------
def test_power_requests_list_in_pages_with_filters(power_api, db):
    for name in ("n1.example.com", "n2.example.com"):
        make_node(power_api, name)
    power_api.worker.stop()  # keep them queued
    made = [power_api.post(f"/api/v2/nodes/{node}/power", json={"action": "status"}).json()["id"]
            for node in ["n1.example.com", "n2.example.com"] * 3]
    seen, path, params = [], "/api/v2/power_requests", {"limit": 2}
    while path:
        page = power_api.get(path, params=params).json()
        assert len(page["items"]) <= 2
        seen += [r["id"] for r in page["items"]]
        path, params = page["next"], None
    assert seen == made
    page = power_api.get("/api/v2/power_requests", params={"node": "n2.example.com", "state": "queued"}).json()
    assert [r["id"] for r in page["items"]] == made[1::2] and page["next"] is None
    page = power_api.get("/api/v2/power_requests", params={"node": "n2.example.com", "limit": 1}).json()
    path, _, query = page["next"].partition("?")
    assert path == "/api/v2/power_requests"
    assert parse_qs(query) == {"marker": [str(made[1])], "limit": ["1"], "node": ["n2.example.com"]}
    assert power_api.get("/api/v2/power_requests", params={"state": "done"}).status_code == 422
    assert power_api.get("/api/v2/power_requests", params={"limit": 1001}).status_code == 422


# -- the worker's protocol ------------------------------------------------------------------------
def _queue(db, names_actions) -> list[int]:
    with db.session() as s:
        ids = {}
        for name, _ in names_actions:
            if name not in ids:
                ids[name] = nodes.create_node(s, name)["id"]
        return [power.queue(s, s.get(Node, ids[name]), action, "tester")["id"] for name, action in names_actions]


def test_claims_take_the_oldest_request_per_node_and_none_while_one_runs(db):
    r1, r2, r3, r4 = _queue(db, [("a.example.com", "on"), ("a.example.com", "off"), ("b.example.com", "on"),
                                 ("a.example.com", "cycle")])
    with db.session() as s:
        assert [c.id for c in power_work.claim(s, None, 10)] == [r1, r3]
    with db.session() as s:
        assert power_work.claim(s, None, 10) == []
        claimed_b = power_work.Claimed(r3, 0, "b.example.com", "on", "tester", "manual", {})
        assert power_work.finish(s, claimed_b, None, True, "done")
        assert power_work.claim(s, None, 10) == []  # a still runs r1; b has nothing queued
        claimed_a = power_work.Claimed(r1, 0, "a.example.com", "on", "tester", "manual", {})
        assert power_work.finish(s, claimed_a, None, False, "no")
        assert not power_work.finish(s, claimed_a, None, True, "twice")  # only a running request is finished
    with db.session() as s:
        assert [c.id for c in power_work.claim(s, None, 10, busy_nodes=[s.get(PowerRequest, r2).node_id])] == []
        assert [c.id for c in power_work.claim(s, None, 10)] == [r2]
    with db.session() as s:
        assert [(r.id, r.state) for r in s.query(PowerRequest).order_by(PowerRequest.id)] == [
            (r1, "failed"), (r2, "running"), (r3, "succeeded"), (r4, "queued")]


@pytest.mark.postgresql
@pytest.mark.parametrize("db", ["postgresql"], indirect=True)  # SQLite serialises whole transactions
def test_two_servers_claiming_at_once_never_take_the_same_node(db):
    r1, r2, r3 = _queue(db, [("a.example.com", "on"), ("a.example.com", "off"), ("b.example.com", "on")])
    with db.session() as first:
        assert [c.id for c in power_work.claim(first, None, 1)] == [r1]  # holds r1's row lock, not committed
        with db.session() as second:
            assert [c.id for c in power_work.claim(second, None, 10)] == [r3]  # r1 skipped, r2 waits behind it
    with db.session() as s:
        assert s.get(PowerRequest, r2).state == "queued"


def test_requests_left_running_by_a_dead_server_fail_when_a_worker_starts(db):
    from crowbar.engine.annealer import Annealer

    with db.session() as s:
        dead = Server(hostname=__import__("socket").gethostname(), pid=2 ** 22 + 1)  # no such process
        s.add(dead)
        s.flush()
        dead_id = dead.id
    [r1, r2] = _queue(db, [("a.example.com", "cycle"), ("b.example.com", "on")])
    with db.session() as s:
        s.get(PowerRequest, r1).state, s.get(PowerRequest, r1).server_id = "running", dead_id
    annealer = Annealer(db, workers=1)
    annealer.register()  # what `crowbar server` does first: finds the dead server
    worker = PowerWorker(db, server_id=annealer.server_id)
    try:
        worker.open()
        with db.session() as s:
            assert s.get(Server, dead_id).stopped is True
            failed = s.get(PowerRequest, r1)
            assert (failed.state, failed.result) == ("failed", "server died") and failed.finished_at
            assert s.get(PowerRequest, r2).state == "queued"
            event = s.query(Event).filter_by(object_id=failed.node_id, action="power-cycle").one()
            assert (event.actor, event.message) == ("tester", "failed: server died")
    finally:
        annealer._pool.shutdown()


def test_a_stopping_worker_fails_what_it_still_runs(db, driver):
    driver("sleepy", delay=3.0)
    [r1] = _queue(db, [("a.example.com", "on")])
    with db.session() as s:
        node = s.query(Node).one()
        node.power_driver = "sleepy"
        server = Server(hostname="here", pid=os.getpid())
        s.add(server)
        s.flush()
        server_id = server.id
    worker = PowerWorker(db, server_id=server_id, interval=0.1)
    worker.stop_grace = 0.2
    worker.start()
    deadline = time.monotonic() + 5
    while True:
        with db.session() as s:
            if s.get(PowerRequest, r1).state == "running":
                break
        assert time.monotonic() < deadline
        time.sleep(0.05)
    worker.stop()
    with db.session() as s:
        req = s.get(PowerRequest, r1)
        assert (req.state, req.result) == ("failed", "server stopped before the request finished")



def test_an_abandoned_bios_apply_puts_its_node_in_problem_and_ends_its_held_install(db):
    """A bios-apply request a dead server left running tells the BIOS step how it ended, as a
    finished one does: the node does not wait in hardware-installing for the watchdog."""
    from crowbar.db.models import AgentJob
    from crowbar.services import bios

    with db.session() as s:
        dead = Server(hostname="gone.invalid", pid=1, stopped=True)
        node = s.get(Node, nodes.create_node(s, "a.example.com")["id"])
        node.state, node.power_driver = "hardware-installing", "redfish"
        job = AgentJob(node_id=node.id, kind="install", script="true")
        s.add_all([dead, job])
        s.flush()
        node.install = {"job": job.id}  # as a deploy leaves it
        assert bios.start(s, node, job, "tester", {"BootMode": "Uefi"})
        request = s.get(PowerRequest, node.install["bios"]["request"])
        request.state, request.server_id = "running", dead.id
        ids = node.id, job.id
    with db.session() as s:
        assert power_work.fail_abandoned(s, "server died") == 1
    with db.session() as s:
        node, job = s.get(Node, ids[0]), s.get(AgentJob, ids[1])
        assert (node.state, node.state_reason) == ("problem", "BIOS settings: server died")
        assert node.install["bios"]["state"] == "failed"
        assert (job.state, job.exit_code, job.output) == ("done", -1, "BIOS settings failed")

# -- validation of settings -----------------------------------------------------------------------
def test_settings_are_validated_when_they_are_set(power_api, db):
    node = make_node(power_api, "vm1.example.com")
    put = lambda body: power_api.put("/api/v2/nodes/vm1.example.com/power", json=body)  # noqa: E731
    r = put({"driver": "qemu", "settings": {}})
    assert r.status_code == 422
    assert r.json() == {"error": "invalid", "field": "settings.qmp",
                        "message": "power driver qemu: setting 'qmp' is required (path of the VM's QMP unix socket)"}
    r = put({"driver": "qemu", "settings": {"qmp": "/run/vm1.qmp", "pasword": "x"}})
    assert r.status_code == 422 and "unknown setting 'pasword'" in r.json()["message"]
    r = put({"driver": "qemu", "settings": {"qmp": "/run/vm1.qmp", "timeout": "soon"}})
    assert r.status_code == 422 and r.json()["field"] == "settings.timeout" and "must be of type number" in r.json()["message"]
    r = put({"driver": "qemu", "settings": {"qmp": "/run/vm1.qmp", "command": ["qemu-system-x86_64", "-S"]}})
    assert r.status_code == 422 and "-daemonize" in r.json()["message"]
    r = put({"driver": "ipmi-from-the-future", "settings": {}})
    assert r.status_code == 422 and r.json()["field"] == "driver"
    with db.session() as s:  # nothing was set by the refused attempts
        assert (s.get(Node, node["id"]).power_driver, s.get(Node, node["id"]).power) == ("manual", {})
    r = put({"driver": "qemu", "settings": {"qmp": "/run/vm1.qmp", "timeout": 5}})
    assert r.status_code == 200 and r.json()["power_driver"] == "qemu"
    with db.session() as s:
        assert s.get(Node, node["id"]).power == {"qmp": "/run/vm1.qmp", "timeout": 5}


def test_the_drivers_show_their_settings(power_api):
    drivers = {d["name"]: d for d in power_api.get("/api/v2/power_drivers").json()["items"]}
    assert {"qemu", "manual"} <= set(drivers)
    assert drivers["qemu"]["settings"]["qmp"] == {"description": "path of the VM's QMP unix socket",
                                                  "required": True, "secret": False, "type": "string"}
    assert drivers["qemu"]["settings"]["command"]["type"] == "list"
    assert drivers["manual"]["settings"]["instructions"]["required"] is False
    assert drivers["qemu"]["timeout"] > 0 and drivers["manual"]["summary"]


# -- the CLI ------------------------------------------------------------------------------------
def crowbar(live, *args: str) -> subprocess.CompletedProcess:
    env = {k: v for k, v in os.environ.items() if not k.startswith("CROWBAR_")}
    env.update(CROWBAR_TOKEN=live.token, PYTHONPATH=os.pathsep.join(filter(None, [str(REPO), env.get("PYTHONPATH")])),
               NO_COLOR="1", COLUMNS="200")
    return subprocess.run([sys.executable, "-m", "crowbar.cli.main", "--endpoint", live.url, *args],
                          capture_output=True, text=True, env=env, timeout=60)


def test_cli_power_waits_for_the_request_and_reports_a_failure_in_one_line(live, driver):
    driver("test")
    driver("broken", base=FailingDriver)
    for name, drv in (("ok.example.com", "test"), ("bad.example.com", "broken")):
        live.http.post("/api/v2/nodes", json={"name": name})
        live.http.put(f"/api/v2/nodes/{name}/power", json={"driver": drv})
    done = crowbar(live, "nodes", "power", "ok.example.com", "status", "--wait", "-o", "json")
    assert done.returncode == 0, done.stderr
    import json

    request = json.loads(done.stdout)
    assert (request["state"], request["result"], request["action"]) == ("succeeded", "on", "status")
    failed = crowbar(live, "nodes", "power", "bad.example.com", "cycle", "--wait")
    assert failed.returncode == 1
    assert failed.stderr.strip().splitlines() == [
        "error: power cycle of bad.example.com failed: bad.example.com: the BMC said no"]
    queued = crowbar(live, "nodes", "power", "ok.example.com", "on", "-o", "json")
    assert queued.returncode == 0 and json.loads(queued.stdout)["state"] in ("queued", "running", "succeeded")
    listed = crowbar(live, "nodes", "power-requests", "bad.example.com", "-o", "json")
    assert [(r["action"], r["state"]) for r in json.loads(listed.stdout)] == [("cycle", "failed")]


def test_cli_set_power_shows_a_refused_setting_in_one_line(live):
    live.http.post("/api/v2/nodes", json={"name": "vm1.example.com"})
    refused = crowbar(live, "nodes", "set-power", "vm1.example.com", "qemu", "timeout=5")
    assert refused.returncode == 1
    assert refused.stderr.strip().splitlines() == [
        "error: power driver qemu: setting 'qmp' is required (path of the VM's QMP unix socket) [HTTP 422]"]
    done = crowbar(live, "nodes", "set-power", "vm1.example.com", "qemu", "qmp=/run/vm1.qmp", "timeout=5",
                   "command=[\"qemu-system-x86_64\", \"-daemonize\"]", "-o", "json")
    assert done.returncode == 0, done.stderr
    drivers = crowbar(live, "nodes", "power-drivers")
    assert drivers.returncode == 0 and "qmp*: string, path of the VM's QMP unix socket" in drivers.stdout

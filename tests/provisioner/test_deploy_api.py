"""OS deployment through the real API on both engines: deploy, the install job and its progress,
the call home, reinstall, release with erase, the OS catalog and image serving (Range).

The image store holds a small stand-in image (the API only reads its manifest and serves its bytes);
the real image, built by mmdebstrap and written by the real agent, is proven in the lab
(tests/lab/test_lab_deploy.py).
"""

from __future__ import annotations

import gzip
import hashlib
import json

import pytest
from fastapi.testclient import TestClient

from crowbar.api.app import create_app
from crowbar.api.settings import AppSettings
from crowbar.db.models import AgentJob
from crowbar.provisioner import dnsmasq
from discoverykit import INVENTORY, discover
from sqlkit import statements

GIB = 1 << 30
DIGEST = "ab" * 32
INV = dict(INVENTORY, disks=[{"name": "vda", "size_bytes": 8 * GIB}, {"name": "vdb", "size_bytes": 2 * GIB}])


def make_image(store, name="debian-12", digest=DIGEST, payload=b"x" * 100_000, fs_size=600 << 20):
    folder = store / name / digest
    folder.mkdir(parents=True)
    data = gzip.compress(payload, mtime=0)
    (folder / "root.img.gz").write_bytes(data)
    manifest = {"name": name, "digest": digest, "version": "12", "arch": "amd64", "kernel": "6.1.0-test",
                "size": len(data), "sha256": hashlib.sha256(data).hexdigest(), "fs_size": fs_size,
                "fs_uuid": "ab" * 8, "packages": [{"name": "bash", "version": "5.2"}],
                "built_at": "2026-12-01T00:00:00+00:00"}
    (folder / "manifest.json").write_text(json.dumps(manifest))
    return manifest


@pytest.fixture
def store(tmp_path):
    path = tmp_path / "os"
    path.mkdir()
    return path


@pytest.fixture
def dapi(db, admin_token, store):
    app = create_app(AppSettings(db=db, os_images=store, ssh_public_key="ssh-ed25519 AAAAtest crowbar-admin",
                                 ssh_private_key="/srv/crowbar/ssh/id_ed25519"))
    with TestClient(app, headers={"authorization": f"Bearer {admin_token}"}) as client:
        yield client


def agent(token):
    return {"authorization": f"Bearer {token}"}


def discovered(dapi, allocate=True):
    body = discover(dapi, INV).json()
    if allocate:
        r = dapi.post(f"/api/v2/nodes/{body['node']}/allocate")
        assert r.status_code == 200, r.text
    return body


def take_job(dapi, token):
    """The agent's next action; the reboot allocation asked for comes first."""
    nxt = dapi.get("/api/v2/agent/next", headers=agent(token)).json()
    if nxt["action"] == "reboot":
        nxt = dapi.get("/api/v2/agent/next", headers=agent(token)).json()
    return nxt


def deployed_installed(dapi, store) -> tuple[str, str]:
    """A node deployed to installed (its install job succeeded, not yet booted): name, agent token."""
    make_image(store)
    node = discovered(dapi)
    name, token = node["node"], node["token"]
    dapi.post(f"/api/v2/nodes/{name}/deploy")
    job = take_job(dapi, token)
    dapi.post(f"/api/v2/agent/jobs/{job['job']}", json={"exit_code": 0}, headers=agent(token))
    return name, token


def deployed_ready(dapi, store) -> tuple[str, str]:
    """A node deployed to ready (its installed system called home from boot-1): name, agent token."""
    name, token = deployed_installed(dapi, store)
    for step in ("booted", "ready"):
        dapi.post("/api/v2/agent/booted", json={"step": step, "boot_id": "boot-1"}, headers=agent(token))
    return name, token


def test_ready_from_installed_takes_both_steps_in_one_call(dapi, store, db):
    """An installed system whose sshd answers before it calls home posts `ready` alone: the node
    goes installed -> readying -> ready in that one call, with both steps' events, its host keys and
    the script jig's SSH hints, as the two calls would have."""
    name, token = deployed_installed(dapi, store)
    assert dapi.get(f"/api/v2/nodes/{name}").json()["state"] == "installed"
    r = dapi.post("/api/v2/agent/booted", json={"step": "ready", "boot_id": "boot-1", "host_keys": [HOST_KEY],
                                                "os": "Debian GNU/Linux 13 (trixie)"}, headers=agent(token))
    assert r.status_code == 200 and r.json()["state"] == "ready", r.text
    shown = dapi.get(f"/api/v2/nodes/{name}").json()
    assert shown["install"]["host_keys"] == [HOST_KEY] and shown["install"]["booted"]["boot_id"] == "boot-1"
    assert shown["hints"]["crowbar"]["ssh"]["address"].startswith("192.168.124.")
    steps = {e["to"]: (e["from"], e["message"])
             for e in dapi.get("/api/v2/events", params={"object_type": "node", "limit": 200}).json()["items"]
             if e["action"] == "lifecycle" and e["object_id"] == shown["id"]}
    assert steps["readying"][0] == "installed" and "booted Debian GNU/Linux 13" in steps["readying"][1], steps
    assert steps["ready"] == ("readying", "sshd answers"), steps
    # a later `ready` of the same boot changes nothing
    again = dapi.post("/api/v2/agent/booted", json={"step": "ready", "boot_id": "boot-1"}, headers=agent(token))
    assert again.json()["state"] == "ready"


def test_deploy_walks_the_lifecycle_to_ready(dapi, store, db):
    make_image(store)
    node = discovered(dapi)
    r = dapi.post("/api/v2/nodes/deploy", json={"nodes": [node["node"]], "os": "debian-12"})
    assert r.status_code == 200, r.text
    shown = r.json()["items"][0]
    assert shown["state"] == "hardware-installed" and shown["os"] == "debian-12"
    assert shown["install"]["disk"] == "/dev/vda" and shown["install"]["firmware"] == "bios"  # vdb < 4 GiB

    job = take_job(dapi, node["token"])
    assert job["action"] == "run" and "crowbar-install" in job["script"] and "--target=i386-pc" in job["script"]
    assert "ssh-ed25519 AAAAtest crowbar-admin" in job["script"]  # root's key, through cloud-init
    assert f"hostname: {node['node'].split('.')[0]}" in job["script"]
    assert dapi.get(f"/api/v2/nodes/{node['node']}").json()["state"] == "installing"

    r = dapi.post(f"/api/v2/agent/progress/{job['job']}", json={"phase": "write-image", "bytes": 300 << 20,
                                                               "total": 600 << 20}, headers=agent(node["token"]))
    assert r.status_code == 200, r.text
    install = dapi.get(f"/api/v2/nodes/{node['node']}").json()["install"]
    assert install["phase"] == "write-image" and install["bytes"] == 300 << 20
    assert dapi.post(f"/api/v2/agent/progress/{job['job']}", json={"phase": "x"},
                     headers=agent("not-a-token")).status_code == 401

    r = dapi.post(f"/api/v2/agent/jobs/{job['job']}", json={"exit_code": 0, "output": "ok"},
                  headers=agent(node["token"]))
    assert r.status_code == 200, r.text
    after = dapi.get(f"/api/v2/nodes/{node['node']}").json()
    assert after["state"] == "installed" and after["bootenv"] == "local"
    assert dapi.get("/api/v2/agent/next", headers=agent(node["token"])).json() == {"action": "reboot"}

    # first boot: the installed system calls home with the same token
    r = dapi.post("/api/v2/agent/booted", json={"step": "booted", "os": "Debian GNU/Linux 12 (bookworm)"},
                  headers=agent(node["token"]))
    assert r.json()["state"] == "readying"
    # a line that is not a public key refuses the whole call: nothing is kept, the node stays readying
    r = dapi.post("/api/v2/agent/booted", json={"step": "ready", "host_keys": [HOST_KEY, "ssh-ed25519 $(reboot)"]},
                  headers=agent(node["token"]))
    assert r.status_code == 422 and r.json()["field"] == "host_keys", r.text
    assert dapi.get(f"/api/v2/nodes/{node['node']}").json()["state"] == "readying"
    r = dapi.post("/api/v2/agent/booted", json={"step": "ready", "host_keys": [HOST_KEY + " root@n1"]},
                  headers=agent(node["token"]))
    assert r.json()["state"] == "ready"
    final = dapi.get(f"/api/v2/nodes/{node['node']}").json()
    assert final["install"]["host_keys"] == [HOST_KEY]  # the comment dropped
    ssh = final["hints"]["crowbar"]["ssh"]  # the script jig's target, set from the admin address
    assert ssh["address"].startswith("192.168.124.") and ssh["key"] == "/srv/crowbar/ssh/id_ed25519"
    steps = [s["state"] for s in final["install"]["steps"]]
    assert steps == ["hardware-installing", "hardware-installed", "installing", "installed", "readying", "ready"]
    events = dapi.get("/api/v2/events", params={"object_type": "node"}).json()["items"]
    assert any(e["action"] == "install" and "write-image" in e["message"] for e in events)


HOST_KEY = "ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAIBcM0YkzJmO2z1rGfXh0n3b1nA6Q4cE0eWn8d2Vq9mKx"


def test_each_agent_request_writes_its_node_once_and_its_events_last(dapi, store, db):
    """The requests an installing machine makes (take the job, progress, the result, take the
    reboot, booted, ready) each change the node in one UPDATE and write their events after it, in
    one INSERT: the events are recorded in order all the same (fleet scale: every statement of an
    agent's request is paid ~10,000 times; benchmarks/agent_deploy.py)."""
    make_image(store)
    node = discovered(dapi)
    name, token = node["node"], node["token"]
    assert dapi.get("/api/v2/agent/next", headers=agent(token)).json() == {"action": "reboot"}
    assert dapi.post(f"/api/v2/nodes/{name}/deploy").status_code == 200
    requests = [("take job", lambda: dapi.get("/api/v2/agent/next", headers=agent(token)))]
    job = {}
    requests += [(phase, lambda phase=phase: dapi.post(f"/api/v2/agent/progress/{job['job']}", headers=agent(token),
                                                       json={"phase": phase, "bytes": 1, "total": 2}))
                 for phase in ("write-image", "verify-image")]
    requests += [("result", lambda: dapi.post(f"/api/v2/agent/jobs/{job['job']}", json={"exit_code": 0},
                                              headers=agent(token))),
                 ("reboot", lambda: dapi.get("/api/v2/agent/next", headers=agent(token)))]
    requests += [(step, lambda step=step: dapi.post("/api/v2/agent/booted", json={"step": step, "boot_id": "b1"},
                                                    headers=agent(token)))
                 for step in ("booted", "ready")]
    sent, stop = statements(db)
    try:
        for what, send in requests:
            sent.clear()
            r = send()
            assert r.status_code == 200, (what, r.text)
            if what == "take job":
                job = r.json()
            seen = [" ".join(statement.split()[:3]).upper() for statement in sent]
            writes = [s for s in seen if s.startswith(("UPDATE", "INSERT"))]
            assert sum(s.startswith("UPDATE NODES") for s in writes) == 1, (what, seen)
            assert writes[-1].startswith("INSERT INTO EVENTS") and writes.count(writes[-1]) == 1, (what, seen)
    finally:
        stop()
    shown = dapi.get(f"/api/v2/nodes/{name}").json()
    assert shown["state"] == "ready"
    events = dapi.get("/api/v2/events", params={"object_type": "node", "object_id": shown["id"]}).json()["items"]
    steps = [e["to"] for e in sorted(events, key=lambda e: e["id"])
             if e["to"] in ("installing", "installed", "readying", "ready")]
    assert steps == ["installing", "installed", "readying", "ready"]


@pytest.mark.parametrize("reported, output, phase, words", [
    ("verify-image", "crowbar-install: image checksum mismatch: expected aa, got bb\n", "verify-image",
     "checksum mismatch"),
    # a pause the server asked for may hold back the last phases' reports: the failing phase is the
    # one the script's trap names in its output, not the last one reported
    ("write-image", "crowbar-install: bootloader\ngrub-install: error: disk not found\n"
                    "crowbar-install: failed in phase bootloader (exit 1)\n", "bootloader", "disk not found"),
])
def test_a_failed_install_is_a_problem_with_its_phase_and_output(dapi, store, reported, output, phase, words):
    make_image(store)
    node = discovered(dapi)
    dapi.post(f"/api/v2/nodes/{node['node']}/deploy", json={})
    job = take_job(dapi, node["token"])
    dapi.post(f"/api/v2/agent/progress/{job['job']}", json={"phase": reported}, headers=agent(node["token"]))
    dapi.post(f"/api/v2/agent/jobs/{job['job']}", headers=agent(node["token"]),
              json={"exit_code": 1, "output": output})
    shown = dapi.get(f"/api/v2/nodes/{node['node']}").json()
    assert shown["state"] == "problem" and shown["bootenv"] == "discovery"
    assert shown["state_reason"].startswith(f"install failed in phase {phase} (exit 1)"), shown["state_reason"]
    assert words in shown["state_reason"]


def test_progress_answers_the_pause_before_the_next_report(dapi, store, monkeypatch):
    """0 in a small fleet (the script's own pace); past REPORT_BUDGET reports a second at that pace,
    long enough to keep to it, from the count of nodes installing (taken at most every 10 s)."""
    from crowbar.services import install as install_service

    make_image(store)
    node = discovered(dapi)
    dapi.post(f"/api/v2/nodes/{node['node']}/deploy", json={})
    job = take_job(dapi, node["token"])
    monkeypatch.setattr(install_service, "_installing", {"count": 0, "at": float("-inf")})
    report = dapi.post(f"/api/v2/agent/progress/{job['job']}", json={"phase": "write-image", "bytes": 1},
                       headers=agent(node["token"]))
    assert report.status_code == 200 and report.json()["next"] == 0, report.text
    # one node installing, at a budget of a report every 10 s: 10 s between its reports, jittered
    monkeypatch.setattr(install_service, "REPORT_BUDGET", 0.1)
    monkeypatch.setattr(install_service, "_installing", {"count": 0, "at": float("-inf")})
    paused = dapi.post(f"/api/v2/agent/progress/{job['job']}", json={"phase": "write-image", "bytes": 2},
                       headers=agent(node["token"])).json()["next"]
    assert 7 <= paused <= 13


def test_report_seconds_keeps_the_fleet_to_the_budget():
    from crowbar.services.install import MAX_REPORT_SECONDS, REPORT_BUDGET, report_seconds

    assert report_seconds(0) == report_seconds(3 * REPORT_BUDGET - 1) == 0
    pauses = [report_seconds(400) for _ in range(200)]
    assert min(pauses) >= 15 and max(pauses) <= 25 and len(set(pauses)) > 3  # 400 / 20 a second, jittered
    assert max(report_seconds(100_000) for _ in range(50)) == MAX_REPORT_SECONDS


def test_a_node_that_boots_again_mid_install_is_a_problem(dapi, store):
    make_image(store)
    node = discovered(dapi)
    dapi.post(f"/api/v2/nodes/{node['node']}/deploy")
    take_job(dapi, node["token"])
    from discoverykit import boot_nonce

    nonce = boot_nonce(dapi, INV["boot_mac"])
    assert discover(dapi, INV, nonce=nonce).status_code == 201
    shown = dapi.get(f"/api/v2/nodes/{node['node']}").json()
    assert shown["state"] == "problem" and "booted again" in shown["state_reason"]


@pytest.mark.parametrize("body, status, words", [
    ({"nodes": ["nope"], "os": "debian-12"}, 404, "nope"),
    ({"nodes": [], "os": "debian-12"}, 422, "at least one node"),
    ({"nodes": ["NODE"], "os": "centos-9"}, 409, "no built image"),
    ({"nodes": ["NODE"], "os": "../etc"}, 422, "not an OS name"),
])
def test_deploy_refusals_write_nothing(dapi, store, body, status, words):
    make_image(store)
    node = discovered(dapi)
    body = dict(body, nodes=[node["node"] if n == "NODE" else n for n in body["nodes"]])
    r = dapi.post("/api/v2/nodes/deploy", json=body)
    assert r.status_code == status and words in r.json()["message"], r.text
    assert dapi.get(f"/api/v2/nodes/{node['node']}").json()["state"] == "allocated"


def test_deploying_many_is_all_or_nothing(dapi, store):
    make_image(store)
    a = discovered(dapi)
    b = discover(dapi, dict(INV, boot_mac="52:54:00:bb:00:01", nics=[{"name": "eth0", "mac": "52:54:00:bb:00:01"}])).json()
    r = dapi.post("/api/v2/nodes/deploy", json={"nodes": [a["node"], b["node"]]})  # b is only discovered
    assert r.status_code == 409 and "only allocated nodes" in r.json()["message"]
    assert dapi.get(f"/api/v2/nodes/{a['node']}").json()["state"] == "allocated"


def test_a_bulk_deploy_plans_each_node_as_its_own(dapi, store, db):
    """One call, one pass for all (services/install.deploy reads the nodes, plans, BIOS settings
    together): each node still gets its own job, seed, address; a node named twice is refused."""
    from crowbar.db.models import Node
    from crowbar.services import attribs

    make_image(store)
    made = []
    for i in range(3):
        mac = f"52:54:00:bc:00:0{i}"
        body = discover(dapi, dict(INV, boot_mac=mac, nics=[{"name": "eth0", "mac": mac}])).json()
        assert dapi.post(f"/api/v2/nodes/{body['node']}/allocate").status_code == 200
        made.append(body["node"])
    r = dapi.post("/api/v2/nodes/deploy", json={"nodes": [*made, made[1].upper()]})
    assert r.status_code == 422 and f"node {made[1]!r} is named twice" in r.json()["message"], r.text
    assert {dapi.get(f"/api/v2/nodes/{n}").json()["state"] for n in made} == {"allocated"}
    shown = dapi.get(f"/api/v2/nodes/{made[2]}").json()
    r = dapi.post("/api/v2/nodes/allocate", json={"nodes": [made[2], str(shown["id"])]})  # by name and id
    assert r.status_code == 422 and f"node {made[2]!r} is named twice" in r.json()["message"], r.text
    r = dapi.post("/api/v2/nodes/deploy", json={"nodes": made})
    assert r.status_code == 200 and [n["name"] for n in r.json()["items"]] == made, r.text
    addresses = {a["node"]: a["address"].split("/")[0]
                 for a in dapi.get("/api/v2/networks/admin/allocations").json()["items"]}
    with db.session() as s:
        rows = {n.name: n for n in s.query(Node).filter(Node.name.in_(made))}
        jobs = {j.node_id: j for j in s.query(AgentJob).filter_by(kind="install")}
        assert len(jobs) == 3
        for name, node in rows.items():
            job = jobs[node.id]
            assert node.install["job"] == job.id and node.state == "hardware-installed"
            assert f"instance-id: crowbar-{node.id}-{job.id}" in job.script
            assert f"local-hostname: {name}" in job.script and addresses[name] in job.script
            assert all(other not in job.script for other in made if other != name)
    # the BIOS settings read for all at once are what each node shows
    r = dapi.put("/api/v2/attribs/bios-settings", json={"node": made[0], "value": {"BootMode": "Uefi"}})
    assert r.status_code == 200, r.text
    with db.session() as s:
        rows = {n.name: n for n in s.query(Node).filter(Node.name.in_(made))}
        values = attribs.values(s, "bios-settings", list(rows.values()))
        for node in rows.values():
            assert values[node.id] == attribs.get(s, "bios-settings", node.id)["value"]
        assert values[rows[made[0]].id] == {"BootMode": "Uefi"}


def test_release_erases_and_returns_the_node_to_the_pool(dapi, store, db):
    make_image(store)
    node = discovered(dapi)
    dapi.post(f"/api/v2/nodes/{node['node']}/deploy")
    job = take_job(dapi, node["token"])
    dapi.post(f"/api/v2/agent/jobs/{job['job']}", json={"exit_code": 0}, headers=agent(node["token"]))
    r = dapi.post(f"/api/v2/nodes/{node['node']}/release", json={"erase": "quick"})
    assert r.status_code == 200 and r.json()["state"] == "releasing", r.text
    with db.session() as s:  # the installed OS has no agent: the node is power-cycled into discovery
        erase = s.query(AgentJob).filter_by(kind="erase").one()
        assert "wipefs -q -a /dev/vda" in erase.script and "wipefs -q -a /dev/vdb" in erase.script
    nxt = take_job(dapi, node["token"])
    assert nxt["action"] == "run" and nxt["job"] == str(erase.id)
    dapi.post(f"/api/v2/agent/jobs/{nxt['job']}", json={"exit_code": 0}, headers=agent(node["token"]))
    shown = dapi.get(f"/api/v2/nodes/{node['node']}").json()
    assert shown["state"] == "discovered"
    assert "address" not in shown["hints"].get("crowbar", {}).get("ssh", {})
    allocations = dapi.get("/api/v2/networks/admin/allocations").json()
    assert not any(a.get("node") == node["node"] for a in (allocations.get("items", allocations)))
    assert dapi.post(f"/api/v2/nodes/{node['node']}/release", json={"erase": "shred"}).status_code == 422


def test_a_release_whose_pxe_boot_did_not_take_is_power_cycled_again_then_a_problem(dapi, store):
    name, token = deployed_ready(dapi, store)
    assert dapi.get(f"/api/v2/nodes/{name}").json()["state"] == "ready"

    def cycles():
        return [r for r in dapi.get("/api/v2/power_requests").json()["items"]
                if r["node"] == name and r["action"] == "cycle"]

    assert dapi.post(f"/api/v2/nodes/{name}/release", json={"erase": "quick"}).json()["state"] == "releasing"
    assert len(cycles()) == 1 and cycles()[0]["actor"] == "admin"
    # the boot that was running calls home late: not a missed PXE boot, nothing more is asked
    for step in ("booted", "ready"):
        r = dapi.post("/api/v2/agent/booted", json={"step": step, "boot_id": "boot-1",
                                                    "host_keys": [HOST_KEY]}, headers=agent(token))
        assert r.json()["state"] == "releasing", r.text
    assert len(cycles()) == 1
    assert dapi.get(f"/api/v2/nodes/{name}").json()["install"]["host_keys"] == []  # the old system's
    # a new boot of the installed system: the firmware went on to the disk; cycled again, three times
    for attempt in (2, 3, 4):
        r = dapi.post("/api/v2/agent/booted", json={"step": "booted", "boot_id": f"boot-{attempt}"},
                      headers=agent(token))
        assert r.json()["state"] == "releasing"
        assert len(cycles()) == attempt and cycles()[-1]["actor"] == "server"
    events = dapi.get("/api/v2/events", params={"object_type": "node"}).json()["items"]
    assert [e["message"] for e in events if e["action"] == "netboot-retry"][-1].endswith("power cycle 3/3")
    # a fourth: the operator has to look (boot order, DHCP)
    r = dapi.post("/api/v2/agent/booted", json={"step": "booted", "boot_id": "boot-5"}, headers=agent(token))
    shown = dapi.get(f"/api/v2/nodes/{name}").json()
    assert shown["state"] == "problem" and "booted its disk instead of the network 4 times" in shown["state_reason"]
    assert len(cycles()) == 4
    # a new release power-cycles it (its installed system runs, not an agent) and counts again
    assert dapi.post(f"/api/v2/nodes/{name}/release", json={"erase": "quick"}).json()["state"] == "releasing"
    assert len(cycles()) == 5
    dapi.post("/api/v2/agent/booted", json={"step": "booted", "boot_id": "boot-6"}, headers=agent(token))
    assert dapi.get(f"/api/v2/nodes/{name}").json()["state"] == "releasing" and len(cycles()) == 6
    events = dapi.get("/api/v2/events", params={"object_type": "node"}).json()["items"]
    assert [e["message"] for e in events if e["action"] == "netboot-retry"][-1].endswith("power cycle 1/3")


def test_a_node_silent_after_its_power_cycle_is_powered_off_and_on_then_a_problem(dapi, store, db):
    """The watchdog's rule for a boot that hangs (firmware, a boot file, the kernel): the server
    cycled the node into the discovery image and its agent never took the queued job."""
    from datetime import datetime, timedelta, timezone

    from crowbar.db.models import Node, PowerRequest
    from crowbar.server.watchdog import Watchdog
    from crowbar.services import install

    name, token = deployed_ready(dapi, store)
    assert dapi.post(f"/api/v2/nodes/{name}/release", json={"erase": "quick"}).json()["state"] == "releasing"

    def requests():
        with db.session() as s:
            node_id = s.query(Node).filter_by(name=name).one().id
            return [(r.action, r.actor, r.state) for r in s.query(PowerRequest).filter_by(node_id=node_id)
                    .order_by(PowerRequest.id)]

    def all_done(minutes_ago: float) -> None:  # what the power worker does, back-dated
        with db.session() as s:
            latest = s.query(PowerRequest).order_by(PowerRequest.id.desc()).first()
            for req in {latest, *s.query(PowerRequest).filter(PowerRequest.state != "succeeded")}:
                req.state, req.result = "succeeded", "done"
                req.finished_at = datetime.now(timezone.utc) - timedelta(minutes=minutes_ago)

    assert requests() == [("cycle", "admin", "queued")]  # the release's (the deploy's agent took its job itself)
    Watchdog(db).step()
    assert len(requests()) == 1  # the cycle has not run yet: nothing to wait on
    all_done(1)
    Watchdog(db).step()
    assert len(requests()) == 1  # a minute: the machine is still booting
    silent = install.NETBOOT_SILENCE.total_seconds() / 60 + 1
    for attempt in (1, 2, 3):
        all_done(silent)
        Watchdog(db).step()
        assert requests()[-2:] == [("off", "server", "queued"), ("on", "server", "queued")]
        assert len(requests()) == 1 + 2 * attempt
        assert dapi.get(f"/api/v2/nodes/{name}").json()["state"] == "releasing"
        Watchdog(db).step()
        assert len(requests()) == 1 + 2 * attempt  # the new ones have not run: one retry at a time
    events = dapi.get("/api/v2/events", params={"object_type": "node"}).json()["items"]
    message = [e["message"] for e in events if e["action"] == "netboot-retry"][-1]
    assert message.startswith("no word from the discovery image 3") and message.endswith(
        "while releasing: power off and on 3/3"), message
    # the fourth silent boot: the operator has to look
    all_done(silent)
    Watchdog(db).step()
    shown = dapi.get(f"/api/v2/nodes/{name}").json()
    assert shown["state"] == "problem" and len(requests()) == 7
    assert "did not start the discovery image after 4 power cycles while releasing" in shown["state_reason"]

    # a release whose agent does speak: its erase job taken, nothing more whatever the time
    assert dapi.post(f"/api/v2/nodes/{name}/release", json={"erase": "quick"}).json()["state"] == "releasing"
    all_done(30)
    before = requests()
    again = take_job(dapi, token)
    assert again["action"] == "run"
    Watchdog(db).step()
    assert requests() == before
    with db.session() as s:
        assert install.retry_silent_netboots(s, now=datetime.now(timezone.utc) + timedelta(hours=1)) == []


def test_reinstall_queues_a_fresh_install(dapi, store, db):
    make_image(store)
    node = discovered(dapi)
    dapi.post(f"/api/v2/nodes/{node['node']}/deploy")
    job = take_job(dapi, node["token"])
    dapi.post(f"/api/v2/agent/jobs/{job['job']}", json={"exit_code": 0}, headers=agent(node["token"]))
    r = dapi.post(f"/api/v2/nodes/{node['node']}/reinstall", json={})
    assert r.status_code == 200 and r.json()["state"] == "reinstall" and r.json()["bootenv"] == "discovery"
    again = take_job(dapi, node["token"])
    assert again["action"] == "run" and again["job"] != job["job"]
    assert dapi.get(f"/api/v2/nodes/{node['node']}").json()["state"] == "installing"


def test_the_os_catalog(dapi, store):
    manifest = make_image(store)
    node = discovered(dapi)
    dapi.post(f"/api/v2/nodes/{node['node']}/deploy")
    rows = {r["name"]: r for r in dapi.get("/api/v2/os_images").json()}
    assert rows["debian-12"]["built"] and rows["debian-12"]["buildable"]
    assert rows["debian-12"]["current"]["sha256"] == manifest["sha256"]
    assert rows["debian-12"]["nodes"] == [{"node": node["node"], "state": "hardware-installed"}]
    shown = dapi.get("/api/v2/os_images/debian-12").json()
    assert shown["recipe"]["suite"] == "bookworm" and shown["images"][0]["packages"][0]["name"] == "bash"
    r = dapi.delete("/api/v2/os_images/debian-12")  # a node is being installed with it
    assert r.status_code == 409 and node["node"] in r.json()["message"]
    assert dapi.get("/api/v2/os_images/nope").status_code == 404


def test_images_are_served_with_range_and_checksums(dapi, store):
    manifest = make_image(store)
    base = f"/boot/os/debian-12/{DIGEST}"
    whole = dapi.get(f"{base}/root.img.gz", headers={"authorization": ""})
    assert whole.status_code == 200 and hashlib.sha256(whole.content).hexdigest() == manifest["sha256"]
    part = dapi.get(f"{base}/root.img.gz", headers={"authorization": "", "range": "bytes=10-19"})
    assert part.status_code == 206 and part.content == whole.content[10:20]
    assert part.headers["content-range"] == f"bytes 10-19/{len(whole.content)}"
    sums = dapi.get(f"{base}/SHA256SUMS", headers={"authorization": ""}).text
    assert sums == f"{manifest['sha256']}  root.img.gz\n"
    for bad in (f"/boot/os/debian-12/{'cd' * 32}/root.img.gz", f"{base}/../../etc/passwd", f"{base}/other"):
        assert dapi.get(bad, headers={"authorization": ""}).status_code == 404


@pytest.mark.skipif(not (dnsmasq.IPXE_DIR / dnsmasq.UEFI_BOOT_FILE).is_file(),
                    reason="Debian's ipxe package is not installed (its ipxe.efi is what is served)")
def test_ipxe_efi_is_served_over_http_for_uefi_http_boot_and_nothing_else_is(dapi):
    """The URL dnsmasq gives UEFI HTTP boot clients (tests/provisioner/test_dnsmasq.py) answers
    iPXE's UEFI binary, without a token; other names in that folder are 404 in the one error shape."""
    url = dnsmasq.http_boot_file_url("/boot")
    assert url == "/boot/ipxe/ipxe.efi"
    got = dapi.get(url, headers={"authorization": ""})
    assert got.status_code == 200 and got.content == (dnsmasq.IPXE_DIR / dnsmasq.UEFI_BOOT_FILE).read_bytes()
    head = dapi.head(url, headers={"authorization": ""})  # the firmware's first question: the size
    assert head.status_code == 200 and int(head.headers["content-length"]) == len(got.content) and not head.content
    for bad in ("/boot/ipxe/undionly.kpxe", "/boot/ipxe/..%2F..%2Fetc%2Fpasswd", "/boot/ipxe/ipxe.efi.bak"):
        r = dapi.get(bad, headers={"authorization": ""})
        assert r.status_code == 404 and r.json()["error"] == "not_found", (bad, r.text)


def test_root_device_hints_set_as_an_attrib_choose_the_disk(dapi, store):
    make_image(store, fs_size=2 << 30)
    node = discovered(dapi)
    r = dapi.put("/api/v2/attribs/root-device", json={"node": node["node"], "value": {"size": "< 4"}})
    assert r.status_code == 200, r.text
    r = dapi.post(f"/api/v2/nodes/{node['node']}/deploy")  # vdb (2 GiB) is too small for the image
    assert r.status_code == 422 and "does not fit on /dev/vdb" in r.json()["message"], r.text
    dapi.put("/api/v2/attribs/root-device", json={"node": node["node"], "value": {"name": "vda"}})
    assert dapi.post(f"/api/v2/nodes/{node['node']}/deploy").json()["install"]["disk"] == "/dev/vda"
    r = dapi.put("/api/v2/attribs/root-device", json={"node": node["node"], "value": {"wwn": "x"}})
    assert r.status_code == 422


def test_the_network_config_cloud_init_reads_has_no_default_keyword(dapi, store, db):
    """netplan's `to: default` is not understood by Debian 12's cloud-init: the seed spells it out."""
    from crowbar.services import install

    make_image(store)
    node = discovered(dapi)
    with db.session() as s:
        from crowbar.db.models import Node

        seed = install.seed(s, s.get(Node, node["id"]), install.Context(images=store), "i-1")
    assert "default" not in seed["network-config"]
    import yaml

    config = yaml.safe_load(seed["network-config"])
    assert config["version"] == 2
    admin = config["ethernets"]["eth0"]
    assert admin["addresses"][0].startswith("192.168.124.")
    routes = [r for e in config["ethernets"].values() for r in e.get("routes", [])]
    assert {"to": "0.0.0.0/0", "via": "192.168.124.1"} in routes, config


def test_deploy_right_after_allocate_skips_the_allocation_reboot(dapi, store):
    """The installed system gets its reserved address from the seed: no PXE round just for it."""
    make_image(store)
    node = discovered(dapi)  # allocated: its agent would reboot to take the reserved address
    dapi.post(f"/api/v2/nodes/{node['node']}/deploy")
    nxt = dapi.get("/api/v2/agent/next", headers=agent(node["token"])).json()
    assert nxt["action"] == "run" and "crowbar-install" in nxt["script"]


def test_without_an_interface_plan_every_nic_of_the_inventory_gets_dhcp_by_mac():
    """The fallback seed names each NIC (cloud-init's networkd renderer writes the key as Name= and
    ignores a `match: name:` glob, so one `all: {match: {name: eth*}}` entry configured nothing)."""
    from crowbar.services.install import dhcp_everywhere

    nics = [{"name": "eth0", "mac": "52:54:00:AA:00:01"}, {"mac": "52:54:00:aa:00:02"},
            {"name": "bad name;", "mac": "52:54:00:aa:00:03"}, {"name": "eth0", "mac": "52:54:00:aa:00:04"},
            "junk", {"name": "eth9"}]
    assert dhcp_everywhere({"nics": nics}) == {
        "eth0": {"match": {"macaddress": "52:54:00:aa:00:01"}, "set-name": "eth0", "dhcp4": True},
        "eth1": {"match": {"macaddress": "52:54:00:aa:00:02"}, "set-name": "eth1", "dhcp4": True},
        "eth2": {"match": {"macaddress": "52:54:00:aa:00:03"}, "set-name": "eth2", "dhcp4": True},
        "eth3": {"match": {"macaddress": "52:54:00:aa:00:04"}, "set-name": "eth3", "dhcp4": True},
    }
    assert dhcp_everywhere({}) == {"eth0": {"dhcp4": True}}
    assert dhcp_everywhere(None) == {"eth0": {"dhcp4": True}}


def test_a_bulk_deploys_statements_do_not_grow_with_its_nodes(dapi, store, db):
    """The OS rules' facts, the netplan plans and the answer's tags of a bulk deploy are read for
    all its nodes together: deploying three sends no more SQL statements than deploying one (but
    the ORM's INSERT of each job, which learns its id), and each node in the answer shows its tags
    as the node's own page does."""
    make_image(store)
    rules = "rules:\n  - {name: everyone, when: \"name != ''\", tags: [rack-1]}\ndefault: {os: debian-12, tags: [std]}\n"
    assert dapi.put("/api/v2/os_rules", json={"rules": rules}).status_code == 200
    made = []
    for i in range(5):
        mac = f"52:54:00:bd:00:0{i}"
        body = discover(dapi, dict(INV, boot_mac=mac, nics=[{"name": "eth0", "mac": mac}])).json()
        made.append(body["node"])
    counts = []
    for group in (made[:1], made[1:2], made[2:]):  # the first warms the server's caches
        seen, stop = statements(db)
        try:
            r = dapi.post("/api/v2/nodes/deploy", json={"nodes": group, "allocate": True})
        finally:
            stop()
        assert r.status_code == 200, r.text
        for item in r.json()["items"]:
            assert item["tags"] == ["rack-1"]
            assert dapi.get(f"/api/v2/nodes/{item['name']}").json()["tags"] == ["rack-1"]
        counts.append(sum(1 for statement in seen if not statement.startswith("INSERT INTO agent_jobs")))
    assert counts[2] <= counts[1], counts

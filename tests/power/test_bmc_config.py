"""The bmc-config role (Crowbar 1's ipmi barclamp): its script, run as the discovery agent runs it,
configures a real BMC (OpenIPMI's ipmi_sim) with an address the server allocated on the bmc
network and a generated user and password; the server then powers the node through `ipmi` with
them, proven by a status call. And the agent's BMC routes: only while the role runs, only BMC
networks, the password never shown back or logged.
"""

from __future__ import annotations

import ctypes
import os
import shutil
import socket
import subprocess
import sys
import threading
import time
import uuid
from pathlib import Path

import pytest

import crowbar.agent
from crowbar.engine.annealer import Annealer
from powerkit import start_worker

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "provisioner"))
from discoverykit import discover, inventory  # noqa: E402

BUSYBOX = Path("/bin/busybox")
AGENT = Path(crowbar.agent.__file__).parent


def _bind_role(api, db, mac: str):
    """A discovered node with bmc-config bound and claimed: its script is queued for the agent.
    Returns (node name, agent headers, the job as /agent/next gives it, the annealer)."""
    body = discover(api, inventory(mac)).json()
    hdr = {"authorization": f"Bearer {body['token']}"}
    api.post("/api/v2/deployments", json={"name": "bmc"})
    r = api.post("/api/v2/deployments/bmc/bind", json={"role": "bmc-config", "node": body["node"]})
    assert r.status_code == 201, r.text
    api.post("/api/v2/deployments/bmc/commit")
    annealer = Annealer(db, workers=1)
    nxt = {"action": "wait"}
    for _ in range(100):
        annealer.step()
        nxt = api.get("/api/v2/agent/next", headers=hdr).json()
        if nxt["action"] == "run":
            break
        time.sleep(0.05)
    assert nxt["action"] == "run", nxt
    return body["node"], hdr, nxt, annealer


def test_the_agent_bmc_routes_answer_only_while_the_role_runs(api, db):
    other = discover(api, inventory("52:54:00:aa:01:01")).json()
    other_hdr = {"authorization": f"Bearer {other['token']}"}
    # no bmc-config running: a node token alone changes nothing
    r = api.post("/api/v2/agent/bmc/address", json={"network": "bmc"}, headers=other_hdr)
    assert r.status_code == 409 and "not running the bmc-config role" in r.json()["message"]
    assert api.post("/api/v2/agent/bmc/address", json={}, headers={"authorization": ""}).status_code == 401

    node, hdr, job, annealer = _bind_role(api, db, "52:54:00:aa:01:02")
    try:
        r = api.post("/api/v2/agent/bmc/address", json={"network": "bmc"}, headers=hdr)
        assert r.status_code == 200, r.text
        got = r.json()
        assert got == {"network": "bmc", "address": "192.168.124.162", "netmask": "255.255.255.0",
                       "gateway": None, "vlan": None}
        assert api.post("/api/v2/agent/bmc/address", headers=hdr).json() == got  # the same, once
        allocations = api.list("/api/v2/networks/bmc/allocations")
        assert [(a["node"], a["address"]) for a in allocations] == [(node, "192.168.124.162")]
        # bmc_vlan is the hosts' side of a BMC VLAN (conduit intf2), not an address for a BMC
        for name in ("admin", "bmc_vlan"):
            r = api.post("/api/v2/agent/bmc/address", json={"network": name}, headers=hdr)
            assert r.status_code == 422 and "BMC networks only" in r.json()["message"]
        assert api.post("/api/v2/agent/bmc/address", json={"network": "nope"}, headers=hdr).status_code == 404

        password = "Gen3ratedPassw0rd"
        r = api.post("/api/v2/agent/bmc/credentials",
                     json={"network": "bmc", "username": "u" * 17, "password": password}, headers=hdr)
        assert r.status_code == 422 and password not in r.text
        r = api.post("/api/v2/agent/bmc/credentials",
                     json={"network": "storage", "username": "cb-x", "password": password}, headers=hdr)
        assert r.status_code == 422
        r = api.post("/api/v2/agent/bmc/credentials",
                     json={"network": "bmc", "username": "cb-abcdefgh", "password": password}, headers=hdr)
        assert r.status_code == 200, r.text
        answer = r.json()
        assert password not in r.text
        assert {k: answer[k] for k in ("driver", "address", "port", "username", "state")} == \
            {"driver": "ipmi", "address": "192.168.124.162", "port": 623, "username": "cb-abcdefgh",
             "state": "queued"}
        shown = api.get(f"/api/v2/nodes/{node}/power").json()
        state = shown.pop("state")
        assert shown == {"node": node, "driver": "ipmi", "settings": {
            "address": "192.168.124.162", "port": 623, "username": "cb-abcdefgh", "password": "(set)"}}
        assert (state["state"], state["pending"]) == ("unknown", "status")  # the proof is queued
        proof = api.get(f"/api/v2/agent/power_requests/{answer['request']}", headers=hdr).json()
        assert (proof["action"], proof["state"]) == ("status", "queued")
        # another node cannot read it; nothing anywhere shows the password
        r = api.get(f"/api/v2/agent/power_requests/{answer['request']}", headers=other_hdr)
        assert r.status_code == 404
        for path in (f"/api/v2/nodes/{node}", "/api/v2/events?limit=500", "/api/v2/power_requests"):
            assert password not in api.get(path).text
    finally:
        api.post(f"/api/v2/agent/jobs/{job['job']}", json={"exit_code": 1, "output": "stopped by the test\n"},
                 headers=hdr)
        annealer.run_until_idle(30)
        annealer._pool.shutdown()


# -- the script against a real BMC, with the server's power worker in the BMC's namespace -----------
def _missing() -> str | None:
    for tool, package in (("qemu-system-x86_64", "qemu-system-x86"), ("ipmi_sim", "openipmi"), ("ipmitool", "ipmitool"), ("nft", "nftables"),
                          ("ip", "iproute2")):
        if not shutil.which(tool):
            return f"{tool} is not installed (Debian package {package})"
    if not BUSYBOX.is_file():
        return "busybox-static is not installed"
    if os.geteuid() != 0:
        return "needs root (a network namespace for the BMC's address)"
    return None


def in_namespace(namespace: str, fn):
    """Call `fn` in a thread that first joins network namespace `namespace` (setns(2)): sockets it
    makes, threads it starts and their child processes stay there."""
    out: dict = {}

    def run():
        libc = ctypes.CDLL(None, use_errno=True)
        fd = os.open(f"/run/netns/{namespace}", os.O_RDONLY)
        try:
            if libc.setns(fd, 0x40000000) != 0:  # CLONE_NEWNET
                raise OSError(ctypes.get_errno(), "setns")
        finally:
            os.close(fd)
        try:
            out["value"] = fn()
        except BaseException as exc:  # handed to the caller
            out["error"] = exc

    thread = threading.Thread(target=run)
    thread.start()
    thread.join()
    if "error" in out:
        raise out["error"]
    return out["value"]


def _power(api, node: str, action: str) -> tuple[str, str]:
    request = api.post(f"/api/v2/nodes/{node}/power", json={"action": action}).json()["id"]
    for _ in range(600):
        req = api.get(f"/api/v2/power_requests/{request}").json()
        if req["state"] in ("succeeded", "failed"):
            return req["state"], req["result"]
        time.sleep(0.1)
    raise AssertionError(f"power {action} of {node} did not finish in 60 s")


@pytest.fixture
def namespace():
    name = f"cbbmc-{uuid.uuid4().hex[:8]}"
    subprocess.run(["ip", "netns", "add", name], check=True)
    subprocess.run(["ip", "-n", name, "link", "set", "lo", "up"], check=True)
    yield name
    subprocess.run(["ip", "netns", "del", name])


@pytest.mark.skipif(_missing() is not None, reason=str(_missing()))
def test_bmc_config_sets_up_a_real_bmc_and_the_node_is_powered_through_it(api, db, namespace, tmp_path):
    import uvicorn

    from crowbar.api.app import create_app
    from crowbar.api.settings import AppSettings
    from crowbar.lab.bmc import IpmiSim

    from test_bmc_drivers import boots, tiny_vm, wait_for

    bmc = IpmiSim(name="n1", dir=str(tmp_path / "bmc"), vm_argv=tiny_vm(tmp_path / "vm"), namespace=namespace)
    bmc.start()
    worker = server = None
    try:
        # The server's HTTP listener and power worker live in the BMC's namespace, as in the lab.
        worker = in_namespace(namespace, lambda: start_worker(db))
        sock = in_namespace(namespace, lambda: socket.create_server(("127.0.0.1", 0)))
        server = uvicorn.Server(uvicorn.Config(create_app(AppSettings(
            db=db, wake=lambda kind: worker.wake() if kind == "power" else None)), log_level="warning"))
        threading.Thread(target=server.run, kwargs={"sockets": [sock]}, daemon=True).start()
        while not server.started:
            time.sleep(0.02)

        node, hdr, job, annealer = _bind_role(api, db, "52:54:00:aa:02:01")
        bin_dir = tmp_path / "bin"
        bin_dir.mkdir()
        subprocess.run([str(BUSYBOX), "--install", "-s", str(bin_dir)], check=True)
        (bin_dir / "ipmitool").symlink_to(shutil.which("ipmitool"))
        env = {"PATH": str(bin_dir), "CROWBAR_LIB": str(AGENT), "CROWBAR_TOKEN": hdr["authorization"][7:],
               "CROWBAR_URL": f"http://127.0.0.1:{sock.getsockname()[1]}", "CROWBAR_NODE": node,
               "CROWBAR_JOB": job["job"], "IPMI_PASSWORD": bmc.password,
               # in-band on a server; over the LAN with the factory user here
               # (-C 3: ipmi_sim does not answer Get Channel Cipher Suites, which ipmitool would wait for)
               "CROWBAR_IPMITOOL": f"ipmitool -I lanplus -C 3 -H 127.0.0.1 -p {bmc.lan_port} -U admin -E"}
        done = subprocess.run([shutil.which("ip"), "netns", "exec", namespace, str(BUSYBOX), "sh", "-c", job["script"]],
                              env=env, capture_output=True, text=True, timeout=300)
        output = done.stdout + done.stderr
        api.post(f"/api/v2/agent/jobs/{job['job']}", json={"exit_code": done.returncode, "output": output},
                 headers=hdr)
        annealer.run_until_idle(60)
        annealer._pool.shutdown()

        nr = api.list("/api/v2/node_roles", {"role": "bmc-config"})[0]
        log = api.list(f"/api/v2/node_roles/{nr['id']}/runs")[-1]["log"]
        assert nr["state"] == "active", log
        wall = api.get(f"/api/v2/node_roles/{nr['id']}").json()["wall"]["crowbar"]["bmc"]
        user = wall.pop("username")
        assert user.startswith("cb-") and len(user) == 11
        assert wall == {"network": "bmc", "address": "192.168.124.162", "netmask": "255.255.255.0",
                        "gateway": None, "vlan": None, "channel": 1, "user_id": 3, "power": "off"}
        assert "proved: the BMC at 192.168.124.162 answers" in log
        assert [a["address"] for a in api.list("/api/v2/networks/bmc/allocations")] == ["192.168.124.162"]
        shown = api.get(f"/api/v2/nodes/{node}/power").json()
        assert shown["settings"] == {"address": "192.168.124.162", "port": 623, "username": user,
                                     "password": "(set)"}

        # The BMC has the settings, and the server powers the node through them.
        admin = ["ip", "netns", "exec", namespace, "ipmitool", "-I", "lanplus", "-C", "3", "-H", "127.0.0.1",
                 "-p", str(bmc.lan_port), "-U", "admin", "-E"]
        lan = subprocess.run(admin + ["lan", "print", "1"], env={**os.environ, "IPMI_PASSWORD": bmc.password},
                             capture_output=True, text=True).stdout
        assert "192.168.124.162" in lan and "255.255.255.0" in lan
        assert _power(api, node, "on") == ("succeeded", f"{node} powered on (IPMI 192.168.124.162)")
        assert _power(api, node, "status") == ("succeeded", "on")
        wait_for(lambda: boots(tmp_path / "vm") >= 1, 30, "the VM's firmware did not start")
        assert _power(api, node, "off")[0] == "succeeded"

        with db.session() as s:
            from crowbar.db.models import Node

            password = s.query(Node).filter_by(name=node).one().power["password"]
        assert len(password) == 16 and password.isalnum()
        everything = output + log + api.get("/api/v2/events?limit=1000").text + str(nr)
        assert password not in everything
    finally:
        if server:
            server.should_exit = True
        if worker:
            worker.stop()
        bmc.stop()

"""A simulated fleet against a real server (crowbar.lab.fleet): 20 machines speaking the discovery
agent's HTTP protocol go from their first PXE boot to ready, a deployment of noop roles on all of
them anneals to active, and the power requests the operator makes go to the `fake` driver. Checked
through the real CLI afterwards."""

from __future__ import annotations

import json

import httpx
import pytest

from crowbar.lab.fleet import DELIVERY, DEPLOYMENT, FLEET_ROLES, Options, fake_image_store, simulate

pytestmark = pytest.mark.e2e

N = 20


@pytest.mark.parametrize("backend", ["sqlite", pytest.param("postgresql", marks=pytest.mark.postgresql)])
def test_a_simulated_fleet_reaches_ready_and_its_deployment_anneals(servers, backend):
    database = servers.postgres_url() if backend == "postgresql" else None
    s = servers.new(database=database, start=False)
    fake_image_store(s.root / "home" / ".cache" / "crowbar" / "os")  # the server's default image store
    s.start()
    power_dir = s.root / "power"
    batch = 7 if backend == "postgresql" else N  # the operator's bulk calls: split (3 of them), or one as the CLI
    report = simulate(s.url, (s.data_dir / "admin.token").read_text().strip(),
                      Options(nodes=N, concurrency=16, install_delay=0.5, state_dir=str(power_dir), timeout=240,
                              batch=batch))
    assert report["failures"] == []
    phases = {p["phase"]: p for p in report["phases"]}
    assert list(phases) == ["discover", "enroll", "allocate", "deploy", "anneal"]
    assert all(p["nodes"] == N for p in phases.values())
    assert phases["discover"]["routes"]["POST /discovery"]["count"] == N
    calls = -(-N // batch)
    assert [phases[p]["routes"][route]["count"] for p, route in (("enroll", "PUT /nodes/power"),
            ("allocate", "POST /nodes/allocate"), ("deploy", "POST /nodes/deploy"))] == [calls] * 3
    assert phases["deploy"]["routes"]["POST /agent/jobs/{job}"]["count"] == N  # one install job each
    assert phases["deploy"]["routes"]["POST /agent/booted"]["count"] == N  # ready alone: both steps at once
    # a small fleet: the server asks for no pause, so each install reports its seven phases
    assert phases["deploy"]["routes"]["POST /agent/progress/{job}"]["count"] == 7 * N
    # the agents long-poll: each install job was taken by a held poll (or the poll after the call)
    assert phases["deploy"]["routes"][DELIVERY]["count"] >= N  # (and a late reboot of the allocate)
    assert not any(key.split()[-1].startswith("5") for p in phases.values() for key in p["errors"])

    nodes = s.json("nodes", "list", "--name", "d02-")  # the simulated machines' MACs are 02:...
    assert len(nodes) == N and {n["state"] for n in nodes} == {"ready"}
    noderoles = s.json("noderoles", "list", "--deployment", DEPLOYMENT)
    assert len(noderoles) == N * len(FLEET_ROLES) and {nr["state"] for nr in noderoles} == {"active"}
    assert s.json("anneal")["status"] == "finished"

    # every node was enrolled with the fake driver; power requests go to it and it records them
    first, second = nodes[0]["name"], nodes[1]["name"]
    assert s.json("nodes", "show-power", first)["driver"] == "fake"
    done = s.json("nodes", "power", first, "cycle", "--wait")
    assert done["state"] == "succeeded" and "fake power cycle" in done["result"], done
    assert s.json("nodes", "power", second, "off", "--wait")["state"] == "succeeded"
    assert s.json("nodes", "power", second, "status", "--wait")["result"].endswith("off")
    assert json.loads((power_dir / f"{first}.json").read_text())["power"] == "on"
    assert json.loads((power_dir / f"{second}.json").read_text())["power"] == "off"


@pytest.mark.postgresql
def test_a_fleet_spread_over_two_servers_on_one_postgresql(servers):
    """Two servers share one PostgreSQL: the machines talk to A or B by turns, the operator only to
    A. Every machine reaches ready and the deployment anneals; the install jobs the deploy call
    queues through A reach the agents B holds at once (B hears A's NOTIFY), not when their hold
    (19-25 s here) ends."""
    database = servers.postgres_url()
    a, b = (servers.new(name, database=database, start=False) for name in ("a", "b"))
    for s in (a, b):
        fake_image_store(s.root / "home" / ".cache" / "crowbar" / "os")
        s.start()
    report = simulate(a.url, (a.data_dir / "admin.token").read_text().strip(),
                      Options(nodes=N, concurrency=16, install_delay=0.5, state_dir=str(a.root / "power"),
                              timeout=240, agent_urls=(a.url, b.url), allocate_on_deploy=True))
    assert report["failures"] == []
    phases = {p["phase"]: p for p in report["phases"]}
    assert list(phases) == ["discover", "enroll", "allocate+deploy", "anneal"] and all(p["nodes"] == N for p in phases.values())
    delivery = phases["allocate+deploy"]["routes"][DELIVERY]
    assert delivery["count"] >= N and delivery["p99_ms"] < 10_000, delivery
    assert not any(key.split()[-1].startswith("5") for p in phases.values() for key in p["errors"])

    nodes = a.json("nodes", "list", "--name", "d02-")
    assert len(nodes) == N and {n["state"] for n in nodes} == {"ready"}
    noderoles = a.json("noderoles", "list", "--deployment", DEPLOYMENT)
    assert len(noderoles) == N * len(FLEET_ROLES) and {nr["state"] for nr in noderoles} == {"active"}
    token = (a.data_dir / "admin.token").read_text().strip()
    health = httpx.get(f"{b.url}/api/v2/health", headers={"authorization": f"Bearer {token}"}).json()
    assert health["checks"]["notices"]["received_nodes"] >= N // 2  # B's machines' install jobs, at least

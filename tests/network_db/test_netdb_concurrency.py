"""8 processes at once against one database (PostgreSQL, and a SQLite file): every address and
every segment is handed out at most once, and exactly the surplus is refused. Verified from the
database, not only from what the processes say.

The same 8 processes run four rounds, each started by all of them at the same moment:
1. IP allocation: 8 nodes, a range of 5 addresses -> 5 allocated, 3 refused (RangeExhausted);
2. networks sharing a subnet (admin and bmc): 8 nodes all ask for 192.168.124.200 -> one gets it;
3. tenant VLANs: 4 free tags (501..504; nova_fixed holds 500) -> 4 created, 4 refused;
4. VXLAN: 6 free VNIs -> 6 created, 2 refused.
"""

from __future__ import annotations

import json
import subprocess
import sys
import time
from collections import Counter
from pathlib import Path

from sqlalchemy import func, select

from crowbar.db.network_models import NetworkAllocation, NetworkRow, NeutronSegment
from crowbar.services import network

WORKER = Path(__file__).with_name("netdb_concurrency_worker.py")
PROCESSES = 8
NO_NETWORK = "Unable to create the network. No tenant network is available for allocation."


class Race:
    """PROCESSES worker processes, released round by round."""

    def __init__(self, db, folder: Path, rounds: list[list[dict]]):
        self.folder, self.rounds = folder, rounds
        url = db.engine.url.render_as_string(hide_password=False)
        self.procs = [subprocess.Popen(
            [sys.executable, str(WORKER), json.dumps({"url": url, "dir": str(folder), "index": i,
                                                      "rounds": [r[i] for r in rounds]})],
            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True) for i in range(PROCESSES)]
        self.wait_for([folder / f"ready-{i}" for i in range(PROCESSES)])

    def wait_for(self, paths: list[Path]) -> None:
        deadline = time.monotonic() + 120
        while not all(p.exists() for p in paths):
            assert time.monotonic() < deadline, "the workers took too long"
            dead = [p for p in self.procs if p.poll() is not None and p.returncode != 0]
            assert not dead, dead[0].communicate()[1]
            time.sleep(0.01)

    def run(self, k: int) -> list[dict]:
        (self.folder / f"go-{k}").touch()
        paths = [self.folder / f"result-{i}-{k}.json" for i in range(PROCESSES)]
        self.wait_for(paths)
        return [json.loads(p.read_text()) for p in paths]

    def close(self) -> None:
        for p in self.procs:
            try:
                p.communicate(timeout=60)
            finally:
                if p.poll() is None:
                    p.kill()
                    p.wait()
        for p in self.procs:
            assert p.returncode == 0, p.stderr


def test_eight_processes_race_for_addresses_and_segments(db, tmp_path, make_nodes, tiny):
    tiny_nodes = [f"race{i}" for i in range(PROCESSES)]
    shared_nodes = [f"share{i}" for i in range(PROCESSES)]
    make_nodes(*tiny_nodes, *shared_nodes)
    with db.session() as s:
        network.set_neutron_settings(s, {"tenant_vlan_count": 4, "vni_ranges": ["10:15"]})
    rounds = [
        [{"op": "allocate", "network": tiny, "node": n} for n in tiny_nodes],
        [{"op": "allocate", "network": "admin" if i % 2 else "bmc", "node": n,
          "address": "192.168.124.200"} for i, n in enumerate(shared_nodes)],
        [{"op": "tenant", "name": f"t{i}"} for i in range(PROCESSES)],
        [{"op": "tenant", "name": f"x{i}", "network_type": "vxlan"} for i in range(PROCESSES)],
    ]
    race = Race(db, tmp_path, rounds)
    try:
        # 1. five addresses, eight nodes
        results = race.run(0)
        refused = [r for r in results if "error" in r]
        assert len(refused) == 3, results
        assert {r["class"] for r in refused} == {"RangeExhausted"}
        with db.session() as s:
            network_id = s.scalar(select(NetworkRow.id).where(NetworkRow.name == tiny))
            rows = s.execute(select(NetworkAllocation.address, NetworkAllocation.node_id)
                             .where(NetworkAllocation.network_id == network_id)).all()
        addresses = [r.address for r in rows]
        assert sorted(addresses) == [f"10.99.0.{i}" for i in range(10, 15)]  # each exactly once
        assert len({r.node_id for r in rows}) == 5
        assert sorted(r["ok"]["address"] for r in results if "ok" in r) == sorted(addresses)

        # 2. admin and bmc share 192.168.124.0/24; everyone wants .200 (a valid hint on both)
        results = race.run(1)
        assert all("ok" in r for r in results), results
        assert [r["ok"]["address"] for r in results].count("192.168.124.200") == 1
        with db.session() as s:
            ids = list(s.scalars(select(NetworkRow.id).where(NetworkRow.name.in_(["admin", "bmc", "bmc_vlan"]))))
            shared = list(s.scalars(select(NetworkAllocation.address)
                                    .where(NetworkAllocation.network_id.in_(ids))))
        assert len(shared) == PROCESSES
        assert Counter(shared).most_common(1)[0][1] == 1, Counter(shared)

        # 3. tenant VLANs 501..504 free
        results = race.run(2)
        refused = [r for r in results if "error" in r]
        assert len(refused) == 4, results
        assert {r["message"] for r in refused} == {NO_NETWORK}
        with db.session() as s:
            tags = list(s.scalars(select(NeutronSegment.segmentation_id)
                                  .where(NeutronSegment.network_type == "vlan")
                                  .order_by(NeutronSegment.segmentation_id)))
        assert tags == [500, 501, 502, 503, 504]

        # 4. VNIs 10..15 free
        results = race.run(3)
        assert sum("error" in r for r in results) == 2, results
        with db.session() as s:
            vnis = list(s.scalars(select(NeutronSegment.segmentation_id)
                                  .where(NeutronSegment.network_type == "vxlan")
                                  .order_by(NeutronSegment.segmentation_id)))
            assert s.scalar(select(func.count()).select_from(NeutronSegment)) == 11
        assert vnis == [10, 11, 12, 13, 14, 15]
    finally:
        race.close()

"""Neutron benchmark (issue 16): from a committed deployment to the first tenant ping, split by role,
and the time a tenant network's first port takes to become reachable, on two lab VMs under TCG.

    python benchmarks/neutron.py [--json FILE] [--markdown]

The measurement is the end-to-end test's own flow (tests/lab/test_lab_neutron.py: two installed
nodes, the neutron barclamp through the annealer, tenant networks on VLANs 501 and 502, a port
plugged on the compute node), run once with CROWBAR_NEUTRON_TIMINGS set so the test writes what it
timed: each noderole run (start after the commit, seconds), commit to annealed, each port from
its creation to its address by DHCP over the VLAN, commit to the first tenant ping. One run is
about half an hour here; the figures go to docs/neutron.md and docs/benchmarks.md by hand, with
the machine and the date.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]


def markdown(t: dict) -> str:
    lines = ["| role | node | start after commit (s) | run (s) | state |", "|---|---|---:|---:|---|"]
    lines += [f"| {r['role']} | {r['node'].split('.')[0]} | {r['start']:.0f} | {r['seconds']:.0f} | {r['state']} |"
              for r in t["roles"]]
    lines += ["", f"- commit to every noderole active: {t['committed_to_annealed']:.0f} s",
              f"- commit to every agent alive in the API: {t['committed_to_agents_alive']:.0f} s",
              f"- commit to the first tenant ping: {t['committed_to_first_tenant_ping']:.0f} s"]
    lines += [f"- port on {name} created to its address by DHCP: {s:.0f} s" for name, s in t["port_to_address"].items()]
    return "\n".join(lines)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--json", type=Path, help="also write the timings here")
    parser.add_argument("--markdown", action="store_true", help="print a table for the docs")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        out = Path(tmp) / "timings.json"
        done = subprocess.run([sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", "-m", "openstack",
                               "-s", "tests/lab/test_lab_neutron.py"], cwd=REPO,
                              env={**os.environ, "CROWBAR_NEUTRON_TIMINGS": str(out)})
        if done.returncode != 0 or not out.exists():
            print(f"the end-to-end run failed (pytest exit {done.returncode}): no timings", file=sys.stderr)
            return 1
        timings = json.loads(out.read_text())
    if args.json:
        args.json.write_text(json.dumps(timings, indent=1))
    print(markdown(timings) if args.markdown else json.dumps(timings))
    return 0


if __name__ == "__main__":
    sys.exit(main())

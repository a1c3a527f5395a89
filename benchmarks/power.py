"""Power status calls through the ipmi and redfish drivers against the lab's BMC emulators.

100 `status` calls per driver against one BMC (ipmi_sim with a tiny qemu VM; sushy-tools with the
lab's qemu systems driver), serial and with 8 at once (the power worker's default `parallel`);
p50/p99 per call and calls/s. The drivers are called directly (as the power worker's threads do),
without the database: what is measured is the driver and the BMC.

    PYTHONPATH=. .venv/bin/python benchmarks/power.py [--calls 100] [--parallel 8]
"""

from __future__ import annotations

import argparse
import statistics
import sys
import tempfile
import time
import uuid
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

from crowbar.lab.bmc import IpmiSim, RedfishEmulator
from crowbar.power.base import PowerNode, get_driver

VM = ["qemu-system-x86_64", "-machine", "pc", "-accel", "tcg", "-m", "32", "-nodefaults", "-display", "none"]


def measure(driver, node: PowerNode, calls: int, parallel: int) -> dict:
    def one(_):
        started = time.perf_counter()
        assert driver.status(node) in ("on", "off")
        return time.perf_counter() - started

    started = time.perf_counter()
    if parallel == 1:
        times = [one(i) for i in range(calls)]
    else:
        with ThreadPoolExecutor(parallel) as pool:
            times = list(pool.map(one, range(calls)))
    wall = time.perf_counter() - started
    times.sort()
    return {"p50": statistics.median(times), "p99": times[min(len(times) - 1, int(len(times) * 0.99))],
            "rate": calls / wall}


def main() -> int:
    parser = argparse.ArgumentParser()
    parser.add_argument("--calls", type=int, default=100)
    parser.add_argument("--parallel", type=int, default=8)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        ipmi = IpmiSim(name="bench", dir=f"{tmp}/ipmi", vm_argv=VM)
        vm = Path(tmp) / "vm"
        vm.mkdir()
        command = VM + ["-qmp", f"unix:{vm / 'qmp.sock'},server=on,wait=off", "-pidfile", str(vm / "pid"),
                        "-daemonize", "-S"]
        redfish = RedfishEmulator(dir=f"{tmp}/redfish", systems=[
            {"name": "bench", "uuid": str(uuid.uuid4()), "qmp": str(vm / "qmp.sock"), "command": command}])
        ipmi.start()
        redfish.start()
        try:
            nodes = {"ipmi": PowerNode("bench", ipmi.settings()), "redfish": PowerNode("bench", redfish.settings("bench"))}
            print("| driver | calls | at once | p50 | p99 | calls/s |\n|---|---:|---:|---:|---:|---:|")
            for name, node in nodes.items():
                driver = get_driver(name)
                driver.power_on(node)
                for parallel in (1, args.parallel):
                    r = measure(driver, node, args.calls, parallel)
                    print(f"| {name} | {args.calls} | {parallel} | {r['p50'] * 1000:.0f} ms | {r['p99'] * 1000:.0f} ms "
                          f"| {r['rate']:.1f} |", flush=True)
                driver.power_off(node)
        finally:
            ipmi.stop()
            redfish.stop()
    return 0


if __name__ == "__main__":
    sys.exit(main())

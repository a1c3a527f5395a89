"""Power-on to SSH-ready through PXE and the image install, against the same VM booting the same
installed disk directly; and the image's write throughput in the VM against the host's own `dd`.

    python benchmarks/deploy.py [--repeat 3] [--firmware bios] [--os debian-12] [--json FILE]

Needs what `crowbar lab up` needs plus the OS image (built into the stable cache when missing:
`crowbar os build debian-12`). Everything lives in a temporary lab directory and the lab's own
network namespace; the lab's `down` removes it at the end, also on failure or Ctrl-C.

Each repetition is a fresh lab with one VM and an empty disk:

- deploy: t0 is the VM's power-on (when `Lab.up` returns; the VM is switched on last). The node is
          discovered, allocated (the agent reboots it onto its reserved address) and deployed; t1 is
          the server's `ready` step (the installed system's call home once its sshd answers). The
          install phases come from the node's events: writing (write-image -> verify-image) gives
          the in-VM throughput over the filesystem's bytes.
- direct: the VM is switched off, and the same qemu command line is started again with the NIC's
          boot ROM removed, so the firmware boots the installed disk at once (no PXE, no install);
          t0 is that power-on, t1 the call home's `ready` event of that boot.

The host's limit: `zstd -dc root.img.zst | dd of=FILE bs=1M conv=fsync` (gunzip for an older gzip
image) on this machine, the same
bytes the VM writes. Prints a table per repetition, the medians, the ratio deploy / direct (goal:
at most 2), then JSON lines.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import subprocess
import sys
import tempfile
import time
from datetime import datetime, timezone
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from crowbar import config  # noqa: E402
from crowbar.cli import local  # noqa: E402
from crowbar.lab.lab import Lab  # noqa: E402
from crowbar.procs import stop_pid  # noqa: E402


def machine() -> dict:
    cpu = next((line.split(":", 1)[1].strip() for line in Path("/proc/cpuinfo").read_text().splitlines()
                if line.startswith("model name")), platform.processor())
    return {"date": datetime.now(timezone.utc).isoformat(timespec="seconds"), "nproc": os.cpu_count(), "cpu": cpu,
            "kernel": platform.release(), "loadavg": Path("/proc/loadavg").read_text().split()[:3]}


def _at(event: dict) -> float:
    return datetime.fromisoformat(event["at"]).timestamp()


def events(api, node_id: int) -> list[dict]:
    return api.list_all("/events", object_type="node", object_id=node_id, marker=0)


def host_dd(image: Path, workdir: Path) -> dict:
    target = workdir / "dd.img"
    started = time.monotonic()
    decompress = "gunzip -c" if image.suffix == ".gz" else "zstd -dcq"
    subprocess.run(f"{decompress} {image} | dd of={target} bs=1M conv=fsync status=none", shell=True, check=True)
    seconds = time.monotonic() - started
    size = target.stat().st_size
    target.unlink()
    return {"bytes": size, "seconds": round(seconds, 2), "mb_per_s": round(size / seconds / 1e6, 1)}


def wait_event(api, node_id: int, after_id: int, match, timeout: float) -> float:
    """The time of the node's first event after event `after_id` that `match`es. (By id, not by time:
    the deploy's own call home comes a second or two before the direct boot's power-on.)"""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        for event in events(api, node_id):
            if event["id"] > after_id and match(event):
                return _at(event)
        time.sleep(1)
    raise TimeoutError("no such event within the timeout")


def repetition(os_name: str, firmware: str, timeout: float, say) -> dict:
    workdir = Path(tempfile.mkdtemp(prefix="crowbar-bench-deploy-"))
    lab = Lab(workdir / "lab", say=lambda line: None)
    try:
        lab.up(1, memory=512, disk=4, firmware=firmware)
        t0 = time.time()
        lab.wait_discovered(timeout)
        nodes = lab.deploy_all(os_name, timeout)
        node = nodes["vm1"]
        api = lab.api()
        ready = [s for s in node["install"]["steps"] if s["state"] == "ready"][-1]
        deploy_seconds = datetime.fromisoformat(ready["at"]).timestamp() - t0
        evs = events(api, node["id"])
        phase = {e["message"].split()[2]: _at(e) for e in evs if e["action"] == "install"}
        write = phase.get("verify-image", 0) - phase.get("write-image", 0)
        fs_size = node["install"]["total"]
        say(f"deploy: ready {deploy_seconds:.0f}s after power-on (writing {write:.0f}s)")

        # direct: the same VM, its NIC without a boot ROM: the firmware boots the disk
        vm = lab.state.vms[0]
        stop_pid(lab.vm_pid(vm), str(lab.dir), timeout=20)
        argv = [a.replace(",bootindex=1", ",romfile=") for a in vm.argv()]
        subprocess.run(["ip", "netns", "exec", lab.state.namespace, *argv], check=True, capture_output=True)
        seen = max(e["id"] for e in events(api, node["id"]))
        t0 = time.time()
        local.power_on_vm(vm.name, vm.qmp)
        t1 = wait_event(api, node["id"], seen, lambda e: e["action"] == "boot" and "installed system ready" in e["message"],
                        timeout)
        direct_seconds = t1 - t0
        say(f"direct: ready {direct_seconds:.0f}s after power-on")
        return {"firmware": firmware, "deploy_s": round(deploy_seconds, 1), "direct_s": round(direct_seconds, 1),
                "ratio": round(deploy_seconds / direct_seconds, 2), "write_s": round(write, 1),
                "fs_bytes": fs_size, "vm_write_mb_per_s": round(fs_size / write / 1e6, 1) if write > 0 else None}
    finally:
        try:
            lab.down()
        finally:
            subprocess.run(["rm", "-rf", str(workdir)])


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--repeat", type=int, default=3)
    parser.add_argument("--firmware", default="bios", choices=["bios", "uefi"])
    parser.add_argument("--os", default="debian-12")
    parser.add_argument("--timeout", type=float, default=1800)
    parser.add_argument("--json", type=Path)
    args = parser.parse_args()
    say = lambda line: print(line, file=sys.stderr, flush=True)  # noqa: E731
    store = config.os_image_dir()
    image = local.build_os_image(store, args.os, lambda *a: None)  # cached: answers at once when built
    info = machine()
    say(f"host dd of {image.path.name}...")
    dd = host_dd(image.path, Path(tempfile.gettempdir()))
    runs = []
    for rep in range(1, args.repeat + 1):
        say(f"repetition {rep}/{args.repeat}")
        runs.append(repetition(args.os, args.firmware, args.timeout, say))
    summary = {"machine": info, "os": args.os, "firmware": args.firmware, "image": image.digest[:12],
               "host_dd": dd, "runs": runs,
               "median": {k: statistics.median(r[k] for r in runs) for k in ("deploy_s", "direct_s", "ratio",
                                                                              "write_s", "vm_write_mb_per_s")}}
    print("| run | firmware | deploy (s) | direct (s) | ratio | writing (s) | VM write MB/s |")
    print("|---|---|---|---|---|---|---|")
    for i, r in enumerate(runs, 1):
        print(f"| {i} | {r['firmware']} | {r['deploy_s']} | {r['direct_s']} | {r['ratio']} | {r['write_s']} "
              f"| {r['vm_write_mb_per_s']} |")
    m = summary["median"]
    print(f"| median | | {m['deploy_s']} | {m['direct_s']} | {m['ratio']} | {m['write_s']} | {m['vm_write_mb_per_s']} |")
    print(f"host: decompress | dd of the image to a file: {dd['mb_per_s']} MB/s ({dd['bytes']} bytes in {dd['seconds']} s)")
    print(json.dumps(summary))
    if args.json:
        args.json.write_text(json.dumps(summary, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())

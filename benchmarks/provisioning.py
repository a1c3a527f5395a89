"""Power-on to discovered: a lab VM PXE-booting through the provisioner, against the same VM booting
the same discovery kernel and initramfs directly (`qemu -kernel`).

    python benchmarks/provisioning.py [--repeat 3] [--memory 512] [--timeout 300] [--json FILE]

Needs what `crowbar lab up` needs (root, qemu, dnsmasq, ipxe, a kernel in /boot). Everything lives
in a temporary directory (lab dir, config, data dir) and in the lab's own network namespace; the
lab's own `down` removes it all at the end, also on failure or Ctrl-C.

How it runs: `Lab.up(nodes=1)` creates the namespace, the bridge, the server (`--provision`) and
VM vm1, which boots once as a warm-up (server, page cache, dnsmasq) and is then stopped and its
node deleted. Each repetition then boots vm1's hardware twice, in alternating order (ABBA), each
time with a MAC never seen before (the lab's MAC scheme), so every run is a first discovery:

- pxe:    the lab's qemu command line (paused): SeaBIOS -> qemu's iPXE ROM -> DHCP -> the per-MAC
          iPXE script -> kernel and initrd over HTTP -> the agent posts its inventory;
- direct: the same command line without the network boot, plus `-kernel`/`-initrd` (the image the
          server serves, fetched from GET /boot/discovery/*) and `-append` with the kernel
          arguments of that MAC's iPXE script (GET /boot/<mac>.ipxe, ${netX/mac:hexhyp} filled in).

t0 is the wall clock just before QMP `cont` (power-on); t1 is the server's timestamp of the node's
`discovered` event (GET /api/v2/events?object_type=node), polled every 0.2 s. Both clocks are this
machine's. The VM's serial console is read every 50 ms and milestones (iPXE DHCP done, kernel and
initrd downloaded, Linux started, the agent's DHCP lease, ...) are timestamped, which shows where
the time goes. Between runs the VM is quit and the node deleted.

Prints a markdown table per run, the medians and the overhead ratio (pxe / direct - 1), the median
milestones, then one JSON line per run and a summary JSON line.
"""

from __future__ import annotations

import argparse
import copy
import hashlib
import json
import os
import platform
import re
import shutil
import signal
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from datetime import datetime, timezone
from pathlib import Path

PXE_MARKERS = {
    "firmware": r"SeaBIOS \(version",
    "ipxe": r"iPXE initialising devices",
    "dhcp_start": r"Configuring \(net0",
    "dhcp_done": r"Configuring \(net0[^\n]*?\bok",
    "script": r"\.ipxe\.\.\.[^\n]*?\bok",
    "kernel_dl": r"vmlinuz\.\.\.[^\n]*?\bok",
    "initrd_dl": r"initrd\.img\.\.\.[^\n]*?\bok",
    "linux": r"Linux version",
    "agent_dhcp": r"crowbar-agent: DHCP on",
    "lease": r"udhcpc: lease of",
    "discovered_console": r"discovered as",
}
DIRECT_MARKERS = {k: PXE_MARKERS[k] for k in ("firmware", "linux", "agent_dhcp", "lease", "discovered_console")}
# SeaBIOS's serial copy of the screen is a terminal stream (as in crowbar.lab.cli).
_TERMINAL = re.compile(r"\x1b(\[[0-9;?]*[A-Za-z]|c)|[^\n]\x08|\r")


class ConsoleWatch(threading.Thread):
    """Timestamps (seconds after t0) the first appearance of each marker in a VM's console log."""

    def __init__(self, path: Path, markers: dict[str, str]):
        super().__init__(daemon=True)
        self.path, self.markers = path, {k: re.compile(v) for k, v in markers.items()}
        self.t0 = time.time()
        self.seen: dict[str, float] = {}
        self._halt = threading.Event()
        self._text = ""

    def run(self) -> None:
        pos = 0
        raw = b""
        while not self._halt.is_set():
            try:
                with open(self.path, "rb") as f:
                    f.seek(pos)
                    more = f.read()
            except OSError:
                more = b""
            if more:
                now = time.time()
                pos += len(more)
                raw += more
                self._text = _TERMINAL.sub("", raw.decode(errors="replace")).replace("\x08", "")
                for name, rx in self.markers.items():
                    if name not in self.seen and rx.search(self._text):
                        self.seen[name] = round(now - self.t0, 2)
            self._halt.wait(0.05)

    def stop(self) -> dict[str, float]:
        self._halt.set()
        self.join(2)
        return dict(self.seen)


def machine() -> dict:
    cpu = next((line.split(":", 1)[1].strip() for line in Path("/proc/cpuinfo").read_text().splitlines()
                if line.startswith("model name")), platform.processor())
    try:
        qemu = subprocess.run(["qemu-system-x86_64", "--version"], capture_output=True, text=True).stdout.split("\n")[0]
    except OSError:
        qemu = "?"
    return {"date": datetime.now(timezone.utc).isoformat(timespec="seconds"), "nproc": os.cpu_count(),
            "cpu": cpu, "kernel": platform.release(), "qemu": qemu, "python": platform.python_version(),
            "loadavg": Path("/proc/loadavg").read_text().split()[:3]}


def median(values: list[float]) -> float | None:
    return round(statistics.median(values), 2) if values else None


class Bench:
    def __init__(self, lab, workdir: Path, memory: int, timeout: float, say):
        import httpx

        from crowbar.lab.vm import mac

        self.lab, self.workdir, self.memory, self.timeout, self.say = lab, workdir, memory, timeout, say
        self.api = lab.api()
        self.http = httpx.Client(transport=httpx.HTTPTransport(uds=str(lab.socket)), base_url="http://crowbar",
                                 timeout=60)
        self.vm = lab.state.vms[0]
        self._mac = mac
        self._macs_used = {self.vm.macs[0]}
        self._next = 1
        self.last_event = 0
        self.kernel = self.initrd = None

    # -- helpers ----------------------------------------------------------------------------------
    def new_mac(self) -> str:
        """The next MAC of the lab's scheme (52:54:00:cb:<lab>:<vm*16+nic>) not used yet."""
        while True:
            vm_index, slot = 1 + self._next // 16, self._next % 16
            self._next += 1
            m = self._mac(self.lab.state.lab_byte, vm_index, slot)
            if m not in self._macs_used:
                self._macs_used.add(m)
                return m

    def fetch_image(self) -> dict:
        """The discovery kernel and initrd, as the server serves them to iPXE."""
        out = {}
        for name in ("vmlinuz", "initrd.img"):
            started = time.perf_counter()
            resp = self.http.get(f"/boot/discovery/{name}")
            resp.raise_for_status()
            seconds = time.perf_counter() - started
            path = self.workdir / name
            path.write_bytes(resp.content)
            out[name] = {"bytes": len(resp.content), "sha256": hashlib.sha256(resp.content).hexdigest()[:16],
                         "unix_socket_get_s": round(seconds, 3)}
        self.kernel, self.initrd = self.workdir / "vmlinuz", self.workdir / "initrd.img"
        return out

    def kernel_args(self, mac: str) -> str:
        """The kernel arguments the iPXE script for `mac` passes, with iPXE's settings filled in."""
        script = self.http.get(f"/boot/{mac.replace(':', '-')}.ipxe")
        script.raise_for_status()
        line = next(line for line in script.text.splitlines() if line.startswith("kernel "))
        args = line.split(None, 2)[2]
        return args.replace("${netX/mac:hexhyp}", mac.replace(":", "-"))

    def events_after(self, after: int) -> list[dict]:
        return self.api.list_all("/events", object_type="node", after=after)

    def latest_event_id(self) -> int:
        rows = self.api.get("/events", limit=1)["items"]
        return rows[-1]["id"] if rows else 0

    def argv(self, mac: str, mode: str) -> tuple[list[str], object]:
        vm = copy.deepcopy(self.vm)
        vm.nics[0].mac = mac
        vm.memory_mb = self.memory
        argv = vm.argv()
        if mode == "direct":
            i = argv.index("-boot")
            del argv[i:i + 2]
            argv = [a.replace(",bootindex=1", "") for a in argv]
            argv += ["-kernel", str(self.kernel), "-initrd", str(self.initrd), "-append", self.kernel_args(mac)]
        return argv, vm

    # -- one run ------------------------------------------------------------------------------------
    def run(self, mode: str, label: str) -> dict:
        from crowbar.lab.lab import alive, stop_pid
        from crowbar.power.qemu import Qmp

        mac = self.new_mac()
        argv, vm = self.argv(mac, mode)
        vm.prepare()  # fresh sparse disk, console log, sercon file
        vm.console.write_bytes(b"")
        after = self.latest_event_id()
        done = subprocess.run(["ip", "netns", "exec", self.lab.state.namespace, *argv], stdin=subprocess.DEVNULL,
                              capture_output=True, text=True, timeout=60)
        if done.returncode != 0:
            raise RuntimeError(f"qemu failed ({done.returncode}): {done.stderr.strip()}")
        pid = int(vm.pidfile.read_text().split()[0])
        load = Path("/proc/loadavg").read_text().split()[0]
        result = {"run": label, "mode": mode, "mac": mac, "memory_mb": self.memory, "load1_at_start": float(load)}
        try:
            with Qmp(vm.qmp) as qmp:
                watch = ConsoleWatch(vm.console, PXE_MARKERS if mode == "pxe" else DIRECT_MARKERS)
                t0 = time.time()
                watch.t0 = t0
                watch.start()
                qmp.execute("cont")
            event = None
            deadline = time.monotonic() + self.timeout
            while event is None:
                for e in self.events_after(after):
                    after = max(after, e["id"])
                    if e["action"] == "lifecycle" and e["to"] == "discovered" and mac in (e["message"] or ""):
                        event = e
                        break
                if event:
                    break
                if not alive(pid):
                    raise RuntimeError(f"{mode} VM {mac} stopped before being discovered")
                if time.monotonic() > deadline:
                    raise RuntimeError(f"{mode} VM {mac} not discovered within {self.timeout:g}s "
                                       f"(console: {watch._text[-500:]!r})")
                time.sleep(0.2)
            polled = time.time() - t0
            at = datetime.fromisoformat(event["at"])
            if at.tzinfo is None:
                at = at.replace(tzinfo=timezone.utc)
            time.sleep(0.3)  # let the console catch the agent's "discovered as"
            milestones = watch.stop()
            result.update(seconds=round(at.timestamp() - t0, 2), polled_s=round(polled, 2), node_id=event["object_id"],
                          milestones=milestones)
            if mode == "pxe" and "kernel_dl" in milestones and "script" in milestones:
                result["kernel_download_s"] = round(milestones["kernel_dl"] - milestones["script"], 2)
                if "initrd_dl" in milestones:
                    result["initrd_download_s"] = round(milestones["initrd_dl"] - milestones["kernel_dl"], 2)
            shutil.copy(vm.console, self.workdir / f"console-{label}-{mode}.log")
        finally:
            self.stop_vm(vm, pid, stop_pid, Qmp)
        self.api.delete(f"/nodes/{result['node_id']}")
        return result

    def stop_vm(self, vm, pid: int, stop_pid, Qmp) -> None:
        try:
            with Qmp(vm.qmp, timeout=5) as qmp:
                qmp.execute("quit")
        except Exception:
            pass
        stop_pid(pid, vm.dir, timeout=5)

    def warm_up(self) -> float:
        """vm1 as `Lab.up` powered it on: wait for its discovery, then stop it and delete its node."""
        from crowbar.lab.lab import stop_pid
        from crowbar.power.qemu import Qmp

        started = time.monotonic()
        found = self.lab.wait_discovered(self.timeout)
        seconds = time.monotonic() - started
        node = found[self.vm.name]
        self.stop_vm(self.vm, self.lab.vm_pid(self.vm), stop_pid, Qmp)
        self.api.delete(f"/nodes/{node['id']}")
        return seconds


def table(runs: list[dict]) -> str:
    lines = ["| run | mode | MAC | power-on to discovered (s) | seen by poll (s) | kernel+initrd download (s) | load1 |",
             "|---|---|---|---:|---:|---:|---:|"]
    for r in runs:
        dl = (f"{r['kernel_download_s'] + r.get('initrd_download_s', 0):.2f}"
              if "kernel_download_s" in r else "")
        lines.append(f"| {r['run']} | {r['mode']} | {r['mac']} | {r['seconds']:.2f} | {r['polled_s']:.2f} | {dl} | "
                     f"{r['load1_at_start']:.2f} |")
    return "\n".join(lines)


def milestone_table(runs: list[dict]) -> str:
    names = list(PXE_MARKERS)
    lines = ["| milestone (s after power-on, median) | pxe | direct |", "|---|---:|---:|"]
    for name in names:
        cells = []
        for mode in ("pxe", "direct"):
            values = [r["milestones"][name] for r in runs if r["mode"] == mode and name in r["milestones"]]
            cells.append(f"{median(values):.2f}" if values else "")
        lines.append(f"| {name} | {cells[0]} | {cells[1]} |")
    cells = [median([r["seconds"] for r in runs if r["mode"] == mode]) for mode in ("pxe", "direct")]
    lines.append("| discovered (server event) | " + " | ".join(f"{c:.2f}" if c is not None else "" for c in cells) + " |")
    return "\n".join(lines)


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--repeat", type=int, default=3, help="repetitions (each: one PXE and one direct boot)")
    ap.add_argument("--memory", type=int, default=512, help="MB of RAM per VM")
    ap.add_argument("--timeout", type=float, default=300, help="seconds one boot may take to be discovered")
    ap.add_argument("--json", type=Path, help="also write the JSON lines to this file")
    ap.add_argument("--keep", type=Path, help="copy the consoles and the server/dnsmasq logs into this dir")
    args = ap.parse_args()
    if not 1 <= args.repeat <= 100:
        ap.error("--repeat must be between 1 and 100")

    tmp = Path(tempfile.mkdtemp(prefix="crowbar-bench-provisioning-"))
    for key in [k for k in os.environ if k.startswith("CROWBAR_")]:
        del os.environ[key]
    os.environ.update(CROWBAR_LAB_DIR=str(tmp / "lab"), XDG_CONFIG_HOME=str(tmp / "config"),
                      CROWBAR_DATA_DIR=str(tmp / "data"))

    def on_term(signum, frame):
        raise KeyboardInterrupt(f"signal {signum}")

    signal.signal(signal.SIGTERM, on_term)
    from crowbar.lab.lab import Lab

    def say(line: str) -> None:
        print(f"# {line}", file=sys.stderr, flush=True)

    info = machine()
    say(f"machine: {info}")
    lab = Lab(tmp / "lab", say=lambda line: say(f"lab: {line}"))
    runs: list[dict] = []
    workdir = tmp / "work"
    workdir.mkdir()
    try:
        started = time.monotonic()
        lab.up(1, memory=args.memory)
        say(f"lab up in {time.monotonic() - started:.1f}s (namespace {lab.state.namespace})")
        bench = Bench(lab, workdir, args.memory, args.timeout, say)
        image = bench.fetch_image()
        say(f"discovery image: {image}")
        warm = bench.warm_up()
        say(f"warm-up: vm1 discovered {warm:.1f}s after `lab up` returned (not counted)")
        for i in range(1, args.repeat + 1):
            order = ("pxe", "direct") if i % 2 else ("direct", "pxe")
            for mode in order:
                r = bench.run(mode, str(i))
                runs.append(r)
                say(f"run {i} {mode}: {r['seconds']:.2f}s to discovered; milestones {r['milestones']}")
        if args.keep:
            args.keep.mkdir(parents=True, exist_ok=True)
            for path in workdir.glob("console-*.log"):
                shutil.copy(path, args.keep / path.name)
            for path in (tmp / "lab" / "server.log", tmp / "lab" / "server" / "provisioner" / "dnsmasq.log"):
                if path.exists():
                    shutil.copy(path, args.keep / path.name)
    finally:
        try:
            for line in lab.down():
                say(f"down: {line}")
        finally:
            shutil.rmtree(tmp, ignore_errors=True)

    pxe = median([r["seconds"] for r in runs if r["mode"] == "pxe"])
    direct = median([r["seconds"] for r in runs if r["mode"] == "direct"])
    overhead = round(pxe / direct - 1, 3) if pxe and direct else None
    paired = []
    for i in range(1, args.repeat + 1):
        by_mode = {r["mode"]: r["seconds"] for r in runs if r["run"] == str(i)}
        if by_mode.get("pxe") and by_mode.get("direct"):
            paired.append(round(by_mode["pxe"] / by_mode["direct"] - 1, 3))
    dl = [r["kernel_download_s"] + r.get("initrd_download_s", 0) for r in runs if "kernel_download_s" in r]
    size = image["vmlinuz"]["bytes"] + image["initrd.img"]["bytes"]
    summary = {"summary": True, **info, "repeat": args.repeat, "memory_mb": args.memory,
               "image_bytes": size, "pxe_median_s": pxe, "direct_median_s": direct, "overhead": overhead, "paired_overheads": paired,
               "under_20_percent": overhead is not None and overhead < 0.20,
               "pxe_download_median_s": median(dl),
               "pxe_download_MBps": round(size / 1e6 / median(dl), 2) if dl and median(dl) else None}
    print(f"\nPower-on to discovered, {args.memory} MB VM, 1 vCPU, TCG; {info['nproc']} cores "
          f"({info['cpu']}), {info['date']}\n")
    print(table(runs))
    print(f"\nmedian: pxe {pxe:.2f}s, direct {direct:.2f}s, overhead {overhead:+.1%} "
          f"({'under' if summary['under_20_percent'] else 'NOT under'} 20%); per repetition (pxe/direct - 1): "
          f"{', '.join(f'{p:+.1%}' for p in paired)}\n")
    print(milestone_table(runs))
    print()
    lines = [json.dumps(r) for r in runs] + [json.dumps(summary)]
    print("\n".join(lines))
    if args.json:
        args.json.write_text("\n".join(lines) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())

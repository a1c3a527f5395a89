"""The virtual lab end to end, through the CLI only: two qemu VMs (TCG) PXE-boot from a real
`crowbar server` in the lab's namespace, are discovered with inventories that match how they were
started, one is allocated and reboots onto its reserved admin address, a script role runs on it
through its discovery agent and reports what only the VM can know, and `lab down` leaves nothing.

Every path (lab dir, config, data dir) is a tmp dir; the teardown always takes the lab down, and
falls back to the lab's own cleanup in-process should the CLI fail.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
import sys
import time
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]
CLI_TIMEOUT = 300.0
MEMORY_MB = (384, 512)
NICS = (1, 2)
DISK_GB = (2, 3)


def _crowbar() -> str:
    for candidate in (Path(sys.executable).with_name("crowbar"), REPO / ".venv" / "bin" / "crowbar"):
        if candidate.is_file() and os.access(candidate, os.X_OK):
            return str(candidate)
    return shutil.which("crowbar") or "crowbar"


def _missing() -> str | None:
    for tool, package in (("qemu-system-x86_64", "qemu-system-x86"), ("dnsmasq", "dnsmasq-base"), ("ip", "iproute2")):
        if not shutil.which(tool):
            return f"{tool} is not installed (Debian package {package})"
    from crowbar.provisioner.image import BUSYBOX, ImageError, default_kernel_version

    try:
        default_kernel_version()
    except ImageError as exc:
        return f"no kernel in /boot: {exc.message}"
    if not BUSYBOX.is_file():
        return f"{BUSYBOX} is missing (Debian package busybox-static)"
    if os.geteuid() != 0:
        return "needs root (network namespaces, bridges, taps)"
    return None


pytestmark = [pytest.mark.e2e, pytest.mark.skipif(_missing() is not None, reason=str(_missing()))]


class Cli:
    def __init__(self, tmp_path: Path):
        self.lab_dir = tmp_path / "lab"
        self.env = {k: v for k, v in os.environ.items() if not k.startswith("CROWBAR_")}
        self.env.update(CROWBAR_LAB_DIR=str(self.lab_dir), XDG_CONFIG_HOME=str(tmp_path / "config"),
                        CROWBAR_DATA_DIR=str(tmp_path / "data"), NO_COLOR="1", TERM="dumb", COLUMNS="200")
        self.log: list[str] = []

    def __call__(self, *args: str, ok: bool = True, timeout: float = CLI_TIMEOUT) -> subprocess.CompletedProcess:
        started = time.monotonic()
        done = subprocess.run([_crowbar(), *args], env=self.env, capture_output=True, text=True, timeout=timeout)
        self.log.append(f"$ crowbar {' '.join(args)}  [exit {done.returncode}, {time.monotonic() - started:.1f}s]\n"
                        f"{done.stdout[-3000:]}{done.stderr[-3000:]}")
        if ok:
            assert done.returncode == 0, f"{self.log[-1]}{self.context()}"
        return done

    def json(self, *args: str):
        return json.loads(self(*args, "-o", "json").stdout)

    def context(self) -> str:
        """The lab's logs, for failure messages. CI shows only the head and the tail of a failure, so
        the tail is what tells most: the power requests, the boot scripts, and last each VM's console."""
        parts = []
        for name, path in [("server", self.lab_dir / "server.log"),
                           ("dnsmasq", self.lab_dir / "server" / "provisioner" / "dnsmasq.log"),
                           # the lab's BMCs (`lab up --bmc`): ipmi_sim per VM, the Redfish emulator
                           *((f"ipmi_sim {p.parent.parent.name}", p)
                             for p in sorted(self.lab_dir.glob("vms/*/bmc/ipmi_sim.log"))),
                           ("redfish emulator", self.lab_dir / "redfish" / "emulator.log"),
                           # online mode: apt-cacher-ng's errors and transfers, and the uplink's tinyproxy
                           *((f"apt proxy {p.name}", p) for p in sorted(self.lab_dir.glob("**/apt-cacher.err"))),
                           *((f"apt proxy {p.name}", p) for p in sorted(self.lab_dir.glob("**/apt-cacher.log"))),
                           ("uplink tinyproxy", self.lab_dir / "uplink" / "tinyproxy.log"),
                           ("uplink relays (socat)", self.lab_dir / "uplink" / "relays.log")]:
            if path.exists():
                lines = path.read_text(errors="replace").splitlines()[-25:]
                parts.append(f"\n--- {name} ({path}) ---\n" + "\n".join(lines))
        # what the server did with power (a release or reinstall waits on a power cycle), a line each
        try:
            done = subprocess.run([_crowbar(), "nodes", "power-requests", "-o", "json"], env=self.env,
                                  capture_output=True, text=True, timeout=30)
            rows = json.loads(done.stdout) if done.returncode == 0 else []
            parts.append("\n--- power requests ---\n" + ("\n".join(
                f"{r.get('created_at', '')[11:19]} {r.get('node')} {r.get('action')} {r.get('state')}: "
                f"{r.get('result')}" for r in rows[-10:]) or done.stderr[-500:]))
        except (OSError, subprocess.SubprocessError, ValueError) as exc:
            parts.append(f"\n--- power requests: not read ({exc}) ---")
        # every boot script the server handed out, and its netboot retries (the tail above is short)
        log = self.lab_dir / "server.log"
        if log.exists():
            boots = [line for line in log.read_text(errors="replace").splitlines()
                     if "boot script for" in line or "netboot-retry" in line]
            parts.append("\n--- boot scripts served ---\n" + "\n".join(boots[-12:]))
        # each VM's starts (crowbar.lab.vmrun: a line per cold start after a reset, qemu's errors)
        for path in sorted(self.lab_dir.glob("vms/*/qemu.log")):
            lines = [line for line in path.read_text(errors="replace").splitlines()
                     if "vmrun:" in line or "qemu-system" in line and "info: QEMU waiting" not in line
                     and "fw_cfg item names" not in line][-6:]
            parts.append(f"\n--- qemu {path.parent.name} ---\n" + "\n".join(line[:160] for line in lines))
        # last: what each VM printed (firmware, iPXE, kernel, agent), its lines cut short
        for path in sorted(self.lab_dir.glob("vms/*/console.log")):
            text = re.sub(r"\x1b\[[0-9;?]*[A-Za-z]|\r", "", path.read_text(errors="replace"))
            lines = [line[:160] for line in text.splitlines() if line.strip()][-12:]
            parts.append(f"\n--- console {path.parent.name} ---\n" + "\n".join(lines))
        return "".join(parts)


def _alive(pid: int) -> bool:
    try:
        return Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0] not in "ZX"
    except (OSError, IndexError):
        return False


def _processes_mentioning(text: str) -> list[str]:
    found = []
    for proc in Path("/proc").iterdir():
        if proc.name.isdigit() and _alive(int(proc.name)):
            try:
                cmdline = (proc / "cmdline").read_bytes().replace(b"\0", b" ").decode(errors="replace")
            except OSError:
                continue
            if text in cmdline:
                found.append(f"{proc.name}: {cmdline[:200]}")
    return found


def lab_down(cli: Cli) -> None:
    """Always take the lab down: through the CLI, and in-process should that fail."""
    done = subprocess.run([_crowbar(), "lab", "down"], env=cli.env, capture_output=True, text=True, timeout=180)
    if done.returncode != 0 or (cli.lab_dir / "lab.json").exists():
        from crowbar.lab.lab import Lab

        Lab(cli.lab_dir).down()


def cli_with_os(tmp_path: Path, os_name: str, progress=lambda *a: None) -> Cli:
    """A Cli whose image store holds this tree's image of `os_name` (built when the stable cache
    lacks it, else reused: cached by content)."""
    from crowbar import config
    from crowbar.cli import local

    image = local.build_os_image(config.os_image_dir(), os_name, progress)
    store = tmp_path / "cache" / "os"
    (store / os_name).mkdir(parents=True)
    (store / os_name / image.digest).symlink_to(image.path.parent)
    cli = Cli(tmp_path)
    cli.env["CROWBAR_CACHE_DIR"] = str(tmp_path / "cache")
    return cli


@pytest.fixture
def cli(tmp_path):
    cli = Cli(tmp_path)
    yield cli
    lab_down(cli)


def test_lab_discovers_allocates_and_runs_a_role_on_the_vm(cli):
    timings = {}
    started = time.monotonic()
    cli("lab", "up", "--nodes", "2", "--memory", ",".join(map(str, MEMORY_MB)), "--nics", ",".join(map(str, NICS)),
        "--disk", ",".join(map(str, DISK_GB)), "--wait", "--timeout", "300")
    timings["lab up to all discovered"] = time.monotonic() - started

    status = cli.json("lab", "status")
    namespace = status["namespace"]
    assert status["running"] and namespace.startswith("cblab-") and status["server"]["alive"]
    ns_pids = [int(p) for p in subprocess.run(["ip", "netns", "pids", namespace], capture_output=True,
                                              text=True).stdout.split()]
    recorded = {status["server"]["pid"], *(vm["pid"] for vm in status["vms"]), *ns_pids}
    dnsmasq = [pid for pid in ns_pids if "dnsmasq" in Path(f"/proc/{pid}/cmdline").read_bytes().decode(errors="replace")]
    assert len(dnsmasq) == 1, f"expected one dnsmasq in {namespace}, found pids {ns_pids}"
    assert namespace in subprocess.run(["ip", "netns", "list"], capture_output=True, text=True).stdout
    vms = {vm["name"]: vm for vm in status["vms"]}
    assert set(vms) == {"vm1", "vm2"}

    # The CLI's default endpoint is the lab's server: no CROWBAR_ENDPOINT anywhere.
    nodes = {n["name"]: n for n in cli.json("nodes", "list")}
    from crowbar.provisioner.image import default_kernel_version

    kernel = default_kernel_version()
    for i, name in enumerate(("vm1", "vm2")):
        vm = vms[name]
        assert vm["alive"] and vm["node"] in nodes, f"{name} has no node: {vm}{cli.context()}"
        assert nodes[vm["node"]]["state"] == "discovered"
        assert len(vm["macs"]) == NICS[i]
        node = cli.json("nodes", "show", vm["node"])
        inv = node["discovery"]
        assert node["boot_mac"] == vm["macs"][0] == inv["boot_mac"]
        assert node["name"] == f"d{vm['macs'][0].replace(':', '-')}.crowbar.local"
        assert sorted(nic["mac"] for nic in inv["nics"]) == sorted(vm["macs"]), inv["nics"]
        assert len(inv["nics"]) == NICS[i]
        assert inv["cpu"]["count"] == vm["cpus"] == 1
        installed, wanted = inv["memory"]["installed_bytes"], MEMORY_MB[i] << 20
        assert abs(installed - wanted) <= 0.05 * wanted, f"{name}: {installed} bytes of RAM, started with {wanted}"
        disks = {d["name"]: d for d in inv["disks"]}
        assert list(disks) == ["vda"] and disks["vda"]["size_bytes"] == DISK_GB[i] << 30, inv["disks"]
        assert inv["kernel"] == kernel and inv["firmware"] == "bios"
        # `lab up --wait` handed the node to the qemu power driver with the VM's QMP socket.
        assert node["power_driver"] == "qemu"
        power = cli.json("nodes", "power", vm["node"], "status", "--wait")
        assert (power["state"], power["result"]) == ("succeeded", "on")
    assert "discovered as" in cli("lab", "console", "vm1").stdout

    # Allocate vm1: it reboots and gets its reserved admin address.
    node1 = vms["vm1"]["node"]
    started = time.monotonic()
    allocated = cli.json("nodes", "allocate", node1)
    assert allocated["state"] == "allocated"
    allocations = {a["node"]: a["address"] for a in cli.json("network", "allocations", "admin")}
    address = allocations[node1]
    assert address == allocated["admin_address"]

    # A script role on the VM itself, through its discovery agent, after the reboot.
    cli("deployments", "create", "lab")
    cli("deployments", "bind", "lab", "lab-facts", node1)
    cli("deployments", "commit", "lab")
    done = cli("anneal", "--wait", "--timeout", "240", ok=False)
    timings["allocate, reboot and anneal lab-facts"] = time.monotonic() - started
    noderoles = cli.json("noderoles", "list", "--deployment", "lab", "--role", "lab-facts")
    assert len(noderoles) == 1
    logs = cli("noderoles", "log", str(noderoles[0]["id"]), ok=False).stdout
    assert done.returncode == 0, f"{cli.log[-3]}\n{logs}{cli.context()}"
    wall = cli.json("noderoles", "show", str(noderoles[0]["id"]))["wall"]["lab"]
    assert wall["kernel"] == inv_kernel(cli, node1) == kernel
    assert wall["mac"] == vms["vm1"]["macs"][0]
    assert f"{address}/24" in wall["ipv4"], f"the VM has {wall['ipv4']}, its allocation is {address}\n{logs}"
    by_mac = {nic["mac"]: nic for nic in wall["interfaces"]}
    assert by_mac[vms["vm1"]["macs"][0]]["ipv4"] == [f"{address}/24"]
    assert cli.json("lab", "status")["vms"][0]["admin_address"] == address

    # Down: no namespace, tap, qemu or dnsmasq left.
    started = time.monotonic()
    cli("lab", "down")
    timings["lab down"] = time.monotonic() - started
    assert namespace not in subprocess.run(["ip", "netns", "list"], capture_output=True, text=True).stdout
    assert not Path("/run/netns", namespace).exists()
    assert not [pid for pid in recorded if _alive(pid)], f"still running: {[p for p in recorded if _alive(p)]}"
    assert not _processes_mentioning(str(cli.lab_dir)), _processes_mentioning(str(cli.lab_dir))
    host_links = subprocess.run(["ip", "-o", "link"], capture_output=True, text=True).stdout
    for vm in vms.values():
        for tap in vm["taps"]:
            assert f" {tap}:" not in host_links
    assert not (cli.lab_dir / "lab.json").exists()
    assert cli.json("lab", "status")["namespace"] is None
    assert "nothing to do" in cli("lab", "down").stdout  # idempotent
    print("\n" + "\n".join(f"{what}: {seconds:.0f}s" for what, seconds in timings.items()))


def inv_kernel(cli: Cli, node: str) -> str:
    return cli.json("nodes", "show", node)["discovery"]["kernel"]

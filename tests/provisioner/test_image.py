"""The discovery image: the cpio writer, module resolution, the content cache, and a real boot in
qemu (TCG) whose agent posts its inventory and runs a job against a server in a namespace."""

from __future__ import annotations

import gzip
import io
import json
import lzma
import os
import shutil
import stat
import subprocess
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import pytest

from crowbar.provisioner import image
from crowbar.provisioner.image import CpioEntry, ImageError, resolve_modules, write_cpio
from labnet import NetNS

# --- cpio ---


def read_cpio(data: bytes) -> list[dict]:
    """An independent newc reader: every member with its header fields, up to the trailer."""
    members, pos = [], 0
    names = ("ino", "mode", "uid", "gid", "nlink", "mtime", "filesize", "devmajor", "devminor",
             "rdevmajor", "rdevminor", "namesize", "check")
    while True:
        assert data[pos:pos + 6] == b"070701", f"bad magic at {pos}"
        fields = {k: int(data[pos + 6 + 8 * i:pos + 14 + 8 * i], 16) for i, k in enumerate(names)}
        name_start = pos + 110
        name = data[name_start:name_start + fields["namesize"] - 1].decode()
        assert data[name_start + fields["namesize"] - 1] == 0
        data_start = (name_start + fields["namesize"] + 3) & ~3
        body = data[data_start:data_start + fields["filesize"]]
        pos = (data_start + fields["filesize"] + 3) & ~3
        if name == "TRAILER!!!":
            assert pos == len(data)
            return members
        members.append({"name": name, "data": body, **fields})


def test_cpio_round_trip():
    entries = [
        CpioEntry.directory("bin"),
        CpioEntry.file("bin/busybox", b"\x7fELF" + bytes(range(256)) * 3, 0o755),
        CpioEntry.symlink("bin/sh", "/bin/busybox"),
        CpioEntry.char_device("dev/console", 5, 1),
        CpioEntry.file("a", b""),
        CpioEntry.file("ab", b"x"),
        CpioEntry.file("abc", b"xy"),
        CpioEntry.file("abcd", b"xyz"),
    ]
    out = io.BytesIO()
    write_cpio(entries, out)
    assert len(out.getvalue()) % 4 == 0
    members = read_cpio(out.getvalue())
    assert [m["name"] for m in members] == [e.name for e in entries]
    by_name = {m["name"]: m for m in members}
    for entry in entries:
        member = by_name[entry.name]
        assert member["mode"] == entry.mode
        assert member["data"] == entry.data
        assert (member["uid"], member["gid"], member["mtime"]) == (0, 0, 0)
    assert stat.S_ISDIR(by_name["bin"]["mode"]) and by_name["bin"]["nlink"] == 2
    assert stat.S_ISLNK(by_name["bin/sh"]["mode"]) and by_name["bin/sh"]["data"] == b"/bin/busybox"
    console = by_name["dev/console"]
    assert stat.S_ISCHR(console["mode"]) and (console["rdevmajor"], console["rdevminor"]) == (5, 1)
    assert len({m["ino"] for m in members}) == len(members)


def test_cpio_is_reproducible():
    def archive() -> bytes:
        out = io.BytesIO()
        write_cpio([CpioEntry.file("init", b"#!/bin/sh\n", 0o755)], out)
        return out.getvalue()
    assert archive() == archive()


# --- modules.dep ---

MODULES_DEP = """\
kernel/drivers/net/virtio_net.ko.xz: kernel/drivers/net/net_failover.ko.xz kernel/net/core/failover.ko.xz kernel/drivers/virtio/virtio.ko.xz kernel/drivers/virtio/virtio_ring.ko.xz
kernel/drivers/net/net_failover.ko.xz: kernel/net/core/failover.ko.xz
kernel/net/core/failover.ko.xz:
kernel/drivers/virtio/virtio.ko.xz: kernel/drivers/virtio/virtio_ring.ko.xz
kernel/drivers/virtio/virtio_ring.ko.xz:
kernel/drivers/block/virtio_blk.ko.xz: kernel/drivers/virtio/virtio.ko.xz kernel/drivers/virtio/virtio_ring.ko.xz
kernel/net/8021q/8021q.ko.xz: kernel/net/802/garp.ko.xz kernel/net/802/stp.ko.xz kernel/net/llc/llc.ko.xz
kernel/net/802/garp.ko.xz: kernel/net/802/stp.ko.xz kernel/net/llc/llc.ko.xz
kernel/net/802/stp.ko.xz: kernel/net/llc/llc.ko.xz
kernel/net/llc/llc.ko.xz:
kernel/drivers/scsi/scsi-mod.ko.zst:
"""


def test_resolve_orders_dependencies_first():
    order = resolve_modules(["virtio_net", "virtio_blk", "8021q"], MODULES_DEP)
    assert len(order) == len(set(order)) == 10
    deps = {line.split(":")[0]: line.split(":")[1].split() for line in MODULES_DEP.splitlines()}
    for i, path in enumerate(order):
        assert set(deps[path]) <= set(order[:i]), f"{path} loaded before its dependencies"
    assert order[-1] == "kernel/net/8021q/8021q.ko.xz"


def test_resolve_skips_builtins_and_matches_dashes():
    assert resolve_modules(["scsi_mod", "af_packet"], MODULES_DEP, "kernel/net/packet/af_packet.ko\n") == [
        "kernel/drivers/scsi/scsi-mod.ko.zst"]
    assert resolve_modules(["virtio_ring"], MODULES_DEP, "kernel/drivers/virtio/virtio-ring.ko\n") == []


def test_resolve_refuses_unknown_modules_and_cycles():
    with pytest.raises(ImageError, match="nosuch"):
        resolve_modules(["nosuch"], MODULES_DEP)
    with pytest.raises(ImageError, match="cycle"):
        resolve_modules(["a"], "a.ko: b.ko\nb.ko: a.ko\n")


def test_compressed_modules_are_decompressed(tmp_path):
    elf = b"\x7fELF module"
    (tmp_path / "x.ko.xz").write_bytes(lzma.compress(elf, format=lzma.FORMAT_XZ))
    (tmp_path / "y.ko.gz").write_bytes(gzip.compress(elf))
    (tmp_path / "z.ko").write_bytes(elf)
    for name in ("x.ko.xz", "y.ko.gz", "z.ko"):
        assert image._module_bytes(tmp_path / name) == elf
    if shutil.which("zstd"):
        subprocess.run(["zstd", "-q", str(tmp_path / "z.ko"), "-o", str(tmp_path / "w.ko.zst")], check=True)
        assert image._module_bytes(tmp_path / "w.ko.zst") == elf


# --- the real image ---

def _installed() -> str | None:
    """Why the real image cannot be built here, or None."""
    if not image.BUSYBOX.is_file():
        return "busybox-static is not installed"
    try:
        image.default_kernel_version()
    except ImageError as error:
        return error.message
    return None


needs_image = pytest.mark.skipif(_installed() is not None, reason=str(_installed()))


@pytest.fixture(scope="session")
def image_cache(tmp_path_factory) -> Path:
    return tmp_path_factory.mktemp("images")


@pytest.fixture(scope="session")
def discovery_image(image_cache) -> image.DiscoveryImage:
    started = time.monotonic()
    built = image.build_discovery_image(image_cache)
    print(f"discovery image built in {time.monotonic() - started:.1f} s")
    return built


@needs_image
def test_build_contents(discovery_image):
    version = image.default_kernel_version()
    assert discovery_image.kernel.read_bytes() == (image.BOOT_DIR / f"vmlinuz-{version}").read_bytes()
    members = read_cpio(gzip.decompress(discovery_image.initrd.read_bytes()))
    by_name = {m["name"]: m for m in members}
    names = [m["name"] for m in members]
    for i, name in enumerate(names):
        parent = os.path.dirname(name)
        assert not parent or parent in names[:i], f"{name} comes before its directory"
    assert by_name["init"]["mode"] == stat.S_IFREG | 0o755
    assert by_name["bin/busybox"]["data"] == image.BUSYBOX.read_bytes()
    assert by_name["bin/sh"]["data"] == b"/bin/busybox"
    assert by_name["sbin/udhcpc"]["data"] == b"/bin/busybox"
    assert (by_name["dev/console"]["rdevmajor"], by_name["dev/console"]["rdevminor"]) == (5, 1)
    order = by_name["etc/crowbar/modules"]["data"].decode().split()
    loaded = {image.module_name(path) for path in order}
    assert {"virtio_net", "virtio_pci", "e1000", "virtio_blk", "ahci", "sd_mod", "8021q",
            "ipmi_msghandler", "ipmi_si", "ipmi_devintf"} <= loaded
    assert order.index(next(p for p in order if p.endswith("/ipmi_msghandler.ko"))) < \
        order.index(next(p for p in order if p.endswith("/ipmi_si.ko")))
    # ipmitool with every library it links, at the paths its loader looks for them
    assert by_name["usr/sbin/ipmitool"]["data"] == Path("/usr/bin/ipmitool").read_bytes()
    for library in image.tool_files({"ipmitool": image.DISCOVERY_TOOLS["ipmitool"]}):
        assert library in by_name, f"{library} (ipmitool needs it) is not in the image"
    registry = by_name["usr/share/misc/enterprise-numbers.txt"]["data"].decode()
    if image.IANA_REGISTRY.is_file():
        assert "674\n  Dell Inc.\n" in registry and "10876\n  Super Micro Computer Inc.\n" in registry
        assert len(registry) < 4096
    for path in order:
        assert path.startswith(f"/lib/modules/{version}/") and path.endswith(".ko")
        assert by_name[path[1:]]["data"][:4] == b"\x7fELF"


@needs_image
def test_second_build_comes_from_the_cache(discovery_image, image_cache):
    before = discovery_image.initrd.stat().st_mtime_ns
    steps = []
    again = image.build_discovery_image(image_cache, progress=lambda step, done, total: steps.append(step))
    assert again == discovery_image
    assert again.initrd.stat().st_mtime_ns == before
    assert "compressing" not in steps and steps[-1] == "cached"
    assert json.loads((image_cache / again.digest / "manifest.json").read_text())["digest"] == again.digest


@needs_image
def test_digest_follows_the_inputs(image_cache, monkeypatch, discovery_image):
    monkeypatch.setattr(image, "initramfs_files", lambda: {"init": b"#!/bin/sh\necho changed\n"})
    changed = image.build_discovery_image(image_cache)
    assert changed.digest != discovery_image.digest
    init = {m["name"]: m for m in read_cpio(gzip.decompress(changed.initrd.read_bytes()))}["init"]
    assert init["data"] == b"#!/bin/sh\necho changed\n"


# --- booting it: the agent against a server that speaks the contract ---

TOKENS = ("revoked-before-first-use", "t0k3n-for/the+agent=")
NONCE = "Nonce-of_this-boot-0123456789abcdef"  # what a known machine's boot script puts on its kernel line
JOB_SCRIPT = (
    "echo \"kernel=$(uname -r)\"\n"
    "echo \"mac=$(cat /sys/class/net/eth0/address)\"\n"
    "printf 'quote=\" backslash=\\\\ tab=\\t unicode=\u00e9\u20ac\\n'\n"
    "exit 3\n"
)


class ContractServer:
    """The server side of crowbar.agent's contract, recording what the agent sends. The first
    token is refused (401), as if the node had been deleted, so the agent must discover itself
    again; the second gets wait, then a job, then poweroff."""

    def __init__(self, sock):
        self.inventory: dict | None = None
        self.inventory_at: float | None = None
        self.discoveries = 0
        self.nonces: list[str | None] = []  # the X-Crowbar-Nonce of each discovery post
        self.token: str | None = None  # the one the server accepts
        self.result: dict | None = None
        self.actions = [{"action": "wait", "seconds": 1},
                        {"action": "run", "job": "job-1", "script": JOB_SCRIPT, "timeout": 60}]
        self.requests: list[str] = []
        server = self

        class Handler(BaseHTTPRequestHandler):
            def log_message(self, *args):
                pass

            def _json(self, code: int, body: dict) -> None:
                data = json.dumps(body).encode()
                self.send_response(code)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(data)))
                self.end_headers()
                self.wfile.write(data)

            def _body(self) -> dict:
                raw = self.rfile.read(int(self.headers["Content-Length"]))
                return json.loads(raw.decode("utf-8", errors="replace"))

            def _authorized(self) -> bool:
                expected = f"Bearer {server.token}"
                return server.token is not None and self.headers.get("Authorization") == expected

            def do_POST(self):
                server.requests.append(f"POST {self.path}")
                if self.path == "/api/v2/discovery":
                    server.inventory = self._body()
                    server.inventory_at = server.inventory_at or time.monotonic()
                    server.discoveries += 1
                    server.nonces.append(self.headers.get("X-Crowbar-Nonce"))
                    mac = server.inventory["boot_mac"].replace(":", "-")
                    token = TOKENS[min(server.discoveries, len(TOKENS)) - 1]
                    server.token = token if server.discoveries > 1 else None
                    return self._json(200, {"node": f"d{mac}.lab.test", "token": token})
                if not self._authorized():
                    return self._json(401, {"error": "unauthorized"})
                if self.path == "/api/v2/agent/jobs/job-1":
                    server.result = self._body()
                    return self._json(200, {})
                return self._json(404, {})

            def do_GET(self):
                server.requests.append(f"GET {self.path}")
                if not self._authorized():
                    return self._json(401, {"error": "unauthorized"})
                if self.path != "/api/v2/agent/next":
                    return self._json(404, {})
                if server.actions:
                    return self._json(200, server.actions.pop(0))
                return self._json(200, {"action": "poweroff"} if server.result else {"action": "wait"})

        self.httpd = ThreadingHTTPServer(sock.getsockname()[:2], Handler, bind_and_activate=False)
        self.httpd.socket.close()
        self.httpd.socket = sock
        self.thread = threading.Thread(target=self.httpd.serve_forever, daemon=True)
        self.thread.start()

    def close(self) -> None:
        self.httpd.shutdown()
        self.httpd.server_close()


def _vm_missing() -> str | None:
    for tool in ("qemu-system-x86_64", "dnsmasq", "ip"):
        if not shutil.which(tool):
            return f"{tool} is not installed (Debian: qemu-system-x86, dnsmasq, iproute2)"
    if os.geteuid() != 0:
        return "needs root for network namespaces and taps"
    return _installed()


ADMIN = "10.77.0.1"
MACS = ("52:54:00:c0:ff:01", "52:54:00:c0:ff:02")
DISK_BYTES = (1 << 30) + (1 << 20)  # 1 GiB + 1 MiB: an odd size that cannot pass by accident
SATA_BYTES = 64 << 20
MEMORY_MB = 512
SERIAL = 'SN-"7"\\x'  # JSON escaping end to end: a quote and a backslash from the firmware


@pytest.mark.e2e
@pytest.mark.skipif(_vm_missing() is not None, reason=str(_vm_missing()))
def test_boot_discover_and_run_a_job(discovery_image, tmp_path):
    log = tmp_path / "serial.log"
    disk, sata = tmp_path / "disk.raw", tmp_path / "sata.raw"
    for path, size in ((disk, DISK_BYTES), (sata, SATA_BYTES)):
        with open(path, "wb") as f:
            f.truncate(size)
    ns = NetNS()
    server = None
    qemu_log, dnsmasq_log = open(tmp_path / "qemu.log", "wb"), open(tmp_path / "dnsmasq.log", "wb")
    try:
        ns.bridge("br0", f"{ADMIN}/24")
        ns.bridge("br1")  # a second network without DHCP, like the lab's
        ns.tap("tap0", "br0")
        ns.tap("tap1", "br1")
        server = ContractServer(ns.listen(ADMIN))
        port = server.httpd.socket.getsockname()[1]
        ns.start("dnsmasq", "--no-daemon", "--conf-file=/dev/null", "--port=0", "--user=root",
                 "--interface=br0", "--bind-interfaces", "--dhcp-range=10.77.0.100,10.77.0.199,1h",
                 f"--dhcp-leasefile={tmp_path / 'leases'}", f"--pid-file={tmp_path / 'dnsmasq.pid'}",
                 stdout=subprocess.DEVNULL, stderr=dnsmasq_log)
        started = time.monotonic()
        qemu = ns.start(
            "qemu-system-x86_64", "-machine", "q35", "-accel", "tcg", "-m", str(MEMORY_MB), "-smp", "2",
            "-nodefaults", "-display", "none", "-no-reboot",
            "-kernel", str(discovery_image.kernel), "-initrd", str(discovery_image.initrd),
            "-append", f"console=ttyS0 quiet panic=-1 crowbar.url=http://{ADMIN}:{port} crowbar.nonce={NONCE}",
            "-serial", f"file:{log}",
            "-smbios", f"type=1,manufacturer=Crowbar Lab,product=Test VM,serial={SERIAL}",
            "-netdev", "tap,id=n0,ifname=tap0,script=no,downscript=no",
            "-device", f"virtio-net-pci,netdev=n0,mac={MACS[0]}",
            "-netdev", "tap,id=n1,ifname=tap1,script=no,downscript=no",
            "-device", f"e1000,netdev=n1,mac={MACS[1]}",
            "-drive", f"file={disk},format=raw,if=none,id=d0", "-device", "virtio-blk-pci,drive=d0",
            "-drive", f"file={sata},format=raw,if=none,id=d1", "-device", "ide-hd,drive=d1,bus=ide.0",
            stdout=subprocess.DEVNULL, stderr=qemu_log)
        try:
            qemu.wait(timeout=170)  # TCG boots in 20-40 s; the agent powers the VM off at the end
        except subprocess.TimeoutExpired:
            pass
        finished = time.monotonic()
        context = (f"\n--- serial log ---\n{log.read_text(errors='replace') if log.exists() else ''}"
                   f"\n--- qemu ---\n{(tmp_path / 'qemu.log').read_text(errors='replace')}"
                   f"\n--- dnsmasq ---\n{(tmp_path / 'dnsmasq.log').read_text(errors='replace')}"
                   f"\n--- requests ---\n{server.requests}")
        assert server.inventory is not None, f"no inventory arrived{context}"
        print(f"qemu start to inventory: {server.inventory_at - started:.1f} s, "
              f"to power-off: {finished - started:.1f} s")
        inv = server.inventory
        print(json.dumps(inv, indent=1))

        version = image.default_kernel_version()
        assert inv["kernel"] == version
        assert inv["firmware"] == "bios"
        assert inv["boot_mac"] == MACS[0]
        assert inv["cpu"]["count"] == 2 and inv["cpu"]["model"]
        # installed_bytes is the firmware's RAM (E820): -m less a few hundred KiB of holes.
        # MemTotal lacks the kernel's own memory too: over 10% of 512 MiB, so only a sanity check.
        assert abs(inv["memory"]["installed_bytes"] - MEMORY_MB * 2**20) <= 0.05 * MEMORY_MB * 2**20
        assert 0.75 * MEMORY_MB * 2**20 < inv["memory"]["total_bytes"] < MEMORY_MB * 2**20

        nics = {nic["mac"]: nic for nic in inv["nics"]}
        assert len(inv["nics"]) == 2 and set(nics) == set(MACS), inv["nics"]
        assert nics[MACS[0]]["driver"] == "virtio_net" and nics[MACS[1]]["driver"] == "e1000"
        assert nics[MACS[1]]["speed"] == 1000
        for nic in inv["nics"]:
            assert nic["bus"] and len(nic["bus"]) == len("0000:00:00.0") and nic["link"] is True

        disks = {d["name"]: d for d in inv["disks"]}
        assert set(disks) == {"vda", "sda"}, inv["disks"]
        assert disks["vda"]["size_bytes"] == DISK_BYTES and disks["vda"]["model"] is None
        assert disks["sda"]["size_bytes"] == SATA_BYTES and disks["sda"]["model"] == "QEMU HARDDISK"
        assert disks["sda"]["rotational"] is True

        assert inv["dmi"] == {"vendor": "Crowbar Lab", "product": "Test VM", "serial": SERIAL}

        assert server.discoveries == 2, f"the agent did not discover itself again{context}"
        # A 401 (the token is unknown) sends the agent back to discovery at once.
        assert server.requests[:3] == ["POST /api/v2/discovery", "GET /api/v2/agent/next", "POST /api/v2/discovery"]
        assert server.nonces == [NONCE, NONCE], "the agent must post the nonce from its kernel command line"
        assert server.result is not None, f"no job result{context}"
        assert server.result["exit_code"] == 3
        output = server.result["output"].splitlines()
        eth0 = next(nic["mac"] for nic in inv["nics"] if nic["name"] == "eth0")
        assert output[:3] == [f"kernel={version}", f"mac={eth0}",
                              'quote=" backslash=\\ tab=\t unicode=\u00e9\u20ac'], context
        assert qemu.poll() == 0, f"the VM did not power off{context}"
    finally:
        if server:
            server.close()
        ns.close()
        qemu_log.close()
        dnsmasq_log.close()
    assert not NetNS.exists(ns.name)

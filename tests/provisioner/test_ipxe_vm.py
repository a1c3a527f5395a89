"""The boot script's retries, run by a real iPXE (qemu's virtio-net ROM, Debian's ipxe-qemu) in a
qemu VM whose user-mode network hands it the script's URL by DHCP and reaches the test's HTTP
server on this host's loopback (slirp's 10.0.2.2).

The server refuses the first kernel fetch (503), drops the connection in the middle of the second,
then serves a real kernel whole (this host's Debian kernel): the script tries again after each failure and
the third try boots Linux. That a machine gives up after FETCH_TRIES tries, back to its firmware,
is the rendering's (tests/provisioner/test_ipxe.py).
"""

from __future__ import annotations

import gzip
import http.server
import shutil
import subprocess
import threading
import time
from pathlib import Path

import pytest

from crowbar.provisioner import ipxe

QEMU = shutil.which("qemu-system-x86_64")
KERNELS = sorted(Path("/boot").glob("vmlinuz-*"))


def _missing() -> str | None:
    if not QEMU:
        return "qemu-system-x86_64 is not installed (Debian package qemu-system-x86)"
    if not Path("/usr/lib/ipxe/qemu/efi-virtio.rom").exists() and not Path("/usr/share/qemu/efi-virtio.rom").exists():
        return "qemu's iPXE ROMs are not installed (Debian package ipxe-qemu)"
    if not KERNELS:
        return "no kernel in /boot to boot (Debian package linux-image-amd64)"
    return None


pytestmark = pytest.mark.skipif(_missing() is not None, reason=_missing() or "")


class Boot(http.server.BaseHTTPRequestHandler):
    script = b""
    kernel = b""
    initrd = gzip.compress(b"")  # an empty initramfs: Linux starts, finds no init, panics: enough
    requests: list[tuple[str, int]] = []

    def do_GET(self):  # noqa: N802 (http.server's name)
        path = self.path
        if path == "/boot.ipxe":
            status, body = 200, self.script
        elif path == "/boot/discovery/vmlinuz":
            tries = sum(1 for p, _ in self.requests if p == path)
            if tries == 1:  # the connection drops mid-transfer
                type(self).requests.append((path, 0))
                self.send_response(200)
                self.send_header("Content-Length", str(len(self.kernel)))
                self.end_headers()
                self.wfile.write(self.kernel[:65536])
                self.wfile.flush()
                self.close_connection = True
                return
            status, body = (503, b"busy") if tries == 0 else (200, self.kernel)
        elif path == "/boot/discovery/initrd.img":
            status, body = 200, self.initrd
        else:
            status, body = 404, b"no such file"
        type(self).requests.append((path, status))
        self.send_response(status)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, *args):
        pass


def test_a_failed_kernel_fetch_is_tried_again_and_the_third_try_boots(tmp_path):
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Boot)
    port = server.server_address[1]
    params = ipxe.BootParams(server_url=f"http://10.0.2.2:{port}", boot_url=f"http://10.0.2.2:{port}/boot",
                             console=("ttyS0,115200n8",))
    Boot.script = ipxe.render("discovery", params).encode()
    Boot.kernel = KERNELS[-1].read_bytes()
    Boot.requests = []
    threading.Thread(target=server.serve_forever, daemon=True).start()
    console = tmp_path / "console.log"
    vm = subprocess.Popen([QEMU, "-machine", "pc", "-accel", "tcg", "-m", "512", "-nographic", "-nodefaults",
                           "-serial", f"file:{console}", "-boot", "order=n",
                           "-netdev", f"user,id=n0,bootfile=http://10.0.2.2:{port}/boot.ipxe",
                           "-device", "virtio-net-pci,netdev=n0"],
                          stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    try:
        deadline = time.monotonic() + 240
        while b"Linux version" not in (console.read_bytes() if console.exists() else b""):
            assert vm.poll() is None, vm.stderr.read().decode(errors="replace")
            assert time.monotonic() < deadline, (Boot.requests, console.read_text(errors="replace")[-4000:])
            time.sleep(1)
    finally:
        vm.kill()
        vm.wait()
        server.shutdown()
        server.server_close()
    kernel = [status for path, status in Boot.requests if path == "/boot/discovery/vmlinuz"]
    assert kernel == [503, 0, 200], Boot.requests  # 0: the dropped one
    assert ("/boot/discovery/initrd.img", 200) in Boot.requests
    log = console.read_text(errors="replace")
    # what the script said between the tries (iPXE writes to the serial port too)
    assert log.count("loading the boot files failed") == 2, log[-3000:]
    assert "try xx)" in log and "boot failed, handing the machine back" not in log

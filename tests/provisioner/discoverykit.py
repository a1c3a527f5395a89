"""What the discovery tests share: an inventory like the agent's, posting it as the agent does
(no admin token; the boot's nonce in its header), reading the nonce out of a boot script, and the
real app served by uvicorn on given sockets."""

from __future__ import annotations

import asyncio
import json
import re
import threading
import time

import uvicorn

from crowbar.api.app import create_app
from crowbar.api.settings import AppSettings

INVENTORY = {
    "kernel": "6.1.0-test", "firmware": "bios", "boot_mac": "52:54:00:AA:00:01",
    "cpu": {"model": "QEMU", "count": 2}, "memory": {"total_bytes": 1, "installed_bytes": 2},
    "disks": [{"name": "vda", "size_bytes": 1073741824}],
    "nics": [{"name": "eth0", "mac": "52:54:00:aa:00:01", "speed": None, "driver": "virtio_net", "bus": "0000:00:03.0"},
             {"name": "eth1", "mac": "52:54:00:aa:00:02", "speed": 1000, "driver": "e1000", "bus": "0000:00:04.0"}],
    "dmi": {"vendor": "QEMU", "product": "Standard PC", "serial": None},
}
NONCE = re.compile(r"crowbar\.nonce=(\S+)")


def inventory(*macs: str, **extra) -> dict:
    """An inventory with these NICs (the first one booted)."""
    return dict(INVENTORY, boot_mac=macs[0], nics=[{"name": f"eth{i}", "mac": m} for i, m in enumerate(macs)],
                **extra)


def discover(api, inventory=INVENTORY, nonce: str | None = None, content: str | bytes | None = None):
    """POST /api/v2/discovery as the agent does: no admin token, the boot's nonce in its header."""
    headers = {"authorization": "", "content-type": "application/json"}
    if nonce is not None:
        headers["x-crowbar-nonce"] = nonce
    body = json.dumps(inventory) if content is None else content
    return api.post("/api/v2/discovery", content=body, headers=headers)


def boot_script(api, mac: str):
    return api.get(f"/boot/{mac.lower().replace(':', '-')}.ipxe", headers={"authorization": ""})


def nonce_in(script: str) -> str | None:
    match = NONCE.search(script)
    return match[1] if match else None


def boot_nonce(api, mac: str) -> str:
    """Fetch the machine's iPXE script as its firmware does; the nonce on its kernel line."""
    r = boot_script(api, mac)
    assert r.status_code == 200, r.text
    nonce = nonce_in(r.text)
    assert nonce, f"no crowbar.nonce= in the boot script of {mac}:\n{r.text}"
    return nonce


class Served:
    """`create_app(settings)` served by uvicorn, in a thread, on already bound sockets."""

    def __init__(self, settings: AppSettings, sockets):
        self.server = uvicorn.Server(uvicorn.Config(create_app(settings), log_level="warning"))
        self.thread = threading.Thread(target=lambda: asyncio.run(self.server.serve(sockets=sockets)), daemon=True)
        self.thread.start()
        deadline = time.monotonic() + 20
        while not self.server.started:
            assert self.thread.is_alive() and time.monotonic() < deadline, "uvicorn did not start"
            time.sleep(0.05)

    def close(self) -> None:
        self.server.should_exit = True
        self.thread.join(20)

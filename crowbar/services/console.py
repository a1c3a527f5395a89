"""A lab VM's serial console, read-only: the file qemu writes its serial port to.

A node powered by the qemu driver (the lab's VMs, crowbar.power.qemu) has its serial port in a
file: the `-chardev file,...,path=P` of its power `command` (what `crowbar lab` sets), else
`console.log` beside its QMP socket (the lab's layout). `tail` answers the bytes from `offset` on
(or the last CHUNK bytes when no offset is given), so a follower (the web UI's node page) asks for
what is new every few seconds. Nothing is written to the VM: this is a log, not an interactive
console.

The path comes from the node's power settings, which only an operator can set; still, only a
regular file is read, never through a symbolic link (O_NOFOLLOW), and never more than CHUNK bytes
per answer, so the settings cannot be used to read a device, a FIFO, or a file a link points at.
"""

from __future__ import annotations

import os
import stat
from pathlib import Path

from sqlalchemy.orm import Session

from crowbar.services import lookup

CHUNK = 64 * 1024


def serial_file(driver: str, settings: dict) -> Path | None:
    """Where a node's serial console is written, or None when its power driver keeps none."""
    if driver != "qemu":
        return None
    command = settings.get("command") or []
    for i, arg in enumerate(command[:-1]):
        if arg == "-chardev" and str(command[i + 1]).startswith("file,"):
            for part in str(command[i + 1]).split(",")[1:]:
                if part.startswith("path="):
                    return Path(part[len("path="):])
    qmp = str(settings.get("qmp") or "").strip()
    return Path(qmp).parent / "console.log" if qmp else None


def tail(session: Session, key, offset: int | None = None) -> dict:
    """{node, available, reason, size, offset, next, text}: the console's bytes from `offset`
    (default: the last CHUNK), at most CHUNK of them, decoded as UTF-8 (undecodable bytes
    replaced); `next` is the offset to ask for next. A size below the follower's offset means the
    file was started again (a new VM): it should read the tail again."""
    node = lookup.node(session, key)
    out = {"node": node.name, "available": False, "reason": "", "size": 0, "offset": 0, "next": 0, "text": ""}
    path = serial_file(node.power_driver, node.power or {})
    if path is None:
        return out | {"reason": f"power driver {node.power_driver} keeps no serial console (only lab VMs, driver qemu, do)"}
    try:  # looked at before opening too: opening a device can have effects of its own
        if not stat.S_ISREG(os.lstat(path).st_mode):
            return out | {"reason": "the console path is not a regular file"}
        fd = os.open(path, os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK | os.O_CLOEXEC)
    except FileNotFoundError:
        return out | {"reason": "the VM has written no console output yet"}
    except OSError as exc:
        return out | {"reason": f"the console file cannot be read: {exc.strerror}"}
    try:
        st = os.fstat(fd)
        if not stat.S_ISREG(st.st_mode):
            return out | {"reason": "the console path is not a regular file"}
        size = st.st_size
        start = max(0, size - CHUNK) if offset is None else min(offset, size)
        data = os.pread(fd, min(CHUNK, size - start), start)
    finally:
        os.close(fd)
    return out | {"available": True, "size": size, "offset": start, "next": start + len(data),
                 "text": data.decode("utf-8", errors="replace")}


"""A throwaway network namespace for tests that boot VMs: bridges, taps, processes and sockets
inside it, and a teardown that removes all of them even when the test failed.

Nothing here touches the host's own network: every address lives in the namespace.
"""

from __future__ import annotations

import ctypes
import os
import secrets
import socket
import subprocess
import threading
from pathlib import Path

CLONE_NEWNET = 0x40000000


class NetNS:
    """A named network namespace that kills what it started (by PID) and deletes itself on close."""

    def __init__(self, prefix: str = "crowbar-test"):
        self.name = f"{prefix}-{os.getpid()}-{secrets.token_hex(3)}"
        self.processes: list[subprocess.Popen] = []
        subprocess.run(["ip", "netns", "add", self.name], check=True)
        self.ip("link", "set", "lo", "up")

    def ip(self, *args: str) -> None:
        subprocess.run(["ip", "-n", self.name, *args], check=True, capture_output=True)

    def bridge(self, name: str, address: str | None = None) -> None:
        self.ip("link", "add", name, "type", "bridge")
        if address:
            self.ip("addr", "add", address, "dev", name)
        self.ip("link", "set", name, "up")

    def tap(self, name: str, bridge: str) -> None:
        self.ip("tuntap", "add", "dev", name, "mode", "tap")
        self.ip("link", "set", name, "master", bridge, "up")

    def start(self, *cmd: str, **popen) -> subprocess.Popen:
        """Runs cmd inside the namespace; `ip netns exec` execs it, so the PID is cmd's own."""
        proc = subprocess.Popen(["ip", "netns", "exec", self.name, *cmd], **popen)
        self.processes.append(proc)
        return proc

    def listen(self, address: str, port: int = 0) -> socket.socket:
        """A TCP socket listening on address inside the namespace, for a server in this process.

        A thread enters the namespace just to create the socket: a socket stays in the
        namespace it was made in, and the rest of the process stays outside.
        """
        made: list = []

        def make() -> None:
            try:
                libc = ctypes.CDLL(None, use_errno=True)
                with open(f"/run/netns/{self.name}") as ns:
                    if libc.setns(ns.fileno(), CLONE_NEWNET) != 0:
                        raise OSError(ctypes.get_errno(), "setns failed")
                sock = socket.create_server((address, port))
                made.append(sock)
            except Exception as error:  # handed to the caller's thread below
                made.append(error)

        thread = threading.Thread(target=make)
        thread.start()
        thread.join()
        if isinstance(made[0], Exception):
            raise made[0]
        return made[0]

    def close(self) -> None:
        for proc in reversed(self.processes):
            if proc.poll() is None:
                proc.terminate()
                try:
                    proc.wait(timeout=10)
                except subprocess.TimeoutExpired:
                    proc.kill()
                    proc.wait()
        subprocess.run(["ip", "netns", "del", self.name], check=False, capture_output=True)

    @staticmethod
    def exists(name: str) -> bool:
        return Path(f"/run/netns/{name}").exists()

"""The qemu power driver: the lab's VMs, powered through their QMP monitor socket.

A lab VM is started paused (`-S`) with `-qmp unix:<socket>,server,nowait`, which is a machine
plugged in but switched off. Then:
- power_on: `cont` (after `system_reset` if the guest had shut itself down under -no-shutdown);
  if no VM answers on the socket and the node has a `command` setting, that command is run first
  to start one (it must daemonize, so the VM outlives the server like a real machine would);
- power_off: `quit`, pulling the plug: the qemu process ends;
- power_cycle: `system_reset` (under the lab's crowbar.lab.vmrun, a cold start of a new qemu); a VM
  that is off is powered on instead;
- status: `query-status`: running is on; prelaunch, paused, shutdown and no process at all are off.

QMP is a line-oriented JSON protocol; the few lines of client below avoid a dependency.
"""

from __future__ import annotations

import json
import socket
import subprocess
import tempfile
import time
from pathlib import Path

from crowbar.errors import InvalidInput
from crowbar.power.base import PowerDriver, PowerError, PowerNode, Setting, Status

OFF_STATES = frozenset({"prelaunch", "paused", "shutdown"})
DEFAULT_TIMEOUT = 10.0
MAX_TIMEOUT = 3600.0  # per exchange; sockets cannot wait past time_t anyway (1e10 s overflows)


class QmpError(Exception):
    """QEMU answered a command with an error."""


class VmAbsent(Exception):
    """Nothing listens on the QMP socket: no VM process."""


class Qmp:
    """One QMP session: connect, read the greeting, negotiate capabilities, then `execute`.

    QEMU serves one client per monitor at a time, so sessions are short: open, act, close.
    """

    def __init__(self, path: str | Path, timeout: float = DEFAULT_TIMEOUT):
        self._sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        self._sock.settimeout(timeout)
        try:
            self._sock.connect(str(path))
        except (FileNotFoundError, ConnectionRefusedError) as exc:
            self._sock.close()
            raise VmAbsent(str(path)) from exc
        self._reader = self._sock.makefile("rb")
        self._next_id = 0
        try:
            if "QMP" not in self._read():
                raise QmpError(f"{path} does not speak QMP")
            self.execute("qmp_capabilities")
        except BaseException:
            self.close()
            raise

    def execute(self, command: str, **arguments):
        """Run `command` and return its result; events that arrive meanwhile are skipped."""
        self._next_id += 1
        message = {"execute": command, "id": self._next_id}
        if arguments:
            message["arguments"] = arguments
        self._sock.sendall(json.dumps(message).encode() + b"\r\n")
        while True:
            reply = self._read()
            if reply.get("id") != self._next_id:
                continue
            if "error" in reply:
                raise QmpError(f"{command}: {reply['error'].get('desc', reply['error'])}")
            return reply.get("return")

    def events(self):
        """The events QEMU sends, as they come, until it closes the monitor (its process ends)."""
        self._sock.settimeout(None)
        while True:
            try:
                message = self._read()
            except (ConnectionError, OSError, ValueError):
                return
            if "event" in message:
                yield message

    def close(self) -> None:
        self._reader.close()
        self._sock.close()

    def __enter__(self) -> Qmp:
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    def _read(self) -> dict:
        line = self._reader.readline()
        if not line:
            raise ConnectionError("QMP connection closed by QEMU")
        return json.loads(line)


def vm_present(path: str | Path) -> bool:
    """Whether a process listens on the QMP socket, without taking the monitor's one session."""
    with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as probe:
        try:
            probe.connect(str(path))
        except (FileNotFoundError, ConnectionRefusedError):
            return False
    return True


class QemuPower(PowerDriver):
    name = "qemu"
    summary = "a qemu VM, through its QMP monitor socket (the lab)"
    settings = {
        "qmp": Setting("path of the VM's QMP unix socket", required=True),
        "command": Setting("optional: argv that starts the VM paused (-S) and daemonized, run by "
                           "power_on when no VM is there", types=(list,)),
        "timeout": Setting(f"optional: seconds per QMP exchange ({DEFAULT_TIMEOUT:g})", types=(int, float)),
    }
    # A power-on may start the VM (up to 3 exchanges' worth) and then talk to it.
    timeout = DEFAULT_TIMEOUT * 6

    def validate(self, settings) -> dict:
        settings = super().validate(settings)
        if not str(settings["qmp"]).strip():
            raise InvalidInput("power driver qemu: setting 'qmp' must name the VM's QMP socket", field="settings.qmp")
        command = settings.get("command")
        if command is not None:
            if not command or not all(isinstance(arg, str) for arg in command):
                raise InvalidInput("power driver qemu: setting 'command' must be a non-empty list of strings",
                                   field="settings.command")
            if "-daemonize" not in command:
                raise InvalidInput("power driver qemu: the VM command must use -daemonize, so that the VM "
                                   "outlives whoever powered it on", field="settings.command")
        if "timeout" in settings and not 0 < settings["timeout"] <= MAX_TIMEOUT:
            raise InvalidInput(f"power driver qemu: setting 'timeout' must be a positive number of seconds, "
                               f"at most {MAX_TIMEOUT:g}", field="settings.timeout")
        return settings

    def power_on(self, node: PowerNode) -> str:
        try:
            return f"{node.name} {self._act(node, self._on)}"
        except VmAbsent:
            self._launch(node)
            return f"{node.name} {self._act(node, self._on)} (VM process started)"

    def power_off(self, node: PowerNode) -> str:
        try:
            self._act(node, lambda qmp: self._quit(qmp))
        except VmAbsent:
            return f"{node.name} is already off"
        sock, deadline = node.setting("qmp"), time.monotonic() + self._timeout(node)
        while vm_present(sock):
            if time.monotonic() > deadline:
                raise PowerError(f"{node.name}: qemu still runs {self._timeout(node)}s after quit")
            time.sleep(0.05)
        return f"{node.name} powered off (qemu quit)"

    def power_cycle(self, node: PowerNode) -> str:
        try:
            running = self._act(node, lambda qmp: qmp.execute("query-status")["running"])
        except VmAbsent:
            running = False
        if not running:
            return self.power_on(node)
        self._act(node, self._reset)
        return f"{node.name} reset"

    def soft_off(self, node: PowerNode) -> str:
        try:
            self._act(node, lambda qmp: qmp.execute("system_powerdown"))
        except VmAbsent:
            return f"{node.name} is already off"
        return f"{node.name}: the OS was asked to shut down (ACPI power button)"

    def status(self, node: PowerNode) -> Status:
        node.setting("qmp")  # a node without a socket is misconfigured, not of unknown status
        try:
            state = self._act(node, lambda qmp: qmp.execute("query-status"))
        except VmAbsent:
            return "off"
        except PowerError:
            return "unknown"
        if state.get("running"):
            return "on"
        return "off" if state.get("status") in OFF_STATES else "unknown"

    @staticmethod
    def _timeout(node: PowerNode) -> float:
        return float(node.settings.get("timeout", DEFAULT_TIMEOUT))

    def _act(self, node: PowerNode, action):
        """Run `action(qmp)` in one session; errors become PowerError naming the node (VmAbsent
        passes through: callers decide what a missing VM means)."""
        try:
            with Qmp(node.setting("qmp"), self._timeout(node)) as qmp:
                return action(qmp)
        except VmAbsent:
            raise
        except (QmpError, OSError, ValueError) as exc:
            raise PowerError(f"{node.name}: qemu monitor {node.setting('qmp')}: {exc}") from exc

    @staticmethod
    def _quit(qmp: Qmp) -> None:
        try:
            qmp.execute("quit")
        except ConnectionError:
            pass  # QEMU may close the socket before its reply arrives

    @staticmethod
    def _reset(qmp: Qmp) -> None:
        try:
            qmp.execute("system_reset")
        except ConnectionError:
            pass  # a VM whose reset ends its process (the lab's vmrun) may close before the reply

    def _on(self, qmp: Qmp) -> str:
        state = qmp.execute("query-status")
        if state.get("running"):
            return "already on"
        if state.get("status") == "shutdown":
            qmp.execute("system_reset")
        qmp.execute("cont")
        return "powered on"

    def _launch(self, node: PowerNode) -> None:
        command = node.settings.get("command")
        if not command:
            raise PowerError(f"{node.name}: no VM answers on {node.setting('qmp')} and there is "
                             "no 'command' setting to start one")
        if "-daemonize" not in command:
            raise PowerError(f"{node.name}: the VM command must use -daemonize, so that the VM "
                             "outlives whoever powered it on")
        # Output to a file, not a pipe: the daemonized VM may keep it open, and a pipe would
        # then never reach end of file.
        with tempfile.TemporaryFile() as output:
            try:
                done = subprocess.run(command, stdin=subprocess.DEVNULL, stdout=output,
                                      stderr=subprocess.STDOUT, timeout=self._timeout(node) * 3)
            except (OSError, subprocess.TimeoutExpired) as exc:
                raise PowerError(f"{node.name}: cannot start the VM: {exc}") from exc
            if done.returncode != 0:
                output.seek(0)
                raise PowerError(f"{node.name}: the VM command failed ({done.returncode}): "
                                 f"{output.read().decode(errors='replace').strip()}")

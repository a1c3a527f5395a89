"""How a jig reaches a node: this machine, one SSH session, or the node's discovery agent.

Every jig that runs something on a node (the script and puppet jigs; the ansible jig only uses
`route`, `SshTarget` and `wait`, since ansible-playbook makes its own connections) needs
the same three ways there, chosen the same way for the same node (`route`):

- LOCAL: the node is the admin node, this machine: a process here, in the run's work directory,
  bounded by `wait`;
- AGENT: the node runs the discovery image and has no SSH address: a job for its agent
  (`RunContext.agent`, which the annealer provides), answered later with the exit code and output;
- SSH: anywhere else: one OpenSSH session to the node's `crowbar/ssh/address` (`port`, `user`,
  `key` beside it), which needs nothing on the node but sshd and a POSIX shell. The node's host key
  is checked strictly against the keys it reported when its installed system called home
  (`NodeInfo.host_keys`), or the keys an operator set in the hint `crowbar/ssh/host_keys` for a node
  Crowbar did not install; a node with neither is trusted on first use within the run, and the
  run's log says so.

Over SSH and through the agent a jig sends one sh program and a tar bundle that the program reads
on its stdin (`run_ssh`, `run_agent`); what the program prints comes back as one text, for the jig
to pick apart.
"""

from __future__ import annotations

import base64
import codecs
import contextlib
import os
import secrets
import shlex
import signal
import subprocess
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from crowbar.jigs.base import AgentChannel, NodeInfo, RunContext

LOCAL, AGENT, SSH = "local", "agent", "ssh"
# How a jig's sh program starts on the node: output and errors together, the bundle on its stdin
# unpacked into a temporary directory "$d", removed however the program ends.
UNPACK = """\
exec 2>&1
d=$(mktemp -d) || exit 1
trap 'rm -rf "$d"' EXIT
trap 'exit 1' HUP INT TERM PIPE
tar -xf - -C "$d" || exit 1
"""
SSH_CONNECT_TIMEOUT = 10
SSH_GRACE = 30  # extra seconds before a silent SSH session or agent job is given up (the node enforces the timeout)


def route(ctx: RunContext) -> str:
    """LOCAL, AGENT or SSH: how this run reaches its node."""
    if ctx.node.admin:
        return LOCAL
    if ctx.agent is not None and not ctx.node.attr("crowbar/ssh/address"):
        return AGENT
    return SSH


def wait(proc: subprocess.Popen, deadline: float) -> bool:
    """Wait for `proc` until `deadline`; past it, kill its whole process group. True if killed."""
    try:
        proc.wait(timeout=max(0.0, deadline - time.monotonic()))
        return False
    except subprocess.TimeoutExpired:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(proc.pid, signal.SIGKILL)
        proc.wait()
        return True


@dataclass(frozen=True)
class SshTarget:
    """Where an SSH session goes, from the node's attributes; str() is user@address:port."""

    address: str
    port: object = 22
    user: object = "root"
    key: object = None
    host_keys: tuple[str, ...] = ()  # "ssh-ed25519 AAAA..." lines; empty: trusted on first use

    @classmethod
    def of(cls, node: NodeInfo) -> SshTarget | None:
        """The node's target, or None when it has no `crowbar/ssh/address`."""
        address = node.attr("crowbar/ssh/address")
        if not address:
            return None
        keys = node.host_keys or node.attr("crowbar/ssh/host_keys") or ()
        if isinstance(keys, str):
            keys = (keys,)
        return cls(address, node.attr("crowbar/ssh/port", 22), node.attr("crowbar/ssh/user", "root"),
                   node.attr("crowbar/ssh/key"), tuple(str(k) for k in keys if k))

    def __str__(self) -> str:
        return f"{self.user}@{self.address}:{self.port}"

    def known_hosts_lines(self) -> str:
        """The target's keys as known_hosts lines ("[addr]:port" when the port is not 22)."""
        host = str(self.address) if str(self.port) == "22" else f"[{self.address}]:{self.port}"
        return "".join(f"{host} {key}\n" for key in self.host_keys)

    def host_key_options(self, known_hosts: Path) -> list[str]:
        """ssh options that check the target's host key: strictly against `host_keys` (written to
        the file `known_hosts`, which this call appends to), or trust on first use into that file
        when the target has none."""
        if self.host_keys:
            with open(known_hosts, "a", encoding="utf-8") as f:
                f.write(self.known_hosts_lines())
        return ["-o", f"UserKnownHostsFile={known_hosts}", "-o", "GlobalKnownHostsFile=/dev/null",
                "-o", f"StrictHostKeyChecking={'yes' if self.host_keys else 'accept-new'}"]

    def argv(self, program: str, known_hosts: Path) -> list[str]:
        """The ssh command line that runs the sh `program` on the target, its host key checked
        with `host_key_options(known_hosts)`."""
        argv = ["ssh", "-T", "-o", "BatchMode=yes", *self.host_key_options(known_hosts), "-o", "LogLevel=ERROR",
                "-o", f"ConnectTimeout={SSH_CONNECT_TIMEOUT}", "-p", str(self.port), "-l", str(self.user)]
        if self.key:
            argv += ["-i", str(self.key), "-o", "IdentitiesOnly=yes"]
        return argv + ["--", str(self.address), "sh -c " + shlex.quote(program)]


def run_ssh(target: SshTarget, program: str, bundle: Path, output: Path, limit: float,
            on_output: Callable[[str], None] | None = None) -> tuple[str, int | None]:
    """Run the sh `program` on `target` with the file `bundle` on its stdin, for at most `limit`
    seconds. Returns what it printed (stdout and stderr, through the file `output`, so a daemon it
    leaves behind can't hold a pipe open) and its exit code, None if it was killed at the limit.
    `on_output`, if given, hears the text as it comes. The host key is checked as `SshTarget.argv`
    says, with a known_hosts file beside `output`; a failed check is named in the text."""
    known_hosts = output.parent / "known_hosts"
    known_hosts.unlink(missing_ok=True)
    text, rc = run_program(target.argv(program, known_hosts), bundle, output, limit, on_output)
    if rc == 255 and "Host key verification failed" in text:
        text += (f"!! {target}: its SSH host key is not the one the node reported when it was installed "
                 "(install.host_keys): refused. Reinstall the node, or set the hint crowbar/ssh/host_keys\n")
    return text, rc


def run_program(argv: list[str], bundle: Path, output: Path, limit: float,
                on_output: Callable[[str], None] | None = None, cwd: Path | None = None) -> tuple[str, int | None]:
    """`run_ssh` for any command line (`["sh", "-c", program]` runs a program here, for LOCAL)."""
    with open(bundle, "rb") as stdin, open(output, "w+b") as out:
        proc = subprocess.Popen(argv, stdin=stdin, stdout=out, stderr=subprocess.STDOUT, cwd=cwd,
                                start_new_session=True)
        deadline = time.monotonic() + limit
        if on_output is None:
            killed = wait(proc, deadline)
        else:
            killed = _follow(proc, output, deadline, on_output)
        out.seek(0)
        text = out.read().decode(errors="replace")
    return text, None if killed else proc.returncode


FOLLOW_POLL = 0.2  # seconds between looks at a followed output file


def _follow(proc: subprocess.Popen, output: Path, deadline: float, on_output: Callable[[str], None]) -> bool:
    """`wait`, passing what `proc` writes to `output` to `on_output` as it comes."""
    decoder = codecs.getincrementaldecoder("utf-8")(errors="replace")
    with open(output, "rb") as feed:
        while True:
            try:
                proc.wait(timeout=FOLLOW_POLL)
                killed = False
            except subprocess.TimeoutExpired:
                killed = None
            if killed is None and time.monotonic() >= deadline:
                killed = wait(proc, deadline)
            text = decoder.decode(feed.read())
            if killed is not None:
                text += decoder.decode(b"", final=True)
            if text:
                on_output(text)
            if killed is not None:
                return killed


def run_agent(agent: AgentChannel, program: str, bundle: bytes, timeout: int,
              on_done: Callable[[int, str], None]) -> None:
    """Queue the sh `program` as a job of the node's agent, with `bundle` on its stdin; the agent
    gives up after `timeout` seconds, and `on_done(exit_code, output)` hears the result.

    The job is one sh script: the bundle travels base64-encoded inside it (busybox has base64, tar,
    mktemp and timeout), is written to a temporary file, fed to the program and removed.
    """
    token = secrets.token_hex(8)
    payload = base64.encodebytes(bundle).decode().rstrip("\n")  # 76-column lines
    path = f"/tmp/crowbar-bundle-{token}.tar"
    script = (f"base64 -d > {path} <<'CROWBAR_{token}'\n{payload}\nCROWBAR_{token}\n"
              f"sh -c {shlex.quote(program)} < {path}\n"
              f"rc=$?\nrm -f {path}\nexit $rc\n")
    agent.submit(script, timeout, on_done)

"""The script jig: runs a role's shell scripts on the node, after Crowbar 2's script jig.

Each script sees the merged attributes as a JSON file (`$CROWBAR_ATTRS`) and may write a JSON
object to `$CROWBAR_WALL`; the walls of all scripts are deep-merged into the run's wall. On the
admin node the scripts run locally; on a node running the discovery image (no SSH address set) they
run as a job of its agent; elsewhere over one OpenSSH session, so a node needs nothing but sshd, a
POSIX shell, tar, mktemp and coreutils' `timeout` (the three ways are crowbar/jigs/transport.py's).
"""

from __future__ import annotations

import io
import json
import math
import os
import re
import secrets
import shlex
import subprocess
import tarfile
import time

from crowbar.documents import dig, merge
from crowbar.jigs import transport
from crowbar.jigs.base import Jig, RunContext, RunResult
from crowbar.jigs.trees import seconds

DEFAULT_TIMEOUT = 3600.0  # seconds for all of a run's scripts, unless `crowbar/script/timeout` says
STATE_DIR = ".crowbar"  # beside the scripts, holds attrs.json and wall.json; script names can't clash


class ScriptJig(Jig):
    name = "script"

    def run(self, ctx: RunContext) -> RunResult | None:
        raw = dig(ctx.attrs, "crowbar/script/timeout", DEFAULT_TIMEOUT)
        timeout = seconds(raw)
        problem = _check_names(ctx.scripts)
        if timeout is None:
            problem = f"crowbar/script/timeout must be a positive number of seconds, not {raw!r}"
        if problem:
            return RunResult(ok=False, log=f"!! {problem}\n")
        if not ctx.scripts:
            return RunResult(ok=True, log=f"role {ctx.role} has no scripts\n")
        way = transport.route(ctx)
        if way == transport.LOCAL:
            return _run_local(ctx, timeout)
        if way == transport.AGENT:
            return _run_agent(ctx, timeout)
        return _run_ssh(ctx, timeout)


class _Log:
    """Builds one log and one wall from the scripts' outcomes, alike for local and SSH runs."""

    def __init__(self, timeout: float):
        self.timeout = timeout
        self.parts: list[str] = []
        self.wall: dict = {}
        self.failed = False

    def note(self, text: str) -> None:
        if text:
            self.parts.append(text if text.endswith("\n") else text + "\n")

    def fail(self, line: str) -> None:
        self.note(f"!! {line}")
        self.failed = True

    def script(self, name: str, output: str, rc: int | None, wall: bytes = b"",
               timed_out: bool = False) -> None:
        """Record one script; `rc` None means it never finished (the SSH session broke)."""
        self.note(f"==> {name}")
        self.note(output)
        if timed_out:
            self.note(f"<== {name} killed: the run exceeded its timeout of {self.timeout:g} s "
                      "(attribute crowbar/script/timeout)")
        elif rc is None:
            self.note(f"<== {name} did not finish")
        elif rc < 0:
            self.note(f"<== {name} killed by signal {-rc}")
        else:
            self.note(f"<== {name} exited with {rc}")
        if timed_out or rc != 0:
            self.failed = True
        elif wall.strip():
            self._merge_wall(name, wall)

    def _merge_wall(self, name: str, wall: bytes) -> None:
        try:
            doc = json.loads(wall)
        except ValueError as e:
            self.fail(f"{name} wrote invalid JSON to $CROWBAR_WALL: {e}")
            return
        if not isinstance(doc, dict):
            self.fail(f"{name} wrote a JSON {type(doc).__name__} to $CROWBAR_WALL; it must be an object")
            return
        merge(self.wall, doc)

    def result(self) -> RunResult:
        return RunResult(ok=not self.failed, wall=self.wall if not self.failed else {},
                         log="".join(self.parts))


def _run_local(ctx: RunContext, timeout: float) -> RunResult:
    """Run the scripts on this machine, in the workdir, stopping at the first failure."""
    state = ctx.workdir / STATE_DIR
    state.mkdir(parents=True, exist_ok=True)
    attrs, wall = state / "attrs.json", state / "wall.json"
    attrs.write_text(json.dumps(ctx.attrs))
    env = {**os.environ, **_env(ctx), "CROWBAR_ATTRS": str(attrs), "CROWBAR_WALL": str(wall)}
    for script in ctx.scripts:
        path = ctx.workdir / script["name"]
        path.write_text(script["content"])
        path.chmod(0o755)
    log = _Log(timeout)
    deadline = time.monotonic() + timeout
    for script in ctx.scripts:
        name = script["name"]
        path = str(ctx.workdir / name)
        argv = [path] if _has_shebang(script) else ["/bin/sh", path]
        # Output goes to a file, not a pipe, so a leftover background process can't block reading.
        with open(state / "output", "w+b") as out:
            try:
                proc = subprocess.Popen(argv, cwd=ctx.workdir, env=env, stdin=subprocess.DEVNULL,
                                        stdout=out, stderr=subprocess.STDOUT, start_new_session=True)
            except OSError as e:  # e.g. the shebang names a missing interpreter
                out.write(f"cannot start {name}: {e}\n".encode())
                rc, timed_out = 127, False
            else:
                timed_out = transport.wait(proc, deadline)
                rc = proc.returncode
            out.seek(0)
            output = out.read().decode(errors="replace")
        log.script(name, output, rc, wall.read_bytes() if wall.exists() else b"", timed_out)
        if log.failed:
            break
    return log.result()


def _run_ssh(ctx: RunContext, timeout: float) -> RunResult:
    """Run the scripts on the node in one SSH session.

    The scripts and attrs travel as a tar stream on ssh's stdin; a small sh driver unpacks them in
    a mktemp directory, runs them in order under `timeout` and prints marker lines carrying a random
    token, from which the output, exit codes and wall of each script are picked apart here. Each
    script writes to a file that the driver then prints, so a daemon a script leaves behind can't
    hold the session open. Unlike a local run, a script after one that wrote a bad wall still runs:
    the walls are only checked once the session is over.
    """
    node = ctx.node
    target = transport.SshTarget.of(node)
    if target is None:
        return RunResult(ok=False, log=(
            f"!! node {node.name} has no crowbar/ssh/address attribute; set it with "
            f"`crowbar attribs set ssh-address ADDR --node {node.name}`\n"))
    token = secrets.token_hex(8)
    state = ctx.workdir / STATE_DIR
    state.mkdir(parents=True, exist_ok=True)
    (state / "bundle.tar").write_bytes(_bundle(ctx))
    limit = timeout + transport.SSH_CONNECT_TIMEOUT + transport.SSH_GRACE
    text, rc = transport.run_ssh(target, _driver(ctx, token, math.ceil(timeout)), state / "bundle.tar",
                                 state / "output", limit)

    log = _Log(timeout)
    done = _parse(text, token, [s["name"] for s in ctx.scripts], log)
    if rc is None:
        log.fail(f"ssh session to {target} killed: no end after {limit:g} s")
    elif not done and not log.failed:
        log.fail(f"ssh session to {target} ended with exit code {rc} before all scripts ran")
    return log.result()


def _run_agent(ctx: RunContext, timeout: float) -> None:
    """Run the scripts through the node's discovery agent, asynchronously.

    The job is the same driver as over SSH, fed the same tar bundle; the agent posts the combined
    output back, and it is picked apart exactly like an SSH session's.
    """
    token = secrets.token_hex(8)
    names = [s["name"] for s in ctx.scripts]

    def on_done(exit_code: int, output: str) -> None:
        log = _Log(timeout)
        if not _parse(output, token, names, log) and not log.failed:
            log.fail(f"the agent's job ended with exit code {exit_code} before all scripts ran")
        ctx.complete(log.result())

    transport.run_agent(ctx.agent, _driver(ctx, token, math.ceil(timeout)), _bundle(ctx),
                        math.ceil(timeout) + transport.SSH_GRACE, on_done)
    return None


def _driver(ctx: RunContext, token: str, timeout: int) -> str:
    """The sh program the node runs: unpack stdin, run each script, report through markers."""
    mark = f"@@{token}:"
    env = " ".join(f"{k}={shlex.quote(v)}" for k, v in _env(ctx).items())
    steps = "\n".join(
        "step " + ("" if _has_shebang(s) else "/bin/sh ") + shlex.quote(f"./{s['name']}")
        for s in ctx.scripts)
    return f"""\
{transport.UNPACK}cd "$d" || exit 1
export CROWBAR_ATTRS="$d/{STATE_DIR}/attrs.json" CROWBAR_WALL="$d/{STATE_DIR}/wall.json" {env}
deadline=$(( $(date +%s) + {timeout} ))
step() {{
  echo "{mark}start"
  left=$(( deadline - $(date +%s) ))
  [ "$left" -gt 0 ] || left=1
  timeout -s KILL "$left" "$@" </dev/null >"$d/{STATE_DIR}/output" 2>&1
  rc=$?
  cat "$d/{STATE_DIR}/output"
  if [ "$rc" -eq 137 ] && [ "$(date +%s)" -ge "$deadline" ]; then echo "{mark}timeout"; fi
  if [ "$rc" -eq 0 ] && [ -s "$CROWBAR_WALL" ]; then
    echo "{mark}wall"; cat "$CROWBAR_WALL"; echo; echo "{mark}wall-end"
  fi
  echo "{mark}end:$rc"
  [ "$rc" -eq 0 ] || exit "$rc"
}}
{steps}
echo "{mark}done"
"""


_MARKER = r"@@{token}:([a-z-]+)(?::(-?\d+))?\n"


def _parse(text: str, token: str, names: list[str], log: _Log) -> bool:
    """Replay the driver's output into `log`; True if the driver got to its end.

    Text outside any script (ssh or tar errors) goes to the log as is. Markers are matched anywhere,
    not only at line starts, since a script's output need not end with a newline.
    """
    pending = iter(names)
    name, output, wall, timed_out = None, "", b"", False
    pos = 0
    for m in re.finditer(_MARKER.format(token=token), text):
        chunk, pos = text[pos:m.start()], m.end()
        kind, rc = m.groups()
        if kind == "wall-end":
            wall = chunk.removesuffix("\n").encode()
        elif name is None:
            log.note(chunk)
        else:
            output += chunk
        if kind == "start":
            name, output, wall, timed_out = next(pending), "", b"", False
        elif kind == "timeout":
            timed_out = True
        elif kind == "end":
            log.script(name, output, int(rc), wall, timed_out)
            name = None
        elif kind == "done":
            return True
    if name is not None:
        log.script(name, output + text[pos:], None)
    else:
        log.note(text[pos:])
    return False


def _bundle(ctx: RunContext) -> bytes:
    """The tar stream for the node: the scripts (executable) and the attrs file."""
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w") as tar:
        files = [(s["name"], s["content"].encode(), 0o755) for s in ctx.scripts]
        files.append((f"{STATE_DIR}/attrs.json", json.dumps(ctx.attrs).encode(), 0o644))
        for name, data, mode in files:
            info = tarfile.TarInfo(name)
            info.size, info.mode, info.mtime = len(data), mode, int(time.time())
            tar.addfile(info, io.BytesIO(data))
    return buf.getvalue()


def _env(ctx: RunContext) -> dict[str, str]:
    """The variables besides the attrs and wall paths, which differ between local and SSH runs."""
    return {"CROWBAR_NODE": ctx.node.name, "CROWBAR_ROLE": ctx.role, "CROWBAR_RUN_ID": str(ctx.run_id)}


def _has_shebang(script: dict) -> bool:
    return script["content"].startswith("#!")


def _check_names(scripts: list[dict]) -> str | None:
    """Script names become file names in the work directory, so they must be plain and unique."""
    seen = set()
    for script in scripts:
        name = script.get("name") or ""
        if not name or name.startswith(".") or "/" in name or "\0" in name:
            return f"script name {name!r} is not a plain file name"
        if name in seen:
            return f"two scripts are named {name!r}"
        seen.add(name)
    return None


"""The puppet jig: `puppet apply` of the role's manifest on the node, with the barclamp's modules.

The barclamp's `puppet/` tree (`manifests/<role>.pp`, modules under `modules/`) travels to the
node as a tar bundle over one SSH session (or runs here for the admin node), as the script jig's
scripts do (crowbar/jigs/transport.py). There a small sh driver installs `puppet-agent` with
apt-get (update, then install) when `puppet` is missing (the node's apt configuration carries the
package proxy; a failed install fails the run, saying so), then runs

    puppet apply --detailed-exitcodes --modulepath modules:<crowbar's>:<the node's> --hiera_config <ours> manifests/<role>.pp

**In:** the merged attribute document (docs/attributes.md) is the one level of a per-run Hiera
hierarchy (`json_data`), so class parameters are found by automatic parameter lookup: an attrib
mapped to `webhello::port` sets `class webhello(Integer $port)`. The facts `crowbar_node`,
`crowbar_role` and `crowbar_run_id` are set too.

**Out:** `crowbar::wall { 'name': data => {...} }` (a defined type of the small `crowbar` module the
jig adds to the module path; it does nothing outside Crowbar) writes a JSON file; every one of a
run is deep-merged, in title order, into the noderole's wall. Failures come from Puppet's JSON log
(`--logdest FILE.json`): each error names its resource (`Exec[migrate]`) or manifest line, and
the message. Exit codes 0 and 2 (changes applied) succeed; anything else fails.
"""

from __future__ import annotations

import io
import json
import math
import re
import secrets
import shlex
import tarfile
import time
from pathlib import Path

from crowbar.documents import dig, merge
from crowbar.jigs import transport
from crowbar.jigs.base import Jig, RunContext, RunResult
from crowbar.jigs.trees import check_tree, seconds

PACKAGE = "puppet-agent"  # Debian 12 (Puppet 7) and 13 (Puppet 8); `puppet` is a transitional package to it
# apt-get tries, and seconds before the next (times the try): 15+30+45+60 s rides out a mirror that
# refuses for a minute or two (CI's online lab test lost a run to 90 s of 503s over three tries)
INSTALL_TRIES, INSTALL_PAUSE = 5, 15
DEFAULT_TIMEOUT = 3600.0  # seconds for the run, unless crowbar/puppet/timeout says
MODULES = Path(__file__).with_name("puppet_modules")  # the `crowbar` module (crowbar::wall)
STATE = ".crowbar"
# The node's own modules after the barclamp's and Crowbar's: Debian's packaged modules (OpenStack's
# puppet-neutron and its dependencies, puppet-module-*) are there, so a barclamp uses them unchanged
# without carrying a copy (crowbar/openstack/barclamps).
SYSTEM_MODULES = "/etc/puppet/code/modules:/usr/share/puppet/modules"
HIERA = """\
version: 5
hierarchy:
  - name: crowbar attributes
    datadir: .
    path: crowbar.json
    data_hash: json_data
"""
_RESOURCE = re.compile(r"[A-Z][\w:]*\[[^\]]*\]")
_IN_TREE = re.compile(r"/\S*?/(?=(?:manifests|modules|\.crowbar)/)")  # the temporary directory before a path
_WHERE = re.compile(r"\(file: ([^,]+), line: (\d+)")


class PuppetJig(Jig):
    name = "puppet"

    def run(self, ctx: RunContext) -> RunResult:
        problem = check_tree(ctx.scripts, "puppet", f"manifests/{ctx.role}.pp")
        raw = dig(ctx.attrs, "crowbar/puppet/timeout", DEFAULT_TIMEOUT)
        timeout = seconds(raw)
        if timeout is None:
            problem = f"crowbar/puppet/timeout must be a positive number of seconds, not {raw!r}"
        way = transport.route(ctx)
        target = transport.SshTarget.of(ctx.node) if way == transport.SSH else None
        if way == transport.AGENT:
            problem = (f"node {ctx.node.name} runs the discovery image: the puppet jig needs SSH and an "
                       "installed OS on the node (deploy an OS first)")
        elif way == transport.SSH and target is None:
            problem = (f"node {ctx.node.name} has no crowbar/ssh/address attribute; set it with "
                       f"`crowbar attribs set ssh-address ADDR --node {ctx.node.name}`")
        if problem:
            return RunResult(ok=False, log=f"!! {problem}\n")
        token = secrets.token_hex(8)
        state = ctx.workdir / STATE
        state.mkdir(parents=True, exist_ok=True)
        (state / "bundle.tar").write_bytes(_bundle(ctx))
        program = _driver(ctx, token, math.ceil(timeout))
        limit = timeout + transport.SSH_CONNECT_TIMEOUT + transport.SSH_GRACE
        stream = _Stream(ctx.output, token)
        if target is None:
            text, rc = transport.run_program(["sh", "-c", program], state / "bundle.tar", state / "output",
                                             limit, stream, cwd=ctx.workdir)
        else:
            text, rc = transport.run_ssh(target, program, state / "bundle.tar", state / "output", limit, stream)
        return _result(text, token, rc, limit, str(target or "this machine"))


class _Stream:
    """Passes the driver's output on line by line, without its marker lines and the JSON log."""

    def __init__(self, output, token: str):
        self.output, self.mark, self.pending, self.quiet = output, f"@@{token}:", "", False

    def __call__(self, text: str) -> None:
        *lines, self.pending = (self.pending + text).split("\n")
        shown = []
        for line in lines:
            if line.startswith(self.mark):
                self.quiet = True  # the JSON log and walls follow the first marker
            elif not self.quiet:
                shown.append(line + "\n")
        if shown:
            self.output("".join(shown))


def _driver(ctx: RunContext, token: str, timeout: int) -> str:
    mark = f"@@{token}:"
    facts = " ".join(f"FACTER_{k}={shlex.quote(v)}" for k, v in
                     (("crowbar_node", ctx.node.name), ("crowbar_role", ctx.role), ("crowbar_run_id", str(ctx.run_id))))
    return f"""\
{transport.UNPACK}if ! command -v puppet >/dev/null 2>&1; then
  echo "puppet is missing: installing {PACKAGE} (apt-get update, apt-get install)"
  export DEBIAN_FRONTEND=noninteractive
  # a package fetched through the proxies can fail mid-way (the mirror or the uplink drops it): apt
  # retries each file, and the whole install is tried {INSTALL_TRIES} times before the run fails
  for try in $(seq {INSTALL_TRIES}); do
    apt-get update -q </dev/null && apt-get install -y -q -o Acquire::Retries=3 {PACKAGE} </dev/null && break
    rc=$?
    [ "$try" = {INSTALL_TRIES} ] && {{ echo "{mark}install:$rc"; exit 1; }}
    echo "apt-get exited with $rc (try $try of {INSTALL_TRIES}): trying again in $((try * {INSTALL_PAUSE})) s"
    sleep $((try * {INSTALL_PAUSE}))
  done
  command -v puppet >/dev/null 2>&1 || {{ echo "{mark}install:127"; exit 1; }}
fi
mkdir -p "$d/{STATE}/wall" "$d/modules"
{facts} FACTER_crowbar_wall_dir="$d/{STATE}/wall" timeout -s KILL {timeout} \\
  puppet apply --detailed-exitcodes --color=false --modulepath "$d/modules:$d/{STATE}/modules:{SYSTEM_MODULES}" \\
  --hiera_config "$d/{STATE}/hiera.yaml" --vardir "$d/{STATE}/var" \\
  --logdest console --logdest "$d/{STATE}/log.json" "$d/manifests/{ctx.role}.pp" </dev/null
rc=$?
echo "{mark}log"
cat "$d/{STATE}/log.json" 2>/dev/null
echo
for f in "$d/{STATE}"/wall/*.json; do
  [ -f "$f" ] || continue
  echo "{mark}wall"; cat "$f"; echo
done
echo "{mark}end:$rc"
"""


def _result(text: str, token: str, rc: int | None, limit: float, where: str) -> RunResult:
    mark = f"@@{token}:"
    parts = text.split(mark)
    log, failures, wall, end = parts[0], [], {}, None
    for part in parts[1:]:
        kind, _, body = part.partition("\n")
        if kind == "log":
            failures = _failures(body)
        elif kind == "wall":
            try:
                doc = json.loads(body)
            except ValueError as e:
                failures.append(f"a crowbar::wall wrote invalid JSON: {e}")
                continue
            if isinstance(doc, dict):
                merge(wall, doc)
        elif kind.startswith("install:"):
            failures.append(f"installing {PACKAGE} on {where} failed (apt-get exit {kind[8:]}: see its output above); "
                            "the node's apt reaches the mirror through the admin server's package proxy")
            log += body
        elif kind.startswith("end:"):
            end = int(kind[4:]) if kind[4:].lstrip("-").isdigit() else None
            log += body
    if rc is None:
        failures.append(f"puppet run on {where} killed: no end after {limit:g} s (attribute crowbar/puppet/timeout)")
    elif end is None and not failures:
        failures.append(f"the session to {where} ended with exit code {rc} before puppet finished")
    elif end == 137:
        failures.append("puppet apply killed: the run exceeded its timeout (attribute crowbar/puppet/timeout)")
    elif end not in (0, 2) and not failures:
        failures.append(f"puppet apply exited with {end}")
    ok = not failures and end in (0, 2) and rc is not None
    if end is not None:
        log = log.rstrip("\n") + f"\n<== puppet apply exited with {end}" + \
            (" (changes applied)" if end == 2 else " (no changes)" if end == 0 else "") + "\n"
    # The last line is the noderole's status: the first failure that names a resource or manifest line.
    named = [f for f in failures if f.startswith(("resource ", "manifest "))]
    if failures:
        primary = (named or failures)[0]
        log += "".join(f"!! {line}\n" for line in failures if line is not primary) + f"!! {primary}\n"
    return RunResult(ok=ok, wall=wall if ok else {}, log=log)


def _failures(body: str) -> list[str]:
    """Error lines from Puppet's JSON log (one entry per line), naming resource or manifest line.
    Facter's own complaints (say, an unreadable /proc file in a container) are not the run's failures."""
    out = []
    for line in body.splitlines():
        line = line.strip().lstrip("[,").rstrip(",]")
        if not line.startswith("{"):
            continue
        try:
            entry = json.loads(line)
        except ValueError:
            continue
        if entry.get("level") not in ("err", "alert", "emerg", "crit") or entry.get("source") == "Facter":
            continue
        source, message = str(entry.get("source") or ""), str(entry.get("message") or "")
        message = _IN_TREE.sub("", message)  # the run's temporary directory says nothing
        resources = _RESOURCE.findall(source)
        where = _WHERE.search(message)
        if resources:
            out.append(f"resource {resources[-1]}: {message}")
        elif entry.get("file"):
            out.append(f"manifest {_IN_TREE.sub('', entry['file'])}:{entry.get('line', '?')}: {message}")
        elif where:
            out.append(f"manifest {where[1]}:{where[2]}: {message}")
        else:
            out.append(f"{source or 'puppet'}: {message}")
    return out


def _bundle(ctx: RunContext) -> bytes:
    """The puppet/ tree, the crowbar module, hiera.yaml and the attributes as Hiera's JSON data."""
    files = [(f["name"], f["content"].encode()) for f in ctx.scripts]
    for path in sorted(MODULES.rglob("*")):
        if path.is_file():
            files.append((f"{STATE}/modules/{path.relative_to(MODULES).as_posix()}", path.read_bytes()))
    files += [(f"{STATE}/hiera.yaml", HIERA.encode()), (f"{STATE}/crowbar.json", json.dumps(ctx.attrs).encode())]
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w", format=tarfile.PAX_FORMAT) as tar:
        for name, data in files:
            info = tarfile.TarInfo(name)
            info.size, info.mode, info.mtime = len(data), 0o644, int(time.time())
            tar.addfile(info, io.BytesIO(data))
    return buf.getvalue()



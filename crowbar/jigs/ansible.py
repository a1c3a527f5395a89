"""The ansible jig: runs a role's playbook (`ansible/<role>.yml` in its barclamp) with ansible-core.

One `ansible-playbook` run covers every noderole of the role and deployment that the annealer
claimed together (`batch = True`: Ansible's cost is per run, not per host); each noderole still
gets its own result, log and wall. The run happens on the admin server, in the run's work
directory, against an inventory made from the database:

- hosts: the nodes, by name; `ansible_host`/`ansible_port`/`ansible_user`/
  `ansible_ssh_private_key_file` from the node attribs `crowbar/ssh/{address,port,user,key}` (the
  script jig's), or `ansible_connection: local` for the admin node itself; each host's SSH host key
  is checked against the keys the node reported (`ansible_ssh_common_args`, see jigs/transport.py);
- groups: the roles each node holds in the deployment.

**In:** the merged attribute document (docs/attributes.md) as variables: its top-level keys that
are the same for every host of the run go in as extra vars (`-e @crowbar-vars.json`, exactly what
`ansible-playbook -e @vars.yml` does outside Crowbar); keys whose values differ between hosts of a
batch go in as inventory host vars (below a play's `vars:`, above role defaults). Each host also
gets `crowbar_node`, `crowbar_role`, `crowbar_run_id` and `crowbar_noderole_id`.

**Out:** facts a play sets with `set_fact` whose names start with `crowbar_wall` (each an object)
are deep-merged, in task order, into that host's wall, where children that want them see them.

ansible-playbook is run as a command rather than through ansible-runner: the jig needs one process
it can time out and kill as a group (as the script jig does), the per-host events come from a
twenty-line callback plugin of our own (crowbar/jigs/ansible_plugins/crowbar_events.py: one JSON
line per result, written as it happens, which is how logs stream and failures name play, task,
host and message), and ansible-runner would add pexpect, a private-data-dir layout and a second
event format without doing any of that better. The only dependency is ansible-core.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from crowbar.documents import dig, merge
from crowbar.jigs import transport
from crowbar.jigs.base import Jig, RunContext, RunResult
from crowbar.jigs.trees import check_tree, seconds, write_tree

DEFAULT_TIMEOUT = 3600.0  # seconds for the whole ansible-playbook run, unless crowbar/ansible/timeout says
DEFAULT_PYTHON = "/usr/bin/python3"  # the nodes' Python, unless crowbar/ansible/python says
# Hosts Ansible works on at once, unless crowbar/ansible/forks says: its controller spends CPU per
# host and task, so more forks than a few per core only add contention (docs/benchmarks.md).
DEFAULT_FORKS = max(8, 4 * (os.cpu_count() or 2))
PLUGINS = Path(__file__).with_name("ansible_plugins")
CONNECT_TIMEOUT = 30  # seconds for an SSH connection to a node
POLL = 0.2  # seconds between looks at the event file while the run goes


def ansible_playbook() -> str | None:
    """The ansible-playbook beside this Python (the venv's), else the one on PATH."""
    here = Path(sys.executable).with_name("ansible-playbook")
    return str(here) if here.exists() else shutil.which("ansible-playbook")


class AnsibleJig(Jig):
    name = "ansible"
    batch = True
    wants_groups = True  # the inventory's groups

    def run(self, ctx: RunContext) -> RunResult:
        return self.run_batch([ctx])[0]

    def run_batch(self, ctxs: list[RunContext]) -> list[RunResult]:
        first = ctxs[0]
        problem = check_tree(first.scripts, "ansible", f"{first.role}.yml")
        raw = max((dig(c.attrs, "crowbar/ansible/timeout", DEFAULT_TIMEOUT) for c in ctxs),
                  key=lambda v: seconds(v) or 0)
        timeout = seconds(raw)
        if timeout is None:
            problem = f"crowbar/ansible/timeout must be a positive number of seconds, not {raw!r}"
        exe = ansible_playbook()
        if exe is None:
            problem = "ansible-playbook is not installed on the admin server (pip install ansible-core)"
        if problem:
            return [RunResult(ok=False, log=f"!! {problem}\n") for _ in ctxs]
        hosts, results = {}, {}
        for ctx in ctxs:
            why = _unreachable(ctx)
            if why:
                results[ctx.run_id] = RunResult(ok=False, log=f"!! {why}\n")
            else:
                hosts[ctx.node.name] = ctx
        if hosts:
            results.update(_Run(exe, list(hosts.values()), timeout).go())
        return [results[c.run_id] for c in ctxs]


class _Run:
    """One ansible-playbook run for the contexts of one batch (nodes with a way in)."""

    def __init__(self, exe: str, ctxs: list[RunContext], timeout: float):
        self.exe, self.ctxs, self.timeout = exe, ctxs, timeout
        self.by_host = {c.node.name: c for c in ctxs}
        self.workdir = ctxs[0].workdir
        self.logs: dict[str, list[str]] = {h: [] for h in self.by_host}
        self.walls: dict[str, dict] = {h: {} for h in self.by_host}
        self.failures: dict[str, list[str]] = {h: [] for h in self.by_host}
        self.stats: dict[str, dict] = {}
        self.bad_wall: dict[str, str] = {}

    def say(self, host: str, line: str) -> None:
        line = line if line.endswith("\n") else line + "\n"
        self.logs[host].append(line)
        self.by_host[host].output(line)

    def say_all(self, line: str) -> None:
        for host in self.by_host:
            self.say(host, line)

    def go(self) -> dict[int, RunResult]:
        root = self.workdir / "ansible"
        root.mkdir(parents=True, exist_ok=True)
        write_tree(self.ctxs[0].scripts, root)
        state = self.workdir / ".crowbar"
        (state / "tmp").mkdir(parents=True, exist_ok=True)
        # SSH control sockets: a short path (a socket's path is limited to 108 bytes)
        control = Path(tempfile.mkdtemp(prefix="cb-ssh-"))
        common, inventory = self.inventory(state / "known_hosts")
        (state / "inventory.json").write_text(json.dumps(inventory))
        (state / "vars.json").write_text(json.dumps(common))
        events = state / "events.jsonl"
        events.touch()
        playbook = f"{self.ctxs[0].role}.yml"
        argv = [self.exe, "-i", str(state / "inventory.json"), "-e", f"@{state / 'vars.json'}", playbook]
        names = ", ".join(self.by_host)
        self.say_all(f"==> ansible-playbook {playbook} on {len(self.by_host)} host(s): {names}")
        forks = max((seconds(dig(c.attrs, "crowbar/ansible/forks", DEFAULT_FORKS)) or DEFAULT_FORKS)
                    for c in self.ctxs)
        env = {**os.environ, **_ansible_env(state, events, min(len(self.by_host), int(forks)), control)}
        try:
            return self.execute(argv, root, env, events)
        finally:
            _close_masters(control)
            shutil.rmtree(control, ignore_errors=True)

    def execute(self, argv: list[str], root: Path, env: dict, events: Path) -> dict[int, RunResult]:
        state = events.parent
        deadline = time.monotonic() + self.timeout
        with open(state / "output", "w+b") as out, open(events, encoding="utf-8") as feed:
            try:
                proc = subprocess.Popen(argv, cwd=root, env=env, stdin=subprocess.DEVNULL, stdout=out,
                                        stderr=subprocess.STDOUT, start_new_session=True)
            except OSError as e:
                return {c.run_id: RunResult(ok=False, log=f"!! cannot start ansible-playbook: {e}\n")
                        for c in self.ctxs}
            pending = ""
            killed = False
            while True:
                done = proc.poll() is not None
                if not done and time.monotonic() > deadline:
                    killed = transport.wait(proc, deadline)
                    done = True
                pending = self.follow(pending + feed.read())
                if done:
                    break
                time.sleep(POLL)
            out.seek(0)
            output = out.read().decode(errors="replace")
        return self.results(proc.returncode, killed, output)

    def follow(self, text: str) -> str:
        """Turn complete event lines into log lines; return an unfinished last line, if any."""
        *lines, rest = text.split("\n")
        for line in lines:
            if line.strip():
                try:
                    self.event(json.loads(line))
                except (ValueError, KeyError, TypeError) as e:
                    self.say_all(f"(unreadable event from the callback plugin: {e})")
        return rest

    def event(self, ev: dict) -> None:
        kind = ev.get("event")
        if kind == "play":
            self.say_all(f"PLAY [{ev['play']}]")
        elif kind == "stats":
            self.stats = ev["hosts"]
        elif kind == "result" and ev.get("host") in self.by_host:
            host, status = ev["host"], ev["status"]
            shown = "changed" if status == "ok" and ev.get("changed") else status
            if status == "failed" and ev.get("ignored"):
                shown = "failed (ignored)"
            self.say(host, f"TASK [{ev['task']}] {shown}")
            for fact in ev.get("wall", []):
                for name, value in fact.items():
                    if isinstance(value, dict):
                        merge(self.walls[host], value)
                    else:
                        self.bad_wall[host] = (f"fact {name} is a {type(value).__name__}; facts named "
                                               "crowbar_wall* must be objects")
            if status in ("failed", "unreachable") and not ev.get("ignored"):
                for key in ("stdout", "stderr", "module_stdout", "module_stderr"):
                    if ev.get(key):
                        self.say(host, f"   {key}: {ev[key].rstrip()}")
                line = (f"play {ev['play']!r}, task {ev['task']!r}, host {host!r}: "
                        f"{status}: {ev.get('msg') or '(no message)'}")
                self.failures[host].append(line)
                self.say(host, f"!! {line}")

    def results(self, rc: int | None, killed: bool, output: str) -> dict[int, RunResult]:
        out = {}
        for host, ctx in self.by_host.items():
            stat = self.stats.get(host)
            log = self.logs[host]
            unplayed = stat is None and rc == 0  # no play of the playbook is for this host
            failed = bool(self.failures[host]) or killed or (stat is None and not unplayed) or \
                bool(stat and (stat.get("failures") or stat.get("unreachable")))
            if unplayed:
                log.append(f"<== no play of {ctx.role}.yml matched host {host} (ansible-playbook exited with 0)\n")
            if stat is not None:
                log.append("<== " + " ".join(f"{k}={stat.get(k, 0)}" for k in
                                             ("ok", "changed", "unreachable", "failures", "skipped",
                                              "rescued", "ignored")) + f" (ansible-playbook exited with {rc})\n")
            if host in self.bad_wall and not failed:
                failed = True
                self.failures[host].append(self.bad_wall[host])
            if killed:
                self.failures[host].append(f"ansible-playbook killed: the run exceeded its timeout of "
                                           f"{self.timeout:g} s (attribute crowbar/ansible/timeout)")
            elif failed and not self.failures[host]:
                # Nothing about this host went wrong in a task: the run itself failed (a syntax
                # error, a missing role); its output says why.
                log.append("--- ansible-playbook output ---\n" + output.rstrip("\n") + "\n")
                self.failures[host].append(f"ansible-playbook exited with {rc} before host {host!r} "
                                           "had a result")
            if failed:
                log.append("".join(f"!! {line}\n" for line in self.failures[host][-1:]))
            out[ctx.run_id] = RunResult(ok=not failed, wall={} if failed else self.walls[host], log="".join(log))
        return out

    def inventory(self, known_hosts: Path) -> tuple[dict, dict]:
        """(extra vars common to every host, the inventory with the rest as host vars). The hosts'
        reported SSH host keys are written to a file per host in the directory `known_hosts` and
        checked strictly."""
        shutil.rmtree(known_hosts, ignore_errors=True)
        known_hosts.mkdir(parents=True)
        docs = [c.attrs for c in self.ctxs]
        keys = sorted(set().union(*docs))
        common = {k: docs[0][k] for k in keys if all(k in d and d[k] == docs[0][k] for d in docs)}
        hosts, groups = {}, {}
        for c in self.ctxs:
            hostvars = {k: v for k, v in c.attrs.items() if k not in common}
            hostvars.update(crowbar_node=c.node.name, crowbar_role=c.role, crowbar_run_id=c.run_id,
                            crowbar_noderole_id=c.noderole_id, **connection_vars(c.node, known_hosts / c.node.name))
            python = dig(c.attrs, "crowbar/ansible/python")
            if isinstance(python, str) and python and not c.node.admin:
                hostvars["ansible_python_interpreter"] = python
            hosts[c.node.name] = hostvars
            for group in c.groups or [c.role]:
                groups.setdefault(group, {"hosts": {}})["hosts"][c.node.name] = None
        return common, {"all": {"hosts": hosts, "children": groups}}


def connection_vars(node, known_hosts: Path) -> dict:
    """How Ansible reaches a node: local for the admin node, else SSH by the node's attribs, its
    host key checked as the other jigs check it (transport.SshTarget.host_key_options)."""
    if node.admin:
        return {"ansible_connection": "local", "ansible_python_interpreter": sys.executable}
    target = transport.SshTarget.of(node)
    if target is None:
        return {}
    out = {"ansible_host": target.address, "ansible_port": int(target.port), "ansible_user": str(target.user),
           "ansible_ssh_common_args": " ".join(target.host_key_options(known_hosts))}
    if target.key:
        out["ansible_ssh_private_key_file"] = str(target.key)
    return out


def _unreachable(ctx: RunContext) -> str | None:
    if ctx.node.admin or ctx.node.attr("crowbar/ssh/address"):
        return None
    if transport.route(ctx) == transport.AGENT:
        return (f"node {ctx.node.name} runs the discovery image: the ansible jig needs SSH and Python on "
                "the node (deploy an OS first)")
    return (f"node {ctx.node.name} has no crowbar/ssh/address attribute; set it with "
            f"`crowbar attribs set ssh-address ADDR --node {ctx.node.name}`")


def _ansible_env(state: Path, events: Path, forks: int, control: Path) -> dict[str, str]:
    """Settings by environment (over any ansible.cfg), all of the run's files in its work directory."""
    return {
        "ANSIBLE_CALLBACK_PLUGINS": str(PLUGINS),
        "ANSIBLE_CALLBACKS_ENABLED": "crowbar_events",
        "CROWBAR_ANSIBLE_EVENTS": str(events),
        "ANSIBLE_STDOUT_CALLBACK": "default",
        "ANSIBLE_NOCOLOR": "1",
        "ANSIBLE_FORCE_COLOR": "0",
        "ANSIBLE_HOST_KEY_CHECKING": "True",  # and how, per host: ansible_ssh_common_args (connection_vars)
        "ANSIBLE_RETRY_FILES_ENABLED": "False",
        "ANSIBLE_PIPELINING": "True",
        "ANSIBLE_FORKS": str(max(1, forks)),
        # Debian's, on the OSes Crowbar installs; no discovery round trip per host. A role overrides
        # it with the attribute crowbar/ansible/python.
        "ANSIBLE_PYTHON_INTERPRETER": DEFAULT_PYTHON,
        "ANSIBLE_TRANSFORM_INVALID_GROUP_CHARS": "ignore",  # role names have '-'; groups keep them
        "ANSIBLE_LOCAL_TEMP": str(state / "tmp"),
        "ANSIBLE_SSH_ARGS": ("-o ControlMaster=auto -o ControlPersist=60s "
                             f"-o LogLevel=ERROR -o BatchMode=yes "
                             f"-o ConnectTimeout={CONNECT_TIMEOUT}"),
        # A node busy with 49 other sessions (or a loaded admin server) may answer slowly: wait
        # longer than an interactive session would, and try a dropped connection again.
        "ANSIBLE_TIMEOUT": str(CONNECT_TIMEOUT),
        "ANSIBLE_SSH_RETRIES": "2",
        "ANSIBLE_SSH_CONTROL_PATH_DIR": str(control),
    }


def _close_masters(cp: Path) -> None:
    """End the SSH connection masters the run left behind (ControlPersist), so nothing outlives it."""
    for sock in cp.glob("*"):
        subprocess.run(["ssh", "-o", f"ControlPath={sock}", "-O", "exit", "crowbar-master"],
                       stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
                       timeout=10, check=False)

"""Ansible jig benchmark: one role onto 1, 10 and 50 targets, batched (one ansible-playbook run for
all of them, as the annealer hands a batching jig) against one run per node (the same jig with
batching off, so each noderole is its own ansible-playbook run, 8 at a time: the annealer's workers).

    python benchmarks/ansible_batch.py --targets 1 10 50 [--workers 8] [--forks N] [--modes batched per-node]
                                       [--markdown]

Each target is its own sshd in its own network namespace (a veth pair to this namespace, an
address 10.231.<i>.2), so Ansible opens a real SSH connection per host. The role: three tasks
(write a templated file, run a command, publish a fact to the wall), no fact gathering. Measured
through the annealer on SQLite, from commit to idle. Needs root (namespaces) and ansible-core.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import shutil
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from crowbar import plugins
from crowbar.db.session import Database
from crowbar.engine.annealer import Annealer
from crowbar.jigs.ansible import DEFAULT_FORKS, AnsibleJig, ansible_playbook
from crowbar.services import attribs, bootstrap, catalog, deployments, nodes

BARCLAMP = """\
barclamp: {name: abench, version: "1"}
roles:
  - name: abench
    jig: ansible
    attribs:
      - {name: abench-dir, map: bench_dir}
"""
PLAYBOOK = """\
- hosts: all
  gather_facts: false
  tasks:
    - name: a templated file
      ansible.builtin.copy: {dest: "{{ bench_dir }}/{{ inventory_hostname }}.conf", content: "node {{ crowbar_node }}\\n"}
    - name: a command
      ansible.builtin.command: "true"
      changed_when: false
    - name: publish
      ansible.builtin.set_fact:
        crowbar_wall: {bench: {host: "{{ inventory_hostname }}"}}
"""


class PerNode(AnsibleJig):
    """The ansible jig with batching off: one ansible-playbook run per noderole."""

    batch = False


class Targets:
    """N sshds, each in a network namespace of its own, reached over a veth pair."""

    def __init__(self, n: int, workdir: Path):
        self.n, self.dir = n, workdir
        self.tag = f"cbab{os.getpid() % 10000}"
        self.procs: list[subprocess.Popen] = []
        self.spaces: list[str] = []
        subprocess.run(["ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-f", str(workdir / "host_key")], check=True)
        subprocess.run(["ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-f", str(workdir / "client_key")], check=True)
        (workdir / "authorized_keys").write_text((workdir / "client_key.pub").read_text())
        os.makedirs("/run/sshd", mode=0o755, exist_ok=True)

    def __enter__(self) -> Targets:
        try:
            for i in range(self.n):
                self._start(i)
            for i in range(self.n):
                self._wait(i)
        except BaseException:
            self.__exit__()
            raise
        return self

    def address(self, i: int) -> str:
        return f"10.231.{i}.2"

    def _start(self, i: int) -> None:
        ns, host, peer = f"{self.tag}-{i}", f"{self.tag}h{i}", f"{self.tag}n{i}"
        subprocess.run(["ip", "netns", "add", ns], check=True)
        self.spaces.append(ns)
        for cmd in (["ip", "link", "add", host, "type", "veth", "peer", "name", peer, "netns", ns],
                    ["ip", "addr", "add", f"10.231.{i}.1/24", "dev", host], ["ip", "link", "set", host, "up"],
                    ["ip", "-n", ns, "addr", "add", f"{self.address(i)}/24", "dev", peer],
                    ["ip", "-n", ns, "link", "set", peer, "up"], ["ip", "-n", ns, "link", "set", "lo", "up"]):
            subprocess.run(cmd, check=True, capture_output=True)
        config = self.dir / f"sshd_config.{i}"
        config.write_text(f"""\
ListenAddress {self.address(i)}
Port 22
HostKey {self.dir / "host_key"}
AuthorizedKeysFile {self.dir / "authorized_keys"}
PidFile {self.dir / f"sshd.{i}.pid"}
PermitRootLogin prohibit-password
PasswordAuthentication no
KbdInteractiveAuthentication no
StrictModes no
UsePAM no
MaxStartups 100
""")
        self.procs.append(subprocess.Popen(["ip", "netns", "exec", ns, "/usr/sbin/sshd", "-D", "-e", "-f", str(config)],
                                           stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL))

    def _wait(self, i: int) -> None:
        deadline = time.monotonic() + 20
        while True:
            try:
                socket.create_connection((self.address(i), 22), timeout=1).close()
                return
            except OSError:
                if time.monotonic() > deadline:
                    raise RuntimeError(f"sshd {i} did not start") from None
                time.sleep(0.05)

    def __exit__(self, *exc) -> None:
        for proc in self.procs:
            proc.terminate()
        for proc in self.procs:
            try:
                proc.wait(timeout=5)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()
        for ns in self.spaces:  # deleting the namespace deletes its end of the veth pair, and so both
            subprocess.run(["ip", "netns", "del", ns], check=False, capture_output=True)


def case(n: int, batched: bool, workers: int, forks: int, targets: Targets, tmp: Path) -> dict:
    db = Database(f"sqlite:///{tmp / f'bench-{n}-{batched}-{forks}.db'}")
    bootstrap.prepare(db)
    bc = tmp / "abench"
    (bc / "ansible").mkdir(parents=True, exist_ok=True)
    (bc / "barclamp.yml").write_text(BARCLAMP)
    (bc / "ansible" / "abench.yml").write_text(PLAYBOOK)
    out = tmp / f"out-{n}-{batched}-{forks}"
    out.mkdir()
    with db.session() as s:
        catalog.import_barclamp(s, bc)
        deployments.create_deployment(s, "bench")
        for i in range(n):
            name = f"t{i}.bench.example.com"
            nodes.create_node(s, name)
            for attrib, value in (("ssh-address", targets.address(i)), ("ssh-key", str(targets.dir / "client_key"))):
                attribs.set_on_node(s, attrib, value, name)
            deployments.bind(s, "bench", "abench", name)
        deployments.set_role_data(s, "bench", "abench", {"bench_dir": str(out),
                                                         "crowbar": {"ansible": {"forks": forks}}})
    annealer = Annealer(db, workers=workers)
    annealer.run_until_idle(timeout=600)  # the nodes' own roles first, so that all targets start together
    with db.session() as s:
        deployments.commit(s, "bench")
    with (plugins.registered(plugins.JIGS, "ansible", PerNode) if not batched else contextlib.nullcontext()):
        start = time.perf_counter()
        annealer.run_until_idle(timeout=1800)
        elapsed = time.perf_counter() - start
    annealer.close(drain=0)
    written = len(list(out.iterdir()))
    db.dispose()
    return {"targets": n, "mode": "batched" if batched else "per node", "workers": workers, "forks": forks,
            "seconds": round(elapsed, 2), "per_target": round(elapsed / n, 3), "ok": written == n}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--targets", type=int, nargs="+", default=[1, 10, 50])
    parser.add_argument("--workers", type=int, default=8, help="annealer workers (per-node runs at once)")
    parser.add_argument("--forks", type=int, default=DEFAULT_FORKS,
                        help="crowbar/ansible/forks: hosts one run works on at once")
    parser.add_argument("--modes", nargs="+", choices=["batched", "per-node"], default=["batched", "per-node"])
    parser.add_argument("--markdown", action="store_true")
    args = parser.parse_args()
    if os.geteuid() != 0 or ansible_playbook() is None or not shutil.which("ip"):
        sys.exit("needs root (network namespaces), iproute2 and ansible-core")
    results = []
    with tempfile.TemporaryDirectory() as tmpdir:
        tmp = Path(tmpdir)
        with Targets(max(args.targets), tmp) as targets:
            for n in args.targets:
                for batched in [m == "batched" for m in args.modes]:
                    result = case(n, batched, args.workers, args.forks, targets, tmp)
                    results.append(result)
                    print(json.dumps(result), flush=True)
    if args.markdown and len(args.modes) == 2:
        print("\n| targets | batched (s) | per node (s) | speed-up |\n|---|---|---|---|")
        for n in args.targets:
            b = next(r for r in results if r["targets"] == n and r["mode"] == "batched")
            p = next(r for r in results if r["targets"] == n and r["mode"] == "per node")
            print(f"| {n} | {b['seconds']} | {p['seconds']} | {p['seconds'] / b['seconds']:.1f}x |")


if __name__ == "__main__":
    main()

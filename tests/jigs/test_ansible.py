"""The ansible jig for real: ansible-playbook against a real sshd on loopback (every "node" here is a
name for the same sshd), alone and through the annealer, which hands it a whole batch at once."""

from __future__ import annotations

import time
from pathlib import Path

import pytest
from sqlalchemy import select

from crowbar.db.models import Node, NodeRole, Role, Run
from crowbar.engine.annealer import Annealer
from crowbar.jigs.ansible import AnsibleJig, ansible_playbook
from crowbar.jigs.base import NodeInfo, RunContext
from crowbar.services import attribs, catalog, deployments, nodes

pytestmark = pytest.mark.skipif(ansible_playbook() is None, reason="ansible-playbook missing (pip install ansible-core)")

WRITE = """\
- name: write a file per host
  hosts: all
  gather_facts: false
  tasks:
    - name: write
      ansible.builtin.copy:
        dest: "{{ out_dir }}/{{ crowbar_node }}"
        content: "{{ greeting }} {{ shared }}"
    - name: publish
      ansible.builtin.set_fact:
        crowbar_wall: {seen: {greeting: "{{ greeting }}", node: "{{ crowbar_node }}"}}
    - name: publish more
      ansible.builtin.set_fact:
        crowbar_wall_more: {seen: {more: true}}
"""

FAIL_ON_N2 = """\
- name: the play
  hosts: all
  gather_facts: false
  tasks:
    - name: fine everywhere
      ansible.builtin.command: "true"
    - name: breaks on n2
      ansible.builtin.fail:
        msg: "n2 is broken"
      when: crowbar_node == "n2.example.com"
"""


def _ctx(tmp_path: Path, i: int, node: NodeInfo, attrs: dict, playbook: str, role: str = "w",
         output=None) -> RunContext:
    workdir = tmp_path / f"run-{i}"
    workdir.mkdir()
    return RunContext(run_id=i, noderole_id=100 + i, node=node, role=role, jig="ansible", attrs=attrs,
                      scripts=[{"name": f"{role}.yml", "content": playbook}], workdir=workdir,
                      output=output or (lambda _t: None))


def _node(i: int, ssh: dict) -> NodeInfo:
    return NodeInfo(id=i, name=f"n{i}.example.com", admin=False, attrs=ssh)


def test_one_run_for_a_batch_each_host_its_own_wall_and_log(tmp_path, sshd):
    out = tmp_path / "out"
    out.mkdir()
    streamed: dict[int, list[str]] = {1: [], 2: [], 3: []}
    ctxs = [_ctx(tmp_path, i, _node(i, sshd), {"greeting": f"hello-{i}", "shared": "same", "out_dir": str(out)},
                 WRITE, output=streamed[i].append) for i in (1, 2, 3)]
    results = AnsibleJig().run_batch(ctxs)
    for i, result in zip((1, 2, 3), results):
        assert result.ok, result.log
        assert (out / f"n{i}.example.com").read_text() == f"hello-{i} same"
        assert result.wall == {"seen": {"greeting": f"hello-{i}", "node": f"n{i}.example.com", "more": True}}
        assert "ansible-playbook w.yml on 3 host(s)" in result.log   # one run for the three
        assert "TASK [write] changed" in result.log
        assert "".join(streamed[i]) in result.log and "TASK [publish] ok" in "".join(streamed[i])
        assert "ok=3 changed=1 unreachable=0 failures=0" in result.log
    # the common key went in as an extra var, the differing ones as host vars
    assert '"shared": "same"' in (tmp_path / "run-1" / ".crowbar" / "vars.json").read_text()


def test_a_failure_names_play_task_host_and_message_and_fails_only_that_host(tmp_path, sshd):
    ctxs = [_ctx(tmp_path, i, _node(i, sshd), {}, FAIL_ON_N2) for i in (1, 2)]
    ok, bad = AnsibleJig().run_batch(ctxs)
    assert ok.ok, ok.log
    assert not bad.ok and bad.wall == {}
    last = bad.log.strip().splitlines()[-1]   # the annealer's noderole status is the last line
    assert last == "!! play 'the play', task 'breaks on n2', host 'n2.example.com': failed: n2 is broken"
    assert "TASK [breaks on n2] skipped" in ok.log


def test_a_broken_playbook_fails_every_host_with_ansibles_words(tmp_path, sshd):
    ctxs = [_ctx(tmp_path, i, _node(i, sshd), {}, "- hosts: all\n  tasks: [ {name: x, no_such_module: {}} ]\n")
            for i in (1, 2)]
    for result in AnsibleJig().run_batch(ctxs):
        assert not result.ok
        assert "--- ansible-playbook output ---" in result.log
        assert "no_such_module" in result.log
        assert result.log.strip().splitlines()[-1].startswith("!! ansible-playbook exited with")


def test_an_unreachable_host_and_a_node_without_address(tmp_path, sshd):
    dead = {"crowbar": {"ssh": {**sshd["crowbar"]["ssh"], "port": 1}}}
    ctxs = [_ctx(tmp_path, 1, _node(1, sshd), {}, FAIL_ON_N2), _ctx(tmp_path, 2, _node(2, dead), {}, FAIL_ON_N2),
            _ctx(tmp_path, 3, _node(3, {}), {}, FAIL_ON_N2)]
    good, unreachable, nowhere = AnsibleJig().run_batch(ctxs)
    assert good.ok, good.log
    assert not unreachable.ok and "host 'n2.example.com': unreachable:" in unreachable.log
    assert not nowhere.ok and "has no crowbar/ssh/address" in nowhere.log


def test_the_timeout_kills_the_run(tmp_path, sshd):
    playbook = "- hosts: all\n  gather_facts: false\n  tasks: [{name: wait, ansible.builtin.command: sleep 60}]\n"
    ctx = _ctx(tmp_path, 1, _node(1, sshd), {"crowbar": {"ansible": {"timeout": 3}}}, playbook)
    start = time.monotonic()
    result = AnsibleJig().run(ctx)
    assert time.monotonic() - start < 30
    assert not result.ok
    assert "killed: the run exceeded its timeout of 3 s" in result.log


# -- through the annealer, on both engines --------------------------------------------------------
BARCLAMP = """\
barclamp: {name: ab, version: "1"}
roles:
  - name: ab-writer
    jig: ansible
    attribs:
      - {name: ab-out, map: out_dir}
      - {name: ab-greeting, map: greeting, default: hi}
      - {name: ab-slow, map: slow, default: 0}
      - {name: ab-seen, map: seen}
  - name: ab-reader
    jig: ansible
    requires: [ab-writer]
    wants-attribs: [ab-seen]
"""

WRITER = """\
- hosts: all
  gather_facts: false
  tasks:
    - name: first
      ansible.builtin.command: "sleep {{ slow }}"
    - name: write
      ansible.builtin.copy: {dest: "{{ out_dir }}/{{ crowbar_node }}", content: "{{ greeting }}"}
    - name: publish
      ansible.builtin.set_fact:
        crowbar_wall: {seen: {by: "{{ crowbar_node }}", greeting: "{{ greeting }}"}}
"""

READER = """\
- hosts: all
  gather_facts: false
  tasks:
    - name: publish what was read
      ansible.builtin.set_fact:
        crowbar_wall: {read: "{{ seen.by }} said {{ seen.greeting }}"}
"""


def _barclamp(tmp_path: Path) -> Path:
    d = tmp_path / "ab"
    (d / "ansible").mkdir(parents=True)
    (d / "barclamp.yml").write_text(BARCLAMP)
    (d / "ansible" / "ab-writer.yml").write_text(WRITER)
    (d / "ansible" / "ab-reader.yml").write_text(READER)
    return d


def _setup(db, tmp_path, sshd, names: list[str], out: Path, slow: int = 0) -> None:
    ssh = sshd["crowbar"]["ssh"]
    with db.session() as s:
        catalog.import_barclamp(s, _barclamp(tmp_path))
        deployments.create_deployment(s, "d1")
        for name in names:
            nodes.create_node(s, name)
            for attrib, value in (("ssh-address", ssh["address"]), ("ssh-port", ssh["port"]),
                                  ("ssh-user", ssh["user"]), ("ssh-key", ssh["key"]),
                              ("ssh-host-keys", ssh["host_keys"])):
                attribs.set_on_node(s, attrib, value, name)
            deployments.bind(s, "d1", "ab-writer", name)  # first: a reader would bind n1's writer everywhere
            deployments.bind(s, "d1", "ab-reader", name)
        deployments.set_role_data(s, "d1", "ab-writer", {"out_dir": str(out), "greeting": "hey", "slow": slow})
    # The nodes' own roles (system deployment) run first; d1 is committed once they are done, so that
    # all of its writers are runnable at the same moment (a batch is what is runnable at a claim).
    _anneal(db, timeout=60)
    with db.session() as s:
        deployments.commit(s, "d1")


def _anneal(db, timeout: float) -> None:
    annealer = Annealer(db, workers=2)
    try:
        annealer.run_until_idle(timeout=timeout)
    finally:
        annealer._pool.shutdown(wait=True)


def _runs(s, role: str) -> list[tuple[Run, NodeRole, str]]:
    return list(s.execute(select(Run, NodeRole, Node.name).join(NodeRole, NodeRole.id == Run.node_role_id)
                          .join(Node, Node.id == NodeRole.node_id).join(Role, Role.id == NodeRole.role_id)
                          .where(Role.name == role).order_by(Run.id)).all())


def test_the_annealer_hands_a_whole_role_to_one_run_and_facts_reach_children(db, tmp_path, sshd):
    names = [f"n{i}.example.com" for i in range(1, 5)]
    out = tmp_path / "out"
    out.mkdir()
    _setup(db, tmp_path, sshd, names, out)
    _anneal(db, timeout=300)
    with db.session() as s:
        writers, readers = _runs(s, "ab-writer"), _runs(s, "ab-reader")
        assert len(writers) == len(readers) == 4   # one run row per noderole
        for run, nr, node in writers:
            assert nr.state == "active", run.log
            assert "ansible-playbook ab-writer.yml on 4 host(s)" in run.log  # ... but one playbook run
            assert nr.wall == {"seen": {"by": node, "greeting": "hey"}}
            assert (out / node).read_text() == "hey"
        for run, nr, node in readers:
            assert nr.state == "active", run.log
            assert "on 4 host(s)" in run.log
            assert run.attrs["seen"] == {"by": node, "greeting": "hey"}   # injected from the parent's wall
            assert nr.wall == {"read": f"{node} said hey"}             # and seen by the child's playbook


def test_the_run_log_streams_while_the_playbook_runs(db, tmp_path, sshd):
    out = tmp_path / "out"
    out.mkdir()
    _setup(db, tmp_path, sshd, ["n1.example.com"], out, slow=4)
    annealer = Annealer(db, workers=2)
    annealer.register()
    seen_while_running = []
    try:
        deadline = time.monotonic() + 120
        while time.monotonic() < deadline:
            annealer.step()
            with db.session() as s:
                rows = _runs(s, "ab-writer")
                if rows and rows[0][0].state == "running" and "PLAY [" in rows[0][0].log:
                    seen_while_running.append(rows[0][0].log)
                if rows and rows[0][0].state != "running":
                    break
            time.sleep(0.2)
        annealer.run_until_idle(timeout=120)
    finally:
        annealer._pool.shutdown(wait=True)
    assert seen_while_running, "nothing of the log was visible while the run went"
    assert "ab-writer.yml on 1 host(s)" in seen_while_running[0]
    assert "TASK [write]" not in seen_while_running[0]   # it really was the middle of the run
    with db.session() as s:
        (run, nr, _node_name), = _runs(s, "ab-writer")
        assert nr.state == "active" and "TASK [write] changed" in run.log, run.log


def test_a_batch_jig_crash_fails_each_noderole_of_the_batch(db, tmp_path, sshd, monkeypatch):
    out = tmp_path / "out"
    out.mkdir()
    _setup(db, tmp_path, sshd, ["n1.example.com", "n2.example.com"], out)
    calls = []

    def boom(self, ctxs):
        calls.append(len(ctxs))
        raise RuntimeError("exploded")

    monkeypatch.setattr(AnsibleJig, "run_batch", boom)
    _anneal(db, timeout=60)
    assert calls == [2]
    with db.session() as s:
        for run, nr, _node_name in _runs(s, "ab-writer"):
            assert nr.state == "error" and "jig ansible crashed: RuntimeError: exploded" in run.log



def test_a_host_no_play_is_for_succeeds_and_says_so(tmp_path, sshd):
    playbook = ("- hosts: other-group\n  gather_facts: false\n  tasks: [{name: x, ansible.builtin.command: 'true'}]\n"
                "- hosts: all\n  gather_facts: false\n  tasks: [{name: y, ansible.builtin.command: 'true'}]\n")
    only_other = "- hosts: other-group\n  gather_facts: false\n  tasks: [{name: x, ansible.builtin.command: 'true'}]\n"
    ctx = _ctx(tmp_path, 1, _node(1, sshd), {}, playbook)
    assert AnsibleJig().run(ctx).ok
    result = AnsibleJig().run(_ctx(tmp_path, 2, _node(2, sshd), {}, only_other))
    assert result.ok and "no play of w.yml matched host n2.example.com" in result.log


def test_a_host_whose_key_differs_from_the_reported_one_is_unreachable(tmp_path, sshd):
    import subprocess
    subprocess.run(["ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-f", str(tmp_path / "other")], check=True)
    other = " ".join((tmp_path / "other.pub").read_text().split()[:2])
    # three addresses of the one sshd, so that no SSH connection is shared between the hosts
    liar = {"crowbar": {"ssh": {**sshd["crowbar"]["ssh"], "address": "127.0.0.2", "host_keys": [other]}}}
    trusting = {"crowbar": {"ssh": {k: v for k, v in sshd["crowbar"]["ssh"].items() if k != "host_keys"}}}
    trusting["crowbar"]["ssh"]["address"] = "127.0.0.3"
    ctxs = [_ctx(tmp_path, 1, _node(1, sshd), {}, FAIL_ON_N2), _ctx(tmp_path, 2, _node(2, liar), {}, FAIL_ON_N2),
            _ctx(tmp_path, 3, _node(3, trusting), {}, FAIL_ON_N2)]
    good, refused, first_use = AnsibleJig().run_batch(ctxs)
    assert good.ok, good.log
    assert not refused.ok and "host 'n2.example.com': unreachable:" in refused.log
    assert "Host key verification failed" in refused.log, refused.log
    assert first_use.ok, first_use.log
    known = tmp_path / "run-1" / ".crowbar" / "known_hosts"
    assert sshd["crowbar"]["ssh"]["host_keys"][0] in (known / "n1.example.com").read_text()
    assert other in (known / "n2.example.com").read_text()

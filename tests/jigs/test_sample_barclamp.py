"""The sample barclamp (samples/barclamps/webhello) wraps an ordinary Ansible role: run plainly with
`ansible-playbook -e @vars.yml` and through Crowbar with the same variables, it gives the same
result; and the fact its playbook publishes reaches the child role's playbook."""

from __future__ import annotations

import contextlib
import os
import signal
import socket
import subprocess
import time
import urllib.request
from pathlib import Path

import pytest
import yaml
from sqlalchemy import select

from crowbar.db.models import Node, NodeRole, Role, Run
from crowbar.engine.annealer import Annealer
from crowbar.jigs.ansible import ansible_playbook
from crowbar.services import attribs, catalog, deployments, nodes

SAMPLE = Path(__file__).resolve().parents[2] / "samples" / "barclamps" / "webhello"
NODE = "web1.example.com"

pytestmark = pytest.mark.skipif(ansible_playbook() is None, reason="ansible-playbook missing (pip install ansible-core)")


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _variables(tmp_path: Path) -> dict:
    variables = yaml.safe_load((SAMPLE / "vars.yml").read_text())
    # This machine's busybox comes from busybox-static (the Makefile's); the service's own files
    # and port are the test's.
    variables.update(webhello_package="busybox-static", webhello_dir=str(tmp_path / "srv" / "webhello"),
                     webhello_port=_free_port(), webhello_message="Hello from a test")
    return variables


def _result(variables: dict) -> dict:
    """What the role made: its files and what the service answers."""
    d = Path(variables["webhello_dir"])
    with urllib.request.urlopen(f"http://127.0.0.1:{variables['webhello_port']}/", timeout=10) as r:
        page = r.read().decode()
    return {"conf": (d / "httpd.conf").read_text(), "index": (d / "www" / "index.html").read_text(), "page": page}


def _stop(variables: dict) -> None:
    """Stop the service the role started (by the pid in its pid file) and remove its files."""
    pidfile = Path(variables["webhello_dir"]) / "webhello.pid"
    if pidfile.exists():
        pid = int(pidfile.read_text())
        with contextlib.suppress(ProcessLookupError):
            os.kill(pid, signal.SIGTERM)
        deadline = time.monotonic() + 10
        while Path(f"/proc/{pid}").exists() and time.monotonic() < deadline:
            time.sleep(0.05)
    subprocess.run(["rm", "-rf", variables["webhello_dir"]], check=True)


def test_plain_ansible_and_crowbar_give_the_same_result(sqlite_db, tmp_path, sshd):
    db = sqlite_db  # one engine: the engines are the batching tests' business; this one is slow
    ssh = sshd["crowbar"]["ssh"]
    variables = _variables(tmp_path)
    # 1. Without Crowbar: an operator's inventory line and the vars file.
    (tmp_path / "inventory").write_text(
        f"{NODE} ansible_host={ssh['address']} ansible_port={ssh['port']} ansible_user={ssh['user']} "
        f"ansible_ssh_private_key_file={ssh['key']} ansible_python_interpreter=/usr/bin/python3\n")
    (tmp_path / "vars.yml").write_text(yaml.safe_dump(variables))
    env = {**os.environ, "ANSIBLE_HOST_KEY_CHECKING": "False", "ANSIBLE_NOCOLOR": "1",
           "ANSIBLE_LOCAL_TEMP": str(tmp_path / "ansible-tmp"), "ANSIBLE_HOME": str(tmp_path / "ansible-home")}
    try:
        plain = subprocess.run([ansible_playbook(), "-i", str(tmp_path / "inventory"), "-e",
                                f"@{tmp_path / 'vars.yml'}", "webhello.yml"], cwd=SAMPLE / "ansible", env=env,
                               capture_output=True, text=True, timeout=300)
        assert plain.returncode == 0, plain.stdout + plain.stderr
        without = _result(variables)
    finally:
        _stop(variables)
    assert "Hello from a test" in without["page"]

    # 2. Through Crowbar: the same variables as the deployment's role data.
    with db.session() as s:
        catalog.import_barclamp(s, SAMPLE)
        nodes.create_node(s, NODE)
        for attrib, value in (("ssh-address", ssh["address"]), ("ssh-port", ssh["port"]),
                              ("ssh-user", ssh["user"]), ("ssh-key", ssh["key"]),
                              ("ssh-host-keys", ssh["host_keys"])):
            attribs.set_on_node(s, attrib, value, NODE)
        deployments.create_deployment(s, "web")
        deployments.bind(s, "web", "webhello-check", NODE)   # binds webhello, which it requires, too
        deployments.set_role_data(s, "web", "webhello", variables)
        deployments.commit(s, "web")
    annealer = Annealer(db, workers=2)
    try:
        annealer.run_until_idle(timeout=300)
        with db.session() as s:
            rows = {role: (nr, run) for nr, run, role in s.execute(
                select(NodeRole, Run, Role.name).join(Run, Run.node_role_id == NodeRole.id)
                .join(Role, Role.id == NodeRole.role_id).join(Node, Node.id == NodeRole.node_id)
                .where(Node.name == NODE, Role.name.in_(["webhello", "webhello-check"])))}
            for role in ("webhello", "webhello-check"):
                nr, run = rows[role]
                assert nr.state == "active", run.log
            web, check = rows["webhello"], rows["webhello-check"]
            url = f"http://{ssh['address']}:{variables['webhello_port']}/"
            assert web[0].wall == {"webhello_url": url}                    # published by the playbook
            assert check[1].attrs["webhello_url"] == url                   # injected into the child
            assert check[0].wall == {"webhello_seen": "<html><body>Hello from a test</body></html>"}
        assert _result(variables) == without
    finally:
        annealer._pool.shutdown(wait=True)
        _stop(variables)

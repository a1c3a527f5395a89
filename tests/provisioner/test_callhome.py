"""crowbar-callhome, the installed system's call home (crowbar/agent/installed), run against a small
HTTP server on loopback that answers as the Crowbar server does: the posts it sends, in order.
The real script on a real installed system is proven in tests/lab/test_lab_deploy.py."""

import importlib.machinery
import importlib.util
from pathlib import Path

import pytest

from tests.jsonserver import JsonServer

SCRIPT = Path(__file__).resolve().parents[2] / "crowbar" / "agent" / "installed" / "crowbar-callhome"


def load_callhome():
    loader = importlib.machinery.SourceFileLoader("crowbar_callhome", str(SCRIPT))
    spec = importlib.util.spec_from_loader("crowbar_callhome", loader)
    module = importlib.util.module_from_spec(spec)
    loader.exec_module(module)
    return module


class Node:
    """The node's lifecycle as the server keeps it; `takes_ready_from_installed`: this server takes
    a `ready` straight from installed (an older one keeps the node installed)."""

    def __init__(self, takes_ready_from_installed: bool):
        self.state = "installed"
        self.takes_ready_from_installed = takes_ready_from_installed

    def answer(self, body: dict) -> dict:
        step = body["step"]
        if step == "booted" and self.state == "installed":
            self.state = "readying"
        elif step == "ready" and (self.state == "readying" or
                                  (self.state == "installed" and self.takes_ready_from_installed)):
            self.state = "ready"
        return {"node": "n1", "state": self.state}


@pytest.fixture
def callhome(tmp_path, monkeypatch):
    servers = []

    def run(takes_ready_from_installed: bool, sshd: list[bool]):
        node = Node(takes_ready_from_installed)
        server = JsonServer(node.answer)
        server.node = node
        servers.append(server)
        module = load_callhome()
        conf = tmp_path / "node.conf"
        conf.write_text(f"URL={server.url}/\nTOKEN=tok-1\n")
        monkeypatch.setattr(module, "CONF", str(conf))
        answers = iter(sshd)
        monkeypatch.setattr(module, "sshd_answers", lambda timeout=120: next(answers))
        monkeypatch.setattr(module, "host_keys", lambda: ["ssh-ed25519 AAAAkey"])
        module.main()
        return server

    run.servers = servers
    yield run
    for server in servers:
        server.close()


def test_sshd_answering_at_once_is_one_ready_post(callhome):
    server = callhome(True, sshd=[True])
    assert [p["body"]["step"] for p in server.posts] == ["ready"]
    post = server.posts[0]
    assert post["path"] == "/api/v2/agent/booted" and post["auth"] == "Bearer tok-1"
    assert post["body"]["host_keys"] == ["ssh-ed25519 AAAAkey"] and post["body"]["boot_id"]
    assert server.node.state == "ready"


def test_an_older_server_that_keeps_it_installed_gets_the_two_steps(callhome):
    server = callhome(False, sshd=[True, True])
    assert [p["body"]["step"] for p in server.posts] == ["ready", "booted", "ready"]
    assert server.node.state == "ready"


def test_sshd_not_up_yet_posts_booted_then_ready_once_it_answers(callhome):
    server = callhome(True, sshd=[False, True])
    assert [p["body"]["step"] for p in server.posts] == ["booted", "ready"]
    assert server.node.state == "ready"


def test_sshd_that_never_answers_is_reported_as_failed(callhome):
    with pytest.raises(SystemExit) as exited:
        callhome(True, sshd=[False, False])
    assert exited.value.code == 1
    posts = [p["body"] for p in callhome.servers[0].posts]
    assert [body["step"] for body in posts] == ["booted", "failed"] and "sshd" in posts[1]["reason"]
    assert callhome.servers[0].node.state == "readying"

"""crowbar-callhome, the installed system's call home (crowbar/agent/installed), run against a small
HTTP server on loopback that answers as the Crowbar server does: the posts it sends, in order.
The real script on a real installed system is proven in tests/lab/test_lab_deploy.py."""

import importlib.machinery
import importlib.util
import json
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import pytest

SCRIPT = Path(__file__).resolve().parents[2] / "crowbar" / "agent" / "installed" / "crowbar-callhome"


def load_callhome():
    loader = importlib.machinery.SourceFileLoader("crowbar_callhome", str(SCRIPT))
    spec = importlib.util.spec_from_loader("crowbar_callhome", loader)
    module = importlib.util.module_from_spec(spec)
    loader.exec_module(module)
    return module


class Server:
    """Answers POST /api/v2/agent/booted with the node's state as `takes_ready_from_installed` says."""

    def __init__(self, takes_ready_from_installed: bool):
        self.posts: list[tuple[str, dict]] = []
        self.state = "installed"
        outer = self

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self):
                body = json.loads(self.rfile.read(int(self.headers["Content-Length"])))
                outer.posts.append((self.headers["Authorization"], body))
                step = body["step"]
                if step == "booted" and outer.state == "installed":
                    outer.state = "readying"
                elif step == "ready" and (outer.state == "readying" or
                                          (outer.state == "installed" and takes_ready_from_installed)):
                    outer.state = "ready"
                data = json.dumps({"node": "n1", "state": outer.state}).encode()
                self.send_response(200)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(data)))
                self.end_headers()
                self.wfile.write(data)

            def log_message(self, *args):
                pass

        self.httpd = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.httpd.server_address[1]}"
        threading.Thread(target=self.httpd.serve_forever, daemon=True).start()

    def close(self):
        self.httpd.shutdown()
        self.httpd.server_close()


@pytest.fixture
def callhome(tmp_path, monkeypatch):
    servers = []

    def run(takes_ready_from_installed: bool, sshd: list[bool]):
        server = Server(takes_ready_from_installed)
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
    assert [body["step"] for _, body in server.posts] == ["ready"]
    auth, body = server.posts[0]
    assert auth == "Bearer tok-1" and body["host_keys"] == ["ssh-ed25519 AAAAkey"] and body["boot_id"]
    assert server.state == "ready"


def test_an_older_server_that_keeps_it_installed_gets_the_two_steps(callhome):
    server = callhome(False, sshd=[True, True])
    assert [body["step"] for _, body in server.posts] == ["ready", "booted", "ready"]
    assert server.state == "ready"


def test_sshd_not_up_yet_posts_booted_then_ready_once_it_answers(callhome):
    server = callhome(True, sshd=[False, True])
    assert [body["step"] for _, body in server.posts] == ["booted", "ready"]
    assert server.state == "ready"


def test_sshd_that_never_answers_is_reported_as_failed(callhome):
    with pytest.raises(SystemExit) as exited:
        callhome(True, sshd=[False, False])
    assert exited.value.code == 1
    posts = [body for _, body in callhome.servers[0].posts]
    assert [body["step"] for body in posts] == ["booted", "failed"] and "sshd" in posts[1]["reason"]
    assert callhome.servers[0].state == "readying"

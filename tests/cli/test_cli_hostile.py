"""Hostile and broken input to the real `crowbar` command (a subprocess, so a traceback would show).

The rule for every command: exit non-zero with exactly one readable `error: ...` line on stderr,
no "Traceback", nothing on stdout, and nothing written half-way. The inputs: endpoints that are
not URLs or reach no Crowbar (nothing listening, a unix socket that is not there, a server that
answers HTML, plain text, the wrong JSON, a redirect, paging that leaves the API or never ends, a
connection closed mid-answer), bad tokens, bad arguments (unknown formats, out-of-range, huge and
non-numeric numbers, ~128 KiB arguments, bytes that are not UTF-8, names with / ? # . ..), bad
files (missing, a directory, unreadable, binary, too big, YAML alias bombs and cycles), database
URLs and directories for `db upgrade` and `server`, Ctrl-C during a request, a closed stdout.

Servers: one real `crowbar server` for the module (the e2e fixtures, tests/e2e/conftest.py, loaded
by path as tests/network_db does) and a tiny http.server on loopback that answers what no Crowbar
server would, chosen by the first segment of the endpoint's path.
"""

from __future__ import annotations

import json
import os
import signal
import socket
import sqlite3
import subprocess
import sys
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import pytest

pytestmark = pytest.mark.e2e

from e2e_fixtures import e2e  # noqa: E402  (tests/e2e_fixtures.py)

NOT_UTF8 = os.fsdecode(b"\xff\xfe-node")  # passed to the child as the raw bytes ff fe
BIG = "a" * 120_000  # an argument near Linux's limit for one (MAX_ARG_STRLEN, 128 KiB); 10 MB cannot be passed
ROOT_READS_ALL = "the tests run as root, and root reads a file without read permission"
DESCRIPTION = "日本語 [/] [red]not markup\x1b[2J\x07"  # rich markup and a terminal escape, as data


def one_line_failure(r, code: int | None = None, words: tuple[str, ...] = ()) -> str:
    """The contract (e2e's one_error_line: exit != 0, or == code; one `error:` line on stderr; no
    traceback), and more: a readable line (short enough, no control characters), empty stdout."""
    line = e2e.one_error_line(r, code)
    assert len(line) <= 2100, f"the error line is not readable ({len(line)} characters)"
    assert line.isprintable(), f"control characters in the error line:\n{r}"
    assert r.stdout == "", str(r)
    for word in words:
        assert word in line, f"{word!r} missing from the error line:\n{r}"
    return line


# -- a server that answers what Crowbar never would -----------------------------------------------
class _QuietServer(ThreadingHTTPServer):
    def handle_error(self, request, client_address):
        if not isinstance(sys.exc_info()[1], OSError):  # a client that hung up (Ctrl-C) is expected
            super().handle_error(request, client_address)


class Fake:
    """Answers by the first path segment (the endpoint is http://127.0.0.1:PORT/<mode>)."""

    def __init__(self):
        self.received = threading.Event()  # a request reached /slow
        self.release = threading.Event()   # let /slow answer
        fake = self

        class Handler(BaseHTTPRequestHandler):
            def log_message(self, *args):
                pass

            def do_GET(self):
                fake.answer(self)

            do_POST = do_PUT = do_PATCH = do_DELETE = do_GET

        self.httpd = _QuietServer(("127.0.0.1", 0), Handler)
        self.httpd.daemon_threads = True
        self.port = self.httpd.server_address[1]
        self.thread = threading.Thread(target=self.httpd.serve_forever, name="fake-http", daemon=True)
        self.thread.start()

    def url(self, mode: str) -> str:
        return f"http://127.0.0.1:{self.port}/{mode}"

    def answer(self, h: BaseHTTPRequestHandler) -> None:
        mode = h.path.split("/")[1]
        length = int(h.headers.get("content-length") or 0)
        if length:
            h.rfile.read(length)
        if mode == "slow":
            self.received.set()
            self.release.wait(60)
            return self.send(h, 200, "application/json", '{"items": [], "next": null}')
        if mode == "close":
            h.close_connection = True
            return
        if mode == "garbage":
            h.wfile.write(b"hello there\r\n\r\n")
            h.close_connection = True
            return
        page = "<html><head><title>oops</title></head>\n<body>\n" + "<p>Internal error</p>\n" * 200 + "</body></html>"
        answers = {
            "html200": (200, "text/html", "<html><body>Welcome to nginx!</body></html>"),
            "html500": (500, "text/html", page),
            "text500": (500, "text/plain", "Internal Server Error"),
            "notcrowbar": (200, "application/json", '{"hello": "world"}'),
            "jsonlist404": (404, "application/json", '["not", "an", "error", "body"]'),
            "offsite": (200, "application/json",
                        '{"items": [{"id": 1}], "next": "http://203.0.113.9/api/v2/nodes?marker=1"}'),
            "loop": (200, "application/json", '{"items": [{"id": 1}], "next": "/loop/api/v2/nodes?marker=1"}'),
            "badstates": (200, "application/json", '{"discovered": 1}'),
        }
        if mode == "redirect":
            h.send_response(307)
            h.send_header("location", "https://crowbar.example/api/v2/nodes")
            h.send_header("content-length", "0")
            h.end_headers()
            return
        self.send(h, *answers.get(mode, (404, "text/plain", "no such mode")))

    @staticmethod
    def send(h, status: int, kind: str, body: str) -> None:
        data = body.encode()
        h.send_response(status)
        h.send_header("content-type", kind)
        h.send_header("content-length", str(len(data)))
        h.end_headers()
        h.wfile.write(data)

    def close(self) -> None:
        self.release.set()
        self.httpd.shutdown()
        self.httpd.server_close()


@pytest.fixture
def unused_port() -> int:
    return e2e.free_port()


@pytest.fixture(scope="module")
def fake():
    f = Fake()
    yield f
    f.close()


@pytest.fixture(scope="module")
def server(tmp_path_factory):
    """One real server for the module, with a node and a deployment the cases must not harm."""
    factory = e2e.Servers(tmp_path_factory.mktemp("hostile-cli"))
    try:
        s = factory.new()
        s.ok("nodes", "create", "n1.hostile.test", "--description", DESCRIPTION)
        s.ok("deployments", "create", "victim")
        yield s
    finally:
        factory.close()


@pytest.fixture(scope="module")
def files(tmp_path_factory) -> dict[str, Path]:
    d = tmp_path_factory.mktemp("hostile-files")
    (d / "binary.yaml").write_bytes(b"\xff\xfe\x00\x01 not text")
    (d / "empty-dir").mkdir()
    laughs = ['a: &a ["lol", "lol", "lol", "lol", "lol", "lol", "lol", "lol", "lol"]']
    for prev, name in zip("abcdefgh", "bcdefghi"):
        laughs.append(f"{name}: &{name} [" + ", ".join([f"*{prev}"] * 9) + "]")
    (d / "bomb.yaml").write_text("\n".join(laughs) + "\n")
    (d / "cycle.yaml").write_text("&a [*a]\n")
    (d / "deep.yaml").write_text("[" * 50_000 + "]" * 50_000 + "\n")
    (d / "nan.yaml").write_text("networks: {}\nweird: .nan\n")
    (d / "date.yaml").write_text("networks: {}\nwhen: 2024-01-01\n")
    (d / "ports.yaml").write_text("- {1: 2, Name: x}\n")
    unreadable = d / "unreadable.yaml"
    unreadable.write_text("networks: {}\n")
    unreadable.chmod(0)
    return {p.stem if p.is_file() else p.name: p for p in d.iterdir()}


# -- the table ----------------------------------------------------------------------------------
# (case id, args, environment changes, exit code or None, words the error line must contain).
# "{fake:MODE}" in the environment is the fake server's URL for MODE.
ENDPOINT_CASES = [
    ("ipv6-unclosed", ("nodes", "list"), {"CROWBAR_ENDPOINT": "http://[::1"}, 1, ("http://[::1", "not a valid URL")),
    ("port-out-of-range", ("nodes", "list"), {"CROWBAR_ENDPOINT": "http://127.0.0.1:99999"}, 1, ("Port",)),
    ("port-not-a-number", ("nodes", "list"), {"CROWBAR_ENDPOINT": "http://127.0.0.1:http"}, 1, ("Port",)),
    ("wrong-scheme", ("nodes", "list"), {"CROWBAR_ENDPOINT": "ftp://127.0.0.1/"}, 1, ("ftp",)),
    ("no-host", ("nodes", "list"), {"CROWBAR_ENDPOINT": "http://:3000"}, 1, ("no host",)),
    ("unix-no-path", ("nodes", "list"), {"CROWBAR_ENDPOINT": "unix:"}, 1, ("no socket path",)),
    ("query-in-endpoint", ("nodes", "list"), {"CROWBAR_ENDPOINT": "http://127.0.0.1:1/?x=1"}, 1, ("query",)),
    ("space", ("nodes", "list"), {"CROWBAR_ENDPOINT": "http://exa mple:3000"}, 1, ("spaces",)),
    ("control-char", ("nodes", "list"), {"CROWBAR_ENDPOINT": "http://a\x01b:3000"}, 1, ("control",)),
    ("not-utf8", ("nodes", "list"), {"CROWBAR_ENDPOINT": "http://" + NOT_UTF8}, 1, ("UTF-8",)),
    ("unix-socket-missing", ("nodes", "list"), {"CROWBAR_ENDPOINT": "unix:///nonexistent/crowbar.sock"}, 1,
     ("cannot reach", "No such file")),
    ("unix-path-too-long", ("nodes", "list"), {"CROWBAR_ENDPOINT": "unix:///" + "s" * 300}, 1, ("cannot reach",)),
    ("nothing-listening", ("nodes", "list"), {"CROWBAR_ENDPOINT": "{unused}"}, 1, ("cannot reach", "refused")),
    ("https-to-http", ("nodes", "list"), {"CROWBAR_ENDPOINT": "{https}"}, 1, ("cannot reach",)),
    ("html-200", ("nodes", "list"), {"CROWBAR_ENDPOINT": "{fake:html200}"}, 1, ("not JSON", "text/html")),
    ("html-200-show", ("nodes", "show", "n1"), {"CROWBAR_ENDPOINT": "{fake:html200}"}, 1, ("not JSON",)),
    ("html-500-page", ("nodes", "list"), {"CROWBAR_ENDPOINT": "{fake:html500}"}, 1,
     ("Internal Server Error", "HTTP 500", "text/html")),
    ("text-500", ("nodes", "create", "x.test"), {"CROWBAR_ENDPOINT": "{fake:text500}"}, 1,
     ("Internal Server Error [HTTP 500]",)),
    ("json-not-a-list", ("nodes", "list"), {"CROWBAR_ENDPOINT": "{fake:notcrowbar}"}, 1, ("not a Crowbar list",)),
    ("json-error-not-an-object", ("nodes", "show", "x"), {"CROWBAR_ENDPOINT": "{fake:jsonlist404}"}, 1,
     ("HTTP 404",)),
    ("redirect", ("nodes", "list"), {"CROWBAR_ENDPOINT": "{fake:redirect}"}, 1,
     ("HTTP 307", "https://crowbar.example")),
    ("next-link-offsite", ("nodes", "list"), {"CROWBAR_ENDPOINT": "{fake:offsite}"}, 1, ("outside its API",)),
    ("next-link-loops", ("nodes", "list"), {"CROWBAR_ENDPOINT": "{fake:loop}"}, 1, ("same next link",)),
    ("connection-closed", ("nodes", "list"), {"CROWBAR_ENDPOINT": "{fake:close}"}, 1, ("failed",)),
    ("not-http", ("nodes", "list"), {"CROWBAR_ENDPOINT": "{fake:garbage}"}, 1, ("failed",)),
]

TOKEN_CASES = [
    ("token-newline", ("nodes", "list"), {"CROWBAR_TOKEN": "cb_a\nb"}, 1, ("CROWBAR_TOKEN", "not a Crowbar token")),
    ("token-not-ascii", ("nodes", "list"), {"CROWBAR_TOKEN": "cb_tök"}, 1, ("not a Crowbar token",)),
    ("token-not-utf8", ("nodes", "list"), {"CROWBAR_TOKEN": NOT_UTF8}, 1, ("not a Crowbar token",)),
    ("token-huge", ("nodes", "list"), {"CROWBAR_TOKEN": "cb_" + "x" * 100_000}, 1, ("not a Crowbar token",)),
    ("token-wrong", ("nodes", "list"), {"CROWBAR_TOKEN": "cb_wrong"}, 1, ("401", "rejected")),
    ("token-wrong-write", ("nodes", "create", "intruder.test"), {"CROWBAR_TOKEN": "cb_wrong"}, 1, ("401",)),
]

ARGUMENT_CASES = [
    ("output-yaml", ("nodes", "list", "-o", "yaml"), {}, 2, ("yaml",)),
    ("limit-zero", ("nodes", "list", "--limit", "0"), {}, 2, ("--limit",)),
    ("limit-abc", ("nodes", "list", "--limit", "abc"), {}, 2, ("abc",)),
    ("limit-negative", ("roles", "list", "--limit", "-5"), {}, 2, ("-5",)),
    ("events-limit-too-big", ("events", "--limit", "10001"), {}, 2, ("10001",)),
    ("events-id-abc", ("events", "--id", "abc"), {}, 2, ("abc",)),
    ("timeout-nan", ("anneal", "--wait", "--timeout", "nan"), {}, 2, ("nan",)),
    ("timeout-negative", ("nodes", "power", "n1.hostile.test", "on", "--wait", "--timeout", "-1"), {}, 2, ("-1",)),
    ("power-action", ("nodes", "power", "n1.hostile.test", "explode"), {}, 2, ("explode",)),
    ("no-command", ("nodes",), {}, 2, ("give a command", "list", "--help")),
    ("no-such-command", ("nodes", "explode"), {}, 2, ("explode",)),
    ("negative-id", ("noderoles", "show", "--", "-1"), {}, 1, ("-1",)),
    ("huge-id", ("noderoles", "show", "9" * 40), {}, None, ()),
    ("empty-name", ("nodes", "show", ""), {}, 1, ("empty",)),
    ("dot", ("nodes", "show", "."), {}, 1, ("HTTP 404",)),
    ("dot-dot", ("nodes", "show", ".."), {}, 1, ("HTTP 404",)),
    ("traversal-show", ("nodes", "show", "../deployments/victim"), {}, 1, ("HTTP 404",)),
    ("traversal-delete", ("nodes", "delete", "../deployments/victim"), {}, 1, ("HTTP 404",)),
    ("query-in-name", ("nodes", "delete", "n1.hostile.test?x=1"), {}, 1, ("n1.hostile.test?x=1",)),
    ("fragment-in-name", ("nodes", "delete", "n1.hostile.test#x"), {}, 1, ("n1.hostile.test#x",)),
    ("control-char-name", ("nodes", "show", "a\x01b"), {}, 1, ("HTTP 404",)),
    ("not-utf8-name", ("nodes", "show", NOT_UTF8), {}, 1, ("UTF-8", "\\xff\\xfe")),
    ("not-utf8-create", ("nodes", "create", NOT_UTF8), {}, 1, ("UTF-8",)),
    ("not-utf8-filter", ("nodes", "list", "--name", NOT_UTF8), {}, 1, ("UTF-8",)),
    ("not-utf8-attrib", ("attribs", "set", "test-marker", NOT_UTF8, "--node", "n1.hostile.test"), {}, 1, ("UTF-8",)),
    ("big-name-show", ("nodes", "show", BIG), {}, 1, ("too long",)),
    ("big-name-create", ("nodes", "create", BIG), {}, 1, ()),
    ("big-deployment", ("deployments", "create", BIG), {}, 1, ()),
    ("setting-nan", ("nodes", "set-power", "n1.hostile.test", "qemu", "qmp=/run/x.qmp", "timeout=NaN"), {}, 1,
     ("timeout",)),
    ("setting-inf", ("nodes", "set-power", "n1.hostile.test", "qemu", "qmp=/run/x.qmp", "timeout=1e999"), {}, 1,
     ("timeout",)),
    ("setting-deep", ("nodes", "set-power", "n1.hostile.test", "qemu", "timeout=" + "[" * 50_000 + "]" * 50_000),
     {}, 1, ("nested too deeply",)),
    ("setting-no-equals", ("nodes", "set-power", "n1.hostile.test", "qemu", "timeout"), {}, 1, ("KEY=VALUE",)),
    ("bind-no-nodes", ("deployments", "bind", "victim", "test-client"), {}, 2, ("--tag",)),
    ("bind-nodes-and-tag", ("deployments", "bind", "victim", "test-client", "n1.hostile.test", "--tag", "x"), {}, 2,
     ("not both",)),
    ("bind-tag-nobody-has", ("deployments", "bind", "victim", "test-client", "--tag", "nobody-has-it"), {}, 1,
     ("'nobody-has-it'", "HTTP 404")),
    ("bind-tag-not-a-tag", ("deployments", "bind", "victim", "test-client", "--tag", "a/b?c"), {}, 1, ("not a tag",)),
    ("bind-tag-big", ("deployments", "bind", "victim", "test-client", "--tag", BIG), {}, 1, ()),
    ("bind-one-unknown-node", ("deployments", "bind", "victim", "test-client", "n1.hostile.test", "ghost.hostile.test"),
     {}, 1, ("ghost.hostile.test", "HTTP 404")),
]

FILE_CASES = [
    ("missing-file", ("network", "import", "{missing}"), {}, 1, ("no such file",)),
    ("directory", ("network", "import", "{empty-dir}"), {}, 1, ("Is a directory",)),
    ("unreadable-by-the-os", ("network", "import", "/proc/self/mem"), {}, 1, ("cannot read",)),
    ("binary", ("network", "import", "{binary}"), {}, 1, ("not UTF-8",)),
    ("endless", ("network", "import", "/dev/zero"), {}, 1, ("too big",)),
    ("alias-bomb", ("network", "import", "{bomb}"), {}, 1, ("aliases",)),
    ("alias-cycle", ("network", "import", "{cycle}"), {}, 1, ("refers to itself",)),
    ("nested-deep", ("network", "import", "{deep}"), {}, 1, ("nested too deeply",)),
    ("yaml-nan", ("network", "import", "{nan}"), {}, 1, ("NaN",)),
    ("yaml-date", ("network", "import", "{date}"), {}, 1, ("date",)),
    ("network-fields-missing", ("network", "create", "x", "--file", "{missing}"), {}, 1, ("no such file",)),
    ("ports-int-keys", ("neutron", "whois", "tap0123456789", "--ports", "{ports}"), {}, 1, ()),
    ("ports-directory", ("neutron", "whois", "tap0123456789", "--ports", "{empty-dir}"), {}, 1, ("directory",)),
    ("barclamp-missing", ("barclamps", "import", "{missing}"), {}, 1, ("no such file",)),
]


def _fill(value: str, server, fake, files, unused_port) -> str:
    if value == "{unused}":
        return f"http://127.0.0.1:{unused_port}"
    if value == "{https}":
        return f"https://127.0.0.1:{server.port}"
    if value == "{missing}":
        return str(files["binary"].parent / "missing.yaml")
    if value.startswith("{fake:"):
        return fake.url(value[6:-1])
    if value.startswith("{") and value.endswith("}") and value[1:-1] in files:
        return str(files[value[1:-1]])
    return value


@pytest.mark.parametrize("case", ENDPOINT_CASES + TOKEN_CASES + ARGUMENT_CASES + FILE_CASES, ids=lambda c: c[0])
def test_hostile_input_is_one_line(case, server, fake, files, unused_port):
    _, args, env, code, words = case
    args = [_fill(a, server, fake, files, unused_port) for a in args]
    env = server.env(**{k: _fill(v, server, fake, files, unused_port) for k, v in env.items()})
    one_line_failure(server.cli(*args, env=env), code, words)


def test_nothing_was_harmed(server):
    """Run after the table (same module, same server): nothing above changed anything."""
    assert [n["name"] for n in server.json("nodes", "list")] == ["n1.hostile.test"]
    assert {d["name"] for d in server.json("deployments", "list")} == {"system", "victim"}
    assert server.json("nodes", "show", "n1.hostile.test")["description"] == DESCRIPTION
    assert server.json("deployments", "show", "victim")["noderoles"] == 0  # a refused bind bound nothing


def test_names_with_url_characters_reach_the_right_resource(server):
    """A name is one path segment: `/`, `?`, `#` and dots cannot reach another resource."""
    r = one_line_failure(server.cli("deployments", "delete", "../nodes/n1.hostile.test"))
    assert "HTTP 404" in r
    r = one_line_failure(server.cli("nodes", "show", "n1.hostile.test/../../deployments/victim"))
    assert "HTTP 404" in r
    assert server.json("deployments", "show", "victim")["name"] == "victim"
    assert server.json("nodes", "show", "n1.hostile.test")["name"] == "n1.hostile.test"


def test_huge_limit_is_fine(server):
    assert server.json("nodes", "list", "--limit", "9" * 30)[0]["name"] == "n1.hostile.test"


def test_output_the_terminal_cannot_encode(server):
    """Text the stdout encoding cannot show is escaped, not a UnicodeEncodeError."""
    r = server.cli("nodes", "show", "n1.hostile.test", "-o", "json", env=server.env(PYTHONIOENCODING="ascii"))
    assert r.returncode == 0 and "Traceback" not in r.stderr, str(r)
    assert json.loads(r.stdout)["description"] == DESCRIPTION
    r = server.cli("nodes", "show", "n1.hostile.test", env=server.env(PYTHONIOENCODING="ascii"))
    assert r.returncode == 0 and r.stderr == "", str(r)


def test_values_are_shown_as_text(server):
    """A value is never rich markup (`[/]` used to be a MarkupError) and cannot drive the terminal
    (ESC and BEL are shown as escapes); -o json keeps it exactly."""
    for args in (("nodes", "show", "n1.hostile.test"), ("nodes", "list")):
        r = server.ok(*args)
        assert "\x1b" not in r.stdout and "\x07" not in r.stdout, str(r)
    shown = server.ok("nodes", "show", "n1.hostile.test").stdout
    assert "日本語 [/] [red]not markup\\x1b[2J\\x07" in shown, shown
    server.ok("attribs", "set", "test-marker", "[bold]\x1b]0;pwned\x07", "--node", "n1.hostile.test")
    shown = server.ok("attribs", "get", "test-marker", "--node", "n1.hostile.test").stdout
    assert "[bold]\\x1b]0;pwned\\x07" in shown and "\x1b" not in shown, shown
    got = server.json("attribs", "get", "test-marker", "--node", "n1.hostile.test")
    assert got["value"] == "[bold]\x1b]0;pwned\x07"


def test_unreadable_file(server, files):
    if os.geteuid() == 0:
        pytest.skip(ROOT_READS_ALL)
    one_line_failure(server.cli("network", "import", files["unreadable"]), 1, ("Permission denied",))


def test_unexpected_exception_is_one_line_with_a_hint(server, fake):
    """An answer the CLI cannot make sense of (a bug, or not Crowbar): one line naming
    CROWBAR_DEBUG; with CROWBAR_DEBUG=1 the traceback is shown."""
    env = server.env(CROWBAR_ENDPOINT=fake.url("badstates"))
    line = one_line_failure(server.cli("nodes", "states", env=env), 1)
    assert "CROWBAR_DEBUG=1" in line and "unexpected" in line
    r = server.cli("nodes", "states", env={**env, "CROWBAR_DEBUG": "1"})
    assert r.returncode != 0 and "Traceback" in r.stderr


def test_closed_stdout(server):
    """`crowbar ... | head -0`: the pipe is closed before the output is written; no traceback."""
    proc = subprocess.Popen([e2e.CROWBAR, "nodes", "list", "-o", "json"], env=server.env(), stdin=subprocess.DEVNULL,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    proc.stdout.close()
    err = proc.stderr.read().decode()
    proc.wait(60)
    assert "Traceback" not in err and "Exception ignored" not in err, err
    assert proc.returncode != 0


# -- Ctrl-C ----------------------------------------------------------------------------------------
@pytest.mark.parametrize("args, words", [
    (("nodes", "list"), ("interrupted",)),
    (("nodes", "create", "x.hostile.test"), ("interrupted during POST", "may still carry it out")),
])
def test_ctrl_c_during_a_request(args, words, server, fake):
    fake.received.clear()
    fake.release.clear()
    # SIGINT as at a terminal: a suite started in the background by a shell inherits it ignored,
    # which exec keeps (and then Ctrl-C would do nothing for any program)
    proc = subprocess.Popen([e2e.CROWBAR, *args], env=server.env(CROWBAR_ENDPOINT=fake.url("slow")),
                            stdin=subprocess.DEVNULL, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                            preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL))
    try:
        assert fake.received.wait(60), "the request never reached the fake server"
        time.sleep(0.2)
        proc.send_signal(signal.SIGINT)
        out, err = proc.communicate(timeout=60)
    finally:
        fake.release.set()
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    r = e2e.Result(tuple(args), proc.returncode, out, err)
    one_line_failure(r, 130, words)


# -- the local commands: db upgrade and server ---------------------------------------------------------
@pytest.fixture
def local(tmp_path):
    """Run `crowbar` with a private home and config, no CROWBAR_* settings, in tmp_path."""
    home = tmp_path / "home"
    home.mkdir()

    def run(*args, timeout: float = 120, **env):
        proc = subprocess.run([e2e.CROWBAR, *map(str, args)], capture_output=True, text=True, timeout=timeout,
                              stdin=subprocess.DEVNULL, cwd=tmp_path,
                              env=e2e.clean_env(**{"HOME": str(home), "XDG_CONFIG_HOME": str(tmp_path / "config"),
                                                   "XDG_DATA_HOME": "", **env}))
        return e2e.Result(tuple(map(str, args)), proc.returncode, proc.stdout, proc.stderr)

    run.home = home
    return run


def tree(path: Path) -> list[str]:
    return sorted(str(p.relative_to(path)) for p in path.rglob("*"))


@pytest.mark.parametrize("command", ["db-upgrade", "server"])
def test_database_urls_that_cannot_be_used(command, local, tmp_path, unused_port):
    text_file = tmp_path / "passwd"
    text_file.write_text("root:x:0:0:root:/root:/bin/bash\n" * 20)
    cases = [
        ("bogus://x", ("bogus",)),
        ("bogus", ("not a URL",)),
        ("postgresql://u:s3cret@127.0.0.1:port/x", ("not a URL",)),
        (f"postgresql://u:s3cret@127.0.0.1:{unused_port}/x", ("cannot open the database", "refused")),
        ("mysql://u@127.0.0.1/x", ("driver",)),
        ("sqlite://", ("in-memory",)),
        (f"sqlite:///{tmp_path}/no/such/dir/crowbar.db", ("does not exist",)),
        (f"sqlite:///{tmp_path}", ("is a directory",)),
        (f"sqlite:///{text_file}", ("file is not a database",)),
    ]
    before = tree(tmp_path)
    for url, words in cases:
        if command == "db-upgrade":
            r = local("db", "upgrade", "--database", url, "--data-dir", tmp_path / "data")
        else:
            r = local("server", "--database", url, "--data-dir", tmp_path / "data", "--listen",
                      f"127.0.0.1:{unused_port}")
        line = one_line_failure(r, 1, words)
        assert "s3cret" not in line, "the password was shown"
    assert text_file.read_text() == "root:x:0:0:root:/root:/bin/bash\n" * 20
    created = set(tree(tmp_path)) - set(before)
    assert created == ({"data"} if command == "server" else set()), created  # the server's own data dir only
    assert not (tmp_path / "no").exists()


def test_db_upgrade_creates_only_its_data_directory(local, tmp_path):
    # Parents of a SQLite file or of an explicit --data-dir are never created.
    one_line_failure(local("db", "upgrade", "--data-dir", tmp_path / "a" / "b" / "data"), 1, ("does not exist",))
    one_line_failure(local("db", "upgrade", "--database", f"sqlite:///{tmp_path}/x/y/crowbar.db"), 1,
                     (f"{tmp_path}/x/y", "does not exist"))
    assert not (tmp_path / "a").exists() and not (tmp_path / "x").exists()
    # A data dir that is a file.
    (tmp_path / "file").write_text("")
    one_line_failure(local("db", "upgrade", "--data-dir", tmp_path / "file"), 1, ("not a directory",))
    # A home that does not exist: the default data dir is not created under it.
    r = local("db", "upgrade", HOME=str(tmp_path / "nohome"))
    one_line_failure(r, 1, ("home directory", "does not exist"))
    assert not (tmp_path / "nohome").exists()
    # What it does create: an explicit data dir whose parent exists; the default one under home.
    r = local("db", "upgrade", "--data-dir", tmp_path / "data")
    assert r.returncode == 0 and (tmp_path / "data" / "crowbar.db").is_file(), str(r)
    assert (tmp_path / "data").stat().st_mode & 0o777 == 0o700
    r = local("db", "upgrade")
    assert r.returncode == 0 and (local.home / ".local" / "share" / "crowbar" / "crowbar.db").is_file(), str(r)
    # An explicit database URL needs no data dir: none is created.
    r = local("db", "upgrade", "--database", f"sqlite:///{tmp_path}/elsewhere.db", "--data-dir", tmp_path / "unused")
    assert r.returncode == 0 and not (tmp_path / "unused").exists(), str(r)


def test_db_upgrade_writes_nothing_half_way(local, tmp_path):
    """A database the migrations cannot apply to is left exactly as it was."""
    path = tmp_path / "other.db"
    with sqlite3.connect(path) as conn:
        conn.execute("CREATE TABLE nodes (x INTEGER)")
    one_line_failure(local("db", "upgrade", "--database", f"sqlite:///{path}"), 1, ("nodes", "already exists"))
    with sqlite3.connect(path) as conn:
        assert [r[0] for r in conn.execute("SELECT name FROM sqlite_master")] == ["nodes"]
    # A database a newer Crowbar migrated: refused with the revision, left as it is.
    newer = tmp_path / "newer.db"
    with sqlite3.connect(newer) as conn:
        conn.execute("CREATE TABLE alembic_version (version_num VARCHAR(32) NOT NULL)")
        conn.execute("INSERT INTO alembic_version VALUES ('9999')")
    one_line_failure(local("db", "upgrade", "--database", f"sqlite:///{newer}"), 1, ("9999",))
    with sqlite3.connect(newer) as conn:
        assert [r[0] for r in conn.execute("SELECT name FROM sqlite_master")] == ["alembic_version"]


@pytest.mark.postgresql
def test_db_upgrade_on_postgresql_refused_half_way(local):
    """PostgreSQL: the same refusal, and the transaction leaves no table behind."""
    if not e2e.PG_URL:
        pytest.skip(e2e.PG_MISSING)
    from sqlalchemy import create_engine, inspect, text

    servers = e2e.Servers(Path(local.home).parent / "pg")
    try:
        url = servers.postgres_url()
        engine = create_engine(url)
        with engine.begin() as conn:
            conn.execute(text("CREATE TABLE nodes (x INTEGER)"))
        one_line_failure(local("db", "upgrade", "--database", url), 1, ("nodes", "already exists"))
        assert inspect(engine).get_table_names() == ["nodes"]
        engine.dispose()
        r = local("db", "upgrade", "--database", url.replace("crowbar_e2e_", "crowbar_missing_"))
        one_line_failure(r, 1, ("cannot open the database", "does not exist"))
    finally:
        servers.close()


def test_server_startup_refusals(local, tmp_path, unused_port):
    victim = tmp_path / "precious.txt"
    victim.write_text("keep me\n")
    listen_cases = [
        (f"unix:{victim}", ("not a socket",)),
        (f"unix:{tmp_path}/no/such/dir/api.sock", ("does not exist",)),
        ("127.0.0.1:http", ("HOST:PORT",)),
        ("unix:", ("no socket path",)),
    ]
    for listen, words in listen_cases:
        r = local("server", "--listen", listen, "--data-dir", tmp_path / "data")
        one_line_failure(r, 1, words)
    assert victim.read_text() == "keep me\n"
    assert not (tmp_path / "no").exists()
    one_line_failure(local("server", "--listen", f"127.0.0.1:{unused_port}", "--data-dir", victim), 1,
                     ("not a directory",))
    one_line_failure(local("server", "--listen", f"127.0.0.1:{unused_port}",
                           "--data-dir", tmp_path / "x" / "data"), 1, ("does not exist",))
    assert not (tmp_path / "x").exists()
    # A port another process holds.
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        one_line_failure(local("server", "--listen", f"127.0.0.1:{port}", "--data-dir", tmp_path / "data"), 1,
                         ("cannot listen", "in use"))

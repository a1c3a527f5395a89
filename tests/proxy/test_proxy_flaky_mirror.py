"""A mirror that drops connections. CI's lab run of 2026-12-03 failed staging `sl` because the
Debian mirror closed apt-cacher-ng's connections ("503 Connection closed, check DlMaxRetries").

Here a relay on loopback stands between the real apt-cacher-ng (configured by crowbar/proxy/apt.py)
and the Debian mirror this host's apt uses, and closes the connection, before a word of answer, on
the first `cuts` requests for each package. What these tests found: apt-cacher-ng 3.7 retries a
dropped fetch, but counts the retries against one budget per client connection (DlMaxRetries,
default 2), not per file; once it is spent, apt's own retries (Acquire::Retries) mostly get the
same 503 back at once."""

from __future__ import annotations

import threading
import urllib.error
import urllib.parse
import urllib.request
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import pytest

from crowbar.provisioner import osimage
from crowbar.proxy import ProxyConfig, apt
from crowbar.server.proxies import Proxies
from crowbar.services import proxy
from tests.proxy.proxykit import AptRoot, Daemons, free_port, missing_tools, wait_port

pytestmark = pytest.mark.skipif(bool(missing_tools()), reason=f"online mode needs {', '.join(missing_tools())} "
                                "(make deps: apt-cacher-ng; make venv: devpi-server)")

RECIPE = osimage.recipe("debian-12")


class FlakyMirror(ThreadingHTTPServer):
    """Relays GET /debian/X to `mirror`/X; the first `cuts` GETs of each .deb get the connection closed."""

    daemon_threads = True

    def __init__(self, mirror: str, cuts: int):
        self.mirror, self.cuts, self.seen, self.lock = mirror.rstrip("/"), cuts, {}, threading.Lock()
        # below 32768: apt-cacher-ng 3.7 aborts every download from a backend on a higher port
        super().__init__(("127.0.0.1", free_port(below=apt.MAX_PORT + 1)), Relay)
        threading.Thread(target=self.serve_forever, daemon=True).start()

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.server_address[1]}/debian/"

    def dropped(self) -> dict[str, int]:
        """Package file name -> connections dropped on its requests."""
        with self.lock:
            return {urllib.parse.unquote(path.rsplit("/", 1)[1]): min(n, self.cuts) for path, n in self.seen.items()
                    if path.endswith(".deb")}

    def close(self) -> None:
        self.shutdown()
        self.server_close()


class Relay(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"

    def do_GET(self):  # noqa: N802 (http.server's name)
        server: FlakyMirror = self.server
        if not self.path.startswith("/debian/"):
            self.send_error(404)
            return
        with server.lock:
            server.seen[self.path] = server.seen.get(self.path, 0) + 1
            cut = self.path.endswith(".deb") and server.seen[self.path] <= server.cuts
        if cut:  # closed before a word of answer, as a mirror dropping a kept-alive connection does
            self.close_connection = True
            self.connection.shutdown(2)
            return
        try:
            with urllib.request.urlopen(server.mirror + self.path[len("/debian"):], timeout=60) as answer:
                body = answer.read()
        except urllib.error.HTTPError as exc:
            self.send_error(exc.code)
            return
        self.send_response(200)
        self.send_header("Content-Length", str(len(body)))
        self.send_header("Content-Type", "application/octet-stream")
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, *args):
        pass


def _config(tmp_path, **upstreams) -> ProxyConfig:
    return ProxyConfig(state_dir=tmp_path / "proxy", listen=("127.0.0.1",), node_address="127.0.0.1",
                       apt_port=free_port(below=apt.MAX_PORT + 1), pypi_port=free_port(), git_port=free_port(),
                       **upstreams)


def test_a_nodes_apt_gets_every_package_when_the_mirror_drops_each_once(tmp_path):
    """One drop per package: more than apt-cacher-ng's default budget (2) for the 9 files of `sl`."""
    flaky, daemons = FlakyMirror(osimage.mirror_url(RECIPE), cuts=1), Daemons()
    try:
        config = _config(tmp_path)
        daemons.start(apt.command(apt.prepare(config, flaky.url), offline=False), tmp_path / "acng.out")
        wait_port(config.apt_port)
        node = AptRoot(tmp_path / "node", config.url("apt"), osimage.mirror_url(RECIPE), RECIPE.suite)
        assert node.run("update").returncode == 0
        got = node.run("install", "--download-only", "-y", "sl")
        assert got.returncode == 0, got.stderr
        dropped, debs = flaky.dropped(), node.debs()
        assert sum(dropped.values()) > 2 and any(name.startswith("sl_") for name in debs), (dropped, debs)
        assert sorted(dropped) == debs  # each dropped package reached the node whole (apt checks its hash)
    finally:
        daemons.stop()
        flaky.close()


def test_staging_runs_apt_again_when_the_mirror_drops_more_than_the_budget(tmp_path):
    """Three drops per package: 27 for `sl`, over the budget of one apt-get's connection (20).
    Staging's next apt-get is a new connection and fetches the rest (with one run only, this test
    failed 2 times in 3)."""
    flaky = FlakyMirror(osimage.mirror_url(RECIPE), cuts=3)
    config = _config(tmp_path, apt_upstream=flaky.url,  # PyPI's is not used: nothing is staged from it
                     pypi_upstream=f"http://127.0.0.1:{free_port()}/simple/")
    ctx = Proxies(config)
    try:
        ctx.start()
        ctx.wait_ready()
        out = proxy.stage(ctx, RECIPE.name, ["sl"])
        dropped = flaky.dropped()
        assert sum(dropped.values()) == 3 * len(dropped) > 20, dropped
        assert any(name.startswith("sl_") for name in out["apt"]) and sorted(dropped) == out["apt"], out
        # the node's offline install finds them all in the cache
        proxy.set_offline(ctx, True)
        node = AptRoot(tmp_path / "node", config.url("apt"), osimage.mirror_url(RECIPE), RECIPE.suite)
        assert node.run("update").returncode == 0
        got = node.run("install", "--download-only", "-y", "sl")
        assert got.returncode == 0, got.stderr
    finally:
        ctx.stop()
        flaky.close()

"""`crowbar server --proxies` supervises the three proxies: they run once the server is up (its
health check names them), one that dies is started again, `crowbar proxy offline on` restarts
apt-cacher-ng and devpi in offline mode, and stopping the server stops them all."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import time

import pytest

from crowbar.procs import cmdline, pid_alive
from crowbar.proxy import apt
from tests.proxy.proxykit import free_port, missing_tools
from tests.server.test_service import Service, e2e

pytestmark = pytest.mark.skipif(bool(missing_tools()), reason=f"online mode needs {', '.join(missing_tools())}")


def wait_for(predicate, timeout: float, what: str):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = predicate()
        if value:
            return value
        time.sleep(0.3)
    raise AssertionError(f"{what} after {timeout}s")


def test_the_server_supervises_the_proxies(tmp_path):
    ports = f"{free_port(below=apt.MAX_PORT + 1)},{free_port()},{free_port()}"
    # an upstream nobody answers at: nothing here leaves loopback
    service = Service(tmp_path, {"proxies": True, "proxy_ports": ports,
                                 "proxy_pypi_upstream": "http://127.0.0.1:9/simple/"})
    try:
        url = f"http://127.0.0.1:{service.port}"
        service.wait(url, verify=False, timeout=60)

        def status():
            out = service.cli("--endpoint", url, "proxy", "status", "-o", "json")
            assert out.returncode == 0, out.stderr
            return {row["kind"]: row for row in json.loads(out.stdout)}

        rows = wait_for(lambda: (s := status()) and all(r["running"] for r in s.values()) and s, 120,
                        "the proxies are not all running")
        assert rows["apt"]["url"] == f"http://127.0.0.1:{ports.split(',')[0]}"
        # a proxy that dies is started again
        old = rows["apt"]["pid"]
        os.kill(old, signal.SIGKILL)
        wait_for(lambda: (p := status()["apt"]["pid"]) and p != old, 30, "apt-cacher-ng was not restarted")
        # offline: apt-cacher-ng and devpi run in their offline mode
        out = subprocess.run([e2e.CROWBAR, "--endpoint", url, "proxy", "offline", "on"], env=service.env,
                             capture_output=True, text=True, timeout=330)  # restarts devpi: can take a while
        assert out.returncode == 0 and "offline" in out.stdout, out.stderr
        rows = status()
        assert "Offlinemode=1" in cmdline(rows["apt"]["pid"]) and "--offline-mode" in cmdline(rows["pypi"]["pid"])
        pids = [row["pid"] for row in rows.values()]
    finally:
        service.stop()
    wait_for(lambda: not any(pid_alive(pid) for pid in pids), 20, "a proxy outlived the server")

"""Fixtures for power requests: the app with a running power worker (`power_api`), the same behind
a real uvicorn on a loopback port (`live`), and test drivers registered in-process.

The tests/conftest.py `api` fixture has no worker; these build their own app the way `crowbar
server` does (AppSettings with a `wake` that wakes the worker) and stop the worker in teardown.
"""

from __future__ import annotations

import socket
import threading
import time
from dataclasses import dataclass, field

import httpx
import pytest
import uvicorn

from crowbar import plugins
from crowbar.api.app import create_app
from crowbar.api.settings import AppSettings
from crowbar.server.power import PowerWorker
from powerkit import CallLog, TestDriver, start_worker


@pytest.fixture
def driver():
    """Register a fresh subclass of TestDriver as `name` (default "test"); yields a factory."""
    names: list[str] = []

    def register(name: str = "test", base: type = TestDriver, **attrs) -> type:
        cls = type(f"{base.__name__}_{name}", (base,), {"name": name, "log": CallLog(), **attrs})
        plugins.register(plugins.POWER, name, cls)
        names.append(name)
        return cls

    yield register
    for name in names:
        plugins.unregister(plugins.POWER, name)


# -- the app with a worker ------------------------------------------------------------------------
def wait_request(get, request_id: int, timeout: float = 20.0) -> dict:
    """Poll GET /power_requests/{id} (through `get(path)`) until it succeeded or failed."""
    deadline = time.monotonic() + timeout
    while True:
        request = get(f"/api/v2/power_requests/{request_id}").json()
        if request["state"] in ("succeeded", "failed"):
            return request
        if time.monotonic() > deadline:
            raise AssertionError(f"power request {request_id} still {request['state']} after {timeout}s")
        time.sleep(0.05)


@pytest.fixture
def power_api(db, admin_token, tmp_path):
    """A TestClient on the app, with a power worker running on the same database (and an empty OS
    image store, `client.os_images`)."""
    from fastapi.testclient import TestClient

    worker = start_worker(db)
    app = create_app(AppSettings(db=db, wake=lambda kind: worker.wake() if kind == "power" else None,
                                 os_images=tmp_path / "os"))
    client = TestClient(app, headers={"authorization": f"Bearer {admin_token}"})
    client.os_images = tmp_path / "os"
    client.worker = worker
    client.wait = lambda request_id, timeout=20.0: wait_request(client.get, request_id, timeout)
    yield client
    client.close()
    worker.stop()


@dataclass
class Live:
    url: str
    token: str
    worker: PowerWorker
    http: httpx.Client = field(init=False)

    def __post_init__(self):
        self.http = httpx.Client(base_url=self.url, headers={"authorization": f"Bearer {self.token}"}, timeout=30)

    def wait(self, request_id: int, timeout: float = 20.0) -> dict:
        return wait_request(self.http.get, request_id, timeout)


@pytest.fixture
def live(db, admin_token):
    """The app behind a real uvicorn (in a thread, on a loopback port) with a power worker."""
    worker = start_worker(db)
    app = create_app(AppSettings(db=db, wake=lambda kind: worker.wake() if kind == "power" else None))
    sock = socket.socket()
    sock.bind(("127.0.0.1", 0))
    server = uvicorn.Server(uvicorn.Config(app, log_level="warning"))
    thread = threading.Thread(target=server.run, kwargs={"sockets": [sock]}, daemon=True)
    thread.start()
    url = f"http://127.0.0.1:{sock.getsockname()[1]}"
    deadline = time.monotonic() + 20
    while not server.started:
        assert time.monotonic() < deadline, "uvicorn did not start"
        time.sleep(0.02)
    out = Live(url=url, token=admin_token, worker=worker)
    yield out
    out.http.close()
    server.should_exit = True
    thread.join(10)
    sock.close()
    worker.stop()

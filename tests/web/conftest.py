"""Browser fixtures: the real `crowbar server` on loopback (tests/e2e/conftest.py) and Debian's
chromium driven by Playwright (its own browser download is not used)."""

from __future__ import annotations

import os
import sys
from pathlib import Path

import httpx
import pytest

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from e2e_fixtures import e2e  # noqa: E402  (tests/e2e_fixtures.py)

CHROMIUM = os.environ.get("CROWBAR_TEST_CHROMIUM", "/usr/bin/chromium")
VENDOR = Path(__file__).resolve().parents[2] / "crowbar" / "web" / "static" / "vendor" / "cytoscape.min.js"
ARGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-background-networking", "--disable-component-update",
        "--disable-sync", "--no-first-run", "--disable-dev-shm-usage"]


@pytest.fixture(scope="module")
def browser():
    """A chromium of the module's own: under xdist each worker starts the ones of the modules it
    runs, and none outlives its module."""
    if not Path(CHROMIUM).is_file():
        pytest.skip(f"chromium is not installed at {CHROMIUM} (Debian package `chromium`: make deps)")
    try:
        from playwright.sync_api import sync_playwright
    except ImportError:
        pytest.skip("the Python package playwright is not installed (pip install -e '.[test]')")
    assert VENDOR.is_file(), f"{VENDOR} is missing: run `make web` (the UI's third-party scripts)"
    with sync_playwright() as p:
        b = p.chromium.launch(executable_path=CHROMIUM, args=ARGS, headless=True)
        yield b
        b.close()


class Ui:
    """A running server, an admin API client, and helpers to make users and sign a page in."""

    def __init__(self, server, browser):
        self.server, self.browser = server, browser
        self.url = server.url
        self.admin_token = (server.data_dir / "admin.token").read_text().strip()
        self.api = httpx.Client(base_url=f"{server.url}/api/v2", timeout=30,
                                headers={"authorization": f"Bearer {self.admin_token}"})
        self.pages = []

    def token(self, user: str, role: str) -> str:
        r = self.api.post("/users", json={"name": user, "role": role})
        assert r.status_code == 201, r.text
        r = self.api.post("/tokens", json={"name": "ui", "user": user})
        assert r.status_code == 201, r.text
        return r.json()["token"]

    def page(self):
        context = self.browser.new_context(viewport={"width": 1440, "height": 900})
        page = context.new_page()
        page.set_default_timeout(15000)
        page.errors = []
        page.on("pageerror", lambda exc: page.errors.append(str(exc)))
        # script errors only: a refused request (401, 403: expected in these tests) is logged as
        # "Failed to load resource" and is not one
        page.on("console", lambda msg: page.errors.append(msg.text)
                if msg.type == "error" and not msg.text.startswith("Failed to load resource") else None)
        self.pages.append(context)
        return page

    def signed_in(self, user: str, role: str):
        page = self.page()
        page.goto(f"{self.url}/ui/")
        page.fill("#token", self.token(user, role))
        page.click("#sign-in")
        page.wait_for_selector(f"#who:has-text('{user}')")
        return page

    def close(self):
        for c in self.pages:
            c.close()
        self.api.close()


@pytest.fixture(params=["sqlite", pytest.param("postgresql", marks=pytest.mark.postgresql)])
def ui(request, servers, browser):
    database = servers.postgres_url() if request.param == "postgresql" else None
    u = Ui(servers.new(database=database), browser)
    yield u
    u.close()


@pytest.fixture
def servers(request, tmp_path):
    factory = e2e.Servers(tmp_path)
    request.node._crowbar_servers = factory.servers
    yield factory
    factory.close()

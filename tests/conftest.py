"""Shared fixtures: a migrated database on SQLite and on PostgreSQL, an authenticated API client.

PostgreSQL comes from CROWBAR_TEST_POSTGRES_URL, which `make test` sets after starting a throwaway
cluster on loopback; each test gets its own database cloned from a migrated template.
"""

from __future__ import annotations

import os
import shutil
import uuid
from pathlib import Path

import pytest
from sqlalchemy import create_engine, text
from sqlalchemy.engine import make_url

from crowbar.db.session import Database
from crowbar.services import auth, bootstrap

# The same terminal size in every test process: pytest imports readline, which exports the terminal's size
# (COLUMNS=80, LINES=24 when there is none) to the processes it starts, the xdist workers among them,
# so rich's tables would be 80 columns wide there and 200 (crowbar.cli.output's width when captured)
# in a run without workers. These are the latter, for every process and what it starts.
os.environ["COLUMNS"], os.environ["LINES"] = "200", "25"

PG_URL = os.environ.get("CROWBAR_TEST_POSTGRES_URL")
PG_MISSING = "PostgreSQL not available: CROWBAR_TEST_POSTGRES_URL is unset (`make test` starts a throwaway cluster)"


def _pg_admin():
    return create_engine(make_url(PG_URL).set(database="postgres"), isolation_level="AUTOCOMMIT")


@pytest.fixture(scope="session")
def sqlite_template(tmp_path_factory) -> Path:
    path = tmp_path_factory.mktemp("template") / "crowbar.db"
    db = Database(f"sqlite:///{path}")
    bootstrap.prepare(db)
    db.dispose()
    return path


@pytest.fixture(scope="session")
def pg_template() -> str:
    if not PG_URL:
        pytest.skip(PG_MISSING)
    name = f"crowbar_tmpl_{uuid.uuid4().hex[:8]}"
    admin = _pg_admin()
    with admin.connect() as conn:
        conn.execute(text(f'CREATE DATABASE "{name}"'))
    url = make_url(PG_URL).set(database=name).render_as_string(hide_password=False)
    db = Database(url)
    bootstrap.prepare(db)
    db.dispose()
    yield name
    with admin.connect() as conn:
        conn.execute(text(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)'))
    admin.dispose()


def make_database(kind: str, tmp_path: Path, request) -> Database:
    if kind == "sqlite":
        target = tmp_path / "crowbar.db"
        shutil.copy(request.getfixturevalue("sqlite_template"), target)
        return Database(f"sqlite:///{target}")
    template = request.getfixturevalue("pg_template")
    name = f"crowbar_t_{uuid.uuid4().hex[:10]}"
    admin = _pg_admin()
    with admin.connect() as conn:
        conn.execute(text(f'CREATE DATABASE "{name}" TEMPLATE "{template}" STRATEGY FILE_COPY'))
    db = Database(make_url(PG_URL).set(database=name).render_as_string(hide_password=False))

    def drop():
        db.dispose()
        with admin.connect() as conn:
            conn.execute(text(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)'))
        admin.dispose()

    request.addfinalizer(drop)
    return db


@pytest.fixture(params=["sqlite", pytest.param("postgresql", marks=pytest.mark.postgresql)])
def db(request, tmp_path) -> Database:
    """A migrated database with the system deployment and the built-in barclamps, on each engine."""
    database = make_database(request.param, tmp_path, request)
    yield database
    database.dispose()


@pytest.fixture
def sqlite_db(request, tmp_path) -> Database:
    database = make_database("sqlite", tmp_path, request)
    yield database
    database.dispose()


@pytest.fixture
def pg(request, tmp_path) -> Database:
    """A migrated database on PostgreSQL only (mark the test `postgresql`): for what only it has
    (row locks, several servers, NOTIFY)."""
    database = make_database("postgresql", tmp_path, request)
    yield database
    database.dispose()


@pytest.fixture
def admin_token(db, tmp_path) -> str:
    with db.session() as s:
        return auth.ensure_admin_token(s, tmp_path / "admin.token")


def every_item(client, path: str, params: dict | None = None) -> list[dict]:
    """Every item of a list endpoint, following `next` until it is null (each page must be 200)."""
    items: list[dict] = []
    url: str | None = path
    while url:
        r = client.get(url, params=params)
        assert r.status_code == 200, r.text
        body = r.json()
        items += body["items"]
        url, params = body["next"], None
    return items


@pytest.fixture
def api(db, admin_token):
    """A TestClient on the real app with the admin token; `api.anneal()` runs the annealer to idle,
    `api.list(path, params)` reads every page of a list, `api.woken` lists the kinds of work the
    app woke background loops for, in order."""
    from fastapi.testclient import TestClient

    from crowbar.api.app import create_app
    from crowbar.api.settings import AppSettings
    from crowbar.engine.annealer import Annealer

    annealer = Annealer(db, workers=4)
    woken: list[str] = []
    # event streams (GET /events/stream) of a second: the tests that call every route end
    client = TestClient(create_app(AppSettings(db=db, wake=woken.append, event_stream_seconds=1.0)),
                        headers={"authorization": f"Bearer {admin_token}"})
    client.anneal = lambda timeout=60: annealer.run_until_idle(timeout)
    client.list = lambda path, params=None: every_item(client, path, params)
    client.woken = woken
    yield client
    client.close()


@pytest.fixture
def cli(api, admin_token, monkeypatch):
    """`crowbar ...` in-process against the test app (`api`): run(*args) -> (exit code, output, the
    CliError's one line or None). A test module's own `cli` fixture replaces it there."""
    from click.testing import CliRunner
    from fastapi.testclient import TestClient

    from crowbar.cli import main
    from crowbar.cli.client import CliError, Client

    http = TestClient(api.app, base_url="http://testserver/api/v2", headers={"authorization": f"Bearer {admin_token}"})
    fake = Client.__new__(Client)
    fake.endpoint, fake.token_source, fake.http, fake.timeout, fake.sending = "http://testserver", None, http, 60, None
    monkeypatch.setattr(main, "Client", lambda endpoint, **_: fake)

    def run(*args: str, input: str | None = None):
        result = CliRunner().invoke(main.cli, list(args), input=input)
        error = str(result.exception) if isinstance(result.exception, CliError) else None
        if result.exception is not None and error is None and not isinstance(result.exception, SystemExit):
            raise result.exception
        return result.exit_code, result.output, error

    yield run
    http.close()


# -- pytest-xdist (scripts/run-tests.sh: -n 3, and -n 2 for tests/lab; --dist loadgroup) --------------
# Test files that must not be spread over workers or run beside each other, by path under tests/:
# the files of a group run one after the other on one worker, each in file order. A test can also
# carry `@pytest.mark.xdist_group(name)` itself.
XDIST_GROUPS = {
    # tests that share one module-scoped server or daemon and build on each other's work
    "proxy/test_proxy_live.py": "proxy-live",  # one set of proxies; the tests run in file order
    "cli/test_cli_hostile.py": "cli-hostile",  # test_nothing_was_harmed checks the server every case ran against
    "network_db/test_netdb_cli_network.py": "netdb-cli",  # one server: each test adds to what the others left
    "provisioner/test_dnsmasq.py": "dnsmasq",  # one real dnsmasq (in namespaces) for the questions-only tests
    "provisioner/test_image.py": "discovery-image",  # the discovery image, built once per process
    # tests/lab runs on 2 workers (its VMs spend long stretches waiting, one core idle): the OS
    # deployment (about 14 minutes) beside everything else (about 13), each lab in its own namespace
    "lab/test_lab_deploy.py": "lab-a",
    "lab/test_lab_e2e.py": "lab-a",
    "lab/test_lab_online.py": "lab-b",
    "lab/test_lab_bmc.py": "lab-b",
    "lab/test_lab_vlan.py": "lab-b",
    "lab/test_lab_units.py": "lab-b",
    "lab/test_vmrun.py": "lab-b",
    "lab/test_lab_neutron.py": "lab-b",
}


@pytest.hookimpl(wrapper=True)
def pytest_collection_modifyitems(config, items):
    """On an xdist worker with --dist loadgroup (the only place it matters): XDIST_GROUPS as
    `xdist_group` marks, then the `@group` suffix on each grouped item's nodeid, which is what
    loadgroup schedules by. xdist adds that suffix itself, but writes it where pytest 9.2's nodeid
    no longer looks (pytest-xdist issue #1386: the marks are ignored), so it is added here after
    every other implementation ran, unless it is there already."""
    if not getattr(config.option, "loadgroup", False):
        return (yield)
    here = Path(__file__).parent
    for item in items:
        try:
            group = XDIST_GROUPS.get(item.path.relative_to(here).as_posix())
        except ValueError:
            group = None
        if group:
            item.add_marker(pytest.mark.xdist_group(group))
    result = yield
    for item in items:
        names = {str(m.args[0] if m.args else m.kwargs.get("name", "default")) for m in item.iter_markers("xdist_group")}
        suffix = "@" + "_".join(sorted(names))
        if names and not item.nodeid.endswith(suffix):
            grouped = item.nodeid + suffix
            if hasattr(item, "_id"):  # pytest >= 9.2: a structured NodeId behind the nodeid
                from _pytest.nodeid import coerce_node_id

                item._id = coerce_node_id(grouped)
            else:
                item._nodeid = grouped
    return result

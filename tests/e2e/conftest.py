"""End-to-end fixtures: the real `crowbar server` as a subprocess, driven only by the real CLI.

Every server gets its own data dir, free loopback port and log file; the CLI runs with
XDG_CONFIG_HOME shared with its server (that is where the server publishes its admin token for the
local CLI) and with CROWBAR_DATA_DIR pointing at an empty dir of its own, so the token can only be
found through the endpoint registry. Nothing reads or writes the user's real configuration.

Servers are stopped by their own PID (SIGTERM, then SIGKILL after a timeout) in teardown, whatever
the outcome of the test; their logs are attached to the report of a failing test.
"""

from __future__ import annotations

import json
import os
import random
import shutil
import signal
import socket
import subprocess
import sys
import textwrap
import time
import uuid
from dataclasses import dataclass, field
from pathlib import Path

import httpx
import pytest

REPO = Path(__file__).resolve().parents[2]
PG_URL = os.environ.get("CROWBAR_TEST_POSTGRES_URL")
PG_MISSING = "PostgreSQL not available: CROWBAR_TEST_POSTGRES_URL is unset (`make test` starts a throwaway cluster)"
STOP_TIMEOUT = 20.0
START_TIMEOUT = 60.0
CLI_TIMEOUT = 120.0


def _crowbar_executable() -> str:
    for candidate in (Path(sys.executable).with_name("crowbar"), REPO / ".venv" / "bin" / "crowbar"):
        if candidate.is_file() and os.access(candidate, os.X_OK):
            return str(candidate)
    found = shutil.which("crowbar")
    if found:
        return found
    raise RuntimeError("the crowbar console script is not installed (run `make test`)")


CROWBAR = _crowbar_executable()


try:  # resolved here, not in the forked child
    import ctypes

    _prctl = ctypes.CDLL(None, use_errno=True).prctl if sys.platform == "linux" else None
except (ImportError, OSError, AttributeError):
    _prctl = None


def _die_with_parent() -> None:
    """In the child, before exec: get SIGTERM if the test runner itself dies (no orphaned servers)."""
    if _prctl is not None:
        _prctl(1, int(signal.SIGTERM))  # PR_SET_PDEATHSIG


def free_port() -> int:
    """A free loopback port below Linux's ephemeral range, so that no client connection takes it
    between this check and the server's bind (start() retries if something else does)."""
    for _ in range(50):
        port = random.randrange(20000, 32000)
        with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
            try:
                s.bind(("127.0.0.1", port))
            except OSError:
                continue
            return port
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def clean_env(**extra: str) -> dict[str, str]:
    """The environment minus anything that could point a process at the user's own Crowbar."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("CROWBAR_")}
    env.update(NO_COLOR="1", TERM="dumb", COLUMNS="200", PYTHONUNBUFFERED="1")
    env.update(extra)
    return env


class PortTaken(Exception):
    pass


@dataclass
class Result:
    args: tuple[str, ...]
    returncode: int
    stdout: str
    stderr: str

    def __str__(self) -> str:
        return (f"$ crowbar {' '.join(self.args)}\n[exit {self.returncode}]\n--- stdout\n{self.stdout}"
                f"--- stderr\n{self.stderr}")

    @property
    def json(self):
        try:
            return json.loads(self.stdout)
        except ValueError as exc:
            raise AssertionError(f"stdout is not JSON ({exc}):\n{self}") from None


@dataclass
class Server:
    """One `crowbar server` process and the CLI environment that talks to it."""

    name: str
    root: Path
    data_dir: Path
    config_home: Path
    port: int
    database: str | None = None
    workers: int = 8
    proc: subprocess.Popen | None = None
    logs: list[Path] = field(default_factory=list)

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    @property
    def pid(self) -> int:
        assert self.proc is not None
        return self.proc.pid

    def env(self, **extra: str) -> dict[str, str]:
        """The CLI's environment: endpoint, a private config home, an empty data dir of its own."""
        cli_data = self.root / "cli-data"
        cli_data.mkdir(exist_ok=True)
        return clean_env(**{"CROWBAR_ENDPOINT": self.url, "CROWBAR_DATA_DIR": str(cli_data),
                            "XDG_CONFIG_HOME": str(self.config_home), "XDG_DATA_HOME": str(self.root / "xdg-data"),
                            "HOME": str(self.root / "home"), **extra})

    # -- process control ------------------------------------------------------------------------
    def start(self, same_port: bool = False) -> "Server":
        """Start (or restart) the server; if its port was taken meanwhile, try again."""
        for attempt in range(5):
            try:
                return self._start()
            except PortTaken:
                if same_port:
                    time.sleep(1)
                else:
                    self.port = free_port()
        return self._start()

    def _start(self) -> "Server":
        assert self.proc is None or self.proc.poll() is not None, "already running"
        log = self.root / f"server-{self.name}-{len(self.logs) + 1}.log"
        self.logs.append(log)
        args = [CROWBAR, "server", "--listen", f"127.0.0.1:{self.port}", "--data-dir", str(self.data_dir),
                "--workers", str(self.workers)]
        if self.database:
            args += ["--database", self.database]
        env = clean_env(XDG_CONFIG_HOME=str(self.config_home), XDG_DATA_HOME=str(self.root / "xdg-data"),
                        HOME=str(self.root / "home"))
        with open(log, "wb") as fh:
            self.proc = subprocess.Popen(args, stdout=fh, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
                                         env=env, cwd=self.root,
                                         preexec_fn=_die_with_parent if _prctl else None)
        self.wait_healthy()
        return self

    def wait_healthy(self, timeout: float = START_TIMEOUT) -> None:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                if "Address already in use" in self.logs[-1].read_text(errors="replace"):
                    raise PortTaken(self.port)
                raise RuntimeError(f"crowbar server exited with {self.proc.returncode} before it was healthy:\n"
                                   f"{self.log_text()}")
            try:
                if httpx.get(f"{self.url}/api/v2/health", timeout=1.0).status_code == 200:
                    return
            except httpx.HTTPError:
                pass
            time.sleep(0.1)
        self.stop()
        raise RuntimeError(f"crowbar server not healthy after {timeout}s:\n{self.log_text()}")

    def stop(self, timeout: float = STOP_TIMEOUT) -> int | None:
        """SIGTERM this process only; SIGKILL it if it has not exited after `timeout`."""
        if self.proc is None:
            return None
        if self.proc.poll() is None:
            try:
                self.proc.send_signal(signal.SIGTERM)
                self.proc.wait(timeout)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(10)
        return self.proc.returncode

    def kill(self) -> None:
        """SIGKILL, as a crash would, and reap the process so that its PID is really gone."""
        self.proc.send_signal(signal.SIGKILL)
        self.proc.wait(10)

    def log_text(self) -> str:
        parts = []
        for log in self.logs:
            try:
                parts.append(f"=== {log}\n{log.read_text(errors='replace')}")
            except OSError as exc:
                parts.append(f"=== {log}: {exc}")
        return "\n".join(parts)

    # -- the CLI ---------------------------------------------------------------------------------
    def cli(self, *args, env: dict | None = None, timeout: float = CLI_TIMEOUT) -> Result:
        args = tuple(str(a) for a in args)
        proc = subprocess.run([CROWBAR, *args], env=env or self.env(), capture_output=True, text=True,
                              timeout=timeout, stdin=subprocess.DEVNULL, cwd=self.root)
        return Result(args, proc.returncode, proc.stdout, proc.stderr)

    def ok(self, *args, **kw) -> Result:
        """Run the CLI and insist on exit 0 and no traceback."""
        r = self.cli(*args, **kw)
        assert r.returncode == 0, str(r)
        assert "Traceback" not in r.stdout + r.stderr, str(r)
        return r

    def json(self, *args, **kw):
        return self.ok(*args, "-o", "json", **kw).json

    def fails(self, *args, code: int | None = None, **kw) -> Result:
        """Run the CLI and insist on the error contract: non-zero exit, one `error:` line, no traceback."""
        r = self.cli(*args, **kw)
        one_error_line(r, code)
        return r


def one_error_line(r: Result, code: int | None = None) -> str:
    """The CLI's error contract for a finished run: non-zero exit (`code` if given), exactly one
    `error: ...` line on stderr, no traceback; the line."""
    assert r.returncode != 0, str(r)
    if code is not None:
        assert r.returncode == code, str(r)
    assert "Traceback" not in r.stdout + r.stderr, str(r)
    lines = r.stderr.splitlines()
    assert len(lines) == 1, f"expected exactly one line on stderr:\n{r}"
    assert lines[0].startswith("error: ") and len(lines[0]) > len("error: ") + 5, str(r)
    return lines[0]


class Servers:
    """Factory for servers (and throwaway PostgreSQL databases) owned by one test."""

    def __init__(self, tmp_path: Path):
        self.tmp_path = tmp_path
        self.servers: list[Server] = []
        self.pg_databases: list[str] = []

    def new(self, name: str = "main", database: str | None = None, workers: int = 8, start: bool = True,
            root: Path | None = None) -> Server:
        root = root or self.tmp_path / name
        root.mkdir(parents=True, exist_ok=True)
        for sub in ("home", "xdg-data", "config"):
            (root / sub).mkdir(exist_ok=True)
        server = Server(name=name, root=root, data_dir=root / "data", config_home=root / "config",
                        port=free_port(), database=database, workers=workers)
        self.servers.append(server)
        return server.start() if start else server

    def postgres_url(self) -> str:
        """A fresh, empty database on the test cluster, dropped after this test's servers stopped."""
        if not PG_URL:
            pytest.skip(PG_MISSING)
        from sqlalchemy import text
        from sqlalchemy.engine import make_url

        name = f"crowbar_e2e_{uuid.uuid4().hex[:10]}"
        with _pg_admin().connect() as conn:
            conn.execute(text(f'CREATE DATABASE "{name}"'))
        self.pg_databases.append(name)
        return make_url(PG_URL).set(database=name).render_as_string(hide_password=False)

    def close(self) -> None:
        """Stop every server; complain if one did not stop cleanly or logged a traceback."""
        errors = []
        for server in reversed(self.servers):
            try:
                code = server.stop()
            except Exception as exc:  # keep stopping the others
                errors.append(f"could not stop {server.name} (pid {server.proc.pid if server.proc else '-'}): {exc}")
                continue
            # uvicorn shuts down gracefully on SIGTERM, then re-raises it: -SIGTERM is a clean stop
            if code not in (0, None, -signal.SIGTERM):
                errors.append(f"server {server.name} exited with {code} on SIGTERM")
            if "Traceback" in server.log_text():
                errors.append(f"server {server.name} logged a traceback")
        if self.pg_databases:
            from sqlalchemy import text

            admin = _pg_admin()
            with admin.connect() as conn:
                for name in self.pg_databases:
                    conn.execute(text(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)'))
            admin.dispose()
        if errors:
            raise RuntimeError("; ".join(errors))


def _pg_admin():
    from sqlalchemy import create_engine
    from sqlalchemy.engine import make_url

    return create_engine(make_url(PG_URL).set(database="postgres"), isolation_level="AUTOCOMMIT")


@pytest.fixture
def servers(request, tmp_path):
    factory = Servers(tmp_path)
    request.node._crowbar_servers = factory.servers
    yield factory
    factory.close()


@pytest.fixture
def server(servers) -> Server:
    """One running server on SQLite in a fresh data dir."""
    return servers.new()


@pytest.hookimpl(hookwrapper=True)
def pytest_runtest_makereport(item, call):
    """Attach every server log of a failing test to its report."""
    outcome = yield
    report = outcome.get_result()
    if report.failed:
        for s in getattr(item, "_crowbar_servers", []):
            report.sections.append((f"crowbar server {s.name} (port {s.port}) log", s.log_text()))


# -- a tiny barclamp for the scenarios -----------------------------------------------------------
E2E_BARCLAMP = """\
barclamp: {name: e2e, description: roles for the end-to-end tests, version: "1.0"}
roles:
  - name: e2e-after-fails          # a descendant of test-fails: blocked for as long as it fails
    jig: test
    requires: [test-fails]
  - name: e2e-flaky                # fails while the node's e2e-fail attrib is true
    jig: test
    requires: [test-client]
    attribs:
      - {name: e2e-fail, map: test/fail, default: false, schema: {type: boolean}}
    template: {test: {delay: 0}}
  - name: e2e-after-flaky
    jig: test
    requires: [e2e-flaky]
  - name: e2e-slow                 # slow roles, to catch the annealer with runs in flight
    jig: test
    flags: [implicit]              # one per node, not one shared by the deployment
    template: {test: {delay: %(delay)s}}
  - name: e2e-slow-child
    jig: test
    requires: [e2e-slow]
    template: {test: {delay: %(delay)s}}
"""


def write_barclamp(directory: Path, text: str) -> Path:
    directory.mkdir(parents=True, exist_ok=True)
    (directory / "barclamp.yml").write_text(textwrap.dedent(text))
    return directory


@pytest.fixture
def e2e_barclamp(tmp_path):
    """Write the e2e barclamp (slow roles sleep `delay` seconds) and return its directory."""
    def make(delay: float = 1.5) -> Path:
        return write_barclamp(tmp_path / "barclamps" / "e2e", E2E_BARCLAMP % {"delay": delay})

    return make


@pytest.fixture
def make_barclamp():
    """write_barclamp(directory, yaml_text) for tests that need a barclamp of their own."""
    return write_barclamp


@pytest.fixture
def unused_port() -> int:
    return free_port()

"""Online mode without daemons: configuration rendering, log reading, hostile git URLs and refs,
what installed nodes get, the server's proxy settings, and the API's answers."""

from __future__ import annotations

from pathlib import Path

import pytest

from crowbar.errors import InvalidInput
from crowbar.proxy import ProxyConfig, apt, git, pypi
from crowbar.server.main import proxy_config
from crowbar.services import install


@pytest.fixture
def config(tmp_path) -> ProxyConfig:
    return ProxyConfig(state_dir=tmp_path / "proxy", listen=("10.9.0.1", "127.0.0.1"), node_address="10.9.0.1")


def test_apt_cacher_ng_config_binds_the_admin_address_and_remaps_debian_to_the_upstream(config):
    text = apt.conf_text(config, "http://mirror.example/debian")
    assert "Port: 3142\n" in text and "BindAddress: 10.9.0.1 127.0.0.1\n" in text
    assert "Remap-debrep: file:deb_mirror*.gz /debian mirror.example/debian ; http://mirror.example/debian/\n" in text
    assert "ForceManaged: 1\n" in text  # nothing but the remapped archives: not an open proxy
    assert f"CacheDir: {config.dir('apt') / 'cache'}\n" in text
    assert apt.command(Path("/c"), offline=True)[-1] == "Offlinemode=1"
    assert apt.command(Path("/c"), offline=False)[-1] == "Offlinemode=0"


def test_devpi_and_git_daemon_command_lines(config, tmp_path):
    argv = pypi.command(config, offline=True, secret_file=tmp_path / "s")
    assert "--listen=10.9.0.1:3141" in argv and "--listen=127.0.0.1:3141" in argv and argv[-1] == "--offline-mode"
    assert "--offline-mode" not in pypi.command(config, offline=False, secret_file=tmp_path / "s")
    assert "--restrict-modify" in argv  # nobody else creates users or indexes
    assert "--no-root-pypi" in pypi.init_command(config, "pw")
    assert pypi.index_config("https://pypi.org/simple")["mirror_no_project_list"] is True
    assert pypi.index_url(config) == "http://10.9.0.1:3141/root/pypi/+simple/"
    daemon = git.command(config)
    assert "--listen=10.9.0.1" in daemon and "--listen=127.0.0.1" in daemon and "--informative-errors" in daemon
    assert "--disable=receive-pack" in daemon


def test_apt_statistics_from_the_transfer_log(config):
    log = config.dir("apt") / "log"
    log.mkdir(parents=True)
    cached = config.dir("apt") / "cache" / "debrep/pool/main/h/hello"
    cached.mkdir(parents=True)
    (cached / "hello_1_amd64.deb").write_bytes(b"x" * 10)
    (log / apt.TRANSFER_LOG).write_text("\n".join([
        "1|I|100|127.0.0.1|debrep/pool/main/h/hello/hello_1_amd64.deb",   # fetched for a client: a miss
        "1|O|100|127.0.0.1|debrep/pool/main/h/hello/hello_1_amd64.deb",
        "2|O|100|10.9.0.5|debrep/pool/main/h/hello/hello_1_amd64.deb",    # from the cache: a hit
        "3|O|688|10.9.0.5|debrep/pool/main/c/cowsay/cowsay_3_all.deb",    # refused (offline): a miss
        "garbage line", ""]))
    counts = apt.stats(config)
    assert (counts.hits, counts.misses, counts.bytes_served, counts.bytes_upstream) == (1, 2, 888, 100)


def test_devpi_and_git_statistics_from_their_logs(config):
    config.dir("pypi").mkdir(parents=True)
    (config.dir("pypi") / pypi.LOG).write_text("\n".join([
        "2026 INFO  [req1] GET /root/pypi/+f/55e/7eda/tinydep-2.0-py3-none-any.whl",
        "2026 INFO  [req1] [Rtx6] reading remote: URL('http://up/simple/tinydep/tinydep-2.0.whl'), target",
        "2026 INFO  [req2] GET /root/pypi/+f/55e/7eda/tinydep-2.0-py3-none-any.whl",
        "2026 ERROR [req3] The project otherpkg does not exist."]))
    counts = pypi.stats(config)
    assert (counts.hits, counts.misses) == (1, 2)
    config.dir("git").mkdir(parents=True)
    (config.dir("git") / git.LOG).write_text("[1] Request upload-pack for '/h/a.git'\n"
                                             "[2] '/srv/x/nothing.git' does not appear to be a git repository\n")
    assert (git.stats(config).hits, git.stats(config).misses) == (1, 1)


@pytest.mark.parametrize("url, path", [
    ("https://github.com/org/app.git", "github.com/org/app.git"),
    ("https://github.com/org/app", "github.com/org/app.git"),
    ("git://127.0.0.1:9999/demo", "127.0.0.1_9999/demo.git"),
    ("http://git.example/a/b/c.git/", "git.example/a/b/c.git"),
])
def test_git_urls_map_to_mirror_paths(url, path):
    assert git.repo_path(url) == path


@pytest.mark.parametrize("url", [
    "file:///etc", "/srv/repo", "ssh://host/r.git", "ext::sh -c id", "https://user:pw@host/r.git",
    "https://host/../etc/passwd", "https://host/.hidden/r", "https://host/r?x=1", "https://host/r#f",
    "https://host/r r", "https://host/", "https://host:99999/r", "https://host/a\x00b", "x" * 600, 42,
])
def test_hostile_git_urls_are_refused(url):
    with pytest.raises(InvalidInput):
        git.repo_path(url)


@pytest.mark.parametrize("ref", ["-x", "--upload-pack=sh", "a..b", "main@{1}", "a b", "x.lock", "/abs", "", "a" * 201])
def test_hostile_refs_are_refused(ref):
    with pytest.raises(InvalidInput):
        git.check_ref(ref)


def test_url_at_ref():
    assert git.split_spec("https://h/r.git@v1.2") == ("https://h/r.git", "v1.2")
    assert git.split_spec("https://h/r.git@feature/x") == ("https://h/r.git", "feature/x")
    assert git.split_spec("https://h/r.git") == ("https://h/r.git", "HEAD")


def test_installed_nodes_get_the_apt_proxy_and_the_pip_index():
    ctx = install.Context(images=None, apt_proxy="http://10.9.0.1:3142",
                          pip_index="http://10.9.0.1:3141/root/pypi/+simple/")
    files = {f["path"]: f["content"] for f in install.proxy_files(ctx)}
    assert 'Acquire::http::Proxy "http://10.9.0.1:3142";' in files["/etc/apt/apt.conf.d/00crowbar-proxy"]
    assert 'Acquire::Retries "3";' in files["/etc/apt/apt.conf.d/00crowbar-proxy"]
    assert "index-url = http://10.9.0.1:3141/root/pypi/+simple/" in files["/etc/pip.conf"]
    assert "trusted-host = 10.9.0.1" in files["/etc/pip.conf"]
    assert install.proxy_files(install.Context(images=None)) == []


def test_server_proxy_settings(tmp_path):
    cfg = proxy_config(tmp_path, "10.9.0.1", None, None, "3100,3101,3102")
    assert cfg.listen == ("10.9.0.1", "127.0.0.1") and cfg.node_address == "10.9.0.1"
    assert (cfg.apt_port, cfg.pypi_port, cfg.git_port) == (3100, 3101, 3102) and cfg.apt_upstream == "host"
    assert proxy_config(tmp_path, None, None, None, None).listen == ("127.0.0.1",)
    for bad in ("1,2", "a,b,c", "0,1,2", "40000,3141,9418"):
        with pytest.raises(ValueError, match="--proxy-ports"):
            proxy_config(tmp_path, None, None, None, bad)


def test_the_proxies_can_fetch_upstream_through_an_http_proxy(tmp_path):
    direct = proxy_config(tmp_path, "10.9.0.1", None, None, None)
    assert direct.via is None and direct.via_env() == {} and "Proxy:" not in apt.conf_text(direct, "http://m/debian")
    via = proxy_config(tmp_path, "10.9.0.1", None, None, None, "http://127.0.0.1:8888/")
    assert via.via == "http://127.0.0.1:8888"
    text = apt.conf_text(via, "http://m/debian")
    assert "\nProxy: http://127.0.0.1:8888\nReuseConnections: 0\nPipelineDepth: 1\n" in text
    env = via.via_env()  # devpi's: PyPI through the proxy, the admin and loopback addresses direct
    assert env["https_proxy"] == env["HTTPS_PROXY"] == "http://127.0.0.1:8888"
    assert env["no_proxy"].split(",") == ["127.0.0.1", "localhost", "::1", "10.9.0.1"]
    for bad in ("https://p:1", "http://p", "http://p:0", "http://p:99999", "http://u:pw@p:1", "ftp://p:1"):
        with pytest.raises(ValueError, match="--proxy-via"):
            proxy_config(tmp_path, None, None, None, None, bad)


def test_a_missing_daemon_is_one_line(config, monkeypatch):
    from crowbar.server import proxies

    monkeypatch.setattr(proxies.apt, "PROGRAM", "/nonexistent/apt-cacher-ng")
    with pytest.raises(RuntimeError, match="--proxies needs /nonexistent/apt-cacher-ng"):
        proxies.Proxies(config).start()


class _Stopped:
    """The proxies' state directory with no daemon running (what `status` reads is files)."""

    def __init__(self, config: ProxyConfig):
        self.config = config

    def running(self):
        return {"apt": None, "pypi": None, "git": None}

    def set_offline(self, offline: bool) -> None:
        self.config.state_dir.mkdir(parents=True, exist_ok=True)
        if offline:
            self.config.offline_flag.write_text("x")
        else:
            self.config.offline_flag.unlink(missing_ok=True)


def test_deploying_through_the_api_points_nodes_at_the_proxies(config):
    from crowbar.api.provisioning import _install_context
    from crowbar.api.settings import AppSettings

    ctx = _install_context(AppSettings(db=None, proxies=_Stopped(config)))
    assert ctx.apt_proxy == "http://10.9.0.1:3142" and ctx.pip_index == "http://10.9.0.1:3141/root/pypi/+simple/"
    assert _install_context(AppSettings(db=None)).apt_proxy is None


def _client(db, token, proxies):
    from fastapi.testclient import TestClient

    from crowbar.api.app import create_app
    from crowbar.api.settings import AppSettings

    return TestClient(create_app(AppSettings(db=db, proxies=proxies)), headers={"authorization": f"Bearer {token}"})


def test_api_without_proxies_says_so(db, admin_token):
    client = _client(db, admin_token, None)
    r = client.get("/api/v2/proxy")
    assert r.status_code == 409 and "--proxies" in r.json()["message"]


def test_api_status_offline_and_hostile_staging(db, admin_token, config):
    client = _client(db, admin_token, _Stopped(config))
    status = client.get("/api/v2/proxy").json()
    assert status["offline"] is False and [i["kind"] for i in status["items"]] == ["apt", "pypi", "git"]
    assert status["items"][1]["url"] == "http://10.9.0.1:3141/root/pypi/+simple/"
    assert client.put("/api/v2/proxy/offline", json={"offline": True}).json()["offline"] is True
    r = client.post("/api/v2/proxy/stage", json={"pip": ["tinypkg"]})
    assert r.status_code == 409 and "offline" in r.json()["message"]
    assert client.put("/api/v2/proxy/offline", json={"offline": False}).json()["offline"] is False
    for body, field in [({"os": "debian-12", "packages": ["-oDir=/"]}, "packages"),
                        ({"pip": ["x; rm -rf /"]}, "pip"), ({"pip": ["--index-url=http://evil"]}, "pip"),
                        ({"git": ["file:///etc@main"]}, "git"), ({"packages": ["hello"]}, "os"), ({}, None)]:
        r = client.post("/api/v2/proxy/stage", json=body)
        assert r.status_code == 422, (body, r.text)
        assert r.json().get("field") == field, (body, r.json())
    assert client.put("/api/v2/proxy/offline", json={"offline": "yes"}).status_code == 422
    events = client.get("/api/v2/events", params={"object_type": "proxy"}).json()["items"]
    assert [(e["action"], e["actor"]) for e in events] == [("offline", "admin"), ("online", "admin")]


def test_cli_status_offline_and_stage_errors(db, admin_token, config, monkeypatch):
    import json

    from click.testing import CliRunner
    from fastapi.testclient import TestClient

    from crowbar.cli import main
    from crowbar.cli.client import CliError, Client

    http = TestClient(_client(db, admin_token, _Stopped(config)).app, base_url="http://testserver/api/v2",
                      headers={"authorization": f"Bearer {admin_token}"})
    fake = Client.__new__(Client)
    fake.endpoint, fake.token_source, fake.http, fake.timeout = "http://testserver", None, http, 60
    monkeypatch.setattr(main, "Client", lambda endpoint: fake)

    def run(*args: str) -> str:
        result = CliRunner().invoke(main.cli, list(args), catch_exceptions=False)
        assert result.exit_code == 0, result.output
        return result.output

    def fails(*args: str) -> str:  # main() prints a CliError as one line and exits 1
        with pytest.raises(CliError) as caught:
            CliRunner().invoke(main.cli, list(args), catch_exceptions=False)
        assert "\n" not in str(caught.value)
        return str(caught.value)

    rows = json.loads(run("proxy", "status", "-o", "json"))
    assert [r["kind"] for r in rows] == ["apt", "pypi", "git"] and rows[0]["running"] is False
    assert "proxies: online" in run("proxy", "status")
    assert "offline" in run("proxy", "offline", "on")
    assert "OFFLINE" in run("proxy", "status")
    assert "offline" in fails("proxy", "stage", "--pip", "tinypkg")
    run("proxy", "offline", "off")
    assert "need --os" in fails("proxy", "stage", "hello")

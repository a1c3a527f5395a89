"""Online mode with real parts on loopback: crowbar's Proxies run apt-cacher-ng (upstream: the
Debian mirror this host's apt uses), devpi-server (upstream: a simple index of wheels made here)
and git daemon (mirrors of a repository made here, served upstream by another git daemon).
Real apt-get with a throwaway apt root, real pip and real git clone go through them; then offline
mode serves what was staged and refuses the rest with an error naming it.

The tests run in file order and share the proxies (starting devpi takes seconds)."""

from __future__ import annotations

import subprocess
import sys

import pytest

from crowbar.errors import Conflict, InvalidInput, NotFound
from crowbar.provisioner import osimage
from crowbar.proxy import ProxyConfig, apt
from crowbar.server.proxies import Proxies
from crowbar.services import proxy
from tests.proxy.proxykit import AptRoot, Daemons, commit, free_port, git, make_repo, make_wheel, missing_tools

pytestmark = pytest.mark.skipif(bool(missing_tools()), reason=f"online mode needs {', '.join(missing_tools())} "
                                "(make deps: apt-cacher-ng; make venv: devpi-server)")


@pytest.fixture(scope="module")
def online(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("online")
    daemons = Daemons()
    proxies = None
    try:
        index = tmp / "upstream-pypi" / "simple"
        make_wheel(index, "tinypkg", "1.0", ("tinydep",))
        make_wheel(index, "tinydep", "2.0")
        make_wheel(index, "otherpkg", "1.0")
        pypi_port = free_port()
        daemons.http_server(index.parent, pypi_port, tmp / "upstream-pypi.log")
        repos = tmp / "upstream-git"
        first = make_repo(repos / "demo", {"app.py": "print('one')\n"})
        git("tag", "v1", cwd=repos / "demo")
        git_port = free_port()
        daemons.git_daemon(repos, git_port, tmp / "upstream-git.log")
        config = ProxyConfig(state_dir=tmp / "proxy", listen=("127.0.0.1",), node_address="127.0.0.1",
                             apt_port=free_port(below=apt.MAX_PORT + 1), pypi_port=free_port(), git_port=free_port(),
                             pypi_upstream=f"http://127.0.0.1:{pypi_port}/simple/")
        proxies = Proxies(config)
        proxies.start()
        proxies.wait_ready()
        yield {"proxies": proxies, "tmp": tmp, "repo": repos / "demo", "first": first,
               "repo_url": f"git://127.0.0.1:{git_port}/demo", "upstream_pypi_log": tmp / "upstream-pypi.log"}
    finally:
        if proxies:
            proxies.stop()
        daemons.stop()


def pip_download(index: str, dest, *reqs: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "pip", "download", "--isolated", "--no-cache-dir",
                           "--disable-pip-version-check", "-d", str(dest), "--index-url", index, *reqs],
                          capture_output=True, text=True, timeout=300)


def test_every_proxy_runs_and_status_counts_nothing_yet(online):
    status = proxy.status(online["proxies"])
    assert status["offline"] is False
    assert {item["kind"]: item["running"] for item in status["items"]} == {"apt": True, "pypi": True, "git": True}
    assert all(item["hits"] == 0 for item in status["items"])


def test_mirror_git_resolves_refs_and_nodes_clone_the_exact_commit(online, tmp_path):
    ctx = online["proxies"]
    got = proxy.mirror_git(ctx, online["repo_url"], "main")
    assert got["sha"] == online["first"]
    assert got["url"].startswith(f"git://127.0.0.1:{ctx.config.git_port}/127.0.0.1_")
    assert proxy.mirror_git(ctx, online["repo_url"], "v1")["sha"] == online["first"]
    second = commit(online["repo"], {"app.py": "print('two')\n"}, "second")
    assert proxy.mirror_git(ctx, online["repo_url"], "main")["sha"] == second  # fetched again
    assert proxy.mirror_git(ctx, online["repo_url"], online["first"])["sha"] == online["first"]
    clone = tmp_path / "clone"
    git("clone", "-q", got["url"], str(clone))
    git("checkout", "-q", online["first"], cwd=clone)
    assert (clone / "app.py").read_text() == "print('one')\n"
    with pytest.raises(NotFound, match="no branch, tag or commit 'nope'"):
        proxy.mirror_git(ctx, online["repo_url"], "nope")
    for url in ("file:///etc", "/srv/repo", "http://user:pw@host/r.git", "git://h/../x", "ext::sh -c id"):
        with pytest.raises(InvalidInput):
            proxy.mirror_git(ctx, url, "main")
    with pytest.raises(InvalidInput):
        proxy.mirror_git(ctx, online["repo_url"], "--upload-pack=touch /tmp/x")


def test_pip_installs_through_the_pypi_cache(online, tmp_path):
    index = proxy.pip_index_url(online["proxies"])
    out = pip_download(index, tmp_path, "tinypkg")
    assert out.returncode == 0, out.stderr
    assert sorted(p.name for p in tmp_path.iterdir()) == ["tinydep-2.0-py3-none-any.whl", "tinypkg-1.0-py3-none-any.whl"]
    # devpi asked the upstream for these projects only, never for its list of every project
    requests = online["upstream_pypi_log"].read_text()
    assert "GET /simple/tinypkg/" in requests and '"GET /simple/ ' not in requests


def test_staging_fills_the_caches_and_apt_get_fetches_through_the_proxy(online, tmp_path):
    ctx = online["proxies"]
    out = proxy.stage(ctx, "debian-12", ["hello"], ["tinypkg"], [f"{online['repo_url']}@v1"])
    assert any(name.startswith("hello_") for name in out["apt"])
    assert "tinypkg-1.0-py3-none-any.whl" in out["pypi"]
    assert out["git"][0]["sha"] == online["first"]
    # a node's apt: a real apt-get in a throwaway root, through the proxy, gets hello from the cache
    recipe = osimage.recipe("debian-12")
    node = AptRoot(tmp_path / "node", ctx.config.url("apt"), osimage.mirror_url(recipe), recipe.suite)
    assert node.run("update").returncode == 0
    got = node.run("install", "--download-only", "-y", "hello")
    assert got.returncode == 0, got.stderr
    assert any(name.startswith("hello_") for name in node.debs())
    apt = next(i for i in proxy.status(ctx)["items"] if i["kind"] == "apt")
    assert apt["hits"] > 0 and apt["bytes_upstream"] > 0 and apt["cache_bytes"] > 0 and apt["staged"] == 1


def test_offline_serves_only_what_was_staged(online, tmp_path):
    ctx = online["proxies"]
    status = proxy.set_offline(ctx, True)
    assert status["offline"] is True and all(item["running"] for item in status["items"])
    try:
        recipe = osimage.recipe("debian-12")
        node = AptRoot(tmp_path / "node", ctx.config.url("apt"), osimage.mirror_url(recipe), recipe.suite)
        assert node.run("update").returncode == 0  # the staged index files
        assert node.run("install", "--download-only", "-y", "hello").returncode == 0
        refused = node.run("install", "--download-only", "-y", "cowsay")
        assert refused.returncode != 0
        assert "cowsay" in refused.stderr and "Unable to download in offline mode" in refused.stderr
        # pip: the staged requirement installs, anything else is named as missing
        assert pip_download(proxy.pip_index_url(ctx), tmp_path / "ok", "tinypkg").returncode == 0
        missing = pip_download(proxy.pip_index_url(ctx), tmp_path / "no", "otherpkg")
        assert missing.returncode != 0 and "No matching distribution found for otherpkg" in missing.stderr
        # git: the staged repository still resolves and clones; nothing is fetched
        assert proxy.mirror_git(ctx, online["repo_url"], "v1")["sha"] == online["first"]
        with pytest.raises(Conflict, match=r"offline: git mirror of git://127.0.0.1:\d+/other is not staged"):
            proxy.mirror_git(ctx, online["repo_url"].replace("/demo", "/other"), "main")
        newer = commit(online["repo"], {"app.py": "print('three')\n"}, "third")
        with pytest.raises(Conflict, match=f"has no '{newer}' staged"):
            proxy.mirror_git(ctx, online["repo_url"], newer)
        with pytest.raises(Conflict, match="offline"):
            proxy.stage(ctx, pip=["otherpkg"])
        kinds = {i["kind"]: i for i in proxy.status(ctx)["items"]}
        assert kinds["apt"]["misses"] > 0 and kinds["pypi"]["misses"] > 0 and kinds["pypi"]["hits"] > 0
    finally:
        assert proxy.set_offline(ctx, False)["offline"] is False
    # online again: what was refused comes from the upstream
    assert pip_download(proxy.pip_index_url(ctx), tmp_path / "again", "otherpkg").returncode == 0


def test_a_git_daemon_refuses_what_is_not_mirrored_by_name(online, tmp_path):
    ctx = online["proxies"]
    out = subprocess.run(["git", "clone", "-q", f"{ctx.config.url('git')}/nothing/here.git", str(tmp_path / "x")],
                         capture_output=True, text=True, timeout=60)
    assert out.returncode != 0 and "no such repository" in out.stderr
    assert next(i for i in proxy.status(ctx)["items"] if i["kind"] == "git")["misses"] >= 1

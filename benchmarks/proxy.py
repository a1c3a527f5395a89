"""Online mode: what a node deployment fetches, with a cold cache and then a warm one.

    python benchmarks/proxy.py [--packages python3-venv git] [--wheels 20] [--json FILE]

Starts crowbar's proxies (crowbar.server.proxies) on free loopback ports in a throwaway directory:
apt-cacher-ng in front of the Debian mirror this host's apt uses, devpi-server in front of a simple
index of generated wheels (served on loopback), the git mirror of a generated repository (served
upstream by its own git daemon). Then two "nodes" do, one after the other, what a node does after
its install when a role installs software from packages and from source: `apt-get update` and
`apt-get install --download-only PACKAGES` in a throwaway apt root (empty dpkg status: every
dependency is fetched), `mirror_git` + `git clone`, and `pip download` of a project that needs the
generated wheels. The first node meets a cold cache, the second a warm one. Reported per node: wall
time, and bytes the proxies fetched from upstream (apt: apt-cacher-ng's transfer log; pypi: the
growth of devpi's store; git: what the server's fetches added to the mirror).
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from crowbar.provisioner import osimage  # noqa: E402
from crowbar.proxy import ProxyConfig, apt  # noqa: E402
from crowbar.server.proxies import Proxies  # noqa: E402
from crowbar.services import proxy  # noqa: E402
from tests.proxy.proxykit import AptRoot, Daemons, free_port, git, make_repo, make_wheel  # noqa: E402


def upstream(ctx) -> dict[str, int]:
    items = {i["kind"]: i for i in proxy.status(ctx)["items"]}
    return {"apt": items["apt"]["bytes_upstream"], "pypi": items["pypi"]["cache_bytes"],
            "git": items["git"]["bytes_upstream"]}


def node(ctx, work: Path, packages: list[str], repo_url: str) -> dict:
    recipe = osimage.recipe("debian-12")
    before = upstream(ctx)
    started = time.monotonic()
    root = AptRoot(work / "apt", ctx.config.url("apt"), osimage.mirror_url(recipe), recipe.suite)
    for args in (("update",), ("install", "--download-only", "-y", *packages)):
        out = root.run(*args)
        if out.returncode != 0:
            raise SystemExit(f"apt-get {args[0]} failed: {out.stderr.strip()}")
    mirrored = proxy.mirror_git(ctx, repo_url, "main")
    git("clone", "-q", mirrored["url"], str(work / "src"))
    out = subprocess.run([sys.executable, "-m", "pip", "download", "--isolated", "--no-cache-dir", "-q",
                          "--disable-pip-version-check", "-d", str(work / "wheels"),
                          "--index-url", proxy.pip_index_url(ctx), "benchapp"], capture_output=True, text=True)
    if out.returncode != 0:
        raise SystemExit(f"pip download failed: {out.stderr.strip()}")
    wall = time.monotonic() - started
    after = upstream(ctx)
    return {"wall_s": round(wall, 2), "debs": len(root.debs()),
            "deb_bytes": sum(p.stat().st_size for p in (root.root / "var/cache/apt/archives").glob("*.deb")),
            **{f"upstream_{k}_bytes": after[k] - before[k] for k in after}}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--packages", nargs="+", default=["python3-venv", "git"])
    parser.add_argument("--wheels", type=int, default=20, help="generated dependencies of the pip project")
    parser.add_argument("--json", type=Path, help="append the results as JSON lines")
    args = parser.parse_args()
    daemons = Daemons()
    proxies = None
    with tempfile.TemporaryDirectory(prefix="crowbar-bench-proxy-") as tmp_name:
        tmp = Path(tmp_name)
        try:
            index = tmp / "pypi" / "simple"
            deps = [f"benchdep{i}" for i in range(args.wheels)]
            for name in deps:
                make_wheel(index, name, "1.0")
            make_wheel(index, "benchapp", "1.0", tuple(deps))
            pypi_port = free_port()
            daemons.http_server(index.parent, pypi_port, tmp / "pypi.log")
            make_repo(tmp / "git" / "app", {f"f{i}.py": f"X = {'1' * 2000}\n" for i in range(50)})
            git_port = free_port()
            daemons.git_daemon(tmp / "git", git_port, tmp / "git.log")
            proxies = Proxies(ProxyConfig(state_dir=tmp / "proxy", listen=("127.0.0.1",), node_address="127.0.0.1",
                                          apt_port=free_port(below=apt.MAX_PORT + 1), pypi_port=free_port(),
                                          git_port=free_port(), pypi_upstream=f"http://127.0.0.1:{pypi_port}/simple/"))
            proxies.start()
            proxies.wait_ready()
            rows = []
            for n, cache in enumerate(("cold", "warm"), 1):
                row = {"benchmark": "proxy", "cache": cache,
                       **node(proxies, tmp / f"node{n}", args.packages, f"git://127.0.0.1:{git_port}/app")}
                rows.append(row)
                print(json.dumps(row), flush=True)
        finally:
            if proxies:
                proxies.stop()
            daemons.stop()
    if args.json:
        with args.json.open("a") as fh:
            for row in rows:
                fh.write(json.dumps(row) + "\n")


if __name__ == "__main__":
    main()

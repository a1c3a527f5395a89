"""Online mode end to end on a lab VM, through the CLI only (issue 11): the lab's server runs the
caching proxies (`lab up --proxies`), which reach the Debian mirror and PyPI through the lab's
uplink (tinyproxy + socat relays; crowbar/lab/uplink.py); the VM reaches nothing but the admin
server. An installed Debian 12 node's apt goes through apt-cacher-ng by itself (the seed wrote
it): the puppet jig installs puppet-agent that way on the node, which has no puppet, then applies
the sample pphello (Hiera data in, a wall out that a child role uses); a package installs online;
a staged one installs with the proxies offline while an unstaged one fails with the proxy's error
naming it. Then install from source: pyhello from a git
repository (upstream: `git daemon` in the lab's namespace) through the admin server's git mirror,
its Python dependency from the PyPI cache, at tag v1's commit, then at a new commit."""

from __future__ import annotations

import json
import re
import subprocess
import time
from pathlib import Path

import pytest

from gitkit import GIT_ENV, commit, free_port, make_repo
from test_lab_deploy import OS, _missing_deploy, _ssh
from test_lab_e2e import cli_with_os, lab_down

REPO = Path(__file__).resolve().parents[2]
ADMIN = "192.168.124.10"


def _missing_online() -> str | None:
    if reason := _missing_deploy():
        return reason
    from crowbar.lab import uplink
    from crowbar.proxy import apt, pypi

    missing = uplink.missing_tools()
    if not Path(apt.PROGRAM).exists():
        missing.append("apt-cacher-ng (apt-get install apt-cacher-ng)")
    import shutil

    if not shutil.which(pypi.program("devpi-server")):
        missing.append("devpi-server (pip install devpi-server)")
    return ", ".join(missing) or None


pytestmark = [pytest.mark.e2e, pytest.mark.skipif(_missing_online() is not None, reason=str(_missing_online()))]


@pytest.fixture
def cli(tmp_path):
    cli = cli_with_os(tmp_path, OS)
    yield cli
    lab_down(cli)


def _on(cli, node: str, command: str, timeout: float = 600, ok: bool = True) -> subprocess.CompletedProcess:
    return cli("nodes", "ssh", node, "--", command, timeout=timeout, ok=ok)


def _wall(cli, deployment: str, *role: str) -> dict:
    (nr,) = cli.json("noderoles", "list", "--deployment", deployment, *(("--role", *role) if role else ()))
    shown = cli.json("noderoles", "show", str(nr["id"]))
    assert shown["state"] == "active", (shown.get("status"), cli.context())
    return shown["wall"]


def _probe_upstream(cli) -> str:
    """For a failed install: the packages apt-cacher-ng answered with an error, fetched again now
    through the lab's uplink (its tinyproxy on this host's loopback, the proxies' only way to the
    mirror), so that a failure says whether the refusal lasted or has passed and what the uplink
    answers (tests reach nothing outside but through the lab's own uplink)."""
    import urllib.request

    from crowbar.provisioner.osimage import host_mirror

    failed = []
    for err in sorted(cli.lab_dir.glob("**/apt-cacher.err")):
        failed += re.findall(r"\|debrep/(\S+) \[HTTP error, code: (\d+)\]", err.read_text(errors="replace"))
    if not failed:
        return ""
    uplink = json.loads((cli.lab_dir / "lab.json").read_text()).get("uplink", {}).get("url")
    if not uplink:
        return ""
    opener = urllib.request.build_opener(urllib.request.ProxyHandler({"http": uplink}))
    lines = [f"--- upstream probe: {len(failed)} errors in apt-cacher-ng's log; the last 3 fetched "
             f"again now through the uplink {uplink} ---"]
    for path, code in failed[-3:]:
        url = f"{host_mirror().rstrip('/')}/{path}"
        try:
            with opener.open(url, timeout=20) as answer:
                got = f"{answer.status} ({len(answer.read())} bytes)"
        except Exception as exc:  # noqa: BLE001 - a diagnostic: whatever happened is the answer
            got = f"{type(exc).__name__}: {exc}"
        lines.append(f"{url} (was {code}): {got}")
    return "\n".join(lines) + "\n"


def test_a_node_installs_through_the_proxies_online_and_offline_and_runs_pyhello_from_source(cli, tmp_path):
    timings, last = {}, [time.monotonic()]

    def took(step: str) -> None:  # printed at the end, as test_lab_deploy does (pytest -s shows them)
        timings[step], last[0] = time.monotonic() - last[0], time.monotonic()

    cli("lab", "up", "--nodes", "1", "--proxies", "--disk", "4", "--wait", "--timeout", "400", timeout=500)
    status = cli.json("lab", "status")
    node, namespace = status["vms"][0]["node"], status["namespace"]
    proxies = {p["kind"]: p for p in cli.json("proxy", "status")}
    assert all(proxies[k]["running"] for k in ("apt", "pypi", "git")), proxies
    # the VM reaches nothing outside the lab: the namespace has no route out
    routes = subprocess.run(["ip", "-n", namespace, "route", "show", "default"], capture_output=True, text=True)
    assert routes.stdout.strip() == ""

    took("lab up to discovered")
    cli("nodes", "allocate", node)
    cli("nodes", "deploy", node, "--os", OS, "--wait", "--timeout", "1200", timeout=1300)
    took("deploy to ready")
    address = {a["node"]: a["address"] for a in cli.json("network", "allocations", "admin")}[node].split("/")[0]
    assert f"http://{ADMIN}:3142" in _on(cli, node, "cat /etc/apt/apt.conf.d/00crowbar-proxy").stdout

    # the puppet jig: the image has no puppet, so the jig installs puppet-agent (apt-get update, then
    # install) through the package proxy, then applies samples/barclamps/pphello, whose module takes
    # its message from Hiera (the deployment's role data); the manifest's wall reaches the child
    # pphello-check (script jig), which fetches the page at the URL it published
    assert _on(cli, node, "command -v puppet || echo none").stdout.strip() == "none"
    cli("barclamps", "import", str(REPO / "samples" / "barclamps" / "pphello"))
    cli("deployments", "create", "pp")
    cli("deployments", "bind", "pp", "pphello-check", node)  # and pphello, which it requires
    message = "Hello from Hiera on a lab node"
    cli("deployments", "role-data", "set", "pp", "pphello", json.dumps({"pphello::message": message}))
    cli("deployments", "commit", "pp")
    done = cli("anneal", "--wait", "--timeout", "900", "--deployment", "pp", timeout=1000, ok=False)
    if done.returncode != 0:  # the failed noderoles' run logs say why
        said = cli.log[-1]
        logs = "".join(f"--- noderole {n['id']} ({n['role']}) log ---\n"
                       + cli("noderoles", "log", str(n["id"]), ok=False).stdout
                       for n in cli.json("noderoles", "list", "--deployment", "pp") if n["state"] == "error")
        raise AssertionError(f"{said}\n{logs}{_probe_upstream(cli)}{cli.context()}")
    took("pphello through puppet")
    wall = _wall(cli, "pp", "pphello")
    url = f"http://{address}:8091/"
    assert wall["pphello_url"] == url and wall["pphello_puppet"].startswith("7."), wall  # Debian 12: Puppet 7
    (nr,) = cli.json("noderoles", "list", "--deployment", "pp", "--role", "pphello")
    log = cli("noderoles", "log", str(nr["id"])).stdout
    assert "puppet is missing: installing puppet-agent" in log, log
    assert "<== puppet apply exited with 2 (changes applied)" in log, log
    # the package came through the admin server's apt-cacher-ng: its transfer log and its cache hold it
    acng = cli.lab_dir / "server" / "proxy" / "apt"
    sent = [line for line in (acng / "log" / "apt-cacher.log").read_text().splitlines()
            if re.search(r"\|O\|\d+\|.*/puppet-agent_[^/|]+\.deb$", line)]
    assert sent, "apt-cacher-ng's transfer log shows no puppet-agent package sent to the node"
    assert list(acng.glob("cache/**/puppet-agent_*.deb")), "puppet-agent is not in apt-cacher-ng's cache"
    # on the node: the package, the page with the injected message, the unit Puppet started
    state = _on(cli, node, "dpkg-query -W -f='${Status}\\n' puppet-agent; systemctl is-active pphello; "
                           "systemctl is-enabled pphello; head -1 /srv/pphello/index.html").stdout
    assert state.splitlines() == ["install ok installed", "active", "enabled", f"<h1>{message}</h1>"], state
    check = _wall(cli, "pp", "pphello-check")["pphello_check"]
    assert check["url"] == url and check["page"].startswith(f"<h1>{message}</h1>"), check

    # online: a package from the mirror, through apt-cacher-ng and the uplink
    done = _on(cli, node, "apt-get update -q >/dev/null && DEBIAN_FRONTEND=noninteractive "
                          "apt-get install -y -q hello >/dev/null && hello")
    assert done.stdout.strip().endswith("Hello, world!"), done.stdout
    after = {p["kind"]: p for p in cli.json("proxy", "status")}
    assert after["apt"]["bytes_upstream"] > proxies["apt"]["bytes_upstream"]
    took("a package online")

    # offline: what was staged installs, anything else fails with the proxy's error naming it
    cli("proxy", "stage", "--os", OS, "sl", timeout=900)
    assert cli.json("proxy", "offline", "on")["offline"] is True
    done = _on(cli, node, "DEBIAN_FRONTEND=noninteractive apt-get install -y -q sl >/dev/null && "
                          "test -x /usr/games/sl && echo staged-ok")
    assert done.stdout.strip() == "staged-ok", done.stdout
    refused = _on(cli, node, "DEBIAN_FRONTEND=noninteractive apt-get install -y -q figlet", ok=False)
    said = refused.stdout + refused.stderr
    assert refused.returncode != 0 and "figlet" in said and "503" in said, said
    cli("proxy", "offline", "off")
    took("staged and offline")

    # install from source: the upstream repository, served in the lab's namespace
    upstream = make_repo(tmp_path / "upstream" / "pyhello", REPO / "samples" / "barclamps" / "pyhello" / "app")
    subprocess.run(["git", "tag", "v1"], cwd=upstream, check=True, env={**GIT_ENV, "PATH": "/usr/bin:/bin"})
    v1 = subprocess.run(["git", "rev-parse", "HEAD"], cwd=upstream, capture_output=True, text=True,
                        check=True).stdout.strip()
    port = free_port()
    daemon = subprocess.Popen(["ip", "netns", "exec", namespace, "git", "daemon", "--export-all", "--reuseaddr",
                               f"--base-path={upstream.parent}", "--listen=127.0.0.1", f"--port={port}",
                               str(upstream.parent)], stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL,
                              stderr=subprocess.DEVNULL, start_new_session=True)
    try:
        repo = f"git://127.0.0.1:{port}/pyhello"
        cli("barclamps", "import", str(REPO / "samples" / "barclamps" / "pyhello"))
        cli("deployments", "create", "src")
        cli("deployments", "bind", "src", "pyhello", node)
        cli("deployments", "role-data", "set", "src", "pyhello", json.dumps({"source": {"repo": repo, "ref": "v1"}}))
        cli("deployments", "commit", "src")
        cli("anneal", "--wait", "--timeout", "900", "--deployment", "src", timeout=1000)
        wall = _wall(cli, "src")
        assert wall == {"source": {"repo": repo, "ref": "v1", "sha": v1}, "pyhello_url": f"http://{address}:8090/",
                        "pyhello_commit": v1, "pyhello_commit_before": ""}, wall  # nothing before a first clone
        # the run log names the resolution: the ref, its commit, and the mirror the node cloned from
        (nr,) = cli.json("noderoles", "list", "--deployment", "src")
        log = cli("noderoles", "log", str(nr["id"])).stdout
        assert re.search(rf"source {re.escape(repo)} at v1: commit {v1} \(cloned from git://{ADMIN}:\d+/", log), log
        state = _on(cli, node, "systemctl is-active pyhello; git -C /opt/pyhello/src rev-parse HEAD; "
                               "/opt/pyhello/venv/bin/python -c 'import bottle; print(bottle.__name__)'").stdout
        assert state.split() == ["active", v1, "bottle"], state
        page = _on(cli, node, "python3 -c \"import urllib.request as u; "
                              "print(u.urlopen('http://127.0.0.1:8090/').read().decode())\"").stdout
        assert "(pyhello 1.0)" in page, page
        pypi = {p["kind"]: p for p in cli.json("proxy", "status")}["pypi"]
        assert pypi["misses"] + pypi["hits"] > 0, pypi  # bottle came through the PyPI cache
        took("pyhello from source at v1")

        # a new commit; the ref moves to main: the role runs again, the wall shows both commits
        app = upstream / "pyhello" / "__init__.py"
        app.write_text(app.read_text().replace('VERSION = "1.0"', 'VERSION = "2.0"'))
        project = upstream / "pyproject.toml"
        project.write_text(project.read_text().replace('version = "1.0"', 'version = "2.0"'))
        v2 = commit(upstream, "pyhello 2.0")
        cli("deployments", "role-data", "set", "src", "pyhello", json.dumps({"source": {"repo": repo, "ref": "main"}}))
        cli("deployments", "commit", "src")
        cli("anneal", "--wait", "--timeout", "900", "--deployment", "src", timeout=1000)
        wall = _wall(cli, "src")
        assert wall["source"] == {"repo": repo, "ref": "main", "sha": v2, "previous_sha": v1}, wall
        assert (wall["pyhello_commit"], wall["pyhello_commit_before"]) == (v2, v1), wall
        assert _ssh(cli, node, "git -C /opt/pyhello/src rev-parse HEAD") == v2
        page = _on(cli, node, "sleep 2; python3 -c \"import urllib.request as u; "
                              "print(u.urlopen('http://127.0.0.1:8090/').read().decode())\"").stdout
        assert "(pyhello 2.0)" in page, page
        took("pyhello at a new commit")
        print("timings: " + ", ".join(f"{k} {v:.0f}s" for k, v in timings.items()))
    finally:
        from crowbar.procs import stop_pid

        stop_pid(daemon.pid, None, timeout=5)

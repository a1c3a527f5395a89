"""The provisioning routes on the provisioning listener only, and bound to the link: checked through
a real uvicorn server with several listeners, and the real kernel neighbour table of a network
namespace (docs/security.md)."""

from __future__ import annotations

import json
import os
import shutil
import socket
import subprocess
from pathlib import Path

import httpx
import pytest

from crowbar.api.listeners import listener_matches
from crowbar.api.settings import AppSettings
from crowbar.provisioner import neighbors
from crowbar.server.main import bind, provisioning_listeners
from discoverykit import Served, inventory, nonce_in

BUSYBOX = Path("/bin/busybox")


def tcp_spec(sock) -> str:
    host, port = sock.getsockname()[:2]
    return f"{host}:{port}"


def test_provisioning_routes_answer_404_on_any_other_listener(db, admin_token, tmp_path):
    admin_net, api_net = socket.create_server(("127.0.0.1", 0)), socket.create_server(("127.0.0.1", 0))
    unix = bind(f"unix:{tmp_path / 'api.sock'}")
    provision = tcp_spec(admin_net)
    served = Served(AppSettings(db=db, provision_listeners=(provision,)), [admin_net, api_net, unix])
    admin = {"authorization": f"Bearer {admin_token}"}
    body = json.dumps(inventory("52:54:00:aa:00:01"))
    clients = {"admin network": httpx.Client(base_url=f"http://{provision}"),
               "API address": httpx.Client(base_url=f"http://{tcp_spec(api_net)}"),
               "unix socket": httpx.Client(transport=httpx.HTTPTransport(uds=str(tmp_path / "api.sock")),
                                           base_url="http://crowbar")}
    try:
        for where in ("API address", "unix socket"):
            http = clients[where]
            for method, path, content in (("GET", "/boot/52-54-00-aa-00-01.ipxe", None),
                                          ("GET", "/boot/discovery/vmlinuz", None),
                                          ("GET", "/boot/ipxe/ipxe.efi", None),
                                          ("POST", "/api/v2/discovery", body),
                                          ("POST", "/api/v2/discovery", "{not json"),  # 404 before parsing
                                          ("POST", "/api/v2/discovery/", body),
                                          ("GET", "/api/v2/agent/next", None),
                                          ("POST", "/api/v2/agent/jobs/1", '{"exit_code": 0}')):
                r = http.request(method, path, content=content)
                assert r.status_code == 404, f"{where}: {method} {path} -> {r.status_code} {r.text}"
                assert r.json()["error"] == "not_found" and "provisioning listener" in r.json()["message"]
            # everything else is served there as before
            assert http.get("/api/v2/health").status_code == 200
            assert http.get("/api/v2/nodes", headers=admin).json()["items"] == []
        http = clients["admin network"]
        assert "discovery/vmlinuz" in http.get("/boot/52-54-00-aa-00-01.ipxe").text
        found = http.post("/api/v2/discovery", content=body)
        assert found.status_code == 201, found.text
        next_ = http.get("/api/v2/agent/next", headers={"authorization": f"Bearer {found.json()['token']}"})
        assert next_.json()["action"] == "wait"
        assert http.get("/api/v2/nodes", headers=admin).status_code == 200  # the admin API is not moved
        assert len(clients["unix socket"].get("/api/v2/nodes", headers=admin).json()["items"]) == 1
    finally:
        for client in clients.values():
            client.close()
        served.close()


@pytest.mark.parametrize("spec, server, matches", [
    ("127.0.0.1:3000", ("127.0.0.1", 3000), True),
    ("127.0.0.1:3000", ("127.0.0.1", 3001), False),
    ("127.0.0.1:3000", ("10.0.0.1", 3000), False),
    ("0.0.0.0:3000", ("10.0.0.1", 3000), True),
    ("[::]:3000", ("::ffff:10.0.0.1", 3000), True),
    ("[::1]:3000", ("::1", 3000), True),
    ("192.168.124.10:3000", ("::ffff:192.168.124.10", 3000), True),
    ("localhost:3000", ("127.0.0.1", 3000), True),
    ("unix:/run/crowbar/api.sock", ("/run/crowbar/api.sock", None), True),
    ("unix:/run/crowbar/api.sock", ("/run/other.sock", None), False),
    ("unix:/run/crowbar/api.sock", ("127.0.0.1", 3000), False),
    ("127.0.0.1:3000", None, False),
])
def test_a_listener_is_matched_by_the_connections_local_address(spec, server, matches):
    assert listener_matches(spec, server) is matches


def test_the_labs_server_serves_provisioning_on_the_admin_bridge_only(tmp_path, monkeypatch):
    """`crowbar server` as the lab starts it (its real command line): provisioning on the admin
    address, not on the unix socket the CLI uses; the link is bound to the admin bridge."""
    from click.testing import CliRunner

    from crowbar.cli import local, main
    from crowbar.lab import lab as labmod

    started = {}

    def popen(argv, **_kwargs):
        started["argv"] = argv
        raise RuntimeError("not starting it")

    monkeypatch.setattr(labmod.subprocess, "Popen", popen)
    lab = labmod.Lab(tmp_path)
    lab.state = labmod.LabState(namespace="cblab-test", lab_byte=1, dir=str(tmp_path), created_at="")
    with pytest.raises(RuntimeError):
        lab._start_server(1)
    argv = started["argv"]
    args = argv[argv.index("server"):]
    seen = {}
    monkeypatch.setattr(local, "serve", lambda *a, **kw: seen.update(args=a, options=kw))
    assert CliRunner().invoke(main.cli, args).exit_code == 0
    listens, provision = seen["args"][0], seen["args"][4]
    interface, _, address = provision.partition("=")
    assert interface == labmod.ADMIN_BRIDGE and seen["options"]["provision_only_on"] == []
    on = provisioning_listeners(listens, seen["options"]["provision_only_on"], address)
    assert on == (f"{labmod.ADMIN_ADDRESS}:{labmod.API_PORT}",)
    assert not any(spec.startswith("unix:") for spec in on) and any(s.startswith("unix:") for s in listens)


def test_which_listeners_provision():
    listens = ["192.168.124.10:3000", "10.0.0.5:8080", "unix:/run/c.sock"]
    assert provisioning_listeners(listens, [], None) is None  # no --provision: every listener, as before
    assert provisioning_listeners(listens, [], "192.168.124.10") == ("192.168.124.10:3000",)
    assert provisioning_listeners(["0.0.0.0:3000", "unix:/s"], [], "192.168.124.10") == ("0.0.0.0:3000",)
    assert provisioning_listeners(listens, ["10.0.0.5:8080"], "192.168.124.10") == ("10.0.0.5:8080",)
    assert provisioning_listeners(listens, ["unix:/run/c.sock"], None) == ("unix:/run/c.sock",)
    with pytest.raises(ValueError, match="not one of the --listen"):
        provisioning_listeners(listens, ["10.0.0.6:8080"], None)
    with pytest.raises(ValueError, match="--provision-only-on"):
        provisioning_listeners(["10.0.0.5:8080"], [], "192.168.124.10")


def test_crowbar_server_refuses_a_provision_only_on_that_is_not_a_listener(tmp_path):
    from click.testing import CliRunner

    from crowbar.cli import main

    result = CliRunner().invoke(main.cli, ["server", "--listen", "127.0.0.1:9", "--data-dir", str(tmp_path),
                                           "--provision-only-on", "127.0.0.1:1"])
    assert result.exit_code == 1 and "not one of the --listen values" in str(result.exception)


# --- the link: the kernel's neighbour table ------------------------------------------------------

ARP = """IP address       HW type     Flags       HW address            Mask     Device
10.77.0.2        0x1         0x2         52:54:00:AA:00:01     *        prov0
10.77.0.3        0x1         0x0         00:00:00:00:00:00     *        prov0
10.77.0.4        0x1         0x2         52:54:00:aa:00:04     *        other0
"""


def test_the_arp_table_gives_complete_entries_on_the_interface_only():
    assert neighbors.arp_lookup(ARP, "10.77.0.2", "prov0") == "52:54:00:aa:00:01"
    assert neighbors.arp_lookup(ARP, "10.77.0.3", "prov0") is None  # incomplete
    assert neighbors.arp_lookup(ARP, "10.77.0.4", "prov0") is None  # another interface
    assert neighbors.arp_lookup(ARP, "10.77.0.9", "prov0") is None
    assert neighbors.ndisc_lookup("fd00::2 lladdr 52:54:00:aa:00:06 REACHABLE\n") == "52:54:00:aa:00:06"
    assert neighbors.ndisc_lookup("fd00::3 INCOMPLETE\n") is None


def _netns_missing() -> str | None:
    if os.geteuid() != 0:
        return "needs root for network namespaces"
    if not shutil.which("ip"):
        return "ip is not installed (Debian package iproute2)"
    if not BUSYBOX.is_file():
        return "busybox-static is not installed"
    return None


CLIENT_MAC, OTHER_MAC = "52:54:00:aa:00:01", "52:54:00:bb:00:01"


@pytest.mark.skipif(_netns_missing() is not None, reason=str(_netns_missing()))
def test_bound_to_the_link_through_a_real_neighbour_table(db, admin_token):
    """A server in one namespace, a machine in another behind a veth pair: the server learns the
    machine's MAC from the kernel and serves a nonce only for the machine's own script."""
    from labnet import NetNS

    from crowbar.services import nodes, provisioning

    server_ns, machine_ns = NetNS("crowbar-srv"), NetNS("crowbar-mach")
    served = None
    try:
        server_ns.ip("link", "add", "prov0", "type", "veth", "peer", "name", "eth0", "netns", machine_ns.name)
        server_ns.ip("addr", "add", "10.77.0.1/24", "dev", "prov0")
        server_ns.ip("link", "set", "prov0", "up")
        machine_ns.ip("link", "set", "eth0", "address", CLIENT_MAC)
        machine_ns.ip("addr", "add", "10.77.0.2/24", "dev", "eth0")
        machine_ns.ip("link", "set", "eth0", "up")
        sleeper = server_ns.start("sleep", "600")  # /proc/<pid>/net is the server namespace's
        resolver = neighbors.resolver("prov0", arp_table=Path(f"/proc/{sleeper.pid}/net/arp"))
        sock = server_ns.listen("10.77.0.1")  # uvicorn serves a listening socket as it is
        port = sock.getsockname()[1]
        served = Served(AppSettings(db=db, link_address=resolver), [sock])
        with db.session() as s:  # two known machines: the one in the namespace, and another
            for mac in (CLIENT_MAC, OTHER_MAC):
                provisioning.discover(s, inventory(mac))
        url = f"http://10.77.0.1:{port}"

        def wget(path: str, post: str | None = None, nonce: str | None = None) -> subprocess.CompletedProcess:
            args = ["ip", "netns", "exec", machine_ns.name, str(BUSYBOX), "wget", "-q", "-O", "-"]
            if nonce:
                args += ["--header", f"X-Crowbar-Nonce: {nonce}"]
            if post is not None:
                args += ["--header", "Content-Type: application/json", "--post-data", post]
            return subprocess.run(args + [url + path], capture_output=True, text=True, timeout=30)

        own = wget(f"/boot/{CLIENT_MAC.replace(':', '-')}.ipxe")
        assert own.returncode == 0, own.stderr
        assert resolver("10.77.0.2") == CLIENT_MAC  # the kernel learnt it from the connection
        nonce = nonce_in(own.stdout)
        assert nonce, own.stdout
        other = wget(f"/boot/{OTHER_MAC.replace(':', '-')}.ipxe")
        assert other.returncode == 0 and "discovery/vmlinuz" in other.stdout and nonce_in(other.stdout) is None
        # the other machine's inventory, posted from this one: refused even with a nonce
        stolen = wget("/api/v2/discovery", json.dumps(inventory(OTHER_MAC)), nonce=nonce)
        assert stolen.returncode != 0 and "403" in stolen.stderr
        mine = wget("/api/v2/discovery", json.dumps(inventory(CLIENT_MAC)), nonce=nonce)
        assert mine.returncode == 0, mine.stderr
        assert json.loads(mine.stdout)["node"] == f"d{CLIENT_MAC.replace(':', '-')}.crowbar.local"
        with db.session() as s:
            assert len(nodes.list_nodes(s)) == 2
    finally:
        if served:
            served.close()
        server_ns.close()
        machine_ns.close()


"""`crowbar neutron whois` with the live Neutron API: the URL comes from the wall of a deployment's
active neutron-server noderole (or --api), networks, ports and routers from GET /v2.0/..., with no
token; an API that does not answer is a 502 with the one error body and one CLI line. The API is a
small Neutron-shaped HTTP server on 127.0.0.1 (tests/openstack/conftest.py)."""

from __future__ import annotations

import json

import pytest

from crowbar.errors import BadGateway, Conflict, InvalidInput, NotFound
from crowbar.network import linuxbridge
from crowbar.openstack import neutron_api
from crowbar.services import network, openstack

from openstack_helpers import (CONTROLLER, NET_BLUE, NET_FIXED, NET_RED, PORT_DHCP, PORT_ROUTER, PORT_VM, ROUTER,
                      deploy_neutron_server)

V2 = "/api/v2"


# -- the pure layer: every device name the agents make ------------------------------------------
def test_whois_names_the_owner_of_every_device_the_linux_bridge_agents_make():
    from openstack_helpers import NEUTRON

    nets, ports, routers = NEUTRON["networks"], NEUTRON["ports"], NEUTRON["routers"]
    cases = {
        "brq" + NET_BLUE[:11]: ("network", NET_BLUE),
        "eth1.501": ("network", NET_BLUE),       # <iface>.<vlan>: the network with that segment
        "eth1.500": ("network", NET_FIXED),
        "enp0s4.502": ("network", NET_RED),
        linuxbridge.tap_name(PORT_VM): ("port", PORT_VM),
        linuxbridge.tap_name(PORT_DHCP): ("port", PORT_DHCP),
        linuxbridge.dhcp_device_name(PORT_DHCP): ("port", PORT_DHCP),
        linuxbridge.router_device_name(PORT_ROUTER): ("port", PORT_ROUTER),
        linuxbridge.router_device_name(PORT_ROUTER, external=True): ("port", PORT_ROUTER),
        linuxbridge.dhcp_namespace(NET_BLUE): ("network", NET_BLUE),
        linuxbridge.router_namespace(ROUTER): ("router", ROUTER),
    }
    for device, (kind, ident) in cases.items():
        owner = linuxbridge.whois(device, nets, ports, routers)
        assert owner is not None and (owner.kind, owner.id) == (kind, ident), device
    assert linuxbridge.whois("eth1.503", nets, ports, routers) is None
    assert linuxbridge.whois("tap" + "f" * 11, nets, ports, routers) is None


# -- the reader ----------------------------------------------------------------------------------
def test_the_reader_asks_for_the_fields_whois_reads_with_no_token(fake_neutron):
    found = neutron_api.read(fake_neutron.url + "/")
    assert [n["name"] for n in found["networks"]] == ["nova_fixed", "blue", "red"]
    assert {p["id"] for p in found["ports"]} == {PORT_VM, PORT_DHCP, PORT_ROUTER}
    assert found["routers"] == [{"id": ROUTER, "name": "edge"}]
    paths = [path for path, _ in fake_neutron.requests]
    assert [p.split("?")[0] for p in paths] == ["/v2.0/networks", "/v2.0/ports", "/v2.0/routers"]
    assert "fields=provider%3Asegmentation_id" in paths[0] and "fields=network_id" in paths[1]
    assert not any("X-Auth-Token" in headers or "Authorization" in headers for _, headers in fake_neutron.requests)


@pytest.mark.parametrize("answer, said", [
    (503, "GET /v2.0/ports answered 503"),
    (b"<html>proxy error</html>", "not Neutron's {\"ports\": [...]}"),
    (b'{"ports": [{"name": "no id"}]}', "not Neutron's"),
    (b'{"ports": {"id": "x"}}', "not Neutron's"),
])
def test_an_answer_that_is_not_neutrons_is_a_bad_gateway(fake_neutron, answer, said):
    fake_neutron.answers["ports"] = answer
    with pytest.raises(BadGateway, match="the Neutron API at http://127.0.0.1") as caught:
        neutron_api.read(fake_neutron.url)
    assert said in caught.value.message and "secret stack trace" not in caught.value.message
    assert caught.value.status == 502


def test_an_unreachable_api_is_a_bad_gateway_naming_the_url(unused_url):
    with pytest.raises(BadGateway) as caught:
        neutron_api.read(unused_url)
    assert caught.value.message.startswith(f"the Neutron API at {unused_url}: GET /v2.0/networks: Connect")


@pytest.mark.parametrize("url", ["file:///etc/passwd", "ftp://h/", "http://", "http://u:p@h:9696",
                                 "http://h:9696?x=1", "http://h:port", "", "http://h\n:9696", "x" * 3000,
                                 "http://" + "a" * 300 + "/", "http://127.0.0.1:99999"])
def test_urls_the_server_will_not_fetch(url):
    with pytest.raises(InvalidInput) as caught:
        neutron_api.read(url)
    assert caught.value.field == "api"


# -- the service: which deployment's API ----------------------------------------------------------
def test_whois_asks_the_api_the_deployments_neutron_server_published(db, fake_neutron):
    deploy_neutron_server(db, "openstack", CONTROLLER, fake_neutron.url)
    out = openstack.neutron_whois(db, "tap" + PORT_VM[:11])
    assert out == {"device": "tap" + PORT_VM[:11], "kind": "port", "id": PORT_VM, "name": "vm",
                   "network": {"id": NET_BLUE, "name": "blue"}, "device_owner": "compute:nova",
                   "device_id": "vm-1", "source": fake_neutron.url}
    assert openstack.neutron_whois(db, "qrouter-" + ROUTER)["name"] == "edge"
    blue = openstack.neutron_whois(db, "eth1.501", deployment="openstack")
    assert (blue["id"], blue["network_type"], blue["segmentation_id"]) == (NET_BLUE, "vlan", 501)
    # Crowbar stores nova_fixed as a provider network on 500 with its own uuid: Neutron's wins
    fixed = openstack.neutron_whois(db, "eth1.500")
    assert (fixed["id"], fixed["name"]) == (NET_FIXED, "nova_fixed")
    with pytest.raises(NotFound, match=f"or to the Neutron API at {fake_neutron.url}"):
        openstack.neutron_whois(db, "eth1.777")


def test_without_neutron_whois_searches_what_crowbar_stores_and_asks_nobody(db, fake_neutron):
    with db.session() as s:
        blue = network.create_tenant_network(s, "blue")
    out = openstack.neutron_whois(db, "eth1.501")
    assert out["id"] == blue["id"] and "source" not in out
    deploy_neutron_server(db, "openstack", CONTROLLER, None)  # active, but no URL published yet
    assert openstack.neutron_whois(db, "eth1.501")["id"] == blue["id"]
    with pytest.raises(NotFound, match="pass the port list"):
        openstack.neutron_whois(db, "tap" + PORT_VM[:11])
    with pytest.raises(Conflict, match="deployment 'openstack' has no active neutron-server"):
        openstack.neutron_whois(db, "eth1.501", deployment="openstack")
    assert fake_neutron.requests == []


def test_several_deployments_with_neutron_need_one_named(db, fake_neutron, unused_url):
    deploy_neutron_server(db, "east", CONTROLLER, fake_neutron.url)
    deploy_neutron_server(db, "west", "ctl2.example.com", unused_url)
    with pytest.raises(Conflict, match=r"several deployments have a Neutron API \(east, west\): name the deployment"):
        openstack.neutron_whois(db, "eth1.501")
    assert openstack.neutron_whois(db, "eth1.501", deployment="east")["id"] == NET_BLUE
    with pytest.raises(BadGateway, match=unused_url):
        openstack.neutron_whois(db, "eth1.501", deployment="west")
    assert openstack.neutron_whois(db, "eth1.502", api=fake_neutron.url)["name"] == "red"
    with pytest.raises(NotFound):
        openstack.neutron_whois(db, "eth1.501", deployment="north")
    with pytest.raises(InvalidInput, match="not both"):
        openstack.neutron_whois(db, "eth1.501", deployment="east", api=fake_neutron.url)
    with pytest.raises(InvalidInput, match="device name is empty"):
        openstack.neutron_whois(db, "  ", deployment="west")  # refused before asking anyone


# -- API and CLI ---------------------------------------------------------------------------------
def error(r, status: int, kind: str) -> dict:
    assert r.status_code == status, r.text
    body = r.json()
    assert body["error"] == kind and isinstance(body["message"], str)
    return body


def test_api_whois_live_and_its_errors(api, db, fake_neutron, unused_url):
    deploy_neutron_server(db, "openstack", CONTROLLER, fake_neutron.url)
    r = api.get(f"{V2}/neutron/whois/ns-{PORT_DHCP[:11]}")
    assert r.status_code == 200 and r.json()["device_owner"] == "network:dhcp"
    assert api.get(f"{V2}/neutron/whois/eth1.502", params={"deployment": "openstack"}).json()["id"] == NET_RED
    r = api.post(f"{V2}/neutron/whois", json={"device": "eth1.501", "api": fake_neutron.url})
    assert r.status_code == 200 and r.json()["source"] == fake_neutron.url
    body = error(api.post(f"{V2}/neutron/whois", json={"device": "eth1.501", "api": unused_url}), 502, "bad_gateway")
    assert body["message"].startswith(f"the Neutron API at {unused_url}: GET /v2.0/networks") and body["field"] == "api"
    error(api.post(f"{V2}/neutron/whois", json={"device": "eth1.501", "api": "file:///etc/passwd"}), 422, "invalid")
    error(api.post(f"{V2}/neutron/whois", json={"device": "eth1.501", "api": fake_neutron.url,
                                                 "ports": [{"id": PORT_VM}]}), 422, "invalid")
    error(api.get(f"{V2}/neutron/whois/eth1.501", params={"deployment": "nope"}), 404, "not_found")
    fake_neutron.answers["networks"] = 500
    body = error(api.get(f"{V2}/neutron/whois/eth1.501"), 502, "bad_gateway")
    assert "answered 500" in body["message"] and "secret" not in body["message"]
    # ports given by hand: no live API
    before = len(fake_neutron.requests)
    r = api.post(f"{V2}/neutron/whois", json={"device": "tap" + PORT_VM[:11], "ports": [{"id": PORT_VM, "name": "mine"}]})
    assert r.status_code == 200 and r.json()["name"] == "mine" and len(fake_neutron.requests) == before
    spec = api.get(f"{V2}/openapi.json").json()
    assert "502" in spec["paths"]["/api/v2/neutron/whois/{device}"]["get"]["responses"]


def test_cli_whois_live_text_json_and_one_line_errors(cli, db, fake_neutron, unused_url):
    deploy_neutron_server(db, "openstack", CONTROLLER, fake_neutron.url)
    code, out, _ = cli("neutron", "whois", "tap" + PORT_VM[:11])
    assert code == 0 and out == f"tap{PORT_VM[:11]}: port vm ({PORT_VM}), on network blue ({NET_BLUE})\n"
    code, out, _ = cli("neutron", "whois", "eth1.501", "--deployment", "openstack")
    assert out == f"eth1.501: network blue ({NET_BLUE}), vlan 501\n"
    code, out, _ = cli("neutron", "whois", "brq" + NET_RED[:11], "-o", "json")
    assert code == 0 and json.loads(out) == {"device": "brq" + NET_RED[:11], "kind": "network", "id": NET_RED,
                                             "name": "red", "network_type": "vlan", "segmentation_id": 502,
                                             "source": fake_neutron.url}
    code, out, _ = cli("neutron", "whois", "qrouter-" + ROUTER, "--api", fake_neutron.url, "-o", "json")
    assert code == 0 and json.loads(out)["name"] == "edge"
    code, _, failure = cli("neutron", "whois", "eth1.501", "--api", unused_url)
    assert code == 1 and failure.startswith(f"the Neutron API at {unused_url}: GET /v2.0/networks")
    assert "\n" not in failure
    code, _, failure = cli("neutron", "whois", "eth1.501", "--api", fake_neutron.url, "--deployment", "openstack")
    assert code != 0 and "not both" in failure
    fake_neutron.answers["routers"] = b"not json"
    code, _, failure = cli("neutron", "whois", "eth1.501")
    assert code == 1 and "GET /v2.0/routers: the answer is not Neutron's" in failure

"""`crowbar neutron networks create` with Neutron deployed: Crowbar allocates the segment (the seed's
501, 502...) and creates the network in the live Neutron API on it (provider attributes), under
Neutron's id; a refusal or no answer releases the reservation (nothing half-written). The API is the
Neutron-shaped HTTP server of openstack_helpers.py."""

from __future__ import annotations

import json

import httpx
import pytest

from crowbar.errors import BadGateway, Conflict, InvalidInput
from crowbar.openstack import neutron_api
from crowbar.services import network, openstack

from openstack_helpers import CONTROLLER, deploy_neutron_server

V2 = "/api/v2"


def test_a_tenant_network_is_created_in_neutron_on_crowbars_segment(db, fake_neutron):
    deploy_neutron_server(db, "openstack", CONTROLLER, fake_neutron.url)
    blue = openstack.create_tenant_network(db, "blue")
    red = openstack.create_tenant_network(db, "red", deployment="openstack")
    assert [p["network"] for p in fake_neutron.posted] == [
        {"name": "blue", "admin_state_up": True, "provider:network_type": "vlan",
         "provider:segmentation_id": 501, "provider:physical_network": "physnet1"},
        {"name": "red", "admin_state_up": True, "provider:network_type": "vlan",
         "provider:segmentation_id": 502, "provider:physical_network": "physnet1"}]
    made = {n["name"]: n["id"] for n in fake_neutron.answers["networks"][-2:]}
    assert (blue["id"], blue["segmentation_id"], blue["neutron"]) == (made["blue"], 501, fake_neutron.url)
    assert blue["bridge"] == "brq" + made["blue"][:11] and red["id"] == made["red"]
    with db.read_session() as s:
        stored = {n["name"]: n for n in network.list_tenant_networks(s)}
    assert stored["blue"]["id"] == made["blue"] and stored["red"]["segmentation_id"] == 502
    # a network Neutron already has is recorded by its id, nothing posted
    known = "0b9a7c4e-58f5-4a3d-9d7e-1f2e3d4c5b6a"
    assert openstack.create_tenant_network(db, "old", network_id=known)["id"] == known
    assert len(fake_neutron.posted) == 2
    with pytest.raises(InvalidInput, match="give one or the other"):
        openstack.create_tenant_network(db, "x", network_id=known, deployment="openstack")


def test_without_neutron_the_segment_is_only_recorded(db, fake_neutron):
    blue = openstack.create_tenant_network(db, "blue")
    assert blue["segmentation_id"] == 501 and "neutron" not in blue and fake_neutron.posted == []


def _tenants(db) -> list[dict]:
    with db.read_session() as s:  # but nova_fixed, which Crowbar keeps as a provider network
        return [n for n in network.list_tenant_networks(s) if n["name"] != "nova_fixed"]


@pytest.mark.parametrize("answer, error", [(409, Conflict), (500, BadGateway), (b'{"network": []}', BadGateway)])
def test_a_refusal_or_a_bad_answer_releases_the_segment(db, fake_neutron, answer, error):
    deploy_neutron_server(db, "openstack", CONTROLLER, fake_neutron.url)
    fake_neutron.answers["create"] = answer
    with pytest.raises(error) as caught:
        openstack.create_tenant_network(db, "blue")
    if answer == 409:
        assert "The VLAN 501 on physical network physnet1 is in use" in caught.value.message
    assert _tenants(db) == []  # nothing half-written
    fake_neutron.answers["create"] = None
    assert openstack.create_tenant_network(db, "blue")["segmentation_id"] == 501  # the segment is free again


def test_a_create_that_times_out_is_looked_for_before_the_segment_is_released(db, fake_neutron, monkeypatch):
    """Neutron under load may make the network after the POST's timeout: Crowbar asks for it by
    name and segment, and adopts it; when Neutron has not made it, the segment is released."""
    monkeypatch.setattr(neutron_api, "CREATE_TIMEOUT", httpx.Timeout(0.5, connect=3.0))
    deploy_neutron_server(db, "openstack", CONTROLLER, fake_neutron.url)
    fake_neutron.answers["networks"] = [n for n in fake_neutron.answers["networks"] if n["name"] == "nova_fixed"]
    fake_neutron.post_delay = 1.5
    blue = openstack.create_tenant_network(db, "blue")
    made = fake_neutron.answers["networks"][-1]
    assert (blue["id"], blue["segmentation_id"]) == (made["id"], 501) and made["name"] == "blue"
    lookup = fake_neutron.requests[-1][0]
    assert lookup.startswith("/v2.0/networks?") and "provider%3Asegmentation_id=501" in lookup, lookup
    assert [n["id"] for n in _tenants(db)] == [made["id"]]
    # a slow answer that made nothing (Neutron refused it, late): 502, the segment released
    fake_neutron.answers["create"] = 409
    with pytest.raises(BadGateway, match="POST /v2.0/networks: no answer within 0.5 s"):
        openstack.create_tenant_network(db, "red")
    assert [n["name"] for n in _tenants(db)] == ["blue"]


def test_an_unreachable_neutron_releases_the_segment(db, unused_url):
    deploy_neutron_server(db, "openstack", CONTROLLER, unused_url)
    with pytest.raises(BadGateway, match=f"the Neutron API at {unused_url}: POST /v2.0/networks"):
        openstack.create_tenant_network(db, "blue")
    assert _tenants(db) == []


def test_api_and_cli_create_in_neutron(api, cli, db, fake_neutron):
    deploy_neutron_server(db, "openstack", CONTROLLER, fake_neutron.url)
    r = api.post(f"{V2}/neutron/networks", json={"name": "blue", "deployment": "openstack"})
    assert r.status_code == 201 and r.json()["segmentation_id"] == 501
    assert r.json()["id"] == fake_neutron.answers["networks"][-1]["id"]
    code, out, _ = cli("neutron", "networks", "create", "red", "-o", "json")
    assert code == 0 and json.loads(out)["segmentation_id"] == 502
    assert json.loads(out)["id"] == fake_neutron.answers["networks"][-1]["id"]
    fake_neutron.answers["create"] = 409
    r = api.post(f"{V2}/neutron/networks", json={"name": "green"})
    assert r.status_code == 409 and r.json()["error"] == "conflict" and "in use" in r.json()["message"]
    code, _, failure = cli("neutron", "networks", "create", "green")
    assert code == 1 and "\n" not in failure and "refused the network" in failure
    code, _, failure = cli("neutron", "networks", "create", "green", "--id", "x", "--deployment", "openstack")
    assert code != 0 and "not both" in failure
    r = api.post(f"{V2}/neutron/networks", json={"name": "green", "deployment": "nope"})
    assert r.status_code == 404 and r.json()["error"] == "not_found"

"""Tenant networks and their segments in the database, Neutron's messages, and whois."""

from __future__ import annotations

import uuid

API = "/api/v2"
NO_NETWORK = "Unable to create the network. No tenant network is available for allocation."


def create(api, status=201, **body):
    r = api.post(f"{API}/neutron/networks", json=body)
    assert r.status_code == status, r.text
    return r.json()


def test_the_provider_fixed_network_takes_500_so_tenants_get_501_502(api):
    fixed = api.list(f"{API}/neutron/networks")
    assert [(n["name"], n["network_type"], n["physical_network"], n["segmentation_id"], n["provider"])
            for n in fixed] == [("nova_fixed", "vlan", "physnet1", 500, True)]
    first = create(api, name="tenant-a")
    assert (first["segmentation_id"], first["physical_network"], first["provider"]) == (501, "physnet1", False)
    assert first["bridge"] == "brq" + first["id"][:11]
    assert create(api, name="tenant-b")["segmentation_id"] == 502
    assert [n["segmentation_id"] for n in api.list(f"{API}/neutron/networks")] == [500, 501, 502]
    # release returns the tag to the pool: the lowest free comes back first
    r = api.delete(f"{API}/neutron/networks/tenant-a")
    assert r.status_code == 200 and r.json()["deleted"] and r.json()["segmentation_id"] == 501
    assert create(api, name="tenant-c")["segmentation_id"] == 501
    assert create(api, name="tenant-d")["segmentation_id"] == 503
    assert api.get(f"{API}/neutron/networks/tenant-c").json()["segmentation_id"] == 501
    assert api.delete(f"{API}/neutron/networks/tenant-a").status_code == 404


def test_explicit_provider_ids_inside_and_outside_the_range(api):
    inside = create(api, name="prov-700", segmentation_id=700)
    assert (inside["segmentation_id"], inside["provider"]) == (700, True)
    outside = create(api, name="prov-3000", segmentation_id=3000)
    assert outside["segmentation_id"] == 3000
    in_use = create(api, 409, name="again", segmentation_id=700)
    assert in_use["message"] == "Unable to create the network. The VLAN 700 on physical network physnet1 is in use."
    fixed_in_use = create(api, 409, name="again", segmentation_id=500)
    assert "The VLAN 500 on physical network physnet1 is in use." in fixed_in_use["message"]
    bad = create(api, 422, name="bad", segmentation_id=4095)
    assert bad["message"] == "Invalid input for operation: segmentation_id 4095 out of range (1 through 4094)."
    unknown = create(api, 422, name="bad", physical_network="physnet9")
    assert unknown["message"] == ("Invalid input for operation: physical_network 'physnet9' unknown for "
                                  "VLAN provider network.")
    assert create(api, name="auto")["segmentation_id"] == 501
    net_id = str(uuid.uuid4())
    given = create(api, name="given", id=net_id)
    assert given["id"] == net_id and given["segmentation_id"] == 502
    assert create(api, 409, name="dup", id=net_id)["field"] == "id"
    assert create(api, 422, name="x", id="not-a-uuid")["field"] == "id"


def test_exhaustion_with_neutrons_message(api):
    r = api.patch(f"{API}/neutron/settings", json={"tenant_vlan_count": 2})
    assert r.status_code == 200 and r.json()["tenant_vlan_count"] == 2
    assert [create(api, name=f"t{i}")["segmentation_id"] for i in range(2)] == [501, 502]
    full = create(api, 409, name="t2")
    assert full["message"] == NO_NETWORK
    assert create(api, name="explicit", segmentation_id=900)["segmentation_id"] == 900  # provider: still fine
    ml2 = api.get(f"{API}/nodes/none/neutron")
    assert ml2.status_code == 404


def test_settings_validation(api):
    r = api.patch(f"{API}/neutron/settings", json={"tenant_vlan_count": 4000})
    assert r.status_code == 422 and (r.json()["network"], r.json()["field"]) == ("nova_fixed", "vlan")
    assert r.json()["reason"] == ("tenant VLAN range 500..4500 passes 4094: with 4000 tenant VLANs the "
                                  "largest safe start is 94 (or lower the count to 3594)")
    assert api.patch(f"{API}/neutron/settings", json={"vni_ranges": ["5:1"]}).json()["message"] == (
        "Invalid network tunnel range: '5:1' - End of tunnel range is less than start of tunnel range.")
    assert api.patch(f"{API}/neutron/settings", json={"colour": 1}).status_code == 422
    assert api.patch(f"{API}/neutron/settings", json={"tenant_network_types": ["gre"]}).status_code == 422
    # nova_fixed's VLAN too high for the count: refused when the template changes
    r = api.patch(f"{API}/networks/nova_fixed", json={"vlan": 2095})
    assert r.status_code == 200  # the template itself is valid ...
    assert api.post(f"{API}/neutron/networks", json={"name": "x"}).json()["reason"].endswith(
        "the largest safe start is 2094 (or lower the count to 1999)")  # ... Neutron's range is not


def test_changing_nova_fixeds_vlan_moves_the_fixed_network(api):
    create(api, name="t1")
    assert api.patch(f"{API}/networks/nova_fixed", json={"vlan": 700}).status_code == 200
    rows = {n["name"]: n["segmentation_id"] for n in api.list(f"{API}/neutron/networks")}
    assert rows == {"nova_fixed": 700, "t1": 501}
    assert create(api, name="t2")["segmentation_id"] == 701
    # a tag held by a tenant network cannot become the fixed network's
    r = api.patch(f"{API}/networks/nova_fixed", json={"vlan": 501})
    assert r.status_code == 409 and "in use by tenant network 't1'" in r.json()["message"]


def test_vxlan_segments(api):
    assert create(api, name="x1", network_type="vxlan")["segmentation_id"] == 1001
    assert create(api, name="x2", network_type="vxlan")["segmentation_id"] == 1002
    assert create(api, name="x3", network_type="vxlan", segmentation_id=70000)["segmentation_id"] == 70000
    assert create(api, 409, name="x4", network_type="vxlan", segmentation_id=70000)["message"] == (
        "Unable to create the network. The tunnel ID 70000 is in use.")
    assert create(api, 422, name="x5", network_type="vxlan", segmentation_id=0)["field"] == "segmentation_id"
    assert create(api, 422, name="x6", network_type="gre")["field"] == "network_type"
    api.patch(f"{API}/neutron/settings", json={"vni_ranges": ["1:1"]})
    assert create(api, name="x7", network_type="vxlan")["segmentation_id"] == 1
    assert create(api, 409, name="x8", network_type="vxlan")["message"] == NO_NETWORK
    # VLAN and VXLAN ids do not collide with each other
    assert create(api, name="v1", segmentation_id=1001)["segmentation_id"] == 1001


def test_whois(api):
    net = create(api, name="blue")  # VLAN 501
    vx = create(api, name="green", network_type="vxlan")  # VNI 1001
    port_id, dhcp_id, rint_id, rgw_id = (str(uuid.uuid4()) for _ in range(4))
    router_id = str(uuid.uuid4())
    ports = [{"id": port_id, "name": "vm1-port", "network_id": net["id"], "device_owner": "compute:nova"},
             {"id": dhcp_id, "name": "", "network_id": net["id"], "device_owner": "network:dhcp"},
             {"id": rint_id, "name": "", "network_id": net["id"], "device_owner": "network:router_interface"},
             {"id": rgw_id, "name": "", "network_id": vx["id"], "device_owner": "network:router_gateway"}]

    def who(device, **extra):
        if extra:
            r = api.post(f"{API}/neutron/whois", json={"device": device, **extra})
        else:
            r = api.get(f"{API}/neutron/whois/{device}")
        assert r.status_code == 200, r.text
        return r.json()

    assert who("brq" + net["id"][:11])["id"] == net["id"]
    assert who("br" + net["id"])["name"] == "blue"  # the seed's older spelling
    assert who("qdhcp-" + net["id"])["name"] == "blue"
    assert who("eth1.501") == {"device": "eth1.501", "kind": "network", "id": net["id"], "name": "blue",
                               "network_type": "vlan", "segmentation_id": 501}
    assert who("eth1.500")["name"] == "nova_fixed"
    assert who("vxlan-1001")["name"] == "green"
    tap = who("tap" + port_id[:11], ports=ports)
    assert (tap["kind"], tap["id"], tap["name"]) == ("port", port_id, "vm1-port")
    assert tap["network"] == {"id": net["id"], "name": "blue"} and tap["device_owner"] == "compute:nova"
    assert who(("ns-" + dhcp_id)[:14], ports=ports)["device_owner"] == "network:dhcp"
    assert who(("qr-" + rint_id)[:14], ports=ports)["network"]["name"] == "blue"
    assert who(("qg-" + rgw_id)[:14], ports=ports)["network"]["name"] == "green"
    assert who("qrouter-" + router_id, routers=[{"id": router_id, "name": "r1"}])["name"] == "r1"

    r = api.get(f"{API}/neutron/whois/tap" + port_id[:11])
    assert r.status_code == 404 and "ports are not stored in Crowbar" in r.json()["message"]
    r = api.get(f"{API}/neutron/whois/vxlan-99")
    assert r.status_code == 404
    assert r.json()["message"] == "device 'vxlan-99' matches no tenant network, port or router known to Crowbar"
    # two networks sharing the 11-character prefix: ambiguous, named
    twin = create(api, name="twin", id=net["id"][:11] + str(uuid.uuid4())[11:])
    r = api.get(f"{API}/neutron/whois/brq" + net["id"][:11])
    assert r.status_code == 422 and net["id"] in r.json()["message"] and twin["id"] in r.json()["message"]

"""Networking routes under /api/v2: the network template, IP allocation, node interface plans,
Neutron tenant networks and settings. The logic is in crowbar.services.network.

Changes that can affect deployed nodes (PATCH/DELETE /networks/{name}, POST /networks/import)
take `?preview=true` (show the diff, the nodes and the allocations it affects; write nothing)
and `?force=true` (apply even though allocations must be re-allocated or released).
Validation errors are 422 JSON: {"error": "invalid", "message", "field", "network", "reason",
"problems": [...]}.
"""

from __future__ import annotations

from typing import Any

from fastapi import APIRouter, Body, Depends, Query
from fastapi.responses import JSONResponse
from pydantic import BaseModel, Field
from sqlalchemy.orm import Session

from crowbar.api import deps
from crowbar.errors import InvalidInput
from crowbar.services import network as svc

router = APIRouter(prefix="/api/v2", dependencies=[Depends(deps.actor)])
Db = Depends(deps.session)
Who = Depends(deps.actor)
Preview = Query(False, description="show what the change affects without applying it")
Force = Query(False, description="apply even when allocations must be re-allocated or released")


class ImportIn(BaseModel):
    template: dict[str, Any] | str = Field(description="the template (mapping, or YAML/JSON text)")
    preview: bool = False
    force: bool = False


class AllocationIn(BaseModel):
    node: str | None = Field(None, description="node name or id")
    nodes: list[str] | None = Field(None, description="or many nodes at once (one transaction)")
    range: str | None = Field(None, description="range name (default host; falls back to host)")
    address: str | None = Field(None, description="an address to try first (single node only)")


class TenantNetworkIn(BaseModel):
    name: str = ""
    network_type: str = Field("vlan", description="vlan or vxlan")
    physical_network: str | None = None
    segmentation_id: int | None = Field(None, description="explicit VLAN tag or VNI (provider)")
    id: str | None = Field(None, description="the Neutron network's uuid (default: a new one)")


class WhoisIn(BaseModel):
    device: str
    ports: list[dict[str, Any]] = Field(default_factory=list,
                                        description="e.g. `openstack port list -f json`")
    routers: list[dict[str, Any]] = Field(default_factory=list)
    networks: list[dict[str, Any]] = Field(default_factory=list)


def _done(s: Session, out: dict, status: int = 200):
    if not out.get("preview"):
        s.commit()
    return JSONResponse(out, status_code=status if out.get("applied") else 200)


# -- the template -------------------------------------------------------------------------------
@router.get("/networks", tags=["networks"])
def list_networks(s: Session = Db):
    return svc.list_networks(s)


@router.post("/networks", tags=["networks"], status_code=201)
def create_network(body: dict[str, Any] = Body(...), preview: bool = Preview, s: Session = Db,
                   who: str = Who):
    """A new network, in the template's format plus its `name`."""
    if "name" not in body:
        raise InvalidInput("name: a network needs a name", field="name")
    return _done(s, svc.create_network(s, body["name"], body, preview=preview, actor=who), 201)


@router.get("/networks/export", tags=["networks"])
def export_networks(s: Session = Db):
    return svc.export(s)


@router.post("/networks/import", tags=["networks"])
def import_networks(body: ImportIn, preview: bool = Preview, force: bool = Force, s: Session = Db,
                    who: str = Who):
    """Replace the whole template; networks missing from it are removed."""
    return _done(s, svc.import_template(s, body.template, preview=preview or body.preview,
                                        force=force or body.force, actor=who))


@router.get("/networks/{name}", tags=["networks"])
def show_network(name: str, s: Session = Db):
    return svc.show_network(s, name)


@router.patch("/networks/{name}", tags=["networks"])
def update_network(name: str, body: dict[str, Any] = Body(...), preview: bool = Preview,
                   force: bool = Force, s: Session = Db, who: str = Who):
    return _done(s, svc.update_network(s, name, body, preview=preview, force=force, actor=who))


@router.delete("/networks/{name}", tags=["networks"])
def delete_network(name: str, preview: bool = Preview, force: bool = Force, s: Session = Db,
                   who: str = Who):
    return _done(s, svc.delete_network(s, name, preview=preview, force=force, actor=who))


# -- allocations --------------------------------------------------------------------------------
@router.post("/networks/{name}/allocations", tags=["networks"])
def allocate(name: str, body: AllocationIn, s: Session = Db, who: str = Who):
    """201 with the new allocation, 200 when the node already had one (created: false)."""
    if body.nodes is not None:
        if body.node is not None or body.address is not None:
            raise InvalidInput("give node (and address) or nodes, not both", field="nodes")
        out = svc.allocate_many(s, name, body.nodes, body.range, actor=who)
        s.commit()
        return JSONResponse(out, status_code=201 if any(a["created"] for a in out) else 200)
    if not body.node:
        raise InvalidInput("node: which node to allocate for", field="node")
    out = svc.allocate(s, name, body.node, body.range, body.address, actor=who)
    s.commit()
    return JSONResponse(out, status_code=201 if out["created"] else 200)


@router.get("/networks/{name}/allocations", tags=["networks"])
def list_allocations(name: str, s: Session = Db):
    return svc.list_allocations(s, name)


@router.delete("/networks/{name}/allocations/{node}", tags=["networks"])
def release(name: str, node: str, s: Session = Db, who: str = Who):
    out = svc.release(s, name, node, actor=who)
    s.commit()
    return out


# -- node interface plans and Neutron configuration ---------------------------------------------
@router.get("/nodes/{node}/network_plan", tags=["networks"])
def network_plan(node: str, format: str = Query("json", description="json, networkd, netplan, ifupdown"),
                 s: Session = Db):
    return svc.node_plan(s, node, format)


@router.get("/nodes/{node}/neutron", tags=["neutron"])
def node_neutron(node: str, s: Session = Db):
    return svc.node_neutron(s, node)


# -- Neutron ------------------------------------------------------------------------------------
@router.get("/neutron/settings", tags=["neutron"])
def neutron_settings(s: Session = Db):
    return svc.neutron_settings(s)


@router.patch("/neutron/settings", tags=["neutron"])
def set_neutron_settings(body: dict[str, Any] = Body(...), s: Session = Db, who: str = Who):
    out = svc.set_neutron_settings(s, body, actor=who)
    s.commit()
    return out


@router.get("/neutron/networks", tags=["neutron"])
def list_tenant_networks(s: Session = Db):
    return svc.list_tenant_networks(s)


@router.post("/neutron/networks", status_code=201, tags=["neutron"])
def create_tenant_network(body: TenantNetworkIn, s: Session = Db, who: str = Who):
    out = svc.create_tenant_network(s, body.name, body.network_type, body.physical_network,
                                    body.segmentation_id, body.id, actor=who)
    s.commit()
    return out


@router.get("/neutron/networks/{key}", tags=["neutron"])
def show_tenant_network(key: str, s: Session = Db):
    return svc.show_tenant_network(s, key)


@router.delete("/neutron/networks/{key}", tags=["neutron"])
def delete_tenant_network(key: str, s: Session = Db, who: str = Who):
    out = svc.delete_tenant_network(s, key, actor=who)
    s.commit()
    return out


@router.get("/neutron/whois/{device}", tags=["neutron"])
def whois(device: str, s: Session = Db):
    return svc.whois(s, device)


@router.post("/neutron/whois", tags=["neutron"])
def whois_with(body: WhoisIn, s: Session = Db):
    """Like GET, with ports, routers (and extra networks) to search too."""
    return svc.whois(s, body.device, body.ports, body.routers, body.networks)

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
from pydantic import BaseModel, Field

from crowbar.api import deps, errors
from crowbar.api.body import JSONResponse
from crowbar.api.deps import Actor, Settings, TextPaging, UnitOfWork
from crowbar.services import network as svc
from crowbar.services import openstack

router = APIRouter(prefix="/api/v2", dependencies=[Depends(deps.actor)])
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
    id: str | None = Field(None, description="the uuid of a network Neutron already has (recorded, not "
                                             "created); default: Neutron's, or a new one without Neutron")
    deployment: str | None = Field(None, description="create it in this deployment's live Neutron API "
                                                     "(default: the only deployment with one, if any)")


class WhoisIn(BaseModel):
    device: str
    ports: list[dict[str, Any]] = Field(default_factory=list,
                                        description="e.g. `openstack port list -f json`")
    routers: list[dict[str, Any]] = Field(default_factory=list)
    networks: list[dict[str, Any]] = Field(default_factory=list)
    deployment: str | None = Field(None, description="ask this deployment's live Neutron API")
    api: str | None = Field(None, description="ask the Neutron API at this URL (http://HOST:9696)")


LIVE = errors.responses(502, _502="The live Neutron API did not answer, or not with Neutron's JSON")


def _done(out: dict, status: int = 200):
    """`status` when the change was applied, 200 for a preview (which writes nothing)."""
    return JSONResponse(out, status_code=status if out.get("applied") else 200)


# -- the template -------------------------------------------------------------------------------
@router.get("/networks", tags=["networks"])
def list_networks(s: UnitOfWork):
    """Every network of the template, one answer (a list, not pages): the template is one document,
    read and validated whole, and holds a few dozen networks at most."""
    return svc.list_networks(s)


@router.post("/networks", tags=["networks"], status_code=201)
def create_network(s: UnitOfWork, who: Actor, body: dict[str, Any] = Body(...), preview: bool = Preview):
    """A new network, in the template's format plus its `name`."""
    return _done(svc.create_network(s, body.get("name"), body, preview=preview, actor=who), 201)


@router.get("/networks/export", tags=["networks"])
def export_networks(s: UnitOfWork):
    return svc.export(s)


@router.post("/networks/import", tags=["networks"])
def import_networks(body: ImportIn, s: UnitOfWork, who: Actor, preview: bool = Preview, force: bool = Force):
    """Replace the whole template; networks missing from it are removed."""
    return _done(svc.import_template(s, body.template, preview=preview or body.preview,
                                     force=force or body.force, actor=who))


@router.get("/networks/{name}", tags=["networks"])
def show_network(name: str, s: UnitOfWork):
    return svc.show_network(s, name)


@router.patch("/networks/{name}", tags=["networks"])
def update_network(name: str, s: UnitOfWork, who: Actor, body: dict[str, Any] = Body(...),
                   preview: bool = Preview, force: bool = Force):
    return _done(svc.update_network(s, name, body, preview=preview, force=force, actor=who))


@router.delete("/networks/{name}", tags=["networks"])
def delete_network(name: str, s: UnitOfWork, who: Actor, preview: bool = Preview, force: bool = Force):
    return _done(svc.delete_network(s, name, preview=preview, force=force, actor=who))


# -- allocations --------------------------------------------------------------------------------
@router.post("/networks/{name}/allocations", tags=["networks"])
def allocate(name: str, body: AllocationIn, s: UnitOfWork, who: Actor):
    """201 with the new allocation, 200 when the node already had one (created: false); with
    `nodes`, the list of allocations: 201 when any was created."""
    out = svc.allocate_for(s, name, node=body.node, nodes=body.nodes, range_name=body.range,
                           address=body.address, actor=who)
    created = any(a["created"] for a in out) if isinstance(out, list) else out["created"]
    return JSONResponse(out, status_code=201 if created else 200)


@router.get("/networks/{name}/allocations", tags=["networks"])
def list_allocations(name: str, s: UnitOfWork, page: TextPaging):
    """The network's allocations in address order, paged by address (unique on a network: the
    marker is the last address of the previous page)."""
    return page.answer(svc.list_allocations(s, name, limit=page.fetch, after=page.marker), key="address")


@router.delete("/networks/{name}/allocations/{node}", tags=["networks"])
def release(name: str, node: str, s: UnitOfWork, who: Actor):
    return svc.release(s, name, node, actor=who)


# -- node interface plans and Neutron configuration ---------------------------------------------
@router.get("/nodes/{node}/network_plan", tags=["networks"])
def network_plan(node: str, s: UnitOfWork,
                 format: str = Query("json", description="json, networkd, netplan, ifupdown")):
    return svc.node_plan(s, node, format)


@router.get("/nodes/{node}/neutron", tags=["neutron"])
def node_neutron(node: str, s: UnitOfWork):
    return svc.node_neutron(s, node)


# -- Neutron ------------------------------------------------------------------------------------
@router.get("/neutron/settings", tags=["neutron"])
def neutron_settings(s: UnitOfWork):
    return svc.neutron_settings(s)


@router.patch("/neutron/settings", tags=["neutron"])
def set_neutron_settings(s: UnitOfWork, who: Actor, body: dict[str, Any] = Body(...)):
    return svc.set_neutron_settings(s, body, actor=who)


@router.get("/neutron/networks", tags=["neutron"])
def list_tenant_networks(s: UnitOfWork, page: TextPaging):
    """Tenant networks (and the provider fixed network) by segment: type (vlan, then vxlan),
    physical network, segmentation id; the marker is `type:physical_network:id` of the last one."""
    return page.answer(svc.list_tenant_networks(s, limit=page.fetch, marker=page.marker), key=svc.segment_marker)


@router.post("/neutron/networks", status_code=201, tags=["neutron"], responses=LIVE)
def create_tenant_network(body: TenantNetworkIn, config: Settings, who: Actor):
    """A tenant network on the segment Crowbar allocates; with Neutron deployed, also created in its
    live API on that segment (unless `id` names one it already has)."""
    return openstack.create_tenant_network(config.db, body.name, body.network_type, body.physical_network,
                                           body.segmentation_id, body.id, deployment=body.deployment, actor=who)


@router.get("/neutron/networks/{key}", tags=["neutron"])
def show_tenant_network(key: str, s: UnitOfWork):
    return svc.show_tenant_network(s, key)


@router.delete("/neutron/networks/{key}", tags=["neutron"])
def delete_tenant_network(key: str, s: UnitOfWork, who: Actor):
    return svc.delete_tenant_network(s, key, actor=who)


@router.get("/neutron/whois/{device}", tags=["neutron"], responses=LIVE)
def whois(device: str, config: Settings,
          deployment: str | None = Query(None, description="whose Neutron API to ask (default: the "
                                                             "only deployment with one)")):
    """The network, port or router a host device belongs to, from the live Neutron API (the wall of
    an active neutron-server noderole) when one is deployed, else from the tenant networks Crowbar
    stores. The route holds no transaction while Neutron answers."""
    return openstack.neutron_whois(config.db, device, deployment=deployment)


@router.post("/neutron/whois", tags=["neutron"], responses=LIVE)
def whois_with(body: WhoisIn, config: Settings):
    """With ports, routers (and extra networks): those and the stored networks, no live API; else
    like GET, with `deployment` or the API's own `api` URL (an operator's: the server fetches it)."""
    return openstack.neutron_whois(config.db, body.device, deployment=body.deployment, api=body.api,
                                   ports=body.ports, routers=body.routers, networks=body.networks)

"""Power routes (admin token): ask for a power action (202, queued for the power worker), follow
the requests, give a node its driver and settings, list the drivers with their settings. And the
agent's BMC routes (node token, provisioning listener): what the `bmc-config` role's script asks
while it configures the node's BMC (crowbar/services/bmc.py)."""

from __future__ import annotations

from fastapi import APIRouter, Depends, Request
from pydantic import BaseModel, Field

from crowbar.api import deps
from crowbar.api.deps import Actor, Paging, UnitOfWork
from crowbar.services import bmc, lookup, power, provisioning

router = APIRouter(prefix="/api/v2", tags=["power"], dependencies=[Depends(deps.actor)])
agent_router = APIRouter(prefix="/api/v2/agent", tags=["power"])


class PowerAction(BaseModel):
    action: str


class PowerSettings(BaseModel):
    driver: str
    settings: dict = {}


@router.post("/nodes/{key}/power", status_code=202)
def request_power(key: str, body: PowerAction, s: UnitOfWork, who: Actor):
    """Queue on, off, cycle, status, soft-off (the OS shuts down) or boot-pxe|boot-disk|boot-http (the
    next boot only) for the node; the answer is the request (follow it with
    GET /power_requests/{id})."""
    return power.request_power(s, key, body.action, actor=who)


class PowerItem(BaseModel):
    node: str | int
    driver: str
    settings: dict = {}


class PowerSettingsMany(BaseModel):
    items: list[PowerItem] = Field(max_length=lookup.MAX_BULK)


@router.put("/nodes/power")
def set_power_many(body: PowerSettingsMany, s: UnitOfWork, who: Actor):
    """Give many nodes their power drivers and settings at once (`items`: node, driver, settings):
    all of them, or none (one transaction); the first refusal names its item and node. Secret
    settings are never shown back."""
    return {"items": power.set_power_many(s, [item.model_dump() for item in body.items], actor=who)}


@router.put("/nodes/{key}/power")
def set_power(key: str, body: PowerSettings, s: UnitOfWork, who: Actor):
    return power.set_power(s, key, body.driver, body.settings, actor=who)


@router.get("/nodes/{key}/power")
def show_power(key: str, s: UnitOfWork):
    """The node's power driver and settings; secret settings (passwords) show only as "(set)"."""
    return power.show_power(s, key)


@router.get("/power_requests/{request_id}")
def show_request(request_id: str, s: UnitOfWork):
    return power.show_request(s, request_id)


@router.get("/power_requests")
def list_requests(s: UnitOfWork, page: Paging, node: str | None = None, state: str | None = None):
    """Requests by id; `node` and `state` (queued, running, succeeded, failed) filter them."""
    return page.answer(power.list_requests(s, node, state, limit=page.fetch, marker=page.marker))


@router.get("/power_drivers")
def list_drivers():
    """Every power driver with its summary, timeout and settings schema (one page: they are few)."""
    return {"items": power.drivers(), "next": None}


# -- the bmc-config role's script, on the node (node token) --------------------------------------------
class BmcNetwork(BaseModel):
    network: str = Field("bmc", max_length=64)


class BmcCredentials(BaseModel):
    network: str = Field("bmc", max_length=64)
    username: str = Field(max_length=16)
    password: str = Field(max_length=20)


@agent_router.post("/bmc/address")
def agent_bmc_address(request: Request, s: UnitOfWork, body: BmcNetwork | None = None):
    """The node's BMC address on a network of the bmc conduit (allocated on first ask), netmask,
    gateway and VLAN: while its bmc-config role runs."""
    node = provisioning.node_for_token(s, deps.bearer(request))
    return bmc.address(s, node, (body or BmcNetwork()).network)


@agent_router.post("/bmc/credentials")
def agent_bmc_credentials(body: BmcCredentials, request: Request, s: UnitOfWork):
    """The user and password the role set on the BMC: the node is powered through `ipmi` with them
    from now on; the answer names the status request that proves them (never the password)."""
    node = provisioning.node_for_token(s, deps.bearer(request))
    return bmc.credentials(s, node, body.network, body.username, body.password)


@agent_router.get("/power_requests/{request_id}")
def agent_power_request(request_id: str, request: Request, s: UnitOfWork):
    """One of the node's own power requests (the role waits for its proof)."""
    node = provisioning.node_for_token(s, deps.bearer(request))
    return bmc.request(s, node, request_id)

"""Power routes (admin token): ask for a power action (202, queued for the power worker), follow
the requests, give a node its driver and settings, list the drivers with their settings."""

from __future__ import annotations

from fastapi import APIRouter, Depends
from pydantic import BaseModel

from crowbar.api import deps
from crowbar.api.deps import Actor, Paging, UnitOfWork
from crowbar.services import power

router = APIRouter(prefix="/api/v2", tags=["power"], dependencies=[Depends(deps.actor)])


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

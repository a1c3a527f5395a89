"""Power routes (admin token): ask for a power action (202, queued for the power worker), follow
the requests, give a node its driver and settings, list the drivers with their settings."""

from __future__ import annotations

from fastapi import APIRouter, Depends, Query
from pydantic import BaseModel
from sqlalchemy.orm import Session

from crowbar.api import deps
from crowbar.services import power

router = APIRouter(prefix="/api/v2", tags=["power"], dependencies=[Depends(deps.actor)])
Work = Depends(deps.unit_of_work, scope="function")


class PowerAction(BaseModel):
    action: str


class PowerSettings(BaseModel):
    driver: str
    settings: dict = {}


@router.post("/nodes/{key}/power", status_code=202)
def request_power(key: str, body: PowerAction, s: Session = Work, who: str = Depends(deps.actor)):
    """Queue on, off, cycle or status for the node; the answer is the request (follow it with
    GET /power_requests/{id})."""
    return power.request_power(s, key, body.action, actor=who)


@router.put("/nodes/{key}/power")
def set_power(key: str, body: PowerSettings, s: Session = Work, who: str = Depends(deps.actor)):
    return power.set_power(s, key, body.driver, body.settings, actor=who)


@router.get("/power_requests/{request_id}")
def show_request(request_id: str, s: Session = Work):
    return power.show_request(s, request_id)


@router.get("/power_requests")
def list_requests(node: str | None = None, state: str | None = None,
                  limit: int = Query(100, ge=1, le=power.MAX_LIMIT), marker: int | None = None,
                  s: Session = Work):
    return power.list_requests(s, node, state, limit, marker)


@router.get("/power_drivers")
def list_drivers():
    return power.drivers()

"""Online mode's routes: the caching proxies' status, staging into them, offline mode
(crowbar.services.proxy; docs/online-mode.md). Staging and offline mode are recorded in the audit trail."""

from __future__ import annotations

from fastapi import APIRouter, Depends
from pydantic import BaseModel, Field, StrictBool

from crowbar.api import deps
from crowbar.api.deps import Actor, Settings, UnitOfWork
from crowbar.db.events import record
from crowbar.services import proxy

router = APIRouter(prefix="/api/v2", tags=["proxy"], dependencies=[Depends(deps.actor)])


class Stage(BaseModel):
    os: str | None = Field(None, max_length=100)
    packages: list[str] = Field([], max_length=proxy.MAX_STAGE_ITEMS)
    pip: list[str] = Field([], max_length=proxy.MAX_STAGE_ITEMS)
    git: list[str] = Field([], max_length=proxy.MAX_STAGE_ITEMS)


class Offline(BaseModel):
    offline: StrictBool


@router.get("/proxy")
def proxy_status(config: Settings):
    """Whether the proxies are offline, and per kind (apt, pypi, git): running, the URL nodes use,
    hits, misses, bytes served and fetched from upstream, cache size, items staged."""
    return proxy.status(config.proxies)


@router.post("/proxy/stage")
def stage(body: Stage, s: UnitOfWork, who: Actor, config: Settings):
    """Fetch Debian packages of an OS (with their dependencies), pip requirements and git
    repositories (`URL@REF`) into the caches, so that they are served offline. Takes as long as
    the downloads; 409 while offline or when an upstream refuses."""
    out = proxy.stage(config.proxies, body.os, body.packages, body.pip, body.git)
    staged = [*body.packages, *body.pip, *body.git]
    record(s, [{"object_type": "proxy", "object_id": None, "action": "staged", "actor": who,
                "message": ", ".join(staged)[:500]}])
    return out


@router.put("/proxy/offline")
def set_offline(body: Offline, s: UnitOfWork, who: Actor, config: Settings):
    """Offline: the proxies serve only what is staged (and the git mirror is not fetched);
    a node asking for anything else gets the proxy's error naming what is missing."""
    out = proxy.set_offline(config.proxies, body.offline)
    record(s, [{"object_type": "proxy", "object_id": None, "actor": who,
                "action": "offline" if body.offline else "online"}])
    return out

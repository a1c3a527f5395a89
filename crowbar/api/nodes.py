"""Nodes: the machines Crowbar manages (crowbar.services.nodes)."""

from __future__ import annotations

from fastapi import APIRouter, Depends, Query
from pydantic import BaseModel, Field

from crowbar.api import deps
from crowbar.api.deps import Actor, Paging, UnitOfWork
from crowbar.services import nodes

router = APIRouter(prefix="/api/v2", tags=["nodes"], dependencies=[Depends(deps.actor)])


class NodeIn(BaseModel):
    name: str = Field(description="Fully qualified host name")
    admin: bool = False
    alive: bool = True
    available: bool = True
    description: str = ""


class NodePatch(BaseModel):
    alive: bool | None = None
    available: bool | None = None
    description: str | None = None


@router.get("/nodes")
def list_nodes(s: UnitOfWork, page: Paging, state: str | None = None, name: str | None = None,
               deployment: str | None = None,
               memory_min: int | None = Query(None, ge=0, le=2**40, description="MiB of memory, at least"),
               cpus_min: int | None = Query(None, ge=0, le=2**20, description="CPUs, at least"),
               sort: str = Query("id", description="id, name, state, memory or cpus; -name: descending")):
    """Nodes in `sort` order (then by id); `state` (lifecycle state), `name` (a prefix), `deployment`
    (has a noderole there), `memory_min`, `cpus_min` filter them. `marker`: the last node's id."""
    return page.answer(nodes.list_nodes(s, state=state, name=name, deployment=deployment, memory_min=memory_min,
                                        cpus_min=cpus_min, sort=sort, limit=page.fetch, marker=page.marker))


@router.post("/nodes", status_code=201)
def create_node(body: NodeIn, s: UnitOfWork, who: Actor):
    return nodes.create_node(s, body.name, admin=body.admin, alive=body.alive, available=body.available,
                             description=body.description, actor=who)


@router.get("/nodes/{key}")
def show_node(key: str, s: UnitOfWork):
    return nodes.show_node(s, key)


@router.patch("/nodes/{key}")
def update_node(key: str, body: NodePatch, s: UnitOfWork, who: Actor):
    return nodes.update_node(s, key, alive=body.alive, available=body.available, description=body.description,
                             actor=who)


@router.delete("/nodes/{key}")
def delete_node(key: str, s: UnitOfWork, who: Actor):
    return nodes.delete_node(s, key, actor=who)

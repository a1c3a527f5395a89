"""Nodes: the machines Crowbar manages (crowbar.services.nodes)."""

from __future__ import annotations

from fastapi import APIRouter, Depends, Query, Response
from pydantic import BaseModel, Field

from crowbar.api import deps, errors
from crowbar.api.deps import ETAG, Actor, IfMatch, Paging, Settings, UnitOfWork, with_etag
from crowbar.services import nodes, provisioning

router = APIRouter(prefix="/api/v2", tags=["nodes"], dependencies=[Depends(deps.actor)])


class NodeIn(BaseModel):
    name: str = Field(description="Fully qualified host name")
    admin: bool = False
    alive: bool = True
    available: bool = True
    description: str = ""


class NodesIn(BaseModel):
    nodes: list[NodeIn] = Field(max_length=nodes.MAX_BATCH, description="the nodes to create, all or none")


class Register(BaseModel):
    macs: list[str] = Field(description="the machine's MACs; the first is the one it PXE-boots from")
    name: str | None = Field(None, description="host name (default: the name discovery gives it, from the MAC)")


class NodePatch(BaseModel):
    alive: bool | None = None
    available: bool | None = None
    description: str | None = None


@router.get("/nodes")
def list_nodes(s: UnitOfWork, page: Paging, state: str | None = None, name: str | None = None,
               deployment: str | None = None,
               memory_min: int | None = Query(None, ge=0, le=2**40, description="MiB of memory, at least"),
               cpus_min: int | None = Query(None, ge=0, le=2**20, description="CPUs, at least"),
               disk_min: int | None = Query(None, ge=0, le=2**32, description="GiB of disks (all together), at least"),
               tag: str | None = Query(None, max_length=64, description="tagged so (by the OS rules or the operator)"),
               sort: str = Query("id", description="id, name, state, memory, cpus or disk; -name: descending")):
    """Nodes in `sort` order (then by id); `state` (lifecycle state), `name` (a prefix), `deployment`
    (has a noderole there), `memory_min`, `cpus_min`, `disk_min`, `tag` filter them. `marker`: the last
    node's id. Each node has `power`: its power state as its latest requests say (GET /nodes/{key})."""
    return page.answer(nodes.list_nodes(s, state=state, name=name, deployment=deployment, memory_min=memory_min,
                                        cpus_min=cpus_min, disk_min=disk_min, tag=tag, sort=sort, limit=page.fetch, marker=page.marker))


@router.post("/nodes", status_code=201)
def create_node(body: NodeIn, s: UnitOfWork, who: Actor):
    return nodes.create_node(s, body.name, admin=body.admin, alive=body.alive, available=body.available,
                             description=body.description, actor=who)


@router.post("/nodes/batch", status_code=201)
def create_nodes(body: NodesIn, s: UnitOfWork, who: Actor):
    """Create many nodes in one transaction: all of them, or none (a name taken or given twice: 409)."""
    return {"items": nodes.create_nodes(s, [item.model_dump() for item in body.nodes], actor=who)}


@router.post("/nodes/register", status_code=201)
def register_node(body: Register, s: UnitOfWork, who: Actor, config: Settings):
    """Register a machine by its MACs before it boots: a node in `discovering`, found by its MAC
    when it PXE-boots and discovery runs (then `discovered`)."""
    return provisioning.register(s, body.macs, body.name, config.domain, actor=who)


@router.get("/nodes/{key}", responses={200: {"headers": ETAG}})
def show_node(key: str, s: UnitOfWork, response: Response):
    """The node, with its ETag: send it as If-Match with a change."""
    return with_etag(response, nodes.show_node(s, key))


@router.patch("/nodes/{key}", responses={200: {"headers": ETAG}, **errors.responses(412)})
def update_node(key: str, body: NodePatch, s: UnitOfWork, who: Actor, response: Response, if_match: IfMatch = None):
    return with_etag(response, nodes.update_node(s, key, alive=body.alive, available=body.available,
                                                 description=body.description, actor=who, if_match=if_match))


@router.delete("/nodes/{key}", responses=errors.responses(412))
def delete_node(key: str, s: UnitOfWork, who: Actor, if_match: IfMatch = None):
    return nodes.delete_node(s, key, actor=who, if_match=if_match)

"""NodeRoles: roles bound to nodes, the graph the annealer walks (crowbar.services.noderoles)."""

from __future__ import annotations

from fastapi import APIRouter, Depends, Query

from crowbar.api import deps
from crowbar.api.deps import Actor, Paging, UnitOfWork
from crowbar.services import noderoles

router = APIRouter(prefix="/api/v2", tags=["node_roles"], dependencies=[Depends(deps.actor)])


@router.get("/node_roles")
def list_noderoles(s: UnitOfWork, page: Paging, deployment: str | None = None, node: str | None = None,
                   role: str | None = None, state: str | None = None, parents: bool = False):
    """NodeRoles by id; deployment, node and role (ids or names) and state filter them. With
    `parents=true` each has `parents`: the ids of the noderoles it requires (the graph's edges)."""
    return page.answer(noderoles.list_noderoles(s, deployment, node, role, state, limit=page.fetch,
                                                marker=page.marker, parents=parents))


@router.get("/node_roles/{key}")
def show_noderole(key: str, s: UnitOfWork):
    return noderoles.show_noderole(s, key)


@router.post("/node_roles/{key}/retry")
def retry(key: str, s: UnitOfWork, who: Actor):
    return noderoles.retry(s, key, actor=who)


@router.get("/node_roles/{key}/parents")
def parents(key: str, s: UnitOfWork, page: Paging):
    """The noderoles this one requires, by id."""
    return page.answer(noderoles.related(s, key, "parents", limit=page.fetch, marker=page.marker))


@router.get("/node_roles/{key}/children")
def children(key: str, s: UnitOfWork, page: Paging):
    """The noderoles that require this one, by id."""
    return page.answer(noderoles.related(s, key, "children", limit=page.fetch, marker=page.marker))


@router.get("/node_roles/{key}/runs")
def runs(key: str, s: UnitOfWork, page: Paging):
    """The noderole's runs with their logs, oldest first (by id)."""
    return page.answer(noderoles.runs(s, key, limit=page.fetch, marker=page.marker))


@router.get("/node_roles/{key}/log")
def log(key: str, s: UnitOfWork,
        run: int | None = Query(None, ge=1, le=2**62, description="a run of this noderole (default: its latest)"),
        offset: int = Query(0, ge=0, le=2**40, description="characters of the log already read")):
    """Follow a run's log: its text from `offset` on, its length and the run's state (running while
    the jig still writes; then read it once more from 0: the final log replaces what streamed)."""
    return noderoles.log(s, key, run=run, offset=offset)

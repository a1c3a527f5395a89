"""Attribs: named values at paths in the JSON a run receives (crowbar.services.attribs)."""

from __future__ import annotations

from typing import Any

from fastapi import APIRouter, Depends
from pydantic import BaseModel

from crowbar.api import deps
from crowbar.api.deps import Actor, Paging, UnitOfWork
from crowbar.services import attribs

router = APIRouter(prefix="/api/v2", tags=["attribs"], dependencies=[Depends(deps.actor)])


class AttribSet(BaseModel):
    node: str
    value: Any


@router.get("/attribs")
def list_attribs(s: UnitOfWork, page: Paging, name: str | None = None):
    """Attribs by id; `name` (a prefix) filters them."""
    return page.answer(attribs.list_attribs(s, name=name, limit=page.fetch, marker=page.marker))


@router.get("/attribs/{name}")
def get_attrib(name: str, s: UnitOfWork, node: str | None = None):
    return attribs.get(s, name, node)


@router.put("/attribs/{name}")
def set_attrib(name: str, body: AttribSet, s: UnitOfWork, who: Actor):
    return attribs.set_on_node(s, name, body.value, body.node, actor=who)

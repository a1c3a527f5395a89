"""Barclamps and the roles they provide (crowbar.services.catalog)."""

from __future__ import annotations

from fastapi import APIRouter, Depends
from pydantic import BaseModel, Field

from crowbar.api import deps
from crowbar.api.deps import Actor, Paging, UnitOfWork
from crowbar.services import catalog

router = APIRouter(prefix="/api/v2", dependencies=[Depends(deps.actor)])


class BarclampIn(BaseModel):
    path: str | None = Field(None, description="A barclamp directory on the server")
    files: dict[str, str] | None = Field(None, description="Or the files themselves: relative path -> text")
    source: str | None = Field(None, description="Where the files came from (shown in errors and as source_path)")


@router.get("/barclamps", tags=["barclamps"])
def list_barclamps(s: UnitOfWork, page: Paging, name: str | None = None):
    """Barclamps by id; `name` (a prefix) filters them."""
    return page.answer(catalog.list_barclamps(s, name=name, limit=page.fetch, marker=page.marker))


@router.post("/barclamps", status_code=201, tags=["barclamps"])
def import_barclamp(body: BarclampIn, s: UnitOfWork, who: Actor):
    return catalog.import_path_or_files(s, body.path, body.files, body.source, actor=who)


@router.get("/barclamps/{key}", tags=["barclamps"])
def show_barclamp(key: str, s: UnitOfWork):
    return catalog.show_barclamp(s, key)


@router.get("/roles", tags=["roles"])
def list_roles(s: UnitOfWork, page: Paging, barclamp: str | None = None, name: str | None = None):
    """Roles by id; `barclamp` and `name` (a prefix) filter them."""
    return page.answer(catalog.list_roles(s, barclamp, name=name, limit=page.fetch, marker=page.marker))


@router.get("/roles/{key}", tags=["roles"])
def show_role(key: str, s: UnitOfWork):
    return catalog.show_role(s, key)

"""A node's serial console (lab VMs: the file qemu writes it to), read-only (crowbar.services.console)."""

from __future__ import annotations

from fastapi import APIRouter, Depends, Query

from crowbar.api import deps
from crowbar.api.deps import UnitOfWork
from crowbar.services import console

router = APIRouter(prefix="/api/v2", tags=["nodes"], dependencies=[Depends(deps.actor)])


@router.get("/nodes/{key}/console")
def tail(key: str, s: UnitOfWork,
         offset: int | None = Query(None, ge=0, le=2**62, description="bytes already read (default: the last 64 KiB)")):
    """The node's serial console output from `offset` on (at most 64 KiB), with the file's size;
    `available` is false (with the `reason`) for a node whose power driver keeps none."""
    return console.tail(s, key, offset=offset)

"""Import and export of deployments and of the whole server; the Ansible inventory
(crowbar.services.portable)."""

from __future__ import annotations

from typing import Any

from fastapi import APIRouter, Body, Depends

from crowbar.api import deps
from crowbar.api.deps import Actor, UnitOfWork
from crowbar.services import portable

router = APIRouter(prefix="/api/v2", tags=["import and export"], dependencies=[Depends(deps.actor)])


@router.get("/deployments/{key}/export")
def export_deployment(key: str, s: UnitOfWork):
    """The deployment as a portable document (roles and their data, noderoles by node name, the
    networks it depends on), for `POST /deployments/import` on this or another server."""
    return portable.export_deployment(s, key)


@router.post("/deployments/import")
def import_deployment(s: UnitOfWork, who: Actor, document: dict[str, Any] = Body(...), dry_run: bool = False):
    """Recreate a deployment from its document: the plan of what it creates or changes, carried
    out unless `dry_run`. Unknown roles, nodes or networks: 422 and nothing written."""
    return portable.import_deployment(s, document, dry_run=dry_run, actor=who)


@router.get("/export")
def export_server(s: UnitOfWork):
    """The server's whole state: barclamps, network template and allocations, nodes, deployments (with the
    tags roles are bound by), the OS rules."""
    return portable.export_server(s)


@router.post("/import")
def import_server(s: UnitOfWork, who: Actor, document: dict[str, Any] = Body(...), merge: bool = False):
    """Recreate an exported state; refused (409) into a non-empty server unless `merge`."""
    return portable.import_server(s, document, merge=merge, actor=who)


@router.get("/inventory/ansible")
def ansible_inventory(s: UnitOfWork, deployment: str | None = None):
    """An Ansible dynamic inventory (JSON) of the nodes, grouped by role and by deployment."""
    return portable.ansible_inventory(s, deployment)

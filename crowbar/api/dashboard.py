"""The web UI's dashboard: one read of the system's state (crowbar.services.dashboard)."""

from __future__ import annotations

from fastapi import APIRouter, Depends

from crowbar.api import deps
from crowbar.api.deps import UnitOfWork
from crowbar.services import dashboard as service

router = APIRouter(prefix="/api/v2", tags=["dashboard"], dependencies=[Depends(deps.actor)])


@router.get("/dashboard")
def dashboard(s: UnitOfWork):
    """Nodes and noderoles per state, the first deployments with their status, the annealer's
    progress, the latest failed noderoles (with their last run), the newest event's id."""
    return service.dashboard(s)

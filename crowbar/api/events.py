"""The annealer's progress and the audit trail (crowbar.services.anneal)."""

from __future__ import annotations

from fastapi import APIRouter, Depends, Query

from crowbar.api import deps
from crowbar.api.body import JSONResponse
from crowbar.api.deps import Paging, UnitOfWork
from crowbar.db.sql import MAX_ID
from crowbar.services import anneal

router = APIRouter(prefix="/api/v2", dependencies=[Depends(deps.actor)])
ANNEAL_STATUS = {"finished": 200, "working": 202, "failed": 409}


@router.get("/anneal", tags=["anneal"])
def anneal_status(s: UnitOfWork, deployment: str | None = None):
    """200 finished, 202 working, 409 failed; the body counts noderoles by state."""
    out = anneal.status(s, deployment)
    return JSONResponse(out, status_code=ANNEAL_STATUS[out["status"]])


@router.get("/events", tags=["events"])
def list_events(s: UnitOfWork, page: Paging, object_type: str | None = None,
                object_id: int | None = Query(None, ge=0, le=MAX_ID, description="events of this object"),
                after: int | None = Query(None, ge=0, le=MAX_ID, description="the same as marker (its older name)")):
    """Audit events, always oldest first (ascending id).

    Without `marker` (or `after`): the newest `limit` events, the tail of the log; `next` is null,
    since nothing is newer yet. With `marker`: the `limit` events after that id, and `next` while
    more follow; `marker=0` reads the whole log from its start.
    """
    start = page.marker if after is None else max(after, page.marker or 0)
    # The tail needs no look-ahead row (there is no next page); a forward page does.
    return page.answer(anneal.events(s, object_type, object_id, page.limit if start is None else page.fetch, start))

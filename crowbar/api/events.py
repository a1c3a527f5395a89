"""The annealer's progress and the audit trail (crowbar.services.anneal), and the trail followed
live as server-sent events (crowbar.api.stream)."""

from __future__ import annotations

from fastapi import APIRouter, Depends, Header, Query, Request

from crowbar.api import deps, stream
from crowbar.api.body import JSONResponse
from crowbar.api.deps import Paging, Settings, UnitOfWork
from crowbar.db.sql import MAX_ID
from crowbar.errors import InvalidInput
from crowbar.services import anneal

router = APIRouter(prefix="/api/v2", dependencies=[Depends(deps.actor)])
ANNEAL_STATUS = {"finished": 200, "working": 202, "failed": 409}
ObjectType = Query(None, max_length=32, description="events of objects of this type (node, noderole, ...)")
ObjectId = Query(None, ge=0, le=MAX_ID, description="events of this object")
Action = Query(None, max_length=64, description="events of this action (lifecycle, create, power-on, ...)")
# One message of the stream, as a server-sent event's fields.
SSE_MESSAGE = {"type": "object", "required": ["event", "data"], "properties": {
    "event": {"type": "string", "enum": ["event", "reset", "end"]},
    "data": {"type": "string", "description": "JSON: the event (as GET /events lists it), or {} for end"},
    "id": {"type": "string", "description": "the highest event id sent so far (what Last-Event-ID resumes after)"},
    "retry": {"type": "integer"}}}
ActorName = Query(None, max_length=128, description="events by this user")


@router.get("/anneal", tags=["anneal"])
def anneal_status(s: UnitOfWork, deployment: str | None = None):
    """200 finished, 202 working, 409 failed; the body counts noderoles by state."""
    out = anneal.status(s, deployment)
    return JSONResponse(out, status_code=ANNEAL_STATUS[out["status"]])


@router.get("/events", tags=["events"])
def list_events(s: UnitOfWork, page: Paging, object_type: str | None = ObjectType, object_id: int | None = ObjectId,
                action: str | None = Action, actor: str | None = ActorName,
                after: int | None = Query(None, ge=0, le=MAX_ID, description="the same as marker (its older name)")):
    """Audit events, always oldest first (ascending id); `object_type`, `object_id`, `action` and
    `actor` filter them.

    Without `marker` (or `after`): the newest `limit` events, the tail of the log; `next` is null,
    since nothing is newer yet. With `marker`: the `limit` events after that id, and `next` while
    more follow; `marker=0` reads the whole log from its start.
    """
    start = page.marker if after is None else max(after, page.marker or 0)
    # The tail needs no look-ahead row (there is no next page); a forward page does.
    return page.answer(anneal.events(s, object_type, object_id, page.limit if start is None else page.fetch, start,
                                     action=action, actor=actor))


@router.get("/events/stream", tags=["events"], response_class=stream.EventStreamResponse,
            responses={200: {"description": "server-sent events (text/event-stream): `event` (an audit event, as "
                                            "JSON in `data`), `reset` (too far behind: reload) or `end`",
                             "content": {"text/event-stream": {"schema": SSE_MESSAGE}}}})
async def stream_events(request: Request, config: Settings, object_type: str | None = ObjectType,
                        object_id: int | None = ObjectId, action: str | None = Action, actor: str | None = ActorName,
                        after: int | None = Query(None, ge=0, le=MAX_ID, description="start after this event id "
                                                  "(default: from now on)"),
                        last_event_id: str | None = Header(None, alias="Last-Event-ID", max_length=20,
                                                           description="sent by a reconnecting EventSource: "
                                                                       "resume after it")):
    """The audit events as they are recorded, as server-sent events (`event: event`, the event as
    JSON in `data`, `id` the highest event id sent so far), filtered like GET /events. A stream
    lasts about two minutes, then ends (`event: end`); the browser's EventSource reconnects by
    itself and sends Last-Event-ID, and the stream resumes after it (from the database: at most
    5,000 events; further behind, `event: reset`: reload). One reader per server process reads the
    log for every open stream (docs/ui.md)."""
    resume = after
    if last_event_id is not None and last_event_id.strip():
        text = last_event_id.strip()
        if not (text.isascii() and text.isdigit()) or int(text) > MAX_ID:
            raise InvalidInput(f"Last-Event-ID {text[:20]!r} is not an event id", field="Last-Event-ID")
        resume = max(int(text), after or 0)

    def matches(e: dict) -> bool:
        return ((not object_type or e["object_type"] == object_type)
                and (object_id is None or e["object_id"] == object_id)
                and (not action or e["action"] == action) and (not actor or e["actor"] == actor))

    hub = request.app.state.event_hub
    return stream.response(request, hub, resume, config.event_stream_seconds, matches)

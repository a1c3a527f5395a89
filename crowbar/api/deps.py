"""FastAPI dependencies every router shares: the settings, the caller's identity, the unit of
work, and list paging.

Routes declare them with the `Annotated` aliases below (`s: UnitOfWork`, `who: Actor` (the user's
name, for events), `caller: CallerOf` (the user, its role and token), `page: Paging`, `if_match:
IfMatch` (the If-Match header of a write that must not overwrite a newer version)), so a route is
its parameters plus one call into a service.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from contextlib import contextmanager
from http.cookies import CookieError, SimpleCookie
from typing import Annotated
from urllib.parse import urlencode

from fastapi import Depends, Header, Query, Request, Response, Security
from fastapi.security import APIKeyHeader, HTTPAuthorizationCredentials, HTTPBearer
from sqlalchemy.orm import Session
from starlette.concurrency import run_in_threadpool

from crowbar.api.settings import AppSettings
from crowbar.db.session import pending_work
from crowbar.db.sql import MAX_ID
from crowbar.documents import etag
from crowbar.errors import Forbidden, Unauthorized
from crowbar.services import auth, websessions
from crowbar.services.auth import Caller

LIMIT, MAX_LIMIT = 100, 1000


async def settings(request: Request) -> AppSettings:
    """The settings `create_app` was built from (the only reader of `app.state`).

    The dependencies that do no I/O are `async def`: FastAPI runs a plain `def` dependency in its
    threadpool, a thread hop per request each, queued behind the routes' database work when the
    pool is busy (10,000 agents' polls: docs/scaling.md)."""
    return request.app.state.settings


Settings = Annotated[AppSettings, Depends(settings)]


def unit_of_work(config: Settings) -> Iterator[Session]:
    """The request's unit of work: a session, committed when the route returns, rolled back when it
    raises; after a successful commit, the background loops are woken for each kind of work the
    service signalled (`crowbar.db.session.signal_work`), and only then.

    Declared with `scope="function"` (see `UnitOfWork`): FastAPI runs the code after `yield` when
    the route function has returned and *before* the response is sent. With the default scope
    ("request") it would run after the response is sent: a commit that fails would reach the
    client as a 200 for data that was never written, and the failure only the server log. Here a
    failed commit raises inside the request, so the app's handlers answer it like any other error:
    IntegrityError 409 {"error": "conflict"}, OperationalError 503 {"error": "unavailable"}
    (crowbar.api.errors); nothing was written and nothing is woken.
    """
    with config.db.session() as session:  # commits on success, rolls back on any exception
        yield session
    for kind in sorted(pending_work(session)):
        config.wake(kind)


UnitOfWork = Annotated[Session, Depends(unit_of_work, scope="function")]
# The same unit of work as a context manager, for a route that opens it only when it must write
# (the agent's poll: crowbar.api.provisioning).
unit = contextmanager(unit_of_work)

BEARER = HTTPBearer(auto_error=False, description="a user's API token: `Authorization: Bearer <token>`")
API_KEY = APIKeyHeader(name="X-Auth-Token", auto_error=False, description="or the token in this header")


def bearer(request: Request) -> str | None:
    """The token of `Authorization: Bearer <token>` (node agents authenticate with it too)."""
    return _bearer(request.headers)


def _bearer(headers) -> str | None:
    header = headers.get("authorization", "")
    return header[7:].strip() if header.lower().startswith("bearer ") else None


SESSION_COOKIE = "crowbar_session"  # the web UI's session (crowbar.services.websessions)
SAFE_METHODS = frozenset({"GET", "HEAD", "OPTIONS"})


def session_secret(headers) -> str | None:
    """The web UI session's secret from the request's cookie, if it has one."""
    try:
        morsel = SimpleCookie(headers.get("cookie", "")).get(SESSION_COOKIE)
    except CookieError:
        return None
    return morsel.value if morsel is not None and morsel.value else None


def authenticate(config: AppSettings, headers, method: str = "GET") -> Caller:
    """Who the user's token in `headers` (`Authorization: Bearer <token>` or `X-Auth-Token`, else
    the web UI's session cookie) speaks for; Unauthorized without a valid one. A change (any method
    but GET, HEAD, OPTIONS) authenticated by the cookie must carry the session's CSRF token in
    `X-CSRF-Token` (403 otherwise). The edge (crowbar.api.edge) calls it for every route that
    needs a user before the body is read, then checks the role the route needs."""
    token = _bearer(headers)
    if token is None:
        token = headers.get("x-auth-token")
    cookie = session_secret(headers) if token is None else None
    if cookie is not None:
        token = cookie
    with config.db.session() as s:
        who = auth.caller(s, token)
        if who is not None and cookie is not None and method.upper() not in SAFE_METHODS \
                and not websessions.csrf_ok(cookie, headers.get("x-csrf-token")):
            raise Forbidden("a change made with the web UI's session cookie needs its CSRF token in the "
                            "X-CSRF-Token header", field="csrf")
        if who is None:
            if auth.is_expired_token(s, token):
                raise Unauthorized("this API token has expired: create or rotate one (crowbar tokens)")
            if auth.verify(s, token) is not None:
                raise Unauthorized("this token may not use the API (it is a node's token)")
            raise Unauthorized("a valid API token is required (Authorization: Bearer <token>)")
        return who


async def caller(request: Request, config: Settings,
                 _documented_bearer: Annotated[HTTPAuthorizationCredentials | None, Security(BEARER)] = None,
                 _documented_key: Annotated[str | None, Security(API_KEY)] = None) -> Caller:
    """The caller, as the edge authenticated it before the route (the security parameters only
    document the two ways of sending the token in the OpenAPI document)."""
    who = getattr(request.state, "caller", None)
    if who is not None:
        return who
    return await run_in_threadpool(authenticate, config, request.headers, request.method)


async def actor(who: Annotated[Caller, Depends(caller)]) -> str:
    """The name of the user the request speaks for: what events record as their actor."""
    return who.name


Actor = Annotated[str, Depends(actor)]
CallerOf = Annotated[Caller, Depends(caller)]


async def admin_only() -> None:
    """Marks a route only admins may call, whatever its method (the edge checks it)."""


async def any_user() -> None:
    """Marks a route every user may call, whatever its method (its service checks what it may
    touch: a user's own tokens)."""


def required_role(route) -> str:
    """The role a route that needs a user needs: `admin_only` and `any_user` say so; otherwise a
    read (GET, HEAD) needs a viewer and any other method an operator."""
    dependant = getattr(route, "dependant", None)
    if dependant is not None and calls(dependant, admin_only):
        return "admin"
    if dependant is not None and calls(dependant, any_user):
        return "viewer"
    return "viewer" if set(getattr(route, "methods", None) or ()) <= {"GET", "HEAD"} else "operator"


def calls(dependant, call) -> bool:
    """True when `dependant` depends on `call`, directly or through its dependencies."""
    return dependant.call is call or any(calls(d, call) for d in dependant.dependencies)


IfMatch = Annotated[str | None, Header(
    alias="If-Match", description="the ETag a GET of this object answered: the change is made only if nobody "
                                  "changed the object since (412 otherwise); `*` or no header: whatever it is now")]
ETAG = {"ETag": {"description": "the version of what the body shows: send it back in If-Match to change the "
                                "object only if nobody else has changed it since", "schema": {"type": "string"}}}


def with_etag(response: Response, document: dict) -> dict:
    """`document`, answered with its ETag (`crowbar.documents.etag`) as a header."""
    response.headers["ETag"] = etag(document)
    return document


class Page:
    """One page of a list: `limit` rows after `marker` (the last id seen; keyset, ascending).

    A route asks its service for `page.fetch` rows (one more than the page holds: whether there is
    a next page costs no count) and answers `page.answer(rows)`:
    {"items": [...], "next": "<path>?<same filters>&marker=<last id>&limit=<limit>" | null}.
    """

    def __init__(self, request: Request, limit: int, marker):
        self.request, self.limit, self.marker = request, limit, marker

    @property
    def fetch(self) -> int:
        return self.limit + 1

    def answer(self, rows: list[dict], key: str | Callable[[dict], object] = "id") -> dict:
        """The page: `key` names the item's field the list is ordered by (or computes the marker
        from the item, for a list ordered by several fields)."""
        items = rows[: self.limit]
        if len(rows) <= self.limit:
            return {"items": items, "next": None}
        last = key(items[-1]) if callable(key) else items[-1][key]
        query = [(k, v) for k, v in self.request.query_params.multi_items()
                 if k not in ("marker", "limit", "after")]
        query += [("marker", str(last)), ("limit", str(self.limit))]
        return {"items": items, "next": f"{self.request.url.path}?{urlencode(query)}"}


async def paging(request: Request,
                 limit: int = Query(LIMIT, ge=1, le=MAX_LIMIT, description="at most this many items"),
                 marker: int | None = Query(None, ge=0, le=MAX_ID,
                                            description="the last id of the previous page")) -> Page:
    return Page(request, limit, marker)


Paging = Annotated[Page, Depends(paging)]


async def text_paging(request: Request,
                      limit: int = Query(LIMIT, ge=1, le=MAX_LIMIT, description="at most this many items"),
                      marker: str | None = Query(None, description="where the previous page ended (as its next "
                                                                   "link gives it)")) -> Page:
    """Paging for a list that is not in id order (allocations by address, Neutron segments): the
    service parses the marker and answers 422 naming `marker` when it is not one of its keys."""
    return Page(request, limit, marker)


TextPaging = Annotated[Page, Depends(text_paging)]

"""The HTTP edge: what every request goes through before a route, its dependencies or its models
see it, in this order:

1. Authentication, then authorization. A user's route is one that depends on `deps.caller`
   (every router but the open ones: health, metrics, discovery, the agent's, /boot); its token is
   checked from the headers alone, so a caller without a valid token gets 401 whatever its body (it
   is not even read), and a user whose role is below the route's (`deps.required_role`: reads need
   a viewer, changes an operator, users an admin) 403. The caller is left in
   `request.state.caller`, where `deps.caller` finds it.
2. The URL: a NUL character in the path or the query is refused (422): nothing is named so, and
   PostgreSQL cannot even compare text with one. On a user's route, a query parameter the route
   does not declare, or one given more than once, is refused (400 bad_request, field "query").
   A path some routes take, with a method none takes, is 405, and Allow names that path's methods
   (the most literal path's, as the document lists them).
3. The body: at most `body.limit_for(route path)` bytes (413: from Content-Length before reading,
   else as it arrives), and a JSON body (no content type, application/json, application/*+json)
   must be strict JSON (`body.loads`: 422), except on a route that parses its own body by a rule of
   its own (`body.OWN_PARSER`: discovery). The route then reads the same bytes.

What is refused here answers the one error body (crowbar.api.errors) and has touched nothing.
"""

from __future__ import annotations

import json
from collections import Counter
from collections.abc import Callable, Sequence
from urllib.parse import parse_qsl, quote, unquote_to_bytes

from starlette.concurrency import run_in_threadpool
from starlette.datastructures import Headers
from starlette.exceptions import HTTPException
from starlette.routing import BaseRoute
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from crowbar.api import body, deps, errors
from crowbar.api.routeindex import ROUTE_KEY, RouteIndex
from crowbar.errors import CrowbarError, Forbidden, InvalidInput

PARSE_IN_THREAD = 64 * 1024  # bytes

# A 201 says where what it created is: the route (method, path as declared) -> the created
# object's path, from the answer's body.
LOCATIONS: dict[tuple[str, str], Callable[[dict], str]] = {
    ("POST", "/api/v2/nodes"): lambda b: f"/api/v2/nodes/{b['id']}",
    ("POST", "/api/v2/nodes/register"): lambda b: f"/api/v2/nodes/{b['id']}",
    ("POST", "/api/v2/deployments"): lambda b: f"/api/v2/deployments/{b['id']}",
    ("POST", "/api/v2/deployments/{key}/bind"): lambda b: f"/api/v2/node_roles/{b['noderole']['id']}",
    ("POST", "/api/v2/barclamps"): lambda b: f"/api/v2/barclamps/{b['id']}",
    ("POST", "/api/v2/networks"): lambda b: f"/api/v2/networks/{quote(b['name'], safe='')}",
    ("POST", "/api/v2/neutron/networks"): lambda b: f"/api/v2/neutron/networks/{quote(str(b['id']), safe='')}",
    ("POST", "/api/v2/users"): lambda b: f"/api/v2/users/{b['id']}",
    ("POST", "/api/v2/tokens"): lambda b: f"/api/v2/tokens/{b['id']}",
}


def needs_user(route) -> bool:
    """True for a route that needs a user's token (it depends on `deps.caller`)."""
    dependant = getattr(route, "dependant", None)
    return dependant is not None and deps.calls(dependant, deps.caller)


def query_names(route) -> frozenset[str] | None:
    """The query parameters `route` declares (its dependencies' included); None: it takes any."""
    dependant = getattr(route, "dependant", None)
    if dependant is None:
        return None
    names, stack = set(), [dependant]
    while stack:
        d = stack.pop()
        names.update(getattr(p, "alias", None) or p.name for p in d.query_params)
        stack.extend(d.dependencies)
    return frozenset(names)


def _check_query(scope: Scope, known: frozenset[str] | None) -> None:
    """A query parameter the route does not take is refused (400), not silently ignored: a
    misspelt filter (`?stat=error`) would otherwise answer everything. So is one given twice
    (`?state=ready&state=error`): every parameter is one value, and keeping the last would answer
    a question nobody asked."""
    if known is None:
        return
    names = [k for k, _v in parse_qsl(scope.get("query_string", b"").decode("latin-1"), keep_blank_values=True)]
    unknown = sorted(set(names) - known)
    if unknown:
        raise CrowbarError(f"unknown query parameter {unknown[0]!r}" + (
            f" (this route takes {', '.join(sorted(known))})" if known else " (this route takes none)"),
            field="query")
    repeated = sorted(k for k, n in Counter(names).items() if n > 1)
    if repeated:
        raise CrowbarError(f"query parameter {repeated[0]!r} given more than once (it takes one value)",
                           field="query")


def _check_url(scope: Scope) -> None:
    if "\x00" in scope.get("path", ""):
        raise InvalidInput("the path contains a NUL character", field="path")
    if b"\x00" in unquote_to_bytes(scope.get("query_string", b"")):
        raise InvalidInput("the query contains a NUL character", field="query")


async def _read_body(scope: Scope, receive: Receive, limit: int, parse: bool = True) -> bytes | None:
    """The whole body (None if the client went away), refused past `limit` bytes or when it is a
    JSON body that is not strict JSON."""
    headers = Headers(scope=scope)
    declared = headers.get("content-length", "")
    if declared.isascii() and declared.isdigit() and int(declared) > limit:
        raise body.too_large(int(declared), limit)
    chunks, size = [], 0
    while True:
        message = await receive()
        if message["type"] != "http.request":
            return None
        chunk = message.get("body", b"")
        size += len(chunk)
        if size > limit:
            raise body.too_large(size, limit)
        chunks.append(chunk)
        if not message.get("more_body", False):
            break
    raw = b"".join(chunks)
    if parse and raw and body.is_json(headers.get("content-type")):
        if len(raw) > PARSE_IN_THREAD:  # a megabyte takes a while: not on the event loop
            await run_in_threadpool(body.loads, raw)
        else:
            body.loads(raw)
    return raw


class Edge:
    """ASGI middleware over the whole application. `routes` are the routes of the routers the
    application includes, in the order it includes them (`create_app` passes them): the edge finds
    the route a request is for as the router will, and so the role it needs and its
    body limit, and the role it needs. A request for no route (404) is left to the router."""

    def __init__(self, app: ASGIApp, routes: Sequence[BaseRoute]) -> None:
        self.app = app
        self.routes = [(route, deps.required_role(route) if needs_user(route) else None) for route in routes]
        self.needed = {id(route): needed for route, needed in self.routes}
        self.index = RouteIndex([route for route, _needed in self.routes])
        self.queries = {id(route): query_names(route) for route in routes}

    def _route(self, scope: Scope) -> tuple[BaseRoute | None, str | None, set[str]]:
        """The route for `scope`, the role it needs (None: an open route), and (when no route takes the
        request's method, but some take its path) the methods of the path as the document lists
        them: those of the routes declared with the most literal of the paths that matched
        (`/nodes/deploy` rather than `/nodes/{key}`), the first of them on a tie."""
        found, partial_routes = self.index.find(scope)
        if found is not None:
            scope[ROUTE_KEY] = found  # the access log's route (crowbar.api.observe)
            return found, self.needed[id(found)], set()
        partials = [(route, self.needed[id(route)]) for route in partial_routes]
        if not partials:
            return None, None, set()
        best = min(partials, key=lambda p: getattr(p[0], "path", "").count("{"))
        allowed = set().union(*(r.methods or () for r, _n in partials if r.path == best[0].path))
        return (*best, allowed)

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        settings = scope["app"].state.settings
        route, needed, allowed = self._route(scope)
        try:
            if needed:  # the role the route needs
                who = await run_in_threadpool(deps.authenticate, settings, Headers(scope=scope), scope.get("method", "GET"))
                scope.setdefault("state", {})["caller"] = who
                if not who.may(needed):
                    raise Forbidden(f"user {who.name!r} has the role {who.role}: this needs {needed} or above",
                                    field="role")
            if allowed:  # the router would name only the first route's methods
                raise HTTPException(405, headers={"Allow": ", ".join(sorted(allowed))})
            _check_url(scope)
            if needed and route is not None:
                _check_query(scope, self.queries.get(id(route)))
            path = getattr(route, "path", None)
            raw = await _read_body(scope, receive, body.limit_for(path, settings.max_body),
                                   parse=path not in body.OWN_PARSER)
        except Exception as exc:  # noqa: BLE001 - answered as the app's handlers would, or re-raised
            response = errors.response_for(exc)
            if response is None:
                raise
            await response(scope, receive, send)
            return
        if raw is None:  # the client is gone
            return
        located = LOCATIONS.get((scope.get("method"), getattr(route, "path", None)))
        if located is not None:
            send = _with_location(send, located)
        replayed = False

        async def replay() -> Message:
            nonlocal replayed
            if not replayed:
                replayed = True
                return {"type": "http.request", "body": raw, "more_body": False}
            return await receive()

        await self.app(scope, replay, send)


def _with_location(send: Send, located: Callable[[dict], str]) -> Send:
    """`send`, adding a Location header to a 201 (whose body is held until it is whole to read
    the created object's id from it)."""
    held: list[Message] = []

    async def sending(message: Message) -> None:
        if message["type"] == "http.response.start" and message["status"] == 201:
            held.append(message)
            return
        if not held:
            await send(message)
            return
        held.append(message)
        if message["type"] == "http.response.body" and not message.get("more_body", False):
            start, body = held[0], b"".join(m.get("body", b"") for m in held[1:])
            try:
                where = located(json.loads(body))
            except (ValueError, KeyError, TypeError):
                where = None
            if where is not None:
                start = {**start, "headers": [*start.get("headers", []), (b"location", where.encode())]}
            await send(start)
            await send({"type": "http.response.body", "body": body, "more_body": False})

    return sending

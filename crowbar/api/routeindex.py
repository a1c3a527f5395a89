"""Finding the route of a request without trying every route: routes indexed by the literal
segments their path begins with.

The edge (crowbar.api.edge) and the access log (crowbar.api.observe) each need the route a request
is for; trying all ~200 routes' regular expressions in order, twice per request, was the largest
cost of a cheap request (an agent poll: docs/benchmarks.md, fleet). A route whose path begins with
literal segments (/api/v2/agent/next, /api/v2/nodes/{key}) can only match a path that begins with the
same segments, so only those routes are tried, still in their declared order (first match wins,
exactly as before).
"""

from __future__ import annotations

from collections.abc import Sequence

from starlette.routing import BaseRoute, Match
from starlette.types import Scope

ROUTE_KEY = "crowbar.route"  # scope key: the route the edge found for the request


def _literal_prefix(path: str) -> tuple[str, ...]:
    segments = []
    for segment in path.split("/")[1:]:
        if "{" in segment:
            break
        segments.append(segment)
    return tuple(segments)


class RouteIndex:
    """`routes` in order, grouped by the literal segments their path begins with. The list may be
    filled after this is made (the app adds routes after its middleware): it is read at first use."""

    def __init__(self, routes: Sequence[BaseRoute]) -> None:
        self._routes = routes
        self._by_prefix: dict[tuple[str, ...], list[int]] | None = None
        self._longest = 0

    def _build(self) -> dict[tuple[str, ...], list[int]]:
        index: dict[tuple[str, ...], list[int]] = {}
        for i, route in enumerate(self._routes):
            path = getattr(route, "path", None)
            prefix = _literal_prefix(path) if isinstance(path, str) else ()
            if isinstance(path, str) and path.endswith("/") and prefix and prefix[-1] == "":
                prefix = prefix[:-1]
            index.setdefault(prefix, []).append(i)
        self._longest = max((len(p) for p in index), default=0)
        self._by_prefix = index
        return index

    def candidates(self, path: str) -> list[BaseRoute]:
        """The routes that may match `path`, in their declared order."""
        index = self._by_prefix if self._by_prefix is not None else self._build()
        segments = tuple(path.split("/")[1:])
        found: list[int] = []
        for k in range(min(len(segments), self._longest) + 1):
            found += index.get(segments[:k], ())
        found.sort()
        return [self._routes[i] for i in found]

    def find(self, scope: Scope) -> tuple[BaseRoute | None, list[BaseRoute]]:
        """The first route that matches `scope` fully, and the ones before it that match its path
        only (another method)."""
        partials = []
        for route in self.candidates(scope.get("path", "")):
            match, _child = route.matches(scope)
            if match is Match.FULL:
                return route, partials
            if match is Match.PARTIAL:
                partials.append(route)
        return None, partials

"""What the server tells its operators: the access log, Prometheus metrics and the health check.

- `Observe` (ASGI middleware, outermost): every request is a line of `crowbar.access` (method,
  path, status, milliseconds, user, client; never a header or a body) and a sample of
  `crowbar_http_requests_total{method,route,code}` and `crowbar_http_request_duration_seconds`.
  `route` is the route's declared path (`/api/v2/nodes/{key}`): a bounded set, whatever callers send.
- `Metrics` holds one registry per application (tests build many): those two, plus what the
  database says at scrape time (`DatabaseCollector`): nodes by state, noderoles by state, the
  annealer's queue (runnable noderoles) and runs in flight, run durations (a histogram over the
  finished runs), each server's heartbeat age, and `crowbar_service_up{service}` from the checks
  the server process passes (`AppSettings.checks`: its loops, dnsmasq); and `LoopLag`:
  `crowbar_event_loop_lag_seconds`, how late the event loop runs a timer, sampled while the
  application runs.
- `health(settings)`: the database, then each check; which failed.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Sequence

from prometheus_client import CollectorRegistry, Counter, Histogram, generate_latest
from prometheus_client.core import GaugeMetricFamily, HistogramMetricFamily
from sqlalchemy import func, select, text
from starlette.routing import BaseRoute
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from crowbar.api.routeindex import ROUTE_KEY, RouteIndex
from crowbar.db.models import Node, NodeRole, Run, Server, utcnow
from crowbar.db.sql import is_postgresql

access = logging.getLogger("crowbar.access")
RUN_BUCKETS = (0.1, 0.5, 1, 5, 10, 30, 60, 300, 900, 3600)
LAG_BUCKETS = (0.001, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5)


class Metrics:
    def __init__(self, settings) -> None:
        self.registry = CollectorRegistry()
        self.requests = Counter("crowbar_http_requests", "HTTP requests by route and status code",
                                ["method", "route", "code"], registry=self.registry)
        self.latency = Histogram("crowbar_http_request_duration_seconds", "HTTP request latency by route",
                                 ["method", "route"], registry=self.registry)
        self.registry.register(DatabaseCollector(settings))
        self.loop_lag = LoopLag(self.registry)

    def exposition(self) -> bytes:
        return generate_latest(self.registry)


class LoopLag:
    """How late the event loop runs a timer: `crowbar_event_loop_lag_seconds`, one sample every
    `interval` from the application's start to its end (its ASGI lifespan).

    Every held long poll ends on such a timer, and every request waits for the loop, so this is the
    server's own share of their latency. What makes it late is what holds the loop: a callback that
    runs long, the collector's passes, or threads that keep the interpreter's lock from it (the
    poll reads before they were bounded: docs/benchmarks.md, "What stalls the event loop")."""

    interval = 0.25

    def __init__(self, registry: CollectorRegistry) -> None:
        self.histogram = Histogram("crowbar_event_loop_lag_seconds", "How late the server's event loop ran "
                                   f"a timer (sampled every {self.interval:g} s)", buckets=LAG_BUCKETS,
                                   registry=registry)
        self._task: asyncio.Task | None = None

    async def _watch(self) -> None:
        loop = asyncio.get_running_loop()
        while True:
            due = loop.time() + self.interval
            await asyncio.sleep(self.interval)
            self.histogram.observe(max(0.0, loop.time() - due))

    def lifespan(self, receive: Receive) -> Receive:
        """`receive` of the lifespan scope: sampling starts with the application and stops with it."""
        async def receiving() -> Message:
            message = await receive()
            if message["type"] == "lifespan.startup" and self._task is None:
                self._task = asyncio.get_running_loop().create_task(self._watch(), name="crowbar-loop-lag")
            elif message["type"] == "lifespan.shutdown" and self._task is not None:
                self._task.cancel()
                self._task = None
            return message
        return receiving


class DatabaseCollector:
    """Gauges read from the database when Prometheus scrapes (a few grouped counts)."""

    def __init__(self, settings) -> None:
        self.settings = settings

    def describe(self):
        return []  # collected on demand only: registering it runs no query

    def collect(self):
        settings = self.settings
        try:
            with settings.db.session() as s:
                nodes = s.execute(select(Node.state, func.count()).group_by(Node.state)).all()
                noderoles = s.execute(select(NodeRole.state, func.count()).group_by(NodeRole.state)).all()
                running = s.scalar(select(func.count()).select_from(Run).where(Run.state == "running"))
                runs = _run_histogram(s)
                beats = s.execute(select(Server.id, Server.hostname, Server.heartbeat_at)
                                  .where(Server.stopped.is_(False))).all()
        except Exception:  # noqa: BLE001 - a scrape while the database is down still answers
            logging.getLogger(__name__).warning("metrics: the database cannot be read", exc_info=True)
            yield GaugeMetricFamily("crowbar_database_up", "1 when the database answered the scrape", value=0)
            return
        yield GaugeMetricFamily("crowbar_database_up", "1 when the database answered the scrape", value=1)
        g = GaugeMetricFamily("crowbar_nodes", "Nodes by lifecycle state", labels=["state"])
        for state, count in nodes:
            g.add_metric([state or ""], count)
        yield g
        g = GaugeMetricFamily("crowbar_noderoles", "Noderoles by state", labels=["state"])
        by_state = dict(noderoles)
        for state, count in by_state.items():
            g.add_metric([state], count)
        yield g
        yield GaugeMetricFamily("crowbar_annealer_queue_depth", "Noderoles waiting to run (todo)",
                                value=by_state.get("todo", 0))
        yield GaugeMetricFamily("crowbar_annealer_runs_in_flight", "Runs started and not finished", value=running)
        buckets, total, count = runs
        yield HistogramMetricFamily("crowbar_annealer_run_duration_seconds", "Durations of finished runs",
                                    buckets=buckets, sum_value=total)
        now = utcnow()
        g = GaugeMetricFamily("crowbar_server_heartbeat_age_seconds", "Seconds since each running server's "
                              "annealer heartbeat", labels=["server", "hostname"])
        for server_id, hostname, beat in beats:
            g.add_metric([str(server_id), hostname], max(0.0, (now - beat).total_seconds()))
        yield g
        g = GaugeMetricFamily("crowbar_service_up", "1 when a supervised service of this server is healthy",
                              labels=["service"])
        for name, result in (settings.checks() if settings.checks else {}).items():
            g.add_metric([name], 1 if result.get("ok") else 0)
        yield g


def _run_histogram(s):
    """([(le, cumulative count)...], sum of seconds, count) over the finished runs."""
    if is_postgresql(s):
        seconds = func.extract("epoch", Run.finished_at - Run.started_at)
    else:
        seconds = (func.julianday(Run.finished_at) - func.julianday(Run.started_at)) * 86400.0
    columns = [func.count().filter(seconds <= le) for le in RUN_BUCKETS]
    row = s.execute(select(func.count(), func.coalesce(func.sum(seconds), 0), *columns)
                    .where(Run.finished_at.is_not(None))).one()
    count, total, *cumulative = row
    buckets = [(str(float(le)), int(n)) for le, n in zip(RUN_BUCKETS, cumulative)] + [("+Inf", int(count))]
    return buckets, float(total), int(count)


def health(settings) -> tuple[bool, dict]:
    """(healthy, body): the database answers a query, and every check the server passed is ok."""
    checks: dict[str, dict] = {}
    try:
        with settings.db.session() as s:
            s.execute(text("SELECT 1"))
        checks["database"] = {"ok": True}
    except Exception as exc:  # noqa: BLE001 - the answer says why
        checks["database"] = {"ok": False, "detail": " ".join(str(getattr(exc, "orig", exc)).split())[:300]}
    if settings.checks is not None:
        try:
            checks.update(settings.checks())
        except Exception as exc:  # noqa: BLE001
            checks["server"] = {"ok": False, "detail": f"the checks failed: {exc}"}
    failed = sorted(name for name, result in checks.items() if not result.get("ok"))
    return not failed, {"status": "failing" if failed else "ok", "failed": failed, "checks": checks}


class Observe:
    """Outermost middleware: the access log line and the request metrics of every HTTP request."""

    def __init__(self, app: ASGIApp, routes: Sequence[BaseRoute], metrics: Metrics) -> None:
        self.app, self.routes, self.metrics = app, routes, metrics
        self.index = RouteIndex(routes)

    def _route(self, scope: Scope) -> str:
        route = scope.get(ROUTE_KEY)  # the edge found it already
        if route is None:
            route, _partials = self.index.find(scope)
        return getattr(route, "path", "other") if route is not None else "unmatched"

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            if scope["type"] == "lifespan":
                receive = self.metrics.loop_lag.lifespan(receive)
            await self.app(scope, receive, send)
            return
        started, status = time.perf_counter(), 500

        async def sending(message: Message) -> None:
            nonlocal status
            if message["type"] == "http.response.start":
                status = message["status"]
            await send(message)

        try:
            await self.app(scope, receive, sending)
        finally:
            seconds = time.perf_counter() - started
            route, method = self._route(scope), scope.get("method", "")
            self.metrics.requests.labels(method, route, str(status)).inc()
            self.metrics.latency.labels(method, route).observe(seconds)
            caller = scope.get("state", {}).get("caller")
            client = scope.get("client")
            path = scope.get("path", "")
            access.info("%s %s %d %.1fms user=%s client=%s", method, path, status, seconds * 1000,
                        caller.name if caller else "-", client[0] if client else "-",
                        extra={"fields": {"method": method, "path": path, "route": route, "status": status,
                                          "duration_ms": round(seconds * 1000, 1),
                                          "user": caller.name if caller else None,
                                          "client": client[0] if client else None}})

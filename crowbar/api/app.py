"""The FastAPI application, assembled from one router per resource.

Every route except the health check, the metrics, discovery, the node agent's and the boot files
needs a user's token (`Authorization: Bearer <token>`) and a role (viewer: reads, operator:
changes, admin: users), checked before anything else (crowbar.api.edge:
then the body's size and strict JSON); the open ones may be limited to the provisioning listener
(crowbar.api.listeners). Errors have one JSON body (crowbar.api.errors).
Each route is one call into a service inside the request's unit of work (crowbar.api.deps).
List endpoints answer {"items": [...], "next": "<path and query of the next page>" | null}, except
the two that something else bounds: GET /networks (the template) and GET /deployment_roles (one
per role).
"""

from __future__ import annotations

import functools

import swagger_ui_bundle
from fastapi import FastAPI
from fastapi.openapi.docs import get_swagger_ui_html
from fastapi.responses import PlainTextResponse
from prometheus_client import CONTENT_TYPE_LATEST
from starlette.staticfiles import StaticFiles

from crowbar import __version__
from crowbar.api import (
    attribs,
    body,
    catalog,
    console,
    dashboard,
    deployments,
    edge,
    errors,
    events,
    groupcommit,
    listeners,
    longpoll,
    network,
    portable,
    noderoles,
    nodes,
    observe,
    os_rules,
    power,
    provisioning,
    proxy,
    stream,
    ui,
    users,
    websession,
)
from crowbar.api.settings import AppSettings

# The router tries routers, and their routes, in this order: the machines' routes (boot scripts,
# discovery, the agent's polls: most requests of a fleet) come first, so that they are found after
# a few tries instead of ~70. No other route matches their paths (tests/api/test_conventions.py).
ROUTERS = (provisioning.open_router, nodes.router, catalog.router, deployments.router, noderoles.router,
           attribs.router, events.router, network.router, power.router, power.agent_router, portable.router,
           provisioning.admin_router, users.router, users.tokens, websession.open_router, websession.router,
           dashboard.router, proxy.router, os_rules.router, console.router)
# The errors the routers' routes may answer, as the OpenAPI document declares them: the edge's
# (413, 422); lookups, conflicts and the database (404, 409, 503); 401: a user's token on user
# routes (checked first, then its role: 403), a node token on the agent's; 400: an unknown query parameter. (A route may declare more of its own.)
ROUTER_ERRORS = errors.responses(400, 401, 403, *errors.DATABASE, *errors.EDGE)
DOCS, DOCS_ASSETS = "/api/v2/docs", "/api/v2/docs/assets"  # the OpenAPI page, and its files (no CDN)


def create_app(settings: AppSettings) -> FastAPI:
    """The application for `settings`. It starts no background loop: the process that serves it
    runs them, and `settings.wake` tells them about new work."""
    app = FastAPI(title="Crowbar", version=__version__,
                  description="Bare-metal provisioning and orchestration: barclamps, deployments, noderoles, "
                              "the annealer.", docs_url=None, openapi_url="/api/v2/openapi.json",
                  default_response_class=body.JSONResponse)
    app.state.settings = settings  # read through crowbar.api.deps.settings only
    # The one reader of the event log for this process's event streams (crowbar.api.stream); the
    # server closes it before uvicorn waits for open connections at shutdown.
    app.state.event_hub = stream.EventHub(settings.db)
    # The agents' long polls (crowbar.api.longpoll), told by the database when work is queued.
    app.state.agent_waiters = longpoll.AgentWaiters(settings.agent_waiters)
    # discovery posts that arrive together are written together (api/groupcommit.py)
    app.state.discoveries = groupcommit.GroupCommit(functools.partial(provisioning.discover_together, settings),
                                                    app.state.agent_waiters.write)
    # and so are the agents' other writes: job results, progress, calls home
    app.state.agent_writes = groupcommit.GroupCommit(functools.partial(provisioning.write_together, settings),
                                                     app.state.agent_waiters.write)
    if settings.db is not None:  # (the OpenAPI document is made from an app without one)
        settings.db.on_agent_work(app.state.agent_waiters.notify)
    errors.install(app)
    metrics = observe.Metrics(settings)
    # Authentication, then the URL and the body, before any route: the edge knows the routes.
    app.add_middleware(edge.Edge, routes=[route for router in ROUTERS for route in router.routes])
    if settings.provision_listeners is not None:  # outermost but one, before authentication
        app.add_middleware(listeners.ProvisioningListeners, listeners=settings.provision_listeners,
                           prefixes=provisioning.PROVISIONING_PATHS)
    # Added last: outermost, it sees every answer (the access log and the request metrics).
    observed: list = []  # every route, filled in below (the middleware is built at the first request)
    app.add_middleware(observe.Observe, routes=observed, metrics=metrics)

    @app.get("/api/v2/health", tags=["health"], responses=errors.responses(*errors.EDGE, 503))
    def health():
        """200 when the database answers and every supervised part of the server (the annealer's
        heartbeat, the loops, dnsmasq) is well; 503 naming those that are not, in `failed`."""
        healthy, out = observe.health(settings)
        return body.JSONResponse({**out, "version": __version__}, status_code=200 if healthy else 503)

    @app.get("/metrics", tags=["health"], response_class=PlainTextResponse,
             responses={200: {"content": {"text/plain": {}}}, **errors.responses(*errors.EDGE)})
    def prometheus_metrics():
        """Prometheus metrics (text exposition format): requests by route and code, latency, nodes
        and noderoles by state, the annealer's queue and run durations, supervised services."""
        return PlainTextResponse(metrics.exposition(), media_type=CONTENT_TYPE_LATEST)

    for router in ROUTERS:
        app.include_router(router, responses=ROUTER_ERRORS)

    document = app.openapi

    def openapi() -> dict:  # the generated document, with the schema of the error body
        return errors.add_schemas(document())  # (document() is generated once, then cached)

    app.openapi = openapi
    observed += [route for route in app.router.routes if isinstance(getattr(route, "path", None), str)]
    observed += [route for router in ROUTERS for route in router.routes]

    @app.get(DOCS, include_in_schema=False)
    def docs():
        """The OpenAPI page (Swagger UI), whose scripts and styles this server serves: sites are
        often offline, and a page from a CDN would be blank there."""
        return get_swagger_ui_html(openapi_url=app.openapi_url, title=f"{app.title} API",
                                   swagger_js_url=f"{DOCS_ASSETS}/swagger-ui-bundle.js",
                                   swagger_css_url=f"{DOCS_ASSETS}/swagger-ui.css",
                                   swagger_favicon_url=f"{DOCS_ASSETS}/favicon-32x32.png")

    app.mount(DOCS_ASSETS, StaticFiles(directory=swagger_ui_bundle.swagger_ui_path), name="docs-assets")
    ui.mount(app)  # the web UI under /ui; `/` redirects there

    return app

"""The FastAPI application, assembled from one router per resource.

Every route except the health check, discovery, the node agent's and the boot files needs an
admin token (`Authorization: Bearer <token>`), checked before anything else (crowbar.api.edge:
then the body's size and strict JSON); the open ones may be limited to the provisioning listener
(crowbar.api.listeners). Errors have one JSON body (crowbar.api.errors).
Each route is one call into a service inside the request's unit of work (crowbar.api.deps).
List endpoints answer {"items": [...], "next": "<path and query of the next page>" | null}, except
the two that something else bounds: GET /networks (the template) and GET /deployment_roles (one
per role).
"""

from __future__ import annotations

from fastapi import FastAPI
from fastapi.responses import Response

from crowbar import __version__
from crowbar.api import (
    attribs,
    body,
    catalog,
    deployments,
    edge,
    errors,
    events,
    listeners,
    network,
    portable,
    noderoles,
    nodes,
    power,
    provisioning,
)
from crowbar.api.settings import AppSettings

ROUTERS = (nodes.router, catalog.router, deployments.router, noderoles.router, attribs.router, events.router,
           network.router, power.router, portable.router, provisioning.open_router, provisioning.admin_router)
# The errors the routers' routes may answer, as the OpenAPI document declares them: the edge's
# (413, 422); lookups, conflicts and the database (404, 409, 503); 401: the admin token on admin
# routes (checked first), a node token on the agent's. (A route may declare more of its own.)
ROUTER_ERRORS = errors.responses(401, *errors.DATABASE, *errors.EDGE)


def create_app(settings: AppSettings) -> FastAPI:
    """The application for `settings`. It starts no background loop: the process that serves it
    runs them, and `settings.wake` tells them about new work."""
    app = FastAPI(title="Crowbar", version=__version__,
                  description="Bare-metal provisioning and orchestration: barclamps, deployments, noderoles, "
                              "the annealer.", docs_url="/api/v2/docs", openapi_url="/api/v2/openapi.json",
                  default_response_class=body.JSONResponse)
    app.state.settings = settings  # read through crowbar.api.deps.settings only
    errors.install(app)
    # Authentication, then the URL and the body, before any route: the edge knows the routes.
    app.add_middleware(edge.Edge, routes=[route for router in ROUTERS for route in router.routes])
    if settings.provision_listeners is not None:  # added last: outermost, before authentication
        app.add_middleware(listeners.ProvisioningListeners, listeners=settings.provision_listeners,
                           prefixes=provisioning.PROVISIONING_PATHS)

    @app.get("/api/v2/health", tags=["health"], responses=errors.responses(*errors.EDGE))
    def health():
        return {"status": "ok", "version": __version__}

    for router in ROUTERS:
        app.include_router(router, responses=ROUTER_ERRORS)

    document = app.openapi

    def openapi() -> dict:  # the generated document, with the schema of the error body
        return errors.add_schemas(document())  # (document() is generated once, then cached)

    app.openapi = openapi

    @app.get("/", include_in_schema=False)
    def root():
        return Response(status_code=307, headers={"location": "/api/v2/docs"})

    return app

"""The FastAPI application, assembled from one router per resource.

Every route except the health check, discovery, the node agent's and the boot files needs an
admin token (`Authorization: Bearer <token>`); those open ones may be limited to the provisioning
listener (crowbar.api.listeners). Errors have one JSON body (crowbar.api.errors).
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
    catalog,
    deployments,
    errors,
    events,
    listeners,
    network,
    noderoles,
    nodes,
    power,
    provisioning,
)
from crowbar.api.settings import AppSettings

ROUTERS = (nodes.router, catalog.router, deployments.router, noderoles.router, attribs.router, events.router,
           network.router, power.router, provisioning.open_router, provisioning.admin_router)


def create_app(settings: AppSettings) -> FastAPI:
    """The application for `settings`. It starts no background loop: the process that serves it
    runs them, and `settings.wake` tells them about new work."""
    app = FastAPI(title="Crowbar", version=__version__,
                  description="Bare-metal provisioning and orchestration: barclamps, deployments, noderoles, "
                              "the annealer.", docs_url="/api/v2/docs", openapi_url="/api/v2/openapi.json")
    app.state.settings = settings  # read through crowbar.api.deps.settings only
    errors.install(app)
    if settings.provision_listeners is not None:
        app.add_middleware(listeners.ProvisioningListeners, listeners=settings.provision_listeners,
                           prefixes=provisioning.PROVISIONING_PATHS)

    @app.get("/api/v2/health", tags=["health"])
    def health():
        return {"status": "ok", "version": __version__}

    for router in ROUTERS:
        app.include_router(router)

    @app.get("/", include_in_schema=False)
    def root():
        return Response(status_code=307, headers={"location": "/api/v2/docs"})

    return app

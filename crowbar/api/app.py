"""FastAPI application: authentication, error mapping, and the /api/v2 routes.

Every route except the health check needs a token (`Authorization: Bearer <token>`). Errors are
JSON: {"error": kind, "message": text, "field": name?} with 400/401/404/409/422.
"""

from __future__ import annotations

import tempfile
from collections.abc import Iterator
from pathlib import Path, PurePosixPath
from typing import Any

from fastapi import APIRouter, Depends, FastAPI, Query, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse, Response
from pydantic import BaseModel, Field
from sqlalchemy.exc import IntegrityError, OperationalError
from sqlalchemy.orm import Session

from crowbar import __version__
from crowbar.api import deps, network as network_api, power as power_api, provisioning as provisioning_api
from crowbar.api.settings import AppSettings
from crowbar.errors import CrowbarError, InvalidInput
from crowbar.services import anneal, attribs, catalog, deployments, nodes, noderoles


class NodeIn(BaseModel):
    name: str = Field(description="Fully qualified host name")
    admin: bool = False
    alive: bool = True
    available: bool = True
    description: str = ""


class NodePatch(BaseModel):
    alive: bool | None = None
    available: bool | None = None
    description: str | None = None


class DeploymentIn(BaseModel):
    name: str
    parent: str | None = None
    description: str = ""


class BindIn(BaseModel):
    role: str
    node: str


class BarclampIn(BaseModel):
    path: str | None = Field(None, description="A barclamp directory on the server")
    files: dict[str, str] | None = Field(None, description="Or the files themselves: relative path -> text")
    source: str | None = Field(None, description="Where the files came from (shown in errors and as source_path)")


class AttribSet(BaseModel):
    node: str
    value: Any


class RoleData(BaseModel):
    data: dict


def _field_of(loc: tuple) -> str:
    parts = [str(p) for p in loc if p not in ("body", "query", "path")]
    return ".".join(parts) or "body"


def create_app(settings: AppSettings) -> FastAPI:
    """The application. It starts no background loop: `crowbar server` runs those beside it, and
    `settings.wake(kind)` tells them when a unit of work made new work for them."""
    db = settings.db
    app = FastAPI(title="Crowbar", version=__version__,
                  description="Bare-metal provisioning and orchestration: barclamps, deployments, noderoles, "
                              "the annealer.", docs_url="/api/v2/docs", openapi_url="/api/v2/openapi.json")
    app.state.settings = settings
    app.state.db = db
    app.state.domain = settings.domain
    app.state.advertise_url = settings.advertise_url
    app.state.discovery_image = settings.discovery_image

    @app.exception_handler(CrowbarError)
    async def _crowbar_error(_req: Request, exc: CrowbarError):
        return JSONResponse(exc.to_dict(), status_code=exc.status)

    @app.exception_handler(RequestValidationError)
    async def _validation(_req: Request, exc: RequestValidationError):
        errs = exc.errors()
        first = errs[0] if errs else {"loc": (), "msg": "invalid request"}
        field = _field_of(tuple(first.get("loc", ())))
        return JSONResponse({"error": "invalid", "message": f"{field}: {first.get('msg')}", "field": field,
                             "details": [{"field": _field_of(tuple(e.get("loc", ()))), "reason": e.get("msg")}
                                         for e in errs]}, status_code=422)

    @app.exception_handler(IntegrityError)
    async def _integrity(_req: Request, exc: IntegrityError):
        # First line only: the database's DETAIL lines are for the server log, not for clients.
        first = (str(exc.orig).strip().splitlines() or ["constraint violated"])[0]
        return JSONResponse({"error": "conflict", "message": f"conflicts with existing data: {first}"},
                            status_code=409)

    @app.exception_handler(OperationalError)
    async def _operational(_req: Request, exc: OperationalError):
        return JSONResponse({"error": "unavailable", "message": f"database unavailable: {exc.orig}"},
                            status_code=503)

    def session() -> Iterator[Session]:
        with db.session() as s:
            yield s

    actor = deps.actor  # shared with the routers of other modules (crowbar.api.deps)

    def wake() -> None:
        settings.wake("anneal")

    @app.get("/api/v2/health", tags=["health"])
    def health():
        return {"status": "ok", "version": __version__}

    api = APIRouter(prefix="/api/v2", dependencies=[Depends(actor)])
    Db = Depends(session)
    Who = Depends(actor)

    # nodes
    @api.get("/nodes", tags=["nodes"])
    def list_nodes(s: Session = Db):
        return nodes.list_nodes(s)

    @api.post("/nodes", status_code=201, tags=["nodes"])
    def create_node(body: NodeIn, s: Session = Db, who: str = Who):
        out = nodes.create_node(s, body.name, admin=body.admin, alive=body.alive, available=body.available,
                                description=body.description, actor=who)
        s.commit()
        wake()
        return out

    @api.get("/nodes/{key}", tags=["nodes"])
    def show_node(key: str, s: Session = Db):
        return nodes.show_node(s, key)

    @api.patch("/nodes/{key}", tags=["nodes"])
    def update_node(key: str, body: NodePatch, s: Session = Db, who: str = Who):
        out = nodes.update_node(s, key, alive=body.alive, available=body.available,
                                description=body.description, actor=who)
        s.commit()
        wake()
        return out

    @api.delete("/nodes/{key}", tags=["nodes"])
    def delete_node(key: str, s: Session = Db, who: str = Who):
        out = nodes.delete_node(s, key, actor=who)
        s.commit()
        return out

    # barclamps and roles
    @api.get("/barclamps", tags=["barclamps"])
    def list_barclamps(s: Session = Db):
        return catalog.list_barclamps(s)

    @api.post("/barclamps", status_code=201, tags=["barclamps"])
    def import_barclamp(body: BarclampIn, s: Session = Db, who: str = Who):
        if body.files:
            with tempfile.TemporaryDirectory(prefix="barclamp-") as tmp:
                for rel, text in body.files.items():
                    p = PurePosixPath(rel)
                    if p.is_absolute() or ".." in p.parts:
                        raise InvalidInput(f"file path {rel!r} must be relative, without '..'", field="files")
                    target = Path(tmp, *p.parts)
                    target.parent.mkdir(parents=True, exist_ok=True)
                    target.write_text(text)
                out = catalog.import_barclamp(s, tmp, actor=who, source=body.source)
                s.commit()
                return out
        if body.path:
            out = catalog.import_barclamp(s, body.path, actor=who)
            s.commit()
            return out
        raise InvalidInput("give either path or files", field="path")

    @api.get("/barclamps/{key}", tags=["barclamps"])
    def show_barclamp(key: str, s: Session = Db):
        return catalog.show_barclamp(s, key)

    @api.get("/roles", tags=["roles"])
    def list_roles(barclamp: str | None = None, s: Session = Db):
        return catalog.list_roles(s, barclamp)

    @api.get("/roles/{key}", tags=["roles"])
    def show_role(key: str, s: Session = Db):
        return catalog.show_role(s, key)

    # deployments
    @api.get("/deployments", tags=["deployments"])
    def list_deployments(s: Session = Db):
        return deployments.list_deployments(s)

    @api.post("/deployments", status_code=201, tags=["deployments"])
    def create_deployment(body: DeploymentIn, s: Session = Db, who: str = Who):
        out = deployments.create_deployment(s, body.name, body.parent, body.description, actor=who)
        s.commit()
        return out

    @api.get("/deployments/{key}", tags=["deployments"])
    def show_deployment(key: str, s: Session = Db):
        return deployments.show_deployment(s, key)

    @api.delete("/deployments/{key}", tags=["deployments"])
    def delete_deployment(key: str, s: Session = Db, who: str = Who):
        out = deployments.delete_deployment(s, key, actor=who)
        s.commit()
        return out

    @api.post("/deployments/{key}/commit", tags=["deployments"])
    def commit_deployment(key: str, s: Session = Db, who: str = Who):
        out = deployments.commit(s, key, actor=who)
        s.commit()
        wake()
        return out

    @api.post("/deployments/{key}/propose", tags=["deployments"])
    def propose_deployment(key: str, s: Session = Db, who: str = Who):
        out = deployments.propose(s, key, actor=who)
        s.commit()
        return out

    @api.post("/deployments/{key}/bind", status_code=201, tags=["deployments"])
    def bind(key: str, body: BindIn, s: Session = Db, who: str = Who):
        out = deployments.bind(s, key, body.role, body.node, actor=who)
        s.commit()
        wake()
        return out

    @api.get("/deployment_roles", tags=["deployments"])
    def deployment_roles(deployment: str, s: Session = Db):
        return deployments.show_deployment(s, deployment)["roles"]

    @api.put("/deployments/{key}/roles/{role}", tags=["deployments"])
    def set_role_data(key: str, role: str, body: RoleData, s: Session = Db, who: str = Who):
        out = deployments.set_role_data(s, key, role, body.data, actor=who)
        s.commit()
        return out

    # noderoles
    @api.get("/node_roles", tags=["node_roles"])
    def list_noderoles(deployment: str | None = None, node: str | None = None, role: str | None = None,
                       state: str | None = None, limit: int | None = Query(None, ge=1),
                       offset: int = Query(0, ge=0), s: Session = Db):
        return noderoles.list_noderoles(s, deployment, node, role, state, limit, offset)

    @api.get("/node_roles/{key}", tags=["node_roles"])
    def show_noderole(key: str, s: Session = Db):
        return noderoles.show_noderole(s, key)

    @api.post("/node_roles/{key}/retry", tags=["node_roles"])
    def retry(key: str, s: Session = Db, who: str = Who):
        out = noderoles.retry(s, key, actor=who)
        s.commit()
        wake()
        return out

    @api.get("/node_roles/{key}/parents", tags=["node_roles"])
    def parents(key: str, s: Session = Db):
        return noderoles.related(s, key, "parents")

    @api.get("/node_roles/{key}/children", tags=["node_roles"])
    def children(key: str, s: Session = Db):
        return noderoles.related(s, key, "children")

    @api.get("/node_roles/{key}/runs", tags=["node_roles"])
    def runs(key: str, s: Session = Db):
        return noderoles.runs(s, key)

    # attribs
    @api.get("/attribs", tags=["attribs"])
    def list_attribs(s: Session = Db):
        return attribs.list_attribs(s)

    @api.get("/attribs/{name}", tags=["attribs"])
    def get_attrib(name: str, node: str | None = None, s: Session = Db):
        return attribs.get(s, name, node)

    @api.put("/attribs/{name}", tags=["attribs"])
    def set_attrib(name: str, body: AttribSet, s: Session = Db, who: str = Who):
        out = attribs.set_on_node(s, name, body.value, body.node, actor=who)
        s.commit()
        wake()
        return out

    # annealer and events
    @api.get("/anneal", tags=["anneal"])
    def anneal_status(deployment: str | None = None, s: Session = Db):
        out = anneal.status(s, deployment)
        code = {"finished": 200, "working": 202, "failed": 409}[out["status"]]
        return JSONResponse(out, status_code=code)

    @api.get("/events", tags=["events"])
    def list_events(object_type: str | None = None, object_id: int | None = None,
                    limit: int = Query(100, ge=1, le=10000), after: int | None = None, s: Session = Db):
        return anneal.events(s, object_type, object_id, limit, after)

    app.include_router(api)
    app.include_router(network_api.router)
    app.include_router(provisioning_api.open_router)
    app.include_router(provisioning_api.admin_router)
    app.include_router(power_api.router)

    @app.get("/", include_in_schema=False)
    def root():
        return Response(status_code=307, headers={"location": "/api/v2/docs"})

    return app

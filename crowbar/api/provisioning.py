"""Provisioning routes: discovery and the node agent (node tokens), boot files for PXE (open),
and the operator's lifecycle actions (admin token). Power has its own routes (crowbar.api.power)."""

from __future__ import annotations

import json

from fastapi import APIRouter, Depends, Request
from fastapi.responses import FileResponse, PlainTextResponse, Response
from pydantic import BaseModel
from sqlalchemy import select
from sqlalchemy.orm import Session
from starlette.concurrency import run_in_threadpool

from crowbar.api import deps
from crowbar.db.models import Node, NodeMac
from crowbar.db.session import pending_work
from crowbar.errors import InvalidInput, NotFound
from crowbar.provisioner import ipxe, lifecycle
from crowbar.services import provisioning

open_router = APIRouter(tags=["provisioning"])
admin_router = APIRouter(prefix="/api/v2", tags=["provisioning"], dependencies=[Depends(deps.actor)])


class JobResult(BaseModel):
    exit_code: int
    output: str = ""


def _bearer(request: Request) -> str | None:
    header = request.headers.get("authorization", "")
    return header[7:].strip() if header.lower().startswith("bearer ") else None


@open_router.post("/api/v2/discovery", status_code=201)
async def discovery(request: Request):
    """The discovery agent posts its inventory; answers the node's name and its token."""
    raw = await request.body()
    try:
        inventory = json.loads(raw.decode("utf-8", errors="replace"))
    except ValueError as exc:
        raise InvalidInput(f"the inventory is not JSON: {exc}", field="body") from None
    db = request.app.state.db
    domain = getattr(request.app.state, "domain", provisioning.DEFAULT_DOMAIN)

    def work() -> dict:
        with db.session() as s:
            return provisioning.discover(s, inventory, domain)

    # Not on the event loop: the session waits for SQLite's write lock, and a request holding it
    # may need the loop to finish, which would stall the whole server for the busy timeout (60 s).
    out = await run_in_threadpool(work)
    request.app.state.settings.wake("anneal")
    return out


@open_router.get("/api/v2/agent/next")
def agent_next(request: Request, s: Session = Depends(deps.session)):
    node = provisioning.node_for_token(s, _bearer(request))
    return provisioning.agent_next(s, node)


@open_router.post("/api/v2/agent/jobs/{job_id}")
def agent_job(job_id: str, body: JobResult, request: Request, s: Session = Depends(deps.session)):
    node = provisioning.node_for_token(s, _bearer(request))
    out = provisioning.job_result(s, node, job_id, body.exit_code, body.output)
    s.commit()
    request.app.state.settings.wake("anneal")
    return out


def _boot_params(request: Request) -> ipxe.BootParams:
    base = getattr(request.app.state, "advertise_url", None) or str(request.base_url).rstrip("/")
    return ipxe.BootParams(server_url=base, boot_url=f"{base}/boot")


@open_router.get("/boot/{name}", response_class=PlainTextResponse)
def boot_script(name: str, request: Request, s: Session = Depends(deps.session)):
    """The iPXE script a machine asks for by its MAC; unknown machines get the discovery image."""
    try:
        mac = ipxe.mac_from_script_name(name)
    except ValueError:
        raise NotFound(f"no boot script {name!r}") from None
    node = s.scalar(select(Node).join(NodeMac, NodeMac.node_id == Node.id).where(NodeMac.mac == mac))
    return ipxe.render(node.bootenv if node else None, _boot_params(request), mac=mac)


@open_router.get("/boot/discovery/{name}")
def boot_image(name: str, request: Request):
    image = getattr(request.app.state, "discovery_image", None)
    files = {"vmlinuz": image.kernel, "initrd.img": image.initrd} if image else {}
    if name not in files:
        raise NotFound(f"no discovery image file {name!r}" + ("" if image else " (no image built)"))
    return FileResponse(files[name], media_type="application/octet-stream")


def _committed(s: Session, request: Request, out: dict) -> dict:
    s.commit()
    for kind in {"anneal"} | pending_work(s):  # reset/reinstall may queue a power cycle
        request.app.state.settings.wake(kind)
    return out


@admin_router.post("/nodes/{key}/allocate")
def allocate(key: str, request: Request, s: Session = Depends(deps.session), who: str = Depends(deps.actor)):
    return _committed(s, request, provisioning.allocate(s, key, actor=who))


@admin_router.post("/nodes/{key}/reinstall")
def reinstall(key: str, request: Request, s: Session = Depends(deps.session), who: str = Depends(deps.actor)):
    return _committed(s, request, provisioning.transition(s, key, lifecycle.REINSTALL, actor=who))


@admin_router.post("/nodes/{key}/reset")
def reset(key: str, request: Request, s: Session = Depends(deps.session), who: str = Depends(deps.actor)):
    return _committed(s, request, provisioning.transition(s, key, lifecycle.RESET, actor=who))


@admin_router.get("/node_states")
def node_states(format: str = "json"):
    if format == "dot":
        return Response(lifecycle.to_dot(), media_type="text/vnd.graphviz")
    if format != "json":
        raise InvalidInput(f"format {format!r}: expected json or dot", field="format")
    return {state: {"next": list(lifecycle.TRANSITIONS[state]), "bootenv": lifecycle.BOOTENVS[state],
                    "timeout_minutes": (lifecycle.TIMEOUTS[state].total_seconds() / 60
                                        if state in lifecycle.TIMEOUTS else None)}
            for state in lifecycle.STATES}

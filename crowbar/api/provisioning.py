"""Provisioning routes: discovery and the node agent (node tokens), boot files for PXE (open),
and the operator's lifecycle and power actions (admin token)."""

from __future__ import annotations

from fastapi import APIRouter, Depends, Request
from fastapi.responses import FileResponse, PlainTextResponse, Response
from pydantic import BaseModel
from starlette.concurrency import run_in_threadpool

from crowbar.api import body, deps
from crowbar.api.deps import Actor, Settings, UnitOfWork
from crowbar.errors import InvalidInput, NotFound
from crowbar.provisioner import ipxe, lifecycle
from crowbar.services import boot, provisioning

open_router = APIRouter(tags=["provisioning"])
admin_router = APIRouter(prefix="/api/v2", tags=["provisioning"], dependencies=[Depends(deps.actor)])


class JobResult(BaseModel):
    exit_code: int
    output: str = ""


@open_router.post("/api/v2/discovery", status_code=201)
async def discovery(request: Request, s: UnitOfWork, config: Settings):
    """The discovery agent posts its inventory; answers the node's name and its token."""
    raw = await request.body()
    inventory = body.loads(raw, what="the inventory")  # strict JSON, whatever the content type says
    # Not on the event loop: the session waits for SQLite's write lock, and a request holding it
    # may need the loop to finish, which would stall the whole server for the busy timeout (60 s).
    # (The unit of work's session is opened and committed in the threadpool too.)
    return await run_in_threadpool(provisioning.discover, s, inventory, config.domain)


@open_router.get("/api/v2/agent/next")
def agent_next(request: Request, s: UnitOfWork):
    return provisioning.agent_next(s, provisioning.node_for_token(s, deps.bearer(request)))


@open_router.post("/api/v2/agent/jobs/{job_id}")
def agent_job(job_id: str, body: JobResult, request: Request, s: UnitOfWork):
    node = provisioning.node_for_token(s, deps.bearer(request))
    return provisioning.job_result(s, node, job_id, body.exit_code, body.output)


@open_router.get("/boot/{name}", response_class=PlainTextResponse)
def boot_script(name: str, request: Request, s: UnitOfWork, config: Settings):
    """The iPXE script a machine asks for by its MAC; unknown machines get the discovery image."""
    try:
        mac = ipxe.mac_from_script_name(name)
    except ValueError:
        raise NotFound(f"no boot script {name!r}") from None
    base = config.advertise_url or str(request.base_url).rstrip("/")
    return boot.boot_script(s, mac, ipxe.BootParams(server_url=base, boot_url=f"{base}/boot"))


@open_router.get("/boot/discovery/{name}")
def boot_image(name: str, config: Settings):
    image = config.discovery_image
    files = {"vmlinuz": image.kernel, "initrd.img": image.initrd} if image else {}
    if name not in files:
        raise NotFound(f"no discovery image file {name!r}" + ("" if image else " (no image built)"))
    return FileResponse(files[name], media_type="application/octet-stream")


@admin_router.post("/nodes/{key}/allocate")
def allocate(key: str, s: UnitOfWork, who: Actor):
    return provisioning.allocate(s, key, actor=who)


@admin_router.post("/nodes/{key}/reinstall")
def reinstall(key: str, s: UnitOfWork, who: Actor):
    return provisioning.transition(s, key, lifecycle.REINSTALL, actor=who)


@admin_router.post("/nodes/{key}/reset")
def reset(key: str, s: UnitOfWork, who: Actor):
    return provisioning.transition(s, key, lifecycle.RESET, actor=who)


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

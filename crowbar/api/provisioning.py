"""Provisioning routes: discovery and the node agent (node tokens), boot files for PXE (open),
and the operator's lifecycle and power actions (admin token).

The open ones (PROVISIONING_PATHS) are what machines on the admin network use; the server can serve
them on its provisioning listener only (crowbar.api.listeners, `crowbar server --provision-only-on`).
"""

from __future__ import annotations

from fastapi import APIRouter, Depends, Request
from fastapi.responses import FileResponse, PlainTextResponse, Response
from pydantic import BaseModel
from starlette.concurrency import run_in_threadpool

from crowbar.api import deps, errors
from crowbar.api.deps import Actor, Settings, UnitOfWork
from crowbar.api.settings import AppSettings
from crowbar.errors import InvalidInput, NotFound
from crowbar.provisioner import ipxe, lifecycle
from crowbar.provisioner.discovery import MAX_INVENTORY_BYTES, NONCE_HEADER, parse_inventory, too_large
from crowbar.services import boot, provisioning

# The routes booting machines use, by path prefix: the iPXE scripts and discovery image, the
# discovery post, the agent's polls and job results.
PROVISIONING_PATHS = ("/boot/", "/api/v2/discovery", "/api/v2/agent/")

open_router = APIRouter(tags=["provisioning"])
admin_router = APIRouter(prefix="/api/v2", tags=["provisioning"], dependencies=[Depends(deps.actor)])


class JobResult(BaseModel):
    exit_code: int
    output: str = ""


DISCOVERY_ERRORS = errors.responses(
    403, 409, 413, 422, 429,
    _403="a re-find without the nonce of the node's latest discovery boot, or from another machine",
    _409="MACs of two nodes, or a node that does not boot the discovery image",
    _413=f"an inventory over {MAX_INVENTORY_BYTES // 1024} KiB",
    _422="not an inventory, or over a limit (depth, NICs, lengths)",
    _429="too many new machines; Retry-After says when to try again")


async def _body(request: Request, limit: int) -> bytes:
    """The request body, refused (413) as soon as it is longer than `limit` bytes."""
    length = request.headers.get("content-length", "")
    if length.isdigit() and int(length) > limit:
        raise too_large(int(length))
    chunks, size = [], 0
    async for chunk in request.stream():
        size += len(chunk)
        if size > limit:
            raise too_large()
        chunks.append(chunk)
    return b"".join(chunks)


def _peer(request: Request, config: AppSettings) -> boot.Peer:
    """Who sent the request, bound to the link when the server provisions (docs/security.md)."""
    address = request.client.host if request.client else None
    if config.link_address is None:
        return boot.Peer(address=address)
    return boot.Peer(address=address, checked=True, mac=config.link_address(address))


@open_router.post("/api/v2/discovery", status_code=201, responses=DISCOVERY_ERRORS)
async def discovery(request: Request, s: UnitOfWork, config: Settings):
    """The discovery agent posts its inventory (and, booted by a known node's script, its
    X-Crowbar-Nonce); answers the node's name, state and token."""
    inventory = parse_inventory(await _body(request, MAX_INVENTORY_BYTES))

    # Not on the event loop: the session waits for SQLite's write lock, and a request holding it
    # may need the loop to finish, which would stall the whole server for the busy timeout (60 s).
    # (The unit of work's session is opened and committed in the threadpool too.)
    def discover():
        return provisioning.discover(s, inventory, config.domain, nonce=request.headers.get(NONCE_HEADER),
                                     peer=_peer(request, config), approve=config.approve_discovered,
                                     limit=config.discovery_limit)

    return await run_in_threadpool(discover)


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
    return boot.boot_script(s, mac, ipxe.BootParams(server_url=base, boot_url=f"{base}/boot"),
                            _peer(request, config))


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


@admin_router.post("/nodes/{key}/approve")
def approve(key: str, s: UnitOfWork, who: Actor):
    """Accept a newly discovered machine that waits in `pending` (`crowbar server --approve-discovered`)."""
    return provisioning.approve(s, key, actor=who)


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
    return lifecycle.to_dict()

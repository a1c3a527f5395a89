"""Provisioning routes: discovery and the node agent (node tokens), boot files for PXE (open),
and the operator's lifecycle and power actions (admin token).

The open ones (PROVISIONING_PATHS) are what machines on the admin network use; the server can serve
them on its provisioning listener only (crowbar.api.listeners, `crowbar server --provision-only-on`).
"""

from __future__ import annotations

import time
from collections.abc import Callable
from datetime import datetime

from fastapi import APIRouter, Depends, Request
from fastapi.responses import FileResponse, PlainTextResponse, Response
from pydantic import BaseModel, Field

from crowbar.api import body, deps, errors, longpoll
from crowbar.api.deps import Actor, Settings, UnitOfWork
from crowbar.api.settings import AppSettings
from crowbar.errors import CrowbarError, InvalidInput, NotFound
from crowbar.provisioner import dnsmasq, ipxe, lifecycle
from crowbar.provisioner.discovery import MAX_INVENTORY_BYTES, NONCE_HEADER, parse_inventory, too_large
from crowbar.provisioner import osimage
from crowbar.services import allocation, auth, boot, install, os_images, provisioning, proxy

# The routes booting machines use, by path prefix: the iPXE scripts and discovery image, the
# discovery post, the agent's polls and job results.
PROVISIONING_PATHS = ("/boot/", "/api/v2/discovery", "/api/v2/agent/")

open_router = APIRouter(tags=["provisioning"])
admin_router = APIRouter(prefix="/api/v2", tags=["provisioning"], dependencies=[Depends(deps.actor)])


class JobResult(BaseModel):
    exit_code: int
    output: str = ""


class JobProgress(BaseModel):
    phase: str
    bytes: int = 0
    total: int = 0


class Booted(BaseModel):
    step: str
    boot_id: str = ""
    kernel: str = ""
    os: str = ""
    reason: str = ""
    host_keys: list[str] = Field(default_factory=list, max_length=8)  # its sshd's public keys


class Deploy(BaseModel):
    os: str | None = None


class DeployMany(BaseModel):
    nodes: list[str] = Field(max_length=allocation.MAX_BULK)
    os: str | None = None
    allocate: bool = Field(False, description="allocate the discovered ones first, in the same transaction")


class AllocateMany(BaseModel):
    nodes: list[str] = Field(max_length=allocation.MAX_BULK)


class Release(BaseModel):
    erase: str | None = "quick"


def _install_context(config: AppSettings) -> install.Context:
    proxies = config.proxies
    return install.Context(images=config.os_images, public_key=config.ssh_public_key,
                           private_key=config.ssh_private_key,
                           apt_proxy=proxy.apt_proxy_url(proxies) if proxies else None,
                           pip_index=proxy.pip_index_url(proxies) if proxies else None)


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
async def discovery(request: Request, config: Settings):
    """The discovery agent posts its inventory (and, booted by a known node's script, its
    X-Crowbar-Nonce); answers the node's name, state and token."""
    raw = await _body(request, MAX_INVENTORY_BYTES)
    # Not on the event loop: the unit of work waits for SQLite's write lock, and a request holding
    # it may need the loop to finish, which would stall the whole server for the busy timeout (60
    # s). The posts that arrive together are parsed and written in one unit of work, in a worker
    # thread among the agents' bounded writers, committed before any is answered (groupcommit).
    return await request.app.state.discoveries.submit((raw, request.headers.get(NONCE_HEADER), _peer(request, config)))


def discover_together(config: AppSettings, posts: list[tuple[bytes, str | None, boot.Peer]]) -> list:
    """Discovery posts (body, nonce, peer) that arrived together, in one unit of work
    (`provisioning.discover_many`): each post's answer, or its error. Should the unit itself fail
    (its commit lost a race with another server), each post is written alone, as it would have
    been without company."""
    answers: list = [None] * len(posts)
    parsed: list[tuple[int, tuple]] = []
    for i, (raw, nonce, peer) in enumerate(posts):
        try:
            parsed.append((i, (parse_inventory(raw), nonce, peer)))
        except CrowbarError as exc:
            answers[i] = exc
    if not parsed:
        return answers
    options = {"approve": config.approve_discovered, "limit": config.discovery_limit}
    try:
        with deps.unit(config) as s:
            got = provisioning.discover_many(s, [post for _, post in parsed], config.domain, **options)
    except Exception:  # noqa: BLE001 - each post alone, below: its own error is its answer
        if len(parsed) == 1:
            raise
        got = []
        for _, (inventory, nonce, peer) in parsed:
            try:
                with deps.unit(config) as s:
                    got.append(provisioning.discover(s, inventory, config.domain, nonce=nonce, peer=peer, **options))
            except Exception as exc:  # noqa: BLE001 - answered to its request
                got.append(exc)
    for (i, _), answer in zip(parsed, got):
        answers[i] = answer
    return answers


def _read(config: AppSettings, token: str | None, wait: float) -> tuple[dict | None, int, float, datetime | None]:
    """One look at the node's work (in a worker thread): the answer (None: there is work to take,
    which writes), the node's id, how long a long poll that asked to `wait` should be held (0:
    answer now), and the token's expiry."""
    with config.db.read_session() as s:
        node_id, answer, expires_at = provisioning.agent_poll(s, token)
        hold = provisioning.hold_seconds(wait, provisioning.polling_agents(s)) if answer is not None else 0.0
    return answer, node_id, hold, expires_at


async def _poll(request: Request, config: AppSettings, token: str | None,
                wait: float) -> tuple[dict, int, float, datetime | None]:
    """The poll's read, among the bounded readers (`AgentWaiters.read`); then, only when there is
    work to take, a write among the agents' other writes (`write_together`, among the bounded
    writers: it may queue for SQLite's write lock, and must not hold a reader's place meanwhile)."""
    answer, node_id, hold, expires_at = await request.app.state.agent_waiters.read(_read, config, token, wait)
    if answer is None:
        answer = await request.app.state.agent_writes.submit((token, provisioning.agent_next))
    return answer, node_id, hold, expires_at


@open_router.get("/api/v2/agent/next", responses={200: {"headers": {
        "Preference-Applied": {"description": "`wait=N`: the poll was held up to N seconds", "schema": {"type": "string"}},
        "Server-Timing": {"description": "`hold;dur=MS, late;dur=MS`: how long it was held, and how long "
                          "of that past the end of the hold the server chose (its own delay)",
                          "schema": {"type": "string"}}}}})
async def agent_next(request: Request, config: Settings):
    """The agent's poll. Most polls only read (wait, for the `seconds` the server chooses: longer
    in a larger fleet): they are answered without a write transaction; a poll that takes a job or
    an action, or revives a dead node, is answered in a unit of work that writes.

    Long poll: with `Prefer: wait=N` an idle agent's poll is held (up to N seconds, as long as
    the server chooses: docs/scaling.md) and answered as soon as a job or an action is queued for
    its node, holding no thread or database session meanwhile; at the end of the hold it answers
    a wait of 0 seconds (ask again now). Without the header, or when the server holds as many
    polls as it will (`AppSettings.agent_waiters`), it answers at once, as it always did."""
    token = deps.bearer(request)
    wait = longpoll.requested_wait(request.headers.get("prefer"))
    waiters: longpoll.AgentWaiters = request.app.state.agent_waiters
    started = since = time.monotonic()
    digest = auth.digest_of(token) if wait else None
    quiet = waiters.take_quiet(digest)
    if quiet is not None:  # straight back from a quiet hold: wait from that read (module longpoll)
        node_id, since = quiet
        agents = provisioning.polling_agents_known()
        answer = {"action": "wait", "seconds": provisioning.wait_seconds(agents)}
        hold, expires_at = provisioning.hold_seconds(wait, agents), None
    else:
        answer, node_id, hold, expires_at = await _poll(request, config, token, wait)
    if not hold or answer.get("action") != "wait":
        return answer
    deadline = started + hold
    while True:
        woke = await waiters.wait(node_id, deadline - time.monotonic(), since)
        if woke is None:  # no room to wait, or the server is stopping: the answer as it is
            return answer
        if woke is False:  # the hold is over: ask again now
            if quiet is None and digest is not None:
                waiters.remember_quiet(digest, node_id, since, expires_at)
            answer = {"action": "wait", "seconds": 0}
            break
        # work for this node: take it, straight among the agents' writes (no read first: the
        # notification said there is work, and the write answers a wait should there be none)
        since = time.monotonic()
        answer = await request.app.state.agent_writes.submit((token, provisioning.agent_next))
        quiet = None
        if answer.get("action") != "wait" or since >= deadline:
            break
    now = time.monotonic()
    held, late = now - started, max(0.0, now - deadline)
    timing = f"hold;dur={held * 1000:.1f}, late;dur={late * 1000:.1f}"
    return body.JSONResponse(answer, headers={"Preference-Applied": f"wait={round(hold)}", "Server-Timing": timing})


async def _as_node(request: Request, config: AppSettings, work):
    """An agent's request that writes: `work(session, node)` for the node its token names, in a
    unit of work committed before the answer, shared with the agents' writes that arrive together
    (`write_together`, api/groupcommit.py), in one trip to a worker thread among the bounded
    writers (a `def` route with a UnitOfWork would take three trips to the default threadpool: the
    unit's start, the route, the unit's end)."""
    return await request.app.state.agent_writes.submit((deps.bearer(request), work))


def write_together(config: AppSettings, items: list[tuple[str | None, Callable]]) -> list:
    """Agents' writes (token, work) that arrived together, in one unit of work
    (`provisioning.agents_write`: each its own answer or error). Should the unit itself fail,
    each is written alone, as it would have been without company."""
    try:
        with deps.unit(config) as s:
            return provisioning.agents_write(s, items)
    except Exception:
        if len(items) == 1:
            raise  # its own error, for its request (GroupCommit)
        answers = []
        for item in items:
            try:
                answers.extend(write_together(config, [item]))
            except Exception as exc:  # noqa: BLE001 - answered to its request
                answers.append(exc)
        return answers


@open_router.post("/api/v2/agent/jobs/{job_id}", responses={200: {"headers": {
        "Preference-Applied": {"description": "`next-action`: the answer is the agent's next instruction, as "
                               "GET /api/v2/agent/next answers it (never held)", "schema": {"type": "string"}}}}})
async def agent_job(job_id: str, result: JobResult, request: Request, config: Settings):
    """A job's result. With `Prefer: next-action` the answer is the agent's next instruction (a
    reboot, the next job, or a wait of 0 seconds: poll now), which saves the agent a poll."""
    then = longpoll.NEXT_ACTION in longpoll.preferences(request.headers.get("prefer"))
    answer = await _as_node(request, config, lambda s, node: provisioning.job_result(
        s, node, job_id, result.exit_code, result.output, then=then))
    if not then:
        return answer
    return body.JSONResponse(answer, headers={"Preference-Applied": longpoll.NEXT_ACTION})


@open_router.post("/api/v2/agent/progress/{job_id}")
async def agent_progress(job_id: str, body: JobProgress, request: Request, config: Settings):
    """An install job's phase and bytes written (the installer's script posts them)."""
    return await _as_node(request, config,
                          lambda s, node: install.progress(s, node, job_id, body.phase, body.bytes, body.total))


@open_router.post("/api/v2/agent/booted")
async def agent_booted(body: Booted, request: Request, config: Settings):
    """The installed system calls home at boot: booted, ready, or failed (with a reason)."""
    facts = {"boot_id": body.boot_id, "kernel": body.kernel, "os": body.os, "reason": body.reason}
    ctx = _install_context(config)
    return await _as_node(request, config,
                          lambda s, node: install.booted(s, node, body.step, facts, ctx, host_keys=body.host_keys))


@open_router.get("/boot/os/{name}/{digest}/{file}")
def os_image_file(name: str, digest: str, file: str, config: Settings):
    """An OS image (Range requests supported) or its manifest; SHA256SUMS lists the image's checksum."""
    store = config.os_images
    image = next((i for i in (osimage.built(store, name) if store and osimage.NAME_RE.match(name) else [])
                  if i.name == name and i.digest == digest), None)
    if image is None:
        raise NotFound(f"no image {name}/{digest}")
    if file == image.path.name:
        return FileResponse(image.path, media_type="application/octet-stream")
    if file == osimage.MANIFEST:
        return FileResponse(image.path.parent / osimage.MANIFEST, media_type="application/json")
    if file == "SHA256SUMS":
        return PlainTextResponse(f"{image.manifest['sha256']}  {image.path.name}\n")
    raise NotFound(f"no file {file!r} in image {name}/{digest}")


@open_router.get("/boot/{name}", response_class=PlainTextResponse)
def boot_script(name: str, request: Request, config: Settings):
    """The iPXE script a machine asks for by its MAC; unknown machines get the discovery image.
    Read without a write transaction, unless the script carries a new nonce (a known node's
    discovery boot): every machine of a rack powered on at once asks for one."""
    try:
        mac = ipxe.mac_from_script_name(name)
    except ValueError:
        raise NotFound(f"no boot script {name!r}") from None
    base = config.advertise_url or str(request.base_url).rstrip("/")
    params, peer = ipxe.BootParams(server_url=base, boot_url=f"{base}/boot"), _peer(request, config)
    with config.db.read_session() as s:
        script = boot.boot_script(s, mac, params, peer, read_only=True)
    if script is not None:
        return script
    with deps.unit(config) as s:
        return boot.boot_script(s, mac, params, peer)


@open_router.get(f"/boot/{dnsmasq.IPXE_HTTP_DIR}/{{name}}")
def ipxe_binary(name: str):
    """iPXE's UEFI binary, for firmware that boots by UEFI HTTP boot (dnsmasq gives DHCP clients of
    architecture 16 this URL); PXE firmware gets the same file over TFTP."""
    path = dnsmasq.IPXE_DIR / name
    if name != dnsmasq.UEFI_BOOT_FILE or not path.is_file():
        raise NotFound(f"no iPXE file {name!r}" + ("" if path.parent.is_dir() else " (Debian's ipxe package is missing)"))
    return FileResponse(path, media_type="application/efi")


# HEAD too: the firmware asks for the size first, and OVMF gives up on a 405. Not in the API's
# schema: a HEAD answer has no body, so not the one error body either.
open_router.add_api_route(f"/boot/{dnsmasq.IPXE_HTTP_DIR}/{{name}}", ipxe_binary, methods=["HEAD"],
                          include_in_schema=False)


@open_router.get("/boot/discovery/{name}")
def boot_image(name: str, config: Settings):
    image = config.discovery_image
    files = {"vmlinuz": image.kernel, "initrd.img": image.initrd} if image else {}
    if name not in files:
        raise NotFound(f"no discovery image file {name!r}" + ("" if image else " (no image built)"))
    return FileResponse(files[name], media_type="application/octet-stream")


@admin_router.post("/nodes/allocate")
def allocate_many(body: AllocateMany, s: UnitOfWork, who: Actor):
    """Allocate several discovered nodes at once: all of them, or none (one transaction)."""
    return {"items": allocation.allocate_many(s, body.nodes, actor=who)}


@admin_router.post("/nodes/{key}/allocate")
def allocate(key: str, s: UnitOfWork, who: Actor):
    return allocation.allocate(s, key, actor=who)


@admin_router.post("/nodes/{key}/approve")
def approve(key: str, s: UnitOfWork, who: Actor):
    """Accept a newly discovered machine that waits in `pending` (`crowbar server --approve-discovered`)."""
    return provisioning.approve(s, key, actor=who)


@admin_router.post("/nodes/{key}/deploy")
def deploy(key: str, s: UnitOfWork, who: Actor, config: Settings, body: Deploy | None = None):
    """Install an OS (`os`, default the node's or debian-12) on an allocated node."""
    return install.deploy(s, [key], (body or Deploy()).os, _install_context(config), actor=who)[0]


@admin_router.post("/nodes/deploy")
def deploy_many(body: DeployMany, s: UnitOfWork, who: Actor, config: Settings):
    """Deploy several allocated nodes at once: all of them, or none (one transaction). With
    `allocate`, discovered nodes among them are allocated first, in the same transaction."""
    return {"items": install.deploy(s, body.nodes, body.os, _install_context(config), actor=who,
                                    allocate=body.allocate)}


@admin_router.post("/nodes/{key}/reinstall")
def reinstall(key: str, s: UnitOfWork, who: Actor, config: Settings, body: Deploy | None = None):
    """Install the node's OS (or `os`) again: a fresh root filesystem."""
    return install.reinstall(s, key, (body or Deploy()).os, _install_context(config), actor=who)


@admin_router.post("/nodes/{key}/release")
def release(key: str, s: UnitOfWork, who: Actor, body: Release | None = None):
    """Back to the pool (discovered): disks erased (`erase`: quick or full; null for an allocated
    node that was never installed), admin address released."""
    return install.release(s, key, (body or Release()).erase, actor=who)


@admin_router.get("/os_images")
def list_os_images(s: UnitOfWork, config: Settings):
    """The OS catalog: what can be built, what is built, which nodes run what (one page: few)."""
    return os_images.catalog(s, config.os_images)


@admin_router.get("/os_images/{name}")
def show_os_image(name: str, s: UnitOfWork, config: Settings):
    return os_images.show(s, config.os_images, name)


@admin_router.delete("/os_images/{name}")
def delete_os_image(name: str, s: UnitOfWork, config: Settings):
    """Delete an OS's built images; refused (409) while a node is being installed with it."""
    return os_images.delete(s, config.os_images, name)


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

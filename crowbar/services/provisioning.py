"""Provisioning: discovery of booting machines, their agents, and the node lifecycle (a move that
needs the machine to boot again reboots it through its agent, or queues a power cycle).

Discovery is the only unauthenticated write in the API (docs/security.md). It creates a node for
a machine none of whose MACs is known, or re-finds the one node that owns them, and answers a
fresh per-node token (stored hashed, the previous one revoked) that authenticates everything the
agent does later. A re-find must prove the boot: the one-time nonce the server put in that node's
discovery boot script (crowbar.services.boot). Refused, it changes nothing: no token revoked, no
MAC moved, no state changed. MACs are never taken from another node; nodes are created no faster
than the server's token bucket allows; with approval on, a new node waits in `pending`.
"""

from __future__ import annotations

import hmac
import logging
import random
import secrets
import threading
import time
from collections.abc import Callable
from datetime import datetime, timezone

from sqlalchemy import and_, delete, exists, func, or_, select, union_all, update
from sqlalchemy.orm import Session

from crowbar.config import DEFAULT_DOMAIN
from crowbar.db.events import batched, record, savepoint
from crowbar.db.models import AgentJob, ApiToken, Node, NodeMac, utcnow
from crowbar.db.session import signal_work
from crowbar.db.sql import chunks
from crowbar.errors import Conflict, CrowbarError, Forbidden, InvalidInput, NotFound, RateLimited, Unauthorized
from crowbar.network.mac import normalize_mac as _normalize_mac
from crowbar.provisioner import lifecycle
from crowbar.provisioner.discovery import NONCE_HEADER, TokenBucket, check_inventory
from crowbar.services import auth, install, lookup, nodes, os_rules, power
from crowbar.services.nodes import agent_driven, set_state
from crowbar.services.boot import UNCHECKED, Peer, hash_nonce

WAIT_SECONDS = 3  # between an idle agent's polls, in a small fleet
POLL_BUDGET = 200  # agent polls per second the server aims at: a larger fleet is told to wait longer
MAX_WAIT_SECONDS = 60
HOLD_SECONDS = 25  # the least a long poll is held: it answers as soon as there is work anyway
FLEET_RECOUNT = 10.0  # seconds between counts of the agents that poll
log = logging.getLogger("crowbar.discovery")


def normalize_mac(value) -> str:
    try:
        return _normalize_mac(value)
    except ValueError as exc:
        raise InvalidInput(str(exc), field="mac") from None


def discovered_name(mac: str, domain: str) -> str:
    return f"d{mac.replace(':', '-')}.{domain}"


def _inventory_macs(inventory: dict) -> tuple[str, list[str]]:
    check_inventory(inventory)
    nics = inventory.get("nics")
    if not isinstance(nics, list) or not nics:
        raise InvalidInput("the inventory needs a non-empty list of nics", field="nics")
    macs = []
    for i, nic in enumerate(nics):
        if not isinstance(nic, dict):
            raise InvalidInput(f"nics[{i}] must be an object", field="nics")
        try:
            macs.append(normalize_mac(nic.get("mac")))
        except InvalidInput:
            raise InvalidInput(f"nics[{i}].mac {str(nic.get('mac'))[:40]!r} is not a MAC address",
                               field="nics") from None
    boot = normalize_mac(inventory["boot_mac"]) if inventory.get("boot_mac") else macs[0]
    if boot not in macs:
        macs.insert(0, boot)
    return boot, list(dict.fromkeys(macs))


def _issue_node_token(session: Session, node: Node, fresh: bool = False) -> str:
    """A new token for the node's agent; the node's earlier ones are revoked (a `fresh` node has none)."""
    if not fresh:
        session.execute(delete(ApiToken).where(ApiToken.node_id == node.id))
    token = auth.new_token()
    session.add(ApiToken(name=f"node-{node.id}-{secrets.token_hex(4)}", kind="node", node_id=node.id,
                         token_hash=auth.hash_token(token)))
    return token


def discover(session: Session, inventory: dict, domain: str = DEFAULT_DOMAIN, *, nonce: str | None = None,
             peer: Peer = UNCHECKED, approve: bool = False, limit: TokenBucket | None = None,
             now: datetime | None = None) -> dict:
    """Create the node that posted this inventory, or re-find the one node that owns its MACs.

    Refused, with nothing written: MACs of two nodes (409); a node that does not boot the discovery
    image (409); a re-find without the nonce of the node's latest discovery boot, or with a wrong
    or expired one (403); a request that the server knows does not come from one of the machine's
    own NICs (403, `peer`); a new node over the rate `limit` (429). `approve`: new nodes wait for
    the operator in `pending`, unavailable.

    The hottest write a fleet makes (one per machine per discovery boot): its events are written
    in one statement, a new node is inserted with its state, inventory and boot MAC at once, and
    what a new node cannot have yet (MACs, tokens, tags) is not deleted first.
    """
    boot, macs = _checked_macs(inventory, peer)
    owners = _owners(session, macs)
    if len(owners) > 1:
        held = "; ".join(f"{name}: {', '.join(owned)}" for name, owned in sorted(owners.values()))
        raise Conflict(f"the inventory's MACs belong to {len(owners)} different nodes ({held}): discovery never "
                       "moves a MAC from one node to another; delete the node that should no longer have it")
    if not owners:
        name = discovered_name(boot, domain)
        if session.scalar(select(Node.id).where(Node.name == name)) is not None:
            raise Conflict(f"node {name!r} already exists", field="name")
        _take_new(limit)
        return _create_discovered(session, [(inventory, boot, macs)], domain, approve)[0]
    inventory = _as_stored(inventory, boot)
    with batched(session):
        node = session.get(Node, next(iter(owners)))
        if lifecycle.bootenv_for(node.state) != lifecycle.DISCOVERY:
            raise Conflict(f"node {node.name!r} is {node.state}: it boots {node.bootenv}, not the discovery "
                           "image; reset it (`crowbar nodes reset`) to rediscover it")
        _consume_nonce(session, node, nonce, peer, now or datetime.now(timezone.utc))
        install.refound(session, node)
        if node.state in (lifecycle.DISCOVERING, lifecycle.RESET):
            set_state(session, node, lifecycle.DISCOVERED, f"inventory posted by {boot}", "discovery")
        node.discovery, node.alive, node.agent_action = inventory, True, None
        if node.boot_mac != boot:
            node.boot_mac = boot
        # Every MAC is this node's or nobody's (checked above): the node's set becomes the inventory's.
        session.execute(delete(NodeMac).where(NodeMac.node_id == node.id))
        session.execute(NodeMac.__table__.insert(), [{"mac": m, "node_id": node.id} for m in macs])
        token = _issue_node_token(session, node)
        session.flush()
    os_rules.refresh_tags(session, [node])  # rules over the inventory: tags follow what it posted
    signal_work(session, "anneal")
    return {"node": node.name, "token": token, "created": False, "id": node.id, "state": node.state}


def discover_many(session: Session, posts: list[tuple[dict, str | None, Peer]], domain: str = DEFAULT_DOMAIN, *,
                  approve: bool = False, limit: TokenBucket | None = None,
                  now: datetime | None = None) -> list[dict | CrowbarError]:
    """Several machines' discovery posts (inventory, nonce, peer) in one unit of work: for each,
    in order, what `discover` would answer, or the error it would raise (its post's own: one
    refused post refuses no other).

    The machines none of whose MACs (nor names) is known, and shared with no other post here, are
    created together (`_create_discovered`: one INSERT of nodes, of MACs, of tokens, of events,
    one bind of the discovery roles); every other post (a re-find, a MAC that is a node's, a MAC
    two posts share) then goes through `discover` alone, in a savepoint, so that a refusal writes
    nothing. The rate limit is taken per new machine, as `discover` takes it. Used by the API for
    the posts that arrive together (crowbar.api.groupcommit)."""
    results: list = [None] * len(posts)
    checked: dict[int, tuple[str, list[str]]] = {}
    for i, (inventory, _nonce, peer) in enumerate(posts):
        try:
            checked[i] = _checked_macs(inventory, peer)
        except CrowbarError as exc:
            results[i] = exc
    owners = _owners(session, [m for _b, ms in checked.values() for m in ms]) if checked else {}
    owned = {mac for _name, macs in owners.values() for mac in macs}
    names = {i: discovered_name(boot, domain) for i, (boot, _macs) in checked.items()}
    taken: dict[str, int] = {}
    for part in chunks(sorted(set(names.values()))):
        taken.update((name, node_id) for node_id, name in session.execute(select(Node.id, Node.name)
                                                                             .where(Node.name.in_(part))))
    fresh, alone, seen = [], [], set()
    for i, (boot, macs) in checked.items():
        if owned.isdisjoint(macs) and seen.isdisjoint(macs) and names[i] not in taken:
            try:
                _take_new(limit)
                fresh.append(i)
            except RateLimited as exc:
                results[i] = exc
        else:
            alone.append(i)
        seen.update(macs)
        taken.setdefault(names[i], 0)  # claimed by a post of this batch (no node of that name yet)
    if fresh:
        made = _create_discovered(session, [(posts[i][0], *checked[i]) for i in fresh], domain, approve)
        for i, answer in zip(fresh, made):
            results[i] = answer
    if alone:  # the nodes they may write, locked in the order of their ids first (lookup.lock_nodes)
        lookup.lock_nodes(session, [*owners, *(node_id for node_id in taken.values() if node_id)])
    for i in alone:
        inventory, nonce, peer = posts[i]
        try:
            with session.begin_nested():
                results[i] = discover(session, inventory, domain, nonce=nonce, peer=peer, approve=approve,
                                      limit=limit, now=now)
        except CrowbarError as exc:
            results[i] = exc
    return results


def _checked_macs(inventory: dict, peer: Peer) -> tuple[str, list[str]]:
    """The inventory's boot MAC and MACs, from a machine that may be the one that posted them."""
    boot, macs = _inventory_macs(inventory)
    if not peer.may_be(macs):
        log.warning("refused discovery of %s from %s: not one of its NICs", ", ".join(macs[:4]), peer.describe())
        raise Forbidden(f"this inventory was posted from {peer.describe()}, which is none of its NICs: "
                        "discovery must come from the machine itself, on the provisioning network")
    return boot, macs


def _as_stored(inventory: dict, boot: str) -> dict:
    """The inventory as a node keeps it: its boot MAC, and the DMI product as `product_name`."""
    inventory = dict(inventory, boot_mac=boot)
    dmi = inventory.get("dmi") if isinstance(inventory.get("dmi"), dict) else {}
    if dmi.get("product") and "product_name" not in inventory:
        inventory["product_name"] = dmi["product"]  # what conduit bus_order patterns match on
    return inventory


def _take_new(limit: TokenBucket | None) -> None:
    """One new machine off the rate limit, or RateLimited (429) saying when to try again."""
    wait = limit.take() if limit is not None else 0.0
    if wait:
        raise RateLimited(f"too many new machines: discovery creates at most {limit.rate:g} nodes per second "
                          f"(bursts of {limit.burst}); try again in {wait:.0f} s", retry_after=wait)


def register(session: Session, macs: list, name: str | None = None, domain: str = DEFAULT_DOMAIN,
             actor: str = "system") -> dict:
    """An operator registers a machine by its MACs before it boots (the first is its boot MAC): a
    node in `discovering`, not alive, booting the discovery image. When the machine PXE-boots,
    its boot script and discovery find this node by MAC (as a re-found node) and it moves on to
    discovered. Refused (409) when a MAC is another node's; the name defaults to the one discovery
    would give it."""
    if not isinstance(macs, list) or not macs:
        raise InvalidInput("give the machine's MACs (the first is the one it boots from)", field="macs")
    macs = list(dict.fromkeys(normalize_mac(m) for m in macs))
    owners = _owners(session, macs)
    if owners:
        held = "; ".join(f"{owner}: {', '.join(owned)}" for owner, owned in sorted(owners.values()))
        raise Conflict(f"these MACs already belong to a node ({held})", field="macs")
    boot = macs[0]
    info = nodes.create_node(session, name or discovered_name(boot, domain), alive=False, actor=actor)
    node = session.get(Node, info["id"])
    node.boot_mac, node.bootenv = boot, lifecycle.DISCOVERY
    node.state, node.state_changed_at = lifecycle.DISCOVERING, utcnow()
    node.state_reason = f"registered by {actor}: waits for the machine to PXE-boot from {boot}"
    record(session, [{"object_type": "node", "object_id": node.id, "action": "lifecycle", "actor": actor,
                      "to_state": lifecycle.DISCOVERING, "message": f"registered by MAC {', '.join(macs)}"}])
    session.execute(NodeMac.__table__.insert(), [{"mac": m, "node_id": node.id} for m in macs])
    session.flush()
    return nodes.node_dict(node, full=True)


def _owners(session: Session, macs: list[str]) -> dict[int, tuple[str, list[str]]]:
    """The nodes that own any of `macs` (as a node MAC or a boot MAC): id -> (name, their MACs)."""
    owned: dict[int, tuple[str, list[str]]] = {}
    rows = session.execute(union_all(
        select(Node.id, Node.name, NodeMac.mac).join(NodeMac, NodeMac.node_id == Node.id).where(NodeMac.mac.in_(macs)),
        select(Node.id, Node.name, Node.boot_mac).where(Node.boot_mac.in_(macs)))).all()
    for node_id, name, mac in rows:
        entry = owned.setdefault(node_id, (name, []))
        if mac not in entry[1]:
            entry[1].append(mac)
    return owned


def _create_discovered(session: Session, found: list[tuple[dict, str, list[str]]], domain: str,
                       approve: bool) -> list[dict]:
    """New nodes for machines none of whose MACs or names is known (inventory, boot MAC, MACs):
    each with its state, inventory and boot MAC in the nodes' one INSERT, its MACs, a token, its
    events and tags; answers what `discover` answers for each."""
    state = lifecycle.PENDING if approve else lifecycle.DISCOVERED
    at = utcnow()
    with batched(session):
        made = nodes.add_nodes(session, [
            {"name": discovered_name(boot, domain), "available": not approve, "state": state, "state_changed_at": at,
             "bootenv": lifecycle.DISCOVERY, "discovery": _as_stored(inventory, boot), "boot_mac": boot}
            for inventory, boot, _macs in found], actor="discovery")
        record(session, [{"object_type": "node", "object_id": node.id, "action": "lifecycle", "actor": "discovery",
                          "to_state": state, "message": f"discovered by {boot}"
                          + (": waits for the operator's approval" if approve else "")}
                         for node, (_inventory, boot, _macs) in zip(made, found)])
        session.execute(NodeMac.__table__.insert(), [{"mac": m, "node_id": node.id}
                                                      for node, (_i, _b, macs) in zip(made, found) for m in macs])
        tokens = [_issue_node_token(session, node, fresh=True) for node in made]
        session.flush()
    os_rules.refresh_tags(session, made, fresh=True)  # rules over the inventory: tags follow what it posted
    signal_work(session, "anneal")
    return [{"node": node.name, "token": token, "created": True, "id": node.id, "state": node.state}
            for node, token in zip(made, tokens)]


def _consume_nonce(session: Session, node: Node, nonce: str | None, peer: Peer, now: datetime) -> None:
    """Accept the re-find of `node` only with the nonce of its latest discovery boot; spend it."""
    problem = None
    if not nonce:
        problem = (f"no nonce: re-finding an existing node needs the {NONCE_HEADER} its discovery boot script "
                   "put on the kernel command line (crowbar.nonce=)")
    elif node.boot_nonce_hash is None:
        problem = "no discovery boot of this node is waiting to be proven (its nonce was used, or none was served)"
    elif not hmac.compare_digest(node.boot_nonce_hash, hash_nonce(nonce)):
        problem = "the nonce is not the one of this node's latest discovery boot"
    else:
        expires = node.boot_nonce_expires_at
        if expires is not None and expires.tzinfo is None:
            expires = expires.replace(tzinfo=timezone.utc)
        if expires is None or expires < now:
            problem = "the nonce of this node's discovery boot has expired"
    if problem is None:  # spent here, by a conditional update: of two posts racing with one nonce, one wins
        spent = session.execute(update(Node).where(Node.id == node.id, Node.boot_nonce_hash == hash_nonce(nonce))
                                .values(boot_nonce_hash=None, boot_nonce_expires_at=None))
        if spent.rowcount != 1:
            problem = "the nonce was used by another post at the same moment"
    if problem:
        log.warning("refused to re-find node %s from %s: %s", node.name, peer.describe(), problem)
        raise Forbidden(f"node {node.name!r} exists: {problem}. Rebooting the machine serves it a new one.",
                        field="nonce")


def approve(session: Session, key, actor: str = "system") -> dict:
    """Accept a machine that waits in `pending`: it becomes discovered and available."""
    node = lookup.node(session, key)
    set_state(session, node, lifecycle.DISCOVERED, "approved by the operator", actor)
    if not node.available:
        record(session, [{"object_type": "node", "object_id": node.id, "action": "set-available",
                          "actor": actor, "from_state": "false", "to_state": "true"}])
        node.available = True
    session.flush()
    signal_work(session, "anneal")  # its discovery roles may run now
    return nodes.node_dict(node, full=True)


def node_for_token(session: Session, token: str | None) -> Node:
    """The node a node token names (the token and its node read in one query), else Unauthorized."""
    found = nodes_for_tokens(session, [token])[0]
    if isinstance(found, Unauthorized):
        raise found
    return found


def agents_write(session: Session, items: list[tuple[str | None, Callable[[Session, Node], object]]]) -> list:
    """Agents' writes that arrived together, (token, work) each, in this one unit of work: what
    each `work(session, node)` answered for the node its token names, or its error (Unauthorized
    for a token that names none). The tokens' nodes are read in one query, their rows locked in
    the order of their ids (`lookup.lock_nodes`: no deadlock with a bulk call, which locks them the
    same way), then each work runs in that order, in a savepoint of its own when there are several
    (a refused one, whose error is its answer, undoes only its own changes and events); the
    events of all of them are written together, in one insert at the end."""
    answers: list = nodes_for_tokens(session, [token for token, _ in items])
    found = {i: node for i, node in enumerate(answers) if not isinstance(node, CrowbarError)}
    lookup.lock_nodes(session, [node.id for node in found.values()])
    with batched(session):
        for i in sorted(found, key=lambda i: found[i].id):
            work = items[i][1]
            answers[i] = work(session, found[i]) if len(items) == 1 else _alone(session, work, found[i])
    return answers


def _alone(session: Session, work: Callable[[Session, Node], object], node: Node):
    try:
        with savepoint(session):
            return work(session, node)
    except CrowbarError as exc:
        return exc


def nodes_for_tokens(session: Session, tokens: list[str | None]) -> list[Node | Unauthorized]:
    """The node each node token names, or Unauthorized for one that names none, the tokens and
    their nodes read in one query a chunk (the agents' writes gathered in one unit of work)."""
    digests = [auth.digest_of(token) for token in tokens]
    rows = {}
    for part in chunks(sorted({d for d in digests if d is not None})):
        rows.update((row.token_hash, row) for row in session.execute(
            select(ApiToken.token_hash, ApiToken.expires_at, ApiToken.kind, Node)
            .join(Node, Node.id == ApiToken.node_id).where(ApiToken.token_hash.in_(part))))
    found: list[Node | Unauthorized] = []
    for digest in digests:
        row = rows.get(digest) if digest is not None else None
        if row is None or row.kind != "node" or not auth.still_valid(row.token_hash, row.expires_at, digest):
            found.append(Unauthorized("a valid node token is required"))
        else:
            found.append(row.Node)
    return found


_agents = {"count": 0, "at": float("-inf")}
_agents_lock = threading.Lock()


def polling_agents(session: Session) -> int:
    """How many discovery agents poll this server (alive nodes in the discovery image), counted at
    most every FLEET_RECOUNT seconds per process."""
    now = time.monotonic()
    if now - _agents["at"] < FLEET_RECOUNT:
        return _agents["count"]
    count = session.scalar(select(func.count()).select_from(Node)
                           .where(Node.alive.is_(True), Node.bootenv == lifecycle.DISCOVERY)) or 0
    with _agents_lock:
        _agents.update(count=count, at=now)
    return count


def polling_agents_known() -> int:
    """The last count of `polling_agents`, without asking the database (0 before the first)."""
    return _agents["count"]


def wait_seconds(agents: int, rng: random.Random | None = None) -> int:
    """The `seconds` of a wait answer: WAIT_SECONDS, or longer when `agents` polling that often would
    exceed POLL_BUDGET polls per second (at most MAX_WAIT_SECONDS), jittered by up to a quarter so
    that a rack powered on at once does not poll in lockstep. Whole seconds: the agent's `sleep`."""
    base = min(MAX_WAIT_SECONDS, max(WAIT_SECONDS, agents / POLL_BUDGET))
    return max(1, round(base * (rng or random).uniform(0.75, 1.25)))


def hold_seconds(requested: float, agents: int, rng: random.Random | None = None) -> float:
    """How long the server holds an idle agent's long poll that asked to wait up to `requested`
    seconds (crowbar.api.longpoll): as long as the poll budget would have it wait between polls
    (`wait_seconds`), at least HOLD_SECONDS, at most MAX_WAIT_SECONDS and `requested`, less up to
    a quarter at random (so that agents whose holds end together do not ask again in lockstep).
    0: no long poll."""
    if requested <= 0:
        return 0.0
    base = min(float(requested), MAX_WAIT_SECONDS, max(HOLD_SECONDS, agents / POLL_BUDGET))
    return base * (rng or random).uniform(0.75, 1.0)


def agent_poll(session: Session, token: str | None) -> tuple[int, dict | None, datetime | None]:
    """An agent's poll, read in one query without a write transaction: the id of the node its
    token names (Unauthorized otherwise), the answer when the poll changes nothing (wait, for
    a server-chosen time), None when it has something to write (the node was dead, an action or
    a job waits: then `agent_next` answers it in a unit of work that writes), and the token's expiry."""
    digest = auth.digest_of(token)
    queued = exists().where(AgentJob.node_id == Node.id, AgentJob.state == "queued")
    row = None if digest is None else session.execute(
        select(ApiToken.token_hash, ApiToken.expires_at, ApiToken.kind, Node.id, Node.alive, Node.agent_action,
               queued.label("queued"))
        .join(Node, Node.id == ApiToken.node_id).where(ApiToken.token_hash == digest)).first()
    if row is None or row.kind != "node" or not auth.still_valid(row.token_hash, row.expires_at, digest):
        raise Unauthorized("a valid node token is required")
    if not row.alive or row.agent_action or row.queued:
        return row.id, None, row.expires_at
    return row.id, {"action": "wait", "seconds": wait_seconds(polling_agents(session))}, row.expires_at


def agent_next(session: Session, node: Node) -> dict:
    """What the node's agent should do now: a pending power action, the next job, or wait. Its
    events are written last, so that the node's changes go out in one UPDATE (as in every agent
    request that writes: `job_result`, `install.progress`, `install.booted`)."""
    with batched(session):
        return _agent_next(session, node)


def _agent_next(session: Session, node: Node) -> dict:
    return _take_work(session, node) or {"action": "wait", "seconds": wait_seconds(polling_agents(session))}


def _take_work(session: Session, node: Node) -> dict | None:
    """The node's pending action or its next queued job, taken (the node is alive); None when
    there is neither."""
    node.alive = True
    if node.agent_action:
        action, node.agent_action = node.agent_action, None
        record(session, [{"object_type": "node", "object_id": node.id, "action": f"agent-{action}",
                                "actor": "agent", "message": f"{action} sent to the agent"}])
        return {"action": action}
    job = session.scalar(select(AgentJob).where(AgentJob.node_id == node.id, AgentJob.state == "queued")
                         .order_by(AgentJob.id).limit(1))
    if job is not None:
        job.state, job.sent_at = "sent", utcnow()
        install.job_taken(session, node, job)
        return {"action": "run", "job": str(job.id), "script": job.script, "timeout": job.timeout}
    return None


def job_result(session: Session, node: Node, job_id: str, exit_code, output, then: bool = False) -> dict:
    """A job's exit code and output, from its node's agent. `then`: the answer is the agent's next
    instruction instead (what its next poll would get, taken now: a poll saved; a wait of 0 seconds
    when there is nothing yet), also for a result posted again."""
    done = _job_result(session, node, job_id, exit_code, output)
    if not then:
        return done
    with batched(session):
        return _take_work(session, node) or {"action": "wait", "seconds": 0}


def _job_result(session: Session, node: Node, job_id: str, exit_code, output) -> dict:
    number = lookup.as_id(job_id)  # ASCII digits within an id's range: "²" and 25 digits name no job
    if number is None:
        raise NotFound(f"job {job_id!r} does not exist", field="job")
    job = session.get(AgentJob, number)
    if job is None or job.node_id != node.id:
        raise NotFound(f"job {job_id!r} does not exist for node {node.name}", field="job")
    if job.state == "done":
        return {"job": job.id, "state": job.state}
    if not isinstance(exit_code, int):
        raise InvalidInput("exit_code must be an integer", field="exit_code")
    job.state, job.exit_code, job.output, job.finished_at = "done", exit_code, str(output or ""), utcnow()
    with batched(session):
        install.job_done(session, node, job)
    signal_work(session, "anneal")  # the annealer completes the run that waits for this job
    return {"job": job.id, "state": job.state}


# -- operator actions (allocate: crowbar.services.allocation) ---------------------------------
def transition(session: Session, key, target: str, actor: str = "system") -> dict:
    """reset / reinstall / problem...: move the node and make it boot what its new state says."""
    node = lookup.node(session, key)
    # Who reboots it depends on what it runs now, before the move: a live discovery agent
    # reboots on request; anything else (an installed OS, a dead agent) is power-cycled.
    agent_reboots = agent_driven(node)
    set_state(session, node, lifecycle.parse(target), f"{target} requested", actor)
    if agent_reboots:
        node.agent_action = "reboot"
    else:  # the power worker cycles it; if that fails, the request and its event say why
        power.queue(session, node, "cycle", actor)
    signal_work(session, "anneal")
    return nodes.node_dict(node, full=True)


def expire_stuck(session: Session, now: datetime | None = None) -> list[str]:
    """Nodes sitting too long in a state that waits on the machine go to problem, with the reason."""
    now = now or datetime.now(timezone.utc)
    moved = []
    # Only the nodes past their state's limit are loaded (10,000 installing at once were read
    # whole every 10 s, holding the write lock); the rule itself is lifecycle's, below.
    utc = now.astimezone(timezone.utc) if isinstance(now, datetime) and now.tzinfo else now
    late = or_(*(and_(Node.state == state, Node.state_changed_at < utc - limit)
                 for state, limit in lifecycle.TIMEOUTS.items()))
    for node in session.scalars(select(Node).where(late)):
        entered = node.state_changed_at
        if entered is None:
            continue
        if entered.tzinfo is None:
            entered = entered.replace(tzinfo=timezone.utc)
        reason = lifecycle.timed_out(node.state, entered, now)
        if reason:
            set_state(session, node, lifecycle.PROBLEM, reason, "timeout")
            moved.append(node.name)
    return moved


"""Power: requests to power nodes on, off, around, or to ask their status; each node's driver and
its settings; the drivers there are.

A power action is never carried out inside a request: BMCs take seconds and time out at tens of
seconds, and the unit of work would hold its write lock all that time. `request_power` queues a
row (queued) and says so (`signal_work(session, "power")`); a server's power worker
(`crowbar.server.power`) then, each in a short transaction of its own:
  claim   - takes queued requests, the oldest first, at most one per node and none for a node that
            has one running (PostgreSQL: FOR UPDATE SKIP LOCKED, so several servers share the
            queue); they become running, with the server's id and started_at;
  (runs the driver outside any transaction, for at most the driver's `timeout` seconds)
  finish  - records succeeded or failed, the result (the driver's line; for `status` on, off or
            unknown; or why it failed) and finished_at, and an event `power-<action>` by the actor
            who asked. Nothing else changes: a failed request leaves the node as it was.
Requests left running by a server that died are failed ("server died") by `fail_abandoned`.
claim, finish and fail_abandoned are the worker's side, in crowbar.services.power_work.
"""

from __future__ import annotations

from sqlalchemy import select
from sqlalchemy.orm import Session

from crowbar.db.events import record
from crowbar.db.models import Node, PowerRequest
from crowbar.db.session import signal_work
from crowbar.db.sql import keyset
from crowbar.errors import InvalidInput, NotFound
from crowbar.power.base import driver_names, get_driver
from crowbar.services import lookup, nodes, power_state

ACTIONS = ("on", "off", "cycle", "status", "soft-off", "boot-pxe", "boot-disk", "boot-http")
# Actions services queue as a step of something else, never asked for through the API: bios-apply
# (crowbar.services.bios, during hardware-installing) takes the node's wanted BIOS attributes.
INTERNAL_ACTIONS = ("bios-apply",)
STATES = ("queued", "running", "succeeded", "failed")
DONE = ("succeeded", "failed")


def _iso(value) -> str | None:
    return value.isoformat() if value is not None else None


def request_dict(req: PowerRequest, node_name: str) -> dict:
    return {"id": req.id, "node": node_name, "node_id": req.node_id, "action": req.action, "state": req.state,
            "result": req.result, "actor": req.actor, "server_id": req.server_id,
            "created_at": _iso(req.created_at), "started_at": _iso(req.started_at),
            "finished_at": _iso(req.finished_at)}


# -- asking --------------------------------------------------------------------------------------
def queue(session: Session, node: Node, action: str, actor: str = "system") -> dict:
    """Queue `action` for `node` (for the services that power nodes as part of something else)."""
    if action not in ACTIONS + INTERNAL_ACTIONS:
        raise InvalidInput(f"power action {action!r}: expected {', '.join(ACTIONS[:-1])} or {ACTIONS[-1]}",
                           field="action")
    req = PowerRequest(node_id=node.id, action=action, state="queued", result="", actor=actor)
    session.add(req)
    session.flush()
    signal_work(session, "power")
    return request_dict(req, node.name)


def request_power(session: Session, key, action: str, actor: str = "system") -> dict:
    """Ask for a power action on a node; answers the queued request (the power worker runs it)."""
    node = lookup.node(session, key)
    try:
        get_driver(node.power_driver)
    except KeyError as exc:
        raise InvalidInput(str(exc), field="power_driver") from None
    if action in INTERNAL_ACTIONS:
        raise InvalidInput(f"power action {action!r} is a step of deploying, not asked for by itself",
                           field="action")
    return queue(session, node, action, actor)


def show_request(session: Session, request_id) -> dict:
    number = lookup.as_id(request_id)
    req = session.get(PowerRequest, number) if number is not None else None
    if req is None:
        raise NotFound(f"power request {request_id!r} does not exist", field="power_request")
    return request_dict(req, session.get(Node, req.node_id).name)


def list_requests(session: Session, node=None, state: str | None = None, *, limit: int | None = None,
                  marker: int | None = None) -> list[dict]:
    """Requests in id order: `limit` of them after id `marker` (all without), optionally of one
    node or in one state."""
    if state is not None and state not in STATES:
        raise InvalidInput(f"state {state!r}: expected one of {', '.join(STATES)}", field="state")
    q = select(PowerRequest, Node.name).join(Node, Node.id == PowerRequest.node_id)
    if node is not None:
        q = q.where(PowerRequest.node_id == lookup.node(session, node).id)
    if state is not None:
        q = q.where(PowerRequest.state == state)
    return [request_dict(req, name) for req, name in session.execute(keyset(q, PowerRequest.id, limit, marker))]


# -- drivers and settings ------------------------------------------------------------------------
def drivers() -> list[dict]:
    """Every power driver: its summary, its timeout and its settings (what `set_power` checks)."""
    return [get_driver(name).describe() for name in driver_names()]


def set_power(session: Session, key, driver: str, settings, actor: str = "system") -> dict:
    """Give a node its power driver and that driver's settings, refused unless the driver accepts
    them (`PowerDriver.validate`: the error names the missing or bad setting)."""
    node = lookup.node(session, key)
    try:
        plugin = get_driver(driver)
    except KeyError as exc:
        raise InvalidInput(str(exc), field="driver") from None
    node.power_driver, node.power = driver, plugin.validate(settings)
    record(session, [{"object_type": "node", "object_id": node.id, "action": "set-power", "actor": actor,
                      "message": driver}])
    return nodes.node_dict(node, full=True) | {"power": plugin.shown(node.power)}


def set_power_many(session: Session, items, actor: str = "system") -> list[dict]:
    """Give many nodes their power drivers and settings in one transaction (a rack's BMCs from one
    file): all of them, or none. `items` is a list of {node, driver, settings}; the first refusal
    names its item and node (an unknown node or driver, settings the driver does not accept, a node
    named twice). The nodes are read together and their events written in one insert."""
    if not isinstance(items, list) or not items:
        raise InvalidInput("give at least one item: {node, driver, settings}", field="items")
    if len(items) > lookup.MAX_BULK:
        raise InvalidInput(f"at most {lookup.MAX_BULK} nodes in one call (got {len(items)})", field="items")
    for i, item in enumerate(items):
        if not isinstance(item, dict) or set(item) - {"node", "driver", "settings"} or "node" not in item \
                or not isinstance(item.get("driver"), str) or not isinstance(item.get("settings", {}), dict):
            raise InvalidInput(f"items[{i}]: expected {{node, driver, settings}} with a driver name and a "
                               "settings object", field=f"items[{i}]")
    chosen = lookup.nodes(session, [item["node"] for item in items], lock=True)
    plugins = {}
    answers = []
    for i, (node, item) in enumerate(zip(chosen, items)):
        driver = item["driver"]
        if driver not in plugins:
            try:
                plugins[driver] = get_driver(driver)
            except KeyError as exc:
                raise InvalidInput(f"items[{i}] (node {node.name}): {exc.args[0]}", field=f"items[{i}].driver") from None
        try:
            settings = plugins[driver].validate(item.get("settings", {}))
        except InvalidInput as exc:
            raise InvalidInput(f"items[{i}] (node {node.name}): {exc}",
                               field=f"items[{i}].{exc.field or 'settings'}") from None
        node.power_driver, node.power = driver, settings
        answers.append({"node": node.name, "driver": driver, "settings": plugins[driver].shown(settings)})
    record(session, [{"object_type": "node", "object_id": node.id, "action": "set-power", "actor": actor,
                      "message": node.power_driver} for node in chosen])
    return answers


def show_power(session: Session, key) -> dict:
    """A node's power driver and its settings, secret ones (passwords) only as "(set)", and its
    power `state` as its requests tell it (crowbar.services.power_state)."""
    node = lookup.node(session, key)
    try:
        settings = get_driver(node.power_driver).shown(node.power or {})
    except KeyError:
        settings = {k: "(set)" for k in node.power or {}}  # a driver gone: show no values at all
    return {"node": node.name, "driver": node.power_driver, "settings": settings,
            "state": power_state.states(session, [node.id])[node.id]}

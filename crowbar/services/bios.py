"""BIOS settings during hardware-installing (Crowbar 1's bios barclamp), through the node's power
driver (Redfish: the Bios resource's pending settings, applied at a reset, checked after).

The wanted attributes are the node's `bios-settings` attrib (name -> value, as the BIOS's Redfish
attribute registry names them), as `crowbar attribs get bios-settings --node N` shows it: the
node's own (`crowbar attribs set bios-settings '{"BootMode": "Uefi"}' --node N`), else its
deployment's (role `bios-config` bound to it, the role's data in that deployment). `deploy` (crowbar.services.install) asks `start`: with settings wanted, the node stays in
hardware-installing, its install job is held, and a `bios-apply` power request is queued; the power
worker runs it outside any transaction (the driver sets what differs as pending, resets the node,
reads the attributes back). `applied` hears the outcome: checked -> hardware-installed and the job
is released to the agent; anything else -> problem, with every attribute that is not as wanted and
both values (or why the BMC could not be asked), and the job cancelled.
"""

from __future__ import annotations

from sqlalchemy.orm import Session

from crowbar.db.models import AgentJob, Node, utcnow
from crowbar.db.session import signal_work
from crowbar.errors import Conflict
from crowbar.power.base import get_driver
from crowbar.provisioner import lifecycle
from crowbar.services import attribs, power
from crowbar.services.nodes import agent_driven, install_step

ATTRIB = "bios-settings"
HELD = "held"  # an AgentJob state: not handed to the agent until the BIOS settings are checked


def wanted(session: Session, node: Node) -> dict:
    return wanted_many(session, [node])[node.id]


def wanted_many(session: Session, nodes: list[Node]) -> dict[int, dict]:
    """Each node's BIOS settings (the attrib as the node shows it), by node id, read together."""
    return {node_id: dict(value) if isinstance(value, dict) else {}
            for node_id, value in attribs.values(session, ATTRIB, nodes).items()}


def start(session: Session, node: Node, job: AgentJob, actor: str, settings: dict | None = None) -> bool:
    """Queue the node's BIOS settings (`settings`, when the caller read them: `wanted_many`), if it
    has any, holding `job` (its install) until they are checked; False when there is nothing to
    apply. Conflict when its power driver cannot."""
    settings = wanted(session, node) if settings is None else settings
    if not settings:
        return False
    try:
        driver = get_driver(node.power_driver)
    except KeyError:
        driver = None
    if driver is None or not driver.can_apply_bios:
        raise Conflict(f"node {node.name!r} has BIOS settings ({ATTRIB}) but its power driver "
                       f"{node.power_driver!r} cannot apply them (redfish can)", field="nodes")
    job.state = HELD
    request = power.queue(session, node, "bios-apply", actor)
    node.install = {**(node.install or {}), "bios": {"wanted": settings, "request": request["id"],
                                                     "state": "applying"}}
    return True


def applied(session: Session, node_id: int, request_id: int, ok: bool, result: str) -> None:
    """The bios-apply request `request_id` ended: on to hardware-installed, or problem."""
    node = session.get(Node, node_id)
    bios = dict((node.install or {}).get("bios") or {})
    if node.state != lifecycle.HARDWARE_INSTALLING or bios.get("request") != request_id:
        return  # the node moved on meanwhile (released, reset, deployed again)
    job = session.get(AgentJob, (node.install or {}).get("job") or 0)
    node.install = {**(node.install or {}), "bios": {**bios, "state": "checked" if ok else "failed",
                                                     "result": result}}
    if ok:
        install_step(session, node, lifecycle.HARDWARE_INSTALLED, result[:2000], "power")
        if job is not None and job.state == HELD:
            job.state = "queued"
        if not agent_driven(node):  # settings already in effect, no reset: boot the discovery image
            power.queue(session, node, "cycle", "power")
        signal_work(session, "anneal")
    else:
        if job is not None and job.state == HELD:
            job.state, job.exit_code, job.output, job.finished_at = "done", -1, "BIOS settings failed", utcnow()
        install_step(session, node, lifecycle.PROBLEM, f"BIOS settings: {result}"[:2000], "power")

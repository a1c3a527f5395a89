"""Import and export: a deployment as a portable document (a reference architecture as a file, like
Crowbar's `batch`), the whole server's state, and an Ansible dynamic inventory of what Crowbar knows.

Deployment documents (`FORMAT_DEPLOYMENT`) name everything by name: the deployment and its parent,
the roles bound in it with their data, which roles sit on which nodes with the noderoles' data, and
the networks its nodes have addresses on (by name and subnet). `import_deployment` checks the whole
document first (unknown roles, nodes, networks or parents: an InvalidInput listing them, nothing
written), then makes a plan of what it will create or change and, unless `dry_run`, carries it out
with the same binding rules as `crowbar deployments bind` (so what the roles require is bound too).
The deployment is left proposed: the operator reviews and commits it. A role bound by tag
(crowbar.services.deployments.bind) is written as its tag (`nodes: {tag, names}`, the names for
reference) instead of the noderoles that bind made on the tagged nodes, and imported onto the nodes
that carry the tag on the importing server (`FORMAT_DEPLOYMENT_TAGS`: older servers refuse it).

Server documents (`FORMAT_SERVER`) hold the state an operator built: barclamps (as stored), the
network template and its allocations, nodes with their inventories and hints, every deployment
with its roles (data, the tag a role is bound by), noderoles (states, data, walls) and the graph's
edges, and the OS rules as written (the node tags follow from them and the hints, and are computed
again on import). Runs, events, tokens and servers are history, not state, and stay behind.
Everything is sorted by name, so two exports of the same state are equal documents: `import_server`
into an empty database gives an identical export; into a non-empty one (OS rules of its own count)
it is refused unless `merge`, which adds what is missing (by name) and leaves what exists alone.
"""

from __future__ import annotations

from collections import defaultdict
from pathlib import Path

import jsonschema
from sqlalchemy import and_, func, insert, select, text
from sqlalchemy.orm import Session

from crowbar import plugins
from crowbar.barclamps import builtin_paths, loader
from crowbar.db.events import record
from crowbar.db.models import (Attrib, Barclamp, Deployment, DeploymentRole, Node, NodeMac, NodeRole,
                               NodeRoleEdge, NodeTag, Role)
from crowbar.db.network_models import NetworkAllocation, NetworkRow
from crowbar.db.session import signal_work
from crowbar.db.sql import chunks
from crowbar.documents import check_strict
from crowbar.engine.attribs import node_attrs
from crowbar.errors import Conflict, InvalidInput
from crowbar.network.model import watch_problem
from crowbar.provisioner import rules
from crowbar.services import catalog, deployments, lookup, network, os_rules

FORMAT_DEPLOYMENT = "crowbar-deployment/1"
FORMAT_DEPLOYMENT_TAGS = "crowbar-deployment/2"  # /1 with roles bound by tag (`nodes: {tag}`): older servers refuse it
FORMAT_SERVER = "crowbar-server/1"
_OBJ, _STR, _LIST = {"type": "object"}, {"type": "string"}, {"type": "array"}
_OPT_STR = {"type": ["string", "null"]}
TAG_PATTERN = rules.NAME_RE.pattern
_ATTRIB = {"type": "object", "required": ["name", "map", "default", "schema", "description"],
           "properties": {"name": _STR, "map": _STR, "schema": {"type": ["object", "boolean"]}, "description": _STR}}
_NAMES = {"type": "array", "items": _STR}
# What import_server reads, checked before anything is written (a hand-edited file: a 422, never a 500).
SERVER_SCHEMA = {
    "type": "object", "required": ["format", "barclamps", "network", "nodes", "allocations", "deployments", "edges"],
    "properties": {
        "barclamps": {"type": "array", "items": {
            "type": "object", "required": ["name", "description", "version", "attribs", "roles"],
            "properties": {"name": _STR, "description": _STR, "version": _STR, "attribs": {"type": "array", "items": _ATTRIB},
                           "roles": {"type": "array", "items": {
                               "type": "object",
                               "required": ["name", "description", "jig", "requires", "flags", "wants_attribs",
                                            "conflicts", "template", "scripts", "attribs"],
                               "properties": {"name": _STR, "description": _STR, "jig": _STR, "requires": _NAMES,
                                              "flags": _NAMES, "wants_attribs": _NAMES, "conflicts": _NAMES,
                                              "template": _OBJ, "attribs": {"type": "array", "items": _ATTRIB},
                                              "reruns_on_networks": {"type": "object", "additionalProperties": _NAMES},
                                              "scripts": {"type": "array", "items": {
                                                  "type": "object", "required": ["name", "content"],
                                                  "properties": {"name": _STR, "content": _STR}}}}}}}}},
        "network": _OBJ,
        "nodes": {"type": "array", "items": {
            "type": "object", "required": ["name", "description", "admin", "alive", "available", "bootenv", "state",
                                           "os", "boot_mac", "power_driver", "power", "discovery", "hints", "macs"],
            "properties": {"name": _STR, "description": _STR, "admin": {"type": "boolean"},
                           "alive": {"type": "boolean"}, "available": {"type": "boolean"}, "bootenv": _STR,
                           "state": _STR, "os": _OPT_STR, "boot_mac": _OPT_STR, "power_driver": _STR,
                           "power": _OBJ, "discovery": _OBJ, "hints": _OBJ, "macs": _NAMES}}},
        "allocations": {"type": "array", "items": {
            "type": "object", "required": ["network", "node", "range", "address"],
            "properties": {"network": _STR, "node": _STR, "range": _STR, "address": _STR}}},
        "deployments": {"type": "array", "items": {
            "type": "object", "required": ["name", "description", "system", "state", "parent", "roles", "noderoles"],
            "properties": {"name": _STR, "description": _STR, "system": {"type": "boolean"},
                           "state": {"enum": ["proposed", "committed"]}, "parent": _OPT_STR,
                           "roles": {"type": "array", "items": {
                               "type": "object", "required": ["role", "proposed", "committed"],
                               "properties": {"role": _STR, "proposed": _OBJ, "committed": _OBJ,
                                              "tag": {"type": ["string", "null"], "pattern": TAG_PATTERN}}}},
                           "noderoles": {"type": "array", "items": {
                               "type": "object", "required": ["node", "role", "state", "cohort", "proposed",
                                                              "committed", "wall", "run_count", "status"],
                               "properties": {"node": _STR, "role": _STR,
                                              "state": {"enum": ["proposed", "todo", "transition", "active",
                                                                 "error", "blocked"]},
                                              "cohort": {"type": "integer", "minimum": 0, "maximum": 2**31 - 1},
                                              "run_count": {"type": "integer", "minimum": 0, "maximum": 2**31 - 1},
                                              "proposed": _OBJ, "committed": _OBJ, "wall": _OBJ, "status": _STR}}}}}},
        "edges": {"type": "array", "items": {"type": "array", "items": _STR, "minItems": 4, "maxItems": 4}},
        # Optional (documents before the OS rules have none): the rules' YAML as set, or null.
        "os_rules": {"type": ["object", "null"], "required": ["source"], "additionalProperties": False,
                     "properties": {"source": _STR}},
    },
}

NODE_FIELDS = ("name", "description", "admin", "alive", "available", "bootenv", "state", "os", "boot_mac",
               "power_driver", "power", "discovery", "hints")


# -- a deployment --------------------------------------------------------------------------------
def export_deployment(session: Session, key) -> dict:
    d = lookup.deployment(session, key)
    if d.system:
        raise InvalidInput("the system deployment is every node's own; export the server instead "
                           "(crowbar export)", field="deployment")
    parent = session.get(Deployment, d.parent_id) if d.parent_id else None
    roles = session.execute(select(Role.name, Barclamp.name, DeploymentRole.proposed, DeploymentRole.tag)
                            .join(Role, Role.id == DeploymentRole.role_id).join(Barclamp)
                            .where(DeploymentRole.deployment_id == d.id).order_by(Role.name)).all()
    by_tag = set(session.scalars(BOUND_BY_TAG, {"d": d.id}))
    nrs = session.execute(select(Node.name, Role.name, NodeRole.proposed, NodeRole.id)
                          .join(Node, Node.id == NodeRole.node_id).join(Role, Role.id == NodeRole.role_id)
                          .where(NodeRole.deployment_id == d.id).order_by(Node.name, Role.name)).all()
    tag_names = defaultdict(list)  # role -> the nodes that hold it and carry its tag, for reference
    for r, n in session.execute(
            select(Role.name, Node.name).select_from(NodeRole).join(Role, Role.id == NodeRole.role_id)
            .join(Node, Node.id == NodeRole.node_id)
            .join(DeploymentRole, and_(DeploymentRole.deployment_id == NodeRole.deployment_id,
                                       DeploymentRole.role_id == NodeRole.role_id))
            .join(NodeTag, and_(NodeTag.node_id == NodeRole.node_id, NodeTag.tag == DeploymentRole.tag))
            .where(NodeRole.deployment_id == d.id).order_by(Node.name)):
        tag_names[r].append(n)
    named = [(n, r, data) for n, r, data, nr_id in nrs if nr_id not in by_tag]
    every_node = sorted({n for n, _r, _p, _i in nrs})
    nets = session.execute(select(NetworkRow.name, NetworkRow.subnet).join(
        NetworkAllocation, NetworkAllocation.network_id == NetworkRow.id).join(
        Node, Node.id == NetworkAllocation.node_id).where(Node.name.in_(every_node or [""]))
        .distinct().order_by(NetworkRow.name)).all()
    return {
        "format": FORMAT_DEPLOYMENT_TAGS if any(tag for *_x, tag in roles) else FORMAT_DEPLOYMENT,
        "deployment": {"name": d.name, "description": d.description,
                       "parent": None if parent is None or parent.system else parent.name},
        "roles": [{"role": r, "barclamp": bc, "data": data or {},
                   **({"nodes": {"tag": tag, "names": tag_names[r]}} if tag else {})} for r, bc, data, tag in roles],
        "nodes": sorted({n for n, _r, _p in named}),
        "noderoles": [{"node": n, "role": r, "data": data or {}} for n, r, data in named],
        "networks": [{"name": n, "subnet": subnet} for n, subnet in nets],
    }


# The noderoles of a deployment that its binds by tag hold: each role bound by tag on the nodes that
# carry the tag now, and what those noderoles require on their own node in the deployment (what the
# bind made there). A deployment document names the tag instead; its import binds them again.
BOUND_BY_TAG = text(
    "WITH RECURSIVE held(id, node_id) AS ("
    " SELECT nr.id, nr.node_id FROM node_roles nr"
    " JOIN deployment_roles dr ON dr.deployment_id = nr.deployment_id AND dr.role_id = nr.role_id"
    " JOIN node_tags t ON t.node_id = nr.node_id AND t.tag = dr.tag"
    " WHERE nr.deployment_id = :d"
    " UNION SELECT p.id, p.node_id FROM held h JOIN node_role_edges e ON e.child_id = h.id"
    " JOIN node_roles p ON p.id = e.parent_id WHERE p.deployment_id = :d AND p.node_id = h.node_id"
    ") SELECT id FROM held")


def _need(doc, key: str, kind: type, where: str):
    value = doc.get(key) if isinstance(doc, dict) else None
    if not isinstance(value, kind):
        raise InvalidInput(f"{where}: '{key}' must be a {'list' if kind is list else 'mapping' if kind is dict else 'text'}",
                           field=key)
    return value


def _read_deployment(doc) -> tuple[dict, list[dict], list[str], list[dict], list[dict]]:
    if not isinstance(doc, dict) or doc.get("format") not in (FORMAT_DEPLOYMENT, FORMAT_DEPLOYMENT_TAGS):
        raise InvalidInput(f"not a deployment document: 'format' must be {FORMAT_DEPLOYMENT!r} or "
                           f"{FORMAT_DEPLOYMENT_TAGS!r}", field="format")
    check_strict(doc, field="document", what="the deployment document")
    dep = _need(doc, "deployment", dict, "document")
    _need(dep, "name", str, "deployment")
    roles = doc.get("roles") or []
    noderoles = doc.get("noderoles") or []
    for part, items, keys in (("roles", roles, ("role",)), ("noderoles", noderoles, ("node", "role"))):
        if not isinstance(items, list):
            raise InvalidInput(f"document: '{part}' must be a list", field=part)
        for item in items:
            for k in keys:
                _need(item, k, str, part)
            if not isinstance(item.get("data", {}), dict):
                raise InvalidInput(f"{part}: 'data' must be a mapping", field=part)
    for r in roles:
        if "nodes" in r:  # bound by tag: {tag, names (for reference only)}
            by = r["nodes"]
            if not isinstance(by, dict) or not isinstance(by.get("tag"), str) or set(by) - {"tag", "names"}:
                raise InvalidInput(f"roles: role {r['role']!r}: 'nodes' must be a mapping {{tag, names}}",
                                   field="roles")
            try:
                by["tag"] = deployments.valid_tag(by["tag"])
            except InvalidInput as exc:
                raise InvalidInput(f"roles: role {r['role']!r}: {exc.message}", field="roles") from None
    node_names = doc.get("nodes") or []
    nets = doc.get("networks") or []
    if not isinstance(node_names, list) or not all(isinstance(n, str) for n in node_names):
        raise InvalidInput("document: 'nodes' must be a list of names", field="nodes")
    if not isinstance(nets, list) or not all(isinstance(n, dict) and isinstance(n.get("name"), str) for n in nets):
        raise InvalidInput("document: 'networks' must be a list of {name, subnet}", field="networks")
    return dep, roles, node_names, noderoles, nets


def import_deployment(session: Session, doc, dry_run: bool = False, actor: str = "system") -> dict:
    """Check `doc`, plan, and (unless `dry_run`) apply. Answers {deployment, plan, applied}.
    A role bound by tag (`nodes: {tag}`) is bound to the nodes that carry the tag here (the plan
    names them); a tag no node here carries is refused like an unknown node."""
    dep, roles, node_names, noderoles, nets = _read_deployment(doc)
    known_roles = set(session.scalars(select(Role.name)))
    wanted_roles = sorted({r["role"] for r in roles} | {nr["role"] for nr in noderoles})
    unknown = [r for r in wanted_roles if r not in known_roles]
    if unknown:
        raise InvalidInput(f"the document names roles this server does not have: {', '.join(unknown)} "
                           "(import their barclamps first)", field="roles")
    wanted_nodes = sorted(set(node_names) | {nr["node"] for nr in noderoles})
    known_nodes = set(session.scalars(select(Node.name).where(Node.name.in_(wanted_nodes or [""]))))
    missing = [n for n in wanted_nodes if n not in known_nodes]
    if missing:
        raise InvalidInput(f"the document names nodes this server does not have: {', '.join(missing)}",
                           field="nodes")
    by_tag = {r["role"]: (r["nodes"]["tag"], deployments.tagged_nodes(session, r["nodes"]["tag"]))
              for r in roles if "nodes" in r}
    untagged = [f"{tag} (role {role})" for role, (tag, refs) in by_tag.items() if not refs]
    if untagged:
        raise InvalidInput(f"the document binds roles by tags no node here has: {', '.join(untagged)} "
                           "(tag nodes with `crowbar attribs set tags` or the OS rules first)", field="roles")
    have_nets = dict(session.execute(select(NetworkRow.name, NetworkRow.subnet)).all())
    bad_nets = [f"{n['name']} ({n.get('subnet')})" for n in nets
                if have_nets.get(n["name"]) is None or (n.get("subnet") and have_nets[n["name"]] != n["subnet"])]
    if bad_nets:
        raise InvalidInput(f"the document depends on networks this server lacks or has with another subnet: "
                           f"{', '.join(bad_nets)}", field="networks")
    parent = dep.get("parent")
    if parent is not None and session.scalar(select(Deployment.id).where(Deployment.name == parent)) is None:
        raise InvalidInput(f"the parent deployment {parent!r} does not exist here", field="parent")

    existing = session.scalar(select(Deployment).where(Deployment.name == dep["name"]))
    if existing is not None and existing.system:
        raise InvalidInput("the system deployment cannot be imported", field="deployment")
    plan: list[str] = []
    bound: dict[tuple[str, str], tuple[str, dict]] = {}  # (node, role) -> (deployment, proposed)
    if existing is None:
        plan.append(f"create deployment {dep['name']} under {parent or 'system'}")
    else:
        plan.append(f"deployment {dep['name']} exists: update it")
    pairs = [(nr["node"], nr["role"]) for nr in noderoles]
    tag_pairs = [(ref.name, role) for role, (_tag, refs) in by_tag.items() for ref in refs]
    if pairs or tag_pairs:
        for part in chunks(sorted({n for n, _r in pairs + tag_pairs})):
            for n, r, dname, proposed in session.execute(
                    select(Node.name, Role.name, Deployment.name, NodeRole.proposed)
                    .join(Node, Node.id == NodeRole.node_id).join(Role, Role.id == NodeRole.role_id)
                    .join(Deployment, Deployment.id == NodeRole.deployment_id)
                    .where(Node.name.in_(part), Role.name.in_(wanted_roles))):
                bound[(n, r)] = (dname, proposed or {})
    clashes = [f"{r} on {n} (in {bound[(n, r)][0]})" for n, r in pairs + tag_pairs
               if (n, r) in bound and bound[(n, r)][0] != dep["name"]]
    if clashes:
        raise Conflict(f"roles already bound to these nodes in other deployments: {', '.join(clashes)}")
    for n, r in pairs:
        if (n, r) not in bound:
            plan.append(f"bind {r} to {n} (and what it requires)")
    current, current_tags = {}, {}
    if existing is not None:
        for role, proposed, tag in session.execute(select(Role.name, DeploymentRole.proposed, DeploymentRole.tag)
                                                   .join(Role).where(DeploymentRole.deployment_id == existing.id)):
            current[role], current_tags[role] = proposed, tag
    for role, (tag, refs) in by_tag.items():
        if current_tags.get(role) != tag or any((ref.name, role) not in bound for ref in refs):
            plan.append(f"bind {role} to the nodes tagged {tag}: {', '.join(ref.name for ref in refs)} "
                        "(and what it requires; a commit binds the nodes that gain the tag)")
    for r in roles:
        if (r.get("data") or {}) != (current.get(r["role"]) or {}):
            plan.append(f"set the data of role {r['role']}")
    for nr in noderoles:
        old = bound.get((nr["node"], nr["role"]), (None, {}))[1]
        if (nr.get("data") or {}) != old:
            plan.append(f"set the data of {nr['role']} on {nr['node']}")
    plan.append(f"leave {dep['name']} proposed: review it, then `crowbar deployments commit {dep['name']}`")
    if dry_run:
        return {"deployment": dep["name"], "plan": plan, "applied": False}

    if existing is None:
        deployments.create_deployment(session, dep["name"], parent, dep.get("description") or "", actor=actor)
    for n, r in pairs:
        deployments.bind(session, dep["name"], r, n, actor=actor)
    for role, (tag, _refs) in by_tag.items():
        deployments.bind(session, dep["name"], role, tag=tag, actor=actor)
    for r in roles:  # a role bound only through what others require gets its data too, if the doc has it
        if session.scalar(select(DeploymentRole.id).join(Role).join(Deployment).where(
                Deployment.name == dep["name"], Role.name == r["role"])) is None:
            raise InvalidInput(f"role {r['role']!r} has data in the document but no node holds it in "
                               f"{dep['name']!r}", field="roles")
        deployments.set_role_data(session, dep["name"], r["role"], r.get("data") or {}, actor=actor)
    for nr in noderoles:
        row = session.scalar(select(NodeRole).join(Node, Node.id == NodeRole.node_id)
                             .join(Role, Role.id == NodeRole.role_id)
                             .where(Node.name == nr["node"], Role.name == nr["role"]))
        check_strict(nr.get("data") or {}, field="data", what="noderole data")
        row.proposed = nr.get("data") or {}
    d = session.scalar(select(Deployment).where(Deployment.name == dep["name"]))
    d.state = "proposed"
    record(session, [{"object_type": "deployment", "object_id": d.id, "action": "import", "actor": actor,
                      "message": f"{len(plan) - 1} steps from a deployment document"}])
    return {"deployment": dep["name"], "plan": plan, "applied": True}


# -- the whole server ----------------------------------------------------------------------------
def export_server(session: Session) -> dict:
    bcs = []
    for bc in session.scalars(select(Barclamp).order_by(Barclamp.name)):
        attribs = list(session.scalars(select(Attrib).where(Attrib.barclamp_id == bc.id).order_by(Attrib.name)))
        by_role = defaultdict(list)
        for a in attribs:
            by_role[a.role_id].append({"name": a.name, "map": a.map, "default": a.default, "schema": a.schema,
                                       "description": a.description})
        bcs.append({"name": bc.name, "description": bc.description, "version": bc.version,
                    "attribs": by_role[None],
                    "roles": [{"name": r.name, "description": r.description, "jig": r.jig, "requires": r.requires,
                               "flags": r.flags, "wants_attribs": r.wants_attribs, "conflicts": r.conflicts,
                               "template": r.template, "scripts": r.scripts, "attribs": by_role[r.id],
                               "reruns_on_networks": r.reruns_on_networks or {}}
                              for r in sorted(bc.roles, key=lambda r: r.name)]})
    macs = defaultdict(list)
    for mac, node_id in session.execute(select(NodeMac.mac, NodeMac.node_id).order_by(NodeMac.mac)):
        macs[node_id].append(mac)
    node_rows = list(session.scalars(select(Node).order_by(Node.name)))
    names = {n.id: n.name for n in node_rows}
    allocations = [{"network": net, "node": names[node_id], "range": rng, "address": addr}
                   for net, node_id, rng, addr in session.execute(
                       select(NetworkRow.name, NetworkAllocation.node_id, NetworkAllocation.range,
                              NetworkAllocation.address).join(NetworkRow))]
    deps = []
    dep_rows = {d.id: d for d in session.scalars(select(Deployment))}
    for d in sorted(dep_rows.values(), key=lambda d: (_depth(d, dep_rows), d.name)):
        drs = session.execute(select(Role.name, DeploymentRole.proposed, DeploymentRole.committed,
                                     DeploymentRole.tag).join(Role)
                              .where(DeploymentRole.deployment_id == d.id).order_by(Role.name)).all()
        nrs = session.execute(select(Node.name, Role.name, NodeRole).join(Node, Node.id == NodeRole.node_id)
                              .join(Role, Role.id == NodeRole.role_id).where(NodeRole.deployment_id == d.id)
                              .order_by(Node.name, Role.name)).all()
        deps.append({"name": d.name, "description": d.description, "system": d.system, "state": d.state,
                     "parent": dep_rows[d.parent_id].name if d.parent_id else None,
                     "roles": [{"role": r, "proposed": p, "committed": c, "tag": t} for r, p, c, t in drs],
                     "noderoles": [{"node": n, "role": r, "state": nr.state, "cohort": nr.cohort,
                                    "proposed": nr.proposed, "committed": nr.committed, "wall": nr.wall,
                                    "run_count": nr.run_count, "status": nr.status} for n, r, nr in nrs]})
    parent, child = NodeRole.__table__.alias("p"), NodeRole.__table__.alias("c")
    pn, cn = Node.__table__.alias("pn"), Node.__table__.alias("cn")
    pr, cr = Role.__table__.alias("pr"), Role.__table__.alias("cr")
    edges = sorted([[a, b, c, e] for a, b, c, e in session.execute(
        select(pn.c.name, pr.c.name, cn.c.name, cr.c.name).select_from(NodeRoleEdge.__table__)
        .join(parent, parent.c.id == NodeRoleEdge.parent_id).join(child, child.c.id == NodeRoleEdge.child_id)
        .join(pn, pn.c.id == parent.c.node_id).join(pr, pr.c.id == parent.c.role_id)
        .join(cn, cn.c.id == child.c.node_id).join(cr, cr.c.id == child.c.role_id))])
    return {
        "format": FORMAT_SERVER,
        "barclamps": bcs,
        "network": network.export(session),
        "nodes": [{**{k: getattr(n, k) for k in NODE_FIELDS}, "macs": macs[n.id]} for n in node_rows],
        "allocations": sorted(allocations, key=lambda a: (a["network"], a["node"])),
        "deployments": deps,
        "edges": edges,  # [parent node, parent role, child node, child role]
        "os_rules": os_rules.exported(session),
    }


def _depth(d: Deployment, rows: dict[int, Deployment]) -> int:
    depth = 0
    while d.parent_id is not None and depth < 1000:
        d, depth = rows[d.parent_id], depth + 1
    return depth


def _empty(session: Session) -> list[str]:
    """What makes this server's database not empty (beyond what every server has)."""
    builtin = {loader.read(p).name for p in builtin_paths()}
    why = []
    if session.scalar(select(func.count()).select_from(Node)):
        why.append("nodes")
    if session.scalar(select(func.count()).select_from(Deployment).where(Deployment.system.is_(False))):
        why.append("deployments")
    if set(session.scalars(select(Barclamp.name))) - builtin:
        why.append("barclamps")
    if session.scalar(select(func.count()).select_from(NetworkAllocation)):
        why.append("network allocations")
    if os_rules.is_set(session):
        why.append("OS rules")
    return why


def import_server(session: Session, doc, merge: bool = False, actor: str = "system") -> dict:
    """Recreate the state of an export. Refused into a database with nodes, deployments, its own
    barclamps or allocations unless `merge`: then what exists (by name) is kept as it is."""
    if not isinstance(doc, dict) or doc.get("format") != FORMAT_SERVER:
        raise InvalidInput(f"not a server document: 'format' must be {FORMAT_SERVER!r}", field="format")
    check_strict(doc, field="document", what="the server document")
    problem = jsonschema.exceptions.best_match(jsonschema.Draft202012Validator(SERVER_SCHEMA).iter_errors(doc))
    if problem is not None:
        where = "/".join(str(p) for p in problem.absolute_path) or "(the document)"
        raise InvalidInput(f"server document: {where}: {problem.message[:300]}", field="document")
    jigs = set(plugins.names(plugins.JIGS))
    for bc in doc["barclamps"]:
        for r in bc["roles"]:
            if r["jig"] not in jigs or set(r["flags"]) - loader.FLAGS or not loader.NAME.fullmatch(r["name"]):
                raise InvalidInput(f"server document: barclamp {bc['name']!r}: role {r['name']!r} has an unknown "
                                   f"jig or flag, or a bad name", field="document")
    rules_doc = doc.get("os_rules")
    if rules_doc is not None:
        try:
            os_rules.parse(rules_doc["source"])  # before anything is written
        except InvalidInput as exc:
            raise InvalidInput(f"server document: os_rules: {exc.message}", field="document") from None
    why = _empty(session)
    if why and not merge:
        raise Conflict(f"this server is not empty (it has {', '.join(why)}): import into an empty database, "
                       "or pass merge to add only what is missing", field="merge")
    done: dict[str, int] = defaultdict(int)
    have_bc = set(session.scalars(select(Barclamp.name)))
    builtin = {loader.read(p).name for p in builtin_paths()}
    for bc in doc.get("barclamps") or []:
        if bc["name"] in have_bc and (merge or bc["name"] in builtin):
            continue
        catalog.load(session, _barclamp_def(bc), actor=actor)
        done["barclamps"] += 1
    if not merge or not why:
        network.import_template(session, doc["network"], force=True, actor=actor)
    have_nodes = set(session.scalars(select(Node.name)))
    new_nodes = []
    for n in doc.get("nodes") or []:
        if n["name"] in have_nodes:
            continue
        # Not nodes.create_node: that binds the discovery roles, which the export already holds.
        row = Node(**{k: n[k] for k in NODE_FIELDS})
        session.add(row)
        session.flush()
        if n.get("macs"):
            session.execute(insert(NodeMac), [{"mac": m, "node_id": row.id} for m in n["macs"]])
        new_nodes.append(row)
        done["nodes"] += 1
    have_alloc = set(session.execute(select(NetworkRow.name, Node.name).select_from(NetworkAllocation)
                                     .join(NetworkRow).join(Node, Node.id == NetworkAllocation.node_id)).all())
    for a in doc.get("allocations") or []:
        if (a["network"], a["node"]) not in have_alloc:
            network.allocate(session, a["network"], a["node"], a["range"], a["address"], actor=actor)
            done["allocations"] += 1
    try:
        _import_graph(session, doc, done)
    except KeyError as e:  # the document's graph names a role or node that neither it nor this server has
        raise InvalidInput(f"the document's deployments name {e.args[0]!r}, which neither the document nor this "
                           "server defines", field="deployments") from None
    if rules_doc is not None and not (merge and os_rules.is_set(session)):  # a merge keeps rules set here
        os_rules.set_rules(session, rules_doc["source"], actor=actor)  # and computes every node's tags
        done["os_rules"] += 1
    else:  # the new nodes' tags: their `tags` attrib (in the hints) and the rules here
        os_rules.refresh_tags(session, new_nodes)
    signal_work(session, "anneal")
    record(session, [{"object_type": "server", "action": "import", "actor": actor,
                      "message": ", ".join(f"{v} {k}" for k, v in sorted(done.items())) or "nothing new"}])
    return {"imported": dict(sorted(done.items())), "merge": merge}


def _import_graph(session: Session, doc: dict, done: dict[str, int]) -> None:
    """Deployments, deployment roles, noderoles and edges, as they were (no binding rules: the
    export already holds what they produced). Existing deployments (by name) are left alone."""
    deps = {d.name: d for d in session.scalars(select(Deployment))}
    roles = dict(session.execute(select(Role.name, Role.id)).all())
    node_ids = dict(session.execute(select(Node.name, Node.id)).all())
    fresh: set[str] = set()
    for dd in doc.get("deployments") or []:
        if dd["name"] in deps:
            continue
        row = Deployment(name=dd["name"], description=dd["description"], system=dd["system"], state=dd["state"],
                         parent_id=deps[dd["parent"]].id if dd["parent"] else None)
        session.add(row)
        session.flush()
        deps[dd["name"]], fresh = row, fresh | {dd["name"]}
        done["deployments"] += 1
    for dd in doc.get("deployments") or []:
        if dd["name"] not in fresh and not dd["system"]:
            continue
        d = deps[dd["name"]]
        have = set(session.scalars(select(DeploymentRole.role_id).where(DeploymentRole.deployment_id == d.id)))
        for r in dd["roles"]:
            if roles[r["role"]] not in have:
                session.add(DeploymentRole(deployment_id=d.id, role_id=roles[r["role"]], proposed=r["proposed"],
                                           committed=r["committed"], tag=r.get("tag")))
        taken = set(session.execute(select(NodeRole.node_id, NodeRole.role_id)).all())
        for nr in dd["noderoles"]:
            key = (node_ids[nr["node"]], roles[nr["role"]])
            if key in taken:
                continue
            state = "todo" if nr["state"] == "transition" else nr["state"]  # its run stayed on the old server
            session.add(NodeRole(node_id=key[0], role_id=key[1], deployment_id=d.id, state=state,
                                 cohort=nr["cohort"], proposed=nr["proposed"], committed=nr["committed"],
                                 wall=nr["wall"], run_count=nr["run_count"], status=nr["status"]))
            done["noderoles"] += 1
        session.flush()
    ids = {(n, r): i for i, n, r in session.execute(
        select(NodeRole.id, Node.name, Role.name).join(Node, Node.id == NodeRole.node_id)
        .join(Role, Role.id == NodeRole.role_id))}
    have_edges = set(session.execute(select(NodeRoleEdge.parent_id, NodeRoleEdge.child_id)).all())
    new = [{"parent_id": ids[(a, b)], "child_id": ids[(c, e)]} for a, b, c, e in doc.get("edges") or []
           if (ids[(a, b)], ids[(c, e)]) not in have_edges]
    if new:
        session.execute(insert(NodeRoleEdge), new)
        done["edges"] += len(new)


def _barclamp_def(bc: dict) -> loader.BarclampDef:
    for r in bc["roles"]:
        problem = watch_problem(r.get("reruns_on_networks") or {})
        if problem:
            raise InvalidInput(f"barclamp {bc['name']!r}, role {r['name']!r}: reruns_on_networks: {problem}",
                               field="barclamps")
    def attribs(items):
        return [loader.AttribDef(name=a["name"], map=a["map"], default=a["default"], schema=a["schema"],
                                 description=a["description"]) for a in items]
    return loader.BarclampDef(
        name=bc["name"], description=bc["description"], version=bc["version"], path=Path(f"(import)/{bc['name']}"),
        attribs=attribs(bc["attribs"]),
        roles=[loader.RoleDef(name=r["name"], jig=r["jig"], description=r["description"], requires=r["requires"],
                              flags=r["flags"], attribs=attribs(r["attribs"]), wants_attribs=r["wants_attribs"],
                              conflicts=r["conflicts"], template=r["template"], scripts=r["scripts"],
                              reruns_on_networks=r.get("reruns_on_networks") or {})
               for r in bc["roles"]])


# -- an Ansible dynamic inventory ------------------------------------------------------------------
def ansible_inventory(session: Session, deployment: str | None = None) -> dict:
    """Ansible's dynamic-inventory JSON (`ansible-inventory -i SCRIPT`'s `--list` form): every node
    by name with its address and its own attributes (discovery overlaid with hints) as
    `crowbar_attrs`, groups by role (`deployment` limits it to the roles bound there), and one
    group per deployment."""
    q = select(Node.name, Role.name, Deployment.name).select_from(NodeRole).join(Node, Node.id == NodeRole.node_id) \
        .join(Role, Role.id == NodeRole.role_id).join(Deployment, Deployment.id == NodeRole.deployment_id)
    if deployment:
        q = q.where(NodeRole.deployment_id == lookup.deployment(session, deployment).id)
    groups: dict[str, set[str]] = defaultdict(set)
    held = set()
    for node, role, dep in session.execute(q):
        groups[role].add(node)
        groups[f"deployment_{dep}"].add(node)
        held.add(node)
    hostvars = {}
    for node in session.scalars(select(Node).order_by(Node.name)):
        if deployment and node.name not in held:
            continue
        attrs = node_attrs(node)
        ssh = (attrs.get("crowbar") or {}).get("ssh") or {}
        hv = {"crowbar_attrs": attrs, "crowbar_node_id": node.id}
        if node.admin:
            hv["ansible_connection"] = "local"
        elif ssh.get("address"):
            hv["ansible_host"] = ssh["address"]
            hv.update({f"ansible_{k}": ssh[k] for k in ("port", "user") if ssh.get(k) is not None})
            if ssh.get("key"):
                hv["ansible_ssh_private_key_file"] = ssh["key"]
        hostvars[node.name] = hv
    out: dict = {name: {"hosts": sorted(hosts)} for name, hosts in sorted(groups.items())}
    out["all"] = {"hosts": sorted(hostvars)}
    out["_meta"] = {"hostvars": hostvars}
    return out

"""OS rules: the stored rules document, what it chooses for a node, and the node tags it computes.

The rules themselves (ordered, JMESPath conditions, first match wins, a default) are pure
(crowbar.provisioner.rules); this module stores them (one row of `os_rules`), gathers a node's
facts (inventory, hints, bound roles and deployments), explains every rule's verdict on a node,
tries rules before they are saved, and keeps `node_tags` (the operator's tags plus the chosen
rule's) so nodes are found by tag in SQL. Tags are computed again for every node when the rules
are set (or `apply`), and for one node when it is discovered, its hints change or it is deployed.

`deploy` without an OS (crowbar.services.install) takes the rules' OS, and root-device hints from
the rules when the operator set none on the node.
"""

from __future__ import annotations

from sqlalchemy import delete, insert, select
from sqlalchemy.orm import Session, load_only

from crowbar.db.events import record
from crowbar.db.models import Deployment, Node, NodeRole, NodeTag, OsRules, Role, utcnow
from crowbar.db.sql import chunks
from crowbar.documents import check_if_match
from crowbar.errors import InvalidInput
from crowbar.provisioner import osimage, rules
from crowbar.services import lookup

MAX_SOURCE = 256 * 1024  # characters of YAML


def _row(session: Session) -> OsRules | None:
    return session.get(OsRules, 1)


def current(session: Session) -> rules.RuleSet:
    """The stored rules (none: no rules and an empty default)."""
    row = _row(session)
    if row is None:
        return rules.RuleSet()
    return rules.load(row.document)  # stored after the same checks (the catalog is not asked again)


def show(session: Session) -> dict:
    row = _row(session)
    ruleset = current(session)
    return {**ruleset.as_dict(), "source": row.source if row else "",
            "updated_at": row.updated_at.isoformat() if row else None,
            "updated_by": row.updated_by if row else None}


def parse(document) -> tuple[rules.RuleSet, str]:
    """The RuleSet and its YAML source from a mapping or YAML text, checked against the catalog."""
    if isinstance(document, str):
        if len(document) > MAX_SOURCE:
            raise InvalidInput(f"the rules are longer than {MAX_SOURCE} characters", field="rules")
        source = document
    elif isinstance(document, dict):
        source = ""
    else:
        raise InvalidInput("the rules must be a mapping or YAML text", field="rules")
    ruleset = rules.load(document, known_os=osimage.recipes())
    return ruleset, source or rules.to_yaml(ruleset)


def exported(session: Session) -> dict | None:
    """The rules as a server export carries them: the YAML as set (`source`); None when never set."""
    row = _row(session)
    return None if row is None else {"source": row.source}


def is_set(session: Session) -> bool:
    """Whether the stored rules say anything (a rule, or a default)."""
    return current(session).as_dict() != rules.RuleSet().as_dict()


def set_rules(session: Session, document, actor: str = "system", if_match: str | None = None) -> dict:
    """Replace the rules (all or nothing), then compute every node's tags again."""
    ruleset, source = parse(document)
    row = _row(session)
    if if_match is not None:
        if row is not None:
            session.refresh(row, with_for_update=True)
        check_if_match(if_match, show(session), "the OS rules document")
    if row is None:
        row = OsRules(id=1)
        session.add(row)
    row.document, row.source, row.updated_at, row.updated_by = ruleset.as_dict(), source, utcnow(), actor
    session.flush()
    record(session, [{"object_type": "os_rules", "object_id": 1, "action": "set", "actor": actor,
                      "message": f"{len(ruleset.rules)} rule(s): "
                                 f"{', '.join(r.name for r in ruleset.rules)[:500] or 'none'}; "
                                 f"default os {ruleset.default_os or '(none)'}"}])
    tagged = refresh_tags(session)
    return {**show(session), "nodes_tagged": tagged}


# --- a node's facts ---

def _bindings(session: Session, node_ids: list[int]) -> dict[int, tuple[set[str], set[str]]]:
    out: dict[int, tuple[set[str], set[str]]] = {i: (set(), set()) for i in node_ids}
    for part in chunks(node_ids):
        q = (select(NodeRole.node_id, Role.name, Deployment.name)
             .join(Role, Role.id == NodeRole.role_id).join(Deployment, Deployment.id == NodeRole.deployment_id)
             .where(NodeRole.node_id.in_(part)))
        for node_id, role, deployment in session.execute(q):
            out[node_id][0].add(role)
            out[node_id][1].add(deployment)
    return out


def _facts(node: Node, bound: tuple[set[str], set[str]]) -> dict:
    return rules.facts(name=node.name, state=node.state, os=node.os, admin=node.admin,
                       inventory=node.discovery or {}, hints=node.hints or {}, roles=bound[0],
                       deployments=bound[1])


def facts(session: Session, node: Node) -> dict:
    """The document the rules' conditions see for `node`."""
    return _facts(node, _bindings(session, [node.id])[node.id])


def choose(session: Session, node: Node, ruleset: rules.RuleSet | None = None) -> rules.Choice:
    """What the stored rules (or `ruleset`, read once by a caller choosing for many nodes) give `node`."""
    return choose_many(session, [node], ruleset)[node.id]


def choose_many(session: Session, nodes: list[Node], ruleset: rules.RuleSet | None = None) -> dict[int, rules.Choice]:
    """`choose` for many nodes, their roles and deployments read together: by node id."""
    ruleset = ruleset if ruleset is not None else current(session)
    bound = _bindings(session, [node.id for node in nodes])
    return {node.id: rules.evaluate(ruleset, _facts(node, bound[node.id])) for node in nodes}


def _summary(data: dict) -> dict:
    """The facts without the inventory and hints (long; `crowbar nodes show` has them)."""
    return {k: v for k, v in data.items() if k not in ("inventory", "hints")}


def _explain(session: Session, ruleset: rules.RuleSet, key) -> dict:
    node = lookup.node(session, key)
    data = facts(session, node)
    choice = rules.evaluate(ruleset, data, explain=True)
    return {"node": node.name, "facts": _summary(data), "rules": choice.verdicts,
            "choice": choice.as_dict(), "default_applies": choice.rule is None}


def explain(session: Session, key) -> dict:
    """Every stored rule's verdict on the node and why, and what it gets."""
    return {**_explain(session, current(session), key), "saved": True}


def test(session: Session, document, key) -> dict:
    """Like `explain`, with rules that are not saved (a mapping or YAML text): nothing is written."""
    ruleset, _ = parse(document)
    return {**_explain(session, ruleset, key), "saved": False}


# --- tags ---

def _replace_tags(session: Session, wanted: dict[int, tuple[str, ...]]) -> None:
    for part in chunks(list(wanted)):
        session.execute(delete(NodeTag).where(NodeTag.node_id.in_(part)))
        rows = [{"node_id": i, "tag": t} for i in part for t in wanted[i]]
        if rows:
            session.execute(insert(NodeTag), rows)


def refresh_tags(session: Session, nodes: list[Node] | None = None, fresh: bool = False) -> int:
    """Compute the tags of `nodes` (every node without) from the stored rules; answers how many
    nodes have at least one tag. `fresh`: `nodes` (loaded, with their inventory and hints) were
    created in this transaction, so they have no tags to delete and are not read again."""
    ruleset = current(session)
    if fresh and nodes:
        return _tag_fresh(session, ruleset, nodes)
    if nodes is None:
        ids = list(session.scalars(select(Node.id).order_by(Node.id)))
    else:
        ids = [n.id for n in nodes]
    wanted: dict[int, tuple[str, ...]] = {}
    for part in chunks(ids):
        bound = _bindings(session, part)
        q = select(Node).where(Node.id.in_(part)).options(
            load_only(Node.id, Node.name, Node.state, Node.os, Node.admin, Node.discovery, Node.hints))
        for node in session.scalars(q):
            wanted[node.id] = rules.evaluate(ruleset, _facts(node, bound[node.id])).tags
    session.flush()
    _replace_tags(session, wanted)
    for node in session.identity_map.values():  # the loaded nodes' tag lists are read again
        if isinstance(node, Node) and node.id in wanted:
            session.expire(node, ["tag_rows"])
    return sum(1 for tags in wanted.values() if tags)


def _tag_fresh(session: Session, ruleset: rules.RuleSet, nodes: list[Node]) -> int:
    ids = [n.id for n in nodes]
    # Without rules only the default and the node's own tags count: its bindings are not asked for.
    bound = _bindings(session, ids) if ruleset.rules else {i: (set(), set()) for i in ids}
    wanted = {n.id: rules.evaluate(ruleset, _facts(n, bound[n.id])).tags for n in nodes}
    rows = [{"node_id": i, "tag": t} for i, tags in wanted.items() for t in tags]
    if rows:
        session.execute(insert(NodeTag), rows)
        for node in nodes:
            session.expire(node, ["tag_rows"])
    return sum(1 for tags in wanted.values() if tags)


def apply(session: Session, actor: str = "system") -> dict:
    """Compute every node's tags again (after roles were bound, say)."""
    tagged = refresh_tags(session)
    record(session, [{"object_type": "os_rules", "object_id": 1, "action": "apply", "actor": actor,
                      "message": f"tags computed again: {tagged} node(s) tagged"}])
    return {"nodes_tagged": tagged}

"""OS rules under /api/v2/os_rules: which OS, root-device hints and tags each node gets
(crowbar.services.os_rules; the rules' format is crowbar.provisioner.rules, docs/os-deployment.md).

GET answers the rules with an ETag; PUT replaces them (a mapping, or the YAML text) and computes
every node's tags again; `explain/{node}` shows every rule's verdict on a node and why; `test`
does the same for rules that are not saved; `apply` computes the tags again.
"""

from __future__ import annotations

from typing import Any

from fastapi import APIRouter, Depends, Response
from pydantic import BaseModel, Field

from crowbar.api import deps, errors
from crowbar.api.deps import ETAG, Actor, IfMatch, UnitOfWork, with_etag
from crowbar.services import os_rules

router = APIRouter(prefix="/api/v2", tags=["os rules"], dependencies=[Depends(deps.actor)])


class RulesIn(BaseModel):
    rules: dict[str, Any] | str = Field(description="the rules document: a mapping, or its YAML text")


class RulesTest(RulesIn):
    node: str = Field(description="the node (name or id) to try them on")


@router.get("/os_rules", responses={200: {"headers": ETAG}})
def show_rules(s: UnitOfWork, response: Response):
    """The rules in order, the default, the YAML as it was set, who set it when."""
    return with_etag(response, os_rules.show(s))


@router.put("/os_rules", responses=errors.responses(412))
def set_rules(body: RulesIn, s: UnitOfWork, who: Actor, if_match: IfMatch = None):
    """Replace the rules (checked whole: nothing is saved when one rule is wrong); every node's tags
    are computed again."""
    return os_rules.set_rules(s, body.rules, actor=who, if_match=if_match)


@router.get("/os_rules/explain/{key}")
def explain(key: str, s: UnitOfWork):
    """Every rule's verdict on the node (matched, the condition's value, the values of its parts),
    the rule that decides and what the node gets."""
    return os_rules.explain(s, key)


@router.post("/os_rules/test")
def test_rules(body: RulesTest, s: UnitOfWork):
    """`explain` with rules that are not saved: nothing is written."""
    return os_rules.test(s, body.rules, body.node)


@router.post("/os_rules/apply")
def apply_rules(s: UnitOfWork, who: Actor):
    """Compute every node's tags again (after roles were bound: conditions may read them)."""
    return os_rules.apply(s, actor=who)

"""Deployments: a tree under `system`; binding roles to nodes in them; commit, propose, role data
(crowbar.services.deployments)."""

from __future__ import annotations

from fastapi import APIRouter, Depends, Response
from pydantic import BaseModel

from crowbar.api import deps, errors
from crowbar.api.deps import ETAG, Actor, IfMatch, Paging, UnitOfWork, with_etag
from crowbar.services import deployments

router = APIRouter(prefix="/api/v2", tags=["deployments"], dependencies=[Depends(deps.actor)])


class DeploymentIn(BaseModel):
    name: str
    parent: str | None = None
    description: str = ""


class BindIn(BaseModel):
    """The role and its nodes: one of `node`, `nodes` or `tag`."""

    role: str
    node: str | None = None
    nodes: list[str] | None = None
    tag: str | None = None


class RoleData(BaseModel):
    data: dict


@router.get("/deployments")
def list_deployments(s: UnitOfWork, page: Paging, state: str | None = None, name: str | None = None):
    """Deployments by id; `state` (proposed, committed) and `name` (a prefix) filter them."""
    return page.answer(deployments.list_deployments(s, state=state, name=name, limit=page.fetch,
                                                    marker=page.marker))


@router.post("/deployments", status_code=201)
def create_deployment(body: DeploymentIn, s: UnitOfWork, who: Actor):
    return deployments.create_deployment(s, body.name, body.parent, body.description, actor=who)


@router.get("/deployments/{key}")
def show_deployment(key: str, s: UnitOfWork):
    return deployments.show_deployment(s, key)


@router.delete("/deployments/{key}")
def delete_deployment(key: str, s: UnitOfWork, who: Actor):
    return deployments.delete_deployment(s, key, actor=who)


@router.post("/deployments/{key}/commit")
def commit_deployment(key: str, s: UnitOfWork, who: Actor):
    """Commit: the proposed data and noderoles become runnable. Roles bound by tag are first bound
    to the nodes that gained the tag since (`tag_binds`); one that holds the role elsewhere: 409."""
    return deployments.commit(s, key, actor=who)


@router.post("/deployments/{key}/propose")
def propose_deployment(key: str, s: UnitOfWork, who: Actor):
    return deployments.propose(s, key, actor=who)


@router.post("/deployments/{key}/bind", status_code=201)
def bind(key: str, body: BindIn, s: UnitOfWork, who: Actor):
    """Bind a role (and what it requires) to one `node`, a list of `nodes` or every node tagged
    `tag`, in one transaction: all of them or none. A bind by tag is remembered: a commit binds the
    nodes that gained the tag since. A tag no node has: 404 naming it."""
    return deployments.bind(s, key, body.role, body.node, actor=who, nodes=body.nodes, tag=body.tag)


@router.get("/deployment_roles")
def deployment_roles(deployment: str, s: UnitOfWork):
    """The roles bound in a deployment, with their proposed and committed data (one list, not
    pages: a deployment binds each role at most once, so the role catalog bounds it)."""
    return deployments.deployment_roles(s, deployment)


@router.get("/deployments/{key}/roles/{role}", responses={200: {"headers": ETAG}})
def role_data(key: str, role: str, s: UnitOfWork, response: Response):
    """A bound role's proposed data (the next commit hands it to the role's noderoles) and committed
    data, with its ETag: send it as If-Match with a change."""
    return with_etag(response, deployments.role_data(s, key, role))


@router.put("/deployments/{key}/roles/{role}", responses={200: {"headers": ETAG}, **errors.responses(412)})
def set_role_data(key: str, role: str, body: RoleData, s: UnitOfWork, who: Actor, response: Response,
                  if_match: IfMatch = None):
    """Replace a bound role's proposed data (the deployment is proposed again; commit to run it)."""
    return with_etag(response, deployments.set_role_data(s, key, role, body.data, actor=who, if_match=if_match))

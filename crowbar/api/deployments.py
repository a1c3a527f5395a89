"""Deployments: a tree under `system`; binding roles to nodes in them; commit, propose, role data
(crowbar.services.deployments)."""

from __future__ import annotations

from fastapi import APIRouter, Depends
from pydantic import BaseModel

from crowbar.api import deps
from crowbar.api.deps import Actor, Paging, UnitOfWork
from crowbar.services import deployments

router = APIRouter(prefix="/api/v2", tags=["deployments"], dependencies=[Depends(deps.actor)])


class DeploymentIn(BaseModel):
    name: str
    parent: str | None = None
    description: str = ""


class BindIn(BaseModel):
    role: str
    node: str


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
    return deployments.commit(s, key, actor=who)


@router.post("/deployments/{key}/propose")
def propose_deployment(key: str, s: UnitOfWork, who: Actor):
    return deployments.propose(s, key, actor=who)


@router.post("/deployments/{key}/bind", status_code=201)
def bind(key: str, body: BindIn, s: UnitOfWork, who: Actor):
    return deployments.bind(s, key, body.role, body.node, actor=who)


@router.get("/deployment_roles")
def deployment_roles(deployment: str, s: UnitOfWork):
    """The roles bound in a deployment, with their proposed and committed data (one list, not
    pages: a deployment binds each role at most once, so the role catalog bounds it)."""
    return deployments.deployment_roles(s, deployment)


@router.put("/deployments/{key}/roles/{role}")
def set_role_data(key: str, role: str, body: RoleData, s: UnitOfWork, who: Actor):
    return deployments.set_role_data(s, key, role, body.data, actor=who)

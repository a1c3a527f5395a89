"""Users (admins only) and API tokens (every user: its own; an admin: everyone's)
(crowbar.services.users). A token is in the answer once: when it is created or rotated."""

from __future__ import annotations

from fastapi import APIRouter, Depends, Query
from pydantic import BaseModel, ConfigDict, Field

from crowbar.api import deps
from crowbar.api.deps import Actor, CallerOf, Paging, UnitOfWork
from crowbar.services import users

router = APIRouter(prefix="/api/v2", tags=["users"], dependencies=[Depends(deps.caller), Depends(deps.admin_only)])
tokens = APIRouter(prefix="/api/v2", tags=["tokens"], dependencies=[Depends(deps.caller), Depends(deps.any_user)])

EXPIRES_IN = Field(users.DEFAULT_EXPIRY, description="seconds until the token expires (60 to 10 years); null: never",
                   json_schema_extra={"minimum": 60, "maximum": users.MAX_EXPIRY})


class UserIn(BaseModel):
    model_config = ConfigDict(extra="forbid")
    name: str = Field(description="a lower-case letter, then letters, digits, '.', '_', '-'")
    role: str = Field(description="admin, operator or viewer")
    description: str = ""


class UserPatch(BaseModel):
    model_config = ConfigDict(extra="forbid")
    role: str | None = None
    description: str | None = None


class TokenIn(BaseModel):
    model_config = ConfigDict(extra="forbid")
    name: str = Field(description="unique among the user's tokens")
    user: str | None = Field(None, description="whose token (default: the caller's own; another's: admins only)")
    expires_in: int | None = EXPIRES_IN


class RotateIn(BaseModel):
    model_config = ConfigDict(extra="forbid")
    expires_in: int | None = EXPIRES_IN


@router.get("/users")
def list_users(s: UnitOfWork, page: Paging, role: str | None = None):
    return page.answer(users.list_users(s, role=role, limit=page.fetch, marker=page.marker))


@router.post("/users", status_code=201)
def create_user(body: UserIn, s: UnitOfWork, who: Actor):
    return users.create_user(s, body.name, body.role, body.description, actor=who)


@router.get("/users/{key}")
def show_user(key: str, s: UnitOfWork):
    return users.show_user(s, key)


@router.patch("/users/{key}")
def update_user(key: str, body: UserPatch, s: UnitOfWork, who: Actor):
    return users.update_user(s, key, role=body.role, description=body.description, actor=who)


@router.delete("/users/{key}")
def delete_user(key: str, s: UnitOfWork, caller: CallerOf):
    return users.delete_user(s, key, caller=caller, actor=caller.name)


@tokens.get("/whoami")
def whoami(s: UnitOfWork, caller: CallerOf):
    """The user this request's token speaks for, its role, and the token (never its secret)."""
    return users.whoami(s, caller)


@tokens.get("/tokens")
def list_tokens(s: UnitOfWork, page: Paging, caller: CallerOf,
                user: str | None = Query(None, description="this user's tokens (another's: admins only)")):
    """Tokens by id: the caller's own; an admin's: everyone's. Never their secrets."""
    return page.answer(users.list_tokens(s, caller, user=user, limit=page.fetch, marker=page.marker))


@tokens.post("/tokens", status_code=201)
def create_token(body: TokenIn, s: UnitOfWork, caller: CallerOf):
    """A new token; `token` in the answer is its secret, shown this once."""
    return users.create_token(s, caller, body.name, user=body.user, expires_in=body.expires_in)


@tokens.get("/tokens/{key}")
def show_token(key: str, s: UnitOfWork, caller: CallerOf):
    return users.show_token(s, caller, key)


@tokens.post("/tokens/{key}/rotate")
def rotate_token(key: str, s: UnitOfWork, caller: CallerOf, body: RotateIn | None = None):
    """A new secret for the token (shown this once); the old one is refused from now on."""
    return users.rotate_token(s, caller, key, expires_in=(body or RotateIn()).expires_in)


@tokens.delete("/tokens/{key}")
def revoke_token(key: str, s: UnitOfWork, caller: CallerOf):
    return users.revoke_token(s, caller, key)

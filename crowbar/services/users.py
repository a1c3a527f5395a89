"""Users, their roles, and their API tokens.

Roles, each allowed what the ones before it are (crowbar.services.auth.ROLES):
- viewer: reads (GET) every admin route; manages its own tokens;
- operator: also every change (nodes, deployments, anneal, power, networks, barclamps);
- admin: also users and everyone's tokens.
Which role a route needs is decided at the edge (crowbar.api.edge), before the route runs.

A token belongs to one user and has a name unique for that user (stored as `user/name`), an
expiry (`expires_in` seconds from its creation or rotation; None: never), and is shown once: when
it is created and when it is rotated (a new secret, the old one refused from then on). Revoking
deletes it. Every change is an event by the real actor; no event or log line holds a token.
"""

from __future__ import annotations

import re
from datetime import timedelta

from sqlalchemy import func, select
from sqlalchemy.orm import Session

from crowbar.db.events import record
from crowbar.db.models import ApiToken, User, utcnow
from crowbar.db.sql import keyset
from crowbar.errors import Conflict, Forbidden, InvalidInput, NotFound
from crowbar.services import auth, lookup
from crowbar.services.auth import ROLES, Caller

USER_NAME = re.compile(r"^[a-z][a-z0-9._-]{0,63}$")  # starts with a letter: never read as an id
TOKEN_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]{0,62}$")
DEFAULT_EXPIRY = 90 * 24 * 3600  # seconds
MAX_EXPIRY = 10 * 365 * 24 * 3600


def _role(role: str) -> str:
    if role not in ROLES:
        raise InvalidInput(f"role {role!r} is not one of {', '.join(ROLES)}", field="role")
    return role


def user_dict(user: User, tokens: int | None = None) -> dict:
    out = {"id": user.id, "name": user.name, "role": user.role, "description": user.description,
           "created_at": user.created_at}
    if tokens is not None:
        out["tokens"] = tokens
    return out


def _user(session: Session, key) -> User:
    key = str(key).strip()
    row = None
    if lookup.is_id(key):
        number = lookup.as_id(key)
        row = session.get(User, number) if number is not None else None
    else:
        row = session.scalar(select(User).where(User.name == key))
    if row is None:
        raise NotFound(f"user {key!r} does not exist", field="user")
    return row


def _admins(session: Session) -> int:
    return session.scalar(select(func.count()).select_from(User).where(User.role == "admin"))


def list_users(session: Session, *, role: str | None = None, limit: int | None = None,
               marker: int | None = None) -> list[dict]:
    q = select(User)
    if role:
        q = q.where(User.role == _role(role))
    return [user_dict(u) for u in session.scalars(keyset(q, User.id, limit, marker))]


def show_user(session: Session, key) -> dict:
    user = _user(session, key)
    count = session.scalar(select(func.count()).select_from(ApiToken).where(ApiToken.user_id == user.id))
    return user_dict(user, tokens=count)


def create_user(session: Session, name: str, role: str, description: str = "", *, actor: str = "system") -> dict:
    if not isinstance(name, str) or not USER_NAME.match(name):
        raise InvalidInput(f"user name {name!r} is not valid: a lower-case letter, then up to 63 lower-case "
                           "letters, digits, '.', '_' or '-'", field="name")
    _role(role)
    if session.scalar(select(User.id).where(User.name == name)) is not None:
        raise Conflict(f"user {name!r} already exists", field="name")
    user = User(name=name, role=role, description=description or "")
    session.add(user)
    session.flush()
    record(session, [{"object_type": "user", "object_id": user.id, "action": "create", "actor": actor,
                      "to_state": role, "message": f"user {name!r} created with the role {role}"}])
    return user_dict(user, tokens=0)


def update_user(session: Session, key, *, role: str | None = None, description: str | None = None,
                actor: str = "system") -> dict:
    user = _user(session, key)
    if role is not None and _role(role) != user.role:
        if user.role == "admin" and _admins(session) <= 1:
            raise Conflict(f"user {user.name!r} is the last admin: make another user admin first", field="role")
        record(session, [{"object_type": "user", "object_id": user.id, "action": "set-role", "actor": actor,
                          "from_state": user.role, "to_state": role}])
        user.role = role
    if description is not None:
        user.description = description
    session.flush()
    return show_user(session, user.id)


def delete_user(session: Session, key, *, caller: Caller | None = None, actor: str = "system") -> dict:
    """Delete a user and every token it has."""
    user = _user(session, key)
    if caller is not None and caller.user_id == user.id:
        raise Conflict("you cannot delete your own user: another admin can", field="user")
    if user.role == "admin" and _admins(session) <= 1:
        raise Conflict(f"user {user.name!r} is the last admin", field="user")
    out = user_dict(user)
    session.delete(user)
    session.flush()
    record(session, [{"object_type": "user", "object_id": out["id"], "action": "delete", "actor": actor,
                      "from_state": out["role"], "message": f"user {out['name']!r} and its tokens deleted"}])
    return out


# -- tokens ------------------------------------------------------------------------------------
def token_dict(row: ApiToken, user: User, secret: str | None = None) -> dict:
    now = utcnow()
    out = {"id": row.id, "user": user.name, "name": row.name.partition("/")[2] or row.name,
           "created_at": row.created_at, "rotated_at": row.rotated_at, "expires_at": row.expires_at,
           "expired": row.expires_at is not None and row.expires_at <= now}
    if secret is not None:
        out["token"] = secret  # shown once: it is stored only as a hash
    return out


def _may_manage(caller: Caller, user: User) -> None:
    if caller.user_id != user.id and not caller.may("admin"):
        raise Forbidden("only an admin may manage another user's tokens", field="user")


def _expiry(expires_in: int | None):
    if expires_in is None:
        return None
    if isinstance(expires_in, bool) or not isinstance(expires_in, int) or not 60 <= expires_in <= MAX_EXPIRY:
        raise InvalidInput(f"expires_in must be whole seconds from 60 to {MAX_EXPIRY} (10 years), or null for a "
                           "token that never expires", field="expires_in")
    return utcnow() + timedelta(seconds=expires_in)


def _token(session: Session, key) -> tuple[ApiToken, User]:
    number = lookup.as_id(key)
    row = session.get(ApiToken, number) if number is not None else None
    user = session.get(User, row.user_id) if row is not None and row.kind == "user" and row.user_id else None
    if user is None:
        raise NotFound(f"token {str(key)!r} does not exist", field="token")
    return row, user


def list_tokens(session: Session, caller: Caller, *, user: str | None = None, limit: int | None = None,
                marker: int | None = None) -> list[dict]:
    """Tokens by id: the caller's own; an admin's, everyone's (or `user`'s)."""
    q = select(ApiToken, User).join(User, User.id == ApiToken.user_id).where(ApiToken.kind == "user")
    if user is not None:
        owner = _user(session, user)
        _may_manage(caller, owner)
        q = q.where(ApiToken.user_id == owner.id)
    elif not caller.may("admin"):
        q = q.where(ApiToken.user_id == caller.user_id)
    return [token_dict(t, u) for t, u in session.execute(keyset(q, ApiToken.id, limit, marker))]


def show_token(session: Session, caller: Caller, key) -> dict:
    row, owner = _token(session, key)
    _may_manage(caller, owner)
    return token_dict(row, owner)


def create_token(session: Session, caller: Caller, name: str, *, user: str | None = None,
                 expires_in: int | None = DEFAULT_EXPIRY) -> dict:
    """A new token for `user` (default: the caller); the answer holds the token, once."""
    owner = _user(session, user) if user is not None else _user(session, caller.user_id)
    _may_manage(caller, owner)
    if not isinstance(name, str) or not TOKEN_NAME.match(name):
        raise InvalidInput(f"token name {name!r} is not valid: up to 63 letters, digits, '.', '_' or '-'",
                           field="name")
    full = f"{owner.name}/{name}"
    if session.scalar(select(ApiToken.id).where(ApiToken.name == full)) is not None:
        raise Conflict(f"user {owner.name!r} already has a token named {name!r}", field="name")
    secret = auth.new_token()
    row = ApiToken(name=full, kind="user", user_id=owner.id, token_hash=auth.hash_token(secret),
                   expires_at=_expiry(expires_in))
    session.add(row)
    session.flush()
    record(session, [{"object_type": "token", "object_id": row.id, "action": "create", "actor": caller.name,
                      "message": f"token {name!r} of user {owner.name!r} created"
                                 + (f", expires {row.expires_at:%Y-%m-%d %H:%M} UTC" if row.expires_at else
                                    ", never expires")}])
    return token_dict(row, owner, secret)


def rotate_token(session: Session, caller: Caller, key, *, expires_in: int | None = DEFAULT_EXPIRY) -> dict:
    """A new secret for the token (the old one is refused from now on), with a new expiry."""
    row, owner = _token(session, key)
    _may_manage(caller, owner)
    secret = auth.new_token()
    row.token_hash, row.rotated_at, row.expires_at = auth.hash_token(secret), utcnow(), _expiry(expires_in)
    session.flush()
    record(session, [{"object_type": "token", "object_id": row.id, "action": "rotate", "actor": caller.name,
                      "message": f"token {token_dict(row, owner)['name']!r} of user {owner.name!r} rotated"}])
    return token_dict(row, owner, secret)


def revoke_token(session: Session, caller: Caller, key) -> dict:
    row, owner = _token(session, key)
    _may_manage(caller, owner)
    out = token_dict(row, owner)
    session.delete(row)
    session.flush()
    record(session, [{"object_type": "token", "object_id": out["id"], "action": "revoke", "actor": caller.name,
                      "message": f"token {out['name']!r} of user {owner.name!r} revoked"}])
    return out


def whoami(session: Session, caller: Caller) -> dict:
    row, owner = _token(session, caller.token_id)
    return {"user": owner.name, "role": owner.role, "token": token_dict(row, owner)}

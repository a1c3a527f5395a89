"""API tokens: random, shown once, stored only as a SHA-256 hash; and who a token speaks for.

A user's token (kind "user") speaks for its user, with the user's role (crowbar.services.users);
a node's token (kind "node") only for that node's agent. A token past its `expires_at` is refused.

The first admin's token is created on the server's first start and written to
`<data dir>/admin.token` (mode 0600) and to the per-user endpoint registry, where the local CLI
finds it by itself; `crowbar server reissue-admin-token` replaces it (a lost or leaked token).
"""

from __future__ import annotations

import hashlib
import hmac
import os
import secrets
from dataclasses import dataclass
from pathlib import Path

from sqlalchemy import select
from sqlalchemy.orm import Session

from crowbar.db.events import record
from crowbar.db.models import ApiToken, User, utcnow

ROLES = ("viewer", "operator", "admin")  # each may do what the ones before it may
ADMIN_USER = "admin"  # the first administrator, created with the server's first start
ADMIN_TOKEN = "admin/admin"  # its token (user/name), the one in <data dir>/admin.token


@dataclass(frozen=True)
class Caller:
    """Who a request speaks for: the user its token belongs to, that user's role, and the token."""

    user_id: int
    name: str
    role: str
    token_id: int

    def may(self, role: str) -> bool:
        """True when the caller's role is `role` or above it (viewer < operator < admin)."""
        return ROLES.index(self.role) >= ROLES.index(role)


def hash_token(token: str) -> str:
    return hashlib.sha256(token.encode()).hexdigest()


def new_token() -> str:
    return "cb_" + secrets.token_urlsafe(32)


def digest_of(token: str | None) -> str | None:
    """The stored form of `token` (what a row is looked up by); None for no token or one that is
    not text."""
    if not token:
        return None
    try:
        return hash_token(token)
    except UnicodeEncodeError:  # a header's bytes that are not text name no token
        return None


def still_valid(token_hash: str, expires_at, digest: str) -> bool:
    """Whether a token row found by `digest` is the token's (compared in constant time) and has
    not expired."""
    if not hmac.compare_digest(token_hash, digest):
        return False
    return expires_at is None or expires_at > utcnow()


def verify(session: Session, token: str | None) -> ApiToken | None:
    """The token row of `token` if it exists and has not expired, else None."""
    digest = digest_of(token)
    if digest is None:
        return None
    row = session.scalar(select(ApiToken).where(ApiToken.token_hash == digest))
    if row is None or not still_valid(row.token_hash, row.expires_at, digest):
        return None
    return row


def caller(session: Session, token: str | None) -> Caller | None:
    """Who `token` speaks for, when it is a valid user's token; None otherwise."""
    row = verify(session, token)
    if row is None or row.kind != "user" or row.user_id is None:
        return None
    user = session.get(User, row.user_id)
    return Caller(user.id, user.name, user.role, row.id) if user is not None else None


def is_expired_token(session: Session, token: str | None) -> bool:
    """True when `token` is a known token that has expired (the 401 says so)."""
    if not token:
        return False
    try:
        row = session.scalar(select(ApiToken).where(ApiToken.token_hash == hash_token(token)))
    except UnicodeEncodeError:
        return False
    return row is not None and row.expires_at is not None and row.expires_at <= utcnow()


def write_secret(path: Path, content: str) -> None:
    """Write a file only its owner can read (created 0600, never world-readable for an instant)."""
    path.parent.mkdir(parents=True, exist_ok=True, mode=0o700)
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "w") as fh:
        fh.write(content + "\n")
    os.chmod(path, 0o600)


def _admin_user(session: Session) -> User:
    user = session.scalar(select(User).where(User.name == ADMIN_USER))
    if user is None:
        user = User(name=ADMIN_USER, role="admin", description="the first administrator")
        session.add(user)
        session.flush()
        record(session, [{"object_type": "user", "object_id": user.id, "action": "create", "to_state": "admin",
                          "message": "the first administrator"}])
    return user


def ensure_admin_token(session: Session, token_file: Path) -> str | None:
    """Create the first admin and its token on first start. Returns the plain token when it was created."""
    if session.scalar(select(ApiToken.id).where(ApiToken.name == ADMIN_TOKEN)) is not None:
        return None
    user = _admin_user(session)
    token = new_token()
    row = ApiToken(name=ADMIN_TOKEN, kind="user", user_id=user.id, token_hash=hash_token(token))
    session.add(row)
    session.flush()
    write_secret(token_file, token)
    record(session, [{"object_type": "token", "object_id": row.id, "action": "create",
                      "message": f"token {ADMIN_TOKEN!r} of user {user.name!r} created"}])
    return token


def reissue_admin_token(session: Session, token_file: Path, actor: str = "system") -> str:
    """A new admin token (the old one stops working at once), written to `token_file`; the user
    `admin` is made again, with the role admin, if it was deleted or demoted. For the host's
    operator who lost the token or suspects it leaked (`crowbar server reissue-admin-token`)."""
    user = _admin_user(session)
    if user.role != "admin":
        record(session, [{"object_type": "user", "object_id": user.id, "action": "set-role", "actor": actor,
                          "from_state": user.role, "to_state": "admin"}])
        user.role = "admin"
    token = new_token()
    row = session.scalar(select(ApiToken).where(ApiToken.name == ADMIN_TOKEN))
    if row is None:
        row = ApiToken(name=ADMIN_TOKEN, kind="user", user_id=user.id, token_hash=hash_token(token))
        session.add(row)
    else:
        row.kind, row.user_id, row.node_id = "user", user.id, None
        row.token_hash, row.expires_at, row.rotated_at = hash_token(token), None, utcnow()
    session.flush()
    write_secret(token_file, token)
    record(session, [{"object_type": "token", "object_id": row.id, "action": "reissue", "actor": actor,
                      "message": f"token {ADMIN_TOKEN!r} of user {user.name!r} re-issued"}])
    return token

"""API tokens: random, shown once, stored only as a SHA-256 hash.

The admin token is created on the server's first start and written to `<data dir>/admin.token`
(mode 0600) and to the per-user endpoint registry, where the local CLI finds it by itself.
"""

from __future__ import annotations

import hashlib
import hmac
import os
import secrets
from pathlib import Path

from sqlalchemy import select
from sqlalchemy.orm import Session

from crowbar.db.events import record
from crowbar.db.models import ApiToken


def hash_token(token: str) -> str:
    return hashlib.sha256(token.encode()).hexdigest()


def new_token() -> str:
    return "cb_" + secrets.token_urlsafe(32)


def verify(session: Session, token: str | None) -> ApiToken | None:
    if not token:
        return None
    digest = hash_token(token)
    row = session.scalar(select(ApiToken).where(ApiToken.token_hash == digest))
    if row is not None and hmac.compare_digest(row.token_hash, digest):
        return row
    return None


def write_secret(path: Path, content: str) -> None:
    """Write a file only its owner can read (created 0600, never world-readable for an instant)."""
    path.parent.mkdir(parents=True, exist_ok=True, mode=0o700)
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "w") as fh:
        fh.write(content + "\n")
    os.chmod(path, 0o600)


def ensure_admin_token(session: Session, token_file: Path) -> str | None:
    """Create the admin token on first start. Returns the plain token when it was created."""
    if session.scalar(select(ApiToken.id).where(ApiToken.name == "admin")) is not None:
        return None
    token = new_token()
    session.add(ApiToken(name="admin", kind="admin", token_hash=hash_token(token)))
    session.flush()
    write_secret(token_file, token)
    record(session, [{"object_type": "token", "action": "create", "message": "admin token created"}])
    return token

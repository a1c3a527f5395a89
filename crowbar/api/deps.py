"""FastAPI dependencies shared by every router: the database session and the caller's identity.

Both read the Database from `request.app.state.db` (set by create_app), so routers defined in
other modules (crowbar.api.network) authenticate exactly like the core routes.
"""

from __future__ import annotations

from collections.abc import Iterator

from fastapi import Request
from sqlalchemy.orm import Session

from crowbar.db.session import pending_work
from crowbar.errors import Unauthorized
from crowbar.services import auth


def session(request: Request) -> Iterator[Session]:
    with request.app.state.db.session() as s:
        yield s


def unit_of_work(request: Request) -> Iterator[Session]:
    """One unit of work per request: committed when the route returned (use with
    `Depends(unit_of_work, scope="function")`, so the commit comes before the answer), rolled back
    on error; then the loops it made work for are woken (`signal_work`)."""
    settings = request.app.state.settings
    with settings.db.session() as s:
        yield s
    for kind in sorted(pending_work(s)):
        settings.wake(kind)


def actor(request: Request) -> str:
    """The name of the admin token's owner; 401 without a valid admin token."""
    header = request.headers.get("authorization", "")
    token = header[7:].strip() if header.lower().startswith("bearer ") else request.headers.get("x-auth-token")
    with request.app.state.db.session() as s:
        row = auth.verify(s, token)
        if row is None:
            raise Unauthorized("a valid API token is required (Authorization: Bearer <token>)")
        if row.kind != "admin":
            raise Unauthorized("this token may not use the admin API")
        return row.name

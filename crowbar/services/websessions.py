"""Browser sessions of the web UI (docs/ui.md, docs/security.md).

Signing in exchanges a user's API token for a session: a new token of that user, named
`ui-session.<hex>`, that expires after SESSION_SECONDS. The browser keeps it only in an HttpOnly,
SameSite=Strict cookie (crowbar.api.websession), so page scripts never see a secret; the API token
typed at sign-in is not stored anywhere. A session is an ordinary user token, so it has the user's
role, every change made through it is an event by that user, it shows in `crowbar tokens list`
and revoking it (or signing out) ends the session.

There are no passwords: users authenticate with API tokens (crowbar.services.users), so the UI
signs in with one.

CSRF: every change sent with the cookie must carry `X-CSRF-Token: csrf_token(session secret)`, an
HMAC of a fixed label keyed by the session's secret. Only someone who can read the secret, or the
sign-in answer and GET /session (which a cross-site page cannot read), can compute it.
"""

from __future__ import annotations

import hashlib
import hmac
import secrets
from datetime import timedelta

from sqlalchemy import delete, select
from sqlalchemy.orm import Session

from crowbar.db.events import record
from crowbar.db.models import ApiToken, User, utcnow
from crowbar.errors import Unauthorized
from crowbar.services import auth
from crowbar.services.auth import Caller

SESSION_SECONDS = 12 * 3600
SESSION_PREFIX = "ui-session."


def csrf_token(secret: str) -> str:
    """The CSRF token of the session whose secret is `secret`."""
    return hmac.new(secret.encode(), b"crowbar-ui-csrf", hashlib.sha256).hexdigest()


def csrf_ok(secret: str, sent: str | None) -> bool:
    return bool(sent) and hmac.compare_digest(csrf_token(secret), sent)


def sign_in(session: Session, token: str | None) -> dict:
    """A new session for the user `token` (an API token) speaks for; Unauthorized otherwise.
    The answer holds the session's secret (for the cookie only) and its CSRF token."""
    who = auth.caller(session, (token or "").strip())
    if who is None:
        raise Unauthorized("sign-in needs a valid, unexpired API token of a user (crowbar tokens create)",
                           field="token")
    now = utcnow()
    # Expired sessions of this user are only clutter in their token list.
    session.execute(delete(ApiToken).where(ApiToken.user_id == who.user_id, ApiToken.expires_at <= now,
                                           ApiToken.name.startswith(f"{who.name}/{SESSION_PREFIX}")))
    secret = auth.new_token()
    row = ApiToken(name=f"{who.name}/{SESSION_PREFIX}{secrets.token_hex(6)}", kind="user", user_id=who.user_id,
                   token_hash=auth.hash_token(secret), expires_at=now + timedelta(seconds=SESSION_SECONDS))
    session.add(row)
    session.flush()
    record(session, [{"object_type": "token", "object_id": row.id, "action": "sign-in", "actor": who.name,
                      "message": f"web UI session of user {who.name!r} (signed in with token "
                                 f"{_token_name(session, who.token_id)!r}), expires {row.expires_at:%Y-%m-%d %H:%M} UTC"}])
    return {"secret": secret, "csrf": csrf_token(secret), "user": who.name, "role": who.role,
            "expires_at": row.expires_at.isoformat(), "max_age": SESSION_SECONDS}


def _token_name(session: Session, token_id: int) -> str:
    name = session.scalar(select(ApiToken.name).where(ApiToken.id == token_id)) or ""
    return name.partition("/")[2] or name


def show(session: Session, caller: Caller, secret: str | None) -> dict:
    """Who the session (or token) speaks for, its role, and (for a cookie session) its CSRF token."""
    row = session.get(ApiToken, caller.token_id)
    user = session.get(User, caller.user_id)
    return {"user": user.name, "role": user.role,
            "expires_at": row.expires_at.isoformat() if row and row.expires_at else None,
            "csrf": csrf_token(secret) if secret else None}


def sign_out(session: Session, caller: Caller) -> dict:
    """End the caller's session (its token is deleted). A request made with an API token instead of
    a session ends nothing: revoke tokens with DELETE /tokens/{id}."""
    row = session.get(ApiToken, caller.token_id)
    ended = row is not None and (row.name.partition("/")[2]).startswith(SESSION_PREFIX)
    if ended:
        session.delete(row)
        session.flush()
        record(session, [{"object_type": "token", "object_id": caller.token_id, "action": "sign-out",
                          "actor": caller.name, "message": f"web UI session of user {caller.name!r} ended"}])
    return {"signed_out": ended}

"""The web UI's session (crowbar.services.websessions): sign in with an API token, who am I with the
CSRF token, sign out. The session lives in an HttpOnly, SameSite=Strict cookie
(`deps.SESSION_COOKIE`, Secure over HTTPS); the edge accepts it like a token, and asks changes
made with it for the CSRF token (crowbar.api.deps.authenticate)."""

from __future__ import annotations

from fastapi import APIRouter, Depends, Request
from pydantic import BaseModel, ConfigDict, Field

from crowbar.api import body, deps
from crowbar.api.deps import CallerOf, UnitOfWork
from crowbar.errors import CrowbarError
from crowbar.services import websessions

# Signing in needs no token (it is how a browser gets one); the others are every user's.
open_router = APIRouter(prefix="/api/v2", tags=["session"])
router = APIRouter(prefix="/api/v2", tags=["session"], dependencies=[Depends(deps.caller), Depends(deps.any_user)])


class SignIn(BaseModel):
    model_config = ConfigDict(extra="forbid")
    token: str | None = Field(None, description="an API token of the user (crowbar tokens create)", max_length=512)


def _cookie(response, request: Request, value: str, max_age: int) -> None:
    response.set_cookie(deps.SESSION_COOKIE, value, max_age=max_age, path="/", httponly=True, samesite="strict",
                        secure=request.url.scheme == "https")


@open_router.post("/session", status_code=201)
def sign_in(request: Request, creds: SignIn, s: UnitOfWork):
    """Exchange a user's API token for a web UI session: the answer sets the session cookie and
    holds the CSRF token to send as `X-CSRF-Token` with every change (never the session's secret)."""
    if not body.is_json(request.headers.get("content-type")) or not request.headers.get("content-type"):
        # a cross-site HTML form cannot send JSON: no sign-in forced on a visitor's browser
        raise CrowbarError("sign-in takes a JSON body (Content-Type: application/json)", field="content-type")
    out = websessions.sign_in(s, creds.token)
    secret, max_age = out.pop("secret"), out.pop("max_age")
    response = body.JSONResponse(out, status_code=201)
    _cookie(response, request, secret, max_age)
    return response


@router.get("/session")
def show_session(request: Request, s: UnitOfWork, caller: CallerOf):
    """The signed-in user, its role, and the session's CSRF token (null when the request came with an
    API token instead of the cookie)."""
    return websessions.show(s, caller, deps.session_secret(request.headers)
                            if request.headers.get("authorization") is None
                            and request.headers.get("x-auth-token") is None else None)


@router.delete("/session")
def sign_out(request: Request, s: UnitOfWork, caller: CallerOf):
    """End the session (its token is deleted) and clear the cookie."""
    response = body.JSONResponse(websessions.sign_out(s, caller))
    _cookie(response, request, "", 0)
    return response

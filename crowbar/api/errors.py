"""Every error the API answers has one body: {"error": kind, "message": text, "field": name?}
(422s add "details": one {field, reason} per problem).

CrowbarError (raised by services) keeps its status and kind; request validation is 422 "invalid";
a database constraint is 409 "conflict" and a database that cannot be reached 503 "unavailable",
whether the route's flush or the unit of work's commit hit it (crowbar.api.deps.unit_of_work).
The router's own answers (no such path 404, wrong method 405) and a bug (500 "internal", nothing
of the exception in it) have the same body.

The OpenAPI document declares these answers on every route (`responses`, from create_app).
"""

from __future__ import annotations

import logging

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from pydantic import BaseModel, ConfigDict
from sqlalchemy.exc import IntegrityError, OperationalError
from starlette.exceptions import HTTPException

from crowbar.api.body import JSONResponse
from crowbar.errors import CrowbarError


KINDS = {400: "bad_request", 404: "not_found", 405: "method_not_allowed", 413: "too_large"}


def response_for(exc: Exception) -> JSONResponse | None:
    """The answer to `exc` (the handlers below, and the edge, which runs before them), or None
    for an exception that is not an answer (a bug: the server's 500)."""
    if isinstance(exc, CrowbarError):
        return JSONResponse(exc.to_dict(), status_code=exc.status, headers=getattr(exc, "headers", None))
    if isinstance(exc, HTTPException):  # the router's 404 and 405
        kind = KINDS.get(exc.status_code, "bad_request" if exc.status_code < 500 else "error")
        return JSONResponse({"error": kind, "message": str(exc.detail)}, status_code=exc.status_code,
                            headers=exc.headers)
    if isinstance(exc, OperationalError):
        return JSONResponse({"error": "unavailable", "message": f"database unavailable: {exc.orig}"},
                            status_code=503)
    if isinstance(exc, IntegrityError):
        # First line only: the database's DETAIL lines are for the server log, not for clients.
        first = (str(exc.orig).strip().splitlines() or ["constraint violated"])[0]
        return JSONResponse({"error": "conflict", "message": f"conflicts with existing data: {first}"},
                            status_code=409)
    return None


def _field_of(loc: tuple) -> str:
    parts = [str(p) for p in loc if p not in ("body", "query", "path")]
    return ".".join(parts) or "body"


async def _answer(_req: Request, exc: Exception):
    return response_for(exc)


async def _validation(_req: Request, exc: RequestValidationError):
    errs = exc.errors()
    first = errs[0] if errs else {"loc": (), "msg": "invalid request"}
    field = _field_of(tuple(first.get("loc", ())))
    return JSONResponse({"error": "invalid", "message": f"{field}: {first.get('msg')}", "field": field,
                         "details": [{"field": _field_of(tuple(e.get("loc", ()))), "reason": e.get("msg")}
                                     for e in errs]}, status_code=422)


async def _internal(_req: Request, exc: Exception):
    """A bug: the one error body, with nothing of the exception (the log has the traceback)."""
    logging.getLogger("crowbar.api").error("internal error", exc_info=exc)
    return JSONResponse({"error": "internal", "message": "internal server error (the server log has the "
                                                         "details)"}, status_code=500)


def install(app: FastAPI) -> None:
    for kind in (CrowbarError, IntegrityError, OperationalError, HTTPException):
        app.add_exception_handler(kind, _answer)
    app.add_exception_handler(Exception, _internal)  # Starlette's outermost handler: the 500
    app.add_exception_handler(RequestValidationError, _validation)


# -- the document ------------------------------------------------------------------------------
class Problem(BaseModel):
    field: str
    reason: str


class ErrorBody(BaseModel):
    """The body of every error (some add more: a network's 422 names the network and its problems)."""

    model_config = ConfigDict(extra="allow")
    error: str
    message: str
    field: str | None = None
    details: list[Problem] | None = None


WHY = {
    400: "A query parameter the route does not take",
    401: "No valid token: a user's route checks the token before it reads the body; the "
         "agent's routes need a node token",
    403: "The caller may not do this: its role is below the route's, or a missing or wrong proof",
    404: "An object the request names does not exist",
    409: "The current state forbids it, or it conflicts with existing data",
    412: "If-Match does not match the object's ETag: someone changed it since it was read (the answer's "
         "ETag header is the current one)",
    413: "The request body is over its size limit",
    422: "A parameter or the body is invalid (a JSON body must be strict JSON)",
    429: "Too many requests of this kind; Retry-After says when to try again",
    502: "A service Crowbar asked on the caller's behalf (the live Neutron API) did not answer, or "
         "answered something else than it should",
    503: "The database cannot be reached",
}
EDGE = (413, 422)  # any request: a body too large, a URL or body that is not valid
DATABASE = (404, 409, 503)  # a lookup, a conflict or a failed commit, the database unreachable


def responses(*codes: int, **why: str) -> dict:
    """OpenAPI `responses` declaring the error body (JSON, whatever the route's own answers are)
    for `codes`, described by `WHY` unless `why` says more for a code (`_409="..."`); `add_schemas`
    puts the body's schema in the document."""
    ref = {"$ref": f"#/components/schemas/{ErrorBody.__name__}"}
    return {code: {"description": why.get(f"_{code}", WHY[code]),
                   "content": {"application/json": {"schema": ref}}} for code in codes}


def add_schemas(spec: dict) -> dict:
    """`spec` (an OpenAPI document) with the error body's schema among its components."""
    schema = ErrorBody.model_json_schema(ref_template="#/components/schemas/{model}")
    found = spec.setdefault("components", {}).setdefault("schemas", {})
    found.update(schema.pop("$defs", {}))
    found[ErrorBody.__name__] = schema
    return spec

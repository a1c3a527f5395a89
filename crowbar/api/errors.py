"""Every error the API answers has one body: {"error": kind, "message": text, "field": name?}
(422s add "details": one {field, reason} per problem).

CrowbarError (raised by services) keeps its status and kind; request validation is 422 "invalid";
a database constraint is 409 "conflict" and a database that cannot be reached 503 "unavailable",
whether the route's flush or the unit of work's commit hit it (crowbar.api.deps.unit_of_work).
"""

from __future__ import annotations

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from sqlalchemy.exc import IntegrityError, OperationalError

from crowbar.errors import CrowbarError


def _field_of(loc: tuple) -> str:
    parts = [str(p) for p in loc if p not in ("body", "query", "path")]
    return ".".join(parts) or "body"


async def _crowbar_error(_req: Request, exc: CrowbarError):
    return JSONResponse(exc.to_dict(), status_code=exc.status, headers=exc.headers)


async def _validation(_req: Request, exc: RequestValidationError):
    errs = exc.errors()
    first = errs[0] if errs else {"loc": (), "msg": "invalid request"}
    field = _field_of(tuple(first.get("loc", ())))
    return JSONResponse({"error": "invalid", "message": f"{field}: {first.get('msg')}", "field": field,
                         "details": [{"field": _field_of(tuple(e.get("loc", ()))), "reason": e.get("msg")}
                                     for e in errs]}, status_code=422)


async def _integrity(_req: Request, exc: IntegrityError):
    # First line only: the database's DETAIL lines are for the server log, not for clients.
    first = (str(exc.orig).strip().splitlines() or ["constraint violated"])[0]
    return JSONResponse({"error": "conflict", "message": f"conflicts with existing data: {first}"},
                        status_code=409)


async def _operational(_req: Request, exc: OperationalError):
    return JSONResponse({"error": "unavailable", "message": f"database unavailable: {exc.orig}"},
                        status_code=503)


def install(app: FastAPI) -> None:
    app.add_exception_handler(CrowbarError, _crowbar_error)
    app.add_exception_handler(RequestValidationError, _validation)
    app.add_exception_handler(IntegrityError, _integrity)
    app.add_exception_handler(OperationalError, _operational)

"""Barclamps and the roles they provide (crowbar.services.catalog)."""

from __future__ import annotations

import json
from collections.abc import AsyncIterator
from typing import Annotated

from fastapi import APIRouter, Depends, Request
from fastapi.exceptions import RequestValidationError
from pydantic import BaseModel, Field, ValidationError
from starlette.requests import ClientDisconnect

from crowbar.api import deps, errors
from crowbar.api.deps import Actor, Paging, UnitOfWork
from crowbar.barclamps import limits
from crowbar.barclamps.limits import MAX_UPLOAD_BODY
from crowbar.errors import CrowbarError, InvalidInput, TooLarge
from crowbar.services import catalog

router = APIRouter(prefix="/api/v2", dependencies=[Depends(deps.actor)])


class BarclampIn(BaseModel):
    path: str | None = Field(None, description="A barclamp directory on the server")
    files: dict[str, str] | None = Field(None, description="Or the files themselves: relative path -> text")
    source: str | None = Field(None, description="Where the files came from (shown in errors and as source_path)")


class ClientGone(CrowbarError):
    """The client closed the connection before the import was committed: nothing is (499, which
    nobody reads: it is for the log)."""

    status = 499
    kind = "client_gone"


def _no_constant(name: str):
    raise ValueError(f"{name} is not JSON")


def _lone_surrogate(doc) -> bool:
    """Whether a string (or key) in `doc` holds a lone surrogate ("\\ud800"), which no database
    and no JSON answer can carry."""
    stack = [doc]
    while stack:
        item = stack.pop()
        if isinstance(item, dict):
            stack.extend(item.keys())
            stack.extend(item.values())
        elif isinstance(item, list):
            stack.extend(item)
        elif isinstance(item, str):
            try:
                item.encode("utf-8")
            except UnicodeEncodeError:
                return True
    return False


async def barclamp_upload(request: Request) -> AsyncIterator[BarclampIn]:
    """The body of POST /barclamps, read here rather than by FastAPI, so that its own size limit
    (MAX_UPLOAD_BODY, crowbar/barclamps/limits.py; larger than other bodies, since it carries files)
    holds before the body is read: a Content-Length above it is refused at once, a longer stream as
    soon as it passes it (413). Being a dependency, it runs after the admin token was checked.

    After the route returned and before the unit of work commits (this dependency is declared after
    it, so it is wound up first), it checks that the client is still there: an import the client
    gave up on (a timeout, ^C) is rolled back, not committed behind its back.
    """
    declared = request.headers.get("content-length")
    if declared is not None and declared.isascii() and declared.isdigit() and int(declared) > MAX_UPLOAD_BODY:
        raise TooLarge(f"the barclamp upload is {int(declared):,} bytes; the limit is {MAX_UPLOAD_BODY:,}",
                       field="body")
    chunks, size = [], 0
    try:
        async for chunk in request.stream():
            size += len(chunk)
            if size > MAX_UPLOAD_BODY:
                raise TooLarge(f"the barclamp upload is more than {MAX_UPLOAD_BODY:,} bytes, its limit",
                               field="body")
            chunks.append(chunk)
    except ClientDisconnect:
        raise ClientGone("the client closed the connection while sending the barclamp") from None
    try:
        doc = json.loads(b"".join(chunks), parse_constant=_no_constant)
    except (ValueError, RecursionError) as exc:
        raise InvalidInput(f"body: not valid JSON ({str(exc)[:200]})", field="body") from None
    if _lone_surrogate(doc):
        raise InvalidInput("body: a string holds a lone surrogate (\\ud800-\\udfff without its pair)", field="body")
    try:
        body = BarclampIn.model_validate(doc)
    except ValidationError as exc:
        raise RequestValidationError([{**e, "loc": ("body", *e["loc"])} for e in exc.errors(include_url=False)]) \
            from None
    yield body
    if await request.is_disconnected():
        raise ClientGone("the client closed the connection before the barclamp was committed; nothing was")


Upload = Annotated[BarclampIn, Depends(barclamp_upload, scope="function")]
_UPLOAD_DOC = {
    "requestBody": {"required": True, "content": {"application/json": {"schema": BarclampIn.model_json_schema()}}},
}


@router.get("/barclamps", tags=["barclamps"])
def list_barclamps(s: UnitOfWork, page: Paging, name: str | None = None):
    """Barclamps by id; `name` (a prefix) filters them."""
    return page.answer(catalog.list_barclamps(s, name=name, limit=page.fetch, marker=page.marker))


@router.post("/barclamps", status_code=201, tags=["barclamps"], openapi_extra=_UPLOAD_DOC,
             description=(
                 "Import (or update) a barclamp: from a directory on the server (`path`) or from its files "
                 f"(`files`: barclamp.yml and scripts/ROLE/NAME). Limits: barclamp.yml {limits.MAX_YAML_BYTES:,} "
                 f"bytes, each script {limits.MAX_SCRIPT_BYTES:,}, {limits.MAX_FILES} files and "
                 f"{limits.MAX_TOTAL_BYTES:,} bytes in all, this body {MAX_UPLOAD_BODY:,} bytes."),
             responses=errors.responses(
                 413, 422, _413=f"The body is larger than {MAX_UPLOAD_BODY:,} bytes",
                 _422="The barclamp is invalid; the message names the file, role and reason"))
def import_barclamp(s: UnitOfWork, who: Actor, body: Upload):
    return catalog.import_path_or_files(s, body.path, body.files, body.source, actor=who)


@router.get("/barclamps/{key}", tags=["barclamps"])
def show_barclamp(key: str, s: UnitOfWork):
    return catalog.show_barclamp(s, key)


@router.get("/roles", tags=["roles"])
def list_roles(s: UnitOfWork, page: Paging, barclamp: str | None = None, name: str | None = None):
    """Roles by id; `barclamp` and `name` (a prefix) filter them."""
    return page.answer(catalog.list_roles(s, barclamp, name=name, limit=page.fetch, marker=page.marker))


@router.get("/roles/{key}", tags=["roles"])
def show_role(key: str, s: UnitOfWork):
    return catalog.show_role(s, key)

"""JSON at the HTTP edge, both ways: how request bodies are read and how responses are written.

In: every JSON body is strict (crowbar.documents.loads_strict: no NaN or Infinity, no lone
surrogates or NUL, at most 64 levels deep) and at most `limit_for(path)` bytes: 1 MiB unless the
route is in `LIMITS`. The edge (crowbar.api.edge) applies `loads` to every JSON body before any
route or model sees it; a route that reads its body itself (discovery) calls `loads` too.
Out: `JSONResponse` never fails on a value stored before these rules (NaN, a lone surrogate): it
answers it readable (null, U+FFFD) rather than a 500.
"""

from __future__ import annotations

import json
import math
from email.message import Message
from typing import Any

from fastapi.responses import JSONResponse as _JSONResponse

from crowbar.barclamps.limits import MAX_UPLOAD_BODY
from crowbar.documents import loads_strict
from crowbar.errors import InvalidInput, TooLarge
from crowbar.provisioner.discovery import MAX_INVENTORY_BYTES

KiB, MiB = 1 << 10, 1 << 20
MAX_BODY = 1 * MiB
# Routes whose bodies may be larger or must be smaller than MAX_BODY, by path (as the route declares it).
LIMITS = {
    "/api/v2/discovery": MAX_INVENTORY_BYTES,  # an inventory; the only body anyone on the admin network may post
    "/api/v2/barclamps": MAX_UPLOAD_BODY,  # files of a barclamp (the import checks its own limits on them)
    "/api/v2/import": 256 * MiB,  # a whole server's state (crowbar.api.portable), barclamps' files included
    "/api/v2/deployments/import": 16 * MiB,  # a deployment document
}

# Routes that parse their body themselves, as strict JSON by a rule of their own, so the edge only
# limits its size: discovery decodes an inventory's non-UTF-8 bytes (firmware DMI strings) as
# U+FFFD instead of refusing the machine (crowbar.provisioner.discovery.parse_inventory).
OWN_PARSER = frozenset({"/api/v2/discovery"})


def limit_for(route_path: str | None, default: int = MAX_BODY) -> int:
    return LIMITS.get(route_path or "", default)


def too_large(size: int, limit: int) -> TooLarge:
    return TooLarge(f"the request body is {size:,} bytes or more; at most {limit:,} bytes are accepted here",
                    field="body")


def is_json(content_type: str | None) -> bool:
    """A body FastAPI would parse as JSON: no content type, application/json or application/*+json."""
    if not content_type:
        return True
    message = Message()
    message["content-type"] = content_type
    subtype = message.get_content_subtype()
    return message.get_content_maintype() == "application" and (subtype == "json" or subtype.endswith("+json"))


def loads(raw: bytes | str, field: str = "body", what: str = "the request body") -> Any:
    """The strict JSON document `raw` holds (UTF-8), or InvalidInput saying what is wrong with it."""
    try:
        text = raw.decode("utf-8") if isinstance(raw, bytes) else raw  # strict: no encoded surrogates
    except UnicodeDecodeError as exc:
        raise InvalidInput(f"{what} is not UTF-8: byte {exc.start}: {exc.reason}", field=field) from None
    return loads_strict(text, field=field, what=what)


def _readable(value):
    """`value` with what JSON cannot carry made readable: NaN and Infinity as null, lone
    surrogates as U+FFFD."""
    if isinstance(value, float):
        return value if math.isfinite(value) else None
    if isinstance(value, str):
        return value.encode("utf-16", "surrogatepass").decode("utf-16", "replace")
    if isinstance(value, dict):
        return {_readable(k): _readable(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_readable(v) for v in value]
    return value


def dumps(content: Any) -> bytes:
    try:
        return json.dumps(content, ensure_ascii=False, allow_nan=False, separators=(",", ":")).encode("utf-8")
    except (ValueError, UnicodeEncodeError):  # stored before the strict rules: answer it, readable
        return json.dumps(_readable(content), ensure_ascii=False, allow_nan=False,
                          separators=(",", ":")).encode("utf-8")


class JSONResponse(_JSONResponse):
    """Every JSON answer of the API (the app's default response class and the error handlers')."""

    def render(self, content: Any) -> bytes:
        return dumps(content)

"""The server's log: levels, a text or JSON format, and no secrets.

`setup(level, fmt)` sends every logger's records (crowbar's, uvicorn's, SQLAlchemy's warnings) to
stderr, which systemd's journal keeps, one line per record:
- text: `2026-01-02 03:04:05,678 INFO crowbar.access: GET /api/v2/nodes 200 3.1ms user=admin ...`;
- json: one object per line, {"time", "level", "logger", "message"} plus the record's `fields`
  (the access log's method, path, status, duration_ms, user, client; an event's object, action,
  actor, from, to).
Whatever a message holds, `Redact` removes secrets before it is written: API and node tokens
(`cb_...`), the value of an Authorization or X-Auth-Token header, and the password of a URL.

What is logged, and where: `crowbar.access` (every request: api/observe.py), `crowbar.events`
(every event the audit trail records: db/events.py; a failed run, a node in `problem`, a failed
power request at WARNING), `crowbar.server` (start, stop, listeners), each loop's failures.
"""

from __future__ import annotations

import json
import logging
import re
import sys

LEVELS = ("debug", "info", "warning", "error")
FORMATS = ("text", "json")

SECRETS = (
    (re.compile(r"cb_[A-Za-z0-9_\-]{8,}"), "cb_***"),  # API and node tokens
    (re.compile(r"(?i)\b(bearer|x-auth-token:?)\s+\S+"), r"\1 ***"),
    (re.compile(r"(?i)(\b[a-z][a-z0-9+.\-]*://[^/\s:@]*:)[^@\s/]*@"), r"\1***@"),  # scheme://user:password@
    (re.compile(r"(?i)\b(password|passwd|token|secret)(\s*[=:]\s*)\S+"), r"\1\2***"),
)


# Every match of SECRETS holds one of these: a text without any is returned as it is, after one
# search instead of four substitutions (most lines name no secret; a line cost 76 us, 56 of them here).
MAYBE_SECRET = re.compile(r"(?i)cb_|bearer|x-auth|://|passw|token|secret")


def redact(text: str) -> str:
    if not MAYBE_SECRET.search(text):
        return text
    for pattern, replacement in SECRETS:
        text = pattern.sub(replacement, text)
    return text


class Redact(logging.Filter):
    """Removes secrets from a record's message and fields, whatever logged it."""

    def filter(self, record: logging.LogRecord) -> bool:
        try:
            message = record.getMessage()
        except Exception:  # noqa: BLE001 - a bad format string is logged as it is
            message = str(record.msg)
        record.msg, record.args = redact(message), None
        fields = getattr(record, "fields", None)
        if isinstance(fields, dict):
            record.fields = {k: redact(v) if isinstance(v, str) else v for k, v in fields.items()}
        if record.exc_info or record.exc_text:  # another handler may have formatted it already
            record.exc_text = redact(record.exc_text or logging.Formatter().formatException(record.exc_info))
        return True


class JsonFormatter(logging.Formatter):
    def format(self, record: logging.LogRecord) -> str:
        out = {"time": self.formatTime(record, "%Y-%m-%dT%H:%M:%S") + f".{int(record.msecs):03d}",
               "level": record.levelname.lower(), "logger": record.name, "message": record.getMessage()}
        fields = getattr(record, "fields", None)
        if isinstance(fields, dict):
            out.update({k: v for k, v in fields.items() if k not in out})
        if record.exc_info or record.exc_text:
            out["traceback"] = record.exc_text or self.formatException(record.exc_info)
        return json.dumps(out, default=str, ensure_ascii=False)


def setup(level: str = "info", fmt: str = "text", access_log: bool = True, stream=None) -> logging.Handler:
    """Send every record at `level` and above to `stream` (stderr) in `fmt`; the access log only
    when `access_log`. Replaces what an earlier call set up. Returns the handler."""
    if level not in LEVELS:
        raise ValueError(f"log level {level!r} is not one of {', '.join(LEVELS)}")
    if fmt not in FORMATS:
        raise ValueError(f"log format {fmt!r} is not one of {', '.join(FORMATS)}")
    handler = logging.StreamHandler(stream or sys.stderr)
    handler.addFilter(Redact())
    handler.setFormatter(JsonFormatter() if fmt == "json" else
                         logging.Formatter("%(asctime)s %(levelname)s %(name)s: %(message)s"))
    root = logging.getLogger()
    for old in [h for h in root.handlers if getattr(h, "crowbar", False)]:
        root.removeHandler(old)
    handler.crowbar = True
    root.addHandler(handler)
    root.setLevel(level.upper())
    logging.getLogger("crowbar.access").setLevel(logging.NOTSET if access_log else logging.WARNING)  # INFO lines
    logging.getLogger("uvicorn.access").setLevel(logging.WARNING)  # crowbar.access says it, with the user
    return handler

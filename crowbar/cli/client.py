"""HTTP client for the CLI: finds the endpoint and the token, turns API errors into one line.

Whatever the endpoint, the token or the server's answer, a failed request is a CliError with one
readable line, never a traceback: an endpoint that is not a URL, a token that cannot go in a
header, an argument that cannot go in a URL, a server that is not there, an answer that is not
Crowbar's JSON. Names and ids from the command line go into a URL through `seg`, so that `/`,
`?`, `#` and `..` in them stay part of the name (`nodes delete ../deployments/x` asks for the
node of that name, and no other resource).
"""

from __future__ import annotations

import ipaddress
import json
import os
import re
import ssl
from pathlib import Path
from urllib.parse import quote, urlsplit

import httpx

from crowbar import config

PAGE = 1000  # the most items a list endpoint answers at once
TOKEN = re.compile(r"[!-~]{1,4096}")  # what can be sent in an Authorization header (cb_ + urlsafe base64)


class CliError(Exception):
    """Printed as one line on stderr; the process exits with `code`."""

    def __init__(self, message: str, code: int = 1):
        super().__init__(message)
        self.code = code


def shown(text: str, limit: int = 60) -> str:
    """A value for an error line: quoted, bytes that are not UTF-8 as \\x escapes, long ones cut."""
    value = repr(os.fsencode(text))[1:] if not _is_utf8(text) else repr(text)
    return value if len(value) <= limit else value[:limit - 5] + "...'" + f" ({len(text)} characters)"


def _is_utf8(text: str) -> bool:
    try:
        text.encode("utf-8")
    except UnicodeEncodeError:
        return False
    return True


def _not_utf8(value) -> str | None:
    """The first string (key or value) in a JSON-like value that cannot be encoded as UTF-8."""
    stack = [value]
    while stack:
        item = stack.pop()
        if isinstance(item, str) and not _is_utf8(item):
            return item
        if isinstance(item, dict):
            stack.extend([*item.keys(), *item.values()])
        elif isinstance(item, (list, tuple)):
            stack.extend(item)
    return None


def seg(value: object) -> str:
    """One path segment of an API URL from a command-line argument (a name or an id)."""
    text = str(value)
    if not text:
        raise CliError("an empty name or id is not valid")
    if not _is_utf8(text):
        raise CliError(f"{shown(text)} is not valid UTF-8 text (names and ids are text)")
    encoded = quote(text, safe="")
    return encoded.replace(".", "%2E") if encoded in (".", "..") else encoded


def find_token(endpoint: str) -> str | None:
    """CROWBAR_TOKEN, else the token a local server published for this endpoint, else the data dir's."""
    return find_token_with_source(endpoint)[0]


def find_token_with_source(endpoint: str) -> tuple[str | None, str | None]:
    """The token and where it came from (CROWBAR_TOKEN or a file), or (None, None)."""
    if os.environ.get("CROWBAR_TOKEN"):
        return os.environ["CROWBAR_TOKEN"].strip(), "CROWBAR_TOKEN"
    sock = config.unix_socket_path(endpoint)
    if sock:
        candidates = [config.registry_file_for_socket(sock)]
    else:
        parts = urlsplit(endpoint)
        host, port = parts.hostname or "127.0.0.1", parts.port or (443 if parts.scheme == "https" else 80)
        candidates = [config.registry_file(host, port), config.data_dir() / "admin.token"]
        if host == "localhost":
            candidates.insert(1, config.registry_file("127.0.0.1", port))
    for path in candidates:
        try:  # undecodable bytes survive as surrogates: Client refuses such a token with one line
            return Path(path).read_bytes().decode("utf-8", "surrogateescape").strip(), str(path)
        except OSError:
            continue
    return None, None


def sends_in_clear(endpoint: str) -> bool:
    """True when a token sent to `endpoint` would cross a network unencrypted: http:// to a host
    that is not loopback (a unix socket and https:// are fine)."""
    if config.unix_socket_path(endpoint) or not endpoint.startswith("http://"):
        return False
    host = urlsplit(endpoint).hostname or ""
    if host == "localhost":
        return False
    try:
        return not ipaddress.ip_address(host).is_loopback
    except ValueError:
        return True


def verify_setting(ca: str | None) -> ssl.SSLContext | bool:
    """How the CLI checks an https:// server: against `ca` (--ca, CROWBAR_CA: a PEM file of the CA
    that signed the server's certificate), else the system's CAs. Never off."""
    ca = ca or os.environ.get("CROWBAR_CA")
    if not ca:
        return True
    try:
        return ssl.create_default_context(cafile=ca)
    except FileNotFoundError:
        raise CliError(f"CA file {shown(ca)}: no such file (--ca, CROWBAR_CA)") from None
    except (ssl.SSLError, OSError) as exc:
        raise CliError(f"CA file {shown(ca)}: not a PEM certificate ({exc})") from None


class Client:
    def __init__(self, endpoint: str | None = None, timeout: float = 60.0, ca: str | None = None):
        try:
            self.endpoint = config.endpoint(endpoint)
        except ValueError as exc:
            raise CliError(str(exc)) from None
        token, self.token_source = find_token_with_source(self.endpoint)
        if token and not TOKEN.fullmatch(token):
            raise CliError(f"the token from {self.token_source} is not a Crowbar token (expected printable ASCII "
                           "without spaces, like the server's admin.token)")
        if token and sends_in_clear(self.endpoint) and os.environ.get("CROWBAR_ALLOW_HTTP") != "1":
            raise CliError(f"not sending the token in clear to {self.endpoint}: use https:// (the server's "
                           "--tls-cert), or set CROWBAR_ALLOW_HTTP=1 on a network you trust")
        headers = {"authorization": f"Bearer {token}"} if token else {}
        sock = config.unix_socket_path(self.endpoint)
        try:
            if sock:
                self.http = httpx.Client(transport=httpx.HTTPTransport(uds=sock), base_url="http://crowbar/api/v2",
                                         headers=headers, timeout=timeout)
            else:
                self.http = httpx.Client(base_url=self.endpoint + "/api/v2", headers=headers, timeout=timeout,
                                         verify=verify_setting(ca))
        except httpx.InvalidURL as exc:
            raise CliError(f"endpoint {self.endpoint!r}: {exc} (expected {config.ENDPOINT_FORMS})") from None
        self.timeout = timeout
        self.sending: str | None = None  # "POST /nodes" while a request is on its way (for Ctrl-C)

    def request(self, method: str, path: str | httpx.URL, ok=(200, 201), *, text: bool = False, **kwargs):
        """The response to one request, when its status is in `ok`; else CliError with the server's
        message. The body of a successful answer must be JSON (unless `text`): anything else is one
        line saying the endpoint is not answering like a Crowbar server."""
        if "json" in kwargs:
            kwargs["content"] = self._encode(kwargs.pop("json"))
            kwargs["headers"] = {**kwargs.get("headers", {}), "content-type": "application/json"}
        params = kwargs.get("params")
        for value in [str(path), *(params.values() if isinstance(params, dict) else ())]:
            if isinstance(value, str) and not _is_utf8(value):
                raise CliError(f"{shown(value)} is not valid UTF-8 text")
        self.sending = f"{method} {path}"
        try:
            resp = self.http.request(method, path, **kwargs)
        except httpx.ConnectError as exc:
            raise CliError(f"cannot reach the Crowbar API at {self.endpoint} ({_why(exc)}): is `crowbar server` "
                           "running? set --endpoint or CROWBAR_ENDPOINT") from None
        except httpx.TimeoutException:
            raise CliError(f"no answer from {self.endpoint} within {self.timeout:g}s ({method} {path})") from None
        except httpx.HTTPError as exc:
            raise CliError(f"request to {self.endpoint} failed: {_why(exc)}") from None
        except httpx.InvalidURL as exc:  # e.g. longer than a URL may be
            raise CliError(f"cannot send {method} {shown(str(path))}: {exc}") from None
        self.sending = None  # left set if Ctrl-C interrupts the request
        if resp.status_code in ok:
            if not text:
                self._json(resp)
            return resp
        raise CliError(f"{self._error_message(resp)} [HTTP {resp.status_code}]")

    @staticmethod
    def _encode(body) -> bytes:
        """Strict JSON, as the server reads it: no NaN or Infinity, no lone surrogates."""
        try:
            return json.dumps(body, allow_nan=False, ensure_ascii=False).encode("utf-8")
        except UnicodeEncodeError:
            raise CliError(f"{shown(_not_utf8(body) or '')} is not valid UTF-8 text") from None
        except ValueError as exc:
            if "Out of range float" in str(exc):
                raise CliError("NaN and Infinity are not JSON numbers: the server would refuse them") from None
            raise CliError(f"cannot send this as JSON: {exc}") from None
        except (TypeError, RecursionError) as exc:
            raise CliError(f"cannot send this as JSON: {exc}") from None

    def _json(self, resp: httpx.Response):
        """The body of a successful answer; parsed once, so that `resp.json()` is free after this."""
        try:
            data = resp.json()
        except ValueError:
            kind = resp.headers.get("content-type") or "no content type"
            raise CliError(f"{self.endpoint} answered HTTP {resp.status_code} with something that is not JSON "
                           f"({kind}): is it a Crowbar server? set --endpoint or CROWBAR_ENDPOINT") from None
        resp.json = lambda **_: data  # type: ignore[method-assign]
        return data

    def _error_message(self, resp: httpx.Response) -> str:
        """The server's message: Crowbar's error body, else a short plain-text answer, else what
        kind of answer it was (an HTML error page is not printed)."""
        try:
            body = resp.json()
        except ValueError:
            body = None
        message = None
        if isinstance(body, dict):
            message = body.get("message") or body.get("detail")
            if message is not None and not isinstance(message, str):
                message = json.dumps(message)
        if not message:
            plain = resp.text.strip()
            kind = resp.headers.get("content-type") or ""
            if plain and len(plain) <= 300 and "\n" not in plain and "html" not in kind:
                message = plain
            else:
                message = (f"{resp.reason_phrase or 'error'} (the answer is {kind or 'not JSON'}, not Crowbar's "
                           f"error body: is {self.endpoint} a Crowbar server?)")
        if 300 <= resp.status_code < 400 and resp.headers.get("location"):
            message += f"; it redirects to {resp.headers['location']}: set --endpoint to the server itself"
        if resp.status_code == 412:
            message += " (nothing was changed)"
        if resp.status_code == 401 and self.token_source:
            message += f" (the token from {self.token_source} was rejected)"
        elif resp.status_code == 401:
            message += " (no token found: set CROWBAR_TOKEN, or run the CLI as the user who started the server)"
        return message

    def get(self, path: str, **params):
        return self.request("GET", path, params={k: v for k, v in params.items() if v is not None}).json()

    def list_all(self, path: str, limit: int | None = None, **params) -> list[dict]:
        """Every item of a list endpoint (or its first `limit`), in the API's order: pages of up to
        PAGE items, following each answer's `next` link until it is null. A `next` link must stay
        on this endpoint's API (the token goes with it) and move on."""
        query = {k: v for k, v in params.items() if v is not None} | {"limit": min(limit or PAGE, PAGE)}
        items: list[dict] = []
        url: str | httpx.URL | None = path
        seen: set[str] = set()
        while url is not None and (limit is None or len(items) < limit):
            body = self.request("GET", url, params=query).json()
            if not (isinstance(body, dict) and isinstance(body.get("items"), list)
                    and (body.get("next") is None or isinstance(body["next"], str))):
                raise CliError(f"{self.endpoint} answered GET {path} with JSON that is not a Crowbar list "
                               "(items, next): is it a Crowbar server?")
            items += body["items"]
            url, query = body["next"] and self._next(body["next"], seen), None
        return items[:limit]

    def _next(self, link: str, seen: set[str]) -> httpx.URL:
        base = self.http.base_url
        try:
            url = base.join(link)
        except httpx.InvalidURL as exc:
            raise CliError(f"{self.endpoint} sent a next link that is not a URL ({exc})") from None
        if (url.scheme, url.host, url.port) != (base.scheme, base.host, base.port) or \
                not url.path.startswith(base.path.rstrip("/") + "/"):
            raise CliError(f"{self.endpoint} sent a next link outside its API ({shown(link)}): not following it")
        if str(url) in seen:
            raise CliError(f"{self.endpoint} sent the same next link twice ({shown(link)}): "
                           "its paging does not move on")
        seen.add(str(url))
        return url

    def read(self, path: str) -> tuple[dict, str | None]:
        """An object and its ETag: pass the ETag as `if_match` to a change made from what was read,
        and the server refuses the change (412, "changed by someone else") if the object changed."""
        resp = self.request("GET", path)
        return resp.json(), resp.headers.get("etag")

    def post(self, path: str, body: dict | None = None):
        return self.request("POST", path, json=body or {}).json()

    def put(self, path: str, body: dict, if_match: str | None = None):
        return self.request("PUT", path, json=body, **_if_match(if_match)).json()

    def patch(self, path: str, body: dict, if_match: str | None = None):
        return self.request("PATCH", path, json=body, **_if_match(if_match)).json()

    def delete(self, path: str, if_match: str | None = None):
        return self.request("DELETE", path, **_if_match(if_match)).json()


def _if_match(etag: str | None) -> dict:
    if etag is None:
        return {}
    if not TOKEN.fullmatch(etag):
        raise CliError(f"{shown(etag)} is not an ETag (printable ASCII without spaces, as a GET answered it)")
    return {"headers": {"if-match": etag}}


def _why(exc: Exception) -> str:
    """An httpx error's reason on one line: the OS's words if an OS error is behind it."""
    cause: BaseException | None = exc
    for _ in range(10):
        if cause is None or isinstance(cause, OSError) and cause.strerror:
            break
        cause = cause.__cause__ or cause.__context__
    text = cause.strerror if isinstance(cause, OSError) and cause.strerror else str(exc) or type(exc).__name__
    return " ".join(text.split())

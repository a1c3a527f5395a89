"""HTTP client for the CLI: finds the endpoint and the token, turns API errors into one line."""

from __future__ import annotations

import os
from pathlib import Path
from urllib.parse import urlsplit

import httpx

from crowbar import config

PAGE = 1000  # the most items a list endpoint answers at once


class CliError(Exception):
    """Printed as one line on stderr; the process exits with `code`."""

    def __init__(self, message: str, code: int = 1):
        super().__init__(message)
        self.code = code


def find_token(endpoint: str) -> str | None:
    """CROWBAR_TOKEN, else the token a local server published for this endpoint, else the data dir's."""
    return find_token_with_source(endpoint)[0]


def find_token_with_source(endpoint: str) -> tuple[str | None, str | None]:
    """The token and where it came from (CROWBAR_TOKEN or a file), or (None, None)."""
    if os.environ.get("CROWBAR_TOKEN"):
        return os.environ["CROWBAR_TOKEN"].strip(), "CROWBAR_TOKEN"
    sock = config.unix_socket_path(endpoint)
    if sock:
        path = config.registry_file_for_socket(sock)
        try:
            return path.read_text().strip(), str(path)
        except OSError:
            return None, None
    parts = urlsplit(endpoint)
    host, port = parts.hostname or "127.0.0.1", parts.port or (443 if parts.scheme == "https" else 80)
    candidates = [config.registry_file(host, port), config.data_dir() / "admin.token"]
    if host == "localhost":
        candidates.insert(1, config.registry_file("127.0.0.1", port))
    for path in candidates:
        try:
            return Path(path).read_text().strip(), str(path)
        except OSError:
            continue
    return None, None


class Client:
    def __init__(self, endpoint: str | None = None, timeout: float = 60.0):
        self.endpoint = config.endpoint(endpoint)
        token, self.token_source = find_token_with_source(self.endpoint)
        headers = {"authorization": f"Bearer {token}"} if token else {}
        sock = config.unix_socket_path(self.endpoint)
        if sock:
            self.http = httpx.Client(transport=httpx.HTTPTransport(uds=sock), base_url="http://crowbar/api/v2",
                                     headers=headers, timeout=timeout)
        else:
            self.http = httpx.Client(base_url=self.endpoint + "/api/v2", headers=headers, timeout=timeout)

    def request(self, method: str, path: str, ok=(200, 201), **kwargs):
        try:
            resp = self.http.request(method, path, **kwargs)
        except httpx.ConnectError:
            raise CliError(f"cannot reach the Crowbar API at {self.endpoint} (is `crowbar server` running? "
                           "set --endpoint or CROWBAR_ENDPOINT)") from None
        except httpx.HTTPError as exc:
            raise CliError(f"request to {self.endpoint} failed: {exc}") from None
        if resp.status_code in ok:
            return resp
        try:
            body = resp.json()
            message = body.get("message") or body.get("detail") or resp.text
        except ValueError:
            message = resp.text.strip() or resp.reason_phrase
        if resp.status_code == 401 and self.token_source:
            message += f" (the token from {self.token_source} was rejected)"
        elif resp.status_code == 401:
            message += " (no token found: set CROWBAR_TOKEN, or run the CLI as the user who started the server)"
        raise CliError(f"{message} [HTTP {resp.status_code}]")

    def get(self, path: str, **params):
        return self.request("GET", path, params={k: v for k, v in params.items() if v is not None}).json()

    def list_all(self, path: str, limit: int | None = None, **params) -> list[dict]:
        """Every item of a list endpoint (or its first `limit`), in the API's order: pages of up to
        PAGE items, following each answer's `next` link until it is null."""
        query = {k: v for k, v in params.items() if v is not None} | {"limit": min(limit or PAGE, PAGE)}
        items: list[dict] = []
        url: str | httpx.URL | None = path
        while url is not None and (limit is None or len(items) < limit):
            body = self.request("GET", url, params=query).json()
            items += body["items"]
            url, query = body["next"] and self.http.base_url.join(body["next"]), None
        return items[:limit]

    def post(self, path: str, body: dict | None = None):
        return self.request("POST", path, json=body or {}).json()

    def put(self, path: str, body: dict):
        return self.request("PUT", path, json=body).json()

    def patch(self, path: str, body: dict):
        return self.request("PATCH", path, json=body).json()

    def delete(self, path: str):
        return self.request("DELETE", path).json()

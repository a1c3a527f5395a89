"""Talking to a live Neutron API: reading its networks, ports and routers for `crowbar neutron
whois`, creating a tenant network on the segment Crowbar allocated (`crowbar neutron networks create`).

The roles deploy Neutron with `auth_strategy = noauth` (docs/neutron.md), so the requests carry no
token and see every project's objects. Three GETs (`/v2.0/networks`, `/v2.0/ports`,
`/v2.0/routers`), each asking only for the fields whois reads, with a short timeout; the first
one that fails ends the reading with a BadGateway (502) naming the URL and what went wrong (a
refused connection, a timeout, a status, an answer that is not Neutron's JSON), never the body.
Nothing here touches the database: crowbar.services.openstack finds the URL and calls `read`.
"""

from __future__ import annotations

import json
from urllib.parse import urlsplit

import httpx

from crowbar.errors import BadGateway, Conflict, InvalidInput

TIMEOUT = httpx.Timeout(10.0, connect=3.0)  # seconds: a listing answers in about one under TCG
# a create writes and notifies the agents: 4.6 s on a quiet emulated controller, past 10 s on a
# loaded one. Within the CLI's 60 s with the look-up that follows a timeout (create_network).
CREATE_TIMEOUT = httpx.Timeout(40.0, connect=3.0)
MAX_ANSWER_BYTES = 32 << 20  # a port is about 1 KiB with every field; whois asks for five
MAX_URL = 2048
# (collection, the fields whois reads): provider:* are what an admin (noauth) sees of a segment
COLLECTIONS = (
    ("networks", ("id", "name", "provider:network_type", "provider:segmentation_id")),
    ("ports", ("id", "name", "network_id", "device_owner", "device_id")),
    ("routers", ("id", "name")),
)


def check_url(url: str) -> str:
    """`url` without a trailing slash, or InvalidInput: http(s), a host, no user or password, no
    query or fragment (the paths are appended to it)."""
    if not isinstance(url, str) or not url or len(url) > MAX_URL or not url.isprintable():
        raise InvalidInput(f"api: expected the Neutron API's URL (http://HOST:9696), at most {MAX_URL} "
                           "printable characters", field="api")
    try:
        parts = urlsplit(url)
        parts.port  # noqa: B018  (raises ValueError for a port that is not a number)
    except ValueError as exc:
        raise InvalidInput(f"api {url!r}: not a URL ({exc})", field="api") from None
    if parts.scheme not in ("http", "https") or not parts.hostname:
        raise InvalidInput(f"api {url!r}: expected http://HOST:PORT or https://HOST:PORT", field="api")
    if len(parts.hostname) > 253 or any(len(label) > 63 for label in parts.hostname.split(".")):
        raise InvalidInput(f"api {url!r}: the host name is longer than DNS allows", field="api")
    if parts.username is not None or parts.password is not None or parts.query or parts.fragment:
        raise InvalidInput(f"api {url!r}: no user, password, query or fragment (the API needs no token)",
                           field="api")
    return url.rstrip("/")


def _client(timeout: httpx.Timeout) -> httpx.Client:
    """A client for the API: no redirects followed, no proxy from the environment."""
    return httpx.Client(timeout=timeout, follow_redirects=False, trust_env=False)


def _unanswered(where: str, exc: httpx.HTTPError, timeout: httpx.Timeout = TIMEOUT) -> BadGateway:
    """The 502 for a request Neutron did not answer (a timeout, a refused connection...)."""
    if isinstance(exc, httpx.TimeoutException):
        return BadGateway(f"{where}: no answer within {timeout.read:g} s", field="api")
    return BadGateway(f"{where}: {exc.__class__.__name__}: {exc}", field="api")


def _get(client: httpx.Client, base: str, collection: str, fields: tuple[str, ...]) -> list[dict]:
    where = f"the Neutron API at {base}: GET /v2.0/{collection}"
    try:
        with client.stream("GET", f"{base}/v2.0/{collection}",
                           params=[("fields", f) for f in fields]) as answer:
            if answer.status_code != 200:
                raise BadGateway(f"{where} answered {answer.status_code} {answer.reason_phrase}".rstrip(),
                                 field="api")
            body = b""
            for chunk in answer.iter_bytes():
                body += chunk
                if len(body) > MAX_ANSWER_BYTES:
                    raise BadGateway(f"{where}: the answer is over {MAX_ANSWER_BYTES >> 20} MiB", field="api")
    except (httpx.InvalidURL, UnicodeError) as exc:  # a host name the client cannot encode
        raise InvalidInput(f"api {base!r}: not a URL the server can ask ({exc})", field="api") from None
    except httpx.HTTPError as exc:
        raise _unanswered(where, exc) from None
    try:
        items = json.loads(body).get(collection)
    except (ValueError, AttributeError, RecursionError):
        items = None
    if not isinstance(items, list) or not all(isinstance(i, dict) and isinstance(i.get("id"), str)
                                              for i in items):
        raise BadGateway(f"{where}: the answer is not Neutron's {{\"{collection}\": [...]}}", field="api")
    return items


def read(url: str) -> dict[str, list[dict]]:
    """{"networks": [...], "ports": [...], "routers": [...]} from the live API at `url` (no proxy
    from the environment: the API is on the admin network)."""
    base = check_url(url)
    with _client(TIMEOUT) as client:
        return {name: _get(client, base, name, fields) for name, fields in COLLECTIONS}


def _neutron_message(answer: httpx.Response) -> str:
    """Neutron's own one-line reason for a refusal (its NeutronError message), bounded."""
    try:
        message = answer.json().get("NeutronError", {}).get("message")
    except (ValueError, AttributeError):
        message = None
    return f": {str(message)[:300]}" if isinstance(message, str) and message else ""


def create_network(url: str, name: str, network_type: str, physical_network: str, segmentation_id: int) -> dict:
    """POST /v2.0/networks: a network on the segment Crowbar allocated (provider attributes, which
    noauth's admin context may set); answers Neutron's network. A refusal is a Conflict (409, with
    Neutron's reason: the segment is in use there), anything else a BadGateway.

    A POST that timed out may still have been done: Neutron is then asked for the network of that
    name on that segment, and the one it has is the answer (only when it does not have it is the
    timeout a BadGateway, and the caller releases the segment)."""
    base = check_url(url)
    where = f"the Neutron API at {base}: POST /v2.0/networks"
    network = {"name": name, "admin_state_up": True, "provider:network_type": network_type,
               "provider:segmentation_id": segmentation_id,
               **({"provider:physical_network": physical_network} if physical_network else {})}
    try:
        with _client(CREATE_TIMEOUT) as client:
            answer = client.post(f"{base}/v2.0/networks", json={"network": network})
    except httpx.ReadTimeout as exc:
        made = _made_anyway(base, network)
        if made is None:
            raise _unanswered(where, exc, CREATE_TIMEOUT) from None
        return made
    except httpx.HTTPError as exc:
        raise _unanswered(where, exc, CREATE_TIMEOUT) from None
    if answer.status_code in (400, 409):
        raise Conflict(f"{where} refused the network{_neutron_message(answer)}", field="segmentation_id")
    if answer.status_code != 201:
        raise BadGateway(f"{where} answered {answer.status_code} {answer.reason_phrase}".rstrip(), field="api")
    try:
        made = answer.json()["network"]
        assert isinstance(made["id"], str)
    except (ValueError, KeyError, TypeError, AssertionError):
        raise BadGateway(f"{where}: the answer is not Neutron's {{\"network\": {{...}}}}", field="api") from None
    return made


def _made_anyway(base: str, network: dict) -> dict | None:
    """The network a timed-out POST asked for, if Neutron made it after all (same name, same
    segment), else None; None too when Neutron does not answer this either."""
    keys = ("name", "provider:network_type", "provider:physical_network", "provider:segmentation_id")
    query = {k: str(network[k]) for k in keys if k in network}
    try:
        with _client(TIMEOUT) as client:
            answer = client.get(f"{base}/v2.0/networks", params=query)
        found = answer.json()["networks"] if answer.status_code == 200 else []
    except (httpx.HTTPError, ValueError, KeyError, TypeError):
        return None
    return next((n for n in found if isinstance(n, dict) and isinstance(n.get("id"), str)
                 and all(str(n.get(k)) == v for k, v in query.items())), None)

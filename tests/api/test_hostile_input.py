"""Hostile input at the HTTP edge and in services (issue 8): no input answers a 5xx or a traceback
or leaves a half-write; the token is checked before the body is read; every JSON body is strict
JSON within its size limit; number-like keys name nothing; values that cannot be stored or read
back (NaN, lone surrogates) are refused before they are stored, and read back readable if an older
server stored them."""

from __future__ import annotations

import re

import pytest
import yaml
from fastapi.testclient import TestClient
from sqlalchemy import select

from crowbar.api import body
from crowbar.api.app import create_app
from crowbar.api.settings import AppSettings
from crowbar.db.models import DeploymentRole, Node
from crowbar.documents import check_strict, loads_strict
from crowbar.errors import InvalidInput
from crowbar.network.conduits import order_nics
from crowbar.network.linuxbridge import whois
from crowbar.power.base import PowerDriver, Setting, get_driver
from crowbar.services import attribs, auth, deployments, lookup
from crowbar.services.network.templates import parse_template

V2 = "/api/v2"
JSON = {"content-type": "application/json"}
OPEN = {"/api/v2/health", "/metrics", "/api/v2/discovery",
        "/api/v2/session"}  # the UI's sign-in: a token in the body
AGENT = "/api/v2/agent/"  # the agent's routes take a node token, not a user's


def is_open(path: str) -> bool:
    return path in OPEN or path.startswith(AGENT) or path.startswith("/boot/")


def error(r, status: int, kind: str | None = None) -> dict:
    """The one error body, with `status`."""
    assert r.status_code == status, (r.status_code, r.text)
    out = r.json()
    assert isinstance(out.get("error"), str) and isinstance(out.get("message"), str) and out["message"], out
    if kind:
        assert out["error"] == kind, out
    return out


def operations(client: TestClient) -> list[tuple[str, str, dict]]:
    """(METHOD, path template, operation) for every operation the OpenAPI document lists."""
    spec = client.get(f"{V2}/openapi.json").json()
    return [(method.upper(), path, op) for path, ops in spec["paths"].items() for method, op in ops.items()]


def concrete(path: str, value: str = "x1") -> str:
    return re.sub(r"\{\w+\}", value, path)


@pytest.fixture
def anonymous(api):
    with TestClient(api.app) as client:
        yield client


@pytest.fixture
def node(api) -> dict:
    r = api.post(f"{V2}/nodes", json={"name": "n1.example.com"})
    assert r.status_code == 201, r.text
    return r.json()


# -- 1. the token before the body ----------------------------------------------------------------------
def test_every_admin_route_answers_401_to_a_malformed_body_without_a_token(anonymous):
    """Before: 422 for malformed JSON on 16 admin routes, since FastAPI parses the body before the
    dependencies run; the edge now checks the token first, from the headers alone."""
    admin = [(m, p) for m, p, _op in operations(anonymous) if not is_open(p)]
    assert len(admin) > 50
    bodies = [b"{not json", b'{"name": NaN}', b"[" * 10_000, b'"\\ud800"', b"\xff\xfe"]
    for method, path in admin:
        for raw in bodies:
            for headers in ({}, {"authorization": "Bearer cb_wrong"}, {"x-auth-token": "cb_wrong"}):
                r = anonymous.request(method, concrete(path), content=raw, headers=JSON | headers)
                error(r, 401, "unauthorized")
    # too large as well: the size is not even looked at without a token
    r = anonymous.post(f"{V2}/nodes", content=b" " * (body.MAX_BODY + 1), headers=JSON)
    error(r, 401, "unauthorized")


def test_the_edge_leaves_the_actor_for_the_route(api, node):
    api.patch(f"{V2}/nodes/{node['name']}", json={"description": "audited"})
    events = api.get(f"{V2}/events", params={"object_type": "node", "object_id": node["id"]}).json()["items"]
    assert any(e["actor"] == "admin" for e in events), events


def test_the_open_routes_stay_open(anonymous):
    assert anonymous.get(f"{V2}/health").status_code == 200
    assert anonymous.get(f"{V2}/openapi.json").status_code == 200
    assert anonymous.get(f"{V2}/docs").status_code == 200
    error(anonymous.get(f"{V2}/agent/next"), 401)  # a node token, not the admin one
    r = anonymous.post(f"{V2}/discovery", json={"nics": [{"mac": "52:54:00:12:34:56"}]})
    assert r.status_code == 201, r.text


# -- 2. strict JSON, size and depth -------------------------------------------------------------------
STRICT_REFUSED = {
    "NaN": b'{"name": "a.example.com", "description": NaN}',
    "Infinity": b'{"name": "a.example.com", "description": Infinity}',
    "-Infinity": b'{"name": "a.example.com", "description": -Infinity}',
    "1e400": b'{"name": "a.example.com", "description": 1e400}',
    "lone surrogate in a value": b'{"name": "a.example.com", "description": "\\ud800"}',
    "lone low surrogate": b'{"name": "a.example.com", "description": "x\\udc00y"}',
    "lone surrogate in a key": b'{"name": "a.example.com", "\\udfff": 1}',
    "surrogate encoded as UTF-8": b'{"name": "a.example.com", "description": "\xed\xa0\x80"}',
    "not UTF-8": b'{"name": "a.example.com", "description": "\xff"}',
    "NUL": b'{"name": "a.example.com", "description": "a\\u0000b"}',
    "depth 65": b'{"name": "a.example.com", "x": ' + b"[" * 64 + b"]" * 64 + b"}",
    "depth 100000": b"[" * 100_000 + b"]" * 100_000,
    "an integer of 5000 digits": b'{"name": "a.example.com", "admin": ' + b"9" * 5000 + b"}",
    "not JSON": b"{not json",
}


@pytest.mark.parametrize("case", sorted(STRICT_REFUSED))
def test_bodies_that_are_not_strict_json_are_422_before_any_model(api, case):
    for content_type in ("application/json", "application/merge-patch+json", None):
        headers = {"content-type": content_type} if content_type else {}
        r = api.post(f"{V2}/nodes", content=STRICT_REFUSED[case], headers=headers)
        err = error(r, 422, "invalid")
        # the edge's answer, not a model's: no details; the field is the body or its member at fault
        assert err["field"] in ("body", "description", "x", "admin") and "details" not in err, err
    assert [n["name"] for n in api.list(f"{V2}/nodes")] == []


def test_strict_json_still_takes_what_is_json(api):
    ok = b'{"name": "a.example.com", "description": "\\ud83d\\ude00 \xc3\xa9 1e308", "x": ' \
         + b"[" * 63 + b"]" * 63 + b"}"
    r = api.post(f"{V2}/nodes", content=ok, headers=JSON)
    assert r.status_code == 201, r.text
    assert r.json()["description"] == "\U0001F600 \u00e9 1e308"
    assert loads_strict('{"a": [1.5e308, -0.0, 12345678901234567890]}') == {"a": [1.5e308, -0.0, 12345678901234567890]}


def test_bodies_over_the_limit_are_413_whether_announced_or_streamed(api):
    big = b'{"name": "a.example.com", "description": "' + b"x" * body.MAX_BODY + b'"}'
    error(api.post(f"{V2}/nodes", content=big, headers=JSON), 413, "too_large")

    def chunks():  # no Content-Length: counted as it arrives
        yield b'{"name": "a.example.com", "description": "'
        for _ in range(17):
            yield b"x" * 65536
        yield b'"}'

    error(api.post(f"{V2}/nodes", content=chunks(), headers=JSON), 413, "too_large")
    assert api.list(f"{V2}/nodes") == []
    # at the limit it is read (and then judged on its merits)
    fits = b'{"name": "a.example.com", "description": "' + b"x" * (body.MAX_BODY - 100) + b'"}'
    assert api.post(f"{V2}/nodes", content=fits, headers=JSON).status_code != 413


def test_a_smaller_limit_can_be_set(db, admin_token):
    with TestClient(create_app(AppSettings(db=db, max_body=1000)),
                    headers={"authorization": f"Bearer {admin_token}"}) as client:
        error(client.post(f"{V2}/nodes", json={"name": "a.example.com", "description": "x" * 1000}), 413)
        assert client.post(f"{V2}/nodes", json={"name": "a.example.com"}).status_code == 201


def test_discovery_takes_strict_json_whatever_its_content_type_and_at_most_256_kib(api, anonymous):
    """The discovery route reads its body itself (the agent posts with wget's form content type),
    so the edge's JSON check does not see it: its own parsing is the strict one. Before: NaN and
    lone surrogates were stored (PostgreSQL: 500), and the node could not be shown again."""
    form = {"content-type": "application/x-www-form-urlencoded"}
    for raw in (b'{"nics": [{"mac": "52:54:00:00:00:01"}], "x": NaN}',
                b'{"nics": [{"mac": "52:54:00:00:00:01"}], "x": "\\ud800"}',
                b'{"nics": [{"mac": "52:54:00:00:00:01"}], "\\ud800": 1}',
                b'{"nics": [{"mac": "52:54:00:00:00:01"}], "x": ' + b"[" * 100_000 + b"]" * 100_000 + b"}"):
        for headers in (form, JSON, {}):
            error(anonymous.post(f"{V2}/discovery", content=raw, headers=headers), 422, "invalid")
    inventory = b'{"nics": [{"mac": "52:54:00:00:00:01"}], "pad": "' + b"x" * (256 * 1024) + b'"}'
    error(anonymous.post(f"{V2}/discovery", content=inventory, headers=form), 413, "too_large")
    assert api.list(f"{V2}/nodes") == []


def test_a_nul_in_the_url_is_422_on_both_engines(api):
    """Before: PostgreSQL cannot compare text with a NUL, so a lookup by such a name was a 500."""
    for path in (f"{V2}/nodes/a%00b", f"{V2}/deployments/%00", f"{V2}/roles/x%00"):
        error(api.get(path), 422, "invalid")
    for path, params in ((f"{V2}/nodes", {"name": "a\x00"}), (f"{V2}/node_roles", {"node": "\x00"}),
                         (f"{V2}/events", {"object_type": "node\x00"})):
        error(api.get(path, params=params), 422, "invalid")


def test_router_answers_have_the_error_body_and_allow_names_every_method(api, anonymous):
    error(api.get(f"{V2}/no-such-thing"), 404, "not_found")
    r = api.request("OPTIONS", f"{V2}/nodes")
    error(r, 405, "method_not_allowed")
    assert set(r.headers["allow"].split(", ")) == {"GET", "POST"}  # before: GET only, the first route's
    r = api.put(f"{V2}/nodes/n1")
    error(r, 405)
    assert set(r.headers["allow"].split(", ")) == {"GET", "PATCH", "DELETE"}
    error(anonymous.request("OPTIONS", f"{V2}/nodes"), 401)  # the token first, here too


def test_the_document_declares_the_error_answers_and_the_token(anonymous):
    spec = anonymous.get(f"{V2}/openapi.json").json()
    assert set(spec["components"]["securitySchemes"]) == {"HTTPBearer", "APIKeyHeader"}
    assert "ErrorBody" in spec["components"]["schemas"]
    for method, path, op in operations(anonymous):
        codes = set(op["responses"])
        assert {"413", "422"} <= codes, (method, path)
        if not is_open(path):
            assert "401" in codes and op.get("security"), (method, path)
        for code in codes - {"200", "201", "202"}:
            content = op["responses"][code].get("content", {})
            assert "application/json" in content, (method, path, code)


# -- 3. number-like keys -----------------------------------------------------------------------------------
NUMBER_LIKE = ["%C2%B2", "%D9%A3", "1%C2%B2", "9" * 25, "99999999999", "2147483648", "4294967297", "-1"]


def test_number_like_keys_in_every_path_are_4xx_never_500(api, node):
    """Every operation with a key in its path, with keys that are digits to Python but not ASCII,
    or numbers no id column can hold (PostgreSQL INTEGER: before, 11 digits were a 500 there)."""
    ops = [(m, p, op) for m, p, op in operations(api) if "{" in p]
    assert len(ops) > 30
    for method, path, op in ops:
        has_body = "requestBody" in op
        for key in NUMBER_LIKE:
            r = api.request(method, concrete(path, key), json={} if has_body else None)
            assert 400 <= r.status_code < 500, (method, path, key, r.status_code, r.text)
            error(r, r.status_code)


def test_number_like_values_in_every_query_are_4xx_never_500(api, node):
    for method, path, op in operations(api):
        if method != "GET":
            continue
        for parameter in op.get("parameters", []):
            if parameter["in"] != "query":
                continue
            for value in ["²", "٣", "9" * 25, "99999999999", "2147483648", "-1", "1e400", "NaN"]:
                r = api.get(concrete(path, "n1.example.com"), params={parameter["name"]: value})
                assert r.status_code < 500, (path, parameter["name"], value, r.text)


def test_ids_beyond_the_id_columns_name_nothing():
    """lookup.as_id: ASCII digits within a 32-bit INTEGER (what PostgreSQL's id columns hold)."""
    assert lookup.as_id("2147483647") == 2**31 - 1
    for key in ("2147483648", "99999999999", "9" * 25, "²", "٣", "-1", "", "1 2"):
        assert lookup.as_id(key) is None, key


def test_power_request_and_event_ids_out_of_range(api, node):
    for key in ("9" * 25, "99999999999", "%C2%B2"):
        error(api.get(f"{V2}/power_requests/{key}"), 404, "not_found")  # before: 500 (25 digits)
    for params in ({"marker": "9" * 25}, {"after": str(2**31)}, {"object_id": "9" * 25}, {"object_id": "-1"}):
        error(api.get(f"{V2}/events", params=params), 422, "invalid")  # before: 500
    error(api.get(f"{V2}/nodes", params={"marker": str(2**63)}), 422, "invalid")


def test_agent_job_ids_that_are_not_ascii_digits_are_404(anonymous):
    """Before: "²".isdigit() is True and int("²") raises: a 500 for the agent's job id."""
    token = anonymous.post(f"{V2}/discovery", json={"nics": [{"mac": "52:54:00:12:34:57"}]}).json()["token"]
    for job in ("%C2%B2", "%D9%A3", "9" * 25, "99999999999"):
        r = anonymous.post(f"{V2}/agent/jobs/{job}", json={"exit_code": 0},
                           headers={"authorization": f"Bearer {token}"})
        error(r, 404, "not_found")


def test_whois_with_number_like_devices_and_segments():
    """Before: "vxlan-²" passed isdigit() and int() raised; a posted network's segmentation_id that
    is not a number raised too (POST /neutron/whois: 500)."""
    networks = [{"id": "n1", "name": "bad", "network_type": "vxlan", "segmentation_id": "abc"},
                {"id": "n2", "name": "list", "network_type": "vxlan", "segmentation_id": [5]},
                {"id": "n3", "name": "ok", "network_type": "vxlan", "segmentation_id": 5}]
    assert whois("vxlan-²", networks) is None
    assert whois("eth0.٣", networks) is None
    assert whois("vxlan-5", networks).name == "ok"


def test_whois_over_http_never_500(api):
    for device in ("vxlan-%C2%B2", "eth0.%D9%A3", "vxlan-" + "9" * 30):
        assert api.get(f"{V2}/neutron/whois/{device}").status_code < 500
    r = api.post(f"{V2}/neutron/whois", json={"device": "vxlan-5", "networks": [
        {"id": "n1", "name": "bad", "network_type": "vxlan", "segmentation_id": "abc"}]})
    assert r.status_code < 500, r.text


# -- 4. values that cannot be stored or read back ----------------------------------------------------------
def test_a_lone_surrogate_in_an_attrib_is_refused_before_it_is_stored(api, db, node):
    """Before: 500 (the answer could not be encoded) after the unit of work had committed the value,
    and on PostgreSQL a 500 from the database; now 422, nothing stored, the node still shows."""
    for raw in (b'{"node": "n1.example.com", "value": "\\ud800"}',
                b'{"node": "n1.example.com", "value": {"\\udc00": 1}}'):
        error(api.put(f"{V2}/attribs/test-marker", content=raw, headers=JSON), 422, "invalid")
    with db.session() as s:
        assert s.scalar(select(Node.hints).where(Node.name == "n1.example.com")) == {}
        with pytest.raises(InvalidInput):  # the service refuses it too, whoever calls it
            attribs.set_on_node(s, "test-marker", "\ud800", "n1.example.com")
    assert api.get(f"{V2}/nodes/n1.example.com").status_code == 200
    # JSON text that would parse to a lone surrogate is not strict JSON: it stays the text it is
    r = api.put(f"{V2}/attribs/test-marker", json={"node": "n1.example.com", "value": '"\\ud800"'})
    assert r.status_code == 200 and r.json()["value"] == '"\\ud800"', r.text


def test_attrib_text_values_are_strict_json_or_text(api, node):
    """A CLI value is JSON when it parses: "NaN" used to become a float NaN (stored; a 500 to read)."""
    assert attribs.parse_value("NaN") == "NaN" and attribs.parse_value("Infinity") == "Infinity"
    assert attribs.parse_value("[1, 2]") == [1, 2] and attribs.parse_value("plain") == "plain"
    r = api.put(f"{V2}/attribs/test-marker", json={"node": "n1.example.com", "value": "NaN"})
    assert r.status_code == 200, r.text
    assert api.get(f"{V2}/nodes/n1.example.com").status_code == 200


def test_role_data_that_is_not_strict_json_is_refused_and_nothing_changes(api, db, node):
    assert api.post(f"{V2}/deployments", json={"name": "d1"}).status_code == 201
    assert api.post(f"{V2}/deployments/d1/bind", json={"role": "test-client", "node": node["name"]}).status_code == 201
    for raw in (b'{"data": {"x": NaN}}', b'{"data": {"x": "\\ud800"}}', b'{"data": {"x": 1e999}}'):
        error(api.put(f"{V2}/deployments/d1/roles/test-client", content=raw, headers=JSON), 422)
    for bad in ({"x": float("nan")}, {"x": [float("inf")]}, {"x": "\ud800"}, {"\udc00": 1}, {"x": "\x00"}):
        with db.session() as s, pytest.raises(InvalidInput):  # the service refuses it too (before: stored)
            deployments.set_role_data(s, "d1", "test-client", bad)
    with db.session() as s:
        assert all(dr.proposed == {} for dr in s.scalars(select(DeploymentRole)))
    assert api.get(f"{V2}/deployments/d1").status_code == 200


@pytest.mark.parametrize("value", ['"\\uD800"', '"a\\0b"', ".nan", "2020-01-01"])
def test_a_network_template_in_yaml_is_strict_json_too(api, value):
    """YAML can say what JSON cannot; a category that YAML made a lone surrogate or NUL used to be
    accepted and stored."""
    exported = api.get(f"{V2}/networks/export").json()
    text = yaml.safe_dump(exported).replace("category: admin", f"category: {value}", 1)
    assert text != yaml.safe_dump(exported)
    for preview in (True, False):
        r = api.post(f"{V2}/networks/import", json={"template": text, "preview": preview, "force": True})
        error(r, 422, "invalid")
    assert api.get(f"{V2}/networks/export").json() == exported


def test_the_strict_rule_names_where_and_why():
    for value, where in (({"a": [1, {"b": float("nan")}]}, "data.a[1].b"), ({"k": "\ud800"}, "data.k"),
                         ({1: "x"}, "data"), ({"d": object()}, "data.d")):
        with pytest.raises(InvalidInput) as caught:
            check_strict(value, field="data")
        assert where in caught.value.message, caught.value.message
    assert check_strict({"a": [True, None, 1, 1.5, "é"]}) == {"a": [True, None, 1, 1.5, "é"]}


@pytest.mark.parametrize("settings", [{"qmp": "/x.sock", "timeout": 10**400}, {"qmp": "/x.sock", "timeout": 1e10},
                                      {"qmp": "/x.sock", "timeout": float("inf")},
                                      {"qmp": "/x.sock", "timeout": float("nan")}])
def test_power_settings_out_of_range_are_refused_by_validate(settings):
    """Before: 10**400 and 1e10 were accepted and broke the power worker (float overflow, a socket
    timeout past time_t)."""
    with pytest.raises(InvalidInput) as caught:
        get_driver("qemu").validate(settings)
    assert caught.value.field == "settings.timeout"


def test_number_settings_of_any_driver_must_be_finite():
    """The base validate: a driver's number setting cannot be 10**400 (no float holds it) or inf."""

    class Probe(PowerDriver):
        name = "probe"
        settings = {"seconds": Setting("a number", types=(int, float))}
        power_on = power_off = power_cycle = status = None

    for value in (10**400, float("inf"), float("-inf"), float("nan")):
        with pytest.raises(InvalidInput) as caught:
            Probe().validate({"seconds": value})
        assert caught.value.field == "settings.seconds"
    assert Probe().validate({"seconds": 10**20}) == {"seconds": 10**20}


def test_power_settings_over_http(api, node):
    for timeout in (10**400, 1e10, "5", [5], True):
        r = api.put(f"{V2}/nodes/{node['name']}/power", json={"driver": "qemu",
                                                              "settings": {"qmp": "/x.sock", "timeout": timeout}})
        assert error(r, 422, "invalid")["field"] == "settings.timeout"
    r = api.put(f"{V2}/nodes/{node['name']}/power", json={"driver": "qemu", "settings": {"qmp": "/x.sock", "timeout": 2.5}})
    assert r.status_code == 200, r.text


def test_an_inventory_with_nics_that_are_not_text_gives_a_422_plan_not_a_500(api, anonymous):
    """What an agent posted is read by the network plan: a NIC name, bus or driver that is not text,
    or a speed of 400 digits, used to be a 500 on GET /nodes/{node}/network_plan (and /neutron)."""
    nics = {"name": [{"mac": "52:54:00:00:02:01", "name": 5}, {"mac": "52:54:00:00:02:02", "name": "eth1"}],
            "bus": [{"mac": "52:54:00:00:04:01", "name": "eth0", "bus": 5},
                    {"mac": "52:54:00:00:04:02", "name": "eth1", "bus": "0000:01:00.0"}],
            "speed": [{"mac": "52:54:00:00:05:01", "name": "eth0", "speed": "9" * 400}]}
    for field, inventory in nics.items():
        name = anonymous.post(f"{V2}/discovery", json={"nics": inventory}).json()["node"]
        for path in (f"{V2}/nodes/{name}/network_plan", f"{V2}/nodes/{name}/neutron"):
            assert error(api.get(path), 422, "invalid")["field"] == field
    # names that are digits to Python but not to int() sort like any name
    name = anonymous.post(f"{V2}/discovery", json={"nics": [{"mac": "52:54:00:00:01:01", "name": "²"},
                                                            {"mac": "52:54:00:00:01:02", "name": "eth٣"},
                                                            {"mac": "52:54:00:00:01:03", "name": "eth1"}]}).json()["node"]
    assert api.get(f"{V2}/nodes/{name}/network_plan").status_code == 200
    assert [n.name for n in order_nics([{"name": "eth10"}, {"name": "²"}, {"name": "eth2"}, {"name": "eth٣"}])] \
        == ["eth2", "eth10", "eth٣", "²"]


# -- 5. reading what an older server stored -------------------------------------------------------------
@pytest.fixture
def sqlite_api(sqlite_db, tmp_path):
    """SQLite only: PostgreSQL's jsonb refuses NaN and lone surrogates, so it never stored them."""
    with sqlite_db.session() as s:
        token = auth.ensure_admin_token(s, tmp_path / "admin.token")
    with TestClient(create_app(AppSettings(db=sqlite_db)), headers={"authorization": f"Bearer {token}"}) as client:
        yield client


def test_values_stored_before_the_strict_rules_are_read_back_readable(sqlite_api, sqlite_db):
    """Before: a node whose discovery held a lone surrogate or NaN answered 500 on every GET."""
    assert sqlite_api.post(f"{V2}/nodes", json={"name": "old.example.com"}).status_code == 201
    with sqlite_db.session() as s:
        n = s.scalar(select(Node).where(Node.name == "old.example.com"))
        n.discovery = {"bad\ud800key": "x\udc00y", "nan": float("nan"), "inf": [float("-inf")]}
    r = sqlite_api.get(f"{V2}/nodes/old.example.com")
    assert r.status_code == 200, r.text
    assert r.json()["discovery"] == {"bad\ufffdkey": "x\ufffdy", "nan": None, "inf": [None]}
    assert sqlite_api.get(f"{V2}/nodes").status_code == 200


def test_the_response_class_renders_what_json_cannot_carry():
    assert body.dumps({"a": float("nan"), "b": "\ud800", "c": "\U0001F600"}) == \
        '{"a":null,"b":"\ufffd","c":"\U0001F600"}'.encode()
    assert body.dumps({"a": 1}) == b'{"a":1}'


def test_network_templates_parsed_from_yaml_refuse_what_json_cannot_store():
    for text in ('networks: {"\\uD800": {}}', "mode: .inf", "networks: {1: {}}"):
        with pytest.raises(InvalidInput):
            parse_template(text)

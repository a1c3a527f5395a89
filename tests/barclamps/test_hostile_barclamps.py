"""Hostile barclamps (issue 8): an author who wants the server's memory, its files or a 500, and an
admin who imports what they were given.

Every way in is covered: a directory on the server (`{"path": ...}`, the built-in barclamps), the
files a client uploads (`{"files": ...}`), and `crowbar barclamps import DIR`, which reads the
directory and uploads it. Whatever the barclamp holds the answer is one 4xx error body naming the
file (the CLI: one line on stderr, exit 1) and nothing is written. docs/security.md ("Barclamps")
lists the limits.
"""

from __future__ import annotations

import copy
import json
import os
import re
import shutil
import sys
import textwrap
import time
import tracemalloc
from pathlib import Path

import anyio
import pytest
import yaml
from fastapi.testclient import TestClient
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from sqlalchemy import func, select

from crowbar.barclamps import builtin_paths, files, limits, loader, strict_yaml
from crowbar.cli import barclamps as cli_barclamps
from crowbar.cli import main
from crowbar.cli.client import Client
from crowbar.db.models import Attrib, Barclamp, Event, Role
from crowbar.errors import BarclampError
from crowbar.jigs import script as script_jig
from crowbar.services import catalog

V2 = "/api/v2"
GOOD = 'barclamp: {name: fx, version: "1"}\nroles:\n  - {name: fx-a, jig: script}\n'
BILLION_LAUGHS = "\n".join(
    ['lol0: &lol0 ["lol", "lol", "lol", "lol", "lol", "lol", "lol", "lol", "lol"]']
    + [f"lol{i}: &lol{i} [{', '.join([f'*lol{i - 1}'] * 9)}]" for i in range(1, 10)]
    + ['barclamp: {name: fx}', 'roles: [{name: fx-a, template: {x: *lol9}}]']) + "\n"


def make(root: Path, yml: str = GOOD, scripts: dict[str, str | bytes] | None = None, name: str = "bc") -> Path:
    d = root / name
    d.mkdir(parents=True, exist_ok=True)
    (d / "barclamp.yml").write_text(textwrap.dedent(yml))
    for rel, content in ({"scripts/fx-a/10-run.sh": "#!/bin/sh\necho ok\n"} if scripts is None else scripts).items():
        target = d / rel
        target.parent.mkdir(parents=True, exist_ok=True)
        target.write_bytes(content if isinstance(content, bytes) else content.encode())
    return d


def counts(db) -> tuple[int, ...]:
    with db.session() as s:
        return tuple(s.scalar(select(func.count()).select_from(m)) for m in (Barclamp, Role, Attrib, Event))


def refused(fn, *words: str) -> BarclampError:
    with pytest.raises(BarclampError) as exc:
        fn()
    for word in words:
        assert word in exc.value.message, exc.value.message
    assert exc.value.status == 422
    return exc.value


def error_body(r, status: int) -> dict:
    assert r.status_code == status, r.text
    body = r.json()
    assert set(body) <= {"error", "message", "field", "details"} and body["message"], body
    return body


@pytest.fixture
def cli(api, monkeypatch, capsys):
    """`crowbar ...` in-process against the test app: (exit code, stdout, stderr); `cli.requests`
    counts what reached the server."""
    http = TestClient(api.app, base_url="http://testserver/api/v2", headers=dict(api.headers))
    fake = Client.__new__(Client)
    fake.endpoint, fake.token_source, fake.http = "http://testserver", None, http
    monkeypatch.setattr(main, "Client", lambda endpoint: fake)
    requests: list[str] = []
    http.event_hooks["request"].append(lambda request: requests.append(f"{request.method} {request.url.path}"))

    def run(*args: str) -> tuple[int, str, str]:
        monkeypatch.setattr(sys, "argv", ["crowbar", *args])
        code = 0
        try:
            main.main()
        except SystemExit as exc:
            code = exc.code
        out, err = capsys.readouterr()
        return code, out, err

    run.requests = requests
    yield run
    http.close()


def cli_fails(cli, directory: Path, *words: str) -> str:
    code, out, err = cli("barclamps", "import", str(directory))
    assert code == 1 and out == "", (code, out, err)
    assert err.startswith("error: ") and err.count("\n") == 1 and "Traceback" not in err, err
    for word in words:
        assert word in err, err
    return err


# -- YAML: alias bombs, depth, duplicate and non-string keys, values JSON cannot hold -------------
HOSTILE_YAML = [
    ("alias-bomb", BILLION_LAUGHS, r"would expand to more than 1,000,000"),
    ("alias-inside-itself", "barclamp: &a {name: fx, x: [*a]}\n", r"alias \*a is used inside the node it names"),
    ("nested-too-deep", "barclamp: {name: fx}\nroles: [{name: fx-a, template: {x: " + "[" * 70 + "]" * 70 + "}}]\n",
     r"nested deeper than 64 levels"),
    ("duplicate-key", "barclamp: {name: fx}\nroles:\n  - name: fx-a\n    jig: noop\n    jig: script\n",
     r"line 5, column 5: duplicate key 'jig' \(first at line 4\)"),
    ("duplicate-top-level-key", "barclamp: {name: fx}\nroles: []\nbarclamp: {name: fy}\n",
     r"line 3, column 1: duplicate key 'barclamp' \(first at line 1\)"),
    ("integer-key", "barclamp: {name: fx}\nroles: [{name: fx-a, template: {1: one, '1': also one}}]\n",
     r"mapping key '1' is not a string \(quote it\)"),
    ("boolean-key", "barclamp: {name: fx}\nroles: [{name: fx-a, template: {yes: 1}}]\n", r"mapping key 'yes' is not a string"),
    ("complex-key", "barclamp: {name: fx}\n? [a, b]\n: c\n", r"a mapping key is a sequence"),
    ("nan", "barclamp: {name: fx}\nroles: [{name: fx-a, template: {x: .nan}}]\n", r"NaN and infinities are not allowed"),
    ("infinity", "barclamp: {name: fx}\nroles: [{name: fx-a, template: {x: 1.0e+999}}]\n", r"NaN and infinities"),
    ("huge-integer", "barclamp: {name: fx}\nroles: [{name: fx-a, template: {x: " + "9" * 5000 + "}}]\n", r"too large"),
    ("binary", "barclamp: {name: fx}\nroles: [{name: fx-a, template: {x: !!binary aGk=}}]\n", r"type 'binary' is not allowed"),
    ("set", "barclamp: {name: fx}\nroles: [{name: fx-a, template: !!set {a}}]\n", r"type 'set' is not allowed"),
    ("timestamp", "barclamp: {name: fx}\nroles: [{name: fx-a, template: {x: !!timestamp 2020-01-01}}]\n",
     r"type 'timestamp' is not allowed"),
    ("nul", 'barclamp: {name: fx, description: "a\\0b"}\n', r"NUL"),
    ("python-object", "barclamp: !!python/object/apply:os.system [true]\n", r"could not determine a constructor"),
    ("two-documents", "barclamp: {name: fx}\n---\nbarclamp: {name: fy}\n", r"expected a single document"),
]


@pytest.mark.parametrize("yml,reason", [c[1:] for c in HOSTILE_YAML], ids=[c[0] for c in HOSTILE_YAML])
def test_hostile_yaml_is_refused_with_the_line(tmp_path, yml, reason):
    d = make(tmp_path, yml, scripts={})
    exc = refused(lambda: loader.read(d), str(d / "barclamp.yml"), "invalid YAML")
    assert re.search(reason, exc.message), exc.message


@pytest.mark.parametrize("yml,reason", [c[1:] for c in HOSTILE_YAML], ids=[c[0] for c in HOSTILE_YAML])
def test_pyyamls_own_parser_is_as_strict(yml, reason):
    """Where PyYAML was built without libyaml, its pure-Python parser feeds the same checks."""
    with pytest.raises(yaml.YAMLError) as exc:
        strict_yaml.load(yml, strict_yaml.PyStrictLoader)
    assert re.search(reason, strict_yaml.describe(exc.value)), strict_yaml.describe(exc.value)


def test_an_alias_bomb_is_refused_before_it_is_expanded(tmp_path, api, db):
    """Billion laughs: nine lines that expand to 9^10 strings. It took the server to 3.6 GB and
    stalled every request for 60 s; refused now in milliseconds, in a few MB, on every way in."""
    d = make(tmp_path, BILLION_LAUGHS, scripts={})
    before = counts(db)
    tracemalloc.start()
    started = time.monotonic()
    try:
        refused(lambda: loader.read(d), "would expand")
        r = api.post(f"{V2}/barclamps", json={"files": {"barclamp.yml": BILLION_LAUGHS}})
        body = error_body(r, 422)
        assert body["error"] == "invalid_barclamp" and "would expand" in body["message"]
        body = error_body(api.post(f"{V2}/barclamps", json={"path": str(d)}), 422)
        assert "would expand" in body["message"]
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert time.monotonic() - started < 5
    assert peak < 64 * 1024 * 1024
    assert counts(db) == before


def test_aliases_and_merge_keys_within_the_budget_still_work(tmp_path):
    d = make(tmp_path, """\
        barclamp: {name: fx, version: 2024-01-01}
        roles:
          - name: fx-a
            jig: script
            template: &base {fx: {port: 80, when: 2024-01-01}}
          - name: fx-b
            template: {<<: *base, extra: true}
        """)
    bc = loader.read(d)
    assert bc.version == "2024-01-01"  # a date is the string it looks like
    a, b = bc.roles
    assert a.template == {"fx": {"port": 80, "when": "2024-01-01"}}
    assert b.template == {"fx": {"port": 80, "when": "2024-01-01"}, "extra": True}


def test_lone_surrogates_are_refused_by_either_parser():
    """libyaml refuses the escape "\\ud800" itself; PyYAML's own parser lets it through to the
    composer, which refuses it."""
    text = 'barclamp: {name: fx, description: "\\ud800"}\n'
    with pytest.raises(yaml.YAMLError):
        strict_yaml.load(text)
    with pytest.raises(yaml.YAMLError, match="lone surrogates"):
        strict_yaml.load(text, strict_yaml.PyStrictLoader)


# -- sizes: checked before parsing, on every way in -------------------------------------------------
def test_a_large_barclamp_yml_is_refused_before_it_is_parsed(tmp_path, monkeypatch):
    monkeypatch.setattr(strict_yaml, "load", lambda text: pytest.fail("parsed a file over the limit"))
    text = GOOD + "# " + "x" * limits.MAX_YAML_BYTES + "\n"
    d = make(tmp_path, text)
    refused(lambda: loader.read(d), str(d / "barclamp.yml"), "larger than the limit of 262,144")
    refused(lambda: loader.read_files({"barclamp.yml": text}, "/src"), "/src/barclamp.yml", "262,144")


def test_a_50_mb_barclamp_yml_is_refused_without_reading_it(tmp_path, api, db, cli):
    """It made the CLI time out and was then committed anyway."""
    d = make(tmp_path, GOOD)
    with open(d / "barclamp.yml", "r+b") as f:
        f.truncate(50 * 1024 * 1024)  # sparse: 50 MB by its size, nothing on disk
    before = counts(db)
    started = time.monotonic()
    body = error_body(api.post(f"{V2}/barclamps", json={"path": str(d)}), 422)
    assert str(d / "barclamp.yml") in body["message"] and "262,144" in body["message"]
    cli_fails(cli, d, str(d / "barclamp.yml"), "52,428,800 bytes", "262,144")
    assert "POST /api/v2/barclamps" not in cli.requests, "the CLI sent it anyway"
    assert time.monotonic() - started < 5
    assert counts(db) == before


@pytest.mark.parametrize("case", ["script", "count", "total"])
def test_scripts_are_held_to_their_limits(tmp_path, case):
    if case == "script":
        scripts = {"scripts/fx-a/big.sh": "#" * (limits.MAX_SCRIPT_BYTES + 1)}
        words = ["scripts/fx-a/big.sh", "larger than the limit of 1,048,576"]
    elif case == "count":
        scripts = {f"scripts/fx-a/{i:03}.sh": "true\n" for i in range(limits.MAX_FILES)}
        words = ["more than 500 files"]
    else:
        scripts = {f"scripts/fx-a/{i}.sh": "#" * (900 * 1024) for i in range(5)}
        words = ["more than 4,194,304 bytes of files in all"]
    d = make(tmp_path, GOOD, scripts)
    refused(lambda: loader.read(d), *words)
    uploaded = {"barclamp.yml": GOOD, **scripts}
    refused(lambda: loader.read_files(uploaded, "/src"), *words)


def test_the_cli_checks_the_limits_before_it_sends(tmp_path, cli, monkeypatch):
    d = make(tmp_path, GOOD, {"scripts/fx-a/big.sh": "#" * (limits.MAX_SCRIPT_BYTES + 1)})
    cli_fails(cli, d, str(d / "scripts/fx-a/big.sh"), "1,048,576")
    d = make(tmp_path, GOOD, {f"scripts/fx-a/{i:03}.sh": "true\n" for i in range(limits.MAX_FILES)}, name="many")
    cli_fails(cli, d, "501 files", "at most 500")
    monkeypatch.setattr(cli_barclamps, "MAX_UPLOAD_BODY", 100)
    cli_fails(cli, make(tmp_path, GOOD, name="small"), "the upload would be", "at most 100")
    assert cli.requests == []


def test_the_clis_limits_are_the_servers():
    assert (cli_barclamps.MAX_YAML_BYTES, cli_barclamps.MAX_SCRIPT_BYTES, cli_barclamps.MAX_FILES,
            cli_barclamps.MAX_TOTAL_BYTES, cli_barclamps.MAX_UPLOAD_BODY) == (
        limits.MAX_YAML_BYTES, limits.MAX_SCRIPT_BYTES, limits.MAX_FILES, limits.MAX_TOTAL_BYTES,
        limits.MAX_UPLOAD_BODY)


def test_an_upload_larger_than_its_limit_is_413(api, db):
    before = counts(db)
    big = b'{"files": {"barclamp.yml": "' + b"x" * limits.MAX_UPLOAD_BODY + b'"}}'
    body = error_body(api.post(f"{V2}/barclamps", content=big, headers={"content-type": "application/json"}), 413)
    assert body["error"] == "too_large" and "16,777,216" in body["message"]
    assert counts(db) == before


def test_the_token_is_checked_before_the_body_is_read(api, db):
    before = counts(db)
    anonymous = TestClient(api.app)
    for content in [b"{not json", b"x" * (limits.MAX_UPLOAD_BODY + 1), json.dumps({"path": "/etc"}).encode()]:
        r = anonymous.post(f"{V2}/barclamps", content=content, headers={"content-type": "application/json"})
        assert error_body(r, 401)["error"] == "unauthorized"
    assert counts(db) == before


def test_the_openapi_document_describes_the_upload(api):
    op = api.get(f"{V2}/openapi.json").json()["paths"][f"{V2}/barclamps"]["post"]
    schema = op["requestBody"]["content"]["application/json"]["schema"]
    assert set(schema["properties"]) == {"path", "files", "source"}
    assert {"201", "413", "422"} <= set(op["responses"]) and "16,777,216" in op["description"]


def asgi_post(app, token: str, chunks, after_body: str = "wait", content_length: int | None = None):
    """POST /api/v2/barclamps straight to the ASGI app: the body in `chunks`, then either a client
    that waits for its answer or one that has gone ("gone"). Returns (status, body, chunks read)."""
    sent: list[dict] = []
    state = {"read": 0, "done": False}
    chunks = list(chunks)

    async def receive():
        if state["read"] < len(chunks):
            state["read"] += 1
            return {"type": "http.request", "body": chunks[state["read"] - 1],
                    "more_body": state["read"] < len(chunks)}
        if after_body == "gone":
            return {"type": "http.disconnect"}
        await anyio.sleep_forever()

    async def send(message):
        sent.append(message)

    headers = [(b"authorization", f"Bearer {token}".encode()), (b"content-type", b"application/json")]
    if content_length is not None:
        headers.append((b"content-length", str(content_length).encode()))
    scope = {"type": "http", "asgi": {"version": "3.0"}, "http_version": "1.1", "method": "POST", "scheme": "http",
             "path": f"{V2}/barclamps", "raw_path": f"{V2}/barclamps".encode(), "query_string": b"", "root_path": "",
             "headers": headers, "client": ("127.0.0.1", 40000), "server": ("testserver", 80)}
    anyio.run(app, scope, receive, send)
    status = next(m["status"] for m in sent if m["type"] == "http.response.start")
    body = b"".join(m.get("body", b"") for m in sent if m["type"] == "http.response.body")
    return status, json.loads(body), state["read"]


def test_a_long_upload_is_cut_off_as_soon_as_it_passes_the_limit(api, db, admin_token):
    """No Content-Length (chunked): the server stops reading at the limit, not at the end."""
    mib = b"x" * (1024 * 1024)
    status, body, read = asgi_post(api.app, admin_token, [b'{"files": {"barclamp.yml": "'] + [mib] * 50)
    assert status == 413 and body["error"] == "too_large"
    assert read <= 18, f"read {read} MiB of a 50 MiB body"
    status, body, read = asgi_post(api.app, admin_token, [b"{}"] * 3, content_length=50 * 1024 * 1024)
    assert status == 413 and "52,428,800" in body["message"] and read == 0


def test_an_import_the_client_gave_up_on_is_not_committed(api, db, admin_token):
    """The unit of work commits before the answer is sent; a client that has gone by then (the
    CLI's timeout, ^C) is noticed before the commit, and the import is rolled back."""
    upload = json.dumps({"files": {"barclamp.yml": 'barclamp: {name: fx}\nroles: [{name: fx-a}]\n'}}).encode()
    before = counts(db)
    status, body, _ = asgi_post(api.app, admin_token, [upload], after_body="gone")
    assert status == 499 and body["error"] == "client_gone"
    assert counts(db) == before
    status, body, _ = asgi_post(api.app, admin_token, [upload])
    assert status == 201 and body["name"] == "fx"
    assert api.get(f"{V2}/barclamps/fx").status_code == 200


# -- symbolic links and special files: never followed, never read ---------------------------------
@pytest.fixture
def secret(tmp_path) -> Path:
    path = tmp_path / "outside" / "ssh_host_ed25519_key"
    path.parent.mkdir()
    path.write_text("-----BEGIN OPENSSH PRIVATE KEY----- not for barclamps\n")
    return path


LINKS = ["script", "barclamp.yml", "role-directory", "scripts-directory"]


def linked(tmp_path: Path, secret: Path, case: str) -> tuple[Path, str]:
    """A barclamp with a symbolic link where `case` says, and the file the error must name."""
    d = make(tmp_path, GOOD, {}, name=case)
    if case == "script":
        (d / "scripts/fx-a").mkdir(parents=True)
        os.symlink(secret, d / "scripts/fx-a/10-run.sh")
        return d, "scripts/fx-a/10-run.sh"
    if case == "barclamp.yml":
        real = tmp_path / "outside" / f"{case}.yml"
        real.write_text(GOOD)
        (d / "barclamp.yml").unlink()
        os.symlink(real, d / "barclamp.yml")
        return d, "barclamp.yml"
    if case == "role-directory":
        (d / "scripts").mkdir()
        os.symlink(secret.parent, d / "scripts/fx-a")  # /etc/ssh as a role's scripts
        return d, "scripts/fx-a"
    os.symlink(secret.parent, d / "scripts")
    return d, "scripts"


@pytest.mark.parametrize("case", LINKS)
def test_symbolic_links_are_never_followed_on_the_server(tmp_path, secret, api, db, case):
    d, rel = linked(tmp_path, secret, case)
    before = counts(db)
    body = error_body(api.post(f"{V2}/barclamps", json={"path": str(d)}), 422)
    assert body["message"].startswith(f"{d / rel}: ") and "symbolic link" in body["message"], body
    assert "PRIVATE KEY" not in json.dumps(body)
    assert counts(db) == before


@pytest.mark.parametrize("case", LINKS)
def test_the_cli_never_follows_a_symbolic_link(tmp_path, secret, cli, db, case):
    """It uploaded /etc/passwd through a symlinked script."""
    d, rel = linked(tmp_path, secret, case)
    before = counts(db)
    err = cli_fails(cli, d, str(d / rel), "symbolic link")
    assert "PRIVATE KEY" not in err
    assert cli.requests == [] and counts(db) == before


def test_a_fifo_or_socket_is_refused_without_opening_it(tmp_path, cli):
    d = make(tmp_path, GOOD, {})
    (d / "scripts/fx-a").mkdir(parents=True)
    os.mkfifo(d / "scripts/fx-a/10-run.sh")  # opening it for reading would wait forever
    refused(lambda: loader.read(d), str(d / "scripts/fx-a/10-run.sh"), "a FIFO")
    cli_fails(cli, d, str(d / "scripts/fx-a/10-run.sh"), "not a regular file")
    d2 = make(tmp_path, GOOD, {}, name="fifo-yml")
    (d2 / "barclamp.yml").unlink()
    os.mkfifo(d2 / "barclamp.yml")
    refused(lambda: loader.read(d2), str(d2 / "barclamp.yml"), "a FIFO")
    cli_fails(cli, d2, str(d2 / "barclamp.yml"), "not a regular file")


def test_the_path_option_names_a_barclamp_not_any_file(tmp_path, api, secret):
    """A careless `{"path": "/etc/shadow"}` is not parsed as YAML (whose error would quote it)."""
    for path, words in [(str(secret), ["not a barclamp"]), (str(tmp_path / "nowhere"), ["no such file"]),
                        ("bad\0path", ["NUL"]), (str(tmp_path), ["barclamp.yml", "no such file"])]:
        body = error_body(api.post(f"{V2}/barclamps", json={"path": path}), 422)
        assert body["field"] == "path" and all(w in body["message"] for w in words), body
        assert "PRIVATE KEY" not in body["message"]


def test_a_yaml_error_does_not_quote_the_file(tmp_path):
    d = make(tmp_path, "barclamp: {name: fx}\nsecret: [hunter2\n", {})
    exc = refused(lambda: loader.read(d), "invalid YAML at line")
    assert "hunter2" not in exc.message


# -- script names the script jig cannot run -------------------------------------------------------
BAD_SCRIPT_NAMES = [(".hidden", "may not start with '.'"), (".crowbar", "may not start with '.'"),
                    ("esc\x1b[31m", "printable ASCII"), ("new\nline", "printable ASCII"), ("é.sh", "printable ASCII"),
                    ("n" * 101, "at most 100")]


@pytest.mark.parametrize("name,reason", BAD_SCRIPT_NAMES, ids=[f"name{i}" for i in range(len(BAD_SCRIPT_NAMES))])
def test_script_names_the_jig_cannot_run_are_refused(tmp_path, api, db, name, reason):
    """A name starting with '.' imported, then failed every run."""
    before = counts(db)
    body = error_body(api.post(f"{V2}/barclamps", json={"files": {"barclamp.yml": GOOD,
                                                                   f"scripts/fx-a/{name}": "true\n"}}), 422)
    assert reason in body["message"] and body["field"] == "files", body
    d = make(tmp_path, GOOD, {f"scripts/fx-a/{name}": "true\n"})
    refused(lambda: loader.read(d), str(d / "scripts/fx-a"), reason)
    assert counts(db) == before


@pytest.mark.parametrize("name", ["10-setup.sh", "a b", "-dash", "UPPER_case+1.py", "x" * 100])
def test_script_names_the_jig_runs_are_accepted_and_it_runs_them(tmp_path, name):
    bc = loader.read(make(tmp_path, GOOD, {f"scripts/fx-a/{name}": "true\n"}))
    assert [s["name"] for s in bc.roles[0].scripts] == [name]
    assert script_jig._check_names(bc.roles[0].scripts) is None


# -- file/directory clashes, odd paths and text that is not text ------------------------------------
GOOD_FILES = {"barclamp.yml": GOOD, "scripts/fx-a/10-run.sh": "true\n"}
UPLOADS = [
    ("file-and-directory", {**GOOD_FILES, "scripts/fx-a": "x"}, "'scripts/fx-a'"),
    ("yml-as-directory", {**GOOD_FILES, "barclamp.yml/x": "x"}, "'barclamp.yml/x'"),
    ("dot-path", {**GOOD_FILES, "./barclamp.yml": "x"}, "relative and plain"),
    ("double-slash", {**GOOD_FILES, "scripts//fx-a/10.sh": "x"}, "relative and plain"),
    ("dot-dot", {**GOOD_FILES, "scripts/../../etc/passwd": "x"}, "relative and plain"),
    ("absolute", {**GOOD_FILES, "/etc/passwd": "x"}, "relative and plain"),
    ("deeper", {**GOOD_FILES, "scripts/fx-a/sub/10.sh": "x"}, "barclamp.yml, scripts/ROLE/NAME, ansible/..."),
    ("elsewhere", {**GOOD_FILES, "README": "x"}, "barclamp.yml, scripts/ROLE/NAME, ansible/..."),
    ("nul", {**GOOD_FILES, "scripts/fx-a/10-run.sh": "a\0b"}, "NUL"),
    ("no-barclamp-yml", {"scripts/fx-a/10-run.sh": "true\n"}, "missing from the upload"),
]


@pytest.mark.parametrize("uploaded,words", [c[1:] for c in UPLOADS], ids=[c[0] for c in UPLOADS])
def test_odd_uploads_are_422_not_500(api, db, uploaded, words):
    before = counts(db)
    # json.dumps writes a lone surrogate as the escape "\ud800", as a hostile client would send it
    r = api.post(f"{V2}/barclamps", content=json.dumps({"files": uploaded}), headers={"content-type": "application/json"})
    body = error_body(r, 422)
    assert words in body["message"] and body["field"] == "files", body
    assert counts(db) == before


def test_names_that_are_not_utf8_are_escaped_in_the_error_not_a_500(tmp_path, api, db):
    """A file name that is not UTF-8 reaches Python as a lone surrogate, and one may hold control
    characters; an error quoting either could not be encoded (500) or would reach the terminal."""
    before = counts(db)
    r = api.post(f"{V2}/barclamps", json={"files": {**GOOD_FILES, "scripts/fx-a/\x1b[2J.sh": "x"}})
    body = error_body(r, 422)
    assert "printable ASCII" in body["message"] and "\\x1b[2J.sh" in body["message"], body
    exc = refused(lambda: loader.read_files({**GOOD_FILES, "scripts/fx-a/\ud800.sh": "x"}, "/src"), "printable ASCII")
    assert "/src/scripts/fx-a/\\ud800.sh" in exc.message
    d = make(tmp_path, GOOD)
    os.symlink("/etc/passwd", os.path.join(os.fsencode(d / "scripts/fx-a"), b"caf\xe9"))
    body = error_body(api.post(f"{V2}/barclamps", json={"path": str(d)}), 422)
    assert body["message"].startswith(f"{d}/scripts/fx-a/caf\\udce9: a symbolic link"), body
    odd = os.path.join(os.fsencode(tmp_path), b"dir\xff")
    os.mkdir(odd)
    refused(lambda: loader.read(os.fsdecode(odd)), "not UTF-8")
    assert counts(db) == before


def test_bad_json_and_bad_sources_are_422(api):
    for content in [b"{not json", b'{"files": {"barclamp.yml": NaN}}', b"[" * 100_000, b'{"files": "x"}',
                    b'{"files": {"barclamp.yml": 5}}', b"\xff\xfe{}"]:
        body = error_body(api.post(f"{V2}/barclamps", content=content, headers={"content-type": "application/json"}),
                          422)
        assert body["error"] == "invalid", body
    for content in [b'{"files": {"barclamp.yml": "\\ud800"}}', b'{"files": {"\\ud800": 5}}', b'{"path": "\\udcff"}',
                    b'{"files": {"barclamp.yml": "x"}, "source": "\\udcff"}']:
        body = error_body(api.post(f"{V2}/barclamps", content=content, headers={"content-type": "application/json"}),
                          422)
        # refused at the HTTP edge (strict JSON), naming the member at fault
        assert body["field"] in ("files", "path", "source") and "lone" in body["message"] and "surrogate" in body["message"], body
    for source in ["a\0b", "x" * 5000, "new\nline", "esc\x1b"]:
        r = api.post(f"{V2}/barclamps", content=json.dumps({"files": {"barclamp.yml": GOOD}, "source": source}),
                     headers={"content-type": "application/json"})
        assert error_body(r, 422)["field"] == "source"


SERVER_SIDE = [
    ("yml-is-a-directory", lambda d: ((d / "barclamp.yml").unlink(), (d / "barclamp.yml").mkdir()),
     "barclamp.yml", "a directory, not a regular file"),
    ("scripts-is-a-file", lambda d: (shutil.rmtree(d / "scripts"), (d / "scripts").write_text("x")), "scripts",
     "not a directory"),
    ("yml-not-utf8", lambda d: (d / "barclamp.yml").write_bytes(b"barclamp: {name: caf\xe9}\n"),
     "barclamp.yml", "not UTF-8 text (byte 0xe9 at offset 20)"),
    ("script-not-utf8", lambda d: (d / "scripts/fx-a/10-run.sh").write_bytes(b"echo \xff\n"),
     "scripts/fx-a/10-run.sh", "not UTF-8 text"),
    ("script-binary", lambda d: (d / "scripts/fx-a/10-run.sh").write_bytes(b"\x7fELF\0\0"),
     "scripts/fx-a/10-run.sh", "NUL"),
    ("yml-control-character", lambda d: (d / "barclamp.yml").write_bytes(b"barclamp: {name: fx\x01}\n"),
     "barclamp.yml", "invalid YAML"),
]


@pytest.mark.parametrize("spoil,rel,words", [c[1:] for c in SERVER_SIDE], ids=[c[0] for c in SERVER_SIDE])
def test_odd_directories_are_422_not_500(tmp_path, api, db, cli, spoil, rel, words):
    """Through the server-side path option these answered 500."""
    d = make(tmp_path)
    spoil(d)
    before = counts(db)
    body = error_body(api.post(f"{V2}/barclamps", json={"path": str(d)}), 422)
    assert body["message"].startswith(f"{d / rel}: ") and words in body["message"], body
    code, _, err = cli("barclamps", "import", str(d))
    assert code == 1 and err.count("\n") == 1 and str(d / rel) in err, err
    assert counts(db) == before


# -- wrong types and sizes at every level -----------------------------------------------------------
WRONG = [
    ("roles-not-a-list", "barclamp: {name: fx}\nroles: 5\n", "the 'roles' section must be a list"),
    ("attribs-not-a-list", "barclamp: {name: fx}\nattribs: 5\n", "the 'attribs' section must be a list"),
    ("role-attribs-not-a-list", "barclamp: {name: fx}\nroles: [{name: fx-a, attribs: 5}]\n", "attribs must be a list"),
    ("jig-a-list", "barclamp: {name: fx}\nroles: [{name: fx-a, jig: [noop]}]\n", "unknown jig"),
    ("description-a-list", "barclamp: {name: fx}\nroles: [{name: fx-a, description: [1]}]\n", "description must be text"),
    ("version-a-mapping", "barclamp: {name: fx, version: {a: 1}}\n", "version must be text or a number"),
    ("version-too-long", f"barclamp: {{name: fx, version: '{'1' * 33}'}}\n", "at most 32"),
    ("barclamp-name-too-long", f"barclamp: {{name: {'x' * 129}}}\n", "at most 128"),
    ("role-name-too-long", f"barclamp: {{name: fx}}\nroles: [{{name: {'x' * 129}}}]\n", "at most 128"),
    ("role-name-newline", 'barclamp: {name: fx}\nroles: [{name: "fx-a\\n"}]\n', "role names are lower-case"),
    ("attrib-name-too-long", f"barclamp: {{name: fx}}\nattribs: [{{name: {'x' * 129}, map: a/b}}]\n", "at most 128"),
    ("attrib-name-slash", "barclamp: {name: fx}\nattribs: [{name: a/b, map: a/b}]\n", "without '/'"),
    ("attrib-map-empty", "barclamp: {name: fx}\nattribs: [{name: fx-x, map: /}]\n", "must be a path like 'a/b'"),
    ("schema-a-list", "barclamp: {name: fx}\nattribs: [{name: fx-x, map: a/b, schema: [1]}]\n", "schema must be a mapping"),
    ("schema-remote-ref", "barclamp: {name: fx}\nattribs: [{name: fx-x, map: a/b, default: 1, "
                          "schema: {$ref: 'http://127.0.0.1:9/schema.json'}}]\n", "only references inside the schema"),
    ("schema-file-ref", "barclamp: {name: fx}\nattribs: [{name: fx-x, map: a/b, default: 1, "
                        "schema: {properties: {a: {$ref: 'file:///etc/passwd'}}}}]\n", "only references inside"),
    ("schema-endless-ref", "barclamp: {name: fx}\nattribs: [{name: fx-x, map: a/b, schema: {$ref: '#'}}]\n",
     "refers to itself without end"),
    ("schema-dangling-ref", "barclamp: {name: fx}\nattribs: [{name: fx-x, map: a/b, default: 1, schema: {$ref: '#/nope'}}]\n",
     "cannot be evaluated"),
    ("schema-bad-$schema", "barclamp: {name: fx}\nattribs: [{name: fx-x, map: a/b, schema: {$schema: 5}}]\n",
     "has a bad schema"),
    ("schema-bad-pattern", "barclamp: {name: fx}\nattribs: [{name: fx-x, map: a/b, schema: {pattern: '('}}]\n",
     "has a bad schema"),
    ("null-description", "barclamp: {name: fx, description: ~}\nroles: [{name: fx-a, description: ~, jig: nope}]\n",
     "unknown jig"),
]


@pytest.mark.parametrize("yml,words", [c[1:] for c in WRONG], ids=[c[0] for c in WRONG])
def test_wrong_types_and_sizes_are_422_and_write_nothing(tmp_path, db, yml, words, monkeypatch):
    monkeypatch.setattr("urllib.request.urlopen", lambda *a, **k: pytest.fail("fetched a schema $ref"))
    d = make(tmp_path, yml, {})
    before = counts(db)
    with pytest.raises(BarclampError) as exc:
        with db.session() as s:
            catalog.import_barclamp(s, d)
    assert exc.value.message.startswith(str(d / "barclamp.yml")) and words in exc.value.message, exc.value.message
    assert counts(db) == before


def test_a_description_may_be_empty(tmp_path, db):
    with db.session() as s:
        out = catalog.import_barclamp(s, make(tmp_path, "barclamp: {name: fx, description: ~}\n"
                                                       "roles: [{name: fx-a, description: ~}]\n", {}))
    assert out["description"] == ""


def test_a_chain_of_thousands_of_roles_is_checked_without_recursion(tmp_path):
    n = 3000
    roles = "".join(f"  - {{name: fx-{i}, requires: [fx-{i + 1}]}}\n" for i in range(n)) + f"  - {{name: fx-{n}}}\n"
    bc = loader.read(make(tmp_path, "barclamp: {name: fx}\nroles:\n" + roles, {}))
    loader.check_against(bc, {}, set())
    bc.roles[-1].requires = ["fx-0"]
    with pytest.raises(BarclampError, match=rf"dependency cycle: fx-0 -> fx-1 -> .* -> fx-{n} -> fx-0"):
        loader.check_against(bc, {}, set())


def test_the_builtin_barclamps_pass_the_same_reader():
    for path in builtin_paths():
        root, texts = files.from_directory(path)
        assert "barclamp.yml" in texts and root == path
        assert {name for name in texts if name != "barclamp.yml"} == \
            {f.relative_to(path).as_posix() for f in (path / "scripts").rglob("*") if f.is_file()}


# -- a fuzz of the reader: whatever the document, BarclampError or a barclamp that can be stored ----
BASE = {
    "barclamp": {"name": "fx", "version": "1", "description": "d"},
    "attribs": [{"name": "fx-node", "map": "fx/node", "default": 1, "schema": {"type": "integer", "minimum": 0}}],
    "roles": [
        {"name": "fx-a", "jig": "noop", "description": "a", "requires": ["test-server"], "flags": ["implicit"],
         "wants-attribs": ["fx-node"], "conflicts": ["fx-c"], "template": {"fx": {"v": [1, 2]}},
         "attribs": [{"name": "fx-x", "map": "fx/x", "default": "s", "description": "x",
                      "schema": {"type": "string", "pattern": "^s$", "$defs": {"a": {"type": "string"}},
                                 "anyOf": [{"$ref": "#/$defs/a"}]}}]},
        {"name": "fx-b", "jig": "script", "requires": ["fx-a"]},
    ],
}
SCRIPTS = {"scripts/fx-b/10.sh": "#!/bin/sh\necho hi\n"}
SCALARS = st.one_of(
    st.none(), st.booleans(), st.integers(), st.integers(min_value=2 ** 63),
    st.floats(allow_nan=False, allow_infinity=False), st.text(max_size=12),
    st.sampled_from(["noop", "script", "fx-a", "fx-b", "implicit", "#", "#/nope", "http://127.0.0.1:9/x", "$ref", "a/b",
                     "", "/", "x" * 300, "fx-a\n", "Fx", "(", "file:///etc/passwd", "test-server", "1" * 40,
                     "http://json-schema.org/draft-04/schema#"]))
KEYS = st.sampled_from(["$ref", "$schema", "$id", "$dynamicRef", "type", "name", "map", "default", "schema", "items",
                        "properties", "pattern", "$defs", "enum", "anyOf", "not", "minimum", "required", "jig",
                        "roles", "attribs", "template", "flags", "requires"]) | st.text(max_size=6)
VALUES = st.recursive(SCALARS, lambda c: st.lists(c, max_size=3) | st.dictionaries(KEYS, c, max_size=3), max_leaves=12)


def _paths(doc, prefix=()):
    yield prefix
    items = doc.items() if isinstance(doc, dict) else enumerate(doc) if isinstance(doc, list) else ()
    for key, value in items:
        yield from _paths(value, prefix + (key,))


PATHS = list(_paths(BASE))


@st.composite
def documents(draw) -> str:
    """The valid BASE with one to three random changes (a value replaced, a key dropped or added,
    an item appended), dumped, and now and then broken as YAML."""
    doc = copy.deepcopy(BASE)
    for _ in range(draw(st.integers(1, 3))):
        where = draw(st.sampled_from(PATHS))
        if not where:
            doc = draw(VALUES)
            break
        try:
            parent = doc
            for part in where[:-1]:
                parent = parent[part]
            action, last = draw(st.integers(0, 3)), where[-1]
            if action == 0 and isinstance(parent, dict):
                del parent[last]
            elif action == 1 and isinstance(parent[last], dict):
                parent[last][draw(KEYS)] = draw(VALUES)
            elif action == 2 and isinstance(parent[last], list):
                parent[last].append(draw(VALUES))
            else:
                parent[last] = draw(VALUES)
        except (KeyError, IndexError, TypeError):
            continue  # an earlier change removed the way there
    text = yaml.safe_dump(doc, allow_unicode=draw(st.booleans()), sort_keys=False)
    if draw(st.integers(0, 4)) == 0:
        at = draw(st.integers(0, len(text)))
        text = text[:at] + draw(st.sampled_from(["&a", "*a", "<<: *a\n", "]", "{", ": :", "\n  - ", "!!binary x", "? ",
                                                 "\t", "'", '"\\ud800"', "\x85", "---\n", "~: 1\n", "1: x\n"])
                                 | st.text(max_size=4)) + text[at:]
    return text


EXTRA_FILES = st.dictionaries(
    st.sampled_from(["scripts/fx-b/10.sh", "scripts/fx-b/.x", "scripts/fx-b/a b", "scripts/fx-a", "x", "../x",
                     "scripts/fx-b/\x1b[1m", "scripts/fx-b/é", "barclamp.yml/x", "scripts//fx-b/1", "/abs",
                     "scripts/fx-b/", "./barclamp.yml", "scripts/fx-a/" + "n" * 120]),
    st.text(max_size=8) | st.sampled_from(["\0", "\ud800"]), max_size=3)


# 400 documents take a few seconds; FUZZ_EXAMPLES=5000 for a longer hunt (run clean at 6,000).
@settings(max_examples=int(os.environ.get("FUZZ_EXAMPLES", "400")), deadline=None, database=None,
          suppress_health_check=list(HealthCheck))
@given(documents(), EXTRA_FILES)
def test_fuzz_the_reader_raises_only_barclamp_errors(text, extra):
    try:
        bc = loader.read_files({"barclamp.yml": text, **SCRIPTS, **extra}, "/src")
        loader.check_against(bc, {"test-server": loader.ProvidedRole("test", [])}, {"test-marker"})
    except BarclampError as exc:
        assert exc.message.startswith("/src") and exc.message.isprintable(), exc.message
        return
    # What was accepted can be stored on both engines: strict JSON, no NUL, no lone surrogate.
    stored = [bc.name, bc.version, bc.description, str(bc.path)]
    for r in bc.roles:
        stored += [r.name, r.description, r.jig, r.requires, r.flags, r.wants_attribs, r.conflicts, r.template, r.scripts]
        stored += [[a.name, a.map, a.default, a.schema, a.description] for a in r.attribs]
    stored += [[a.name, a.map, a.default, a.schema, a.description] for a in bc.attribs]
    encoded = json.dumps(stored, allow_nan=False, ensure_ascii=False).encode("utf-8")
    assert b"\\u0000" not in encoded
    assert len(bc.name) <= limits.MAX_NAME and len(bc.version) <= limits.MAX_VERSION

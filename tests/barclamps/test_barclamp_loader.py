"""Barclamp import: every error names the file, the role and the reason; a failed import writes nothing;
a re-import updates in place."""

from __future__ import annotations

import re
import textwrap
from pathlib import Path

import pytest
from sqlalchemy import func, select

from crowbar.barclamps import builtin_paths, loader
from crowbar.db.models import Attrib, Barclamp, DeploymentRole, Event, NodeRole, Role
from crowbar.errors import BarclampError, CrowbarError
from crowbar.services import catalog, deployments, nodes


def write(tmp_path: Path, text: str, name: str = "bc") -> Path:
    d = tmp_path / name
    d.mkdir(exist_ok=True)
    (d / "barclamp.yml").write_text(textwrap.dedent(text))
    return d


def counts(s) -> tuple[int, ...]:
    return tuple(s.scalar(select(func.count()).select_from(m)) for m in (Barclamp, Role, Attrib, Event))


HEAD = 'barclamp: {name: fx, version: "1"}\nroles:\n'

# (case id, roles YAML, the role the message must name or None, a regex for the reason)
BAD = [
    ("unknown-required-role", """
      - {name: fx-a, requires: [fx-nope]}
     """, "fx-a", r"requires unknown role 'fx-nope'"),
    ("cycle", """
      - {name: fx-a, requires: [fx-b]}
      - {name: fx-b, requires: [fx-c]}
      - {name: fx-c, requires: [fx-a]}
     """, "fx-c", r"dependency cycle: fx-a -> fx-b -> fx-c -> fx-a"),
    ("self-cycle", """
      - {name: fx-a, requires: [fx-a]}
     """, "fx-a", r"dependency cycle: fx-a -> fx-a"),
    ("unknown-jig", """
      - {name: fx-a, jig: chef}
     """, "fx-a", r"unknown jig 'chef' \(known: .*noop.*\)"),
    ("bad-schema", """
      - name: fx-a
        attribs: [{name: fx-x, map: fx/x, schema: {type: nosuchtype}}]
     """, "fx-a", r"attrib 'fx-x' has a bad schema"),
    ("default-not-matching-schema", """
      - name: fx-a
        attribs: [{name: fx-x, map: fx/x, default: seven, schema: {type: integer}}]
     """, "fx-a", r"attrib 'fx-x': default does not match its schema"),
    ("duplicate-role", """
      - {name: fx-a}
      - {name: fx-a, jig: test}
     """, "fx-a", r"duplicate role"),
    ("role-of-another-barclamp", """
      - {name: test-server}
     """, "test-server", r"conflict: role already provided by barclamp 'test'"),
    ("unknown-flag", """
      - {name: fx-a, flags: [implicit, explosive]}
     """, "fx-a", r"unknown flags \['explosive'\]"),
    ("unknown-key", """
      - {name: fx-a, require: [test-server]}
     """, "fx-a", r"unknown keys \['require'\]"),
    ("wants-unknown-attrib", """
      - {name: fx-a, wants-attribs: [fx-nope]}
     """, "fx-a", r"wants unknown attrib 'fx-nope'"),
    ("attrib-of-another-barclamp", """
      - name: fx-a
        attribs: [{name: test-marker, map: fx/marker}]
     """, None, r"conflict: attrib 'test-marker' already defined by another barclamp"),
    ("invalid-yaml", """
      - {name: fx-a, requires: [test-server
     """, None, r"invalid YAML"),
    ("bad-role-name", """
      - {name: Fx_A}
     """, "Fx_A", r"role names are lower-case"),
]


def check_message(exc: CrowbarError, path: Path, role: str | None, reason: str) -> None:
    msg = exc.message
    assert msg.startswith(f"{path / 'barclamp.yml'}: "), msg   # the file
    if role:
        assert f"role '{role}': " in msg, msg                       # the role
    assert re.search(reason, msg), msg                              # the reason


@pytest.mark.parametrize("case,roles,role,reason", BAD, ids=[b[0] for b in BAD])
def test_a_bad_barclamp_is_refused_with_file_role_and_reason(sqlite_db, tmp_path, case, roles, role, reason):
    path = write(tmp_path, HEAD + textwrap.dedent(roles))
    with pytest.raises(BarclampError) as exc:
        with sqlite_db.session() as s:
            catalog.import_barclamp(s, path)
    check_message(exc.value, path, role, reason)
    assert exc.value.status == 422


def test_a_failed_import_writes_nothing(db, tmp_path):
    """Every bad barclamp above, on each engine: refused, and the database is as it was."""
    with db.session() as s:
        before = counts(s)
    for case, roles, role, reason in BAD:
        path = write(tmp_path, HEAD + textwrap.dedent(roles), case)
        with pytest.raises(BarclampError) as exc:
            with db.session() as s:
                catalog.import_barclamp(s, path)
        check_message(exc.value, path, role, reason)
    with db.session() as s:
        assert counts(s) == before
        assert s.scalar(select(Barclamp).where(Barclamp.name == "fx")) is None


def test_a_cycle_through_roles_already_in_the_database_is_refused(db, tmp_path):
    with db.session() as s:
        catalog.import_barclamp(s, write(tmp_path, HEAD + "  - {name: fx-b}\n", "b1"))
        catalog.import_barclamp(s, write(tmp_path, 'barclamp: {name: fy}\nroles:\n  - {name: fy-a, requires: [fx-b]}\n',
                                         "a"))
        before = counts(s)
    # fx now wants fx-b to require fy-a, which (in the database, in another barclamp) requires fx-b
    path = write(tmp_path, HEAD + "  - {name: fx-b, requires: [fy-a]}\n", "b2")
    with pytest.raises(BarclampError) as exc:
        with db.session() as s:
            catalog.import_barclamp(s, path)
    assert exc.value.message.startswith(str(path / "barclamp.yml"))
    assert "dependency cycle" in exc.value.message
    assert "fx-b -> fy-a -> fx-b" in exc.value.message
    with db.session() as s:
        assert counts(s) == before
        assert s.scalar(select(Role.requires).where(Role.name == "fx-b")) == []


def test_missing_file_and_missing_section(tmp_path):
    with pytest.raises(BarclampError, match="no such file"):
        loader.read(tmp_path / "nowhere")
    path = write(tmp_path, "roles: []\n")
    with pytest.raises(BarclampError, match=r"barclamp\.yml: missing the 'barclamp' section"):
        loader.read(path)


V1 = """
barclamp: {name: fx, description: first, version: "1"}
attribs:
  - {name: fx-node-level, map: fx/node, default: 1, schema: {type: integer}}
roles:
  - name: fx-a
    jig: noop
    template: {fx: {v: 1}}
    attribs:
      - {name: fx-size, map: fx/size, default: 1, schema: {type: integer}}
      - {name: fx-old-attrib, map: fx/old}
  - name: fx-used
    jig: noop
  - name: fx-unused
    jig: noop
"""

V2 = """
barclamp: {name: fx, description: second, version: "2"}
roles:
  - name: fx-a
    jig: test
    flags: [milestone]
    requires: [fx-new]
    template: {fx: {v: 2}}
    attribs:
      - {name: fx-size, map: fx/size2, default: 2, schema: {type: integer, minimum: 2}}
  - name: fx-used
    jig: noop
  - name: fx-new
    jig: noop
"""


def test_reimport_updates_in_place(db, tmp_path):
    with db.session() as s:
        first = catalog.import_barclamp(s, write(tmp_path, V1, "v1"))
        nodes.create_node(s, "n1.example.com")
        deployments.create_deployment(s, "d1")
        deployments.bind(s, "d1", "fx-used", "n1.example.com")
        ids = dict(s.execute(select(Role.name, Role.id).where(Role.name.like("fx-%"))).all())
    with db.session() as s:
        second = catalog.import_barclamp(s, write(tmp_path, V2, "v2"), actor="carol")
    assert second["id"] == first["id"]
    assert (second["description"], second["version"]) == ("second", "2")
    assert sorted(second["roles"]) == ["fx-a", "fx-new", "fx-used"]
    with db.session() as s:
        a = s.scalar(select(Role).where(Role.name == "fx-a"))
        assert a.id == ids["fx-a"]  # updated, not replaced: noderoles keep pointing at it
        assert (a.jig, a.flags, a.requires, a.template) == ("test", ["milestone"], ["fx-new"], {"fx": {"v": 2}})
        size = s.scalar(select(Attrib).where(Attrib.name == "fx-size"))
        assert (size.map, size.default, size.schema["minimum"], size.role_id) == ("fx/size2", 2, 2, a.id)
        names = set(s.scalars(select(Attrib.name).where(Attrib.name.like("fx-%"))))
        assert names == {"fx-size"}  # attribs no longer defined are gone
        assert s.scalar(select(Role.id).where(Role.name == "fx-unused")) is None
        assert s.scalar(select(NodeRole.role_id).join(Role, Role.id == NodeRole.role_id)
                        .where(Role.name == "fx-used")) == ids["fx-used"]
        ev = s.scalars(select(Event).where(Event.object_type == "barclamp", Event.object_id == first["id"])
                       .order_by(Event.id)).all()
        assert [e.action for e in ev] == ["import", "update"]
        assert ev[-1].actor == "carol" and "fx 2" in ev[-1].message


def test_a_reimport_that_drops_a_role_in_use_changes_nothing(db, tmp_path):
    with db.session() as s:
        catalog.import_barclamp(s, write(tmp_path, V1, "v1"))
        nodes.create_node(s, "n1.example.com")
        deployments.create_deployment(s, "d1")
        deployments.bind(s, "d1", "fx-unused", "n1.example.com")
    with db.session() as s:
        before = counts(s) + (s.scalar(select(func.count()).select_from(DeploymentRole)),)
    with pytest.raises(CrowbarError) as exc:
        with db.session() as s:
            catalog.import_barclamp(s, write(tmp_path, V2, "v2"))
    assert exc.value.status == 409
    assert "fx-unused" in exc.value.message and "barclamp.yml" in exc.value.message
    with db.session() as s:
        assert counts(s) + (s.scalar(select(func.count()).select_from(DeploymentRole)),) == before
        bc = s.scalar(select(Barclamp).where(Barclamp.name == "fx"))
        assert (bc.description, bc.version) == ("first", "1")
        assert s.scalar(select(Role.template).where(Role.name == "fx-a")) == {"fx": {"v": 1}}


def test_the_builtin_barclamps_read_cleanly():
    names = {loader.read(p).name for p in builtin_paths()}
    assert {"crowbar", "test"} <= names
    test = next(loader.read(p) for p in builtin_paths() if loader.read(p).name == "test")
    roles = {r.name: r for r in test.roles}
    assert set(roles) >= {"test-admin", "test-server", "test-library", "test-client", "test-client-client",
                          "test-fails", "test-async"}
    assert "bootstrap" in roles["test-admin"].flags and "implicit" in roles["test-client"].flags
    assert set(roles["test-client"].requires) == {"test-server", "test-library"}

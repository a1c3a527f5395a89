"""The merged document a run receives (Run.attrs), layer by layer, and walls seen by children.

Order (lowest first), as in issue 2: role template < deployment-role data < noderole data < node attribs
(discovery, then hints) < attribs wanted from parents. An attrib's default sits below everything.
"""

from __future__ import annotations

import re
from pathlib import Path

import pytest
from enginekit import nr_of, runs_of
from sqlalchemy import select

from crowbar.db.models import Node
from crowbar.documents import dig
from crowbar.engine import attribs as precedence
from crowbar.services import attribs, deployments, nodes

N1, N2 = "n1.example.com", "n2.example.com"

LAYERS = ["default", "template", "deployment_role", "noderole", "discovery", "hint"]
DOCS = Path(__file__).resolve().parents[2] / "docs" / "attributes.md"


def test_the_documented_precedence_is_the_table_the_code_uses():
    rows = dict(re.findall(r"^\| `(\w+)`: .*? \| ([a-z_ <]+) \|$", DOCS.read_text(), re.M))
    assert rows == {view: " < ".join(order) for view, order in precedence.PRECEDENCE.items()}
    # the run order this file tests layer by layer, with the node's document opened up
    run = [src for layer in precedence.PRECEDENCE[precedence.RUN]
           for src in (precedence.PRECEDENCE[precedence.NODE] if layer == precedence.NODE else (layer,))]
    assert run == [*LAYERS, precedence.PARENT]


INJ = """
barclamp: {name: inj, version: "1"}
roles:
  - name: inj-plain           # no template: shows the attrib default alone
    jig: test
    attribs:
      - {name: inj-plain-value, map: inj/value, default: default, schema: {type: string}}
  - name: inj-parent
    jig: test
    attribs:
      - {name: inj-value, map: inj/value, default: default, schema: {type: string}}
    template: {inj: {value: template, only_template: true}}
  - name: inj-child
    jig: test
    requires: [inj-parent]
    wants-attribs: [inj-value]
    template: {inj: {value: child-template}}
"""


def test_each_layer_overrides_the_ones_below(db, annealer, import_yaml):
    """For each layer L, a node where layers up to L set the same path: its run sees L's value."""
    import_yaml(INJ)
    with db.session() as s:
        for top, layer in enumerate(LAYERS):
            on = set(LAYERS[: top + 1])
            node, dep = f"{layer.replace('_', '-')}.example.com", f"d-{layer}"
            role, attrib = ("inj-parent", "inj-value") if "template" in on else ("inj-plain", "inj-plain-value")
            nodes.create_node(s, node)
            deployments.create_deployment(s, dep)
            deployments.bind(s, dep, role, node)
            if "deployment_role" in on:
                deployments.set_role_data(s, dep, role, {"inj": {"value": "deployment_role",
                                                                 "only_deployment_role": True}})
            if "noderole" in on:
                nr_of(s, node, role).proposed = {"inj": {"value": "noderole", "only_noderole": True}}
            if "discovery" in on:
                # node data that no attrib maps (inj/unmapped) must not leak into the run
                s.scalar(select(Node).where(Node.name == node)).discovery = \
                    {"inj": {"value": "discovery", "unmapped": "leak"}}
            if "hint" in on:
                attribs.set_on_node(s, attrib, "hint", node)
            deployments.commit(s, dep)
    annealer.run_until_idle()
    with db.session() as s:
        for top, layer in enumerate(LAYERS):
            on = set(LAYERS[: top + 1])
            nr = nr_of(s, f"{layer.replace('_', '-')}.example.com", "inj-parent" if "template" in on else "inj-plain")
            (run,) = runs_of(s, nr.id)
            assert nr.state == "active"
            assert run.attrs["inj"]["value"] == layer, f"layers {sorted(on)}"
            # the merge is deep: keys of lower layers that higher ones do not set survive
            for lower in ("template", "deployment_role", "noderole"):
                assert run.attrs["inj"].get(f"only_{lower}") is (True if lower in on else None), (layer, lower)
            assert "unmapped" not in run.attrs["inj"]


def test_wanted_parent_value_beats_every_layer_of_the_child(db, annealer, import_yaml):
    import_yaml(INJ)
    with db.session() as s:
        nodes.create_node(s, N1)
        nodes.create_node(s, N2)
        deployments.create_deployment(s, "d1")
        deployments.bind(s, "d1", "inj-parent", N2)   # the parent lives on another node ...
        deployments.bind(s, "d1", "inj-child", N1)    # ... and is reused from the deployment
        deployments.set_role_data(s, "d1", "inj-parent", {"inj": {"value": "from-parent"}})
        deployments.set_role_data(s, "d1", "inj-child", {"inj": {"value": "child-deployment-role"}})
        nr_of(s, N1, "inj-child").proposed = {"inj": {"value": "child-noderole"}}
        attribs.set_on_node(s, "inj-value", "child-node-hint", N1)
        deployments.commit(s, "d1")
    annealer.run_until_idle()
    with db.session() as s:
        assert nr_of(s, N1, "inj-child").state == "active"
        (child_run,) = runs_of(s, nr_of(s, N1, "inj-child").id)
        assert child_run.attrs["inj"]["value"] == "from-parent"
        (parent_run,) = runs_of(s, nr_of(s, N2, "inj-parent").id)
        assert parent_run.attrs["inj"]["value"] == "from-parent"  # no hint on the parent's node


def marker_graph(db, client_node: str) -> None:
    """test-server on n1 (deployment d1) with test-marker = m1 in its deployment-role data;
    test-client on `client_node` (which wants test-marker)."""
    with db.session() as s:
        nodes.create_node(s, N1)
        nodes.create_node(s, N2)
        deployments.create_deployment(s, "d1")
        deployments.bind(s, "d1", "test-server", N1)
        deployments.bind(s, "d1", "test-client", client_node)
        deployments.set_role_data(s, "d1", "test-server", {"test": {"marker": "m1"}})
        deployments.commit(s, "d1")


@pytest.mark.parametrize("client_node", [N1, N2])
def test_a_parents_wall_is_visible_to_a_child_that_wants_it(db, annealer, client_node):
    marker_graph(db, client_node)
    annealer.run_until_idle()
    with db.session() as s:
        server = nr_of(s, N1, "test-server")
        client = nr_of(s, client_node, "test-client")
        assert (server.state, client.state) == ("active", "active")
        assert server.wall["test"]["marker"] == "m1"          # what test-server's run returned
        (run,) = runs_of(s, client.id)
        assert dig(run.attrs, "test/marker") == "m1"           # what test-client's run received
        assert client.wall["test"]["marker"] == "m1"
        got = attribs.get(s, "test-marker", node=N1)
        assert (got["value"], got["source"], got["noderole"]) == ("m1", "wall", server.id)
        if client_node != N1:  # the client's node has no test-server: it sees the value the client gets
            got = attribs.get(s, "test-marker", node=client_node)
            assert (got["value"], got["source"], got["noderole"]) == ("m1", "parent", client.id)


def test_the_wall_not_the_parents_input_is_what_children_get(db, annealer):
    """A hint on the server's node changes what the server runs with, so what it returns (its wall),
    which is what the client on another node must see, differs from the deployment-role value m1."""
    marker_graph(db, N2)
    with db.session() as s:
        attribs.set_on_node(s, "test-marker", "hinted", N1)
    annealer.run_until_idle()
    with db.session() as s:
        server, client = nr_of(s, N1, "test-server"), nr_of(s, N2, "test-client")
        assert server.wall["test"]["marker"] == "hinted"
        (run,) = runs_of(s, client.id)
        assert dig(run.attrs, "test/marker") == "hinted"
        got = attribs.get(s, "test-marker", node=N1)
        assert (got["value"], got["source"]) == ("hinted", "hint")

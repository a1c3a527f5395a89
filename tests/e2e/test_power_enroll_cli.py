"""`crowbar nodes set-power --file FILE`: many nodes' power drivers and settings from one file (YAML or
JSON, a list of {node, driver, settings}), in one call; a bad file or item is one error line."""

from __future__ import annotations

import pytest

pytestmark = pytest.mark.e2e

PASSWORD = "s3cret-bmc-pw"


def test_the_cli_sets_many_nodes_power_from_a_file(server, tmp_path):
    s = server
    for i in range(2):
        s.ok("nodes", "create", f"n{i}.e2e.test")
    file = tmp_path / "bmcs.yaml"
    file.write_text("".join(f"- node: n{i}.e2e.test\n  driver: ipmi\n  settings:\n    address: 10.0.9.{i}\n"
                            f"    username: crowbar\n    password: {PASSWORD}\n" for i in range(2)))
    answer = s.json("nodes", "set-power", "--file", file)
    assert [(item["node"], item["driver"]) for item in answer] == [("n0.e2e.test", "ipmi"), ("n1.e2e.test", "ipmi")]
    assert answer[1]["settings"]["password"] == "(set)"
    table = s.ok("nodes", "set-power", "--file", file).stdout
    assert "n1.e2e.test" in table and PASSWORD not in table
    assert s.json("nodes", "show-power", "n1.e2e.test")["settings"]["address"] == "10.0.9.1"

    file.write_text("- node: n0.e2e.test\n  driver: manual\n- node: n1.e2e.test\n  driver: ipmi\n  settings: {}\n")
    line = s.fails("nodes", "set-power", "--file", file).stderr
    assert "items[1]" in line and "n1.e2e.test" in line
    assert s.json("nodes", "show-power", "n0.e2e.test")["driver"] == "ipmi"  # nothing half-written

    for text in ("{broken: [", "just a string\n", "- 3\n", ""):
        file.write_text(text)
        s.fails("nodes", "set-power", "--file", file)
    s.fails("nodes", "set-power", "--file", tmp_path / "missing.yaml")
    s.fails("nodes", "set-power", "n0.e2e.test", "manual", "--file", file)  # a node and a file: which?
    s.fails("nodes", "set-power")  # neither

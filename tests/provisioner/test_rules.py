"""OS rules, pure: reading a rules document (every refusal names the rule and what is wrong), a
node's facts, first match wins, the default, tags, and the explanation of every verdict. And the
OS catalog's recipes: Debian 12 and 13 side by side, as data."""

from __future__ import annotations

import pytest

from crowbar.errors import InvalidInput
from crowbar.provisioner import osimage, rules

GIB = 1 << 30
CATALOG = ["debian-12", "debian-13"]
RULES = """
rules:
  - name: database
    when: "memory_gib >= `64` && contains(roles, 'postgresql')"
    os: debian-13
    tags: [big-mem, db]
    root_device: {size: ">= 100"}
  - name: uefi
    description: newer machines
    when: firmware == 'uefi'
    tags: [uefi]
  - name: ssd
    when: "inventory.disks[?rotational == `false`] | length(@) > `0`"
    os: debian-12
default:
  os: debian-12
  tags: [standard]
"""


def node(memory_gib=8, firmware="bios", roles=(), disks=None, tags=None, **extra):
    hints = {"crowbar": {"tags": tags}} if tags is not None else {}
    inventory = {"memory": {"total_bytes": int(memory_gib * GIB)}, "cpu": {"count": 4}, "firmware": firmware,
                 "disks": disks if disks is not None else [{"name": "vda", "size_bytes": 200 * GIB,
                                                            "rotational": True}]}
    return rules.facts(name="n1.example.com", state="allocated", inventory=inventory, hints=hints, roles=roles,
                       **extra)


@pytest.fixture
def ruleset():
    return rules.load(RULES, CATALOG)


def test_the_first_matching_rule_decides(ruleset):
    choice = rules.evaluate(ruleset, node(memory_gib=128, firmware="uefi", roles=["postgresql", "base"]))
    assert (choice.rule, choice.os, choice.root_device) == ("database", "debian-13", {"size": ">= 100"})
    assert choice.tags == ("big-mem", "db")  # the later uefi rule also holds: first match wins


def test_a_rule_without_an_os_takes_the_defaults(ruleset):
    choice = rules.evaluate(ruleset, node(firmware="uefi"))
    assert (choice.rule, choice.os, choice.root_device, choice.tags) == ("uefi", "debian-12", None, ("uefi",))


def test_no_rule_matches_the_default_applies(ruleset):
    choice = rules.evaluate(ruleset, node(memory_gib=128, roles=["web"]))
    assert (choice.rule, choice.os, choice.tags) == (None, "debian-12", ("standard",))


def test_filters_and_functions_over_the_inventory(ruleset):
    disks = [{"name": "sda", "size_bytes": 500 * GIB, "rotational": False}]
    assert rules.evaluate(ruleset, node(disks=disks)).rule == "ssd"


def test_the_operators_tags_come_first_and_stay(ruleset):
    choice = rules.evaluate(ruleset, node(firmware="uefi", tags=["rack-4", "uefi"]))
    assert choice.tags == ("rack-4", "uefi")
    assert rules.evaluate(rules.RuleSet(), node(tags=["rack-4"])).tags == ("rack-4",)


def test_no_rules_choose_nothing():
    choice = rules.evaluate(rules.RuleSet(), node())
    assert (choice.rule, choice.os, choice.root_device, choice.tags) == (None, None, None, ())


def test_a_condition_that_fails_to_evaluate_does_not_hold_and_says_why():
    ruleset = rules.load({"rules": [{"name": "odd", "when": "length(memory_gib) > `1`", "os": "debian-13"}]},
                         CATALOG)
    choice = rules.evaluate(ruleset, node(), explain=True)
    assert choice.rule is None
    (verdict,) = choice.verdicts
    assert not verdict["matched"] and "length" in verdict["error"] and "invalid type" in verdict["error"]


def test_jmespath_truth_zero_is_true_empty_is_false():
    ruleset = rules.load({"rules": [{"name": "zero", "when": "`0`", "tags": ["zero"]},
                                    {"name": "empty", "when": "roles", "tags": ["never"]}]})
    assert rules.evaluate(ruleset, node()).rule == "zero"
    assert [rules.truthy(v) for v in (0, [], {}, "", None, False, "x", [0])] == [True, False, False, False,
                                                                                 False, False, True, True]


def test_explain_gives_every_verdict_and_the_values_behind_it(ruleset):
    choice = rules.evaluate(ruleset, node(memory_gib=128, firmware="uefi", roles=["web"]), explain=True)
    verdicts = {v["rule"]: v for v in choice.verdicts}
    assert list(verdicts) == ["database", "uefi", "ssd"]  # every rule, in order, after the first match too
    database = verdicts["database"]
    assert not database["matched"] and not database["chosen"]
    assert database["why"] == ["memory_gib >= `64`: true (memory_gib = 128)", 'contains(roles, `"postgresql"`) = false']
    assert verdicts["uefi"]["chosen"] and verdicts["uefi"]["why"] == ['firmware == `"uefi"`: true (firmware = "uefi")']
    assert not verdicts["ssd"]["matched"]
    assert choice.rule == "uefi"
    shadowed = rules.evaluate(ruleset, node(memory_gib=128, firmware="uefi", roles=["postgresql"]), explain=True)
    assert "matches, but rule 'database' came first" in shadowed.verdicts[1]["why"]


def test_facts_are_the_inventory_plus_short_names():
    facts = node(memory_gib=15.5, disks=[{"name": "a", "size_bytes": 50 * GIB}, {"name": "b", "size_bytes": 500 * GIB},
                                        {"name": "usb", "size_bytes": 8 * GIB, "removable": True}],
                 roles=["b", "a", "a"], deployments=["web"])
    assert facts["memory_gib"] == 15 and facts["cpus"] == 4 and facts["firmware"] == "bios"
    assert facts["disks_gib"] == [500, 50] and facts["roles"] == ["a", "b"] and facts["deployments"] == ["web"]
    bare = rules.facts(name="n2", inventory={"memory": "lots", "disks": "none"})
    assert bare["memory_gib"] is None and bare["disks_gib"] == [] and bare["tags"] == []


@pytest.mark.parametrize("doc, words", [
    ("rules: [", "not valid YAML"),
    ("rules:\n  - name: a\n    when: x\n    name: b\n", "duplicate key"),
    ("[1, 2]", "must be a mapping"),
    ({"rules": {}}, "`rules` must be a list"),
    ({"rules": [], "defaults": {}}, "unknown key(s) defaults"),
    ({"rules": ["x"]}, "rule 1: must be a mapping"),
    ({"rules": [{"name": "Big Mem", "when": "x"}]}, "rule 1: name 'Big Mem'"),
    ({"rules": [{"name": "a", "when": "x"}, {"name": "a", "when": "y"}]}, "rule 2 (a): the name is used"),
    ({"rules": [{"name": "a"}]}, "rule 1 (a): `when` must be a JMESPath expression"),
    ({"rules": [{"name": "a", "when": "memory_gib >="}]}, "rule 1 (a): `when` is not a valid JMESPath"),
    ({"rules": [{"name": "a", "when": "x" * 3000}]}, "longer than 2000"),
    ({"rules": [{"name": "a", "when": "x", "os": "windows-95"}]}, "os 'windows-95' is not in the OS catalog"),
    ({"rules": [{"name": "a", "when": "x", "os": "../etc"}]}, "is not an OS name"),
    ({"rules": [{"name": "a", "when": "x", "tags": "big"}]}, "tags must be a list of strings"),
    ({"rules": [{"name": "a", "when": "x", "tags": ["Big Mem"]}]}, "tag 'Big Mem' must be lower case"),
    ({"rules": [{"name": "a", "when": "x", "root_device": {"colour": "red"}}]}, "unknown root device hint(s) colour"),
    ({"rules": [{"name": "a", "when": "x", "root_device": {"size": "huge"}}]}, "root device hint size 'huge'"),
    ({"rules": [{"name": "a", "when": "x", "eval": "1"}]}, "unknown key(s) eval"),
    ({"rules": [{"name": f"r{i}", "when": "x"} for i in range(201)]}, "at most 200 rules"),
    ({"default": {"os": "debian-99"}}, "default: os 'debian-99'"),
    ({"default": []}, "`default` must be a mapping"),
    ("a: &a [1,1,1,1,1,1,1,1,1,1]\nb: &b [*a,*a,*a,*a,*a,*a,*a,*a,*a,*a]\nc: &c [*b,*b,*b,*b,*b,*b,*b,*b,*b,*b]\n"
     "d: &d [*c,*c,*c,*c,*c,*c,*c,*c,*c,*c]\ne: &e [*d,*d,*d,*d,*d,*d,*d,*d,*d,*d]\n"
     "f: [*e,*e,*e,*e,*e,*e,*e,*e,*e,*e]\n", "not valid YAML"),  # an alias bomb, refused while read
])
def test_bad_rules_are_refused_with_the_reason(doc, words):
    with pytest.raises(InvalidInput) as caught:
        rules.load(doc, CATALOG)
    assert words in caught.value.message and caught.value.field == "rules"


def test_rules_round_trip_through_their_document(ruleset):
    again = rules.load(ruleset.as_dict(), CATALOG)
    assert again.as_dict() == ruleset.as_dict()
    assert rules.load(rules.to_yaml(ruleset), CATALOG).as_dict() == ruleset.as_dict()
    assert rules.load("", CATALOG).as_dict() == {"rules": [], "default": {"tags": []}}


def test_debian_12_and_13_recipes_side_by_side():
    catalog = osimage.recipes()
    assert {"debian-12", "debian-13"} <= set(catalog)
    old, new = catalog["debian-12"], catalog["debian-13"]
    assert (old.suite, new.suite) == ("bookworm", "trixie") and (old.version, new.version) == ("12", "13")
    assert new.kernel == "linux-image-amd64" and "cloud-init" in new.packages and "openssh-server" in new.packages
    # trixie ships its modules under /usr (merged /usr finished): the exclusions follow
    assert all(p.startswith("/usr/") for p in new.exclude)
    assert osimage.cache_key(old, "http://m", b"r") != osimage.cache_key(new, "http://m", b"r")

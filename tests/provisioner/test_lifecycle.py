from datetime import datetime, timedelta
from pathlib import Path

import pytest

from crowbar.errors import IllegalTransition, InvalidInput
from crowbar.provisioner import lifecycle as lc

DOC = Path(__file__).resolve().parents[2] / "docs" / "node-lifecycle.md"

HAPPY_PATH = ["discovering", "discovered", "allocated", "hardware-installing", "hardware-installed",
              "installing", "installed", "readying", "ready"]


def test_every_required_state_exists_and_every_target_is_a_state():
    required = set(HAPPY_PATH) | {"problem", "reset", "reinstall", "delete"}
    assert required <= set(lc.STATES)
    for state, targets in lc.TRANSITIONS.items():
        assert set(targets) <= set(lc.STATES), state
        assert state not in targets, f"{state} lists itself"
    assert set(lc.BOOTENVS) == set(lc.STATES)
    assert set(lc.TIMEOUTS) <= set(lc.STATES)


def test_the_happy_path_is_allowed_step_by_step():
    for current, target in zip(HAPPY_PATH, HAPPY_PATH[1:]):
        lc.check(current, target)


@pytest.mark.parametrize("current, target", [
    ("ready", "reinstall"), ("ready", "reset"), ("ready", "readying"), ("installed", "reinstall"),
    ("problem", "reinstall"), ("problem", "reset"), ("problem", "readying"),
    ("reinstall", "installing"), ("reset", "discovering"), ("allocated", "discovered"),
    ("installing", "problem"), ("discovered", "delete"), ("problem", "delete"),
])
def test_what_an_operator_expects_is_allowed(current, target):
    lc.check(current, target)


@pytest.mark.parametrize("current, target", [
    ("discovered", "installing"), ("ready", "installing"), ("discovering", "allocated"),
    ("problem", "ready"), ("delete", "discovering"), ("installing", "ready"),
])
def test_skipping_steps_is_refused_with_both_states_and_the_allowed_ones(current, target):
    with pytest.raises(IllegalTransition) as info:
        lc.check(current, target)
    message = info.value.message
    assert f"from {current} to {target}" in message
    for allowed in lc.TRANSITIONS[current]:
        assert allowed in message
    assert info.value.status == 409


def test_a_deleted_node_goes_nowhere_and_says_so():
    with pytest.raises(IllegalTransition, match="nothing"):
        lc.check("delete", "ready")


def test_staying_put_is_not_a_transition():
    with pytest.raises(IllegalTransition, match="already ready"):
        lc.check("ready", "ready")


def test_unknown_states_name_the_known_ones():
    with pytest.raises(InvalidInput, match="hardware-installing"):
        lc.check("ready", "flying")
    assert lc.parse(" Ready ") == "ready"


def test_every_live_state_can_fail_and_be_deleted():
    for state in lc.STATES:
        if state != "delete":
            assert "delete" in lc.allowed(state), state
        if state not in ("delete", "problem"):
            assert "problem" in lc.allowed(state), state


@pytest.mark.parametrize("state, bootenv", [
    ("discovering", "discovery"), ("discovered", "discovery"), ("allocated", "discovery"),
    ("hardware-installing", "discovery"), ("hardware-installed", "discovery"),
    ("installing", "discovery"), ("reinstall", "discovery"), ("releasing", "discovery"),
    ("installed", "local"), ("readying", "local"), ("ready", "local"),
    ("problem", "discovery"), ("reset", "discovery"), ("delete", "none"),
])
def test_bootenv_per_state(state, bootenv):
    assert lc.bootenv_for(state) == bootenv


def test_installing_runs_in_the_discovery_image_whatever_the_os():
    # the agent writes the OS image as a job (crowbar.provisioner.install): no network installer
    assert lc.bootenv_for("installing", os="ubuntu-24.04") == "discovery"
    assert lc.bootenv_for("installed", os="ubuntu-24.04") == "local"


def test_stuck_states_time_out_with_a_reason():
    entered = datetime(2024, 1, 1, 12, 0)
    assert lc.timed_out("installing", entered, entered + timedelta(minutes=45)) is None
    reason = lc.timed_out("installing", entered, entered + timedelta(minutes=46))
    assert reason.startswith("stuck in installing for 46 min (limit 45 min)")
    assert lc.timed_out("discovering", 0.0, 601.0) is not None
    assert lc.timed_out("hardware-installing", 0, 29 * 60) is None
    assert lc.timed_out("readying", 0, 16 * 60) is not None


def test_pending_machines_wait_for_the_operator_in_the_discovery_image():
    assert lc.PENDING in lc.INITIAL and lc.bootenv_for("pending") == "discovery"
    lc.check("pending", "discovered")  # approve
    for target in ("allocated", "hardware-installing", "ready"):
        with pytest.raises(IllegalTransition, match="from pending"):
            lc.check("pending", target)


def test_states_that_wait_for_a_person_never_time_out():
    for state in ("pending", "discovered", "allocated", "ready", "problem", "delete"):
        assert lc.timed_out(state, 0, 10**9) is None


def test_every_timed_out_state_can_go_to_problem():
    for state in lc.TIMEOUTS:
        lc.check(state, "problem")


def test_dot_is_drawn_from_the_table():
    dot = lc.to_dot()
    assert dot.startswith("digraph node_lifecycle {") and dot.rstrip().endswith("}")
    edges = {line.split("->")[0].strip().strip('"') + "->" + line.split("->")[1].split("[")[0]
             .strip().rstrip(";").strip('"') for line in dot.splitlines() if "->" in line}
    expected = {f"{s}->{t}" for s, targets in lc.TRANSITIONS.items() for t in targets}
    assert edges == expected
    assert '"installing" -> "problem" [style=dotted, label="timeout 45 min"];' in dot


def test_the_doc_shows_the_current_table_and_diagram():
    text = DOC.read_text()
    assert lc.to_markdown() in text, "regenerate the table in docs/node-lifecycle.md"
    assert lc.to_dot() in text, "regenerate the dot text in docs/node-lifecycle.md"


def test_crowbar_nodes_states_shows_what_the_api_serves(api, monkeypatch):
    """The CLI asks GET /node_states (tests/test_layers.py keeps it from importing the lifecycle),
    and shows the same table and diagram it used to build from the lifecycle tables itself."""
    import json

    from click.testing import CliRunner

    from crowbar.cli import main
    from crowbar.cli.client import Client

    client = Client("http://testserver")
    client.http = api
    api.base_url = "http://testserver/api/v2"
    monkeypatch.setattr(main.Context, "api", property(lambda _ctx: client))
    table = CliRunner().invoke(main.cli, ["nodes", "states", "-o", "json"])
    dot = CliRunner().invoke(main.cli, ["nodes", "states", "--dot"])
    assert (table.exit_code, dot.exit_code) == (0, 0), (table.output, dot.output)
    assert json.loads(table.output) == [
        {"state": st, "next": list(lc.TRANSITIONS[st]), "bootenv": lc.BOOTENVS[st],
         "timeout": str(lc.TIMEOUTS.get(st) or "")} for st in lc.STATES]
    assert dot.output == lc.to_dot() + "\n"

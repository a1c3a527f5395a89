"""The noderole state machine: every pair of states is either allowed or refused, as the spec says."""

from __future__ import annotations

import itertools

import pytest

from crowbar.engine import states
from crowbar.engine.states import State
from crowbar.errors import Conflict, IllegalTransition, InvalidInput

# The rules of issue 2 / the reference, written out by hand (not read from crowbar.engine.states):
#   commit: proposed -> todo | blocked;   unblock: blocked -> todo;   claim: todo -> transition;
#   run result: transition -> active | error;   recovery of a lost run: transition -> todo;
#   retry / re-run: error | active -> todo | blocked;   ripple from an ancestor: todo | active | error -> blocked;
#   reopening a deployment: blocked | todo | error | active -> proposed.
EXPECTED_ALLOWED = {
    ("proposed", "todo"), ("proposed", "blocked"),
    ("blocked", "todo"), ("blocked", "proposed"),
    ("todo", "transition"), ("todo", "blocked"), ("todo", "proposed"),
    ("transition", "active"), ("transition", "error"), ("transition", "todo"),
    ("active", "todo"), ("active", "blocked"), ("active", "proposed"),
    ("error", "todo"), ("error", "blocked"), ("error", "proposed"),
}
NAMES = ["proposed", "todo", "transition", "active", "error", "blocked"]
ALL_PAIRS = list(itertools.product(NAMES, NAMES))


def test_the_six_states_exist():
    assert sorted(s.value for s in State) == sorted(NAMES)


@pytest.mark.parametrize("src,dst", sorted(EXPECTED_ALLOWED))
def test_allowed_transition(src, dst):
    states.check(src, dst)  # does not raise


@pytest.mark.parametrize("src,dst", sorted(set(ALL_PAIRS) - EXPECTED_ALLOWED))
def test_refused_transition(src, dst):
    with pytest.raises(IllegalTransition) as exc:
        states.check(src, dst)
    # the message names both states, and the error is a 409 Conflict for the API
    assert src in exc.value.message and dst in exc.value.message
    assert isinstance(exc.value, Conflict) and exc.value.status == 409


def test_refusal_names_the_object():
    with pytest.raises(IllegalTransition, match="deployment cannot go from proposed to active"):
        states.check("proposed", "active", what="deployment")


def test_nothing_moves_to_itself():
    for name in NAMES:
        with pytest.raises(IllegalTransition):
            states.check(name, name)


def test_only_error_and_active_are_retryable():
    assert {s.value for s in states.RETRYABLE} == {"error", "active"}


@pytest.mark.parametrize("raw,expected", [("todo", State.TODO), ("ACTIVE", State.ACTIVE), ("Blocked", State.BLOCKED),
                                          ("transition", State.TRANSITION), ("error", State.ERROR),
                                          ("proposed", State.PROPOSED)])
def test_parse_accepts_any_case(raw, expected):
    assert states.parse(raw) is expected


@pytest.mark.parametrize("raw", ["", "done", "activ", "todo ", "-1", "0"])
def test_parse_refuses_unknown_names(raw):
    with pytest.raises(InvalidInput) as exc:
        states.parse(raw)
    assert exc.value.field == "state"
    assert exc.value.status == 422
    assert repr(raw) in exc.value.message
    for name in NAMES:  # the message lists what would have been accepted
        assert name in exc.value.message


"""NodeRole states and the transitions allowed between them.

    proposed --commit--> todo (all parents active) | blocked (some parent not active)
    blocked  --------->  todo        when every parent becomes active
    todo     --------->  transition  when the annealer claims it
    transition ------->  active | error   when the jig reports
    transition ------->  todo        when the run was lost with a dead server (recovery)
    error    --retry-->  todo | blocked
    active   --retry-->  todo | blocked   (run again)
    todo/active ------>  blocked     when an ancestor fails or is re-run
    blocked/todo/error/active --> proposed   when the deployment is reopened for changes

Anything else is refused with IllegalTransition, which names both states.
"""

from __future__ import annotations

from enum import StrEnum

from crowbar.errors import IllegalTransition, InvalidInput


class State(StrEnum):
    PROPOSED = "proposed"
    TODO = "todo"
    TRANSITION = "transition"
    ACTIVE = "active"
    ERROR = "error"
    BLOCKED = "blocked"


ALLOWED: dict[State, frozenset[State]] = {
    State.PROPOSED: frozenset({State.TODO, State.BLOCKED}),
    State.BLOCKED: frozenset({State.TODO, State.PROPOSED}),
    State.TODO: frozenset({State.TRANSITION, State.BLOCKED, State.PROPOSED}),
    State.TRANSITION: frozenset({State.ACTIVE, State.ERROR, State.TODO}),
    State.ACTIVE: frozenset({State.TODO, State.BLOCKED, State.PROPOSED}),
    State.ERROR: frozenset({State.TODO, State.BLOCKED, State.PROPOSED}),
}

RETRYABLE = frozenset({State.ERROR, State.ACTIVE})


def check(current: str, target: str, what: str = "noderole") -> None:
    """Raise IllegalTransition unless current -> target is allowed."""
    src, dst = State(current), State(target)
    if dst not in ALLOWED[src]:
        raise IllegalTransition(f"{what} cannot go from {src.value} to {dst.value}")


def parse(value: str) -> State:
    try:
        return State(value.lower())
    except ValueError:
        names = ", ".join(s.value for s in State)
        raise InvalidInput(f"unknown state {value!r}: expected one of {names}", field="state") from None
